"""Strategy configs: frozen dataclasses whose field metadata is the single source of truth.

Each field is declared once with :func:`option` (default, doc, range, choices). From that metadata come
validation and its error messages, CLI listings, ComfyUI node inputs, Gradio controls and preset JSON.

Example::

    from dataclasses import dataclass
    from dynaccel.core.config import StrategyConfig, option

    @dataclass(frozen=True)
    class MyConfig(StrategyConfig):
        threshold: float = option(0.1, doc="skip while the change stays below this", min=0.0, max=1.0, knob=True)
        keep_ratio: float = option(0.5, doc="share kept", min=0.0, min_exclusive=True, max=1.0, step=0.05)

    MyConfig.from_kwargs("mine", threshold=0.2)   # validated
    MyConfig.from_kwargs("mine", threshold=2.0)   # ConfigError: ... accepted: float with 0.0 <= threshold <= 1.0
    MyConfig.from_kwargs("mine", keep_ratio=0.0)  # ConfigError: ... accepted: float with 0.0 < keep_ratio <= 1.0
    MyConfig.coerce("mine", {"threshold": "0.2"})  # what a surface received (CLI text, a widget, preset JSON)

Exclusive bounds: ``min_exclusive=True`` / ``max_exclusive=True`` make ``min`` / ``max`` themselves refused; a
surface offers the nearest value inside instead (:meth:`FieldSpec.offered_range`, one control step inside).

The quality knob: the one option that trades speed for quality (what ``dynaccel calibrate`` searches, what the
demo sweeps) is declared with ``option(..., knob=True)`` or by the class variable ``quality_knob = "name"``;
surfaces ask :meth:`StrategyConfig.quality_knob_field`.

Conversion: every value a surface receives goes through :meth:`StrategyConfig.parse_options` (one field at a time:
:meth:`FieldSpec.parse`): CLI text (``"0.1"``, ``"true"``), whole floats from sliders for int fields, ints for
float fields, blank text boxes meaning the default. The Python API and preset JSON use the same function in its
strict form (:meth:`StrategyConfig.from_kwargs`: values must already have the field's type).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .errors import ConfigError

_TYPES = {"float": float, "int": int, "bool": bool, "str": str}
#: the control step of a float field that declares none and has no finite range (ComfyUI's widgets need one)
DEFAULT_FLOAT_STEP = 0.001


def option(
    default: Any,
    *,
    doc: str,
    min: float | None = None,  # noqa: A002 - mirrors the schema key
    max: float | None = None,  # noqa: A002
    step: float | None = None,
    choices: tuple[Any, ...] | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    knob: bool = False,
) -> Any:
    """Declare a config field with its documentation and accepted range (used by every surface).

    ``min_exclusive`` / ``max_exclusive``: the bound itself is refused (``0 < keep_ratio``). ``knob``: this field
    is the strategy's speed/quality knob (searched by calibrate, swept by the demo)."""
    if min_exclusive and min is None or max_exclusive and max is None:
        raise TypeError("min_exclusive / max_exclusive need the bound they make exclusive (min= / max=)")
    meta = {"doc": doc, "min": min, "max": max, "step": step, "choices": tuple(choices) if choices else None,
            "min_exclusive": bool(min_exclusive), "max_exclusive": bool(max_exclusive), "knob": bool(knob)}
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
    min_exclusive: bool = False
    max_exclusive: bool = False
    knob: bool = False

    def accepted(self) -> str:
        """Human-readable description of the accepted values."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "<" if self.min_exclusive else "<="
        hi = "<" if self.max_exclusive else "<="
        if self.min is not None and self.max is not None:
            return f"{self.type} with {self.min} {lo} {self.name} {hi} {self.max}"
        if self.min is not None:
            return f"{self.type} {'>' if self.min_exclusive else '>='} {self.min}"
        if self.max is not None:
            return f"{self.type} {hi} {self.max}"
        return f"a value of type {self.type}"

    def control_step(self) -> float | int:
        """The step of a numeric control: the declared one, else 1 for ints, else :data:`DEFAULT_FLOAT_STEP`."""
        if self.step is not None:
            return self.step
        return 1 if self.type == "int" else DEFAULT_FLOAT_STEP

    def offered_range(self, step: float | None = None) -> tuple[float | None, float | None]:
        """The smallest and largest values a control with ``step`` (default :meth:`control_step`) may offer: the
        declared bounds, or one step inside an exclusive one."""
        step = self.control_step() if step is None else step
        lo, hi = self.min, self.max
        if lo is not None and self.min_exclusive:
            lo = _tidy(lo + step)
        if hi is not None and self.max_exclusive:
            hi = _tidy(hi - step)
        return lo, hi

    def parse(self, raw: Any, *, strict: bool = False) -> Any:
        """``raw`` as this field's value, validated; ConfigError naming the field, the value and what is accepted.

        Lenient (surfaces): text is read as the field's type (``"0.1"``, ``"3"``, ``"true"``), a whole float is
        an int for an int field, None or blank text means the default. ``strict`` (Python API, preset JSON):
        ``raw`` must already have the field's type (an int is still accepted for a float)."""
        if not strict:
            raw = self._loosen(raw)
        return _check(self, raw)

    def _loosen(self, raw: Any) -> Any:
        if raw is None or (isinstance(raw, str) and not raw.strip() and self.type != "str"):
            return self.default
        if self.type == "str":
            return self.default if raw == "" else raw
        if isinstance(raw, str):
            text = raw.strip()
            if self.type == "bool":
                low = text.lower()
                return {"true": True, "false": False}.get(low, raw)
            try:
                raw = int(text) if self.type == "int" and text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                return raw  # _check names it (type str)
        if self.type == "int" and isinstance(raw, float) and raw.is_integer():
            return int(raw)
        return raw

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"choices": list(self.choices) if self.choices else None}


def _tidy(x: float) -> float:
    return x if isinstance(x, int) else float(round(x, 12))  # 0.1 + 0.05, not 0.15000000000000002


@dataclass(frozen=True)
class StrategyConfig:
    """Base class of every strategy config. Subclasses are frozen dataclasses built from :func:`option`."""

    #: the name of the speed/quality knob, for configs that cannot mark the field itself (``option(knob=True)``)
    quality_knob: ClassVar[str | None] = None

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
            specs.append(FieldSpec(f.name, type_name, f.default, m["doc"], m["min"], m["max"], m["step"], m["choices"],
                                   m.get("min_exclusive", False), m.get("max_exclusive", False), m.get("knob", False)))
        knobs = [s.name for s in specs if s.knob]
        if len(knobs) > 1 or (knobs and cls.quality_knob not in (None, knobs[0])):
            raise TypeError(f"config {cls.__name__} declares more than one quality knob: {knobs + [cls.quality_knob]}")
        if cls.quality_knob is not None and cls.quality_knob not in {s.name for s in specs}:
            raise TypeError(f"config {cls.__name__}: quality_knob {cls.quality_knob!r} is not one of its fields")
        # the knob's spec says so, however it was declared (``knob=True`` or ``quality_knob``); none is assumed
        knob = knobs[0] if knobs else cls.quality_knob
        return [dataclasses.replace(s, knob=True) if s.name == knob else s for s in specs]

    @classmethod
    def field_spec(cls, name: str) -> FieldSpec:
        """The spec of field ``name`` (ConfigError naming the accepted options if there is none)."""
        specs = {s.name: s for s in cls.fields_info()}
        if name not in specs:
            raise ConfigError(f"unknown option {name!r} for {cls.__name__}; accepted options: {', '.join(sorted(specs))}")
        return specs[name]

    @classmethod
    def quality_knob_field(cls) -> FieldSpec | None:
        """The speed/quality knob: the field declared ``knob=True`` or named by ``quality_knob``; None when the config
        declares neither (nothing is assumed from a field's name)."""
        return next((s for s in cls.fields_info() if s.knob), None)

    @classmethod
    def parse_options(cls, strategy: str, raw: Mapping[str, Any], *, strict: bool = False) -> dict[str, Any]:
        """THE conversion of option values received by a surface (CLI ``key=value`` text, ComfyUI inputs, Gradio
        controls, preset JSON) to typed, validated values: only the given options, each through
        :meth:`FieldSpec.parse`. Unknown names raise ConfigError listing the accepted ones."""
        specs = {s.name: s for s in cls.fields_info()}
        unknown = sorted(set(raw) - set(specs))
        if unknown:
            who = f"strategy '{strategy}'" if strategy else cls.__name__
            raise ConfigError(
                f"unknown option {unknown[0]!r} for {who}; accepted options: {', '.join(sorted(specs))}"
            )
        return {k: specs[k].parse(v, strict=strict) for k, v in raw.items()}

    @classmethod
    def coerce(cls, strategy: str, raw: Mapping[str, Any]) -> "StrategyConfig":
        """A validated config from the values a surface received (:meth:`parse_options`, lenient), defaults for
        the rest, cross-field checks included."""
        return cls(**cls.parse_options(strategy, raw))

    @classmethod
    def from_kwargs(cls, strategy: str = "", **kwargs: Any) -> "StrategyConfig":
        """Build a validated config; unknown names, wrong types and out-of-range values raise ConfigError."""
        return cls(**cls.parse_options(strategy, kwargs, strict=True))

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
    if spec.min is not None and (value <= spec.min if spec.min_exclusive else value < spec.min):
        raise fail("at the exclusive minimum" if value == spec.min else "below the minimum")
    if spec.max is not None and (value >= spec.max if spec.max_exclusive else value > spec.max):
        raise fail("at the exclusive maximum" if value == spec.max else "above the maximum")
    return value
