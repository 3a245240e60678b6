"""Token-pruning family (training-free, transformers LMs and VLMs): FastV, VisionZip, DyCoke, SlimInfer."""

from ...core.hookspecs import hookimpl
from .dycoke import DyCoke
from .fastv import FastV
from .sliminfer import SlimInfer
from .visionzip import VisionZip

STRATEGIES = (FastV, VisionZip, DyCoke, SlimInfer)


@hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)
