"""Files dynaccel reads and writes: bounded reads of untrusted files, and result files written safely.

- :func:`read_bounded` reads at most ``limit + 1`` bytes, so a preset or calibration path that is (or links to) a
  device such as ``/dev/zero``, or a huge file, fails at once with a message naming the file and the limit.
- :func:`atomic_write` writes to a temporary file beside the target, then renames it over the target. It never
  creates folders: a target whose folder is missing is refused (a typo must not create ``/nonexistent/...``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import ConfigError


class FileReadError(ConfigError):
    """A file that cannot be read as dynaccel data: missing, a folder, unreadable, or larger than its limit.

    ``path`` is the file and ``reason`` says what was wrong (without the path), so callers can say which option or
    preset field named the file.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{str(path)!r}: {reason}")


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The bytes of ``path``, reading at most ``limit + 1`` of them; more than ``limit`` raises FileReadError.

    Example::

        data = read_bounded("preset.json", 1 << 20)   # FileReadError: 'preset.json': larger than 1048576 bytes...
    """
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise FileReadError(path, "is a folder; accepted: a file") from None
    except FileNotFoundError:
        raise FileReadError(path, "does not exist") from None
    except OSError as exc:
        raise FileReadError(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise FileReadError(path, f"larger than {limit} bytes; accepted: a file of at most {limit} bytes")
    return data


def check_writable_target(path: str | Path) -> Path:
    """``path`` as a Path when a file can be written there: its folder exists (it is never created) and the path
    is not itself a folder. Raises ConfigError saying which."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a folder; accepted: a file path in an existing folder")
    if not path.parent.is_dir():
        raise ConfigError(f"{str(path)!r}: folder {str(path.parent)!r} does not exist; accepted: a file path in an "
                          "existing folder (dynaccel creates no folders for the files it writes)")
    return path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; on any error no file (and no temporary) is left.

    The folder of ``path`` must exist (see :func:`check_writable_target`)."""
    path = check_writable_target(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
