"""Cache-reuse family: TeaCache, First-Block Cache, EasyCache, MagCache (training-free, diffusion transformers)."""

from ...core.hookspecs import hookimpl
from ...core.presets import load_builtin_presets
from .easycache import EasyCache
from .fbcache import FBCache
from .magcache import MagCache
from .teacache import TeaCache

STRATEGIES = (TeaCache, FBCache, EasyCache, MagCache)


@hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)


@hookimpl
def register_presets(register):
    for preset in load_builtin_presets("cache-"):
        register(preset)
