"""One copy of dynaccel when ComfyUI loads the repo as a custom-node folder.

ComfyUI imports a cloned pack from its folder under a name of its own (the folder's path), so the package then runs
as ``<that name>``, not ``dynaccel``. A third-party dynaccel plugin does ``import dynaccel``: without an alias that
import fails (dynaccel not installed) or loads a second copy from site-packages (two registries, two sets of active
strategies, nodes that never see the plugin). :func:`alias_as_dynaccel` makes ``dynaccel`` and every
``dynaccel.<sub>`` the very module objects already loaded (or loaded on first use) under the pack's name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

NAME = "dynaccel"


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``dynaccel.<sub>`` with the module ``<real>.<sub>`` (imported on first use): the same object."""

    def __init__(self, real: str):
        self.real = real

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(NAME + "."):
            return None
        return importlib.util.spec_from_loader(fullname, self)  # the real module keeps its own __path__, __spec__

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(self.real + spec.name[len(NAME):])

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its real name


def alias_as_dynaccel(package: ModuleType) -> bool:
    """When ``package`` (the repo's root package) runs under another name and no ``dynaccel`` is loaded yet, make
    ``import dynaccel...`` resolve to it. Returns whether an alias was installed."""
    if package.__name__ == NAME or NAME in sys.modules:
        return False
    sys.modules[NAME] = package
    sys.meta_path.insert(0, _AliasFinder(package.__name__))
    return True
