"""The loaded registry: strategies, model adapters and presets collected from all plugins."""

from __future__ import annotations

import threading
from typing import Any

from .adapters import ModelAdapter
from .errors import PluginError, UnknownStrategyError, UnsupportedModelError
from .plugins import PluginInfo, build_plugin_manager
from .presets import Preset
from .strategy import Strategy


class Registry:
    def __init__(self) -> None:
        self.pm, self.plugins = build_plugin_manager()
        self.strategies: dict[str, type[Strategy]] = {}
        self.adapters: list[type[ModelAdapter]] = []
        self.presets: dict[str, Preset] = {}
        self._collect()

    def _collect(self) -> None:
        for impl in self.pm.hook.register_strategies.get_hookimpls():
            info = self._info(impl.plugin_name)

            def register(cls: type[Strategy], _info: PluginInfo | None = info) -> None:
                for attr in ("name", "family", "Config"):
                    if not hasattr(cls, attr):
                        raise PluginError(f"strategy {cls!r} from plugin {_info and _info.name!r} lacks {attr!r}")
                cls.Config.fields_info()  # validates the schema
                if cls.name in self.strategies:
                    raise PluginError(
                        f"strategy {cls.name!r} registered twice (plugin {_info and _info.name!r}); names must be unique"
                    )
                self.strategies[cls.name] = cls
                if _info is not None:
                    _info.strategies.append(cls.name)

            impl.function(register=register)

        for impl in self.pm.hook.register_model_adapters.get_hookimpls():
            info = self._info(impl.plugin_name)

            def register_adapter(cls: type[ModelAdapter], _info: PluginInfo | None = info) -> None:
                self.adapters.append(cls)
                if _info is not None:
                    _info.adapters.append(cls.name)

            impl.function(register=register_adapter)

        for impl in self.pm.hook.register_presets.get_hookimpls():
            info = self._info(impl.plugin_name)

            def register_preset(preset: Preset, _info: PluginInfo | None = info) -> None:
                self.presets[preset.name] = preset
                if _info is not None:
                    _info.presets.append(preset.name)

            impl.function(register=register_preset)

    def add_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module at run time (tests, notebooks); returns its name."""
        name = self.pm.register(plugin, name=name)
        if name is None:
            raise PluginError(f"plugin {plugin!r} is already registered")
        self.pm.check_pending()
        self.plugins[name] = PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__), "(runtime)", "-", False)
        self._recollect()
        return name

    def remove_plugin(self, name: str) -> None:
        if self.pm.get_plugin(name) is None:
            raise PluginError(f"no plugin named {name!r}; loaded: {', '.join(self.plugins)}")
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._recollect()

    def _recollect(self) -> None:
        self.strategies.clear()
        self.adapters.clear()
        self.presets.clear()
        for info in self.plugins.values():
            info.strategies.clear()
            info.adapters.clear()
            info.presets.clear()
        self._collect()

    def _info(self, plugin_name: str) -> PluginInfo | None:
        return self.plugins.get(plugin_name)

    def strategy(self, name: str) -> type[Strategy]:
        try:
            return self.strategies[name]
        except KeyError:
            available = ", ".join(sorted(self.strategies)) or "(none loaded)"
            raise UnknownStrategyError(f"unknown strategy {name!r}; available: {available}") from None

    def find_adapter(self, model: Any) -> ModelAdapter | None:
        # later registrations win, so a third-party adapter can refine a built-in one
        for cls in reversed(self.adapters):
            if cls.matches(model):
                return cls(model)
        return None

    def adapter_for(self, model: Any, strategy: type[Strategy]) -> ModelAdapter:
        adapter = self.find_adapter(model)
        supported = sorted(
            {arch for cls in self.adapters if strategy.needs_capabilities <= cls.capabilities for arch in cls.architectures}
        )
        if adapter is None or not strategy.needs_capabilities <= adapter.capabilities:
            raise UnsupportedModelError(
                f"strategy {strategy.name!r} does not support {type(model).__name__}; supported architectures: "
                f"{', '.join(supported) or '(none)'}"
                + ("; a plugin can add one through the register_model_adapters hook" if supported else "")
            )
        return adapter


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reload() -> Registry:
    """Rebuild the registry (e.g. after installing a plugin or changing the DYNACCEL_* variables)."""
    global _registry
    with _lock:
        _registry = Registry()
        return _registry
