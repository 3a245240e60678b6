"""Files dynaccel reads are read with a bound (a link to /dev/zero fails at once, naming the file and the limit);
files it writes need an existing folder (none is created)."""

import json
import os
import subprocess
import sys

import pytest

from dynaccel.core.errors import ConfigError, PresetError
from dynaccel.core.files import FileReadError, atomic_write, read_bounded
from dynaccel.core.presets import MAX_FILE_BYTES, Preset

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")


def _zero_link(tmp_path, name):
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    return link


def _in_subprocess_with_timeout(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with a memory cap, so an unbounded read fails the test instead of the
    machine."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", limit + code], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_read_bounded_reads_at_most_limit_plus_one_byte(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, 10) == b"x" * 10
    with pytest.raises(FileReadError, match=r"f.json': larger than 9 bytes; accepted: a file of at most 9 bytes"):
        read_bounded(path, 9)


def test_read_bounded_names_a_folder_and_a_missing_file(tmp_path):
    with pytest.raises(FileReadError, match="is a folder"):
        read_bounded(tmp_path, 10)
    with pytest.raises(FileReadError, match="nope.json' does not exist|nope.json': does not exist"):
        read_bounded(tmp_path / "nope.json", 10)


@needs_dev_zero
def test_a_preset_path_linked_to_dev_zero_is_refused_at_once(tmp_path):
    link = _zero_link(tmp_path, "zero.json")
    out = _in_subprocess_with_timeout(
        "from dynaccel.core.presets import Preset\n"
        "from dynaccel.core.errors import PresetError\n"
        f"try:\n    Preset.load({str(link)!r})\nexcept PresetError as e:\n    print(e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert f"larger than {MAX_FILE_BYTES} bytes" in out.stdout and "zero.json" in out.stdout


@needs_dev_zero
def test_a_preset_path_linked_to_dev_zero_through_enable_accel(tmp_path):
    link = _zero_link(tmp_path, "zero.json")
    out = _in_subprocess_with_timeout(
        "import torch, dynaccel\n"
        f"try:\n    dynaccel.enable_accel(torch.nn.Linear(2, 2), preset={str(link)!r})\n"
        "except dynaccel.ConfigError as e:\n    print(e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert f"larger than {MAX_FILE_BYTES} bytes" in out.stdout and "zero.json" in out.stdout


@pytest.mark.slow  # subprocesses or a real run: out of the inner loop; CI runs it
@needs_dev_zero
@pytest.mark.parametrize("strategy,option", [("magcache", "ratios_path"), ("smoothcache", "calibration_path")])
def test_a_calibration_file_linked_to_dev_zero_is_refused(tmp_path, strategy, option):
    link = _zero_link(tmp_path, "ratios.json")
    out = _in_subprocess_with_timeout(
        "import dynaccel\n"
        "from tiny_models import tiny_wan_pipeline\n"
        "pipe = tiny_wan_pipeline()\n"
        f"try:\n    pipe.enable_accel({strategy!r}, {option}={str(link)!r})\n"
        "except dynaccel.ConfigError as e:\n    print(e)\n",
    )
    assert out.returncode == 0, out.stderr
    assert f"option {option!r}" in out.stdout and f"larger than {MAX_FILE_BYTES} bytes" in out.stdout


def test_a_hub_preset_file_over_the_limit_is_refused(tmp_path):
    from dynaccel.hf_integration import hub

    big = tmp_path / "mine.json"
    big.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(PresetError, match=f"larger than {MAX_FILE_BYTES} bytes"):
        hub._read_preset("mine", "hub:org/repo/mine", lambda filename: big)
    good = tmp_path / "good.json"
    good.write_text(Preset(name="good", strategy="magcache", config={"ratios_path": "calibration/good-ratios.json"}).to_json())
    side = tmp_path / "side.json"
    side.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(PresetError, match="field 'config.ratios_path': calibration/good-ratios.json: larger than"):
        hub._read_preset("good", "hub:org/repo/good", lambda filename: good if filename == "good.json" else side)


def test_atomic_write_refuses_a_missing_folder(tmp_path):
    target = tmp_path / "missing" / "deeper" / "out.json"
    with pytest.raises(ConfigError, match="folder .*missing/deeper' does not exist"):
        atomic_write(target, lambda tmp: open(tmp, "w").write("{}"))
    assert not (tmp_path / "missing").exists()
    atomic_write(tmp_path / "out.json", lambda tmp: open(tmp, "w").write(json.dumps({"ok": 1})))
    assert json.loads((tmp_path / "out.json").read_text()) == {"ok": 1}
