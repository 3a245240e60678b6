"""Built-in plugin ``dynaccel.comfy``: registers the ComfyUI model adapters (no ComfyUI import)."""

from ..core.hookspecs import hookimpl
from .adapters import COMFY_ADAPTERS


@hookimpl
def register_model_adapters(register):
    for cls in COMFY_ADAPTERS:
        register(cls)
