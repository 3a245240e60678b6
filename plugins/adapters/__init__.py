"""Built-in model adapters for diffusers transformers and transformers LMs/VLMs (shared by every family)."""

from ...core.hookspecs import hookimpl
from .diffusers_models import DIFFUSERS_ADAPTERS
from .transformers_models import TRANSFORMERS_ADAPTERS


@hookimpl
def register_model_adapters(register):
    for cls in DIFFUSERS_ADAPTERS + TRANSFORMERS_ADAPTERS:
        register(cls)
