"""Built-in model adapters for diffusers transformers (shared by every family that needs them)."""

from ...core.hookspecs import hookimpl
from .diffusers_models import DIFFUSERS_ADAPTERS


@hookimpl
def register_model_adapters(register):
    for cls in DIFFUSERS_ADAPTERS:
        register(cls)
