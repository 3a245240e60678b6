"""Which presets the ComfyUI Preset node offers, and whether one applies to the model it is given (no ComfyUI here).

A preset names the architecture it was tuned for (``architecture``, the diffusers class of that model). A ComfyUI
adapter says which of these it runs (``ComfyAdapter.preset_architectures``): the node offers the presets of the
strategies a ComfyUI runner drives whose architecture a registered ComfyUI adapter covers (or that name none), and
refuses, when it runs, a preset made for another architecture than the model's, before anything is patched.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import PresetError
from ..core.presets import Preset
from ..core.registry import get_registry
from .adapters import ComfyAdapter

#: the preset the node starts with when it is offered (a published TeaCache setting for the most used ComfyUI video
#: model); else the first offered one
DEFAULT_PRESET = "teacache-wan2.1-t2v-1.3b"


#: the ComfyUI runners this pack has (comfy_nodes/runner.py, comfy_nodes/attention_runner.py); a strategy names the
#: one that drives it with its ``comfyui_runner`` class attribute (declared once per family, on its base class)
RUNNERS = ("cache", "sparse_attention")


def runnable(strategy_cls: type) -> bool:
    """Whether a ComfyUI runner drives this strategy: its ``comfyui_runner`` is one of :data:`RUNNERS`, it has a
    policy, and (if it needs an adapter) some registered ComfyUI adapter answers the capabilities it needs."""
    if getattr(strategy_cls, "comfyui_runner", None) not in RUNNERS or not hasattr(strategy_cls, "Policy"):
        return False
    needs = getattr(strategy_cls, "needs_capabilities", frozenset())
    accepts = getattr(strategy_cls, "accepts", lambda caps: needs <= caps)
    return not getattr(strategy_cls, "needs_adapter", True) or any(accepts(a.capabilities) for a in comfy_adapters())


def comfy_strategies() -> list[type]:
    """The registered strategies a ComfyUI runner drives (one node each), by name."""
    reg = get_registry()
    return [reg.strategies[n] for n in sorted(reg.strategies) if runnable(reg.strategies[n])]


def comfy_adapters() -> list[type[ComfyAdapter]]:
    """The registered ComfyUI adapters (built-in and third-party), in registration order."""
    return get_registry().adapter_classes(among=ComfyAdapter)


def adapter_class_for(diffusion_model: Any) -> type[ComfyAdapter] | None:
    """The ComfyUI adapter of this diffusion model (the last registered that matches), or None."""
    return get_registry().adapter_class(diffusion_model, among=ComfyAdapter)


def applies(preset: Preset, adapter_cls: type[ComfyAdapter]) -> bool:
    return preset.architecture is None or preset.architecture in adapter_cls.preset_architectures


def offered_presets() -> list[str]:
    """The presets of runnable strategies that apply to some ComfyUI model, by name."""
    reg = get_registry()
    adapters = comfy_adapters()
    return sorted(
        name for name, p in reg.presets.items()
        if p.strategy in reg.strategies and runnable(reg.strategies[p.strategy]) and any(applies(p, a) for a in adapters)
    )


def default_preset(names: list[str]) -> str | None:
    return DEFAULT_PRESET if DEFAULT_PRESET in names else (names[0] if names else None)


def check_preset(preset: Preset, diffusion_model: Any) -> None:
    """Refuse a preset made for another architecture than ``diffusion_model``'s (PresetError naming both and the
    presets that do apply)."""
    kind = f"{type(diffusion_model).__module__}.{type(diffusion_model).__name__}"
    adapter_cls = adapter_class_for(diffusion_model)
    if adapter_cls is None:
        covered = sorted({arch for a in comfy_adapters() for arch in a.architectures})
        raise PresetError(repr(preset.name), "architecture",
                          f"this model ({kind}) has no dynaccel ComfyUI adapter, so no preset applies to it; presets "
                          f"apply to: {', '.join(covered) or '(none)'}")
    if not applies(preset, adapter_cls):
        reg = get_registry()
        fitting = [n for n in offered_presets() if applies(reg.presets[n], adapter_cls)]
        raise PresetError(repr(preset.name), "architecture",
                          f"the preset is for {preset.architecture}; this model is {kind} ({adapter_cls.architectures[0]}); "
                          f"presets for it: {', '.join(fitting) or '(none)'}")
