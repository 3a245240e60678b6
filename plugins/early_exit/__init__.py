"""Early-exit family (training-free, transformers LMs and VLMs): visual-token exit, layer skipping."""

from ...core.hookspecs import hookimpl
from .layer_skip import LayerSkip
from .visual_exit import VisualExit

STRATEGIES = (VisualExit, LayerSkip)


@hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)
