"""Sliding tile attention (Zhang et al., "Fast Video Generation with Sliding Tile Attention", arXiv 2502.04507).

The video tokens are regrouped into 3D tiles of ``tile_frames x tile_height x tile_width`` tokens (tile-major order,
so a tile is contiguous and, when its volume equals ``block_size``, one kernel block). Each query tile attends the
key tiles within ``radius_*`` tiles of it along frames, height and width: a 3D window that slides tile by tile,
which is what makes it block-sparse without ragged token windows. Every video token also attends the text tokens;
text tokens attend everything. The mask depends only on the grid, so it is built once per resolution.

Dense setting: radii at least the number of tiles along each dimension (e.g. ``radius_frames=1000`` and the same for
height and width), or ``dense_steps`` >= the step count: the model's own processors run, bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.config import option
from .engine import CallInfo, Pass, SparseAttentionConfig, SparseAttentionStrategy, SparsePolicy
from .masks import sliding_tile_mask


@dataclass(frozen=True)
class SlidingTileConfig(SparseAttentionConfig):
    tile_frames: int = option(1, doc="tile depth in frames (tokens after patching)", min=1, max=64)
    tile_height: int = option(4, doc="tile height in tokens", min=1, max=256)
    tile_width: int = option(4, doc="tile width in tokens", min=1, max=256)
    radius_frames: int = option(1, doc="query tiles attend key tiles up to this many tiles away in time", min=0, max=1000)
    radius_height: int = option(1, doc="query tiles attend key tiles up to this many tiles away vertically", min=0, max=1000)
    radius_width: int = option(1, doc="query tiles attend key tiles up to this many tiles away horizontally", min=0, max=1000)


class _SlidingTilePolicy(SparsePolicy):
    def _plan(self, grid, num_text):
        c = self.config
        return self.plan(
            (grid, num_text),
            lambda: sliding_tile_mask(
                grid, (c.tile_frames, c.tile_height, c.tile_width),
                (c.radius_frames, c.radius_height, c.radius_width), c.block_size, num_text,
            ),
        )

    def full(self, grid, step):
        return bool(self._plan(grid, 0).block_mask.all())

    def passes(self, call: CallInfo):
        plan = self._plan(call.grid, call.num_text)
        return [Pass(plan, plan.block_mask[None], cache_key=(call.grid, call.num_text))]


class SlidingTile(SparseAttentionStrategy):
    """Sliding tile attention (arXiv 2502.04507): 3D tile windows over frames x height x width.

    Example::

        pipe.enable_accel("sliding_tile", tile_frames=1, tile_height=4, tile_width=4, radius_frames=1,
                          radius_height=1, radius_width=1, block_size=16)
    """

    name = "sliding_tile"
    Config = SlidingTileConfig
    Policy = _SlidingTilePolicy
    summary = "each 3D tile of video tokens attends the tiles within a window around it, plus the text"
    paper = "Zhang et al., Fast Video Generation with Sliding Tile Attention (arXiv 2502.04507)"
