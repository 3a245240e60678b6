"""Public API: enable_accel / disable_accel / list_strategies / accel_stats.

Example (any diffusers pipeline or torch module)::

    import dynaccel
    handle = dynaccel.enable_accel(pipe, "teacache", threshold=0.1)
    video = pipe(prompt, num_inference_steps=20).frames
    print(handle.stats)          # passes computed / skipped per CFG branch
    dynaccel.disable_accel(pipe) # back to bit-identical plain outputs
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ConfigError, PresetError, StackingError, UnsupportedTargetError
from .presets import Preset
from .registry import check_config, get_registry
from .strategy import Handle, RunProbe

# What is active is kept per module that carries the hooks (a denoiser, a model): {family: the HandleGroup installed
# on it}, as an attribute of the module, not by what enable_accel was given: a pipeline and its transformer are two
# targets and one module, and what is active on the module is what counts. On the module, not in a global table:
# a handle refers back to its model, so a table entry would keep every model alive after the user dropped it.
_ACTIVE_ATTR = "_dynaccel_active"


def _active_on(module: torch.nn.Module, create: bool = False) -> "dict[str, HandleGroup] | None":
    table = module.__dict__.get(_ACTIVE_ATTR)
    if table is None and create:
        table = module.__dict__[_ACTIVE_ATTR] = {}
    return table

_DENOISER_ATTRS = ("transformer", "transformer_2", "unet")


class AccelWarning(UserWarning):
    """A strategy was enabled on a pipeline it may not suit (e.g. caching with a stochastic sampler)."""


def list_strategies() -> list[str]:
    """Names of every strategy the loaded plugins register, sorted."""
    return sorted(get_registry().strategies)


def strategy_info(name: str) -> dict[str, Any]:
    """Name, family, summary, paper and config fields (type, default, range, doc) of one strategy."""
    return get_registry().strategy(name).describe()


def list_presets() -> list[str]:
    return sorted(get_registry().presets)


def _is_pipeline(obj: Any) -> bool:
    return isinstance(getattr(obj, "components", None), dict) and any(
        isinstance(getattr(obj, a, None), torch.nn.Module) for a in _DENOISER_ATTRS
    )


def _scheduler_probe(pipe: Any) -> RunProbe:
    """A run probe reading the pipeline's scheduler: ``set_timesteps`` makes a new timesteps tensor each call."""
    ref = weakref.ref(pipe)

    def probe() -> tuple[object | None, int | None]:
        p = ref()
        sched = getattr(p, "scheduler", None) if p is not None else None
        ts = getattr(sched, "timesteps", None)
        if ts is None:
            return None, None
        return ts, len(ts)

    return probe


def _resolve_target(target: Any) -> tuple[list[tuple[str, torch.nn.Module]], RunProbe | None]:
    if _is_pipeline(target):
        mods = [(a, getattr(target, a)) for a in _DENOISER_ATTRS if isinstance(getattr(target, a, None), torch.nn.Module)]
        return mods, _scheduler_probe(target)
    if isinstance(target, torch.nn.Module):
        return [("model", target)], None
    raise UnsupportedTargetError(
        f"enable_accel expects a diffusers pipeline (with a transformer) or a torch.nn.Module; got "
        f"{type(target).__module__}.{type(target).__qualname__}"
    )


def resolve_preset(preset: str | Path | Preset) -> Preset:
    """A preset given by name (built-in or from a plugin), by a reference a plugin resolves (the built-in Hub plugin:
    ``hub:ORG/REPO/NAME[@REVISION]``, read through the huggingface_hub cache), by JSON file path, or as a Preset."""
    if isinstance(preset, Preset):
        return preset
    reg = get_registry()
    if isinstance(preset, str) and preset in reg.presets:
        return reg.presets[preset]
    if isinstance(preset, str):
        found = reg.resolve_preset_reference(preset)
        if found is not None:
            return found
    path = Path(preset)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise ConfigError(f"preset file {str(path)!r} does not exist")
        return Preset.load(path)
    available = ", ".join(sorted(reg.presets)) or "(none)"
    raise ConfigError(f"unknown preset {preset!r}; give a JSON file path or one of: {available} "
                      "(or hub:ORG/REPO/NAME for a preset on the Hugging Face Hub)")


def _name_or_path(target: Any) -> str | None:
    value = getattr(getattr(target, "config", None), "_name_or_path", None) or getattr(target, "name_or_path", None)
    return value if isinstance(value, str) and value else None


def check_preset_target(preset: Preset, target: Any, modules: list[tuple[str, torch.nn.Module]] | None = None) -> None:
    """Refuse a preset tuned for another model: its ``architecture`` must be the denoiser's class, and its
    ``model_id`` must match where the target says which model it is (a Hub id, or a local folder a plugin
    identifies, e.g. a zoo model's). ``modules``: the target's denoisers (default: found as enable_accel finds them).

    The one check every surface runs before using a preset (``enable_accel``, ``dynaccel bench``)."""
    if modules is None:
        modules = _resolve_target(target)[0]
    hint = f"to apply its options anyway: enable_accel(target, {preset.strategy!r}, **preset.config)"
    if preset.architecture:
        classes = sorted({type(m).__name__ for _, m in modules})
        if preset.architecture not in classes:
            raise PresetError(repr(preset.name), "architecture",
                              f"the preset is for {preset.architecture}; this model is {', '.join(classes)}; {hint}")
    loaded_from = _name_or_path(target)
    if preset.model_id and loaded_from:
        here = Path(loaded_from)
        if here.exists():  # a local folder: a plugin may know which model it holds (a Hub id cannot be compared)
            actual = get_registry().identify_model(str(here))
            mismatch = actual is not None and "/" not in preset.model_id and preset.model_id != actual
        else:  # a Hub id
            mismatch, actual = preset.model_id.lower() != loaded_from.lower(), loaded_from  # Hub ids ignore case
        if mismatch:
            raise PresetError(repr(preset.name), "model_id",
                              f"the preset was tuned for {preset.model_id!r}; this pipeline is {actual!r}; {hint}")


class HandleGroup(Handle):
    """One handle over several denoisers of a pipeline (e.g. Wan 2.2's transformer and transformer_2)."""

    def __init__(self, strategy: str, family: str, target: Any, config: Any, parts: dict[str, Handle]):
        super().__init__(strategy, family, target, config)
        self.parts = parts

    @property
    def modules(self) -> list[torch.nn.Module]:
        """The modules that carry this strategy's hooks (one per part)."""
        return [h.target for h in self.parts.values()]

    @contextlib.contextmanager
    def record_signals(self) -> Iterator[list]:
        """Every part's records, part after part (see :meth:`Handle.record_signals`)."""
        records: list = []
        with contextlib.ExitStack() as stack:
            lists = [stack.enter_context(h.record_signals()) for h in self.parts.values()]
            try:
                yield records
            finally:
                for part in lists:
                    records.extend(part)

    def _remove(self) -> None:
        for h in self.parts.values():
            h.remove()

    def _reset(self, num_steps: int | None) -> None:
        for h in self.parts.values():
            h.reset(num_steps)

    def summary(self) -> str:
        if len(self.parts) == 1:
            return next(iter(self.parts.values())).summary()
        return "; ".join(f"{name}: {h.summary()}" for name, h in self.parts.items())

    @property
    def stats(self) -> dict[str, Any]:
        if len(self.parts) == 1:
            return next(iter(self.parts.values())).stats
        return {name: h.stats for name, h in self.parts.items()}


def enable_accel(target: Any, name: str | None = None, *, preset: str | Path | Preset | None = None, **config: Any) -> Handle:
    """Install strategy ``name`` (or a preset) on a pipeline or model and return its handle.

    Everything is validated before the target is touched: an unknown name, option, wrong type or out-of-range value
    raises and leaves the target as it was. Enabling a strategy of a family already active replaces it; when that
    strategy was enabled through another target (a pipeline and its own transformer carry the same hooks), this
    raises StackingError naming both and leaves the first one working.
    """
    reg = get_registry()
    if preset is not None:
        p = resolve_preset(preset)
        if name is not None and name != p.strategy:
            raise ConfigError(f"preset {p.name!r}: field 'strategy': the preset is for strategy {p.strategy!r}, "
                              f"not {name!r}")
        check_config(p)
        check_preset_target(p, target, _resolve_target(target)[0])
        name = p.strategy
        config = {**p.config, **config}
    if name is None:
        raise ConfigError(f"enable_accel needs a strategy name or a preset; available strategies: {', '.join(list_strategies())}")
    cls = reg.strategy(name)
    cfg = cls.Config.from_kwargs(name, **config)
    modules, probe = _resolve_target(target)
    adapters = [reg.adapter_for(m, cls) if cls.needs_adapter else reg.find_adapter(m) for _, m in modules]

    active = _handles_on([m for _, m in modules])
    for h in active:
        if h.family == cls.family:
            if h.target is not target:  # the same family through another target (a pipeline and its transformer)
                raise StackingError(
                    f"strategy {name!r} ({cls.family}) cannot be enabled on {_describe(target)}: {h.strategy!r} "
                    f"({h.family}) is already active on {_module_names(h, modules)}, enabled through "
                    f"{_describe(h.target)}; one {cls.family} strategy per model. Disable it first with "
                    f"disable_accel(<the {_kind(h.target)}>, {h.strategy!r}), or enable {name!r} on the "
                    f"{_kind(h.target)} to replace it"
                )
            continue
        other = reg.strategies.get(h.strategy)
        if h.family in cls.conflicts_with or (other is not None and cls.family in other.conflicts_with):
            raise StackingError(
                f"strategy {name!r} ({cls.family}) cannot run together with {h.strategy!r} ({h.family}); "
                f"disable it first with disable_accel(target, {h.strategy!r})"
            )

    previous = next((h for h in active if h.family == cls.family), None)
    if previous is not None:
        _forget(previous)
        previous.remove()
    installed: dict[str, Handle] = {}
    try:
        for (attr, module), adapter in zip(modules, adapters):
            installed[attr] = cls().apply(module, cfg, adapter, probe)
    except BaseException:
        for h in installed.values():
            h.remove()
        if previous is not None:  # put back what was there
            enable_accel(target, previous.strategy, **previous.config.to_dict())
        raise
    handle = HandleGroup(name, cls.family, target, cfg, installed)
    for module in handle.modules:
        _active_on(module, create=True)[cls.family] = handle
    if _is_pipeline(target):
        for message in cls().pipeline_warnings(target, cfg):
            warnings.warn(message, AccelWarning, stacklevel=2)
    return handle


def _handles_on(modules: list[torch.nn.Module]) -> list[HandleGroup]:
    """The active handles on any of ``modules``, each once, in the order they were found."""
    found: list[HandleGroup] = []
    for m in modules:
        per_family = _active_on(m)
        if not per_family:
            continue
        for fam, h in list(per_family.items()):
            if not h.active:  # removed through the handle itself
                del per_family[fam]
            elif not any(h is f for f in found):
                found.append(h)
    return found


def _forget(handle: HandleGroup) -> None:
    for module in handle.modules:
        per_family = _active_on(module)
        if per_family is not None and per_family.get(handle.family) is handle:
            del per_family[handle.family]


def _modules_of(target: Any) -> list[torch.nn.Module]:
    try:
        return [m for _, m in _resolve_target(target)[0]]
    except UnsupportedTargetError:
        return []


def _kind(target: Any) -> str:
    return "pipeline" if _is_pipeline(target) else "model"


def _describe(target: Any) -> str:
    return f"the {_kind(target)} ({type(target).__name__})"


def _module_names(handle: HandleGroup, modules: list[tuple[str, torch.nn.Module]]) -> str:
    shared = [m for _, m in modules if any(m is h for h in handle.modules)]
    return ", ".join(type(m).__name__ for m in shared) or "this model"


def disable_accel(target: Any, name: str | None = None) -> list[str]:
    """Remove strategies from ``target``: all of them, or the one called ``name`` (a strategy or family name).

    What counts is what is active on the target's modules: a strategy enabled through a pipeline is disabled
    through the pipeline or through its transformer alike. Returns the names of the strategies removed. Outputs
    afterwards are bit-identical to never having enabled.
    """
    active = _handles_on(_modules_of(target))
    removed = []
    for h in active:
        if name is None or name in (h.family, h.strategy):
            _forget(h)
            h.remove()
            removed.append(h.strategy)
    if name is not None and not removed:
        current = ", ".join(h.strategy for h in active) or "none"
        raise ConfigError(f"strategy {name!r} is not enabled on this target; enabled: {current}")
    return removed


def active_handles(target: Any) -> dict[str, Handle]:
    """The handles active on ``target``'s modules, keyed by family."""
    out: dict[str, Handle] = {}
    for h in _handles_on(_modules_of(target)):
        out.setdefault(h.family, h)
    return out


def accel_stats(target: Any) -> dict[str, Any]:
    """Stats of the last (or current) call, keyed by strategy name."""
    return {h.strategy: h.stats for h in _handles_on(_modules_of(target))}
