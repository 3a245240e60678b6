"""The plugin manager: built-in plugins, third-party plugins from entry points, environment switches.

Environment variables (read when the registry is first built, and by :func:`reload`):

- ``DYNACCEL_NO_AUTOLOAD=1``: do not load third-party plugins from the ``dynaccel`` entry-point group.
- ``DYNACCEL_BLOCK_PLUGINS=name1,name2``: never load these plugins (built-in or third-party, by plugin name).
- ``DYNACCEL_PLUGINS=name1,name2``: load only these plugins (an allow-list; built-ins included by name).

Core names no plugin: the built-in list (method families, model adapters, and the surfaces' own plugins) is
handed over by the package's root ``__init__`` through :func:`set_builtin_plugins` (see the comment there).
A third-party plugin that fails to import or names a hook that does not exist is skipped with a
:class:`~dynaccel.core.errors.PluginWarning`; the rest load.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Iterable

import pluggy

from . import hookspecs
from .errors import PluginWarning

_builtin_plugins: tuple[tuple[str, str], ...] = ()


def set_builtin_plugins(plugins: Iterable[tuple[str, str]]) -> None:
    """Set the built-in plugins as (plugin name, absolute module name) pairs, loaded first and in this order.

    Takes effect when the registry is next built (:func:`dynaccel.core.registry.reload`)."""
    global _builtin_plugins
    _builtin_plugins = tuple((str(name), str(module)) for name, module in plugins)


def builtin_plugins() -> tuple[tuple[str, str], ...]:
    """The (plugin name, module name) pairs handed over by :func:`set_builtin_plugins`."""
    return _builtin_plugins


@dataclass
class PluginInfo:
    """One loaded plugin: its name, where it comes from, and what it registered."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    strategies: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)
    distillers: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``plugin 'NAME' (distribution 'DIST')``, for messages."""
        return f"plugin {self.name!r} (distribution {self.distribution!r})"


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _own_version() -> str:
    try:
        return metadata.version("dynaccel")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def warn(message: str) -> None:
    """Report a skipped plugin (or a skipped registration) as a PluginWarning."""
    warnings.warn(message, PluginWarning, stacklevel=3)


def build_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Create a plugin manager with the built-ins and the entry-point plugins the environment allows."""
    pm = pluggy.PluginManager("dynaccel")
    pm.add_hookspecs(hookspecs)
    allow = _env_list("DYNACCEL_PLUGINS")
    block = _env_list("DYNACCEL_BLOCK_PLUGINS") or set()
    infos: dict[str, PluginInfo] = {}

    def wanted(name: str) -> bool:
        return name not in block and (allow is None or name in allow)

    for name, module_name in _builtin_plugins:
        if not wanted(name):
            continue
        module = importlib.import_module(module_name)
        pm.register(module, name=name)
        infos[name] = PluginInfo(name, module.__name__, "dynaccel", _own_version(), True)
    pm.check_pending()  # a misspelled hookimpl in a built-in is our bug: fail loudly

    if os.environ.get("DYNACCEL_NO_AUTOLOAD", "").strip() not in ("", "0", "false", "False"):
        return pm, infos
    for ep in metadata.entry_points(group="dynaccel"):
        if not wanted(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        dist = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "unknown"
        info = PluginInfo(ep.name, ep.value, dist, version, False)
        try:
            plugin = ep.load()
        except Exception as exc:
            warn(f"{info.describe()} ({ep.value}) failed to import and was skipped: {type(exc).__name__}: {exc}")
            continue
        try:
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except Exception as exc:  # a hookimpl with a wrong name or signature: this plugin only
            if pm.get_plugin(ep.name) is not None:
                pm.unregister(name=ep.name)
            warn(f"{info.describe()} was skipped: {exc}")
            continue
        infos[ep.name] = info
    return pm, infos
