"""dynaccel bench on a local diffusers pipeline folder (a tiny Wan with a real tokenizer, built from config)."""

import json
import math

import pytest
import torch
from tiny_models import save_tiny_wan_folder

import dynaccel
from dynaccel.core.cli import main
from dynaccel.hf_integration import bench

CALL = {"height": 16, "width": 16, "num_frames": 5, "num_inference_steps": 6, "guidance_scale": 4.0,
        "max_sequence_length": 8}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_wan_folder(tmp_path_factory.mktemp("pipe") / "tiny-wan-random", CALL)


def test_bench_writes_table_json_and_plot(folder, tmp_path, capsys):
    out = tmp_path / "out"
    main(["bench", "--model", str(folder), "--no-fewer-steps", "-s", "fbcache:threshold=1.0",
          "-s", "teacache:threshold=0",
          "-s", "smoothcache:threshold=1.0", "-s", "diffusers:fbcache:threshold=0.5", "--prompt",
          "a red circle moving left fast", "--seeds", "0,1", "--repeats", "1", "--out", str(out)])
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["setting", "time/gen"]
    rows = {r["label"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert set(rows) == {"full compute", "fbcache:threshold=1.0", "teacache:threshold=0",
                         "smoothcache:threshold=1.0", "diffusers:fbcache:threshold=0.5"}
    assert rows["teacache:threshold=0"]["psnr_db"] == float("inf") and rows["teacache:threshold=0"]["ssim"] == 1.0
    fb = rows["fbcache:threshold=1.0"]
    assert fb["stats"]["skipped"] > 0 and 0 < fb["ssim"] <= 1 and fb["psnr_min_db"] <= fb["psnr_db"]
    # per generation (6 steps x 2 CFG branches), the mean over every generation of the last timed pass (2 seeds)
    per = fb["stats"]["computed_per_generation"]
    assert len(per) == 2 and per[-1] == fb["stats"]["computed"]
    mean = sum(per) / 2
    assert fb["computed"] == (f"{mean:.0f}/12" if mean == int(mean) else f"{mean:.1f}/12")
    assert len(rows["smoothcache:threshold=1.0"]["stats"]["computed_per_generation"]) == 2
    assert rows["smoothcache:threshold=1.0"]["computed"].endswith("blk")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_bench_defaults_include_diffusers_peers(folder):
    settings = [bench.parse_setting(s) for s in ("fbcache", "diffusers:magcache:threshold=0.5",
                                                  "diffusers:taylorseer:cache_interval=2",
                                                  "diffusers:seacache:threshold=1.0")]
    pipe = bench.load_pipeline(folder)
    rows = bench.run_bench(pipe, settings, ["a blue square moving up slow"], [0], CALL, repeats=1, progress=False)
    by = {r.label: r for r in rows}
    assert by["diffusers:magcache:threshold=0.5"].speedup > 0
    assert by["diffusers:magcache:threshold=0.5"].computed.endswith("/12")
    assert by["diffusers:taylorseer:cache_interval=2"].computed == "-"  # attention-level: not countable
    # SeaCache replaces the whole block stack on a reused pass: counted like FBCache and MagCache
    sea = by["diffusers:seacache:threshold=1.0"]
    assert sea.computed.endswith("/12") and float(sea.computed.split("/")[0]) < 12


@pytest.mark.parametrize(
    "args,message",
    [
        pytest.param(["--model", "/no/such/folder"], "model '/no/such/folder': not a zoo model", id="missing-folder"),
        pytest.param(["-s", "teachache"], "unknown strategy 'teachache'; available:", id="unknown-strategy"),
        pytest.param(["-s", "fbcache:threshold=9"], "option 'threshold': got 9", id="out-of-range"),
        pytest.param(["-s", "fbcache:threshold"], "is not key=value", id="bad-syntax"),
        pytest.param(["-s", "diffusers:teacache"], "unknown diffusers cache 'teacache'; accepted:", id="bad-peer"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(folder, tmp_path, capsys, args, message):
    if "--model" not in args:
        args = ["--model", str(folder), *args]
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_strategy_that_does_not_apply_to_the_model(tmp_path, capsys):
    from diffusers import DDPMScheduler, DDPMPipeline, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, layers_per_block=1)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", str(tmp_path / "ddpm"), "-s", "teacache", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "strategy 'teacache' does not support UNet2DModel; supported architectures:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_preset_settings(tmp_path):
    from dynaccel.core.presets import Preset

    path = tmp_path / "mine.json"
    path.write_text(Preset(name="mine", strategy="fbcache", config={"threshold": 0.3}).to_json())
    s = bench.parse_setting(f"preset:{path}")
    assert (s.strategy, s.config, s.label) == ("fbcache", {"threshold": 0.3}, "preset:mine")
    with pytest.raises(Exception, match="unknown preset 'nope'"):
        bench.parse_setting("preset:nope")
    # a preset with options overridden keeps the rest of its config and says what was changed
    s = bench.parse_setting(f"preset:{path}:threshold=0.05,compute_last=False")
    assert s.config == {"threshold": 0.05, "compute_last": False}
    assert s.label == "preset:mine:threshold=0.05,compute_last=False"
    s = bench.parse_setting("preset:tiny-wan-teacache-47db:threshold=0.06")
    base = bench.parse_setting("preset:tiny-wan-teacache-47db")
    assert s.config == {**base.config, "threshold": 0.06} and s.config["coefficients"] == base.config["coefficients"]
    with pytest.raises(Exception, match="is not key=value"):
        bench.parse_setting(f"preset:{path}:=0.1")


def test_setting_values_take_python_and_json_spellings():
    s = bench.parse_setting("teacache:threshold=0.2,compute_last=False,cfg_sync=true,mode=normal,coefficients=1,2")
    assert s.config == {"threshold": 0.2, "compute_last": False, "cfg_sync": True, "mode": "normal",
                        "coefficients": "1,2"}
    assert s.config["compute_last"] is False and s.config["cfg_sync"] is True
    assert bench.parse_setting("diffusers:taylorseer:use_lite_mode=True").config == {"use_lite_mode": True}


def test_computed_column_is_the_mean_over_generations():
    assert bench._computed({}, [(60, 60), (46, 60)], None) == "53/60"
    assert bench._computed({}, [(60, 60), (45, 60)], None) == "52.5/60"
    assert bench._computed({"blocks_computed": 1}, [(140, 240), (100, 240)], None) == "120/240 blk"
    assert bench._computed({}, [(48, None), (40, None)], 60) == "44/60"  # counted by the block counter (peers)
    assert bench._computed({}, [], 60) == "-" and bench._computed({}, [None], 60) == "-"
    assert bench._computed({"computed": 20, "passes": 60}, None, None) == "20/60"  # one generation (the demo)


def test_peer_that_cannot_run_is_reported_and_the_others_run(folder, tmp_path, capsys):
    # diffusers' FasterCache expects CFG batched; WanPipeline runs two passes: the row is reported as not run,
    # PAB (which applies) and our strategy still get rows, and bench.json records why
    out = tmp_path / "out"
    main(["bench", "--model", str(folder), "--no-fewer-steps", "-s", "fbcache:threshold=0.5",
          "-s", "diffusers:fastercache",
          "-s", "diffusers:pab", "--prompt", "a red circle moving left fast", "--repeats", "1", "--out", str(out)])
    text = capsys.readouterr().out
    doc = json.loads((out / "bench.json").read_text())
    assert {r["label"] for r in doc["rows"]} == {"full compute", "fbcache:threshold=0.5", "diffusers:pab"}
    [item] = doc["meta"]["not_run"]
    assert item["setting"] == "diffusers:fastercache" and "two passes" in item["error"]
    assert "not run: diffusers:fastercache failed on WanPipeline" in text
    # a caller that does not ask for the list gets the error itself
    pipe = bench.load_pipeline(folder)
    with pytest.raises(IndexError):
        bench.run_bench(pipe, [bench.parse_setting("diffusers:fastercache")], ["a blue square moving up slow"], [0],
                        CALL, repeats=1, progress=False)
    assert not getattr(pipe.transformer, "is_cache_enabled", False)  # nothing left installed after the error


def test_all_presets_adds_the_models_quality_ladder(folder, monkeypatch, capsys):
    from dynaccel.core.registry import get_registry

    seen = {}

    class Stop(Exception):
        pass

    def fake_run(pipe, settings, *args, **kwargs):
        seen["labels"] = [s.label for s in settings]
        raise Stop

    monkeypatch.setattr(bench, "run_bench", fake_run)
    with pytest.raises(Stop):
        main(["bench", "--model", "tiny-wan", "--no-peers", "--no-fewer-steps", "-s", "fbcache:threshold=0.1",
              "--all-presets"])
    ladder = sorted(f"preset:{n}" for n in get_registry().presets if n.startswith("tiny-wan-"))
    assert seen["labels"] == ["fbcache:threshold=0.1", *ladder]
    assert "preset:tiny-wan-taylorseer-56db" in ladder and "preset:tiny-flux-teacache" not in ladder
    with pytest.raises(SystemExit) as exc:  # a folder that is no zoo model has no built-in presets
        main(["bench", "--model", str(folder), "--all-presets"])
    assert exc.value.code == 2 and "no built-in presets for model" in capsys.readouterr().err


# the built-in cache strategies, in registration order: every strategy of the cache family is benched by default
CACHE_STRATEGIES = ["teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer",
                    "seacache", "learned_cache"]


def test_default_rows_are_the_presets_plus_the_high_quality_ones_where_they_exist(folder, monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def fake_run(pipe, settings, *args, **kwargs):
        seen.append([s.label for s in settings])
        raise Stop

    monkeypatch.setattr(bench, "run_bench", fake_run)
    for model in ("tiny-wan", str(folder)):
        with pytest.raises(Stop):
            main(["bench", "--model", model, "--no-peers"])
    zoo_rows, folder_rows = seen
    # then the fewer-steps rows: 40%, 27% and 13% of the default steps (tiny-wan: 30) per solver
    fewer = [f"steps={n}{sfx}" for sfx in ("", " unipc", " dpm++") for n in (12, 8, 4)]
    # and the zoo's distilled students of the model
    assert zoo_rows == [f"preset:tiny-wan-{s}" for s in CACHE_STRATEGIES] + [
        "preset:tiny-wan-taylorseer-48db", "preset:tiny-wan-taylorseer-56db"] + fewer + ["student:tiny-wan-4step"]
    # no presets for a local folder: each strategy at its defaults (but learned_cache, which needs a trained
    # predictor: reported as not run); its 6 steps give one fewer-steps count (2)
    assert folder_rows == CACHE_STRATEGIES[:-1] + ["steps=2", "steps=2 unipc", "steps=2 dpm++"]


@pytest.mark.parametrize("kind", ["builtin", "file-architecture", "file-model-id"])
def test_a_preset_for_another_model_is_refused_as_enable_accel_refuses_it(tmp_path, capsys, kind):
    """`dynaccel bench` runs the same preset target check as enable_accel (one function): a preset tuned for
    another architecture or zoo model exits 2 with enable_accel's message, before any generation."""
    from dynaccel.core.errors import PresetError
    from dynaccel.core.presets import Preset

    if kind == "builtin":
        setting, field = "preset:tiny-flux-teacache", "architecture"
    else:
        preset = Preset(name="elsewhere", strategy="fbcache", config={"threshold": 0.1},
                        architecture="FluxTransformer2DModel" if kind == "file-architecture" else None,
                        model_id="tiny-flux" if kind == "file-model-id" else None)
        path = tmp_path / "elsewhere.json"
        path.write_text(preset.to_json())
        setting, field = f"preset:{path}", kind.removeprefix("file-").replace("-", "_")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "tiny-wan", "--no-peers", "-s", setting, "--repeats", "1",
              "--out", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]  # after the pipeline's loading progress bars
    assert exc.value.code == 2 and "Traceback" not in stderr
    assert f"field {field!r}" in err
    assert not (tmp_path / "out").exists()
    # the same preset, the same model, through enable_accel: the same message
    pipe = bench.load_pipeline(bench.resolve_model("tiny-wan"))
    with pytest.raises(PresetError) as refused:
        pipe.enable_accel(preset=setting.removeprefix("preset:"))
    assert err == f"Error: {refused.value}"


def test_default_strategies_come_from_strategy_metadata(fresh_registry):
    """Every cache-family strategy is a default row unless it opts out (bench_default = False); another family's
    strategy opts in with bench_default = True. Nothing in the bench names a strategy."""
    from dataclasses import dataclass

    import dynaccel
    from dynaccel.core.config import StrategyConfig, option
    from dynaccel.core.strategy import Strategy

    @dataclass(frozen=True)
    class NoopConfig(StrategyConfig):
        scale: float = option(1.0, doc="unused", min=0.0, max=2.0)

    def strategy(name, family, bench_default=None):
        return type(name, (Strategy,), {"name": name, "family": family, "Config": NoopConfig,
                                        "needs_adapter": False, "bench_default": bench_default})

    class Plugin:
        @dynaccel.hookimpl
        def register_strategies(self, register):
            register(strategy("new_cache", "cache"))
            register(strategy("quiet_cache", "cache", bench_default=False))
            register(strategy("other_family", "sparse_attention", bench_default=True))
            register(strategy("other_family_off", "sparse_attention"))

    fresh_registry.get_registry().add_plugin(Plugin(), name="bench-meta")
    assert bench.default_strategies() == CACHE_STRATEGIES + ["new_cache", "other_family"]


def test_setting_options_are_typed_and_checked_by_the_strategy_schema():
    # the schema's conversion: an int option written as 3.0 is the int 3, a float option written as 1 is 1.0
    s = bench.parse_setting("teacache:retention_steps=3.0,threshold=1")
    assert s.config == {"retention_steps": 3, "threshold": 1.0} and isinstance(s.config["retention_steps"], int)
    assert bench.parse_setting("preset:tiny-wan-teacache:retention_steps=4.0").config["retention_steps"] == 4
    with pytest.raises(dynaccel.ConfigError, match=r"option 'threshold': got 'fast' \(type str\); accepted: float"):
        bench.parse_setting("teacache:threshold=fast")
    with pytest.raises(dynaccel.ConfigError, match="unknown option 'thresold' for strategy 'fbcache'"):
        bench.parse_setting("fbcache:thresold=0.1")


@pytest.mark.parametrize("text,message", [
    ("steps:0", "N a whole number >= 1"),
    ("steps:x", "N a whole number >= 1"),
    ("steps:4:euler", "unknown solver 'euler'; accepted: default, unipc, dpm++"),
    ("steps:4:unipc:extra", "expected steps:N or steps:N:SOLVER"),
])
def test_bad_fewer_steps_settings_name_the_value_and_what_is_accepted(text, message):
    with pytest.raises(dynaccel.ConfigError, match=message.replace("+", r"\+").replace("(", r"\(")):
        bench.parse_setting(text)


def test_fewer_steps_settings_follow_the_default_step_count():
    assert [s.label for s in bench.fewer_steps_settings(30, ("default",))] == ["steps=12", "steps=8", "steps=4"]
    assert [s.label for s in bench.fewer_steps_settings(50, ("unipc",))] == [
        "steps=20 unipc", "steps=14 unipc", "steps=6 unipc"]
    assert bench.fewer_steps_settings(2) == []  # nothing below 2 steps
    assert bench.parse_setting("steps:7:dpm++") == bench.Setting("steps", "dpm++", {"steps": 7})


def test_fewer_steps_rows_run_the_same_model_with_fewer_steps_and_other_solvers(folder):
    pipe = bench.load_pipeline(folder)
    own = pipe.scheduler
    settings = [bench.parse_setting(s) for s in ("steps:6", "steps:3", "steps:3:unipc", "steps:3:dpm++")]
    rows = bench.run_bench(pipe, settings, ["a red circle moving left fast"], [0], CALL, repeats=1, progress=False)
    by = {r.label: r for r in rows}
    assert by["steps=6"].psnr_db == float("inf")  # the default count with the own scheduler is full compute
    assert by["steps=3"].computed == "6/12" and by["steps=3 unipc"].computed == "6/12"
    # fewer steps change the output; each solver takes another path from the same noise
    psnrs = [by[k].psnr_db for k in ("steps=3", "steps=3 unipc", "steps=3 dpm++")]
    assert all(math.isfinite(p) and p > 5 for p in psnrs) and len(set(psnrs)) == 3
    assert pipe.scheduler is own  # the pipeline's scheduler is back after each row
    assert [r.kind for r in rows[1:]] == ["steps"] * 4
    curves = bench.fewer_steps_curves(rows)
    assert set(curves) == {"default", "unipc", "dpm++"}
    assert [r.label for r in curves["unipc"]] == ["steps=3 unipc"]
    assert [r.label for r in curves["default"]] == ["steps=3"]  # steps=6 equals full compute: not a point


def test_a_solver_that_cannot_run_on_the_pipeline_is_reported_not_fatal(folder, monkeypatch):
    pipe = bench.load_pipeline(folder)

    def broken(pipe_, solver):
        if solver == "unipc":
            raise ValueError("The current scheduler class does not support custom sigmas")
        return pipe_.scheduler

    monkeypatch.setattr(bench, "solver_scheduler", broken)
    not_run = []
    rows = bench.run_bench(pipe, [bench.parse_setting("steps:3:unipc"), bench.parse_setting("steps:3")],
                           ["a red circle moving left fast"], [0], CALL, repeats=1, progress=False, not_run=not_run)
    assert [r.label for r in rows] == ["full compute", "steps=3"]
    assert not_run == [{"setting": "steps=3 unipc",
                        "error": "ValueError: The current scheduler class does not support custom sigmas"}]


def test_dpm_solver_rows_run_on_a_flux_pipeline_that_passes_mu():
    """FluxPipeline passes ``mu`` to every scheduler; without dynamic shifting in the config (tiny-flux) the dpm++
    rows must keep the pipeline's fixed shift instead of failing DPM-Solver's dynamic-shifting assertion."""
    path = bench.resolve_model("tiny-flux")
    pipe = bench.load_pipeline(path)
    call = {**bench.generation_defaults("tiny-flux", path), "num_inference_steps": 8}
    settings = [bench.parse_setting(s) for s in ("steps:4", "steps:4:unipc", "steps:4:dpm++")]
    rows = bench.run_bench(pipe, settings, ["a large red circle on the left"], [0], call, repeats=1, progress=False)
    assert [r.label for r in rows[1:]] == ["steps=4", "steps=4 unipc", "steps=4 dpm++"]
    assert all(math.isfinite(r.psnr_db) and r.psnr_db > 10 for r in rows[1:])
    assert rows[3].psnr_db != rows[2].psnr_db
