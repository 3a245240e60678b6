"""Radial attention (Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy Decay for Long Video
Generation", arXiv 2506.19852).

Attention energy in video DiTs decays with spatial and temporal distance. Radial attention keeps full attention
between nearby frames and, for frames further apart, a spatial window that halves each time the temporal distance
doubles: with ``d`` the distance in frames, a query tile attends the key tiles within ``window >> floor(log2(d))``
tiles of its own position (never fewer than the tile at the same position), and all of them when
``d <= dense_frames``. Tiles are one frame deep and ``tile_height x tile_width`` tokens across. Text is attended
densely, as in every strategy of this family.

Dense setting: ``dense_frames`` >= the number of frames - 1 (e.g. 1000), or ``dense_steps`` >= the step count.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.config import option
from .engine import CallInfo, Pass, SparseAttentionConfig, SparseAttentionStrategy, SparsePolicy
from .masks import radial_mask


@dataclass(frozen=True)
class RadialConfig(SparseAttentionConfig):
    tile_height: int = option(4, doc="tile height in tokens (tiles are one frame deep)", min=1, max=256)
    tile_width: int = option(4, doc="tile width in tokens", min=1, max=256)
    dense_frames: int = option(1, doc="frames at most this far apart attend each other fully", min=0, max=1000)
    window: int = option(
        2, doc="spatial window radius in tiles at frame distance 1; halves each time the distance doubles", min=0,
        max=1000,
    )


class _RadialPolicy(SparsePolicy):
    def _plan(self, grid, num_text):
        c = self.config
        return self.plan(
            (grid, num_text),
            lambda: radial_mask(grid, (c.tile_height, c.tile_width), c.window, c.dense_frames, c.block_size, num_text),
        )

    def full(self, grid, step):
        return bool(self._plan(grid, 0).block_mask.all())

    def passes(self, call: CallInfo):
        plan = self._plan(call.grid, call.num_text)
        return [Pass(plan, plan.block_mask[None], cache_key=(call.grid, call.num_text))]


class Radial(SparseAttentionStrategy):
    """Radial attention (arXiv 2506.19852): the spatial window shrinks as the temporal distance grows.

    Example::

        pipe.enable_accel("radial", dense_frames=1, window=2, tile_height=4, tile_width=4, block_size=16)
    """

    name = "radial"
    Config = RadialConfig
    Policy = _RadialPolicy
    summary = "full attention between nearby frames, a spatial window halving with each doubling of frame distance"
    paper = "Li et al., Radial Attention: O(n log n) Sparse Attention with Energy Decay (arXiv 2506.19852)"
