"""A bad calibration path (MagCache ``ratios_path``, SmoothCache ``calibration_path``) is refused with a ConfigError
naming the option, the value and what is accepted, before anything changes: the strategy already active stays
active and accelerated."""

import pickle

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel

CALIBRATED = [("magcache", "ratios_path"), ("smoothcache", "calibration_path")]


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_pipeline()


def _pickle(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"ratios": [1.0, 0.9]}))
    return path


def _wrong_format(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"format": "something.else/1", "data": {"cond": [1.0]}}')
    return path


BAD = [
    pytest.param(_pickle, "is not a JSON calibration file", id="pickle"),
    pytest.param(lambda tmp_path: tmp_path, "is a folder; accepted: a file", id="folder"),
    pytest.param(_wrong_format, "is not a calibration file of this strategy; accepted: JSON with format", id="format"),
    pytest.param(lambda tmp_path: tmp_path / "missing" / "ratios.json", "folder", id="missing-folder"),
]


@pytest.mark.parametrize("strategy,option", CALIBRATED)
@pytest.mark.parametrize("make,fragment", BAD)
def test_a_bad_calibration_path_is_refused_before_anything_changes(pipe, tmp_path, strategy, option, make, fragment):
    handle = pipe.enable_accel("fbcache", threshold=1.0)
    accelerated = run_wan(pipe, steps=6)
    bad = str(make(tmp_path))
    with pytest.raises(dynaccel.ConfigError) as err:
        pipe.enable_accel(strategy, **{option: bad})
    message = str(err.value)
    assert message.startswith(f"option {option!r}: ") and bad in message and fragment in message
    assert "accepted" in message
    assert handle.active and list(pipe.accel_stats) == ["fbcache"]  # the previous strategy is intact
    assert torch.equal(run_wan(pipe, steps=6), accelerated)
    assert pipe.accel_stats["fbcache"]["skipped"] > 0
    pipe.disable_accel()
    assert not (tmp_path / "missing").exists()  # no folder created


@pytest.mark.parametrize("strategy,option", CALIBRATED)
def test_a_new_file_in_an_existing_folder_is_written_after_the_calibration_run(pipe, tmp_path, strategy, option):
    path = tmp_path / "cal.json"
    pipe.enable_accel(strategy, **{option: str(path)})
    run_wan(pipe, steps=6)
    pipe.disable_accel()
    assert path.is_file()
    handle = pipe.enable_accel(strategy, **{option: str(path)})  # read back: valid
    assert handle.active
    pipe.disable_accel()
