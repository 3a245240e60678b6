"""Without ComfyUI: which presets the Preset node offers and refuses (defect 6), calibration said and kept across
node re-runs (defect 10), the log line's prefix and own line (defect 12), requirements.txt for clone installs
(defect 11)."""

from __future__ import annotations

import io
import logging
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dynaccel
from dynaccel.comfy_nodes import presets, runner
from dynaccel.core.errors import PresetError
from dynaccel.core.registry import get_registry

REPO = Path(dynaccel.__file__).parent


def _comfy_class(name: str, module: str) -> type[torch.nn.Module]:
    """A stand-in for a ComfyUI diffusion-model class: the adapters match by class name and module."""

    def init(self):
        torch.nn.Module.__init__(self)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    return type(name, (torch.nn.Module,), {"__init__": init, "__module__": module})


WanModel = _comfy_class("WanModel", "comfy.ldm.wan.model")
HunyuanVideo = _comfy_class("HunyuanVideo", "comfy.ldm.hunyuan_video.model")
MMDiT = _comfy_class("MMDiT", "comfy.ldm.modules.diffusionmodules.mmdit")


def _patcher(model):
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=model))


# ---- defect 6: presets checked against the model -------------------------------------------------------------------

def test_the_preset_node_offers_only_presets_for_models_comfyui_runs_and_a_sensible_default():
    offered = presets.offered_presets()
    assert "teacache-cogvideox1.5-5b" not in offered  # no ComfyUI adapter covers CogVideoX
    assert {"teacache-wan2.1-t2v-1.3b", "teacache-flux", "teacache-hunyuanvideo", "tiny-wan-magcache"} <= set(offered)
    reg = get_registry()
    assert all(reg.strategies[reg.presets[n].strategy].family == "cache" for n in offered)
    assert presets.default_preset(offered) == "teacache-wan2.1-t2v-1.3b"
    assert presets.default_preset(["b", "a"]) == "b" and presets.default_preset([]) is None


@pytest.mark.parametrize("preset,model,fragment", [
    ("teacache-flux", WanModel, "the preset is for FluxTransformer2DModel; this model is comfy.ldm.wan.model.WanModel"),
    ("tiny-wan-teacache", HunyuanVideo, "the preset is for WanTransformer3DModel; this model is comfy.ldm.hunyuan_video"),
    ("tiny-wan-teacache", MMDiT, "has no dynaccel ComfyUI adapter, so no preset applies to it"),
])
def test_a_preset_for_another_architecture_is_refused_naming_both(preset, model, fragment):
    with pytest.raises(PresetError) as err:
        presets.check_preset(get_registry().presets[preset], model())
    assert fragment in str(err.value)
    if model is WanModel:
        assert "presets for it: " in str(err.value) and "teacache-wan2.1-t2v-1.3b" in str(err.value)


def test_a_preset_for_the_model_architecture_is_accepted():
    presets.check_preset(get_registry().presets["tiny-wan-teacache"], WanModel())
    presets.check_preset(get_registry().presets["teacache-hunyuanvideo"], HunyuanVideo())


# ---- defect 10: calibration said, and kept per model across node re-runs -------------------------------------------

def _calibrated_run(acc, caplog):
    """What the runner does around one sampling run of a calibrated strategy, with the calibration it records."""
    acc.calibration_run = acc.policy.calibration is None
    if acc.calibration_run:
        acc.policy.calibration = {"cond": [1.0] * 10}
    stats = {"summary": "magcache: computed 10/10 steps, 1.00x"}
    with caplog.at_level(logging.INFO, logger="dynaccel"):
        acc.report(stats)
    return stats


def test_the_calibration_run_is_said_and_the_calibration_kept_for_the_next_node_run(caplog):
    model = WanModel()
    first = runner.make_accelerator(_patcher(model), "magcache", {}, node_id="3")
    assert first.policy.calibration is None
    stats = _calibrated_run(first, caplog)
    assert stats["calibration"] == "calibrated in this run"
    assert "calibration run: every step computed to calibrate magcache" in stats["summary"]
    assert "dynaccel [node 3]: magcache: computed 10/10 steps, 1.00x (calibration run" in caplog.text
    # the node runs again (another threshold): it starts calibrated
    again = runner.make_accelerator(_patcher(model), "magcache", {"threshold": 0.3}, node_id="3")
    assert again.policy.calibration == {"cond": [1.0] * 10}
    assert _calibrated_run(again, caplog)["calibration"] == "calibrated"
    # another model, or the user opting out: calibrate afresh
    assert runner.make_accelerator(_patcher(WanModel()), "magcache", {}).policy.calibration is None
    fresh = runner.make_accelerator(_patcher(model), "magcache", {}, keep_calibration=False)
    assert fresh.policy.calibration is None
    assert runner.make_accelerator(_patcher(model), "magcache", {}).policy.calibration is None  # forgotten


def test_strategies_without_calibration_say_nothing_of_it(caplog):
    acc = runner.make_accelerator(_patcher(WanModel()), "teacache", {}, node_id="12")
    acc.calibration_run = None
    stats = {"summary": "teacache: computed 10/10 steps, 1.00x"}
    with caplog.at_level(logging.INFO, logger="dynaccel"):
        acc.report(stats)
    assert "calibration" not in stats and "dynaccel [node 12]: teacache: computed 10/10 steps, 1.00x" in caplog.text


# ---- defect 12: the log line starts on its own line, prefixed ----------------------------------------------------

def test_the_log_line_starts_on_its_own_line_while_a_progress_bar_is_drawn():
    from tqdm import tqdm

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log = logging.getLogger("dynaccel")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        with tqdm(total=10, file=out, mininterval=0) as bar:
            bar.update(10)
            runner.log_line("dynaccel [node 5]: teacache: computed 4/10 steps, 2.50x")
        text = out.getvalue()
        assert re.search(r"\|\s*10/10[^\n]*\ndynaccel \[node 5\]: teacache", text), text
        out.truncate(0), out.seek(0)
        runner.log_line("dynaccel [node 5]: no bar")
        assert out.getvalue() == "dynaccel [node 5]: no bar\n"  # no blank line when no bar is drawn
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


# ---- defect 11: requirements.txt for clone installs ----------------------------------------------------------------

def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_txt_lists_exactly_the_runtime_dependencies_without_torch():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [ln.split("#")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    listed = [ln for ln in lines if ln]
    assert sorted(listed) == sorted(d for d in deps if _name(d) != "torch")
    assert "torch" not in {_name(r) for r in listed}  # ComfyUI's own torch must not be replaced
