"""Cache-reuse family (training-free, diffusion transformers): TeaCache, First-Block Cache, EasyCache, MagCache,
AdaCache, BWCache, SmoothCache, TaylorSeer."""

from ...core.hookspecs import hookimpl
from ...core.presets import load_builtin_presets
from .adacache import AdaCache
from .bwcache import BWCache
from .easycache import EasyCache
from .fbcache import FBCache
from .magcache import MagCache
from .smoothcache import SmoothCache
from .taylorseer import TaylorSeer
from .teacache import TeaCache

STRATEGIES = (TeaCache, FBCache, EasyCache, MagCache, AdaCache, BWCache, SmoothCache, TaylorSeer)


@hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)


@hookimpl
def register_presets(register):
    for preset in load_builtin_presets("cache-"):
        register(preset)
