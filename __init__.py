"""dynaccel: training-free dynamic inference acceleration, one line away.

    import dynaccel
    pipe.enable_accel("teacache", threshold=0.08)     # any diffusers pipeline, after `import dynaccel`
    dynaccel.list_strategies()                         # ['easycache', 'fbcache', 'magcache', 'teacache', ...]

Importing this package needs neither ComfyUI, Triton, diffusers nor a GPU. When the repo sits in ComfyUI's
custom_nodes/ folder, ComfyUI imports this same file and calls ``comfy_entrypoint`` (V3 node API), which imports
the node module (and ComfyUI's API) only then.
"""

from .core.api import (
    AccelWarning,
    accel_stats,
    active_handles,
    disable_accel,
    enable_accel,
    list_presets,
    list_strategies,
    strategy_info,
)
from .core.config import StrategyConfig, option
from .core.errors import (
    ConfigError,
    DynaccelError,
    StackingError,
    UnknownStrategyError,
    UnsupportedModelError,
    UnsupportedTargetError,
)
from .core.hookspecs import hookimpl, hookspec
from .core.presets import Preset
from .core.strategy import Handle, Strategy
from .hf_integration import diffusers_pipeline as _diffusers_pipeline
from .hf_integration import transformers_model as _transformers_model

__version__ = "0.1.0"

_diffusers_pipeline.install()
_transformers_model.install()

# ComfyUI entry point (V3; importing comfy_nodes never imports ComfyUI, the nodes load when ComfyUI calls it)
from .comfy_nodes import comfy_entrypoint  # noqa: E402

__all__ = [
    "AccelWarning",
    "ConfigError",
    "DynaccelError",
    "Handle",
    "Preset",
    "StackingError",
    "Strategy",
    "StrategyConfig",
    "UnknownStrategyError",
    "UnsupportedModelError",
    "UnsupportedTargetError",
    "accel_stats",
    "comfy_entrypoint",
    "active_handles",
    "disable_accel",
    "enable_accel",
    "hookimpl",
    "hookspec",
    "list_presets",
    "list_strategies",
    "option",
    "strategy_info",
]
