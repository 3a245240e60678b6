"""``dynaccel bench --model tiny-pi0``: VLA strategies in closed loop on the robot tasks, against full compute.

Every row runs the policy on held-out episodes of :mod:`dynaccel.zoo.robot_tasks` (Meta-World, headless) and
reports, side by side with full compute:

- **success**: per task and mean, with the episode count (held-out seeds, never used in training or calibration);
- **latency**: the median wall time of one policy inference (processor + model: one action chunk), and the speedup
  over full compute measured in the same run;
- **control frequency** reached in a real-time loop: the simulator advances one control step every
  ``1 / control_hz`` seconds (default 80 Hz, Meta-World's own rate: 12.5 ms of physics per step) while there is an
  action to execute; with synchronous execution the robot stands still while the policy thinks, with the
  asynchronous executor (``async`` rows; the policy in its own process by default, ``async:worker=thread`` for a
  thread) the next chunk is computed while the current one executes. Frequency = executed steps / seconds, where
  the camera is free (:class:`dynaccel.zoo.realtime.CameraClock`: rendering a frame on the CPU is taken off the
  clock, as a robot's camera captures in parallel); **completion time**: mean seconds of the successful real-time
  episodes;
- **jerk**: the mean squared third difference of the executed actions (smoothness; lower is smoother).

A row is one setting or several joined with ``+`` (``denoise_steps:steps=4+fbcache:threshold=0.1``), ``full``, or
``async[:options]`` (the executor around the policy, alone or joined with strategies). Speed without success and
smoothness means nothing in VLA work, so every row has all three.
"""

from __future__ import annotations

import json
import os
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.errors import ConfigError, DynaccelError

ROBOT_MODELS = ("tiny-pi0",)
POLICY_TYPES = ("pi0", "pi05")
DEFAULT_EPISODES = 10
#: Meta-World's own control rate: each env.step advances frame_skip 5 x 2.5 ms = 12.5 ms of physics
DEFAULT_CONTROL_HZ = 80.0


class BenchError(DynaccelError):
    """A bench request that cannot run (named model missing, unusable folder)."""


def is_policy_model(model: str) -> bool:
    """True for the zoo's robot policies and for a local folder holding a π0 / π0.5 ``config.json``."""
    if model in ROBOT_MODELS:
        return True
    cfg = Path(model) / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("model_type") in POLICY_TYPES
        except (OSError, ValueError):
            return False
    return False


def resolve_policy(model: str) -> Path:
    from .. import zoo

    if model in ROBOT_MODELS:
        if model not in zoo.available():
            raise BenchError(f"zoo model {model!r} is not in this installation (its folder has no config.json)")
        return Path(zoo.path(model))
    path = Path(model)
    missing = [f for f in ("config.json", "norm_stats.json", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise BenchError(
            f"model {model!r}: a policy folder for the robot-task bench needs config.json (π0 / π0.5), "
            f"norm_stats.json and tokenizer.json (the format python -m dynaccel.zoo.train_tiny_pi0 writes); "
            f"missing: {', '.join(missing)}")
    return path


@dataclass
class RowSpec:
    """One bench row: strategy settings (enabled together) and, for ``async`` rows, the executor's options."""

    settings: list[Any]  # bench.Setting (kind "dynaccel")
    executor: dict[str, Any] | None = None  # None: synchronous execution

    @property
    def label(self) -> str:
        parts = [s.label for s in self.settings]
        if self.executor is not None:
            opts = ",".join(f"{k}={v}" for k, v in self.executor.items())
            parts.append("async" + (f":{opts}" if opts else ""))
        return " + ".join(parts) or "full compute"


def parse_row(text: str) -> RowSpec:
    """``full``, ``async[:k=v,...]``, a setting as ``dynaccel bench -s`` takes it, or several joined with ``+``."""
    from .bench import parse_setting

    text = text.strip()
    if not text:
        raise ConfigError("empty bench row; accepted: full, async[:options], STRATEGY[:key=value,...], "
                          "preset:NAME, or several joined with '+'")
    settings, executor = [], None
    for part in [p.strip() for p in text.split("+")]:
        if part == "full":
            continue
        if part == "async" or part.startswith("async:"):
            executor = _executor_options(part)
            continue
        s = parse_setting(part)
        if s.kind != "dynaccel":
            raise ConfigError(f"bench row {text!r}: {part!r} is not a dynaccel strategy (diffusers caches do not "
                              "run on policies)")
        settings.append(s)
    families = [_family(s.strategy) for s in settings]
    dup = {f for f in families if families.count(f) > 1}
    if dup:
        raise ConfigError(f"bench row {text!r}: two strategies of family {sorted(dup)[0]!r}; one per family per model")
    return RowSpec(settings, executor)


def _family(name: str) -> str:
    from ..core.registry import get_registry

    return get_registry().strategy(name).family


def _executor_options(part: str) -> dict[str, Any]:
    _, _, opts = part.partition(":")
    out: dict[str, Any] = {}
    for item in [x for x in opts.split(",") if x.strip()]:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"async option {item!r}; accepted: key=value (e.g. async:chunk_threshold=0.5)")
        try:
            out[key.strip()] = float(value) if any(c in value for c in ".e") or value.strip().isdigit() else value
        except ValueError:
            out[key.strip()] = value
    return out


def default_rows(model: str) -> list[str]:
    """Full compute, each VLA strategy and the token strategies on the prefix at their presets (or defaults), the
    expert caches, a combination, async."""
    from ..core.registry import get_registry

    presets = get_registry().presets
    rows = ["full"]

    def pick(name: str, fallback: str) -> str:
        key = f"{model}-{name}"
        return f"preset:{key}" if key in presets else fallback

    rows.append(pick("vla-cache", "vla_cache"))
    rows.append("vla_cache:task_relevant=0.0,layer_adaptive=false")  # the paper's naive reuse, for contrast
    rows.append(pick("prefix-prune", "prefix_prune"))
    rows.append(pick("fastv", "fastv:layer=1"))  # the token family on the prefix (layer 1: any prefix of 2+ layers)
    rows.append(pick("visionzip", "visionzip"))
    rows.append(pick("layer-skip", "layer_skip"))
    rows.append(pick("denoise-steps", "denoise_steps:steps=5"))
    for cache in ("teacache", "fbcache", "easycache", "taylorseer"):
        rows.append(pick(cache, cache))
    steps = pick("denoise-steps", "denoise_steps:steps=5")
    rows.append(pick("combo", f"{pick('vla-cache', 'vla_cache')}+{steps}"))  # the prefix and the expert together
    rows.append("async")
    rows.append(f"{steps}+async")  # the executor around the fewer-steps policy
    return rows


@dataclass
class VlaRow:
    label: str
    settings: list[dict[str, Any]]
    executor: dict[str, Any] | None
    episodes: int
    success: dict[str, float]  # per task
    mean_success: float
    latency_ms: float  # median per inference
    speedup: float
    inferences: int
    control_hz: float | None
    completion_s: float | None
    jerk: float
    realtime_episodes: int
    stats: dict[str, Any] = field(default_factory=dict)


class _PolicyRun:
    """The zoo policy with this row's strategies; resets every handle at the start of an episode."""

    def __init__(self, policy, handles: list[Any]):
        self.policy, self.handles = policy, handles

    def __call__(self, observation):
        if observation.step == 0:
            for h in self.handles:
                h.reset()
        return self.policy(observation)


def build_policy_run(folder: str, settings: list[tuple[str, dict[str, Any]]], threads: int = 1) -> _PolicyRun:
    """A zoo-format policy from ``folder`` with ``settings`` enabled (the factory a ``ProcessPolicy`` calls in its
    own process for the ``async`` rows)."""
    import torch

    import dynaccel
    from ..zoo import train_tiny_pi0 as tp

    torch.set_num_threads(threads)
    policy = tp.Pi0Policy.from_pretrained(folder)
    handles = [dynaccel.enable_accel(policy.model, name, **cfg) for name, cfg in settings]
    return _PolicyRun(policy, handles)


def _enable(model, spec: RowSpec) -> list[Any]:
    import dynaccel

    handles = []
    try:
        for s in spec.settings:
            handles.append(dynaccel.enable_accel(model, s.strategy, **s.config))
    except Exception:
        dynaccel.disable_accel(model)
        raise
    return handles


def jerk(actions: np.ndarray) -> float:
    """Mean squared third difference of an (T, D) action sequence (0 when T < 4)."""
    a = np.asarray(actions, np.float64)
    if len(a) < 4:
        return 0.0
    return float(np.mean(np.diff(a, n=3, axis=0) ** 2))


def run(model: str, rows: Sequence[RowSpec], *, episodes: int = DEFAULT_EPISODES, tasks: Sequence[str] | None = None,
        control_hz: float = DEFAULT_CONTROL_HZ, realtime_episodes: int = 1, threads: int = 1, progress: bool = True,
        seeds: Sequence[int] | None = None, policy: Any = None) -> list[VlaRow]:
    """Run every row on ``episodes`` held-out episodes per task (or on ``seeds``: calibration passes fit seeds);
    see the module docstring for the columns. ``policy``: an already loaded ``Pi0Policy`` of ``model``."""
    import torch

    import dynaccel
    from ..zoo import robot_tasks as rt
    from ..zoo import train_tiny_pi0 as tp

    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    if not (control_hz > 0 and math.isfinite(control_hz)):
        raise ConfigError(f"control_hz must be a positive number, got {control_hz}")
    torch.set_num_threads(threads)
    folder = str(resolve_policy(model))
    if policy is None:
        policy = tp.Pi0Policy.from_pretrained(folder)
    tasks = [rt.task(t).name for t in (tasks or rt.TASK_NAMES)]
    seeds = list(seeds) if seeds is not None else rt.heldout_seeds(episodes)
    for spec in rows:  # every setting checked on the model before anything runs
        _enable(policy.model, spec)
        dynaccel.disable_accel(policy.model)
    out: list[VlaRow] = []
    from tqdm.auto import tqdm

    total = len(rows) * len(tasks) * (len(seeds) + realtime_episodes)
    bar = tqdm(total=total, desc="bench episodes", unit="ep", disable=not progress)
    with rt.RobotSim() as sim:
        for spec in rows:
            handles = _enable(policy.model, spec)
            try:
                out.append(_run_row(spec, policy, handles, sim, tasks, seeds, control_hz, realtime_episodes, bar,
                                    folder, threads))
            finally:
                dynaccel.disable_accel(policy.model)
    bar.close()
    full = next((r for r in out if not r.settings and r.executor is None), None)
    for r in out:
        r.speedup = (full.latency_ms / r.latency_ms) if full is not None and r.latency_ms > 0 else float("nan")
    return out


def _run_row(spec: RowSpec, policy, handles, sim, tasks, seeds, control_hz, realtime_episodes, bar, folder,
             threads) -> VlaRow:
    import functools

    from ..zoo import robot_tasks as rt
    from .async_chunks import ProcessPolicy

    run_policy = _PolicyRun(policy, handles)
    successes: dict[str, list[bool]] = {}
    latencies: list[float] = []
    jerks: list[float] = []
    rt_results: list[Any] = []
    if spec.executor is None:
        for name in tasks:
            for seed in seeds:
                res = rt.rollout(run_policy, name, seed, sim=sim)
                successes.setdefault(name, []).append(res.success)
                latencies.extend(res.policy_seconds)
                jerks.append(jerk(res.actions))
                bar.update(1)
        for name in tasks:
            for seed in seeds[:realtime_episodes]:
                rt_results.append(realtime_episode(run_policy, sim, name, seed, control_hz, executor=None))
                bar.update(1)
    else:
        options = dict(spec.executor)
        worker = options.pop("worker", "process")
        if worker not in ("process", "thread"):
            raise ConfigError(f"async option worker={worker!r}; accepted: process (the policy in its own process, "
                              "as a policy server) or thread (a worker thread of this process)")
        proxy = None
        if worker == "process":
            factory = functools.partial(build_policy_run, folder,
                                        [(s.strategy, dict(s.config)) for s in spec.settings], threads)
            proxy = ProcessPolicy(factory)
        try:
            for name in tasks:
                for seed in seeds:
                    res = realtime_episode(run_policy, sim, name, seed, control_hz, executor=options,
                                           worker_policy=proxy)
                    successes.setdefault(name, []).append(res["success"])
                    latencies.extend(res["policy_seconds"])
                    jerks.append(jerk(res["actions"]))
                    rt_results.append(res)
                    bar.update(1)
                bar.update(realtime_episodes)
        finally:
            if proxy is not None:
                proxy.close()
    import dynaccel

    stats = {k: _jsonable(v) for k, v in dynaccel.accel_stats(policy.model).items()}
    per_task = {t: float(np.mean(v)) for t, v in successes.items()}
    steps = sum(r["steps"] for r in rt_results)
    seconds = sum(r["seconds"] for r in rt_results)
    done = [r["seconds"] for r in rt_results if r["success"]]
    return VlaRow(
        label=spec.label, settings=[{"strategy": s.strategy, **s.config} for s in spec.settings],
        executor=spec.executor, episodes=sum(len(v) for v in successes.values()), success=per_task,
        mean_success=float(np.mean(list(per_task.values()))) if per_task else 0.0,
        latency_ms=1000 * statistics.median(latencies) if latencies else float("nan"), speedup=float("nan"),
        inferences=len(latencies), control_hz=steps / seconds if seconds > 0 else None,
        completion_s=float(np.mean(done)) if done else None, jerk=float(np.mean(jerks)) if jerks else 0.0,
        realtime_episodes=len(rt_results), stats=stats)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return str(value)


def realtime_episode(policy: Callable, sim, task_name: str, seed: int, control_hz: float,
                     executor: dict[str, Any] | None = None, worker_policy: Callable | None = None) -> dict[str, Any]:
    """One episode in real time (see the module docstring); ``executor``: the async executor's options, or None
    for synchronous execution. Returns success, steps, seconds, actions, policy_seconds."""
    from ..zoo import realtime

    return realtime.run_episode(policy, sim, task_name, seed, control_hz, executor=executor,
                                worker_policy=worker_policy)


def format_table(rows: list[VlaRow]) -> str:
    w = max(16, *(len(r.label) for r in rows))
    tasks = list(rows[0].success) if rows else []
    head = (f"{'setting':<{w}} {'success':>8} " + " ".join(f"{t[:8]:>8}" for t in tasks)
            + f" {'eps':>4} {'latency ms':>10} {'speedup':>8} {'ctrl Hz':>8} {'done s':>7} {'jerk':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        hz = f"{r.control_hz:.1f}" if r.control_hz else "-"
        done = f"{r.completion_s:.2f}" if r.completion_s else "-"
        lines.append(f"{r.label:<{w}} {100 * r.mean_success:>7.1f}% " + " ".join(
            f"{100 * r.success.get(t, 0):>7.0f}%" for t in tasks)
            + f" {r.episodes:>4} {r.latency_ms:>10.2f} {r.speedup:>7.2f}x {hz:>8} {done:>7} {r.jerk:>8.4f}")
    return "\n".join(lines)


def write_results(out_dir: Path, rows: list[VlaRow], meta: dict[str, Any],
                  names: tuple[str, str] = ("bench.json", "bench.png")) -> tuple[Path, Path]:
    """The rows as JSON and a success-vs-latency plot, each written atomically."""
    from .bench import write_json_and_plot

    def draw(ax):
        full = next((r for r in rows if not r.settings and r.executor is None), None)
        own = f"preset:{os.path.basename(str(meta.get('model', '')).rstrip('/'))}-"
        for k, r in enumerate(sorted(rows, key=lambda r: (r.latency_ms, r.mean_success))):
            marker = "s" if r.executor is not None else "o"
            ax.scatter([r.latency_ms], [100 * r.mean_success], marker=marker, s=30)
            label = r.label.replace(own, "") if own != "preset:-" else r.label  # the model's presets by short name
            label = label if len(label) < 40 else label[:37] + "..."
            ax.annotate(label, (r.latency_ms, 100 * r.mean_success), fontsize=6,
                        xytext=(3, 3 + 7 * (k % 3)), textcoords="offset points")  # staggered: neighbours overlap less
        if full is not None:
            ax.axhline(100 * full.mean_success, color="grey", linestyle="--", linewidth=0.8)
            ax.axhline(95 * full.mean_success, color="grey", linestyle=":", linewidth=0.8)
            ax.axvline(full.latency_ms, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("median policy latency per inference (ms)")
        ax.set_ylabel(f"held-out success (%), {rows[0].episodes if rows else 0} episodes per row")
        low = min([100 * r.mean_success for r in rows] or [0.0])
        ax.set_ylim(max(0.0, low - 15), 102)
        m = meta.get("machine", {})
        ax.set_title(f"{meta.get('model', '')}: success vs latency ({m.get('device', '')}, "
                     f"{m.get('threads', '?')} thread(s); dashed: full compute, dotted: 95% of its success)",
                     fontsize=8)

    return write_json_and_plot(out_dir, {"meta": meta, "rows": [asdict(r) for r in rows]}, draw, names)
