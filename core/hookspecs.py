"""The hooks a dynaccel plugin can implement.

A plugin is a module (or object) with functions marked ``@dynaccel.hookimpl`` whose names match the specs
below. Built-in families are registered as default plugins; third-party ones are found through the
``dynaccel`` entry-point group. The ``register_*`` hooks receive a ``register`` callable and call it once per
item; the registry calls each plugin's hook on its own, so one plugin that fails or repeats a name is skipped with a
warning and the others are unaffected. ``resolve_preset`` and ``identify_model`` are first-result hooks: the first
plugin that answers (not None) wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # type names only: core modules never import presets here at run time
    from .presets import Preset

hookspec = pluggy.HookspecMarker("dynaccel")
hookimpl = pluggy.HookimplMarker("dynaccel")


@hookspec
def register_strategies(register: Callable) -> None:
    """Register strategies: call ``register(StrategySubclass)`` once for each."""


@hookspec
def register_model_adapters(register: Callable) -> None:
    """Register model adapters: call ``register(AdapterSubclass)`` once for each architecture."""


@hookspec
def register_distillers(register: Callable) -> None:
    """Register distillation methods: call ``register(DistillerSubclass)`` once for each (``dynaccel distill``)."""


@hookspec
def register_presets(register: Callable) -> None:
    """Register tuned presets: call ``register(Preset(...))`` once for each."""


@hookspec
def register_commands(cli) -> None:
    """Add subcommands to the ``dynaccel`` CLI: ``cli`` is the root ``click.Group``."""


@hookspec(firstresult=True)
def resolve_preset(reference: str) -> "Preset | None":
    """Return the Preset that ``reference`` names (e.g. ``hub:ORG/REPO/NAME``), or None when it is not of your kind."""


@hookspec(firstresult=True)
def identify_model(path: str) -> str | None:
    """Return the name of the model in local folder ``path`` (e.g. a zoo model's), or None when you cannot tell."""
