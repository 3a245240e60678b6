"""Errors raised by dynaccel. Each message names what was wrong, the value given and what is accepted."""

from __future__ import annotations


class DynaccelError(Exception):
    """Base class for every error dynaccel raises on purpose."""


class UnknownStrategyError(DynaccelError, KeyError):
    """A strategy name that no loaded plugin registers."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(DynaccelError, ValueError):
    """A config option that is unknown, of the wrong type or out of range."""


class UnsupportedModelError(DynaccelError, TypeError):
    """A strategy that needs a model adapter was applied to an architecture none supports."""


class UnsupportedTargetError(DynaccelError, TypeError):
    """enable_accel was given something that is neither a pipeline nor a torch module."""


class StackingError(DynaccelError, RuntimeError):
    """Two strategies that cannot run together on one model."""


class PluginError(DynaccelError, RuntimeError):
    """A plugin failed to load or registered something invalid."""


class KernelBackendError(DynaccelError, RuntimeError):
    """An explicitly requested kernel backend cannot run here."""


class PresetError(ConfigError):
    """A preset that cannot be used: bad JSON, a field of the wrong type or range, or one meant for another model.

    ``preset`` names the preset (or its file) and ``field`` the offending field (``config.threshold``...).
    """

    def __init__(self, preset: str, field: str | None, message: str):
        self.preset, self.field = preset, field
        where = f"preset {preset}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


class PluginWarning(UserWarning):
    """A plugin, or one thing it registers, was skipped (failed to import, hook raised, name already taken);
    everything else keeps working."""
