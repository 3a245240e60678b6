"""The robot-policy bench and calibration (dynaccel bench / calibrate --model <π0 folder>), the real-time loop on
the robot tasks and the process policy, on an untrained tiny-pi0-format folder (fast; succeeds on about nothing).
The trained zoo model's numbers are in docs/benchmarks.md; these tests check what the bench computes and reports."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import pi0_models as pm
from robot_sim import require_simulator

from dynaccel.core.errors import ConfigError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return pm.save_random_tiny_pi0(tmp_path_factory.mktemp("pi0") / "tiny-pi0-untrained")


def test_rows_parse_with_combinations_and_the_executor():
    from dynaccel.hf_integration import bench_vla as bv

    assert bv.parse_row("full").label == "full compute" and not bv.parse_row("full").settings
    row = bv.parse_row("vla_cache:max_reuse=0.5+denoise_steps:steps=4+async:chunk_threshold=0.75,aggregate=latest")
    assert [s.strategy for s in row.settings] == ["vla_cache", "denoise_steps"]
    assert row.settings[1].config == {"steps": 4}
    assert row.executor == {"chunk_threshold": 0.75, "aggregate": "latest"}
    with pytest.raises(ConfigError, match="family 'cache'"):
        bv.parse_row("teacache+fbcache")
    with pytest.raises(ConfigError, match="not a dynaccel strategy"):
        bv.parse_row("diffusers:fbcache")
    with pytest.raises(ConfigError, match="key=value"):
        bv.parse_row("async:fast")
    with pytest.raises(ConfigError, match="steps"):
        bv.parse_row("denoise_steps:steps=-2")
    assert bv.jerk(np.zeros((3, 4))) == 0.0
    ramp = np.arange(10, dtype=float)[:, None] ** 3  # third difference of t^3 is 6 everywhere
    assert bv.jerk(ramp) == pytest.approx(36.0)


def test_default_rows_use_the_models_presets_and_parse(folder):
    from dynaccel.core.registry import get_registry
    from dynaccel.hf_integration import bench_vla as bv

    rows = bv.default_rows("tiny-pi0")
    names = get_registry().presets
    assert rows[0] == "full" and rows[-2:] == ["async", "preset:tiny-pi0-denoise-steps+async"]
    assert "tiny-pi0-denoise-steps" in names and "preset:tiny-pi0-vla-cache+preset:tiny-pi0-denoise-steps" in rows
    assert "vla_cache:task_relevant=0.0,layer_adaptive=false" in rows  # the paper's naive reuse, for contrast
    for row in rows:  # every row is a valid bench row: its presets exist and their configs check
        bv.parse_row(row)
    # a folder without presets: each strategy at its defaults, the same shape
    plain = bv.default_rows(str(folder))
    assert plain[-3:] == ["vla_cache+denoise_steps:steps=5", "async", "denoise_steps:steps=5+async"]
    assert not any(r.startswith("preset:") for r in plain)


def test_the_bench_reports_every_column_for_each_row(folder, tmp_path):
    require_simulator()
    from dynaccel.hf_integration import bench_vla as bv

    rows = bv.run(folder, [bv.parse_row(x) for x in ("full", "denoise_steps:steps=2", "async:worker=thread")],
                  episodes=1, tasks=["reach"], control_hz=400.0, realtime_episodes=1, progress=False)
    full, fewer, asynchronous = rows
    for r in rows:
        assert r.episodes == 1 and set(r.success) == {"reach"} and r.inferences > 0
        assert r.latency_ms > 0 and r.jerk >= 0
        assert r.control_hz is not None and 0 < r.control_hz <= 400.0 * 1.05
        assert r.realtime_episodes == 1
    assert full.speedup == pytest.approx(1.0)
    assert fewer.stats["denoise_steps"]["steps_per_inference"] == 2
    assert asynchronous.executor == {"worker": "thread"} and asynchronous.settings == []
    json_path, png_path = bv.write_results(tmp_path, rows, {"model": "untrained", "machine": {}})
    data = json.loads(json_path.read_text())
    assert [r["label"] for r in data["rows"]] == ["full compute", "denoise_steps:steps=2", "async:worker=thread"]
    assert png_path.stat().st_size > 1000
    assert "ctrl Hz" in bv.format_table(rows)


def test_cli_bench_on_a_policy_folder(folder, tmp_path, capsys):
    require_simulator()
    from dynaccel.core.cli import main

    main(["bench", "--model", folder, "--episodes", "1", "--task", "push", "-s", "full",
          "-s", "denoise_steps:steps=3+fbcache:threshold=0.5", "--control-hz", "400",
          "--realtime-episodes", "0", "--out", str(tmp_path / "b")])
    assert "denoise_steps:steps=3 + fbcache:threshold=0.5" in capsys.readouterr().out
    assert (tmp_path / "b" / "bench.json").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", folder, "-s", "teacache+fbcache", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2 and "one per family" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_calibration_refuses_when_full_compute_never_succeeds(folder):
    require_simulator()
    from dynaccel.hf_integration import bench_vla as bv
    from dynaccel.hf_integration import calibrate_vla as cv

    with pytest.raises(bv.BenchError, match="no success rate to keep"):
        cv.calibrate(folder, "denoise_steps", episodes=1, tasks=["push"], grid=[2], progress=False)
    with pytest.raises(ConfigError, match="min_success"):
        cv.calibrate(folder, "denoise_steps", min_success=1.5)


def test_a_policy_folder_that_is_not_one(tmp_path):
    from dynaccel.hf_integration import bench_vla as bv

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "pi0"}))
    assert bv.is_policy_model(str(tmp_path))
    with pytest.raises(bv.BenchError, match="norm_stats.json"):
        bv.resolve_policy(str(tmp_path))
    assert not bv.is_policy_model(str(tmp_path / "missing"))


def test_the_process_policy_answers_like_the_policy_in_process(folder):
    require_simulator()
    from dynaccel.hf_integration.async_chunks import ProcessPolicy
    from dynaccel.hf_integration.bench_vla import build_policy_run
    from dynaccel.zoo import robot_tasks as rt

    with rt.RobotSim() as sim:
        observation = sim.reset("reach", rt.HELDOUT_START)
    local = build_policy_run(folder, [("denoise_steps", {"steps": 3})])
    with ProcessPolicy(functools.partial(build_policy_run, folder, [("denoise_steps", {"steps": 3})])) as remote:
        assert remote.pid > 0
        np.testing.assert_array_equal(remote(observation), local(observation))
    with pytest.raises(RuntimeError, match="closed"):
        remote(observation)
    with pytest.raises(RuntimeError, match="could not build the policy: .*no-such-folder"):
        ProcessPolicy(functools.partial(build_policy_run, "/no-such-folder", []))
    with pytest.raises(ValueError, match="cannot be sent to another process"):
        ProcessPolicy(lambda: local)


def test_realtime_episodes_sync_and_async(folder):
    require_simulator()
    from dynaccel.hf_integration.bench_vla import build_policy_run
    from dynaccel.zoo import realtime
    from dynaccel.zoo import robot_tasks as rt

    policy = build_policy_run(folder, [])
    with rt.RobotSim() as sim:
        sync = realtime.run_episode(policy, sim, "reach", rt.HELDOUT_START, control_hz=400)
        rendered = sim.frames_rendered
        fast = realtime.run_episode(policy, sim, "reach", rt.HELDOUT_START, control_hz=400,
                                    executor={"chunk_threshold": 0.5, "skip_similar": 1e-9})
    limit = rt.task("reach").max_steps
    for r in (sync, fast):
        assert r["steps"] == limit == len(r["actions"]) and np.abs(r["actions"]).max() <= 1.0
        assert len(r["policy_seconds"]) == r["inferences"] > 0
        assert r["control_hz"] <= 400 * 1.05
    assert sync["inferences"] == rendered == -(-limit // 8)  # one frame and one chunk of 8 per inference
    assert sync["waits"] == sync["inferences"]  # synchronous: the robot waits at every inference


def test_the_demo_robot_tab_runs_two_rollouts(folder, tmp_path):
    require_simulator()
    from dynaccel.hf_integration import demo_vla

    base, fast = demo_vla.compare(folder, "reach", 1_000_003, "denoise_steps:steps=2")
    assert base.label == "full compute" and fast.label == "denoise_steps:steps=2"
    for r in (base, fast):
        assert len(r.frames) == r.steps + 1 and r.frames[0].shape == (64, 64, 3)
        assert len(r.latencies) == -(-r.steps // 8)
    gif = demo_vla.write_video(fast, tmp_path, "fast")
    assert gif.stat().st_size > 1000
    text = demo_vla.results_markdown(base, fast, "reach", 1_000_003)
    assert "| denoise_steps:steps=2 |" in text and "median latency" in text
    assert set(demo_vla.metrics(base, fast)) == {"full compute", "denoise_steps:steps=2"}
    with pytest.raises(ConfigError, match="held"):
        demo_vla.compare(folder, "reach", 5, "full")  # a fit seed
    with pytest.raises(ConfigError, match="task 'fly'"):
        demo_vla.compare(folder, "fly", 1_000_000, "full")
    with pytest.raises(ConfigError, match="async"):
        demo_vla.compare(folder, "reach", 1_000_000, "async")
    import dynaccel

    assert not dynaccel.active_handles(demo_vla.get_policy(folder).model)  # nothing left enabled


def test_a_policy_preset_on_the_hub_says_how_its_success_was_measured():
    from dynaccel.core.presets import Preset
    from dynaccel.hf_integration.hub import model_card

    preset = Preset(name="tiny-pi0-denoise-steps", strategy="denoise_steps", config={"steps": 4},
                    architecture="PI0ForConditionalGeneration", model_id="tiny-pi0",
                    provenance={"source": "dynaccel calibrate", "min_success": 0.95, "searched": "steps",
                                "fit_episodes": 40, "date": "2026-12-04", "machine": {"device": "cpu"},
                                "measured": {"heldout_success": 0.85, "heldout_full_success": 0.875,
                                             "heldout_episodes": 40, "latency_speedup": 2.1}})
    card = model_card([preset], "org/presets")
    assert "| 2.10x |" in card and "85.0% (87.5%)" in card
    assert "closed loop" in card and ">= 0.95 of full compute's" in card and "PSNR over all frames" not in card


def test_the_process_policy_example_of_the_docs_runs(capsys):
    require_simulator()
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "vla_async.md").read_text()
    section = text.split("## The policy in its own process\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/vla_async.md", "exec"), {})
    assert capsys.readouterr().out == "True True\n"
