"""``pipe.enable_accel(...)``, ``pipe.disable_accel()`` and ``pipe.accel_stats`` on every diffusers pipeline.

The methods are added to ``DiffusionPipeline`` (new attributes only; nothing of diffusers is replaced) as soon as
both dynaccel and ``diffusers.pipelines.pipeline_utils`` are imported, whichever comes first, so that
``import dynaccel`` stays cheap and never imports diffusers itself. A pipeline that never enables anything runs
exactly the code it ran before.

Example::

    import dynaccel, diffusers
    pipe = diffusers.WanPipeline.from_pretrained(folder)
    pipe.enable_accel("teacache", threshold=0.08)
    out = pipe("a red circle moving left", num_inference_steps=20)
    print(pipe.accel_stats["teacache"]["computed"], "of", pipe.accel_stats["teacache"]["passes"])
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

_TARGET_MODULE = "diffusers.pipelines.pipeline_utils"


def _enable_accel(self, name: str | None = None, **config: Any):
    """Install a dynaccel strategy on this pipeline's transformer(s); see ``dynaccel.enable_accel``."""
    from ..core.api import enable_accel

    return enable_accel(self, name, **config)


def _disable_accel(self, name: str | None = None) -> list[str]:
    """Remove dynaccel strategies (all, or the one named); outputs are then bit-identical to the plain pipeline."""
    from ..core.api import disable_accel

    return disable_accel(self, name)


def _accel_stats(self) -> dict[str, Any]:
    """Per strategy, what the last call did: transformer passes computed and skipped, per CFG branch."""
    from ..core.api import accel_stats

    return accel_stats(self)


def attach(target_cls: type) -> None:
    """Add the three accel attributes to ``target_cls`` where it does not define them itself."""
    for attr, value in (
        ("enable_accel", _enable_accel),
        ("disable_accel", _disable_accel),
        ("accel_stats", property(_accel_stats)),
    ):
        if target_cls.__dict__.get(attr) is None:
            setattr(target_cls, attr, value)


class AttachAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Post-import hook: once ``module`` has executed, attach the methods to its class ``class_name``."""

    def __init__(self, module: str, class_name: str):
        self.module, self.class_name = module, class_name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
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
        attach(getattr(module, self.class_name))


def install_on(module: str, class_name: str) -> None:
    """Attach now if ``module`` is imported, else as soon as it is."""
    mod = sys.modules.get(module)
    if mod is not None and hasattr(mod, class_name):
        attach(getattr(mod, class_name))
        return
    if not any(isinstance(f, AttachAfterImport) and f.module == module for f in sys.meta_path):
        sys.meta_path.insert(0, AttachAfterImport(module, class_name))


def install() -> None:
    """Attach now if diffusers' pipelines are imported, else as soon as they are."""
    install_on(_TARGET_MODULE, "DiffusionPipeline")
