"""``model.enable_accel(...)``, ``model.disable_accel()`` and ``model.accel_stats`` on every transformers model.

Added to ``PreTrainedModel`` (new attributes only; nothing of transformers is replaced) as soon as both dynaccel and
``transformers.modeling_utils`` are imported, whichever comes first, so that ``import dynaccel`` never imports
transformers. A model that never enables anything runs exactly the code it ran before.

Example::

    import dynaccel
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.enable_accel("fastv", layer=2, keep_ratio=0.5)
    out = model.generate(**inputs, max_new_tokens=20)
    print(model.accel_stats["fastv"]["prefill_token_layers"])
    model.disable_accel()
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

from .diffusers_pipeline import _accel_stats, _disable_accel, _enable_accel

_TARGET_MODULE = "transformers.modeling_utils"


def attach(model_cls: type) -> None:
    for attr, value in (
        ("enable_accel", _enable_accel),
        ("disable_accel", _disable_accel),
        ("accel_stats", property(_accel_stats)),
    ):
        if model_cls.__dict__.get(attr) is None:
            setattr(model_cls, attr, value)


class _AttachAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Post-import hook: once transformers' modeling_utils has executed, attach the methods."""

    def find_spec(self, fullname: str, path: Any, target: Any = None):
        if fullname != _TARGET_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        self._inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        attach(module.PreTrainedModel)


def install() -> None:
    """Attach now if transformers' modeling_utils is imported, else as soon as it is."""
    mod = sys.modules.get(_TARGET_MODULE)
    if mod is not None and hasattr(mod, "PreTrainedModel"):
        attach(mod.PreTrainedModel)
        return
    if not any(isinstance(f, _AttachAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AttachAfterImport())
