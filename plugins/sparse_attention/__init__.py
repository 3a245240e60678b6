"""Sparse-attention family (training-free, video diffusion transformers): sliding tile attention, radial attention,
Sparse VideoGen and PASA, on a block-sparse Triton attention kernel (kernels.py)."""

from ...core.hookspecs import hookimpl
from .pasa import PASA
from .radial import Radial
from .sliding_tile import SlidingTile
from .svg import SVG

STRATEGIES = (SlidingTile, Radial, SVG, PASA)


@hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)
