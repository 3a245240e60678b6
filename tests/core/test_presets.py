"""Preset files are data, checked field by field: a bad or hostile one names the preset and the field, and the
pipeline stays as it was."""

import json
import os
import pickle

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel
from dynaccel.core.errors import PresetError
from dynaccel.core.presets import BUILTIN_DIR, Preset


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_pipeline()


@pytest.fixture(scope="module")
def baseline(pipe):
    return run_wan(pipe, steps=6)


GOOD = {"schema_version": 1, "name": "mine", "strategy": "fbcache", "config": {"threshold": 0.3},
        "architecture": "WanTransformer3DModel", "model_id": None, "description": "",
        "provenance": {"source": "test", "measured": {"speedup": 1.5}}}


def write(tmp_path, data, name="mine.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def deep(n):
    out = {}
    for _ in range(n):
        out = {"x": out}
    return out


HOSTILE = [
    pytest.param({**GOOD, "exec": "import os"}, "field 'exec': unknown field; accepted fields: schema_version, name",
                 id="unknown-field"),
    pytest.param({k: v for k, v in GOOD.items() if k != "strategy"}, "field 'strategy': missing", id="missing-field"),
    pytest.param({**GOOD, "schema_version": 2}, "field 'schema_version': got 2; accepted: 1", id="schema-version-2"),
    pytest.param({**GOOD, "schema_version": "1"}, "field 'schema_version': got a string; accepted: the integer 1",
                 id="schema-version-string"),
    pytest.param({**GOOD, "schema_version": True}, "field 'schema_version': got a boolean", id="schema-version-bool"),
    pytest.param({**GOOD, "config": [0.3]}, "field 'config': got an array; accepted: an object", id="config-array"),
    pytest.param({**GOOD, "config": {"threshold": {"$ref": [1, 2, {"a": None}]}}},
                 "field 'config.threshold': got an object; accepted: a number, string or boolean", id="nested-junk"),
    pytest.param({**GOOD, "config": {"threshold": None}}, "field 'config.threshold': got null", id="config-null"),
    pytest.param({**GOOD, "provenance": deep(40)}, "nested 9 levels deep; accepted: at most 8", id="deep-provenance"),
    pytest.param("[" * 100000 + "]" * 100000, "nested too deeply", id="deep-array"),
    pytest.param({**GOOD, "provenance": {"s": "x" * 100000}}, "field 'provenance.s': string of 100000 characters",
                 id="long-string"),
    pytest.param({**GOOD, "provenance": {"list": list(range(5000))}}, "field 'provenance.list': 5000 entries",
                 id="huge-list"),
    pytest.param(json.dumps(GOOD).replace("0.3", "1e999"), "number 1e999 overflows a float", id="huge-float"),
    pytest.param(json.dumps(GOOD).replace("0.3", "9" * 5000), "integer of 5000 digits", id="huge-int"),
    pytest.param(json.dumps(GOOD).replace("0.3", "NaN"), "NaN is not a number JSON allows", id="nan"),
    pytest.param({**GOOD, "name": "../../etc/passwd"}, "field 'name': got '../../etc/passwd'", id="path-name"),
    pytest.param([GOOD], "got an array; accepted: a JSON object", id="not-an-object"),
    pytest.param("{'name': 'python, not JSON'}", "not valid JSON", id="not-json"),
    pytest.param({**GOOD, "strategy": "teachache"}, "field 'strategy': unknown strategy 'teachache'; available: ",
                 id="unknown-strategy"),
    pytest.param({**GOOD, "config": {"threshold": 9.0}},
                 "field 'config.threshold': option 'threshold': got 9.0 (above the maximum); accepted: float with "
                 "0.0 <= threshold <= 2.0", id="out-of-range"),
    pytest.param({**GOOD, "config": {"threshold": "high"}}, "field 'config.threshold': option 'threshold': got 'high'",
                 id="wrong-type"),
    pytest.param({**GOOD, "config": {"thresh": 0.1}}, "field 'config.thresh': unknown option 'thresh' for strategy "
                 "'fbcache'", id="unknown-option"),
    pytest.param({**GOOD, "config": {"threshold": 1e300}}, "field 'config.threshold': option 'threshold': got 1e+300 "
                 "(above the maximum)", id="huge-in-range-type"),
]


@pytest.mark.parametrize("data,fragment", HOSTILE)
def test_bad_preset_files_name_preset_and_field_and_change_nothing(pipe, baseline, tmp_path, data, fragment):
    pipe.enable_accel("teacache", threshold=0.5)
    accelerated = run_wan(pipe, steps=6)
    path = write(tmp_path, data)
    with pytest.raises(PresetError) as err:
        pipe.enable_accel(preset=str(path))
    msg = str(err.value)
    assert fragment in msg
    assert msg.startswith("preset ") and ("mine" in msg or str(path) in msg)
    assert list(pipe.accel_stats) == ["teacache"]  # what was active stays active, unchanged
    assert torch.equal(run_wan(pipe, steps=6), accelerated)
    pipe.disable_accel()
    assert torch.equal(run_wan(pipe, steps=6), baseline)


def test_a_pickle_is_never_unpickled(pipe, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.json"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(PresetError, match="not valid JSON"):
        pipe.enable_accel(preset=str(path))
    assert not marker.exists() and pipe.accel_stats == {}


def test_a_preset_for_another_strategy(pipe, tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(dynaccel.ConfigError, match="preset 'mine': field 'strategy': the preset is for strategy "
                                                   "'fbcache', not 'teacache'"):
        pipe.enable_accel("teacache", preset=str(path))
    assert pipe.accel_stats == {}


def test_a_preset_for_another_architecture(pipe, baseline):
    with pytest.raises(PresetError) as err:
        pipe.enable_accel(preset="teacache-flux")
    assert str(err.value).startswith("preset 'teacache-flux': field 'architecture': the preset is for "
                                     "FluxTransformer2DModel; this model is WanTransformer3DModel")
    assert pipe.accel_stats == {}
    assert torch.equal(run_wan(pipe, steps=6), baseline)


def test_a_preset_for_another_model_id(tmp_path):
    pipe = tiny_wan_pipeline()
    pipe.register_to_config(_name_or_path="Wan-AI/Wan2.1-T2V-14B-Diffusers")
    with pytest.raises(PresetError, match="preset 'teacache-wan2.1-t2v-1.3b': field 'model_id': the preset was tuned "
                                          "for 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers'; this pipeline is "
                                          "'Wan-AI/Wan2.1-T2V-14B-Diffusers'"):
        pipe.enable_accel(preset="teacache-wan2.1-t2v-1.3b")
    assert pipe.accel_stats == {}
    pipe.register_to_config(_name_or_path="wan-ai/wan2.1-t2v-14b-diffusers")  # Hub ids ignore case
    handle = pipe.enable_accel(preset="teacache-wan2.1-t2v-14b")  # the matching one applies
    assert (handle.strategy, handle.config.threshold) == ("teacache", 0.2)
    pipe.disable_accel()


def test_a_valid_file_applies_and_keyword_options_override(pipe, tmp_path):
    path = write(tmp_path, GOOD)
    handle = pipe.enable_accel(preset=str(path), max_consecutive=2)
    assert (handle.strategy, handle.config.threshold, handle.config.max_consecutive) == ("fbcache", 0.3, 2)
    pipe.disable_accel()


def test_every_builtin_preset_passes_the_checks():
    from dynaccel.core.registry import check_config

    files = sorted(p for p in BUILTIN_DIR.glob("*.json") if "calibration" not in p.name)
    assert len(files) >= 15
    for path in files:
        preset = Preset.load(path)
        check_config(preset)
        assert json.loads(path.read_text())["schema_version"] == 1


def test_round_trip_through_json():
    preset = Preset.from_dict(GOOD)
    assert Preset.loads(preset.to_json()) == preset


def test_presets_and_import_need_no_gradio_or_huggingface_hub():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('gradio', 'huggingface_hub', 'matplotlib'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dynaccel\n"
        "from dynaccel.core.api import resolve_preset\n"
        "from dynaccel.core.registry import check_config\n"
        "print(check_config(resolve_preset('tiny-wan-teacache')).threshold)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    preset_file = os.path.join(BUILTIN_DIR, "cache-tiny-wan-teacache.json")
    with open(preset_file) as f:
        assert float(out.stdout) == json.load(f)["config"]["threshold"]
