"""Token-pruning family (training-free, transformers LMs and VLMs): FastV, SlimInfer."""

from ...core.hookspecs import hookimpl
from .fastv import FastV
from .sliminfer import SlimInfer

STRATEGIES = (FastV, SlimInfer)


@hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)
