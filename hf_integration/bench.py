"""``dynaccel bench``: speed and quality of acceleration settings on one diffusers pipeline, side by side.

Every setting runs the same prompts and seeds. Speed: wall time per generation (a warm-up generation first, the
median of ``repeats`` passes over all prompts and seeds, torch threads pinned), and the speedup against full
compute measured in the same process. Work: transformer passes computed (block calls for per-block strategies).
Quality: against the full-compute output of the same prompt and seed, PSNR over all frames (from the mean squared
error), the worst frame's PSNR, and the mean SSIM of the frames. Peer rows run the cache methods built into diffusers through the same harness.

    dynaccel bench                                           # zoo tiny-wan, default settings and peers
    dynaccel bench --model ./my-pipeline -s teacache:threshold=0.1 -s diffusers:fbcache:threshold=0.1

Results: a table on stdout, ``bench.json`` and a speed-vs-quality plot ``bench.png`` in ``--out`` (written to a
temporary file first, then renamed: an interrupted or failed run leaves no partial file).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.errors import ConfigError, DynaccelError
from ..core.files import atomic_write, read_bounded
from ..core.presets import MAX_FILE_BYTES

#: diffusers' built-in caches usable as peer rows, with the options each accepts
# diffusers 0.42's caches for transformer pipelines (TextKVCacheConfig, exact text K/V reuse for NucleusMoE-Image
# only, is left out: it does not apply to the video/image DiTs the zoo has)
PEERS = ("fbcache", "magcache", "taylorseer", "fastercache", "pab", "seacache")

#: cache-dit's caches usable as peer rows (``cachedit:dbcache[:key=value,...]``; ``pip install cache-dit``). Options
#: are DBCacheConfig's fields (short forms ``Fn``, ``Bn``, ``threshold``), plus ``calibrator=taylorseer`` and
#: ``taylorseer_order`` for cache-dit's TaylorSeer calibrator
CACHEDIT_PEERS = ("dbcache",)
CACHEDIT_ALIASES = {"Fn": "Fn_compute_blocks", "Bn": "Bn_compute_blocks", "threshold": "residual_diff_threshold"}
CACHEDIT_EXTRA = ("calibrator", "taylorseer_order")

#: the setting kinds that are other projects' methods (peers): a failure on a pipeline drops the row with a note
PEER_KINDS = ("diffusers", "cachedit")

#: solvers a fewer-steps row (``steps:N[:SOLVER]``) can use: the pipeline's own scheduler, or one of the multistep
#: solvers diffusers ships for flow matching, built from the pipeline's scheduler config (its shift kept)
SOLVERS = ("default", "unipc", "dpm++")

#: fractions of the default step count the default fewer-steps rows use (30 steps: 12, 8, 4)
FEWER_STEPS_FRACTIONS = (0.4, 0.27, 0.13)

DEFAULT_PROMPTS = [
    "a red circle moving right fast",
    "a blue square moving up slow",
    "a green triangle moving left fast",
    "a yellow circle moving down slow",
]


def default_prompts(model: str) -> list[str]:
    """A zoo model's own four prompts (fit: the first two, held out: the last two), else :data:`DEFAULT_PROMPTS`."""
    from .. import zoo

    if model in zoo.available():
        return zoo.default_prompts(model) or list(DEFAULT_PROMPTS)
    return list(DEFAULT_PROMPTS)


def default_strategies() -> list[str]:
    """The strategies ``dynaccel bench`` runs when given no ``-s`` on a diffusers pipeline, in registration order:
    each with ``bench_default = True``, and each of the cache family that does not opt out (``bench_default =
    False``). Read from the registry, so a third party's cache strategy is benched with no edit here."""
    from ..core.registry import get_registry

    return [name for name, cls in get_registry().strategies.items()
            if (cls.family == "cache" if cls.bench_default is None else cls.bench_default)]


class BenchError(DynaccelError):
    """Bad input to bench/calibrate: a missing model folder, an inapplicable strategy, an unreachable target."""


@dataclass
class Setting:
    """One row: full compute, a dynaccel strategy, or a diffusers built-in cache (``peer``)."""

    kind: str  # "full", "dynaccel", "diffusers", "cachedit", "steps" (strategy = the solver, config = {"steps"}),
    # or "student"
    strategy: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    preset: str = ""  # the preset it came from, if any (then the label)
    source: Any = field(default=None, repr=False, compare=False)  # that Preset, checked against the model
    spelled: dict[str, str] = field(default_factory=dict)  # options as the user wrote them (for the label)
    student: str = ""  # kind "student": the student as named (zoo name or folder); strategy/config: a setting on it
    compiled: str = ""  # torch.compile backend the transformer runs under ("" not compiled): kind "full" or "dynaccel"

    @property
    def label(self) -> str:
        if self.compiled:
            backend = "" if self.compiled == "inductor" else f":{self.compiled}"
            inner = dataclasses.replace(self, compiled="")
            return f"compiled{backend}" + ("" if self.kind == "full" else f"+{inner.label}")
        if self.kind == "full":
            return "full compute"
        if self.kind == "steps":
            return f"steps={self.config['steps']}" + ("" if self.strategy == "default" else f" {self.strategy}")
        if self.kind == "student":
            inner = dataclasses.replace(self, kind="dynaccel", student="")
            return f"student:{self.student}" + (f"+{inner.label}" if self.strategy else "")
        if self.preset:
            return f"preset:{self.preset}"
        items = self.spelled.items() if self.kind == "cachedit" else self.config.items()  # its short forms kept
        opts = ",".join(f"{k}={_short(self.spelled.get(k, v))}" for k, v in items)
        name = f"{self.kind}:{self.strategy}" if self.kind in PEER_KINDS else self.strategy
        return f"{name}:{opts}" if opts else name


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 14 else text[:6] + "..." + text[-5:]


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):  # Python's spelling as well as JSON's
        return text.lower() == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _options(setting: str, opts: str) -> dict[str, str]:
    """``key=value,...`` -> the values as text (typed by :func:`_typed` or, for diffusers' caches, :func:`_value`)."""
    config = {}
    for item in filter(None, re.split(r",(?=\s*[A-Za-z_]\w*=)", opts)):  # values may hold commas
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"setting {setting!r}: option {item!r} is not key=value; example: teacache:threshold=0.1"
            )
        config[key.strip()] = val.strip()
    return config


def _typed(strategy: str, raw: dict[str, str]) -> dict[str, Any]:
    """The options of a dynaccel strategy, typed and checked by its schema (the conversion every surface uses)."""
    from ..core.registry import get_registry

    return get_registry().strategy(strategy).Config.parse_options(strategy, raw)


def parse_setting(text: str) -> Setting:
    """``teacache``, ``teacache:threshold=0.1,start=0.1``, ``diffusers:fbcache:threshold=0.1``,
    ``cachedit:dbcache:Fn=1,Bn=0,threshold=0.08,calibrator=taylorseer``,
    ``preset:NAME_OR_PATH``, ``preset:NAME_OR_PATH:threshold=0.05`` (the preset with options overridden),
    ``steps:N`` / ``steps:N:unipc`` / ``steps:N:dpm++`` (no acceleration, N denoising steps with the pipeline's own
    scheduler or a multistep solver) or ``full``."""
    if text == "full":
        return Setting("full")
    if text == "compiled" or text.startswith(("compiled+", "compiled:")):
        head, plus, inner = text.partition("+")
        backend = head.partition(":")[2].strip() or "inductor"
        if not re.fullmatch(r"[A-Za-z_][\w.]*", backend):
            raise ConfigError(f"setting {text!r}: backend {backend!r} is not a torch.compile backend name; example: "
                              "compiled, compiled:aot_eager or compiled+preset:tiny-wan-magcache")
        if not plus:
            return Setting("full", compiled=backend)
        setting = parse_setting(inner)
        if setting.kind != "dynaccel" or setting.compiled:
            raise ConfigError(f"setting {text!r}: after 'compiled+' comes a dynaccel strategy or preset, not "
                              f"{inner!r}")
        return dataclasses.replace(setting, compiled=backend)
    if text.startswith("steps:"):
        return parse_steps_setting(text)
    if text.startswith("student:"):
        ref, _, inner = text[len("student:"):].partition("+")
        if not ref.strip():
            raise ConfigError(f"setting {text!r}: name the student, e.g. student:tiny-wan-4step or "
                              "student:./my-student+teacache:threshold=0.1")
        resolve_model(ref.strip())  # a zoo name or a pipeline folder, else a BenchError naming both
        if not inner:
            return Setting("student", student=ref.strip())
        setting = parse_setting(inner)
        if setting.kind != "dynaccel":
            raise ConfigError(f"setting {text!r}: after '+' comes a dynaccel strategy or preset to run on the "
                              f"student, not {inner!r}")
        return dataclasses.replace(setting, kind="student", student=ref.strip())
    if text.startswith("preset:"):
        from ..core.api import resolve_preset

        ref, overrides = text[len("preset:"):], {}
        head, sep, tail = ref.rpartition(":")
        if sep and head and "=" in tail:  # NAME:key=value,... (a path holding ':' without '=' stays whole)
            ref, overrides = head, _options(text, tail)
        preset = resolve_preset(ref)
        label = preset.name + (":" + ",".join(f"{k}={_short(v)}" for k, v in overrides.items()) if overrides else "")
        overrides = _typed(preset.strategy, overrides)
        return Setting("dynaccel", preset.strategy, {**preset.config, **overrides}, preset=label, source=preset)
    kind = "dynaccel"
    for peer in PEER_KINDS:
        if text.startswith(peer + ":"):
            kind, text = peer, text[len(peer) + 1:]
    name, _, opts = text.partition(":")
    raw = _options(text, opts)
    if kind == "diffusers" and name not in PEERS:
        raise ConfigError(f"unknown diffusers cache {name!r}; accepted: {', '.join('diffusers:' + p for p in PEERS)}")
    if kind == "cachedit":
        if name not in CACHEDIT_PEERS:
            raise ConfigError(f"unknown cache-dit cache {name!r}; accepted: "
                              f"{', '.join('cachedit:' + p for p in CACHEDIT_PEERS)}")
        return Setting(kind, name, _cachedit_options(text, raw), spelled=raw)
    config = {k: _value(v) for k, v in raw.items()} if kind == "diffusers" else _typed(name, raw)
    return Setting(kind, name, config, spelled=raw)


def _cachedit_options(text: str, raw: dict[str, str]) -> dict[str, Any]:
    """cache-dit DBCache options as typed values, short forms expanded; the field names are checked against
    DBCacheConfig when the row is installed (cache-dit may not be installed when the setting is parsed)."""
    config: dict[str, Any] = {}
    for key, val in raw.items():
        full = CACHEDIT_ALIASES.get(key, key)
        if full in config:
            raise ConfigError(f"setting {text!r}: {key!r} given twice (short and long form)")
        config[full] = _value(val)
    cal = config.get("calibrator", "none")
    if cal not in ("none", "taylorseer"):
        raise ConfigError(f"setting {text!r}: calibrator={cal!r}; accepted: none, taylorseer")
    return config


def parse_steps_setting(text: str) -> Setting:
    """``steps:N[:SOLVER]`` -> a fewer-steps row (N >= 1; SOLVER one of :data:`SOLVERS`, default ``default``)."""
    parts = text.split(":")
    count = parts[1] if len(parts) > 1 else ""
    solver = parts[2] if len(parts) > 2 else "default"
    if len(parts) > 3 or not count.strip().isdigit() or int(count) < 1:
        raise ConfigError(f"setting {text!r}: expected steps:N or steps:N:SOLVER with N a whole number >= 1 and "
                          f"SOLVER one of {', '.join(SOLVERS)}; example: steps:12:unipc")
    if solver not in SOLVERS:
        raise ConfigError(f"setting {text!r}: unknown solver {solver!r}; accepted: {', '.join(SOLVERS)}")
    return Setting("steps", solver, {"steps": int(count)})


def peer_grid() -> list[Setting]:
    """``dynaccel bench --peer-grid``: every peer over its documented tuning range, so that a dynaccel preset is
    compared with each peer at its best setting for the model, not at one default.

    Ranges: the options each peer documents, around its default (diffusers 0.42.1's config docstrings and docs,
    cache-dit 1.5.3's DBCacheConfig and README):

    - diffusers FBCache ``threshold`` 0.05 (its default) to 0.3 (the docs' example uses 0.2);
    - diffusers MagCache ``threshold`` 0.06 (default), 0.12, 0.24 x ``max_skip_steps`` 2, 3 (default), 4, with
      magnitude ratios from its own ``calibrate=True`` run on the model;
    - diffusers TaylorSeer ``cache_interval`` 2-5 (default 5) x ``use_lite_mode``;
    - diffusers SeaCache ``threshold`` 0.1, 0.25 (default), 0.4; PAB ``spatial_attention_block_skip_range`` 2-4;
      FasterCache at its defaults;
    - cache-dit DBCache F1B0 (its fastest documented form) x ``residual_diff_threshold`` 0.04-0.24 (default 0.08)
      x TaylorSeer calibrator off/on, and DBCache at its defaults (F8B0: needs at least 8 blocks).
    """
    texts = [f"diffusers:fbcache:threshold={t}" for t in (0.05, 0.1, 0.15, 0.2, 0.3)]
    texts += [f"diffusers:magcache:threshold={t},max_skip_steps={k}" for t in (0.06, 0.12, 0.24) for k in (2, 3, 4)]
    texts += [f"diffusers:taylorseer:cache_interval={n},use_lite_mode={lite}" for n in (2, 3, 4, 5)
              for lite in ("false", "true")]
    texts += [f"diffusers:seacache:threshold={t}" for t in (0.1, 0.25, 0.4)]
    texts += [f"diffusers:pab:spatial_attention_block_skip_range={k}" for k in (2, 3, 4)]
    texts += ["diffusers:fastercache"]
    texts += [f"cachedit:dbcache:Fn=1,Bn=0,threshold={t}" + (",calibrator=taylorseer" if cal else "")
              for t in (0.04, 0.08, 0.12, 0.16, 0.24) for cal in (False, True)]
    texts += ["cachedit:dbcache"]
    return [parse_setting(t) for t in texts]


def fewer_steps_settings(default_steps: int, solvers: tuple[str, ...] = SOLVERS) -> list[Setting]:
    """The fewer-steps rows ``dynaccel bench`` adds by default: each solver at :data:`FEWER_STEPS_FRACTIONS` of the
    default step count (distinct counts >= 2 below it)."""
    counts = sorted({max(2, round(default_steps * f)) for f in FEWER_STEPS_FRACTIONS} - {default_steps},
                    reverse=True)
    counts = [n for n in counts if n < default_steps]
    return [Setting("steps", solver, {"steps": n}) for solver in solvers for n in counts]


def solver_scheduler(pipe, solver: str):
    """A scheduler for ``solver`` built from ``pipe``'s own scheduler config (``default``: the scheduler itself).

    For flow-matching pipelines (a ``shift`` in the config) the multistep solvers run on flow sigmas with the same
    shift, as diffusers documents for Wan: ``UniPCMultistepScheduler`` / ``DPMSolverMultistepScheduler``
    (``dpmsolver++``) with ``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``."""
    if solver == "default":
        return pipe.scheduler
    from diffusers import UniPCMultistepScheduler

    cfg = dict(pipe.scheduler.config)
    extra: dict[str, Any] = {}
    if "shift" in cfg:  # flow matching
        extra = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": float(cfg["shift"])}
    if solver == "unipc":
        return UniPCMultistepScheduler.from_config(cfg, **extra)
    if solver == "dpm++":
        return _fixed_shift_dpm().from_config(cfg, algorithm_type="dpmsolver++", **extra)
    raise ConfigError(f"unknown solver {solver!r}; accepted: {', '.join(SOLVERS)}")


_FIXED_SHIFT_DPM: Any = None


def _fixed_shift_dpm():
    """DPMSolverMultistepScheduler that ignores the ``mu`` a pipeline passes when its config has no dynamic
    shifting. Flux pipelines pass ``mu`` to every scheduler; their own FlowMatchEulerDiscreteScheduler ignores it
    without ``use_dynamic_shifting`` (tiny-flux's fixed shift 2.0), DPM-Solver asserts instead, so the dpm++ rows
    crashed on tiny-flux. Dropping it there keeps the pipeline's own (fixed) shift."""
    global _FIXED_SHIFT_DPM
    if _FIXED_SHIFT_DPM is None:
        from diffusers import DPMSolverMultistepScheduler

        class FixedShiftDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
            def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None):
                if not self.config.get("use_dynamic_shifting", False):
                    mu = None
                super().set_timesteps(num_inference_steps, device, mu=mu, timesteps=timesteps)

        _FIXED_SHIFT_DPM = FixedShiftDPMSolverMultistepScheduler
    return _FIXED_SHIFT_DPM


def resolve_model(model: str) -> Path:
    """A zoo model name or a local diffusers pipeline folder (one with model_index.json)."""
    from .. import zoo

    if model in zoo.available():
        return Path(zoo.path(model))
    path = Path(model)
    if path.is_dir() and (path / "model_index.json").is_file():
        return path
    why = "does not exist" if not path.exists() else "has no model_index.json"
    raise BenchError(
        f"model {model!r}: not a zoo model (available: {', '.join(zoo.available()) or 'none'}) and not a diffusers "
        f"pipeline folder ({str(path)!r} {why})"
    )


def load_pipeline(path: Path):
    from diffusers import DiffusionPipeline

    # a local folder: nothing is looked up on the Hub (and the process environment is left as it was)
    pipe = DiffusionPipeline.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_defaults(model: str, path: Path) -> dict[str, Any]:
    from .. import zoo

    if model in zoo.available():
        return zoo.generation_defaults(model)
    extra = path / "dynaccel_generation.json"  # optional per-folder defaults
    return json.loads(read_bounded(extra, MAX_FILE_BYTES)) if extra.is_file() else {}


# ---- quality ---------------------------------------------------------------------------------------------------


def _frames(out: Any) -> torch.Tensor:
    """Pipeline output -> float tensor (N, F, C, H, W) in [0, 1]."""
    x = getattr(out, "frames", None)
    if x is None:
        x = out.images
    x = torch.as_tensor(x).float()
    if x.ndim == 4:  # images (N, C, H, W)
        x = x[:, None]
    return x.clamp(0, 1)


def _psnr_of(mse: float) -> float:
    """PSNR in dB for a mean squared error of [0, 1] signals (inf when identical)."""
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per frame of (..., C, H, W) tensors in [0, 1] (Gaussian window, constants of Wang et al. 2004)."""
    lead = a.shape[:-3]
    c, h, w = a.shape[-3:]
    a = a.reshape(-1, c, h, w)
    b = b.reshape(-1, c, h, w)
    size = min(window, h, w) | 1
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).to(a)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, size, size)

    def blur(x):
        return torch.nn.functional.conv2d(x, kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).reshape(lead)


# ---- installing settings ------------------------------------------------------------------------------------------


# what a peer's failure usually means (diffusers 0.42.1), added to its "not run" note
_PEER_HINTS = {
    "fastercache": "diffusers' FasterCache expects CFG's unconditional and conditional inputs batched in one pass; "
                   "this pipeline's passes carry one branch each (CFG as two passes) or no CFG at all (a "
                   "guidance-distilled model: try diffusers:fastercache:is_guidance_distilled=True)",
}


def _peer_config(pipe, setting: Setting, steps: int, ratios: list[float] | None):
    from diffusers import hooks

    cfg = dict(setting.config)
    name = setting.strategy
    if name == "fbcache":
        return hooks.FirstBlockCacheConfig(**cfg)
    if name == "magcache":
        if ratios is None:
            raise BenchError("diffusers:magcache needs calibrated ratios; run dynaccel magcache first (done automatically)")
        return hooks.MagCacheConfig(num_inference_steps=steps, mag_ratios=ratios, **cfg)
    if name == "taylorseer":
        if not (cfg.get("use_lite_mode") or cfg.get("cache_identifiers") or cfg.get("skip_predict_identifiers")):
            cfg["cache_identifiers"] = _taylorseer_attention_patterns(_denoiser(pipe))
        return hooks.TaylorSeerCacheConfig(taylor_factors_dtype=torch.float32, **cfg)
    if name == "fastercache":
        return hooks.FasterCacheConfig(current_timestep_callback=lambda: pipe.current_timestep, **cfg)
    if name == "seacache":
        return hooks.SeaCacheConfig(**cfg)
    if name == "pab":
        cfg.setdefault("spatial_attention_block_skip_range", 2)
        return hooks.PyramidAttentionBroadcastConfig(current_timestep_callback=lambda: pipe.current_timestep, **cfg)
    raise ConfigError(f"unknown diffusers cache {name!r}")


def _import_cachedit():
    try:
        import cache_dit
    except ImportError as exc:
        raise BenchError("cache-dit is not installed; pip install cache-dit (or dynaccel[peers]) to run its rows") \
            from exc
    import logging

    # cache-dit's loggers share one console handler (cache_dit.logger): its per-call lines would drown the table
    handler = getattr(getattr(cache_dit, "logger", None), "_default_handler", None)
    if isinstance(handler, logging.Handler):
        handler.setLevel(max(handler.level, logging.ERROR))  # routine notes come as warnings
    return cache_dit


def _cachedit_configs(setting: Setting, steps: int):
    """(DBCacheConfig, calibrator config or None) for a ``cachedit:`` row; unknown option names are refused with
    the accepted ones."""
    cache_dit = _import_cachedit()
    cfg = dict(setting.config)
    calibrator = cfg.pop("calibrator", "none")
    order = cfg.pop("taylorseer_order", 1)
    fields = {f.name for f in dataclasses.fields(cache_dit.DBCacheConfig)} - {"num_inference_steps"}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ConfigError(f"setting {setting.label!r}: unknown cache-dit option(s) {', '.join(unknown)}; accepted: "
                          f"{', '.join(sorted(fields | set(CACHEDIT_ALIASES) | set(CACHEDIT_EXTRA)))}")
    cal = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=int(order)) if calibrator == "taylorseer" else None
    return cache_dit.DBCacheConfig(num_inference_steps=steps, **cfg), cal


def _cachedit_enable(pipe, setting: Setting, steps: int) -> None:
    cache_config, calibrator = _cachedit_configs(setting, steps)
    blocks = len(getattr(_denoiser(pipe), "blocks", None) or getattr(_denoiser(pipe), "transformer_blocks", []))
    fn, bn = cache_config.Fn_compute_blocks, cache_config.Bn_compute_blocks
    if blocks and fn + bn > blocks:  # cache-dit asserts mid-generation; say it up front, with the numbers
        raise BenchError(f"cache-dit DBCache computes Fn={fn} first and Bn={bn} last blocks, but the transformer "
                         f"has {blocks} blocks; pass Fn and Bn that sum to at most {blocks}, e.g. Fn=1,Bn=0")
    _import_cachedit().enable_cache(pipe, cache_config=cache_config, calibrator_config=calibrator)


def _cachedit_disable(pipe) -> None:
    import cache_dit

    cache_dit.disable_cache(pipe)


def _taylorseer_attention_patterns(model: torch.nn.Module) -> list[str]:
    """The attention modules diffusers' TaylorSeer means to hook by default, as exact patterns.

    diffusers 0.42.1 matches its default patterns (``^blocks.*attn`` ...) with ``re.fullmatch``, so Wan's
    ``blocks.0.attn1`` / ``attn2`` match none of them and the cache silently does nothing. The peer row hooks the
    same attention modules the defaults aim at, named exactly.
    """
    import re

    pattern = re.compile(r"(blocks|transformer_blocks|single_transformer_blocks|temporal_transformer_blocks)"
                         r"\.\d+\.attn\d*")
    names = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    if not names:
        raise BenchError(f"diffusers:taylorseer: no attention modules found in {type(model).__name__}; pass "
                         "cache_identifiers=... (regex patterns of module names)")
    return [re.escape(n) for n in names]


def _denoiser(pipe) -> torch.nn.Module:
    for attr in ("transformer", "unet"):
        module = getattr(pipe, attr, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise BenchError(f"{type(pipe).__name__} has no transformer or unet to accelerate")


def validate_settings(pipe, settings: list[Setting]) -> None:
    """Everything that can fail before a single generation: names, options, model support, and a preset's target
    (the check ``enable_accel`` runs: a preset tuned for another architecture or model is refused)."""
    from ..core.api import check_preset_target
    from ..core.registry import get_registry

    reg = get_registry()
    for s in settings:
        if s.kind == "cachedit":
            try:
                _cachedit_configs(s, 2)  # option names and values (its own checks); not installed: a note later
            except BenchError:
                pass
            continue
        if s.kind == "student" and s.strategy:
            reg.strategy(s.strategy).Config.from_kwargs(s.strategy, **s.config)
        if s.kind != "dynaccel":
            continue
        if s.source is not None:
            check_preset_target(s.source, pipe)
        cls = reg.strategy(s.strategy)
        cls.Config.from_kwargs(s.strategy, **s.config)
        if cls.needs_adapter:
            reg.adapter_for(_denoiser(pipe), cls)


class AttentionCounter:
    """Counts attention calls of the given blocks: a block whose pass was skipped never reaches its attention.

    ``count`` is None when the blocks have no attention module to watch.
    """

    def __init__(self, blocks: list[torch.nn.Module]):
        self.count: int | None = 0
        self._hooks = []
        for block in blocks:
            attn = getattr(block, "attn1", None) or getattr(block, "attn", None)
            if attn is None:
                self.count = None
                continue
            self._hooks.append(attn.register_forward_pre_hook(self._hit))

    def _hit(self, *_):
        if self.count is not None:
            self.count += 1

    def remove(self):
        for h in self._hooks:
            h.remove()


def _last_block_counter(pipe, from_end: int = 0) -> AttentionCounter:
    """Transformer passes that really ran the block stack: calls of the last block's attention (``from_end``: the
    block that many before the last, for a peer that always computes the last blocks, cache-dit's ``Bn``)."""
    from ..core.registry import get_registry

    adapter = get_registry().find_adapter(_denoiser(pipe))
    blocks = adapter.blocks() if adapter is not None else []
    if from_end >= len(blocks):
        counter = AttentionCounter([])
        counter.count = None
        return counter
    return AttentionCounter([blocks[-1 - from_end].module])


# ---- the run ------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    kind: str
    time_s: float
    speedup: float
    computed: str
    psnr_db: float
    psnr_min_db: float
    ssim: float
    stats: dict[str, Any] = field(default_factory=dict)
    adherence: dict[str, float] = field(default_factory=dict)  # share of generations meeting each prompt criterion


def run_bench(
    pipe,
    settings: list[Setting],
    prompts: list[str],
    seeds: list[int],
    call_kwargs: dict[str, Any],
    repeats: int = 3,
    threads: int = 1,
    progress: Callable[[str], Any] | None = None,
    baseline: dict[str, Any] | None = None,
    not_run: list[dict[str, str]] | None = None,
    adherence: Callable[[Any, str], dict[str, bool]] | None = None,
) -> list[Row]:
    """Full compute first, then every setting; returns one row per setting (full compute first).

    ``adherence``: a prompt-adherence scorer (``dynaccel.zoo.adherence``) that fills each row's ``adherence`` with
    the share of its last round's generations meeting each criterion. ``student:`` rows run another pipeline (the
    student's folder, loaded once) at its own generation settings, judged against this pipeline's full compute.

    ``baseline``: pass an empty dict to receive the full-compute measurement in it, and pass it back to later calls
    with the same prompts, seeds and settings to skip measuring full compute again.
    ``not_run``: pass a list to let a diffusers peer that fails on this pipeline drop out instead of stopping the
    run (``{"setting", "error"}`` is appended for it; it has no row); without it the error propagates.
    """
    from tqdm.auto import tqdm

    torch.set_num_threads(threads)
    validate_settings(pipe, settings)
    steps = int(call_kwargs.get("num_inference_steps", 50))
    jobs = [(p, s) for p in prompts for s in seeds]
    total = (1 + len(settings)) * (1 + repeats * len(jobs))
    bar = tqdm(total=total, desc="bench", unit="gen", disable=progress is False)

    counter: AttentionCounter | None = None
    call: dict[str, Any] = dict(call_kwargs)
    active = pipe  # the pipeline generating: this one, or a student's
    student_pipes: dict[str, Any] = {}

    def student(ref: str):
        if ref not in student_pipes:
            folder = resolve_model(ref)
            student_pipes[ref] = (load_pipeline(folder), generation_defaults(ref, folder))
        return student_pipes[ref]

    def generate(prompt, seed):
        if counter is not None and counter.count is not None:
            counter.count = 0  # keep the count of the last generation only
        out = active(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="pt", **call)
        bar.update(1)
        return _frames(out)

    # Round-robin: a warm-up round, then ``repeats`` rounds that each time every setting once (enabled, timed,
    # disabled), so a machine whose speed drifts during the run slows every setting alike. A calibrated strategy
    # without a calibration file gets one in a temporary folder: the warm-up round calibrates, later rounds load it.
    tmp = Path(tempfile.mkdtemp(prefix="dynaccel-bench-"))
    order: list[Setting] = ([] if baseline else [Setting("full")]) + [
        dataclasses.replace(st, config=_with_calibration_file(st, tmp, i)) for i, st in enumerate(settings)
    ]
    ratios = None
    times: list[list[float]] = [[] for _ in order]
    outs_of: list[list[torch.Tensor]] = [[] for _ in order]
    stats_of: list[dict[str, Any]] = [{} for _ in order]
    work_of: list[list] = [[] for _ in order]
    full_passes = baseline.get("passes") if baseline else None

    def run_one(i: int, st: Setting, timed: bool, last: bool) -> None:
        nonlocal counter, ratios, full_passes, call, active
        bar.set_postfix_str(st.label)
        if st.kind == "student":
            active, student_call = student(st.student)
            call = dict(student_call)
        counter = _last_block_counter(active, int(st.config.get("Bn_compute_blocks", 0) or 0)
                                      if st.kind == "cachedit" else 0)
        handle = None
        own_scheduler = pipe.scheduler
        try:
            if st.kind == "student" and st.strategy:
                handle = active.enable_accel(st.strategy, **st.config)
            elif st.kind == "steps":
                pipe.scheduler = solver_scheduler(pipe, st.strategy)
                call = {**call_kwargs, "num_inference_steps": st.config["steps"]}
            elif st.kind == "dynaccel":
                handle = pipe.enable_accel(st.strategy, **st.config)
            elif st.kind == "diffusers":
                if st.strategy == "magcache" and ratios is None:
                    ratios = _calibrate_ratios(pipe, jobs[0], call_kwargs)
                _denoiser(pipe).enable_cache(_peer_config(pipe, st, steps, ratios))
            elif st.kind == "cachedit":
                _cachedit_enable(pipe, st, steps)
            if not timed:
                generate(*jobs[0])  # warm-up (and the calibration run of calibrated strategies)
                return
            t0 = time.perf_counter()
            outs, work = [], []
            for p, sd in jobs:
                outs.append(generate(p, sd))
                if last:  # a few dict lookups: negligible next to a generation (a student's passes: out of the
                    # teacher's full compute, from the pass counter)
                    work.append(_work_of(handle.stats if handle is not None and st.kind != "student" else {}, counter))
            times[i].append((time.perf_counter() - t0) / len(jobs))
            if last:
                outs_of[i], work_of[i] = outs, work
                stats_of[i] = handle.stats if handle is not None else {}
                if st.kind == "full":
                    full_passes = counter.count
                elif st.kind == "diffusers" and st.strategy not in ("fbcache", "magcache", "seacache"):
                    work_of[i] = []  # attention-level peers still enter the modules they predict: not countable
        finally:
            pipe.scheduler = own_scheduler
            call = dict(call_kwargs)
            if st.kind == "student" and st.strategy:
                active.disable_accel()
            active = pipe
            if st.kind == "dynaccel":
                pipe.disable_accel()
            elif st.kind == "diffusers" and getattr(_denoiser(pipe), "is_cache_enabled", False):
                _denoiser(pipe).disable_cache()
            elif st.kind == "cachedit" and sys.modules.get("cache_dit") is not None:
                _cachedit_disable(pipe)
            counter.remove()

    def run_compiled(i: int, st: Setting) -> None:
        """A compiled row, in one piece: installed and compiled once, two warm-up generations (compilation, then
        every branch's and decision's graphs), then ``repeats`` timed rounds back to back. Re-installing per round,
        as the round-robin does, would recompile each time (new hook objects fail dynamo's guards) and soon hit its
        recompile limit, after which it silently runs eager."""
        nonlocal counter
        import torch._dynamo

        bar.set_postfix_str(st.label)
        den = _denoiser(pipe)
        torch._dynamo.reset()
        counter = _last_block_counter(pipe)
        handle = None
        try:
            if st.kind == "dynaccel":
                handle = pipe.enable_accel(st.strategy, **st.config)
            den.compile(backend=st.compiled)
            for _ in range(2):
                generate(*jobs[0])
            for r in range(repeats):
                t0 = time.perf_counter()
                outs, work = [], []
                for p, sd in jobs:
                    outs.append(generate(p, sd))
                    if r == repeats - 1:
                        work.append(_work_of(handle.stats if handle is not None else {}, counter))
                times[i].append((time.perf_counter() - t0) / len(jobs))
            outs_of[i], work_of[i] = outs, work
            stats_of[i] = handle.stats if handle is not None else {}
        finally:
            den._compiled_call_impl = None  # what nn.Module.compile set: the module runs eager again
            if handle is not None:
                pipe.disable_accel()
            counter.remove()
            torch._dynamo.reset()

    compiled = {i for i, st in enumerate(order) if st.compiled}
    bar.total += len(compiled)  # their second warm-up generation
    dropped: set[int] = set()
    try:
        for i, st in enumerate(order):
            if i in compiled:
                continue
            try:
                run_one(i, st, timed=False, last=False)
            except Exception as exc:  # a peer diffusers cannot run on this pipeline: report it, keep the others
                if not_run is None or st.kind not in (*PEER_KINDS, "steps", "student"):
                    raise
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
                if st.strategy in _PEER_HINTS:
                    why += f"; {_PEER_HINTS[st.strategy]}"
                not_run.append({"setting": st.label, "error": why})
                dropped.add(i)
                bar.update(1 + repeats * len(jobs))  # its warm-up and timed generations, none of which ran
        for r in range(repeats):
            for i, st in enumerate(order):
                if i not in dropped and i not in compiled:
                    run_one(i, st, timed=True, last=r == repeats - 1)
        for i in sorted(compiled):
            try:
                run_compiled(i, order[i])
            except Exception as exc:  # no compiler on this machine, a backend that fails: a note, the rest stands
                if not_run is None:
                    raise
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
                not_run.append({"setting": order[i].label, "error": why})
                dropped.add(i)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if baseline:
        base_t, base = baseline["time"], baseline["outputs"]
        bar.update(1 + repeats * len(jobs))
    else:
        base_t, base = statistics.median(times[0]), outs_of[0]
        if baseline is not None:
            baseline.update(time=base_t, outputs=base, passes=full_passes)
    def adherent(outs: list[torch.Tensor]) -> dict[str, float]:
        if adherence is None or not outs:
            return {}
        hits: dict[str, list[bool]] = {}
        for (prompt, _), out in zip(jobs, outs):
            x = out[0].permute(0, 2, 3, 1).numpy()  # (F, H, W, C) in [0, 1]
            for k, ok in adherence(x[0] if x.shape[0] == 1 else x, prompt).items():
                hits.setdefault(k, []).append(bool(ok))
        return {k: sum(v) / len(v) for k, v in hits.items()}

    rows = [Row("full compute", "full", base_t, 1.0, "all", math.inf, math.inf, 1.0,
                adherence=dict(baseline.get("adherence", {})) if baseline else adherent(base))]
    if baseline is not None and not baseline.get("adherence"):
        baseline["adherence"] = rows[0].adherence
    offset = 0 if baseline else 1
    for k, setting in enumerate(settings):
        i = k + offset
        if i in dropped:
            continue
        stats = dict(stats_of[i])
        if stats.get("density_per_run"):  # sparse attention: the mean over the last round's generations
            stats["mean_density_last_pass"] = statistics.mean(stats["density_per_run"][-len(jobs):])
            stats["mean_work_last_pass"] = statistics.mean(stats["work_per_run"][-len(jobs):])
        work = work_of[i]
        computed = _computed(stats, work, full_passes)
        if work and all(w is not None for w in work):
            stats["computed_per_generation"] = [c for c, _ in work]
        t = statistics.median(times[i])
        outs = outs_of[i]
        mse = torch.cat([((o - b) ** 2).flatten(-3).mean(-1).flatten() for o, b in zip(outs, base)])
        frame_ssim = torch.cat([ssim(o, b).flatten() for o, b in zip(outs, base)])
        kind = "compiled" if setting.compiled and setting.kind == "full" else setting.kind
        rows.append(Row(setting.label, kind, t, base_t / t, computed, _psnr_of(float(mse.mean())),
                        _psnr_of(float(mse.max())), float(frame_ssim.mean()), _jsonable(stats), adherent(outs)))
    bar.close()
    return rows


_CALIBRATION_FILES = ("ratios_path", "calibration_path")


def _with_calibration_file(setting: Setting, folder: Path, index: int) -> dict[str, Any]:
    """The setting's config, with a temporary calibration file for a calibrated strategy that has none."""
    if setting.kind != "dynaccel":
        return setting.config
    from ..core.registry import get_registry

    names = {f.name for f in get_registry().strategy(setting.strategy).Config.fields_info()}
    config = dict(setting.config)
    for opt in _CALIBRATION_FILES:
        if opt in names and not config.get(opt):
            config[opt] = str(folder / f"{index}-{setting.strategy}-{opt}.json")
    return config


def _work_of(stats: dict[str, Any], counter: Any) -> tuple[float, float] | None:
    """(computed, out of) for one generation: block calls for per-block strategies, else transformer passes (from
    the strategy's stats, or from the last-block counter for peers and other families)."""
    if "blocks_computed" in stats:
        return stats["blocks_computed"], stats["blocks_computed"] + stats["blocks_reused"]
    if "computed" in stats and "passes" in stats and not isinstance(stats.get("transformer"), dict):
        return stats["computed"], stats["passes"]
    if counter is not None and counter.count is not None:
        return counter.count, None
    return None


def _computed(stats: dict[str, Any], per_gen: list | None, full: int | None) -> str:
    """Transformer passes (or block calls) computed per generation, out of all: the mean over the generations of
    the last timed pass (every prompt and seed), e.g. ``19/60`` or ``21.5/60``."""
    if stats.get("mean_density") is not None:  # sparse attention: share of attention blocks computed
        return f"attn {stats.get('mean_density_last_pass', stats['mean_density']):.1%}"
    if per_gen is None:  # one generation: the strategy's own stats
        per_gen = [_work_of(stats, None)]
    work = [w for w in per_gen if w is not None]
    if not work or len(work) != len(per_gen):
        return "-"
    mean = statistics.mean(c for c, _ in work)
    total = work[-1][1] if work[-1][1] is not None else full
    if total is None:
        return "-"
    text = f"{mean:.0f}" if mean == int(mean) else f"{mean:.1f}"
    return f"{text}/{total}" + (" blk" if "blocks_computed" in stats else "")


def _calibrate_ratios(pipe, job, call_kwargs) -> list[float]:
    """diffusers MagCache's magnitude ratios from its own ``calibrate=True`` flow: one full generation, whose ratios
    diffusers prints and logs at the last step (of each CFG branch: the first reported, the conditional one, is
    used, as diffusers documents for Wan). Its print is kept off our table."""
    import contextlib
    import io
    import logging

    from diffusers import hooks

    steps = int(call_kwargs.get("num_inference_steps", 50))
    found: list[list[float]] = []

    class Catch(logging.Handler):
        def emit(self, record):
            text = record.getMessage()
            if "MagCache Calibration Results:" in text:
                found.append([float(x) for x in re.findall(r"[-+0-9.eE]+(?=[,\]])", text.split(":", 1)[1])])

    log = logging.getLogger("diffusers.hooks.mag_cache")
    handler, level, propagate = Catch(), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # caught here, not printed by diffusers' handler
    denoiser = _denoiser(pipe)
    try:
        denoiser.enable_cache(hooks.MagCacheConfig(num_inference_steps=steps, calibrate=True))
        with contextlib.redirect_stdout(io.StringIO()):
            pipe(prompt=job[0], generator=torch.Generator().manual_seed(job[1]), output_type="pt", **call_kwargs)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
        if getattr(denoiser, "is_cache_enabled", False):
            denoiser.disable_cache()
    if not found or len(found[0]) != steps:
        raise BenchError(f"diffusers:magcache: its calibrate=True run reported no {steps} ratios "
                         f"(got {[len(f) for f in found]})")
    return found[0]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# public names of the measuring helpers other surfaces share (the demo uses these, never the underscored ones)
frames = _frames
psnr_of = _psnr_of
denoiser = _denoiser
computed_label = _computed
jsonable = _jsonable


# ---- output -------------------------------------------------------------------------------------------------------


def format_table(rows: list[Row]) -> str:
    w = max(12, *(len(r.label) for r in rows))
    criteria = list(dict.fromkeys(k for r in rows for k in r.adherence))  # prompt adherence columns, if scored
    head = f"{'setting':<{w}} {'time/gen (s)':>12} {'speedup':>8} {'computed':>12} {'PSNR (dB)':>10} {'min PSNR':>9} {'SSIM':>7}"
    head += "".join(f" {k:>9}" for k in criteria)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.label:<{w}} {r.time_s:>12.3f} {r.speedup:>7.2f}x {r.computed:>12} {r.psnr_db:>10.2f} "
            f"{r.psnr_min_db:>9.2f} {r.ssim:>7.4f}"
            + "".join(f" {r.adherence[k]:>9.0%}" if k in r.adherence else f" {'-':>9}" for k in criteria)
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def write_json_and_plot(out_dir: Path, doc: dict[str, Any], draw: Callable[[Any], None],
                        names: tuple[str, str] = ("bench.json", "bench.png")) -> tuple[Path, Path]:
    """Write ``doc`` as JSON and a plot drawn by ``draw(ax)`` (matplotlib, Agg) as PNG in ``out_dir``, each
    atomically (a temporary file, then a rename: no partial file after an error or interruption)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(exist_ok=True)  # the results folder itself; its parent must exist (no /nonexistent/... trees)

    def write_json(tmp):
        Path(tmp).write_text(json.dumps(doc, indent=1, default=str))

    def write_png(tmp):
        _plot_to(tmp, draw)

    json_path, png_path = out_dir / names[0], out_dir / names[1]
    atomic_write(json_path, write_json)
    atomic_write(png_path, write_png)
    return json_path, png_path


def fewer_steps_curves(rows: list[Row]) -> dict[str, list[Row]]:
    """The fewer-steps rows per solver, by speedup: the curves of the speed-quality plot (full compute is not on
    them: it is drawn at the plot's cap, and a line to it would suggest step counts that were not measured)."""
    curves: dict[str, list[Row]] = {}
    for r in rows:
        if r.kind == "steps" and math.isfinite(r.psnr_db):
            solver = r.label.split(" ", 1)[1] if " " in r.label else "default"
            curves.setdefault(solver, []).append(r)
    return {k: sorted(v, key=lambda r: r.speedup) for k, v in curves.items()}


def _dominates(a: Row, b: Row) -> bool:
    """``a`` at least as fast and at least as good as ``b`` (PSNR), and better in one of the two."""
    return (a.speedup >= b.speedup and a.psnr_db >= b.psnr_db) and (a.speedup > b.speedup or a.psnr_db > b.psnr_db)


def pareto(rows: list[Row], min_psnr: float = 30.0) -> dict[str, Any]:
    """The speed-quality frontier of ``rows`` and the peer settings no dynaccel setting dominates.

    ``frontier``: the labels of the rows no other row dominates (faster and better, or equal in one and better in
    the other), by speedup. ``undominated``: the peer rows (other projects' caches and the fewer-steps rows) at or
    above ``min_psnr`` that no dynaccel row (a strategy or preset) matches or beats in both speed and PSNR — the
    settings a user would be right to pick over ours. A peer row identical to full compute (it skipped nothing) is
    left out of that list, and full compute itself counts as ours: a peer slower than no acceleration is no setting
    to pick. Speed is the measured wall-clock ratio, so rows within its noise can swap places between
    runs."""
    frontier = sorted((r for r in rows if not any(_dominates(o, r) for o in rows)), key=lambda r: r.speedup)
    ours = [r for r in rows if r.kind in ("dynaccel", "full")]  # leaving acceleration off is always ours to offer
    # a peer row identical to full compute skipped nothing: its "speedup" is timing noise, not a setting to beat
    peers = [r for r in rows if r.kind in (*PEER_KINDS, "steps") and min_psnr <= r.psnr_db < math.inf]
    undominated = [r for r in peers
                   if not any(o.speedup >= r.speedup and o.psnr_db >= r.psnr_db for o in ours)]
    return {"min_psnr_db": min_psnr, "frontier": [r.label for r in frontier],
            "undominated_peers": [r.label for r in sorted(undominated, key=lambda r: -r.speedup)]}


def format_pareto(result: dict[str, Any]) -> str:
    lines = ["speed-quality frontier (fastest last): " + ", ".join(result["frontier"])]
    peers = result["undominated_peers"]
    if peers:
        lines.append(f"peer settings at >= {result['min_psnr_db']:g} dB that no dynaccel setting matches or beats "
                     f"in both speed and PSNR ({len(peers)}):")
        lines += [f"  {label}" for label in peers]
    else:
        lines.append(f"every peer setting at >= {result['min_psnr_db']:g} dB is matched or beaten by a dynaccel "
                     "setting in both speed and PSNR")
    return "\n".join(lines)


def write_pareto_plot(out_dir: Path, rows: list[Row], result: dict[str, Any], meta: dict[str, Any]) -> Path:
    """``pareto.png``: every row's speed against PSNR, the frontier as a step line, and the peers no dynaccel
    setting dominates ringed in red (written atomically)."""
    by_label = {r.label: r for r in rows}
    finite = [r.psnr_db for r in rows if math.isfinite(r.psnr_db)]
    cap = max(finite or [40.0]) + 5

    def draw(ax):
        colors = {"dynaccel": "tab:blue", "diffusers": "tab:orange", "cachedit": "tab:green", "steps": "tab:gray",
                  "student": "tab:purple", "full": "black"}
        for kind, color in colors.items():
            pts = [r for r in rows if r.kind == kind]
            if pts:
                ax.scatter([r.speedup for r in pts], [min(r.psnr_db, cap) for r in pts], s=22, color=color,
                           label={"steps": "fewer steps", "cachedit": "cache-dit"}.get(kind, kind), zorder=3)
        front = [by_label[x] for x in result["frontier"] if x in by_label]
        if front:
            ax.step([r.speedup for r in front], [min(r.psnr_db, cap) for r in front], where="post", color="tab:red",
                    lw=1, label="frontier")
            for r in front:
                ax.annotate(r.label, (r.speedup, min(r.psnr_db, cap)), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        bad = [by_label[x] for x in result["undominated_peers"] if x in by_label]
        if bad:
            ax.scatter([r.speedup for r in bad], [min(r.psnr_db, cap) for r in bad], s=90, facecolors="none",
                       edgecolors="red", label="peer no dynaccel setting dominates", zorder=4)
        ax.axhline(result["min_psnr_db"], color="gray", lw=0.6, ls=":")
        ax.set_xlabel("speedup vs full compute (wall clock)")
        ax.set_ylabel(f"PSNR vs full compute (dB; identical shown at {cap:.0f})")
        ax.set_title(f"{meta.get('model', '')}: Pareto frontier ({meta.get('machine', {}).get('device', '')})")
        ax.legend(loc="lower left", fontsize=6)

    path = Path(out_dir) / "pareto.png"
    atomic_write(path, lambda tmp: _plot_to(tmp, draw))
    return path


def _plot_to(tmp, draw: Callable[[Any], None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def write_results(out_dir: Path, rows: list[Row], meta: dict[str, Any]) -> tuple[Path, Path]:
    """``bench.json`` and ``bench.png`` (speed vs PSNR) in ``out_dir``, each written atomically."""

    def draw(ax):
        cap = max([r.psnr_db for r in rows if math.isfinite(r.psnr_db)] or [40.0]) + 5
        for kind, marker in (("dynaccel", "o"), ("diffusers", "s"), ("cachedit", "^"), ("student", "D"),
                             ("compiled", "P"), ("full", "*")):
            pts = [r for r in rows if r.kind == kind]
            if not pts:
                continue
            ys = [min(r.psnr_db, cap) for r in pts]
            ax.scatter([r.speedup for r in pts], ys, marker=marker, s=60, label=kind)
            for r, y in zip(pts, ys):
                ax.annotate(r.label, (r.speedup, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        for solver, style in fewer_steps_curves(rows).items():  # the baseline every cache must beat, as curves
            xs, ys = zip(*((r.speedup, min(r.psnr_db, cap)) for r in style))
            ax.plot(xs, ys, "--", marker=".", lw=1, label=f"fewer steps ({solver})")
        ax.set_xlabel("speedup vs full compute (wall clock)")
        ax.set_ylabel(f"PSNR vs full compute (dB; identical shown at {cap:.0f})")
        ax.set_title(f"{meta.get('model', '')}: speed vs quality ({meta.get('machine', {}).get('device', '')})")
        ax.legend(loc="upper right", fontsize=7)

    return write_json_and_plot(out_dir, {"meta": meta, "rows": [asdict(r) for r in rows]}, draw)
