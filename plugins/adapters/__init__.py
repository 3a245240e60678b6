"""Built-in model adapters for diffusers transformers, transformers LMs/VLMs and π0 policies (shared by every family)."""

from ...core.hookspecs import hookimpl
from .diffusers_models import DIFFUSERS_ADAPTERS
from .transformers_models import TRANSFORMERS_ADAPTERS
from .transformers_policies import POLICY_ADAPTERS


@hookimpl
def register_model_adapters(register):
    for cls in DIFFUSERS_ADAPTERS + TRANSFORMERS_ADAPTERS + POLICY_ADAPTERS:
        register(cls)
