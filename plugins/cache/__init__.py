"""Cache-reuse family (training-free, diffusion transformers): TeaCache, First-Block Cache, EasyCache, MagCache,
AdaCache, BWCache, SmoothCache, TaylorSeer, SeaCache, and learned_cache (a
learned predictor of skipped residuals).

The public, stable names for writing a cache strategy in another package (docs/plugins.md)::

    from dynaccel.plugins.cache import CacheConfig, CachePolicy, CacheStrategy, Pass
"""

from ...core.hookspecs import hookimpl
from ...core.presets import load_builtin_presets
from .adacache import AdaCache
from .bwcache import BWCache
from .easycache import EasyCache
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass
from .fbcache import FBCache
from .learned_cache import LearnedCache
from .magcache import MagCache
from .seacache import SeaCache
from .smoothcache import SmoothCache
from .taylorseer import TaylorSeer
from .teacache import TeaCache

__all__ = ["CacheConfig", "CachePolicy", "CacheStrategy", "Pass", "STRATEGIES"]

STRATEGIES = (TeaCache, FBCache, EasyCache, MagCache, AdaCache, BWCache, SmoothCache, TaylorSeer, SeaCache, LearnedCache)


@hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)


@hookimpl
def register_presets(register):
    for preset in load_builtin_presets("cache-"):
        register(preset)
