"""The Gradio demo's logic on the zoo's tiny-wan: comparisons, sweeps, controls from the Config schema, and
sessions that never share cache state or results. (The browser test drives the running app.)"""

import threading
from dataclasses import dataclass

import pytest
import torch
from stub_strategy import stub_plugin

pytest.importorskip("gradio")

import dynaccel  # noqa: E402
from dynaccel import StrategyConfig, option  # noqa: E402
from dynaccel.hf_integration import bench, demo  # noqa: E402

PROMPT = "a blue square moving up slow"


@pytest.fixture(scope="module")
def model():
    return demo.get_model("tiny-wan")


def plain(model, prompt=PROMPT, seed=0, steps=8):
    call = dict(model.call, num_inference_steps=steps)
    out = model.pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="pt", **call)
    return bench._frames(out)[0]


def test_compare_reports_both_outputs_speed_work_and_quality(model):
    c = demo.compare(model, PROMPT, 0, 8, "teacache", {"threshold": 0.4}, warmup=False)
    assert torch.equal(c.baseline, plain(model))
    computed, passes = map(int, c.computed.split("/"))
    assert passes == 16 and computed < passes  # 8 steps x 2 CFG branches
    assert c.stats["computed"] == computed
    assert 0 < c.psnr_db < float("inf") and 0 < c.ssim < 1 and c.psnr_min_db <= c.psnr_db
    assert c.baseline_s > 0 and c.accelerated_s > 0 and c.speedup == pytest.approx(c.baseline_s / c.accelerated_s)
    assert model.pipe.accel_stats == {}  # nothing left installed
    md = demo.results_markdown(c)
    assert f"**speedup: {c.speedup:.2f}x**" in md and f"| {c.computed} |" in md


def test_threshold_zero_is_identical(model):
    c = demo.compare(model, PROMPT, 0, 6, "fbcache", {"threshold": 0.0}, warmup=False)
    assert torch.equal(c.accelerated, c.baseline) and c.psnr_db == float("inf") and c.computed == "12/12"


def test_bad_options_are_refused_and_change_nothing(model):
    with pytest.raises(dynaccel.ConfigError, match=r"option 'threshold': got 9.0 \(above the maximum\)"):
        demo.compare(model, PROMPT, 0, 6, "teacache", {"threshold": 9.0})
    with pytest.raises(dynaccel.ConfigError, match="unknown option 'thresh' for strategy 'fbcache'"):
        demo.compare(model, PROMPT, 0, 6, "fbcache", {"thresh": 0.1})
    with pytest.raises(dynaccel.UnknownStrategyError, match="unknown strategy 'teachache'"):
        demo.compare(model, PROMPT, 0, 6, "teachache", {})
    assert model.pipe.accel_stats == {}
    assert torch.equal(plain(model, steps=6), plain(model, steps=6))


def test_form_values_become_typed_options():
    # blank text boxes mean the default; whole floats from sliders become the int the schema wants
    cfg = demo.build_config("teacache", {"threshold": 0.2, "retention_steps": 3.0, "coefficients": ""})
    assert cfg["retention_steps"] == 3 and isinstance(cfg["retention_steps"], int)
    default = next(f["default"] for f in dynaccel.strategy_info("teacache")["fields"] if f["name"] == "coefficients")
    assert cfg["coefficients"] == default


def test_two_sessions_at_once_share_no_state(model):
    jobs = {"a": ("a red circle moving right fast", 0, "teacache", {"threshold": 0.5}),
            "b": ("a green triangle moving left fast", 1, "fbcache", {"threshold": 0.3, "max_consecutive": 2})}
    alone = {k: demo.compare(model, p, s, 8, st, o, warmup=False) for k, (p, s, st, o) in jobs.items()}
    together, errors = {}, []
    barrier = threading.Barrier(2)

    def session(key):
        prompt, seed, strategy, options = jobs[key]
        barrier.wait()
        try:
            together[key] = demo.compare(model, prompt, seed, 8, strategy, options, warmup=False)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for key in jobs:
        assert torch.equal(together[key].accelerated, alone[key].accelerated), key
        assert together[key].computed == alone[key].computed and together[key].strategy == jobs[key][2]
    assert not torch.equal(together["a"].accelerated, together["b"].accelerated)
    assert model.pipe.accel_stats == {}


def test_sweep_rows_and_plot(model):
    rows = demo.sweep(model, PROMPT, 0, 6, "fbcache", [0.0, 0.5])
    assert [r.label for r in rows] == ["full compute", "fbcache:threshold=0.0", "fbcache:threshold=0.5"]
    assert rows[1].psnr_db == float("inf") and rows[1].computed == "12/12"
    assert int(rows[2].computed.split("/")[0]) < 12
    fig = demo.sweep_figure(rows, "fbcache", "threshold")
    assert fig.axes[0].get_xlabel().startswith("speedup")
    assert model.pipe.accel_stats == {}
    assert demo.sweep_values("fbcache") == sorted(demo.sweep_values("fbcache"))
    lo, hi = demo.sweep_values("fbcache")[0], demo.sweep_values("fbcache")[-1]
    assert lo == pytest.approx(0.02) and hi == pytest.approx(0.32)


def test_media_files(tmp_path):
    frames = torch.rand(5, 3, 32, 32)
    gif = demo.write_media(frames, tmp_path, "x")
    png = demo.write_media(frames[:1], tmp_path, "y")
    from PIL import Image

    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 5 and im.size == (192, 192)
    assert Image.open(png).format == "PNG"


# ---- a strategy from a plugin appears with no demo code ------------------------------------------------------------


@dataclass(frozen=True)
class ProbeConfig(StrategyConfig):
    strength: float = option(0.5, doc="a bounded float", min=0.0, max=1.0, step=0.05)
    every: int = option(2, doc="a bounded int", min=1, max=8)
    mode: str = option("fast", doc="a choice", choices=("fast", "safe"))
    verbose: bool = option(False, doc="a flag")
    note: str = option("", doc="free text")


def test_controls_are_generated_from_the_config_schema(fresh_registry):
    fresh_registry.get_registry().add_plugin(stub_plugin("probe_test", "probe", ProbeConfig), name="probe-plugin")
    app = demo.build_app("tiny-wan", warmup=False)
    by_id = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    strategies = by_id["strategy"]
    assert "probe_test" in [c[0] if isinstance(c, tuple) else c for c in strategies.choices]
    strength = by_id["opt-probe_test-strength"]
    assert (type(strength).__name__, strength.minimum, strength.maximum, strength.step, strength.value) == \
        ("Slider", 0.0, 1.0, 0.05, 0.5)
    every = by_id["opt-probe_test-every"]
    assert (type(every).__name__, every.minimum, every.maximum, every.step) == ("Slider", 1, 8, 1)
    assert type(by_id["opt-probe_test-mode"]).__name__ == "Dropdown"
    assert [c[0] for c in by_id["opt-probe_test-mode"].choices] == ["fast", "safe"]
    assert type(by_id["opt-probe_test-verbose"]).__name__ == "Checkbox"
    assert type(by_id["opt-probe_test-note"]).__name__ == "Textbox"
    assert by_id["opt-probe_test-strength"].info == "a bounded float"
    # every built-in option has its control too
    for name in dynaccel.list_strategies():
        for f in dynaccel.strategy_info(name)["fields"]:
            assert f"opt-{name}-{f['name']}" in by_id
    c = demo.compare(demo.get_model("tiny-wan"), PROMPT, 0, 4, "probe_test",
                     {"strength": 0.25, "every": 3.0, "mode": "safe", "verbose": True, "note": ""}, warmup=False)
    assert c.config == {"strength": 0.25, "every": 3, "mode": "safe", "verbose": True, "note": ""}
    assert torch.equal(c.accelerated, c.baseline)


def test_loading_a_preset_fills_the_strategy_and_its_controls():
    from dynaccel.core.registry import get_registry

    app = demo.build_app("tiny-wan", warmup=False)
    by_id = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    offered = [c[0] for c in by_id["preset"].choices]
    assert "tiny-wan-teacache" in offered and "teacache-wan2.1-t2v-1.3b" in offered
    assert "teacache-flux" not in offered  # made for another architecture
    load = next(f.fn for f in app.fns.values() if f.fn.__name__ == "load_preset")
    updates = load("tiny-wan-fbcache")
    strategies = sorted(dynaccel.list_strategies())
    keys = [(s, f["name"]) for s in strategies for f in dynaccel.strategy_info(s)["fields"]]
    assert updates[0]["value"] == "fbcache"
    preset = get_registry().presets["tiny-wan-fbcache"]
    for (s, name), update in zip(keys, updates[1:]):
        if s == "fbcache":
            assert update["value"] == preset.config.get(name, by_id[f"opt-fbcache-{name}"].value), name
        else:
            assert "value" not in update
