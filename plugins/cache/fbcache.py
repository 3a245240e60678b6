"""First-Block Cache (FBCache; ParaAttention's "first block cache", in the spirit of TeaCache, arXiv 2411.19108).

Block 0 is always computed. Its residual (output minus input) is compared with the block-0 residual of the last
fully computed step by relative L1 distance; when the distance is below ``threshold`` the remaining blocks are
skipped and the residual they produced at the last computed step is added to block 0's output. ``max_consecutive``
caps how many passes in a row may reuse the cache (0: no cap). The first and last steps are always computed.

Batch: the distance is measured per sample; the rest of the stack is skipped only when every sample is below the
threshold. CFG: each branch has its own reference residual and cache. Device sync: one bool read per pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.config import option
from . import kernels
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass, all_below


@dataclass(frozen=True)
class FBCacheConfig(CacheConfig):
    threshold: float = option(
        0.08,
        doc="relative L1 change of block 0's residual below which the other blocks are reused; 0 never skips",
        min=0.0,
        max=2.0,
        step=0.01,
    )
    max_consecutive: int = option(
        0, doc="most passes in a row that may reuse the cache (0: no cap)", min=0, max=1000
    )


class _FBCachePolicy(CachePolicy):
    idle_when_off = True  # threshold 0 never skips
    level = "blocks"
    anchor = "block0"

    def after_block0(self, p: Pass, hs, enc) -> None:
        data = p.branch.data
        residual0 = hs - p.input_hs
        prev = data.get("prev_residual0")
        streak = data.get("streak", 0)
        cap = self.config.max_consecutive
        can = prev is not None and prev.shape == residual0.shape and not p.forced and "res_hs" in data
        if can and (cap == 0 or streak < cap):
            if all_below(kernels.rel_l1(residual0, prev), self.config.threshold):
                p.skip = True
                data["streak"] = streak + 1
                return
        p.skip = False
        data["streak"] = 0
        data["prev_residual0"] = residual0


class FBCache(CacheStrategy):
    """First-Block Cache: compute block 0, reuse the cached residual of the other blocks while block 0's
    residual barely changes.

    Example::

        pipe.enable_accel("fbcache", threshold=0.08, max_consecutive=3)
    """

    name = "fbcache"
    Policy = _FBCachePolicy
    Config = FBCacheConfig
    summary = "block 0's residual change decides whether the remaining blocks reuse their cached residual"
    paper = "First Block Cache (ParaAttention / cache-dit), after TeaCache (arXiv 2411.19108)"
