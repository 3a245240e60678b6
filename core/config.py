"""Strategy configs: frozen dataclasses whose field metadata is the single source of truth.

Each field is declared once with :func:`option` (default, doc, range, choices). From that metadata come
validation and its error messages, CLI listings, ComfyUI node inputs, Gradio controls and preset JSON.

Example::

    from dataclasses import dataclass
    from dynaccel.core.config import StrategyConfig, option

    @dataclass(frozen=True)
    class MyConfig(StrategyConfig):
        threshold: float = option(0.1, doc="skip while the change stays below this", min=0.0, max=1.0)

    MyConfig.from_kwargs("mine", threshold=0.2)   # validated
    MyConfig.from_kwargs("mine", threshold=2.0)   # ConfigError: ... accepted: 0.0 <= threshold <= 1.0
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_TYPES = {"float": float, "int": int, "bool": bool, "str": str}


def option(
    default: Any,
    *,
    doc: str,
    min: float | None = None,  # noqa: A002 - mirrors the schema key
    max: float | None = None,  # noqa: A002
    step: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """Declare a config field with its documentation and accepted range (used by every surface)."""
    meta = {"doc": doc, "min": min, "max": max, "step": step, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldSpec:
    """What one config field accepts; built from the dataclass field and its :func:`option` metadata."""

    name: str
    type: str
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def accepted(self) -> str:
        """Human-readable description of the accepted values."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.min is not None and self.max is not None:
            return f"{self.type} with {self.min} <= {self.name} <= {self.max}"
        if self.min is not None:
            return f"{self.type} >= {self.min}"
        if self.max is not None:
            return f"{self.type} <= {self.max}"
        return f"a value of type {self.type}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"choices": list(self.choices) if self.choices else None}


@dataclass(frozen=True)
class StrategyConfig:
    """Base class of every strategy config. Subclasses are frozen dataclasses built from :func:`option`."""

    @classmethod
    def fields_info(cls) -> list[FieldSpec]:
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            type_name = next((k for k, v in _TYPES.items() if v is tp), None)
            if type_name is None:
                raise TypeError(f"config field {cls.__name__}.{f.name} has unsupported type {tp!r}; use {list(_TYPES)}")
            if "doc" not in f.metadata:
                raise TypeError(f"config field {cls.__name__}.{f.name} must be declared with option(..., doc=...)")
            m = f.metadata
            specs.append(FieldSpec(f.name, type_name, f.default, m["doc"], m["min"], m["max"], m["step"], m["choices"]))
        return specs

    @classmethod
    def from_kwargs(cls, strategy: str = "", **kwargs: Any) -> "StrategyConfig":
        """Build a validated config; unknown names, wrong types and out-of-range values raise ConfigError."""
        specs = {s.name: s for s in cls.fields_info()}
        unknown = sorted(set(kwargs) - set(specs))
        if unknown:
            who = f"strategy '{strategy}'" if strategy else cls.__name__
            raise ConfigError(
                f"unknown option {unknown[0]!r} for {who}; accepted options: {', '.join(sorted(specs))}"
            )
        return cls(**kwargs)

    def __post_init__(self) -> None:
        for spec in self.fields_info():
            value = getattr(self, spec.name)
            object.__setattr__(self, spec.name, _check(spec, value))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses override and raise ConfigError."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "StrategyConfig":
        return dataclasses.replace(self, **changes)


def _check(spec: FieldSpec, value: Any) -> Any:
    def fail(why: str) -> ConfigError:
        return ConfigError(f"option {spec.name!r}: got {value!r} ({why}); accepted: {spec.accepted()}")

    tp = _TYPES[spec.type]
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"type {type(value).__name__}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"type {type(value).__name__}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"type {type(value).__name__}")
        value = float(value)
        if value != value:
            raise fail("NaN")
    elif tp is str:
        if not isinstance(value, str):
            raise fail(f"type {type(value).__name__}")
    if spec.choices and value not in spec.choices:
        raise fail("not a valid choice")
    if spec.min is not None and value < spec.min:
        raise fail("below the minimum")
    if spec.max is not None and value > spec.max:
        raise fail("above the maximum")
    return value
