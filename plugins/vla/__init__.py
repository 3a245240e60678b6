"""VLA family: acceleration of robot policies (transformers' π0 / π0.5) measured by closed-loop task success.

- ``vla_cache``: reuse the prefix keys/values of static, task-irrelevant image tokens (VLA-Cache);
- ``prefix_prune``: image tokens leave the prefix from a layer on (FastV ranking, EfficientVLA's diverse selection);
- ``denoise_steps``: fewer flow-matching steps for the action expert (its own family, ``vla_steps``, so that it
  stacks with a prefix strategy and with a cache strategy on the action expert);
- the cache family runs on the action expert unchanged (``policy.enable_accel("teacache")``), through the π0
  adapter (plugins/adapters/transformers_policies.py).

The asynchronous chunk executor is a surface-level tool (``dynaccel.hf_integration.async_chunks``): it wraps any
chunking policy rather than a model.
"""

from ...core.hookspecs import hookimpl
from ...core.presets import load_builtin_presets
from .denoise_steps import DenoiseSteps
from .prefix_prune import PrefixPrune
from .vla_cache import VlaCache

STRATEGIES = (VlaCache, PrefixPrune, DenoiseSteps)


@hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)


@hookimpl
def register_presets(register):
    for preset in load_builtin_presets("vla-"):  # core/presets/vla-<model>-<strategy>.json
        register(preset)
