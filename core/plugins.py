"""The plugin manager: built-in families, third-party plugins from entry points, environment switches.

Environment variables (read when the registry is first built, and by :func:`reload`):

- ``DYNACCEL_NO_AUTOLOAD=1``: do not load third-party plugins from the ``dynaccel`` entry-point group.
- ``DYNACCEL_BLOCK_PLUGINS=name1,name2``: never load these plugins (built-in or third-party, by plugin name).
- ``DYNACCEL_PLUGINS=name1,name2``: load only these plugins (an allow-list; built-ins included by name).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import hookspecs

# Built-in plugins: (plugin name, module path relative to this package's root).
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("dynaccel.adapters", ".plugins.adapters"),
    ("dynaccel.cache", ".plugins.cache"),
    ("dynaccel.sparse_attention", ".plugins.sparse_attention"),
    ("dynaccel.comfy", ".comfy_nodes.plugin"),
    ("dynaccel.token_pruning", ".plugins.token_pruning"),
    ("dynaccel.early_exit", ".plugins.early_exit"),
)

_ROOT_PACKAGE = __name__.rsplit(".", 2)[0]


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


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _dist_of(module_name: str) -> tuple[str, str]:
    top = module_name.split(".")[0]
    try:
        dists = metadata.packages_distributions().get(top, [])
        if dists:
            return dists[0], metadata.version(dists[0])
    except Exception:  # pragma: no cover - broken metadata must not break loading
        pass
    return "dynaccel", _own_version()


def _own_version() -> str:
    try:
        return metadata.version("dynaccel")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Create a plugin manager with the built-ins and the entry-point plugins the environment allows."""
    pm = pluggy.PluginManager("dynaccel")
    pm.add_hookspecs(hookspecs)
    allow = _env_list("DYNACCEL_PLUGINS")
    block = _env_list("DYNACCEL_BLOCK_PLUGINS") or set()
    infos: dict[str, PluginInfo] = {}

    def wanted(name: str) -> bool:
        return name not in block and (allow is None or name in allow)

    for name, rel in BUILTIN_PLUGINS:
        if not wanted(name):
            continue
        module = importlib.import_module(rel, _ROOT_PACKAGE)
        pm.register(module, name=name)
        infos[name] = PluginInfo(name, module.__name__, "dynaccel", _own_version(), True)

    if os.environ.get("DYNACCEL_NO_AUTOLOAD", "").strip() not in ("", "0", "false", "False"):
        pass
    else:
        for ep in metadata.entry_points(group="dynaccel"):
            if not wanted(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                print(f"dynaccel: plugin {ep.name!r} ({ep.value}) failed to import: {exc}", file=sys.stderr)
                continue
            pm.register(plugin, name=ep.name)
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "unknown"
            infos[ep.name] = PluginInfo(ep.name, ep.value, dist, version, False)
    pm.check_pending()
    return pm, infos
