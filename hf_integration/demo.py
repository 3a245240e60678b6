"""``dynaccel demo``: a Gradio app comparing a pipeline with and without acceleration, side by side.

    dynaccel demo                          # zoo tiny-wan, http://127.0.0.1:7860 (no public share link)
    dynaccel demo --model ./my-pipeline    # any local diffusers pipeline folder

Tab "Compare": a prompt, a seed and a strategy with its options generate the full-compute baseline and the
accelerated result (a GIF for video pipelines, a PNG for image ones) with the latency of each, the speedup, the
transformer passes computed and PSNR/SSIM between the two (the metrics of ``dynaccel bench``). Tab "Sweep": one
option of a strategy (the quality knob its Config declares, e.g. a cache strategy's ``threshold``) over a list of
values, plotted as speedup against PSNR. Tab "Robot policy": one held-out episode of a robot task run by a policy
(zoo ``tiny-pi0``) with full compute and with a VLA setting, two videos side by side with success, latency, speedup
and jerk (``demo_vla.py``; needs the ``vla`` extra and OSMesa).

The option controls are generated from each strategy's Config schema (type, default, min, max, step, choices,
doc), so a strategy a plugin registers appears with no demo code. Sessions never share cache state or results:
a loaded pipeline is shared (weights are read-only) but every request enables its own strategy, generates, reads
the stats and disables it again while holding the pipeline's lock; results are written to files per request.

Every input of a request (seed, steps, prompt, sweep values, strategy options) is checked against the same ranges
the controls offer, whether it comes from the page or from an API client (``gradio_client``): a bad one is answered
with an error naming the value and what is accepted, and logged as one line. The generated media live in a
temporary folder removed when the demo stops, by Ctrl+C or by ``kill`` (SIGTERM).

Gradio's analytics are switched off (``GRADIO_ANALYTICS_ENABLED=False``) and the page loads nothing from outside
127.0.0.1 (the end-to-end browser test checks every request the page makes).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.config import StrategyConfig, option
from ..core.errors import ConfigError, DynaccelError
from ..core.registry import get_registry
from . import bench, bench_vla, demo_vla
from ..zoo import robot_tasks

HOST = "127.0.0.1"
MEDIA_SIZE = 192  # pixels: tiny models' frames are upscaled (nearest) to be visible
MAX_SWEEP_VALUES = 12  # a sweep holds the model for one generation per value: bounded like every other input
logger = logging.getLogger("dynaccel.demo")


@dataclass(frozen=True)
class RequestInputs(StrategyConfig):
    """The inputs of one request besides the strategy's options, declared like a strategy's: the page's controls
    and every check of a request (page or API) come from here."""

    prompt: str = option("a red circle moving right fast", doc="the prompt of both generations")
    seed: int = option(0, doc="random seed of both generations", min=0, max=2**32 - 1)
    steps: int = option(20, doc="denoising steps of both generations", min=2, max=100)

    def validate(self) -> None:
        if len(self.prompt) > 2000:
            raise ConfigError(f"option 'prompt': got {len(self.prompt)} characters; accepted: at most 2000")


def check_request(prompt: Any, seed: Any, steps: Any) -> RequestInputs:
    """The validated inputs (ConfigError naming the value and the accepted range), through the schema's one
    conversion: whole floats (a number box) are ints, text is read as a number."""
    return RequestInputs.coerce("demo", {"prompt": prompt, "seed": seed, "steps": steps})


# ---- the model and one comparison (no Gradio here: tested directly) ------------------------------------------------


class DemoModel:
    """A loaded pipeline, its generation defaults, and the lock every request holds while it uses it."""

    def __init__(self, model: str):
        path = bench.resolve_model(model)
        self.name = model
        self.path = path
        self.pipe = bench.load_pipeline(path)
        self.call = bench.generation_defaults(model, path)
        self.lock = threading.Lock()


_models: dict[str, DemoModel] = {}
_models_lock = threading.Lock()


def get_model(model: str) -> DemoModel:
    """The pipeline for a zoo name or local folder, loaded once per process."""
    if not isinstance(model, str) or not model.strip() or len(model) > 4096:
        raise ConfigError(f"model {str(model)[:200]!r}: accepted: a zoo model name or the path of a local diffusers "
                          "pipeline folder")
    key = model.strip()
    with _models_lock:
        if key not in _models:
            _models[key] = DemoModel(key)
        return _models[key]


@dataclass
class Comparison:
    model: str
    prompt: str
    seed: int
    steps: int
    strategy: str
    config: dict[str, Any]
    baseline_s: float
    accelerated_s: float
    speedup: float
    computed: str
    psnr_db: float
    psnr_min_db: float
    ssim: float
    summary: str
    warmup: bool = True
    stats: dict[str, Any] = field(default_factory=dict)
    baseline: torch.Tensor | None = field(default=None, repr=False)  # (F, C, H, W) in [0, 1]
    accelerated: torch.Tensor | None = field(default=None, repr=False)

    def metrics(self) -> dict[str, Any]:
        """The numbers, JSON-ready (infinite PSNR, identical outputs, as the string "inf")."""
        out = {k: v for k, v in asdict(self).items() if k not in ("baseline", "accelerated", "stats")}
        for k in ("psnr_db", "psnr_min_db"):
            out[k] = "inf" if math.isinf(out[k]) else round(out[k], 3)
        for k in ("baseline_s", "accelerated_s", "speedup"):
            out[k] = round(out[k], 4)
        out["ssim"] = round(out["ssim"], 5)
        return out


def build_config(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validated options of ``strategy`` (unknown, mistyped or out-of-range ones raise ConfigError). Empty strings
    (a text box left blank) mean the default; integers arriving as floats from a slider become ints."""
    return get_registry().strategy(strategy).Config.coerce(strategy, options).to_dict()


def compare(model: DemoModel, prompt: str, seed: int, steps: int, strategy: str, options: dict[str, Any],
            warmup: bool = True, progress: Callable[[float, str], Any] | None = None) -> Comparison:
    """Baseline and accelerated generation of the same prompt and seed, timed, with quality between them.

    Holds the model's lock throughout; the strategy is enabled for this call only and always disabled again."""
    req = check_request(prompt, seed, steps)
    prompt, seed, steps = req.prompt, req.seed, req.steps
    config = build_config(strategy, options)
    call = dict(model.call, num_inference_steps=steps)
    report = progress or (lambda *_: None)
    runs = (2 if warmup else 1) * 2
    done = [0]

    def generate(label: str) -> tuple[torch.Tensor, float]:
        report(done[0] / runs, label)
        t0 = time.perf_counter()
        out = model.pipe(prompt=prompt, generator=torch.Generator().manual_seed(int(seed)), output_type="pt", **call)
        elapsed = time.perf_counter() - t0
        done[0] += 1
        return bench.frames(out)[0], elapsed

    with model.lock:
        if model.pipe.accel_stats:  # never expected: every request disables what it enabled
            model.pipe.disable_accel()
        if warmup:
            generate("baseline: warm-up")
        base, base_t = generate("baseline")
        handle = model.pipe.enable_accel(strategy, **config)
        try:
            if warmup:
                generate(f"{strategy}: warm-up (calibrates strategies that need it)")
            fast, fast_t = generate(strategy)
            stats = bench.jsonable(handle.stats)
            summary = handle.summary()
        finally:
            model.pipe.disable_accel()
    report(1.0, "done")
    mse = ((fast - base) ** 2).flatten(1).mean(1)
    return Comparison(
        model=model.name, prompt=prompt, seed=int(seed), steps=int(steps), strategy=strategy, config=config,
        baseline_s=base_t, accelerated_s=fast_t, speedup=base_t / fast_t, computed=bench.computed_label(stats, None, None),
        psnr_db=bench.psnr_of(float(mse.mean())), psnr_min_db=bench.psnr_of(float(mse.max())),
        ssim=float(bench.ssim(fast, base).mean()), summary=summary, warmup=warmup, stats=stats, baseline=base,
        accelerated=fast,
    )


def sweep_field(strategy: str):
    """The option a sweep varies: the quality knob the strategy's schema declares, else its first bounded float
    option."""
    config = get_registry().strategy(strategy).Config
    knob = config.quality_knob_field()
    if knob is not None:
        return knob
    return next((s for s in config.fields_info() if s.type == "float" and s.min is not None and s.max is not None), None)


def sweep_values(strategy: str, count: int = 5) -> list[float]:
    """A log-spaced grid around the option's default (default/4 .. default*4, inside its range)."""
    spec = sweep_field(strategy)
    if spec is None:
        return []
    lo_bound, hi_bound = spec.offered_range()
    lo = max(lo_bound, spec.default / 4) if spec.default > 0 else (hi_bound - lo_bound) / 100 + lo_bound
    hi = min(hi_bound, spec.default * 4) if spec.default > 0 else (hi_bound - lo_bound) / 10 + lo_bound
    if count == 1 or hi <= lo:
        values = [lo]
    else:
        values = [lo * (hi / lo) ** (i / (count - 1)) for i in range(count)]
    if spec.type == "int":  # an int knob (e.g. a step interval): the distinct whole values of the grid
        return sorted({int(round(v)) for v in values})
    return [round(v, 4) for v in values]


def sweep(model: DemoModel, prompt: str, seed: int, steps: int, strategy: str, values: list[float],
          options: dict[str, Any] | None = None) -> list[bench.Row]:
    """Full compute, then the strategy at each value of its sweep option (other options as given): one bench row
    each (``dynaccel bench``'s harness: warm-up, then one timed generation)."""
    req = check_request(prompt, seed, steps)
    prompt, seed, steps = req.prompt, req.seed, req.steps
    spec = sweep_field(strategy)
    if spec is None:
        raise ConfigError(f"strategy {strategy!r} has no bounded float option to sweep")
    if not values or len(values) > MAX_SWEEP_VALUES:
        raise ConfigError(f"option {spec.name!r}: {len(values)} values to sweep; accepted: 1 to {MAX_SWEEP_VALUES} "
                          f"comma-separated numbers, each {spec.accepted()}")
    defaults = {s.name: s.default for s in get_registry().strategy(strategy).Config.fields_info()}
    base = {k: v for k, v in build_config(strategy, options or {}).items() if k != spec.name and v != defaults[k]}
    settings = [bench.Setting("dynaccel", strategy, {spec.name: build_config(strategy, {spec.name: v})[spec.name],
                                                     **base}) for v in values]
    call = dict(model.call, num_inference_steps=steps)
    with model.lock:
        try:
            return bench.run_bench(model.pipe, settings, [prompt], [int(seed)], call, repeats=1,
                                   threads=torch.get_num_threads())
        finally:
            if model.pipe.accel_stats:
                model.pipe.disable_accel()


def sweep_figure(rows: list[bench.Row], strategy: str, option: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    pts = [r for r in rows if r.kind == "dynaccel"]
    cap = max([r.psnr_db for r in pts if math.isfinite(r.psnr_db)] or [40.0]) + 5
    ys = [min(r.psnr_db, cap) for r in pts]
    ax.plot([r.speedup for r in pts], ys, "o-", label=strategy)
    for r, y in zip(pts, ys):
        ax.annotate(r.label.split(f"{option}=")[-1].split(",")[0], (r.speedup, y), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    ax.scatter([1.0], [cap], marker="*", s=120, color="k", label="full compute")
    ax.set_xlabel("speedup vs full compute (wall clock, one run)")
    ax.set_ylabel(f"PSNR vs full compute (dB; identical at {cap:.0f})")
    ax.set_title(f"{strategy}: {option} sweep")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


# ---- media --------------------------------------------------------------------------------------------------------


def write_media(frames: torch.Tensor, folder: Path, stem: str) -> Path:
    """Frames (F, C, H, W) in [0, 1] -> an animated GIF (F > 1) or a PNG, upscaled for viewing."""
    from PIL import Image

    arr = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    h, w = arr.shape[1:3]
    scale = max(1, MEDIA_SIZE // max(h, w))
    images = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).resize((w * scale, h * scale),
                                                                                Image.NEAREST) for a in arr]
    folder.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        path = folder / f"{stem}.png"
        images[0].save(path)
    else:
        path = folder / f"{stem}.gif"
        images[0].save(path, save_all=True, append_images=images[1:], duration=125, loop=0)
    return path


def results_markdown(c: Comparison) -> str:
    psnr = "identical" if math.isinf(c.psnr_db) else f"{c.psnr_db:.2f} dB"
    worst = "identical" if math.isinf(c.psnr_min_db) else f"{c.psnr_min_db:.2f} dB"
    return "\n".join([
        f"**speedup: {c.speedup:.2f}x**",
        "",
        "| | baseline (full compute) | accelerated |",
        "|---|---|---|",
        f"| latency | {c.baseline_s:.3f} s | {c.accelerated_s:.3f} s |",
        f"| transformer passes computed | all | {c.computed} |",
        f"| PSNR vs baseline | | {psnr} (worst frame {worst}) |",
        f"| SSIM vs baseline | | {c.ssim:.4f} |",
        "",
        f"`{c.summary}`",
        "",
        f"{c.strategy} options: `{json.dumps(c.config, sort_keys=True)}`; one timed run each"
        f"{', after a warm-up run' if c.warmup else ' (no warm-up)'}; "
        f"{c.steps} steps, seed {c.seed}, {torch.get_num_threads()} CPU thread(s)"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "") + ".",
    ])


# ---- the Gradio app -----------------------------------------------------------------------------------------------


def _control(gr, strategy: str, spec, **overrides: Any):
    """One Gradio input for one config field, from its schema (the range it offers: one step inside an exclusive
    bound)."""
    label = f"{spec.name}"
    common = dict(label=label, info=spec.doc, elem_id=f"opt-{strategy}-{spec.name}") | overrides
    value = common.pop("value", spec.default)
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), value=value, **common)
    if spec.type == "bool":
        return gr.Checkbox(value=value, **common)
    if spec.type in ("int", "float"):
        # a slider needs a range; a field pinned to one value (min == max) gets a number box
        if spec.min is not None and spec.max is not None and 0 < spec.max - spec.min <= 1000:
            step = spec.step or (1 if spec.type == "int" else (spec.max - spec.min) / 1000)
            lo, hi = spec.offered_range(step)
            return gr.Slider(minimum=lo, maximum=hi, step=step, value=value, **common)
        lo, hi = spec.offered_range()
        return gr.Number(value=value, precision=0 if spec.type == "int" else None, minimum=lo, maximum=hi, **common)
    return gr.Textbox(value=spec.default or "", placeholder="(default)" if not spec.default else None, **common)


def build_app(model: str = "tiny-wan", warmup: bool = True):
    """The Gradio Blocks app (not launched). ``model``: the zoo name or local folder selected at start."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .. import zoo

    reg = get_registry()
    strategies = sorted(reg.strategies)
    specs = {s: reg.strategy(s).Config.fields_info() for s in strategies}
    keys = [(s, f.name) for s in strategies for f in specs[s]]
    first = "teacache" if "teacache" in strategies else strategies[0]
    sweepable = [s for s in strategies if sweep_field(s) is not None]
    zoo_models = zoo.available()
    loaded = get_model(model)
    default_steps = loaded.call.get("num_inference_steps", 20)
    arch = type(bench.denoiser(loaded.pipe)).__name__
    presets = sorted(n for n, p in reg.presets.items()  # the ones made for this architecture (or any)
                     if p.strategy in strategies and p.architecture in (None, arch))
    work = Path(tempfile.mkdtemp(prefix="dynaccel-demo-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the generated media go when the demo stops
    request_specs = {f.name: f for f in RequestInputs.fields_info()}
    robot_settings = [f"preset:{n}" for n in sorted(reg.presets) if reg.presets[n].model_id == demo_vla.DEFAULT_POLICY]
    robot_settings += ["denoise_steps:steps=4", "vla_cache", "fbcache:threshold=0.1", "denoise_steps:steps=4+vla_cache"]

    def refuse(exc: Exception):
        """A bad request: one log line, and an error for the page or the API client (no traceback)."""
        logger.warning("dynaccel demo: refused a request: %s", exc)
        return gr.Error(str(exc), print_exception=False)

    def options_of(strategy: str, values: tuple) -> dict[str, Any]:
        return {name: v for (s, name), v in zip(keys, values) if s == strategy}

    def run_compare(model_name, prompt, seed, steps, strategy, *values, progress=gr.Progress()):
        try:
            m = get_model(model_name)
            c = compare(m, prompt, seed, steps, strategy, options_of(strategy, values), warmup=warmup,
                        progress=lambda f, d: progress(f, desc=d))
        except (DynaccelError, ValueError, TypeError) as exc:
            raise refuse(exc) from None
        folder = Path(tempfile.mkdtemp(dir=work, prefix="compare-"))  # per request: nothing shared
        return (str(write_media(c.baseline, folder, "baseline")), str(write_media(c.accelerated, folder, strategy)),
                results_markdown(c), c.metrics())

    def run_sweep(model_name, prompt, seed, steps, strategy, values_text, *values, progress=gr.Progress(track_tqdm=True)):
        try:
            grid = [float(x) for x in str(values_text).replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise refuse(ConfigError(f"values {str(values_text)[:200]!r}: accepted: comma-separated numbers, "
                                     "e.g. 0.05, 0.1, 0.2")) from None
        try:
            rows = sweep(get_model(model_name), prompt, seed, steps, strategy, grid, options_of(strategy, values))
        except (DynaccelError, ValueError, TypeError) as exc:
            raise refuse(exc) from None
        option = sweep_field(strategy).name
        table = [[r.label, round(r.time_s, 4), round(r.speedup, 3), r.computed,
                  "inf" if math.isinf(r.psnr_db) else round(r.psnr_db, 2), round(r.ssim, 4)] for r in rows]
        return sweep_figure(rows, strategy, option), table

    def run_robot(policy_name, task, episode_seed, setting, progress=gr.Progress()):
        try:
            base, fast = demo_vla.compare(policy_name, task, episode_seed, setting,
                                          progress=lambda f, d: progress(f, desc=d))
        except (DynaccelError, ValueError, TypeError) as exc:
            raise refuse(exc) from None
        folder = Path(tempfile.mkdtemp(dir=work, prefix="robot-"))
        return (str(demo_vla.write_video(base, folder, "full")), str(demo_vla.write_video(fast, folder, "setting")),
                demo_vla.results_markdown(base, fast, task, int(episode_seed)), demo_vla.metrics(base, fast))

    def show_options(strategy):
        return [gr.update(visible=s == strategy) for s in strategies]

    def load_preset(name):
        if not name:
            return [gr.update()] * (1 + len(keys))
        p = reg.presets[name]
        defaults = {s.name: s.default for s in specs[p.strategy]}
        updates = [gr.update(value=p.strategy)]
        for s, fname in keys:
            if s == p.strategy:
                v = p.config.get(fname, defaults[fname])
                updates.append(gr.update(value=v))
            else:
                updates.append(gr.update())
        return updates

    with gr.Blocks(title="dynaccel demo") as app:
        gr.Markdown("# dynaccel demo\nTraining-free acceleration of a diffusion pipeline: the same prompt and seed "
                    "with full compute and with a strategy, side by side.")
        with gr.Row():
            model_box = gr.Dropdown(choices=zoo_models, value=model, allow_custom_value=True, elem_id="model",
                                    label="model", info="a zoo model or the path of a local diffusers pipeline folder")
            prompt = _control(gr, "", request_specs["prompt"], label="prompt", elem_id="prompt", info=None)
            seed = _control(gr, "", request_specs["seed"], label="seed", elem_id="seed", info=None)
            steps = _control(gr, "", request_specs["steps"], label="steps", elem_id="steps", info=None,
                             value=default_steps)
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    strategy = gr.Radio(strategies, value=first, label="strategy", elem_id="strategy")
                    preset = gr.Dropdown([""] + presets, value="", label="load a preset (optional)",
                                         elem_id="preset")
                controls = []
                groups = []
                for s in strategies:
                    with gr.Group(visible=s == first) as group:
                        doc = reg.strategy(s)
                        gr.Markdown(f"**{s}**: {doc.summary} {doc.paper}".strip())
                        with gr.Row():
                            controls += [_control(gr, s, f) for f in specs[s]]
                    groups.append(group)
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Row():
                    base_out = gr.Image(label="baseline (full compute)", type="filepath", elem_id="baseline",
                                        interactive=False)
                    fast_out = gr.Image(label="accelerated", type="filepath", elem_id="accelerated",
                                        interactive=False)
                results = gr.Markdown(elem_id="results")
                metrics = gr.JSON(label="metrics", elem_id="metrics")
            with gr.Tab("Sweep", id="sweep"):
                with gr.Row():
                    sweep_strategy = gr.Dropdown(sweepable, value=first if first in sweepable else sweepable[0],
                                                 label="strategy", elem_id="sweep-strategy")
                    sweep_text = gr.Textbox(value=", ".join(map(str, sweep_values(first))), elem_id="sweep-values",
                                            label="values of its quality knob (the option its schema declares)",
                                            info="comma-separated; the strategy's other options come from the "
                                                 "Compare tab")
                sweep_go = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
                plot = gr.Plot(label="speed vs quality", elem_id="sweep-plot")
                table = gr.Dataframe(headers=["setting", "time/gen (s)", "speedup", "computed", "PSNR (dB)", "SSIM"],
                                     label="results", elem_id="sweep-table")
            with gr.Tab("Robot policy", id="robot"):
                why = demo_vla.available()
                gr.Markdown("One held-out episode of a robot task (Meta-World), closed loop, with full compute and "
                            "with a VLA setting: the same episode and noise, two videos."
                            + (f"\n\n**Not available here:** {why}" if why else ""))
                with gr.Row():
                    policies = [m for m in zoo_models if bench_vla.is_policy_model(m)] or [demo_vla.DEFAULT_POLICY]
                    robot_model = gr.Dropdown(choices=policies, value=policies[0], allow_custom_value=True,
                                              label="policy", elem_id="robot-model",
                                              info="tiny-pi0 or a folder in its format")
                    robot_task = gr.Dropdown(choices=list(robot_tasks.TASK_NAMES), value="push", label="task",
                                             elem_id="robot-task")
                    robot_seed = gr.Number(value=robot_tasks.HELDOUT_START, precision=0, label="held-out seed",
                                           elem_id="robot-seed", minimum=robot_tasks.HELDOUT_START)
                    robot_setting = gr.Dropdown(choices=robot_settings, value=robot_settings[0],
                                                allow_custom_value=True, label="setting", elem_id="robot-setting",
                                                info="strategy[:key=value,...] or preset:NAME; several joined "
                                                     "with '+'")
                robot_go = gr.Button("Run both rollouts", variant="primary", elem_id="robot-run")
                with gr.Row():
                    robot_base = gr.Image(label="full compute", type="filepath", elem_id="robot-baseline",
                                          interactive=False)
                    robot_fast = gr.Image(label="with the setting", type="filepath", elem_id="robot-accelerated",
                                          interactive=False)
                robot_results = gr.Markdown(elem_id="robot-results")
                robot_metrics = gr.JSON(label="metrics", elem_id="robot-metrics")

        strategy.change(show_options, strategy, groups, api_visibility="private")
        preset.change(load_preset, preset, [strategy, *controls], api_visibility="private")
        go.click(run_compare, [model_box, prompt, seed, steps, strategy, *controls],
                 [base_out, fast_out, results, metrics], api_name="compare_ui", concurrency_limit=4)
        sweep_strategy.change(lambda s: ", ".join(map(str, sweep_values(s))), sweep_strategy, sweep_text,
                              api_visibility="private")
        sweep_go.click(run_sweep, [model_box, prompt, seed, steps, sweep_strategy, sweep_text, *controls],
                       [plot, table], api_name="sweep", concurrency_limit=4)
        robot_go.click(run_robot, [robot_model, robot_task, robot_seed, robot_setting],
                       [robot_base, robot_fast, robot_results, robot_metrics], api_name="robot", concurrency_limit=1)

        def compare_api(model_name: str, prompt_text: str, seed_value: int, steps_value: int, strategy_name: str,
                        options_json: str) -> dict:
            """One comparison for API clients: options as a JSON object; returns the metrics."""
            try:
                options = json.loads(options_json or "{}")
                if not isinstance(options, dict):
                    raise ConfigError(f"options {options_json!r}: accepted: a JSON object of the strategy's options")
                c = compare(get_model(model_name), prompt_text, seed_value, steps_value, strategy_name, options,
                            warmup=warmup)
            except (DynaccelError, ValueError, TypeError) as exc:
                raise refuse(exc) from None
            folder = Path(tempfile.mkdtemp(dir=work, prefix="api-"))
            out = c.metrics()
            out["baseline_file"] = str(write_media(c.baseline, folder, "baseline"))
            out["accelerated_file"] = str(write_media(c.accelerated, folder, strategy_name))
            return out

        gr.api(compare_api, api_name="compare", concurrency_limit=4)
    app.dynaccel_work = work  # the folder of the generated media (removed at exit and on SIGTERM by launch)
    return app


def launch(model: str = "tiny-wan", port: int = 7860, warmup: bool = True, block: bool = True):
    """Build and serve the app on 127.0.0.1:``port`` (never a public share link)."""
    app = build_app(model, warmup=warmup)
    app.queue(default_concurrency_limit=4)
    print(f"dynaccel demo: http://{HOST}:{port} (this machine only; no public link). Ctrl+C stops it.", flush=True)
    restore = remove_on_sigterm(app.dynaccel_work)
    try:
        app.launch(server_name=HOST, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                   quiet=True)
    finally:
        if block:  # the server has stopped: the previous SIGTERM handler is back
            restore()
    return app


def remove_on_sigterm(folder: Path) -> Callable[[], None]:
    """Remove ``folder`` when the process gets SIGTERM (``kill PID``; atexit does not run then), then hand the
    signal to the handler installed before (the default one ends the process as usual). Returns a function that
    puts the previous handler back. Outside the main thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    def on_sigterm(signum: int, frame: Any) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        restore()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action: end the process, as without this handler
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    return restore
