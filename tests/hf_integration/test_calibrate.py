"""dynaccel calibrate: fit, search the threshold against a quality target, write a preset that loads."""

import dataclasses
import json

import pytest
import torch
from tiny_models import save_tiny_wan_folder

import dynaccel
from dynaccel.core.cli import main
from dynaccel.hf_integration import bench

CALL = {"height": 32, "width": 32, "num_frames": 9, "num_inference_steps": 12, "guidance_scale": 4.0,
        "max_sequence_length": 8}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_wan_folder(tmp_path_factory.mktemp("pipe") / "tiny-wan-random", CALL)


def _generate(pipe):
    return pipe(prompt="a green triangle moving left fast", generator=torch.Generator().manual_seed(0),
                output_type="latent", **CALL).frames


@pytest.mark.slow  # subprocesses or a real run: out of the inner loop; CI runs it
@pytest.mark.parametrize("strategy", ["teacache", "magcache", "fbcache"])
def test_calibrated_preset_meets_the_target_and_loads(folder, tmp_path, capsys, strategy):
    out = tmp_path / "presets" / f"{strategy}.json"
    out.parent.mkdir()
    caps = ["--caps", "2,4"] if strategy == "magcache" else []
    main(["calibrate", "--model", str(folder), "--strategy", strategy, "--min-psnr", "40", *caps, "--out", str(out)])
    assert "chose " in capsys.readouterr().out
    doc = json.loads(out.read_text())
    prov = doc["provenance"]
    assert doc["schema_version"] == 1 and doc["strategy"] == strategy
    assert prov["measured"]["psnr_db"] >= 40 and prov["steps"] == 12 and prov["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert {"dtype", "machine", "date", "heldout_prompts", "fit_prompts"} <= set(prov)
    if strategy == "teacache":
        assert len(doc["config"]["coefficients"].split(",")) == 5 and prov["fit"]["points"] >= 6
    if strategy == "magcache":
        side = out.parent / doc["config"]["ratios_path"]
        assert side.exists() and not doc["config"]["ratios_path"].startswith("/")
    pipe = bench.load_pipeline(folder)
    full = _generate(pipe)
    handle = pipe.enable_accel(preset=str(out))
    fast = _generate(pipe)
    assert handle.stats["skipped"] > 0
    # latents drift a little, as measured on the decoded frames during the search
    peak = float(full.max() - full.min())
    assert bench._psnr_of(float(((fast - full) ** 2).mean()) / peak**2) > 20


def test_the_search_covers_each_skip_cap_and_keeps_the_one_that_skips_most(folder, tmp_path):
    from dynaccel.hf_integration import calibrate

    pipe = bench.load_pipeline(folder)
    prompts = bench.DEFAULT_PROMPTS
    args = (pipe, str(folder), "taylorseer", prompts[:1], prompts[2:3], [0], CALL, 20.0, tmp_path)
    tight = calibrate.calibrate(*args, thresholds=[0.3, 1.0], caps=[1], timing_repeats=1)
    both = calibrate.calibrate(*args, thresholds=[0.3, 1.0], caps=[1, 4], timing_repeats=1)
    tried = [r.label for r in both.rows[1:]]
    search = [f"taylorseer:max_interval={c},threshold={t}" for c in (1, 4) for t in (0.3, 1.0)]
    # the search, then the winner of the search once more with the last step free to reuse
    assert tried[:4] == search and len(tried) == 5 and tried[4].endswith(",compute_last=False")
    assert tried[4].split(",compute_last")[0] in search
    last = both.rows[5]
    if both.preset.config.get("compute_last") is False:  # kept only when it skips more and meets the target
        assert last.stats["skipped"] > max(r.stats["skipped"] for r in both.rows[1:5] if r.label == tried[4].split(",compute_last")[0])
        assert last.psnr_db >= 20.0
    assert both.rows[0].label == "full compute"
    skipped = lambda r: r.stats["skipped"]  # noqa: E731
    assert skipped(both.chosen) >= skipped(tight.chosen) and both.chosen.psnr_db >= 20.0
    assert both.preset.config["max_interval"] in (1, 4)
    with pytest.raises(bench.BenchError, match=r"max_interval: got 0; accepted: 1 to 50"):
        calibrate.calibrate(*args, thresholds=[0.3], caps=[0, 2])
    with pytest.raises(bench.BenchError, match="strategy 'teacache' has no skip cap to search"):
        calibrate.calibrate(pipe, str(folder), "teacache", prompts[:1], prompts[2:3], [0], CALL, 20.0, tmp_path,
                            thresholds=[0.3], caps=[2])


def test_an_unreachable_target_exits_with_a_message_and_writes_nothing(folder, tmp_path, capsys):
    out = tmp_path / "p.json"
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--model", str(folder), "--strategy", "easycache", "--min-psnr", "300", "--out", str(out)])
    assert exc.value.code == 2
    assert "unreachable quality target: no easycache threshold that skips work reaches PSNR >= 300.0 dB" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_coefficients_are_refused():
    from dynaccel.plugins.cache.teacache import TeaCacheConfig

    with pytest.raises(dynaccel.ConfigError, match="option 'coefficients': got '1,2,3'; accepted: 5 comma-separated"):
        TeaCacheConfig.from_kwargs("teacache", coefficients="1,2,3")


def test_missing_model_and_unknown_strategy(tmp_path, capsys):
    for args, msg in ((["--model", str(tmp_path / "nope"), "--strategy", "teacache"], "not a zoo model"),
                      (["--strategy", "teachache"], "unknown strategy 'teachache'")):
        with pytest.raises(SystemExit) as exc:
            main(["calibrate", *args, "--out", str(tmp_path / "x.json")])
        assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_an_out_path_in_a_missing_folder_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    from dynaccel.hf_integration import bench

    monkeypatch.setattr(bench, "load_pipeline", lambda path: pytest.fail("loaded the model before checking --out"))
    out = tmp_path / "nonexistent" / "preset.json"
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--strategy", "teacache", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"folder {str(out.parent)!r} does not exist" in err
    assert not out.parent.exists()


def test_fixed_options_are_kept_in_the_preset_and_bad_ones_refused(folder, tmp_path, capsys):
    out = tmp_path / "ts.json"
    main(["calibrate", "--model", str(folder), "--strategy", "taylorseer", "--min-psnr", "30", "--caps", "2",
          "--set", "order=2", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["config"]["order"] == 2 and doc["config"]["max_interval"] == 2
    capsys.readouterr()
    for fixed, msg in (("threshold=0.1", "threshold is what calibrate searches"),
                       ("nope=1", "unknown option 'nope' for strategy 'taylorseer'"),
                       ("order=9", "order")):
        bad = tmp_path / "bad.json"
        with pytest.raises(SystemExit) as exc:
            main(["calibrate", "--model", str(folder), "--strategy", "taylorseer", "--set", fixed, "--out", str(bad)])
        assert exc.value.code == 2 and msg in capsys.readouterr().err
        assert not bad.exists()


def test_a_strategy_without_a_quality_knob_is_refused_before_loading(tmp_path, capsys):
    # calibrate searches the knob the strategy's schema declares; sparse attention declares none
    out = tmp_path / "sta.json"
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--model", str(tmp_path / "no-such-model"), "--strategy", "sliding_tile", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "'sliding_tile' declares no quality knob to search" in err
    assert "Traceback" not in err and not out.exists()


def test_a_winner_no_faster_than_full_compute_is_refused_and_nothing_written(folder, tmp_path, monkeypatch, capsys):
    """No preset may be slower than full compute: when the timed winner runs at <= 1.0x, calibrate writes nothing.
    (The timing run is made to report a slow winner: its skips are real, its time is not what this tests.)"""
    real = bench.run_bench

    def slow_timing(pipe, settings, *args, repeats=1, **kwargs):
        rows = real(pipe, settings, *args, repeats=repeats, **kwargs)
        if repeats > 1:  # the winner's timing run
            rows = [rows[0]] + [dataclasses.replace(r, speedup=0.95, time_s=r.time_s * 2) for r in rows[1:]]
        return rows

    monkeypatch.setattr(bench, "run_bench", slow_timing)
    out = tmp_path / "p.json"
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--model", str(folder), "--strategy", "easycache", "--min-psnr", "15", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no faster setting: the fastest easycache setting that reaches PSNR >= 15.0 dB" in err and "0.95x" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_joint_search_memo_across_targets_and_the_check_on_unseen_prompts(folder, tmp_path, monkeypatch):
    from dynaccel.hf_integration import calibrate

    pipe = bench.load_pipeline(folder)
    prompts = bench.DEFAULT_PROMPTS
    measured = []
    real = bench.run_bench

    def counting(pipe_, settings, *a, **k):
        measured.extend(s.label for s in settings)
        return real(pipe_, settings, *a, **k)

    monkeypatch.setattr(bench, "run_bench", counting)
    memo = {}
    args = (pipe, str(folder), "magcache", prompts[:1], prompts[2:3], [0], CALL)
    kwargs = dict(thresholds=[0.3, 1.0], caps=[2], timing_repeats=1, refine=0, memo=memo,
                  search={"order": [0, 1]})
    low = calibrate.calibrate(*args, 15.0, tmp_path, check_prompts=[prompts[3]], **kwargs)
    # every (order, threshold) pair, each measured once (labels also hold the temporary calibration file's path)
    searched = [r.label.split(".json,")[1] for r in low.rows[1:5]]
    assert searched == [f"order={o},max_skip_steps=2,threshold={t}" for o in (0, 1) for t in (0.3, 1.0)]
    prov = low.preset.provenance
    assert prov["searched"] == {"order": [0, 1]}
    checked = prov["checked"]
    assert checked["prompts"] == [prompts[3]] and checked["psnr_db"] > 0 and "/" in checked["computed"]
    before = len(measured)
    high = calibrate.calibrate(*args, 30.0, tmp_path, **kwargs)
    # the second target reuses every measured search row and full compute: only compute_last's try may be new
    new = [x for x in measured[before:] if x != "full compute"]
    assert all("compute_last=False" in x for x in new), new
    assert high.chosen.psnr_db >= 30.0 or high.chosen.psnr_db >= low.chosen.psnr_db


def test_search_values_are_checked_before_any_generation(folder, tmp_path, capsys):
    out = tmp_path / "p.json"
    for bad, message in ((["--search", "order=0,7"], "option 'order': got 7"),
                         (["--search", "order"], "accepted: key=v1,v2"),
                         (["--search", "threshold=0.1,0.2"], "searched already")):
        with pytest.raises(SystemExit) as exc:
            main(["calibrate", "--model", str(folder), "--strategy", "magcache", *bad, "--out", str(out)])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
