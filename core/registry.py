"""The loaded registry: strategies, model adapters and presets collected from all plugins.

Each plugin's hook is called on its own (``pm.subset_hook_caller`` with every other plugin removed), for two
reasons: what a plugin registers is recorded against that plugin (``dynaccel plugins``, and warnings that name
both plugins of a name clash), and one plugin whose hook raises cannot stop the others (a single hook call stops
at the first exception). A plugin that fails, or registers an invalid item or a name another plugin took first, is
skipped (the failing call entirely; a clashing item alone) with a :class:`~dynaccel.core.errors.PluginWarning`
naming both plugins and their distributions; everything else keeps working.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from .adapters import ModelAdapter
from .distiller import Distiller
from .errors import ConfigError, PluginError, PresetError, UnknownStrategyError, UnsupportedModelError
from .plugins import PluginInfo, build_plugin_manager, warn
from .presets import Preset
from .strategy import Strategy


class Registry:
    def __init__(self) -> None:
        self.pm, self.plugins = build_plugin_manager()
        self.strategies: dict[str, type[Strategy]] = {}
        self.adapters: list[type[ModelAdapter]] = []
        self.presets: dict[str, Preset] = {}
        self.distillers: dict[str, type[Distiller]] = {}
        self._strategy_owner: dict[str, str] = {}
        self._preset_owner: dict[str, str] = {}
        self._distiller_owner: dict[str, str] = {}
        self._collect()

    # ---- calling hooks plugin by plugin ---------------------------------------------------------------------------

    def _who(self, plugin_name: str) -> str:
        info = self.plugins.get(plugin_name)
        return info.describe() if info is not None else f"plugin {plugin_name!r}"

    def call_each(self, hook_name: str, kwargs: Callable[[str], dict[str, Any]], commit: Callable[[str], None] = None
                  ) -> None:
        """Call ``hook_name`` once per plugin that implements it (registration order), with ``kwargs(plugin)``.

        A call that raises is reported as a PluginWarning and skipped; ``commit(plugin)`` runs after each call that
        succeeded (so what a failing call registered part-way is dropped)."""
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            name = impl.plugin_name
            others = [p for n, p in self.pm.list_name_plugin() if n != name and p is not None]
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(**kwargs(name))
            except Exception as exc:
                warn(f"{self._who(name)}: its {hook_name} hook raised {type(exc).__name__}: {exc}; skipped (other "
                     "plugins are unaffected)")
                continue
            if commit is not None:
                commit(name)

    def _collect(self) -> None:
        def strategy_problem(plugin: str, cls: Any) -> str | None:
            missing = [a for a in ("name", "family", "Config") if not hasattr(cls, a)]
            if missing:
                return f"{self._who(plugin)}: strategy {cls!r} lacks {missing[0]!r}; skipped"
            try:
                cls.Config.fields_info()  # validates the schema
            except Exception as exc:
                return f"{self._who(plugin)}: strategy {cls.name!r} has an invalid Config ({exc}); skipped"
            return None

        def preset_problem(plugin: str, preset: Any) -> str | None:
            return None if isinstance(preset, Preset) else f"{self._who(plugin)}: {preset!r} is not a Preset; skipped"

        self._collect_named("register_strategies", "strategy", strategy_problem, self.strategies,
                            self._strategy_owner, "strategies", "strategy names must be unique")

        staged: dict[str, list[Any]] = {}

        def adapter_register(plugin: str) -> dict[str, Any]:
            staged[plugin] = []

            def register(cls: type[ModelAdapter]) -> None:
                if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
                    warn(f"{self._who(plugin)}: {cls!r} is not a ModelAdapter subclass; skipped")
                    return
                staged[plugin].append(cls)

            return {"register": register}

        def adapter_commit(plugin: str) -> None:
            for cls in staged.pop(plugin):
                self.adapters.append(cls)
                if plugin in self.plugins:
                    self.plugins[plugin].adapters.append(cls.name)

        self.call_each("register_model_adapters", adapter_register, adapter_commit)
        self._collect_named("register_presets", "preset", preset_problem, self.presets, self._preset_owner,
                            "presets", "the first one is kept")

        def distiller_problem(plugin: str, cls: Any) -> str | None:
            if not (isinstance(cls, type) and issubclass(cls, Distiller)) or not getattr(cls, "name", ""):
                return f"{self._who(plugin)}: {cls!r} is not a named Distiller subclass; skipped"
            try:
                cls.Config.fields_info()
            except Exception as exc:
                return f"{self._who(plugin)}: distiller {cls.name!r} has an invalid Config ({exc}); skipped"
            return None

        self._collect_named("register_distillers", "distiller", distiller_problem, self.distillers,
                            self._distiller_owner, "distillers", "distiller names must be unique")

    def _collect_named(self, hook: str, what: str, problem: Callable[[str, Any], str | None], store: dict[str, Any],
                       owners: dict[str, str], info_list: str, on_clash: str) -> None:
        """Collect items with a unique ``name`` through ``hook``, plugin by plugin: an invalid item (``problem``
        says why) or a name another plugin (or the same one) registered first is skipped with a PluginWarning; a
        plugin's items are kept only when its whole hook call succeeded."""
        staged: dict[str, list[Any]] = {}

        def begin(plugin: str) -> dict[str, Any]:
            staged[plugin] = []

            def register(item: Any) -> None:
                why = problem(plugin, item)
                if why is not None:
                    warn(why)
                    return
                owner = owners.get(item.name) or (plugin if any(i.name == item.name for i in staged[plugin]) else None)
                if owner is not None:
                    warn(f"{what} {item.name!r} of {self._who(plugin)} skipped: the name is already registered by "
                         f"{self._who(owner)}; {on_clash}")
                    return
                staged[plugin].append(item)

            return {"register": register}

        def commit(plugin: str) -> None:
            for item in staged.pop(plugin):
                store[item.name] = item
                owners[item.name] = plugin
                if plugin in self.plugins:
                    getattr(self.plugins[plugin], info_list).append(item.name)

        self.call_each(hook, begin, commit)

    def register_commands(self, cli: Any) -> None:
        """Let every plugin add its commands to the root click group ``cli`` (a failing plugin is skipped)."""
        self.call_each("register_commands", lambda plugin: {"cli": cli})

    # ---- plugins at run time --------------------------------------------------------------------------------------

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
        self.distillers.clear()
        self._strategy_owner.clear()
        self._preset_owner.clear()
        self._distiller_owner.clear()
        for info in self.plugins.values():
            info.strategies.clear()
            info.adapters.clear()
            info.presets.clear()
            info.distillers.clear()
        self._collect()

    # ---- lookups --------------------------------------------------------------------------------------------------

    def strategy(self, name: str) -> type[Strategy]:
        try:
            return self.strategies[name]
        except KeyError:
            available = ", ".join(sorted(self.strategies)) or "(none loaded)"
            raise UnknownStrategyError(f"unknown strategy {name!r}; available: {available}") from None

    def distiller(self, name: str) -> type[Distiller]:
        """The distillation method ``name``; ConfigError naming the available ones."""
        try:
            return self.distillers[name]
        except KeyError:
            available = ", ".join(sorted(self.distillers)) or "(none loaded)"
            raise ConfigError(f"unknown distillation method {name!r}; available: {available}") from None

    def resolve_preset_reference(self, reference: str) -> Preset | None:
        """The preset a plugin resolves ``reference`` to (e.g. ``hub:ORG/REPO/NAME``), or None."""
        return self.pm.hook.resolve_preset(reference=reference)

    def identify_model(self, path: str) -> str | None:
        """The name a plugin gives the model in local folder ``path`` (e.g. a zoo model's), or None."""
        return self.pm.hook.identify_model(path=path)

    def adapter_classes(self, among: type[ModelAdapter] = ModelAdapter) -> list[type[ModelAdapter]]:
        """The registered adapters that are subclasses of ``among`` (e.g. a surface's own adapter base class), in
        registration order."""
        return [cls for cls in self.adapters if isinstance(cls, type) and issubclass(cls, among)]

    def adapter_class(self, model: Any, among: type[ModelAdapter] = ModelAdapter) -> type[ModelAdapter] | None:
        """The adapter class for ``model`` among :meth:`adapter_classes`: the last registered that matches (so a
        third-party adapter can refine a built-in one), or None."""
        return next((cls for cls in reversed(self.adapter_classes(among)) if cls.matches(model)), None)

    def find_adapter(self, model: Any, among: type[ModelAdapter] = ModelAdapter) -> ModelAdapter | None:
        """An adapter on ``model`` (:meth:`adapter_class`), or None when none matches."""
        cls = self.adapter_class(model, among)
        return cls(model) if cls is not None else None

    def supported_architectures(self, strategy: type[Strategy], among: type[ModelAdapter] = ModelAdapter) -> list[str]:
        """The architectures whose adapters (among ``among``) answer everything ``strategy`` needs, sorted."""
        return sorted({arch for cls in self.adapter_classes(among) if strategy.accepts(cls.capabilities)
                       for arch in cls.architectures})

    def supports(self, adapter: ModelAdapter | None, strategy: type[Strategy]) -> bool:
        """Whether ``adapter`` (from :meth:`find_adapter`) answers everything ``strategy`` needs."""
        return adapter is not None and strategy.accepts(adapter.capabilities)

    def adapter_for(self, model: Any, strategy: type[Strategy]) -> ModelAdapter:
        """The adapter ``strategy`` runs with on ``model``; UnsupportedModelError naming the supported architectures."""
        adapter = self.find_adapter(model)
        if not self.supports(adapter, strategy):
            supported = self.supported_architectures(strategy)
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


def check_config(preset: Preset) -> Any:
    """The strategy's validated Config for ``preset``; a bad option raises :class:`PresetError` naming it.

    (Here rather than in ``presets``: it needs the registry, and the registry needs presets.)"""
    label = repr(preset.name)
    try:
        cls = get_registry().strategy(preset.strategy)
    except UnknownStrategyError as exc:
        raise PresetError(label, "strategy", str(exc)) from None
    try:
        return cls.Config.from_kwargs(preset.strategy, **preset.config)
    except ConfigError as exc:
        option = next((k for k in preset.config if f"'{k}'" in str(exc)), None)
        raise PresetError(label, f"config.{option}" if option else "config", str(exc)) from None
