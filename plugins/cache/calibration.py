"""Calibration files of the calibrated cache strategies (MagCache ratios, SmoothCache error profiles).

JSON with a ``format`` tag; written to a temporary file and renamed, so an interrupted write never leaves a
half-written calibration behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError
from ...core.files import FileReadError, atomic_write, read_bounded
from ...core.presets import MAX_FILE_BYTES  # calibration files travel with presets: the same limit


def load(path: str | Path, fmt: str, option_name: str) -> dict[str, Any]:
    """The ``data`` object of calibration file ``path``; ConfigError naming ``option_name`` when it is not one."""
    path = Path(path)
    try:
        doc = json.loads(read_bounded(path, MAX_FILE_BYTES))
    except FileReadError as exc:
        raise ConfigError(f"option {option_name!r}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"option {option_name!r}: {str(path)!r} is not a JSON calibration file ({exc}); accepted: "
                          f"JSON with format {fmt!r}, as dynaccel writes it") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt or not isinstance(doc.get("data"), dict) or not doc["data"]:
        raise ConfigError(
            f"option {option_name!r}: {str(path)!r} is not a calibration file of this strategy; accepted: JSON with "
            f"format {fmt!r} and a non-empty 'data' object"
        )
    return doc["data"]


def check_path(value: str, fmt: str, option_name: str) -> None:
    """Refuse a calibration path before anything is installed: an existing one must be a calibration file of this
    format (read now, bounded), a new one must lie in an existing folder (it is written after the calibration run;
    no folder is created). ``""`` (no file) is fine. Raises ConfigError naming ``option_name`` and the value."""
    if not value:
        return
    path = Path(value)
    if path.exists():
        load(path, fmt, option_name)
    elif not path.parent.is_dir():
        raise ConfigError(
            f"option {option_name!r}: got {value!r}, whose folder {str(path.parent)!r} does not exist; accepted: an "
            f"existing calibration file (JSON, format {fmt!r}), or a new file in an existing folder (written after "
            "the calibration run)"
        )


def save(path: str | Path, fmt: str, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({"format": fmt, "data": data}, indent=1)))


def resample(values: list[float], n: int) -> list[float]:
    """``n`` values from a profile of ``len(values)`` steps (linear over the step fraction)."""
    m = len(values)
    if m == n or m == 0:
        return list(values)
    if m == 1 or n == 1:
        return [values[0]] * n
    out = []
    for i in range(n):
        pos = i * (m - 1) / (n - 1)
        lo = int(pos)
        hi = min(lo + 1, m - 1)
        w = pos - lo
        out.append(values[lo] * (1 - w) + values[hi] * w)
    return out


class CalibratedPolicy:
    """Mixin for policies calibrated from one full generation (run through a CachePolicy subclass).

    The first generation with no calibration runs in full and records one value (a number or a list) per step
    and CFG branch; when it completes, the profile is kept (and saved to the path in config option
    ``calibration_option`` when that is set); an interrupted calibration run is discarded. A path that exists is
    read instead, and no calibration run is needed.
    """

    calibration_format: str
    calibration_option: str

    def init_calibration(self, config: Any) -> None:
        self.calibration: dict[str, list[Any]] | None = None
        self.calibrating = False
        self._record: dict[str, dict[int, Any]] = {}
        path = getattr(config, self.calibration_option)
        if path and Path(path).exists():
            self.calibration = load(path, self.calibration_format, self.calibration_option)

    def run_started(self, run: Any) -> None:
        self.calibrating = self.calibration is None
        self._record = {}

    def record(self, branch: str, step: int, value: Any) -> None:
        self._record.setdefault(branch, {})[step] = value

    def profile(self, branch: str) -> list[Any]:
        cal = self.calibration
        return cal.get(branch) or cal.get("default") or next(iter(cal.values()))

    def run_finished(self, run: Any) -> None:
        if not self.calibrating or not self._record:
            return
        cal = {}
        for branch, by_step in self._record.items():
            n = max(run.num_steps or 0, max(by_step) + 1)
            if len(by_step) < n:  # an interrupted calibration run: calibrate again on the next generation
                self._record = {}
                return
            cal[branch] = [by_step[i] for i in range(n)]
        self.calibration = cal
        self.calibrating = False
        path = getattr(self.config, self.calibration_option)
        if path:
            save(path, self.calibration_format, cal)

    def extra_stats(self) -> dict[str, Any]:
        return {"calibrating": self.calibrating, "calibrated": self.calibration is not None}
