"""dynaccel: training-free dynamic inference acceleration, one line away.

    import dynaccel
    pipe.enable_accel("teacache", threshold=0.08)     # any diffusers pipeline, after `import dynaccel`
    dynaccel.list_strategies()                         # ['easycache', 'fbcache', 'magcache', 'teacache', ...]

Importing this package needs neither ComfyUI, Triton, diffusers nor a GPU. When the repo sits in ComfyUI's
custom_nodes/ folder, ComfyUI imports this same file and calls ``comfy_entrypoint`` (V3 node API), which imports
the node module (and ComfyUI's API) only then.
"""

# Loaded by ComfyUI from a cloned folder, the package runs under that folder's name: make `import dynaccel` (a
# third-party plugin's) resolve to this very copy instead of failing or loading a second one.
import sys as _sys  # noqa: E402

from .core.package_alias import alias_as_dynaccel as _alias_as_dynaccel  # noqa: E402

_alias_as_dynaccel(_sys.modules[__name__])

# The built-in plugins, handed to core here. This file is the composition root: the one module that may name every
# layer (core, the method families, the surfaces), and Python runs it before any dynaccel.* submodule, so the list is
# in place before the registry is first built. Core itself stays a leaf that names no plugin; plugins/ holds method
# families only and must not name the surfaces (comfy_nodes, hf_integration), which also register here.
# (plugin name, module): loaded in this order; the name is what DYNACCEL_PLUGINS / DYNACCEL_BLOCK_PLUGINS match.
from .core import plugins as _plugin_manager

BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("dynaccel.adapters", f"{__name__}.plugins.adapters"),
    ("dynaccel.cache", f"{__name__}.plugins.cache"),
    ("dynaccel.sparse_attention", f"{__name__}.plugins.sparse_attention"),
    ("dynaccel.comfy", f"{__name__}.comfy_nodes.plugin"),
    ("dynaccel.token_pruning", f"{__name__}.plugins.token_pruning"),
    ("dynaccel.early_exit", f"{__name__}.plugins.early_exit"),
    ("dynaccel.vla", f"{__name__}.plugins.vla"),
    ("dynaccel.distillation", f"{__name__}.plugins.distillation"),
    ("dynaccel.hf", f"{__name__}.hf_integration.plugin"),  # CLI commands, hub: presets, zoo model names
)
_plugin_manager.set_builtin_plugins(BUILTIN_PLUGINS)

from .core.api import (  # noqa: E402
    AccelWarning,
    accel_stats,
    active_handles,
    disable_accel,
    enable_accel,
    list_presets,
    list_strategies,
    strategy_info,
)
from .core.config import StrategyConfig, option  # noqa: E402
from .core.errors import (  # noqa: E402
    ConfigError,
    DynaccelError,
    StackingError,
    UnknownStrategyError,
    UnsupportedModelError,
    UnsupportedTargetError,
)
from .core.hookspecs import hookimpl, hookspec  # noqa: E402
from .core.presets import Preset  # noqa: E402
from .core.strategy import Handle, Strategy  # noqa: E402
from .hf_integration import diffusers_pipeline as _diffusers_pipeline  # noqa: E402
from .hf_integration import transformers_model as _transformers_model  # noqa: E402

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
