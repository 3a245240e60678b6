"""``dynaccel distill``: train a few-step student of a diffusers flow-matching pipeline (Wan or Flux).

    dynaccel distill --model tiny-wan --method perflow --steps 4 --out ./tiny-wan-4step

Three phases, each with a progress bar:

1. **Teacher trajectories.** The teacher samples with its own scheduler and classifier-free guidance at its default
   step count, on a grid that also passes through the student's N noise levels (the union of both schedules), and
   the states at the student's levels are kept: ``(samples, N + 1, *latent)``. Prompts: the zoo model's fit prompts
   (:func:`dynaccel.zoo.distill_prompts`; its held-out prompts are never used) or ``--prompts-file``. Saved in
   chunks, so an interrupted run resumes without recomputing them.
2. **Training.** The student starts as a copy of the teacher's denoiser and learns, guidance baked in, the target
   velocities the method (:mod:`dynaccel.core.distiller`, ``reflow`` or ``perflow``) derives from the trajectories.
   AdamW with warm-up and cosine decay, an exponential moving average of the weights (the saved student),
   a checkpoint every few minutes; ``--resume`` continues bit-identically from the last one.
3. **The student folder.** A diffusers pipeline folder of the teacher's classes: the teacher's components, the
   student's transformer weights, the scheduler config unchanged (an Euler flow-matching scheduler: set for N steps
   by ``num_inference_steps``), ``dynaccel_generation.json`` (N steps, ``guidance_scale`` 1: the guidance is baked
   in, one pass per step), a model card ``README.md`` and ``distill_info.json`` (teacher, method, data, steps, seed,
   times).

Pipelines (:class:`FlowPipeline`): ``WanPipeline`` and ``FluxPipeline`` with a flow-matching scheduler, each driven
as the pipeline drives itself (its ``encode_prompt``, ``prepare_latents``, sigma schedule and transformer call).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..core.errors import DynaccelError

WORK_DIR = ".dynaccel-distill"  # inside the output folder while training; removed when the student is saved
SUPPORTED_PIPELINES = ("WanPipeline", "FluxPipeline")
CHUNK = 32  # teacher samples per saved chunk


class DistillError(DynaccelError):
    """Bad input to ``dynaccel distill``: an unknown method, a bad step count, a teacher that is no pipeline..."""


@dataclass(frozen=True)
class DistillSettings:
    """Everything that determines the student (the checkpoint is only resumed under the same settings)."""

    teacher: str
    method: str
    options: dict[str, Any]
    steps: int
    samples: int = 512
    train_steps: int = 2000
    batch: int = 16
    lr: float = 1e-4
    ema: float = 0.995
    seed: int = 0
    prompts: tuple[str, ...] = ()
    call: dict[str, Any] = field(default_factory=dict)  # the teacher's generation settings (size, steps, guidance)

    def key(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


# ---- the teacher pipeline ------------------------------------------------------------------------------------------


Cond = dict  # text conditioning: name -> tensor with one row per prompt (dim 0)


def take(cond: Cond, index: torch.Tensor) -> Cond:
    """The conditioning rows ``index`` (one per sample)."""
    return {k: v[index] for k, v in cond.items()}


class FlowPipeline:
    """What distillation needs from a flow-matching pipeline: prompt conditioning, noise, the denoiser's velocity
    and the scheduler's noise levels, each as the pipeline itself does it. Wan-style (``WanPipeline``: CFG as two
    passes, timestep 1000 sigma) and Flux-style (``FluxPipeline``: packed latents with position ids, pooled text,
    timestep sigma, the pipeline's own sigma schedule; distilled guidance where the model has a guidance embedding)."""

    def __init__(self, pipe, call: dict[str, Any]):
        name = type(pipe).__name__
        if name not in SUPPORTED_PIPELINES or not hasattr(pipe, "transformer"):
            raise DistillError(f"dynaccel distill does not support {name}; supported pipelines: "
                               f"{', '.join(SUPPORTED_PIPELINES)}")
        if "shift" not in pipe.scheduler.config:
            raise DistillError(f"the teacher's scheduler {type(pipe.scheduler).__name__} is not a flow-matching "
                               "scheduler (no 'shift' in its config); the methods distill flow-matching pipelines")
        self.pipe, self.call = pipe, dict(call)
        self.transformer = pipe.transformer
        self.kind = "flux" if name == "FluxPipeline" else "wan"
        self.img_ids: torch.Tensor | None = None
        self.txt_ids: torch.Tensor | None = None

    @property
    def cfg_scale(self) -> float:
        """Classifier-free guidance of the teacher's sampling (Wan: ``guidance_scale``; Flux: none here)."""
        return float(self.call.get("guidance_scale", 1.0)) if self.kind == "wan" else 1.0

    @torch.no_grad()
    def embeddings(self, prompts: Sequence[str]) -> tuple[Cond, Cond]:
        """(conditional, unconditional) text conditioning as the pipeline makes it; one row per prompt / one row."""
        msl = int(self.call.get("max_sequence_length", 512))
        cpu = torch.device("cpu")
        if self.kind == "flux":
            embeds, pooled, self.txt_ids = self.pipe.encode_prompt(list(prompts), prompt_2=None, device=cpu,
                                                                   max_sequence_length=msl)
            e_embeds, e_pooled, _ = self.pipe.encode_prompt([""], prompt_2=None, device=cpu, max_sequence_length=msl)
            return ({"embeds": embeds.float(), "pooled": pooled.float()},
                    {"embeds": e_embeds.float(), "pooled": e_pooled.float()})
        cond, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False, max_sequence_length=msl,
                                          device=cpu, dtype=torch.float32)
        empty, _ = self.pipe.encode_prompt([""], do_classifier_free_guidance=False, max_sequence_length=msl,
                                           device=cpu, dtype=torch.float32)
        return {"embeds": cond}, {"embeds": empty}

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        cfg = self.transformer.config
        h, w = int(self.call.get("height", 480)), int(self.call.get("width", 832))
        if self.kind == "flux":
            latents, self.img_ids = self.pipe.prepare_latents(n, cfg.in_channels // 4, h, w, torch.float32,
                                                              torch.device("cpu"), generator)
            return latents
        return self.pipe.prepare_latents(n, cfg.in_channels, h, w, int(self.call.get("num_frames", 81)),
                                         torch.float32, torch.device("cpu"), generator)

    def velocity(self, model, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The denoiser's prediction at noise level ``sigma`` (B,), called as the pipeline calls it."""
        if self.kind == "flux":
            if self.img_ids is None:  # position ids of the packed latents: fixed by the resolution
                self.noise(1, torch.Generator().manual_seed(0))
            guidance = None
            if getattr(model.config, "guidance_embeds", False):
                guidance = torch.full((x.shape[0],), float(self.call.get("guidance_scale", 3.5)))
            return model(hidden_states=x, timestep=sigma.float(), guidance=guidance,
                         pooled_projections=cond["pooled"], encoder_hidden_states=cond["embeds"],
                         txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False)[0]
        return model(hidden_states=x, timestep=sigma.float() * 1000.0, encoder_hidden_states=cond["embeds"],
                     return_dict=False)[0]

    def sigmas(self, steps: int) -> torch.Tensor:
        """The scheduler's N + 1 noise levels for ``steps`` steps as the pipeline sets them (decreasing, to 0)."""
        sched = copy.deepcopy(self.pipe.scheduler)
        if self.kind == "flux":
            import numpy as np
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            seq = self.noise(1, torch.Generator().manual_seed(0)).shape[1]
            cfg = sched.config
            mu = calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
            sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device="cpu", mu=mu)
        else:
            sched.set_timesteps(int(steps), device="cpu")
        return sched.sigmas.detach().float().clone()

    @torch.no_grad()
    def trajectories(self, noise: torch.Tensor, cond: Cond, empty: Cond, student_sigmas: torch.Tensor
                     ) -> torch.Tensor:
        """The teacher's (guided) Euler trajectories from ``noise`` on the union of its default schedule and
        ``student_sigmas``; returns the states at ``student_sigmas``: (B, N + 1, ...)."""
        teacher = self.sigmas(int(self.call.get("num_inference_steps", 50)))
        grid = torch.unique(torch.cat([teacher, student_sigmas])).flip(0)  # decreasing, 1 ... 0
        keep = {round(float(s), 6) for s in student_sigmas}
        g = self.cfg_scale
        x = noise.float()
        states = [x] if round(float(grid[0]), 6) in keep else []
        uncond = {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in empty.items()}
        both_cond = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        for s, s_next in zip(grid[:-1], grid[1:]):
            sigma = s.expand(x.shape[0])
            if g > 1.0:  # both branches in one batched pass
                v_c, v_u = self.velocity(self.transformer, torch.cat([x, x]), torch.cat([sigma, sigma]),
                                         both_cond).chunk(2)
                v = v_u + g * (v_c - v_u)
            else:
                v = self.velocity(self.transformer, x, sigma, cond)
            x = x + (s_next - s) * v.float()
            if round(float(s_next), 6) in keep:
                states.append(x)
        return torch.stack(states, dim=1)


# ---- the run -------------------------------------------------------------------------------------------------------


def check_output_folder(out: Path, force: bool, resume: bool) -> None:
    """Refuse a non-empty output folder unless ``force`` (it is emptied) or ``resume`` (its checkpoint is used)."""
    if out.exists() and not out.is_dir():
        raise DistillError(f"output {str(out)!r} is a file; give a folder (it is created)")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if resume:
        if not (out / WORK_DIR / "settings.json").is_file():
            raise DistillError(f"--resume: {str(out)!r} holds no interrupted run ({WORK_DIR}/settings.json missing)")
        return
    if entries and not force:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise DistillError(f"output folder {str(out)!r} is not empty ({shown}); pass --force to replace its content "
                           "or --resume to continue an interrupted run")


def _lr(step: int, total: int, base: float, warmup: int = 50, floor: float = 0.1) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def generate_teacher_data(flow: FlowPipeline, settings: DistillSettings, work: Path, cond: Cond,
                          empty: Cond, student_sigmas: torch.Tensor, progress: bool = True,
                          log: Callable[[str], Any] = print) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The teacher's states at the student's noise levels for ``settings.samples`` samples, chunk by chunk (each
    chunk saved; chunks already on disk are loaded, not recomputed). Returns (states, prompt indices, seconds)."""
    from tqdm.auto import tqdm

    chunks = math.ceil(settings.samples / CHUNK)
    states, prompt_ids, seconds = [], [], 0.0
    bar = tqdm(total=settings.samples, desc="teacher trajectories", unit="sample", disable=not progress)
    for i in range(chunks):
        path = work / f"teacher-{i:04d}.pt"
        n = min(CHUNK, settings.samples - i * CHUNK)
        if path.is_file():
            saved = torch.load(path)
            seconds += float(saved["seconds"])
        else:
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(settings.seed * 1_000_003 + i)  # chunk i depends on nothing else
            ids = torch.randint(0, len(settings.prompts), (n,), generator=g)
            noise = flow.noise(n, g)
            traj = flow.trajectories(noise, take(cond, ids), empty, student_sigmas)
            saved = {"states": traj, "prompt_ids": ids, "seconds": time.perf_counter() - t0}
            _save_atomic(saved, path)
            seconds += saved["seconds"]
        states.append(saved["states"])
        prompt_ids.append(saved["prompt_ids"])
        bar.update(n)
    bar.close()
    return torch.cat(states), torch.cat(prompt_ids), seconds


def train_student(flow: FlowPipeline, method, settings: DistillSettings, states: torch.Tensor,
                  prompt_ids: torch.Tensor, cond: Cond, student_sigmas: torch.Tensor, work: Path,
                  max_minutes: float | None = None, stop_after: int | None = None, checkpoint_minutes: float = 5.0,
                  progress: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fine-tune a copy of the teacher's denoiser on ``method``'s pairs; resumes from ``work/checkpoint.pt``.

    Returns the EMA student and a summary (steps done, whether finished, losses, minutes)."""
    from tqdm.auto import tqdm

    student = copy.deepcopy(flow.transformer).float().train().requires_grad_(True)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.0)
    g = torch.Generator().manual_seed(settings.seed + 17)
    step, losses, minutes_before = 0, [], 0.0
    ckpt = work / "checkpoint.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        student.load_state_dict(saved["student"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        g.set_state(saved["generator"])
        step, losses, minutes_before = saved["step"], saved["losses"], saved["minutes"]

    def checkpoint():
        _save_atomic({"student": student.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                      "generator": g.get_state(), "step": step, "losses": losses,
                      "minutes": minutes_before + (time.time() - start) / 60}, ckpt)

    start = last_ckpt = time.time()
    end = settings.train_steps if stop_after is None else min(settings.train_steps, int(stop_after))
    bar = tqdm(total=settings.train_steps, initial=step, desc="distill", unit="step", disable=not progress)
    running = None
    n = states.shape[0]
    stopped_by_time = False
    while step < end:
        if max_minutes is not None and minutes_before + (time.time() - start) / 60 >= max_minutes:
            stopped_by_time = True
            break
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, settings.train_steps, settings.lr)
        idx = torch.randint(0, n, (settings.batch,), generator=g)
        x, sigma, target = method.pairs(states[idx], student_sigmas, g)
        pred = flow.velocity(student, x, sigma, take(cond, prompt_ids[idx]))
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, ps in zip(ema.parameters(), student.parameters()):
                pe.lerp_(ps, 1.0 - settings.ema)
        step += 1
        value = float(loss)
        running = value if running is None else 0.95 * running + 0.05 * value
        if step % 50 == 0 or step == end:
            losses.append(round(running, 6))
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if time.time() - last_ckpt >= 60 * checkpoint_minutes:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    checkpoint()
    minutes = minutes_before + (time.time() - start) / 60
    return ema, {"steps_done": step, "finished": step >= settings.train_steps, "stopped_by_time": stopped_by_time,
                 "loss_every_50_steps": losses, "final_loss": running if running is not None else
                 (losses[-1] if losses else None), "minutes": round(minutes, 2)}


def save_student(teacher_folder: Path, out: Path, student: torch.nn.Module, settings: DistillSettings,
                 info: dict[str, Any]) -> None:
    """The student folder: the teacher's components, the student's transformer, generation defaults, model card."""
    for item in sorted(teacher_folder.iterdir()):
        if item.name in ("transformer", WORK_DIR, "README.md", "training_info.json", "distill_info.json",
                         "dynaccel_generation.json") or item.name.startswith("."):
            continue
        target = out / item.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    student.save_pretrained(out / "transformer", safe_serialization=True)
    generation = {**settings.call, "num_inference_steps": settings.steps, "guidance_scale": 1.0}
    (out / "dynaccel_generation.json").write_text(json.dumps(generation, indent=1))
    (out / "distill_info.json").write_text(json.dumps(info, indent=1, default=str))
    (out / "README.md").write_text(model_card(info))


def model_card(info: dict[str, Any]) -> str:
    s, t = info["settings"], info["training"]
    lines = [
        f"# Few-step student of {s['teacher']} ({s['steps']} steps, {s['method']})",
        "",
        f"Written by `dynaccel distill`: a diffusers pipeline folder of the teacher's classes whose transformer was "
        f"distilled to sample in **{s['steps']} steps** with the guidance baked in (one pass per step, "
        "`guidance_scale=1`); the other components are the teacher's.",
        "",
        "| | |",
        "|---|---|",
        f"| teacher | `{s['teacher']}` ({s['call'].get('num_inference_steps')} steps, guidance "
        f"{s['call'].get('guidance_scale', 1.0)}) |",
        f"| method | `{s['method']}` {json.dumps(s['options'])}: {info['method_paper']} |",
        f"| data | {s['samples']} teacher trajectories over {len(s['prompts'])} prompts "
        f"({info['data_seconds']:.0f} s to generate) |",
        f"| training | {t['steps_done']} of {s['train_steps']} steps, batch {s['batch']}, lr {s['lr']}, EMA "
        f"{s['ema']}, seed {s['seed']}; {t['minutes']} min; final loss "
        f"{t['final_loss'] if t['final_loss'] is None else round(float(t['final_loss']), 4)} |",
        f"| machine | {info['machine']} |",
        f"| command | `{info['command']}` |",
        "",
        "Generate with `dynaccel_generation.json`'s settings (`num_inference_steps`, `guidance_scale`...). "
        "Distilled and held-out prompts: `distill_info.json`.",
        "",
    ]
    return "\n".join(lines)


def run(model: str, method_name: str, steps: int, out: str | Path, *, options: dict[str, str] | None = None,
        samples: int = 512, train_steps: int = 2000, batch: int = 16, lr: float = 1e-4, ema: float = 0.995,
        seed: int = 0, prompts_file: str | None = None, max_minutes: float | None = None,
        stop_after: int | None = None, force: bool = False, resume: bool = False, threads: int | None = None,
        progress: bool = True, keep_work: bool = False, command: str = "",
        log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Distill ``model`` (a zoo name or a pipeline folder) into a ``steps``-step student in ``out``; returns the
    run's info (also ``out/distill_info.json``). Every input is checked before anything is computed or written."""
    from .. import zoo
    from ..core.registry import get_registry
    from . import bench as b

    cls = get_registry().distiller(method_name)  # unknown names fail first
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DistillError(f"--steps must be a whole number >= 1 (the student's sampling steps), got {steps!r}")
    for name, value, low in (("--samples", samples, 1), ("--train-steps", train_steps, 1), ("--batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DistillError(f"{name} must be a whole number >= {low}, got {value!r}")
    if not (0 < lr <= 1):
        raise DistillError(f"--lr must be in (0, 1], got {lr!r}")
    if not (0 <= ema < 1):
        raise DistillError(f"--ema must be in [0, 1), got {ema!r}")
    method = cls(cls.Config.from_kwargs(method_name, **cls.Config.parse_options(method_name, dict(options or {}))))
    try:
        folder = b.resolve_model(model)
    except b.BenchError as exc:
        raise DistillError(f"teacher: {exc}") from None
    call = b.generation_defaults(model, folder)
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise DistillError(f"--prompts-file {prompts_file!r} does not exist")
        prompt_list = [p.strip() for p in path.read_text().splitlines() if p.strip()]
        heldout: list[str] = []
        if not prompt_list:
            raise DistillError(f"--prompts-file {prompts_file!r} holds no prompt (one per line)")
    elif model in zoo.available() and zoo.distill_prompts(model)[0]:
        prompt_list, heldout = zoo.distill_prompts(model)
    else:
        raise DistillError(f"teacher {model!r} is no zoo model with distillation prompts: give --prompts-file "
                           "(one prompt per line)")
    if int(call.get("num_inference_steps", 50)) <= steps:
        raise DistillError(f"--steps {steps} is not fewer than the teacher's own {call.get('num_inference_steps', 50)}")
    out = Path(out)
    check_output_folder(out, force, resume)
    settings = DistillSettings(str(model), method_name, dataclasses.asdict(method.config), steps, samples, train_steps,
                               batch, lr, ema, seed, tuple(prompt_list), call)
    work = out / WORK_DIR
    if resume:
        saved = json.loads((work / "settings.json").read_text())
        diff = [k for k, v in settings.key().items() if saved.get(k) != json.loads(json.dumps(v))]
        if diff:
            raise DistillError(f"--resume: the interrupted run in {str(out)!r} had other settings ({', '.join(diff)}"
                               "); give the same ones, or start afresh with --force")
    pipe = b.load_pipeline(folder)  # loading errors surface before the output folder is touched
    flow = FlowPipeline(pipe, call)

    if force and out.is_dir() and not resume:
        for item in out.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings.key(), indent=1))
    if threads is not None:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)

    student_sigmas = flow.sigmas(steps)
    cond, empty = flow.embeddings(prompt_list)
    log(f"teacher {model}: {call.get('num_inference_steps')} steps, guidance {call.get('guidance_scale', 1.0)}; "
        f"student: {steps} steps at sigmas {[round(float(s), 4) for s in student_sigmas]}")
    states, prompt_ids, data_seconds = generate_teacher_data(flow, settings, work, cond, empty, student_sigmas,
                                                             progress=progress, log=log)
    student, training = train_student(flow, method, settings, states, prompt_ids, cond, student_sigmas, work,
                                      max_minutes=max_minutes, stop_after=stop_after, progress=progress)
    info = {"settings": settings.key(), "heldout_prompts": heldout, "method_paper": cls.paper,
            "student_sigmas": [float(s) for s in student_sigmas], "data_seconds": round(data_seconds, 1),
            "training": training, "command": command or f"dynaccel distill --model {model} --method {method_name} "
            f"--steps {steps} --out {out}", "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    save_student(folder, out, student, settings, info)  # usable even when stopped early (--resume continues)
    if training["finished"] and not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return info
