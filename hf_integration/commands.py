"""The built-in CLI commands of the Hugging Face surfaces, added through the ``register_commands`` hook by the
built-in plugin ``dynaccel.hf`` (:mod:`dynaccel.hf_integration.plugin`), as a third party's commands are:

    dynaccel bench       # speed and quality of settings against full compute (a pipeline, or a transformers model)
    dynaccel calibrate   # fit a strategy to a pipeline and write a preset
    dynaccel demo        # Gradio app on 127.0.0.1 (needs the demo extra)
    dynaccel quickstart  # every cache strategy on a tiny Wan pipeline built from config
    dynaccel presets push REPO_ID / presets pull REPO_ID   # presets on the Hugging Face Hub
"""

from __future__ import annotations

import json
import time

import click

from ..core.cli import table
from ..core.registry import get_registry


def register(cli: click.Group) -> None:
    """Add the commands to the root group ``cli`` (``push``/``pull`` under its ``presets`` group)."""
    for command in (bench, calibrate, demo, distill, quickstart):
        cli.add_command(command)
    presets = cli.commands.get("presets")
    if not isinstance(presets, click.Group):  # a root group without the core listing: give push/pull a home
        presets = click.Group("presets", help="Presets on the Hugging Face Hub.")
        cli.add_command(presets)
    presets.add_command(presets_push)
    presets.add_command(presets_pull)


@click.command("push")
@click.argument("repo_id")
@click.option("-p", "--preset", "names", multiple=True, required=True,
              help="preset name or JSON file; repeatable (all go into one commit with a generated model card)")
@click.option("--private", is_flag=True, help="create the repo as private")
@click.option("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
@click.option("--dry-run", "dry_run", type=click.Path(file_okay=False), default=None,
              help="write the repo's files (presets, calibration files, README.md) to this folder; upload nothing")
def presets_push(repo_id, names, private, endpoint, dry_run):
    """Upload presets to the Hugging Face Hub model repo REPO_ID (created if missing; token from HF_TOKEN)."""
    from . import hub

    if dry_run:
        written = hub.stage_repo(names, dry_run, hub.check_repo_id(repo_id))
        click.echo(f"wrote {len(written)} preset(s) and README.md to {dry_run} (nothing uploaded)")
        return
    url = hub.push_presets(repo_id, names, endpoint=endpoint, private=private)
    click.echo(f"pushed {', '.join(names)} to {repo_id}: {url}")
    click.echo(f"use with: pipe.enable_accel(preset=\"hub:{repo_id}/NAME\")")


@click.command("pull")
@click.argument("repo_id")
@click.option("--revision", default=None, help="branch, tag or commit (default: main)")
@click.option("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="huggingface_hub cache folder (default: HF_HUB_CACHE)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="also copy the validated presets (and calibration files) to this folder")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def presets_pull(repo_id, revision, endpoint, cache_dir, out, as_json):
    """Download a preset repo into the huggingface_hub cache and validate every preset in it."""
    from . import hub

    pulled = hub.pull_presets(repo_id, revision=revision, endpoint=endpoint, cache_dir=cache_dir)
    if out:
        hub.stage_repo(pulled, out, repo_id)
    if as_json:
        click.echo(json.dumps([json.loads(p.to_json()) for p in pulled], indent=2))
        return
    rows = []
    for p in pulled:
        m = p.provenance.get("measured", {}) if isinstance(p.provenance.get("measured"), dict) else {}
        speed = m.get("speedup", p.provenance.get("speedup"))
        rows.append([f"hub:{repo_id}/{p.name}", p.strategy, p.model_id or p.architecture or "-",
                     f"{speed:.2f}x" if isinstance(speed, (int, float)) else "-",
                     f"{m['psnr_db']:.2f}" if isinstance(m.get("psnr_db"), (int, float)) else "-"])
    click.echo(table(rows, ["preset", "strategy", "model", "speedup", "PSNR (dB)"]))
    if out:
        click.echo(f"\ncopied to {out}")


@click.command()
@click.option("--steps", default=20, show_default=True, type=click.IntRange(2, 1000), help="denoising steps")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 100), help="timed repeats (median)")
def quickstart(steps: int, repeats: int) -> None:
    """Run every cache strategy on a tiny Wan pipeline built from config and print speed and drift."""
    from . import quickstart as qs

    click.echo("dynaccel quickstart: tiny WanPipeline built from config (random weights, CPU, 1 thread);")
    click.echo(f"{steps} steps with CFG, same seed; PSNR of the final latents against full compute.\n")
    click.echo(qs.format_table(qs.run(steps=steps, repeats=repeats)))


# higher-quality presets added to the default rows where the model has them: they face diffusers' defaults, which
# sit at 47-55 dB on the zoo models (``--all-presets`` gives every preset)
DEFAULT_EXTRA_PRESETS = ["taylorseer-48db", "taylorseer-56db"]
# every cache diffusers 0.42 offers for transformer pipelines; one that cannot run on the model is reported, not run
DEFAULT_PEERS = ["diffusers:fbcache", "diffusers:magcache", "diffusers:taylorseer", "diffusers:seacache",
                 "diffusers:pab", "diffusers:fastercache",
                 # cache-dit's DBCache: F1B0 (its fastest documented form), with its TaylorSeer calibrator, and its
                 # own default Fn/Bn (F8B0); reported as not run when cache-dit is not installed
                 "cachedit:dbcache:Fn=1,Bn=0", "cachedit:dbcache:Fn=1,Bn=0,calibrator=taylorseer", "cachedit:dbcache"]


@click.command()
@click.option("--model", default="tiny-wan", show_default=True,
              help="zoo model name (tiny-wan, tiny-flux, tiny-vlm, tiny-pi0), smollm2, or a local diffusers "
                   "pipeline or π0 policy folder")
@click.option("-s", "--setting", "settings", multiple=True,
              help="strategy[:key=value,...], preset:NAME_OR_PATH[:key=value,...], diffusers:NAME[:key=value,...] or "
                   "cachedit:dbcache[:key=value,...]; repeatable "
                   "(default: every dynaccel cache strategy, from the model's built-in presets where they exist). "
                   "Robot policies: several joined with '+' run together, 'async[:key=value,...]' adds the executor")
@click.option("--peers/--no-peers", default=True, show_default=True, help="add diffusers' built-in cache rows")
@click.option("--peer-grid", is_flag=True,
              help="run every peer over its documented tuning range instead of at its defaults: diffusers' FBCache, "
                   "MagCache, TaylorSeer, SeaCache, PAB, FasterCache, and cache-dit's DBCache (if installed)")
@click.option("--pareto", is_flag=True,
              help="also write pareto.png (speed vs PSNR, the frontier marked) and list the peer settings no "
                   "dynaccel setting dominates")
@click.option("--pareto-min-psnr", type=float, default=30.0, show_default=True,
              help="with --pareto: the quality floor (dB) below which peer rows are not held against us")
@click.option("--fewer-steps/--no-fewer-steps", default=True, show_default=True,
              help="add the rows every cache must beat: no acceleration at 40%, 27% and 13% of the steps with the "
                   "pipeline's own scheduler, UniPC and DPM-Solver++ (unless -s gives steps:N rows)")
@click.option("--prompt", "prompts", multiple=True, help="repeatable (default: the zoo model's four prompts)")
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds")
@click.option("--steps", type=click.IntRange(2, 1000), default=None, help="denoising steps (default: the model's)")
@click.option("--repeats", type=click.IntRange(1, 100), default=3, show_default=True, help="timed passes (median)")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="torch threads")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench-out", show_default=True,
              help="folder for bench.json and bench.png")
@click.option("--items", type=click.IntRange(1, 10000), default=300, show_default=True,
              help="tiny-vlm: held-out questions scored for accuracy")
@click.option("--all-presets", is_flag=True,
              help="add every built-in preset of the model (its extra quality targets too: a quality ladder)")
@click.option("--episodes", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="robot policies (tiny-pi0): held-out episodes per task")
@click.option("--task", "tasks", multiple=True, help="robot policies: a task to run (repeatable; default: all four)")
@click.option("--control-hz", type=click.FloatRange(min=1.0, max=10000.0), default=80.0, show_default=True,
              help="robot policies: the real-time loop's control rate (80: Meta-World's own)")
@click.option("--realtime-episodes", type=click.IntRange(0, 1000), default=2, show_default=True,
              help="robot policies: real-time episodes per task timed for control frequency (synchronous rows)")
def bench(model, settings, peers, peer_grid, pareto, pareto_min_psnr, fewer_steps, prompts, seeds, steps, repeats, threads, out_dir, items, all_presets, episodes,
          tasks, control_hz, realtime_episodes):
    """Speed and quality of acceleration settings against full compute on one pipeline, on a transformers model
    (--model tiny-vlm or smollm2: token strategies; prefill, decode, memory, accuracy or agreement), or on a robot
    policy (--model tiny-pi0: closed-loop success on held-out episodes, latency, control frequency, jerk)."""
    from pathlib import Path

    from . import bench as b
    from . import bench_tokens as bt
    from . import bench_vla as bv
    from .. import zoo

    if (peer_grid or pareto) and (bv.is_policy_model(model) or bt.is_transformers_model(model)):
        flag = "--peer-grid" if peer_grid else "--pareto"
        raise click.BadParameter(f"{flag} applies to diffusers pipelines (cache peers against PSNR); {model!r} is a "
                                 "robot policy or a transformers model", param_hint=flag)
    if bv.is_policy_model(model):
        specs = [bv.parse_row(x) for x in settings or bv.default_rows(model)]
        rows = bv.run(model, specs, episodes=episodes, tasks=list(tasks) or None, control_hz=control_hz,
                      realtime_episodes=realtime_episodes, threads=threads)
        meta = {"model": model, "rows": [s.label for s in specs], "episodes_per_task": episodes,
                "heldout_seeds": "robot_tasks.heldout_seeds(episodes)", "control_hz": control_hz,
                "realtime_episodes_per_task": realtime_episodes, "machine": b.machine(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        click.echo(bv.format_table(rows))
        json_path, png_path = bv.write_results(Path(out_dir), rows, meta)
        click.echo(f"\nwrote {json_path} and {png_path}")
        return
    if bt.is_transformers_model(model):
        parsed = [b.parse_setting(x) for x in settings or bt.default_settings(model)]
        rows = bt.run(model, parsed, repeats=repeats, heldout_items=items, threads=threads)
        meta = {"model": model, "settings": [s.label for s in parsed], "repeats": repeats,
                "heldout_items": items if model != bt.SMOLLM2 else None, "machine": b.machine(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        click.echo(bt.format_table(rows))
        json_path, png_path = bt.write_results(Path(out_dir), rows, meta)
        click.echo(f"\nwrote {json_path} and {png_path}")
        return

    names = get_registry().presets
    untrained: list[str] = []  # strategies that need a trained file and have no preset for this model
    if not settings:  # a zoo model's built-in presets where they exist, else each strategy at its defaults
        settings = []
        for s in b.default_strategies():
            if f"{model}-{s}" in names:
                settings.append(f"preset:{model}-{s}")
            elif getattr(get_registry().strategy(s), "learned_option", None):
                untrained.append(s)
            else:
                settings.append(s)
        settings += [f"preset:{model}-{s}" for s in DEFAULT_EXTRA_PRESETS if f"{model}-{s}" in names]
    if all_presets:
        ladder = [f"preset:{n}" for n in sorted(names) if names[n].model_id == model]
        if not ladder:
            raise click.BadParameter(f"no built-in presets for model {model!r}", param_hint="--all-presets")
        settings = list(settings) + [x for x in ladder if x not in settings]
    parsed = [b.parse_setting(x) for x in settings]
    if peer_grid:
        parsed += [p for p in b.peer_grid() if p.label not in {q.label for q in parsed}]
    elif peers and not any(p.kind in b.PEER_KINDS for p in parsed):
        parsed += [b.parse_setting(x) for x in DEFAULT_PEERS]
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r}; accepted: comma-separated integers, e.g. 0,1,2", param_hint="--seeds")
    path = b.resolve_model(model)
    pipe = b.load_pipeline(path)
    b.validate_settings(pipe, parsed)
    call = b.generation_defaults(model, path)
    if steps is not None:
        call["num_inference_steps"] = steps
    if fewer_steps and not any(p.kind == "steps" for p in parsed):
        default_steps = int(call.get("num_inference_steps") or 50)  # diffusers pipelines default to 50
        parsed += b.fewer_steps_settings(default_steps)
        if model in zoo.available() and not any(p.kind == "student" for p in parsed):
            parsed += [b.parse_setting(f"student:{name}") for name in zoo.students(model)]  # distilled students
    prompts = list(prompts) or b.default_prompts(model)
    not_run: list[dict[str, str]] = [
        {"setting": s, "error": f"{s} needs a trained file and {model!r} has no preset with one; train it with "
                                f"dynaccel calibrate --model {model} --strategy {s} --learn --out PRESET.json"}
        for s in untrained]
    scorer = zoo.adherence(model) if model in zoo.available() else None
    rows = b.run_bench(pipe, parsed, prompts, seed_list, call, repeats, threads, not_run=not_run, adherence=scorer)
    meta = {"model": model, "path": str(path), "call": call, "prompts": prompts,
            "seeds": seed_list, "repeats": repeats, "machine": b.machine(), "date": time.strftime("%Y-%m-%d"),
            "not_run": not_run}
    click.echo(b.format_table(rows))
    for item in not_run:
        click.echo(f"not run: {item['setting']} failed on {type(pipe).__name__} ({item['error']})")
    if pareto:
        meta["pareto"] = b.pareto(rows, pareto_min_psnr)
        click.echo("\n" + b.format_pareto(meta["pareto"]))
    json_path, png_path = b.write_results(Path(out_dir), rows, meta)
    written = f"{json_path} and {png_path}"
    if pareto:
        written = f"{json_path}, {png_path} and {b.write_pareto_plot(Path(out_dir), rows, meta['pareto'], meta)}"
    click.echo(f"\nwrote {written}")


@click.command()
@click.option("--model", default="tiny-wan", show_default=True,
              help="zoo model name, local diffusers pipeline folder, or robot policy (tiny-pi0 or a π0 folder)")
@click.option("--strategy", required=True, help="the strategy to calibrate, e.g. teacache")
@click.option("--min-psnr", type=float, default=30.0, show_default=True, help="quality target against full compute (dB)")
@click.option("--fit-prompt", "fit_prompts", multiple=True, help="prompts for fitting (default: two built-in ones)")
@click.option("--heldout-prompt", "heldout_prompts", multiple=True,
              help="prompts for the threshold search (default for zoo models: six of their distillation fit "
                   "prompts, never the held-out ones; else two built-in ones)")
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds")
@click.option("--steps", type=click.IntRange(2, 1000), default=None, help="denoising steps (default: the model's)")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="torch threads")
@click.option("--caps", default=None,
              help="comma-separated skip caps to search for strategies with one (e.g. taylorseer's max_interval); "
                   "default: the option's default and 2,3,4,6")
@click.option("--set", "fixed", multiple=True,
              help="key=value: an option held fixed while searching (e.g. order=2 for taylorseer); repeatable")
@click.option("--min-success", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.95, show_default=True,
              help="robot policies: the success rate to keep, as a fraction of full compute's")
@click.option("--episodes", type=click.IntRange(1, 10000), default=5, show_default=True,
              help="robot policies: fit episodes per task for each candidate")
@click.option("--heldout-episodes", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="robot policies: held-out episodes per task that judge the chosen setting")
@click.option("--learn", is_flag=True,
              help="train what the strategy learns (learned_cache: its predictor) on full-compute runs of the fit "
                   "prompts first, and write it beside the preset")
@click.option("--search", "searched", multiple=True,
              help="key=v1,v2,...: another option searched jointly with the threshold and skip cap, e.g. "
                   "start=0,0.1,0.2 or order=0,1; repeatable")
@click.option("--check-prompt", "check_prompts", multiple=True,
              help="prompts the search never sees; the chosen setting's quality on them is printed and recorded "
                   "(default for zoo models: their held-out prompts)")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="preset JSON to write")
def calibrate(model, strategy, min_psnr, fit_prompts, heldout_prompts, seeds, steps, threads, caps, fixed, min_success,
              episodes, heldout_episodes, learn, searched, check_prompts, out):
    """Fit a strategy to a pipeline and write the fastest preset that meets --min-psnr on held-out prompts; on a
    robot policy (--model tiny-pi0), the lowest-latency setting whose closed-loop success on fit episodes keeps
    --min-success of full compute's, judged on held-out episodes."""
    from pathlib import Path

    import torch

    from . import bench as b
    from . import calibrate as c

    from ..core.files import check_writable_target

    cls = get_registry().strategy(strategy)  # unknown names fail before loading anything
    knob = cls.Config.quality_knob_field()
    if knob is None:
        raise click.BadParameter(f"{strategy!r} declares no quality knob to search; accepted: a strategy whose "
                                 "Config declares one (option(..., knob=True))", param_hint="--strategy")
    check_writable_target(out)  # so does an --out whose folder is missing (no folder is created)
    base = b.parse_setting(f"{strategy}:{','.join(fixed)}").config if fixed else {}
    if knob.name in base:
        raise click.BadParameter(f"{knob.name} is what calibrate searches; fix other options", param_hint="--set")
    search: dict[str, list] = {}
    for item in searched:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise click.BadParameter(f"{item!r}; accepted: key=v1,v2,... e.g. start=0,0.1,0.2", param_hint="--search")
        if key == knob.name or key in base or key in search:
            raise click.BadParameter(f"{key}: searched already, or fixed by --set", param_hint="--search")
        typed = [b.parse_setting(f"{strategy}:{key}={v.strip()}").config[key] for v in values.split(",") if v.strip()]
        search[key] = typed
    from . import bench_vla as bv

    if bv.is_policy_model(model):  # success rate in closed loop is the quality target (PSNR means nothing here)
        from ..core.files import atomic_write
        from . import calibrate_vla as cv

        if caps:
            raise click.BadParameter("robot policies search only the quality knob", param_hint="--caps")
        if learn:
            raise click.BadParameter("robot policies have nothing to learn here", param_hint="--learn")
        result = cv.calibrate(model, strategy, min_success=min_success, episodes=episodes,
                              heldout_episodes=heldout_episodes, fixed=base, threads=threads)
        click.echo(cv.format_result(result))
        if result.chosen is None:
            raise click.ClickException(f"no {knob.name} value kept {min_success:.0%} of full compute's success on "
                                       "the fit episodes; nothing written")
        atomic_write(Path(out), lambda tmp: Path(tmp).write_text(result.preset.to_json() + "\n"))
        m = result.preset.provenance["measured"]
        click.echo(f"\nchose {result.chosen.label}: {m['latency_speedup']:.2f}x lower latency, held-out success "
                   f"{m['heldout_success']:.0%} (full compute {m['heldout_full_success']:.0%}); wrote {out}")
        return
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r}; accepted: comma-separated integers, e.g. 0,1,2", param_hint="--seeds")
    try:
        cap_list = [int(x) for x in caps.split(",") if x.strip()] if caps else None
    except ValueError:
        raise click.BadParameter(f"{caps!r}; accepted: comma-separated integers, e.g. 2,4", param_hint="--caps")
    torch.set_num_threads(threads)
    path = b.resolve_model(model)
    pipe = b.load_pipeline(path)
    call = b.generation_defaults(model, path)
    if steps is not None:
        call["num_inference_steps"] = steps
    fit = list(fit_prompts) or b.default_prompts(model)[:2]
    held = list(heldout_prompts) or c.search_prompts(model)
    checks = list(check_prompts) if check_prompts else [p for p in c.check_prompts(model) if p not in held]
    learn_prompts = list(fit_prompts) or c.learn_prompts(model, fit)
    result = c.calibrate(pipe, model, strategy, fit, held, seed_list, call, min_psnr, Path(out).parent,
                         caps=cap_list, base_config=base, learn=learn, learn_prompts=learn_prompts, search=search,
                         check_prompts=checks)
    click.echo(b.format_table(result.rows))
    written = c.write_preset(result, Path(out))
    m = result.preset.provenance["measured"]
    click.echo(f"\nchose {result.chosen.label}: {m['speedup']:.2f}x at {m['psnr_db']:.2f} dB on the search prompts")
    checked = result.preset.provenance.get("checked")
    if checked:
        click.echo(f"on {len(checked['prompts'])} prompts the search never saw: {checked['psnr_db']:.2f} dB "
                   f"({checked['computed']} computed)")
    click.echo("wrote " + ", ".join(map(str, written)))


@click.command()
@click.option("--model", default="tiny-wan", show_default=True, help="zoo model name or local diffusers pipeline folder")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535), help="port on 127.0.0.1")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch threads (default: torch's)")
@click.option("--no-warmup", is_flag=True, help="time the first generation of each side (no warm-up run)")
def demo(model, port, threads, no_warmup):
    """Gradio app on 127.0.0.1 (no share link): baseline vs accelerated side by side, and threshold sweeps."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise click.ClickException('the demo needs Gradio: pip install -c constraints.txt -e ".[demo]"') from None
    import torch

    from . import demo as d

    if threads:
        torch.set_num_threads(threads)
    d.launch(model, port=port, warmup=not no_warmup)




@click.command()
@click.option("--model", default="tiny-wan", show_default=True,
              help="the teacher: a zoo model name or a local diffusers pipeline folder (flow matching, WanPipeline)")
@click.option("--method", required=True, help="distillation method: reflow or perflow (or one a plugin registers)")
@click.option("--steps", "student_steps", type=int, required=True, help="the student's sampling steps (>= 1)")
@click.option("--out", required=True, type=click.Path(), help="folder for the student pipeline (created)")
@click.option("--set", "options", multiple=True, help="key=value: an option of the method; repeatable")
@click.option("--samples", type=int, default=512, show_default=True, help="teacher trajectories to distill from")
@click.option("--train-steps", type=int, default=2000, show_default=True, help="optimiser steps (the schedule length)")
@click.option("--batch", type=int, default=16, show_default=True, help="trajectories per optimiser step")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="peak learning rate (AdamW)")
@click.option("--ema", type=float, default=0.995, show_default=True, help="decay of the weights' moving average")
@click.option("--seed", type=int, default=0, show_default=True, help="seeds the data and the training")
@click.option("--prompts-file", type=click.Path(dir_okay=False), default=None,
              help="prompts to distill on, one per line (default for zoo models: their fit prompts)")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop training after this many minutes (the student is saved; --resume continues)")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="stop after this many optimiser steps (reproduces a run that a time budget stopped)")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch threads (default: torch's)")
@click.option("--force", is_flag=True, help="replace the content of a non-empty output folder")
@click.option("--resume", is_flag=True, help="continue the interrupted run in --out from its last checkpoint")
def distill(model, method, student_steps, out, options, samples, train_steps, batch, lr, ema, seed, prompts_file,
            max_minutes, stop_after, threads, force, resume):
    """Train a few-step student of a flow-matching pipeline (docs/distill.md): a pipeline folder of the same
    classes with the student's transformer, generation defaults for its step count and a model card."""
    import shlex

    from . import bench as b
    from . import distill as d

    raw = b._options(f"--set {' '.join(options)}", ",".join(options)) if options else {}
    ctx = click.get_current_context()
    parts = ["dynaccel", "distill"]
    for param in ctx.command.params:  # the options as given (defaults left out), for the model card
        value = ctx.params.get(param.name)
        if value in (None, False, ()) or (value == param.default and param.name != "model") \
                or param.name in ("resume", "force"):
            continue
        flag = param.opts[0]
        for v in (value if isinstance(value, tuple) else (value,)):
            parts += [flag] if value is True else [flag, str(v)]
    command = " ".join(shlex.quote(x) for x in parts)
    info = d.run(model, method, student_steps, out, options=raw, samples=samples, train_steps=train_steps,
                 batch=batch, lr=lr, ema=ema, seed=seed, prompts_file=prompts_file, max_minutes=max_minutes,
                 stop_after=stop_after, force=force, resume=resume, threads=threads, command=command,
                 log=lambda m: click.echo(m, err=True))
    t = info["training"]
    state = "finished" if t["finished"] else f"stopped after {t['steps_done']} of {info['settings']['train_steps']} " \
        "steps (--resume continues)"
    click.echo(f"student of {model} in {info['settings']['steps']} steps ({method}): training {state}; "
               f"{t['minutes']} min, final loss {t['final_loss']}; wrote {out}")
