"""Presets: tuned configs keyed by (model or architecture, strategy), with provenance.

Built-in presets ship as JSON (``core/presets/*.json``) and are registered by the built-in plugins; others come
from third-party plugins through ``register_presets`` or from a JSON file path given to ``enable_accel``.

Preset JSON (schema version 1)::

    {"schema_version": 1, "name": "...", "strategy": "teacache", "config": {"threshold": 0.08},
     "architecture": "WanTransformer3DModel", "model_id": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
     "description": "...", "provenance": {"source": "...", "speedup": 2.0, "measured_on": "..."}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

SCHEMA_VERSION = 1
BUILTIN_DIR = Path(__file__).parent / "presets"


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
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "Preset":
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(f"preset {source}: schema_version {version!r} is not supported; accepted: {SCHEMA_VERSION}")
        missing = [k for k in ("name", "strategy", "config") if k not in data]
        if missing:
            raise ConfigError(f"preset {source}: missing key(s) {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"preset {source}: unknown key(s) {', '.join(extra)}; accepted: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "Preset":
        """Read a preset file; relative ``*_path`` options (calibration files beside it) become absolute."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"preset file {str(path)!r} is not valid JSON: {exc}") from exc
        preset = cls.from_dict(data, source=repr(str(path)))
        config = dict(preset.config)
        for key, value in config.items():
            if key.endswith("_path") and isinstance(value, str) and value and not Path(value).is_absolute():
                config[key] = str((path.parent / value).resolve())
        return replace(preset, config=config)


def load_builtin_presets(prefix: str) -> list[Preset]:
    """Presets shipped in the package whose file name starts with ``prefix`` (one plugin's share)."""
    return [Preset.load(p) for p in sorted(BUILTIN_DIR.glob(f"{prefix}*.json"))]
