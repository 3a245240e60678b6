"""BWCache (Block-Wise Caching, "BWCache: Accelerating Video Diffusion Transformers through Block-Wise Caching",
arXiv 2509.13789).

Each transformer block decides on its own: it reuses the residual it produced when it was last computed while
the relative L1 change of its *input* since then stays below ``threshold``, for at most ``max_reuse`` passes in a
row. Across the depth of a DiT the change of block features is U-shaped (large in the first and last blocks,
small in the middle), so middle blocks end up reused most; ``stats["reused_per_block"]`` shows the profile.
The first and last steps, and steps outside ``start``/``end``, compute every block.

Batch: a block is reused only when every sample's input change is below the threshold. CFG: each branch has its
own per-block caches. Device sync: one bool per block and pass. Memory: one input and one residual per block and
branch.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from ...core.config import option
from . import kernels
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass, all_below


@dataclass(frozen=True)
class BWCacheConfig(CacheConfig):
    threshold: float = option(
        0.05,
        doc="a block reuses its cached residual while its input's relative L1 change since it was computed stays "
        "below this; 0 never reuses",
        min=0.0,
        max=2.0,
        step=0.005,
    )
    max_reuse: int = option(3, doc="most passes in a row a block may reuse its residual", min=1, max=100)


class _BWCachePolicy(CachePolicy):
    idle_when_off = True  # threshold 0 never skips
    level = "per_block"

    def block_reuse(self, p: Pass, i: int, hs: torch.Tensor) -> bool:
        st = p.branch.data.setdefault("bw", {}).get(i)
        if st is None or st["streak"] >= self.config.max_reuse:
            return False
        if all_below(kernels.rel_l1(hs, st["input"]), self.config.threshold):
            st["streak"] += 1
            return True
        return False

    def block_computed(self, p: Pass, i: int, hs_in: torch.Tensor, residual: torch.Tensor) -> None:
        p.branch.data.setdefault("bw", {})[i] = {"input": hs_in, "streak": 0}


class BWCache(CacheStrategy):
    """BWCache (arXiv 2509.13789): per-block reuse of cached residuals while each block's input barely changes.

    Example::

        pipe.enable_accel("bwcache", threshold=0.05, max_reuse=3)
    """

    cap_option = "max_reuse"
    name = "bwcache"
    Policy = _BWCachePolicy
    Config = BWCacheConfig
    summary = "block-wise: each block reuses its residual while its own input barely changes"
    paper = "BWCache: Accelerating Video Diffusion Transformers through Block-Wise Caching (arXiv 2509.13789)"
