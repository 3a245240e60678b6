"""The hooks a dynaccel plugin can implement.

A plugin is a module (or object) with functions marked ``@dynaccel.hookimpl`` whose names match the specs
below. Built-in families are registered as default plugins; third-party ones are found through the
``dynaccel`` entry-point group. Each hook receives a ``register`` callable and calls it once per item.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("dynaccel")
hookimpl = pluggy.HookimplMarker("dynaccel")


@hookspec
def register_strategies(register: Callable) -> None:
    """Register strategies: call ``register(StrategySubclass)`` once for each."""


@hookspec
def register_model_adapters(register: Callable) -> None:
    """Register model adapters: call ``register(AdapterSubclass)`` once for each architecture."""


@hookspec
def register_presets(register: Callable) -> None:
    """Register tuned presets: call ``register(Preset(...))`` once for each."""


@hookspec
def register_commands(cli) -> None:
    """Add subcommands to the ``dynaccel`` CLI: ``cli`` is the root ``click.Group``."""
