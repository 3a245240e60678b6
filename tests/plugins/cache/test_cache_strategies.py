"""The contract every cache strategy keeps, on tiny Wan and Flux pipelines built from config."""

import json

import pytest
import torch
from tiny_models import PIPELINES, BlockCounter

import dynaccel

STRATEGIES = ["teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer", "seacache"]
CALIBRATED = {"magcache", "smoothcache"}  # the first generation calibrates in full
PER_BLOCK = {"bwcache", "smoothcache"}  # blocks decide one by one: passes are never skipped whole
# thresholds at which the tiny random models skip a good share of passes
HIGH = {"teacache": 1.0, "fbcache": 1.0, "easycache": 0.5, "magcache": 1.0, "adacache": 1.0, "bwcache": 1.0,
        "smoothcache": 1.0, "taylorseer": 1.0, "seacache": 1.0}


def reused(stats):
    """Passes skipped, or block calls reused for the per-block strategies."""
    return stats["skipped"] + stats.get("blocks_reused", 0)

CASES = [pytest.param(arch, s, id=f"{arch}-{s}") for arch in PIPELINES for s in STRATEGIES]


@pytest.fixture(scope="module")
def pipes():
    made = {arch: make() for arch, (make, _) in PIPELINES.items()}
    yield made


@pytest.fixture(scope="module")
def baselines(pipes):
    return {arch: PIPELINES[arch][1](pipes[arch]) for arch in pipes}


@pytest.fixture
def pipe_of(pipes):
    used = []

    def get(arch):
        used.append(pipes[arch])
        return pipes[arch], PIPELINES[arch][1]

    yield get
    for p in used:
        p.disable_accel()


def _run_accelerated(run, pipe, strategy):
    out = run(pipe)
    if strategy in CALIBRATED:  # the first call calibrates in full
        out = run(pipe)
    return out


@pytest.mark.parametrize("arch,strategy", CASES)
def test_threshold_zero_is_bit_identical(pipe_of, baselines, arch, strategy):
    pipe, run = pipe_of(arch)
    pipe.enable_accel(strategy, threshold=0.0)
    out = _run_accelerated(run, pipe, strategy)
    assert torch.equal(out, baselines[arch])
    assert reused(pipe.accel_stats[strategy]) == 0


@pytest.mark.parametrize("arch,strategy", CASES)
def test_high_threshold_computes_fewer_blocks(pipe_of, baselines, arch, strategy):
    pipe, run = pipe_of(arch)
    plain = BlockCounter(pipe)
    run(pipe)
    plain.remove()
    pipe.enable_accel(strategy, threshold=HIGH[strategy])
    if strategy in CALIBRATED:
        run(pipe)
    counter = BlockCounter(pipe)
    out = run(pipe)
    counter.remove()
    stats = pipe.accel_stats[strategy]
    assert counter.count < plain.count
    assert reused(stats) > 0 and stats["computed"] + stats["skipped"] == stats["passes"] == 20
    if strategy in PER_BLOCK:
        assert stats["blocks_computed"] == counter.count and stats["skipped"] == 0
    assert torch.isfinite(out).all()
    assert not torch.equal(out, baselines[arch])


@pytest.mark.parametrize("arch,strategy", CASES)
def test_disable_restores_bit_identical_output(pipe_of, baselines, arch, strategy):
    pipe, run = pipe_of(arch)
    pipe.enable_accel(strategy, threshold=HIGH[strategy])
    _run_accelerated(run, pipe, strategy)
    assert pipe.disable_accel() == [strategy]
    assert torch.equal(run(pipe), baselines[arch])
    assert pipe.accel_stats == {}


@pytest.mark.parametrize("arch,strategy", CASES)
def test_two_runs_in_a_row_are_identical(pipe_of, arch, strategy):
    pipe, run = pipe_of(arch)
    pipe.enable_accel(strategy, threshold=HIGH[strategy])
    first = _run_accelerated(run, pipe, strategy)
    stats_first = pipe.accel_stats[strategy]
    second = run(pipe)
    assert torch.equal(first, second)
    assert pipe.accel_stats[strategy]["branches"] == stats_first["branches"]


@pytest.mark.parametrize("arch,strategy", CASES)
def test_cfg_with_batch_two_keeps_state_per_branch(pipe_of, arch, strategy):
    pipe, run = pipe_of(arch)

    def run2(p):
        return run(p, batch=2)

    base = run2(pipe)
    pipe.enable_accel(strategy, threshold=0.0)
    assert torch.equal(_run_accelerated(run2, pipe, strategy), base)
    pipe.enable_accel(strategy, threshold=HIGH[strategy])
    out = _run_accelerated(run2, pipe, strategy)
    stats = pipe.accel_stats[strategy]
    assert out.shape == base.shape and torch.isfinite(out).all()
    assert set(stats["branches"]) == {"cond", "uncond"}
    for branch in stats["branches"].values():
        assert branch["computed"] + branch["skipped"] == 10
        assert 0 not in branch["skipped_steps"] and 9 not in branch["skipped_steps"]
    assert reused(stats) > 0


@pytest.mark.parametrize("arch,strategy", CASES)
def test_a_batch_of_identical_samples_decides_like_one_sample(pipe_of, arch, strategy):
    pipe, run = pipe_of(arch)
    pipe.enable_accel(strategy, threshold=HIGH[strategy])

    def run_same(p, batch):
        # the same prompt embedding for every sample: per-sample measures agree, so must the decisions
        return run(p, batch=batch, same_prompt=True)

    single = _run_accelerated(lambda p: run_same(p, 1), pipe, strategy)
    single_stats = pipe.accel_stats[strategy]["branches"]
    double = run_same(pipe, 2)
    assert pipe.accel_stats[strategy]["branches"] == single_stats
    torch.testing.assert_close(double[0], single[0])


@pytest.mark.parametrize("arch", list(PIPELINES))
def test_changing_the_step_count_between_calls(pipe_of, arch):
    pipe, run = pipe_of(arch)
    base6 = run(pipe, steps=6)
    pipe.enable_accel("teacache", threshold=0.0)
    run(pipe, steps=10)
    assert torch.equal(run(pipe, steps=6), base6)
    assert pipe.accel_stats["teacache"]["num_steps"] == 6


def test_enabling_again_replaces_the_same_family(pipe_of, baselines):
    pipe, run = pipe_of("wan")
    first = pipe.enable_accel("teacache", threshold=1.0)
    second = pipe.enable_accel("fbcache", threshold=0.0)
    assert not first.active and second.active
    assert list(pipe.accel_stats) == ["fbcache"]
    assert torch.equal(run(pipe), baselines["wan"])


def test_magcache_calibration_is_saved_and_reused(pipe_of, tmp_path):
    pipe, run = pipe_of("wan")
    path = tmp_path / "ratios.json"
    pipe.enable_accel("magcache", threshold=1.0, ratios_path=str(path))
    run(pipe)
    assert pipe.accel_stats["magcache"]["skipped"] == 0  # calibration run is full compute
    saved = json.loads(path.read_text())
    assert set(saved["data"]) == {"cond", "uncond"} and len(saved["data"]["cond"]) == 10
    accelerated = run(pipe)
    pipe.disable_accel()
    # a fresh enable reads the file: no calibration run, same decisions
    pipe.enable_accel("magcache", threshold=1.0, ratios_path=str(path))
    assert torch.equal(run(pipe), accelerated)
    assert pipe.accel_stats["magcache"]["skipped"] > 0


def test_teacache_reports_coefficient_source(pipe_of):
    pipe, run = pipe_of("flux")
    pipe.enable_accel("teacache", threshold=0.1)
    run(pipe)
    assert pipe.accel_stats["teacache"]["coefficients"] == "published:flux:normal"
    pipe, run = pipe_of("wan")  # a tiny Wan matches no published size: identity fallback
    pipe.enable_accel("teacache", threshold=0.1)
    run(pipe)
    assert pipe.accel_stats["teacache"]["coefficients"] == "fallback:identity"


def test_handle_summary_names_what_was_skipped(pipe_of):
    pipe, run = pipe_of("wan")
    handle = pipe.enable_accel("fbcache", threshold=1.0)
    run(pipe)
    line = handle.summary()
    s = handle.stats
    assert line.startswith(f"fbcache: computed {s['computed']}/20 transformer passes (cond ")


def test_each_generation_logs_what_was_skipped(pipe_of, caplog):
    pipe, run = pipe_of("wan")
    pipe.enable_accel("fbcache", threshold=1.0)
    with caplog.at_level("INFO", logger="dynaccel"):
        run(pipe)
    s = pipe.accel_stats["fbcache"]
    cond, uncond = s["branches"]["cond"]["computed"], s["branches"]["uncond"]["computed"]
    expected = (f"fbcache: computed {s['computed']}/20 transformer passes (cond {cond}/10, uncond {uncond}/10), "
                f"{20 / s['computed']:.2f}x fewer passes")
    assert [r.getMessage() for r in caplog.records if r.name == "dynaccel"] == [expected]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_generation_interrupted_midway_does_not_leak_into_the_next(pipe_of, strategy):
    pipe, run = pipe_of("wan")
    pipe.enable_accel(strategy, threshold=HIGH[strategy])
    clean = _run_accelerated(run, pipe, strategy)

    def stop_at_step_4(p, i, t, kwargs):
        if i == 4:
            raise KeyboardInterrupt("user stopped the generation")
        return kwargs

    with pytest.raises(KeyboardInterrupt):
        pipe(prompt_embeds=torch.randn(1, 8, 32), negative_prompt_embeds=torch.randn(1, 8, 32), height=16, width=16,
             num_frames=5, num_inference_steps=10, output_type="latent", callback_on_step_end=stop_at_step_4)
    assert torch.equal(run(pipe), clean)


def test_an_interrupted_magcache_calibration_is_not_kept(pipe_of):
    pipe, run = pipe_of("wan")
    handle = pipe.enable_accel("magcache", threshold=1.0)

    def stop_at_step_4(p, i, t, kwargs):
        if i == 4:
            raise KeyboardInterrupt
        return kwargs

    with pytest.raises(KeyboardInterrupt):
        pipe(prompt_embeds=torch.randn(1, 8, 32), negative_prompt_embeds=torch.randn(1, 8, 32), height=16, width=16,
             num_frames=5, num_inference_steps=10, output_type="latent", callback_on_step_end=stop_at_step_4)
    run(pipe)  # calibrates in full
    assert handle.stats["skipped"] == 0 and handle.stats["calibrated"]
    run(pipe)
    assert handle.stats["skipped"] > 0


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in PER_BLOCK])
def test_start_and_end_fractions_bound_the_skipped_steps(pipe_of, strategy):
    pipe, run = pipe_of("wan")
    pipe.enable_accel(strategy, threshold=HIGH[strategy], start=0.3, end=0.8)
    _run_accelerated(run, pipe, strategy)
    stats = pipe.accel_stats[strategy]
    skipped = [s for b in stats["branches"].values() for s in b["skipped_steps"]]
    assert skipped and all(3 <= s < 8 for s in skipped)


def test_smoothcache_profile_is_saved_reused_and_checked(pipe_of, tmp_path):
    pipe, run = pipe_of("flux")
    path = tmp_path / "smooth.json"
    pipe.enable_accel("smoothcache", threshold=1.0, calibration_path=str(path))
    run(pipe)
    assert pipe.accel_stats["smoothcache"]["blocks_reused"] == 0 and path.exists()
    profile = json.loads(path.read_text())["data"]
    assert set(profile) == {"cond", "uncond"}
    assert len(profile["cond"]) == 10 and all(len(row) == 3 for row in profile["cond"])  # 10 steps x 3 blocks
    accelerated = run(pipe)
    pipe.enable_accel("smoothcache", threshold=1.0, calibration_path=str(path))  # reads the file: no calibration
    assert torch.equal(run(pipe), accelerated)
    assert pipe.accel_stats["smoothcache"]["blocks_reused"] > 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else", "data": {}}')
    with pytest.raises(dynaccel.ConfigError, match="option 'calibration_path': .* is not a calibration file"):
        pipe.enable_accel("smoothcache", calibration_path=str(bad))
    assert list(pipe.accel_stats) == ["smoothcache"]  # the previous one is still active


def test_bwcache_reports_reuse_per_block(pipe_of):
    pipe, run = pipe_of("wan")
    pipe.enable_accel("bwcache", threshold=1.0)
    run(pipe)
    stats = pipe.accel_stats["bwcache"]
    assert len(stats["reused_per_block"]) == 3 and sum(stats["reused_per_block"]) == stats["blocks_reused"] > 0


def test_taylorseer_forecast_differs_from_plain_reuse(pipe_of):
    # at the largest threshold the schedule is set by warm-up and max_interval alone, so both orders skip the same
    # passes and only what a skipped pass adds (the cached residual, or its forecast) differs
    pipe, run = pipe_of("wan")
    pipe.enable_accel("taylorseer", threshold=2.0, order=0)
    reuse = run(pipe)
    reuse_steps = pipe.accel_stats["taylorseer"]["branches"]
    pipe.enable_accel("taylorseer", threshold=2.0, order=1)
    forecast = run(pipe)
    assert pipe.accel_stats["taylorseer"]["skipped"] > 0
    assert pipe.accel_stats["taylorseer"]["branches"] == reuse_steps
    assert not torch.equal(forecast, reuse)


def test_adacache_reuses_more_with_a_larger_budget(pipe_of):
    pipe, run = pipe_of("wan")
    computed = []
    for threshold in (0.05, 0.2, 1.0):
        pipe.enable_accel("adacache", threshold=threshold)
        run(pipe)
        computed.append(pipe.accel_stats["adacache"]["computed"])
    assert computed[0] >= computed[1] >= computed[2] and computed[0] > computed[2]


@pytest.mark.parametrize("arch", ["wan", "flux"])
def test_magcache_order_forecasts_the_residual_on_the_same_schedule(pipe_of, tmp_path, arch):
    # the magnitude test alone decides; order only changes what a skipped pass adds (reuse, or the linear forecast
    # over the last two computed steps)
    pipe, run = pipe_of(arch)
    path = tmp_path / "ratios.json"
    outs, schedules = {}, {}
    for order in (0, 1, 2):
        pipe.enable_accel("magcache", threshold=1.0, max_skip_steps=2, order=order, ratios_path=str(path))
        outs[order] = _run_accelerated(run, pipe, "magcache") if order == 0 else run(pipe)
        schedules[order] = pipe.accel_stats["magcache"]["branches"]
        assert pipe.accel_stats["magcache"]["skipped"] > 0
    assert schedules[0] == schedules[1] == schedules[2]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    pipe.enable_accel("magcache", threshold=1.0, max_skip_steps=2, ratios_path=str(path))
    assert torch.equal(run(pipe), outs[0])  # order 0 is the default: MagCache's plain reuse


def test_magcache_linear_forecast_is_closer_to_full_compute_on_the_zoo_wan():
    # on the trained tiny-wan, runs of two skipped passes: the residual drifts and the forecast follows it
    from dynaccel.hf_integration import bench

    path = bench.resolve_model("tiny-wan")
    pipe = bench.load_pipeline(path)
    call = bench.generation_defaults("tiny-wan", path)
    prompt = "a green triangle moving right fast"  # not a prompt the zoo presets were calibrated on

    def gen():
        return bench.frames(pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="pt", **call))

    full = gen()
    psnr = {}
    for order in (0, 1):
        pipe.enable_accel(preset="tiny-wan-magcache-47db", order=order)
        out = gen()
        psnr[order] = bench.psnr_of(float(((out - full) ** 2).mean()))
        pipe.disable_accel()
    assert psnr[1] > psnr[0] + 1.0, psnr
