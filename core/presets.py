"""Presets: tuned configs keyed by (model or architecture, strategy), with provenance.

Built-in presets ship as JSON (``core/presets/*.json``) and are registered by the built-in plugins; others come
from third-party plugins through ``register_presets``, from a JSON file path given to ``enable_accel``, or from a
Hugging Face Hub repo (``preset="hub:ORG/REPO/NAME"``, see ``dynaccel.hf_integration.hub``).

Preset JSON (schema version 1)::

    {"schema_version": 1, "name": "...", "strategy": "teacache", "config": {"threshold": 0.08},
     "architecture": "WanTransformer3DModel", "model_id": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
     "description": "...", "provenance": {"source": "...", "speedup": 2.0, "measured_on": "..."}}

A preset is data only: it is parsed as JSON (never unpickled, never executed) and checked field by field. Unknown
fields, wrong types, non-finite or huge numbers, deep nesting, over-long strings, a wrong schema version, and
(through :func:`dynaccel.core.registry.check_config`) options the strategy does not accept raise :class:`PresetError` naming the preset
and the field.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import PresetError
from .files import FileReadError, read_bounded

SCHEMA_VERSION = 1
BUILTIN_DIR = Path(__file__).parent / "presets"

#: limits a preset file must stay within (hostile or corrupt files fail fast with a clear message)
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 8  # nesting of objects/arrays inside ``provenance``
MAX_STRING = 4096  # characters of one string
MAX_ITEMS = 1000  # entries of one object or array
MAX_INT_DIGITS = 18
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# field -> (accepted Python types, required, what is accepted in words)
_FIELDS: dict[str, tuple[tuple[type, ...], bool, str]] = {
    "schema_version": ((int,), True, f"the integer {SCHEMA_VERSION}"),
    "name": ((str,), True, "a name of letters, digits, '.', '_' and '-' (at most 128)"),
    "strategy": ((str,), True, "a strategy name (string)"),
    "config": ((dict,), True, "an object of strategy options"),
    "architecture": ((str, type(None)), False, "a model class name (string) or null"),
    "model_id": ((str, type(None)), False, "a model id (string) or null"),
    "description": ((str,), False, "a string"),
    "provenance": ((dict,), False, "an object"),
}
_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
              float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Preset:
    name: str
    strategy: str
    config: dict[str, Any]
    architecture: str | None = None
    model_id: str | None = None
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "Preset":
        """Build a preset from parsed JSON, checking every field (see the module docstring)."""
        if not isinstance(data, dict):
            raise PresetError(source, None, f"got {_kind(data)}; accepted: a JSON object with the fields "
                              + ", ".join(_FIELDS))
        name = data.get("name")
        label = source if not isinstance(name, str) else (
            repr(name[:80]) if source == "<dict>" else f"{name[:80]!r} ({source})")
        unknown = sorted(set(data) - set(_FIELDS), key=str)
        if unknown:
            raise PresetError(label, str(unknown[0])[:80], f"unknown field; accepted fields: {', '.join(_FIELDS)}")
        missing = [k for k, (_, required, _) in _FIELDS.items() if required and k not in data]
        if missing:
            raise PresetError(label, missing[0], "missing; required fields: "
                              + ", ".join(k for k, v in _FIELDS.items() if v[1]))
        for key, (types, _, accepted) in _FIELDS.items():
            if key not in data:
                continue
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise PresetError(label, key, f"got {_kind(value)}; accepted: {accepted}")
        if data["schema_version"] != SCHEMA_VERSION:
            raise PresetError(label, "schema_version", f"got {data['schema_version']!r}; accepted: {SCHEMA_VERSION} "
                              "(this dynaccel reads schema version 1 only)")
        if not NAME_PATTERN.fullmatch(data["name"]):
            raise PresetError(source, "name", f"got {data['name'][:80]!r}; accepted: {_FIELDS['name'][2]}")
        for key in ("strategy", "architecture", "model_id", "description"):
            if isinstance(data.get(key), str):
                _check_value(data[key], key, label, 0)
        config = data["config"]
        if len(config) > 100:
            raise PresetError(label, "config", f"{len(config)} options; accepted: at most 100")
        for key, value in config.items():
            if not isinstance(value, (str, int, float, bool)) or value is None:
                raise PresetError(label, f"config.{key}", f"got {_kind(value)}; accepted: a number, string or "
                                  "boolean (one option of the strategy)")
            _check_value(value, f"config.{key}", label, 0)
        _check_value(data.get("provenance", {}), "provenance", label, 0)
        return cls(**data)

    @classmethod
    def loads(cls, text: str | bytes, source: str = "<string>") -> "Preset":
        """Parse preset JSON text (data only: NaN, Infinity and over-long numbers are refused)."""
        if len(text) > MAX_FILE_BYTES:
            raise PresetError(source, None, f"{len(text)} bytes; accepted: at most {MAX_FILE_BYTES}")
        return cls.from_dict(parse_json(text, source), source=source)

    @classmethod
    def load(cls, path: str | Path) -> "Preset":
        """Read a preset file; relative ``*_path`` options (calibration files beside it) become absolute."""
        path = Path(path)
        source = repr(str(path))
        try:
            text = read_bounded(path, MAX_FILE_BYTES)
        except FileReadError as exc:
            raise PresetError(source, None, exc.reason) from None
        preset = cls.loads(text, source=source)
        config = dict(preset.config)
        for key, value in config.items():
            if key.endswith("_path") and isinstance(value, str) and value and not Path(value).is_absolute():
                config[key] = str((path.parent / value).resolve())
        return replace(preset, config=config)


def parse_json(text: str | bytes, source: str) -> Any:
    """``json.loads`` for untrusted preset files: finite numbers of bounded size, bounded nesting."""

    def bad_constant(name: str) -> Any:
        raise PresetError(source, None, f"not valid preset JSON: {name} is not a number JSON allows")

    def parse_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise PresetError(source, None, f"not valid preset JSON: number {text[:40]} overflows a float")
        return value

    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise PresetError(source, None, f"not valid preset JSON: integer of {len(text)} digits; accepted: at "
                              f"most {MAX_INT_DIGITS}")
        return int(text)

    try:
        return json.loads(text, parse_constant=bad_constant, parse_float=parse_float, parse_int=parse_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PresetError(source, None, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise PresetError(source, None, "not valid preset JSON: nested too deeply") from None


def _check_value(value: Any, where: str, label: str, depth: int) -> None:
    """Bounded, plain JSON data: nesting, sizes and string lengths within the limits."""
    if depth > MAX_DEPTH:
        raise PresetError(label, where, f"nested {depth} levels deep; accepted: at most {MAX_DEPTH}")
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise PresetError(label, where, f"string of {len(value)} characters; accepted: at most {MAX_STRING}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PresetError(label, where, f"got {value!r}; accepted: a finite number")
    elif isinstance(value, (bool, int, type(None))):
        if isinstance(value, int) and abs(value) >= 10**MAX_INT_DIGITS:
            raise PresetError(label, where, f"integer of {len(str(value))} digits; accepted: at most {MAX_INT_DIGITS}")
    elif isinstance(value, (dict, list)):
        if len(value) > MAX_ITEMS:
            raise PresetError(label, where, f"{len(value)} entries; accepted: at most {MAX_ITEMS}")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if not isinstance(key, (str, int)):
                raise PresetError(label, where, f"key of type {type(key).__name__}; accepted: strings")
            _check_value(item, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]", label, depth + 1)
    else:
        raise PresetError(label, where, f"got {type(value).__name__}; accepted: JSON data")


def load_builtin_presets(prefix: str) -> list[Preset]:
    """Presets shipped in the package whose file name starts with ``prefix`` (one plugin's share)."""
    return [Preset.load(p) for p in sorted(BUILTIN_DIR.glob(f"{prefix}*.json"))]
