"""Peer rows of dynaccel bench beyond diffusers' defaults: cache-dit's DBCache, diffusers MagCache with its own
calibration flow, the --peer-grid ranges and the --pareto report (tiny Wan folder with random weights, and the zoo's
tiny-flux for a second architecture)."""

import json
import math
import re

import pytest
import torch
from tiny_models import save_tiny_wan_folder

from dynaccel.core.cli import main
from dynaccel.core.errors import ConfigError
from dynaccel.hf_integration import bench

CALL = {"height": 16, "width": 16, "num_frames": 5, "num_inference_steps": 6, "guidance_scale": 4.0,
        "max_sequence_length": 8}
PROMPT = "a red circle moving left fast"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_wan_folder(tmp_path_factory.mktemp("pipe") / "tiny-wan-random", CALL)


def _generate(pipe, call, prompt=PROMPT):
    out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="pt", **call)
    return bench.frames(out)


def test_cachedit_dbcache_rows_skip_passes_and_leave_the_pipeline_as_it_was(folder):
    pytest.importorskip("cache_dit")
    pipe = bench.load_pipeline(folder)
    before = _generate(pipe, CALL)
    # max_warmup_steps=2: cache-dit's default warm-up (8 steps) would compute every pass of a 6-step run
    texts = ["cachedit:dbcache:Fn=1,Bn=0,threshold=0.3,max_warmup_steps=2",
             "cachedit:dbcache:Fn=1,Bn=1,threshold=0.3,max_warmup_steps=2"]
    rows = bench.run_bench(pipe, [bench.parse_setting(t) for t in texts], [PROMPT], [0], CALL, repeats=1,
                           progress=False)
    by = {r.label: r for r in rows}
    assert set(by) == {"full compute", *texts}  # the label keeps the short spellings as written
    for text in texts:
        row = by[text]
        assert row.kind == "cachedit"
        done, total = row.computed.split("/")
        assert total == "12" and 4 <= float(done) < 12  # skipped passes, counted on the block before the Bn tail
        assert math.isfinite(row.psnr_db) and row.psnr_db > 5
    after = _generate(pipe, CALL)
    assert torch.equal(before, after)  # cache-dit's hooks are gone: full compute is bit-identical again
    assert pipe.enable_accel("fbcache") is not None  # and our own strategies still install
    pipe.disable_accel()


def test_cachedit_taylorseer_calibrator_row_on_the_zoo_wan():
    pytest.importorskip("cache_dit")
    path = bench.resolve_model("tiny-wan")
    pipe = bench.load_pipeline(path)
    call = {**bench.generation_defaults("tiny-wan", path), "num_inference_steps": 16}
    texts = ["cachedit:dbcache:Fn=1,Bn=0,threshold=0.2,max_warmup_steps=3",
             "cachedit:dbcache:Fn=1,Bn=0,threshold=0.2,max_warmup_steps=3,calibrator=taylorseer"]
    rows = bench.run_bench(pipe, [bench.parse_setting(t) for t in texts], ["a red circle moving right fast"], [0],
                           call, repeats=1, progress=False)
    plain, calibrated = rows[1:]
    assert plain.computed == calibrated.computed and float(plain.computed.split("/")[0]) < 32
    # the calibrator extrapolates the cached residual instead of reusing it: same skips, another output
    assert math.isfinite(calibrated.psnr_db) and calibrated.psnr_db != plain.psnr_db


def test_cachedit_row_on_a_flux_pipeline():
    pytest.importorskip("cache_dit")
    path = bench.resolve_model("tiny-flux")
    pipe = bench.load_pipeline(path)
    call = {**bench.generation_defaults("tiny-flux", path), "num_inference_steps": 8}
    text = "cachedit:dbcache:Fn=1,Bn=0,threshold=0.3,max_warmup_steps=2"
    rows = bench.run_bench(pipe, [bench.parse_setting(text)], ["a large red circle on the left"], [0], call,
                           repeats=1, progress=False)
    row = rows[1]
    done, total = row.computed.split("/")
    assert total == "8" and float(done) < 8 and math.isfinite(row.psnr_db)


@pytest.mark.parametrize("text,message", [
    ("cachedit:fbcache", "unknown cache-dit cache 'fbcache'; accepted: cachedit:dbcache"),
    ("cachedit:dbcache:calibrator=foca", "calibrator='foca'; accepted: none, taylorseer"),
    ("cachedit:dbcache:Fn=1,Fn_compute_blocks=2", "given twice"),
])
def test_bad_cachedit_settings_name_the_value_and_what_is_accepted(text, message):
    with pytest.raises(ConfigError, match=message):
        bench.parse_setting(text)


def test_an_unknown_cachedit_option_is_refused_before_any_generation(folder, tmp_path, capsys):
    pytest.importorskip("cache_dit")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", str(folder), "--no-fewer-steps", "-s", "cachedit:dbcache:thresold=0.1",
              "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown cache-dit option(s) thresold" in err and "residual_diff_threshold" in err
    assert not (tmp_path / "out").exists()


def test_cachedit_rows_that_cannot_run_are_reported_with_why(folder, monkeypatch):
    pipe = bench.load_pipeline(folder)
    not_run = []
    settings = [bench.parse_setting(t) for t in ("cachedit:dbcache", "fbcache:threshold=0.5")]
    if pytest.importorskip("cache_dit"):
        # cache-dit's default F8B0 on a 3-block transformer: said up front, not a mid-generation assertion
        rows = bench.run_bench(pipe, settings, [PROMPT], [0], CALL, repeats=1, progress=False, not_run=not_run)
        assert [r.label for r in rows] == ["full compute", "fbcache:threshold=0.5"]
        assert not_run[0]["setting"] == "cachedit:dbcache"
        assert "Fn=8 first and Bn=0 last blocks, but the transformer has 3 blocks" in not_run[0]["error"]
    # without cache-dit installed: a note that says how to install it
    monkeypatch.setitem(__import__("sys").modules, "cache_dit", None)
    not_run.clear()
    rows = bench.run_bench(pipe, settings[:1], [PROMPT], [0], CALL, repeats=1, progress=False, not_run=not_run)
    assert [r.label for r in rows] == ["full compute"]
    assert "cache-dit is not installed; pip install cache-dit" in not_run[0]["error"]


def test_diffusers_magcache_uses_its_own_calibration_flow(folder, capsys):
    pipe = bench.load_pipeline(folder)
    ratios = bench._calibrate_ratios(pipe, (PROMPT, 0), CALL)
    assert len(ratios) == CALL["num_inference_steps"] and ratios[0] == 1.0
    assert all(math.isfinite(r) and r > 0 for r in ratios) and len(set(ratios)) > 2
    assert "MagCache" not in capsys.readouterr().out  # diffusers' printout is kept off the table
    assert not getattr(pipe.transformer, "is_cache_enabled", False)  # the calibration hook is gone
    rows = bench.run_bench(pipe, [bench.parse_setting("diffusers:magcache:threshold=0.5,max_skip_steps=2")],
                           [PROMPT], [0], CALL, repeats=1, progress=False)
    assert float(rows[1].computed.split("/")[0]) < 12


def test_diffusers_taylorseer_without_lite_mode_hooks_the_attention(folder):
    # use_lite_mode=false spelled out used to leave diffusers' default patterns, which match no Wan module: a row
    # identical to full compute. Now it hooks the attention modules, like the row without the option.
    pipe = bench.load_pipeline(folder)
    texts = ["diffusers:taylorseer:cache_interval=2,disable_cache_before_step=1,use_lite_mode=false",
             "diffusers:taylorseer:cache_interval=2,disable_cache_before_step=1,use_lite_mode=true"]
    rows = bench.run_bench(pipe, [bench.parse_setting(t) for t in texts], [PROMPT], [0], CALL, repeats=1,
                           progress=False)
    assert all(math.isfinite(r.psnr_db) for r in rows[1:])
    assert rows[1].psnr_db != rows[2].psnr_db


def test_peer_grid_covers_every_peer_over_its_range():
    grid = bench.peer_grid()
    labels = [s.label for s in grid]
    assert len(labels) == len(set(labels))
    kinds = {(s.kind, s.strategy) for s in grid}
    assert kinds == {("diffusers", p) for p in bench.PEERS} | {("cachedit", "dbcache")}
    mag = [s.config for s in grid if s.strategy == "magcache"]
    assert {(c["threshold"], c["max_skip_steps"]) for c in mag} == {(t, k) for t in (0.06, 0.12, 0.24)
                                                                    for k in (2, 3, 4)}
    lite = {(s.config["cache_interval"], s.config["use_lite_mode"]) for s in grid if s.strategy == "taylorseer"}
    assert lite == {(n, m) for n in (2, 3, 4, 5) for m in (False, True)}
    cd = [s.config for s in grid if s.kind == "cachedit"]
    assert sum(c.get("calibrator") == "taylorseer" for c in cd) == 5 and {} in cd


def _row(label, kind, speedup, psnr):
    return bench.Row(label, kind, 1.0 / speedup, speedup, "-", psnr, psnr, 1.0)


def test_pareto_marks_the_frontier_and_the_peers_no_dynaccel_setting_dominates():
    rows = [_row("full compute", "full", 1.0, math.inf),
            _row("ours-fast", "dynaccel", 2.5, 35.0),
            _row("ours-good", "dynaccel", 1.5, 50.0),
            _row("peer-beaten", "diffusers", 1.4, 45.0),  # ours-good is faster and better
            _row("peer-tied", "cachedit", 2.5, 35.0),  # matched exactly: not held against us
            _row("peer-better", "diffusers", 2.0, 44.0),  # nothing of ours is both this fast and this good
            _row("steps-better", "steps", 3.0, 31.0),  # faster than all of ours at >= 30 dB
            _row("peer-low", "diffusers", 4.0, 20.0),  # below the quality floor
            _row("peer-identical", "cachedit", 1.05, math.inf),  # skipped nothing: its speedup is noise
            _row("peer-slow", "cachedit", 0.95, 70.0)]  # slower than full compute, which dominates it
    result = bench.pareto(rows, min_psnr=30.0)
    # full compute is dominated by the identical peer row that timed 5% faster; ties in both stay on the frontier
    assert result["frontier"] == ["peer-identical", "ours-good", "peer-better", "ours-fast", "peer-tied",
                                  "steps-better", "peer-low"]
    assert "peer-beaten" not in result["frontier"]
    assert result["undominated_peers"] == ["steps-better", "peer-better"]  # fastest first
    text = bench.format_pareto(result)
    assert "(2):" in text and "  peer-better" in text
    assert "every peer setting" in bench.format_pareto(bench.pareto(rows[:5], 30.0))


def test_bench_pareto_writes_the_plot_and_the_report(folder, tmp_path, capsys):
    out = tmp_path / "out"
    main(["bench", "--model", str(folder), "-s", "fbcache:threshold=0.5", "-s", "diffusers:fbcache:threshold=0.5",
          "-s", "steps:3", "--pareto", "--prompt", PROMPT, "--repeats", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert "speed-quality frontier (fastest last):" in text
    doc = json.loads((out / "bench.json").read_text())
    labels = {r["label"] for r in doc["rows"]}
    assert set(doc["meta"]["pareto"]["frontier"]) <= labels and doc["meta"]["pareto"]["min_psnr_db"] == 30.0
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("flag", ["--peer-grid", "--pareto"])
def test_peer_grid_and_pareto_are_refused_where_they_do_not_apply(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "tiny-vlm", flag, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert f"{flag} applies to diffusers pipelines" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compiled_rows_time_the_compiled_transformer_alone_and_with_a_strategy(folder):
    # aot_eager traces, guards and recompiles as inductor does, without its C++ code generation (fast for a test)
    pipe = bench.load_pipeline(folder)
    texts = ["compiled:aot_eager", "compiled:aot_eager+fbcache:threshold=0.5", "fbcache:threshold=0.5"]
    settings = [bench.parse_setting(t) for t in texts]
    assert [s.label for s in settings] == texts and settings[0].kind == "full" and settings[1].kind == "dynaccel"
    before = _generate(pipe, CALL)
    rows = bench.run_bench(pipe, settings, [PROMPT], [0], CALL, repeats=1, progress=False)
    by = {r.label: r for r in rows}
    assert by["compiled:aot_eager"].kind == "compiled" and by["compiled:aot_eager"].psnr_db > 60  # same model
    both, eager = by["compiled:aot_eager+fbcache:threshold=0.5"], by["fbcache:threshold=0.5"]
    assert both.kind == "dynaccel" and both.computed == eager.computed  # compiling changes no decision
    assert abs(both.psnr_db - eager.psnr_db) < 1.0
    assert getattr(pipe.transformer, "_compiled_call_impl", None) is None  # eager again afterwards
    assert torch.equal(_generate(pipe, CALL), before)


@pytest.mark.parametrize("text,message", [
    ("compiled+diffusers:fbcache", "after 'compiled+' comes a dynaccel strategy or preset"),
    ("compiled:no such+fbcache", "is not a torch.compile backend name"),
])
def test_bad_compiled_settings_name_what_is_accepted(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        bench.parse_setting(text)
