"""The engine layer shared by the families (cache, sparse attention, tokens; VLA and distillation build on it).

- :mod:`.runs`: run tracking (new generation, step, CFG branch), one rule for every family;
- :mod:`.base`: the engine/handle protocol (``install``, ``uninstall``, ``reset``, ``stats``, ``summary``),
  install-or-roll-back (:func:`install_or_roll_back`, :func:`apply_engine`) and hook naming (:func:`hook_name`);
- :mod:`.diffusers_hooks`: the diffusers ``HookRegistry`` hooks (model and block level) the diffusers engines use;
- :mod:`.tokens`: the token engine (transformers decoders on a changing subset of tokens), used by token pruning
  and early exit.

See docs/engine.md.
"""

from .base import Engine, EngineHandle, apply_engine, hook_name, install_or_roll_back
from .runs import BranchRun, Call, Run, RunTracker

__all__ = [
    "BranchRun",
    "Call",
    "Engine",
    "EngineHandle",
    "Run",
    "RunTracker",
    "apply_engine",
    "hook_name",
    "install_or_roll_back",
]
