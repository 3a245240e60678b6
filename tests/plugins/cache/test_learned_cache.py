"""learned_cache: recording, training, the predictor file and its checks, and the policy, on tiny Wan and Flux
pipelines built from config (and a calibrate --learn run on one)."""

import json

import pytest
import torch
from tiny_models import PIPELINES, BlockCounter, run_wan, tiny_flux_pipeline, tiny_wan_pipeline

import dynaccel
from dynaccel.core.errors import ConfigError
from dynaccel.plugins.cache import learned_cache as lc

ARCHS = list(PIPELINES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Per architecture: (pipe, run, baseline output, predictor path, training diagnostics, records)."""
    out = {}
    for arch, (make, run) in PIPELINES.items():
        pipe = make()
        base = run(pipe, steps=12)
        handle = pipe.enable_accel("learned_cache", threshold=0.0)
        with handle.record_signals() as records:
            for seed in range(3):
                run(pipe, steps=12, seed=seed)
        assert torch.equal(run(pipe, steps=12), base)  # recording changes nothing
        pipe.disable_accel("learned_cache")
        path = tmp_path_factory.mktemp(arch) / "predictor.safetensors"
        diag = lc.LearnedCache.learn_from(records, path, pipe.transformer, iters=150)
        out[arch] = (pipe, run, base, str(path), diag, records)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_recording_gives_one_series_per_generation_and_branch(trained, arch):
    pipe, run, _, _, _, records = trained[arch]
    series = lc.series(records)
    branches = {"wan": {"cond", "uncond"}, "flux": {"cond", "uncond"}}[arch]
    assert {b for b, _, _ in series} == branches
    assert len(series) == 3 * len(branches)
    for _, n, by_step in series:
        assert n == 12 and sorted(by_step) == list(range(12))
        res, anchor = by_step[5]
        assert res.shape == anchor.shape and res.shape[-1] == lc.model_channels(pipe.transformer)


@pytest.mark.parametrize("arch", ARCHS)
def test_trained_predictor_beats_plain_reuse_on_its_data_and_is_small(trained, arch):
    pipe, _, _, _, diag, _ = trained[arch]
    assert diag["error_learned"] < diag["error_reuse"]
    assert diag["parameters"] == sum(p.numel() for p in lc.Predictor(lc.model_channels(pipe.transformer)).parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_predictor_round_trips_through_safetensors(trained, arch):
    pipe, _, _, path, diag, _ = trained[arch]
    pred, meta = lc.load_predictor(path)
    assert meta["architecture"] == type(pipe.transformer).__name__ and meta["fit"]["examples"] == diag["examples"]
    feats = lc.Predictor.features(torch.tensor([4.0]), torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([12.0]))
    again, _ = lc.load_predictor(path)
    assert torch.equal(pred(feats)[0], again(feats)[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_threshold_zero_with_a_predictor_is_bit_identical(trained, arch):
    pipe, run, base, path, _, _ = trained[arch]
    pipe.enable_accel("learned_cache", threshold=0.0, predictor_path=path)
    try:
        assert torch.equal(run(pipe, steps=12), base)
        assert pipe.accel_stats["learned_cache"]["skipped"] == 0
    finally:
        pipe.disable_accel()


@pytest.mark.parametrize("arch", ARCHS)
def test_skipped_passes_use_the_prediction_not_plain_reuse(trained, arch, tmp_path):
    pipe, run, base, path, _, _ = trained[arch]
    plain = BlockCounter(pipe)
    run(pipe, steps=12)
    plain.remove()
    # the same schedule (threshold too high to bind, so only the cap and the history decide) with two predictors:
    # the trained one and one that is plain reuse (weight 1 on the newest residual)
    pred, meta = lc.load_predictor(path)
    reuse = lc.Predictor(pred.dim, pred.history, pred.hidden)
    reuse.err.load_state_dict(pred.err.state_dict())
    reuse.body.load_state_dict(pred.body.state_dict())
    reuse_path = tmp_path / "reuse.safetensors"
    lc.save_predictor(reuse, reuse_path, {"architecture": meta["architecture"]})
    outs, stats = {}, {}
    for name, p in (("learned", path), ("reuse", str(reuse_path))):
        pipe.enable_accel("learned_cache", threshold=5.0, max_skip=2, predictor_path=p)
        try:
            counter = BlockCounter(pipe)
            outs[name] = run(pipe, steps=12)
            counter.remove()
            stats[name] = pipe.accel_stats["learned_cache"]
        finally:
            pipe.disable_accel()
        assert counter.count < plain.count
    assert stats["learned"]["branches"] == stats["reuse"]["branches"]  # same passes skipped
    assert stats["learned"]["skipped"] > 0
    assert not torch.equal(outs["learned"], outs["reuse"])  # the prediction, not the cached residual, was added
    assert torch.isfinite(outs["learned"]).all()


def test_cfg_branches_follow_the_first_decision(trained):
    pipe, run, _, path, _, _ = trained["wan"]
    pipe.enable_accel("learned_cache", threshold=0.5, max_skip=3, predictor_path=path)
    try:
        run(pipe, steps=12)
        b = pipe.accel_stats["learned_cache"]["branches"]
    finally:
        pipe.disable_accel()
    assert b["cond"]["skipped_steps"] == b["uncond"]["skipped_steps"]


def test_threshold_without_a_predictor_is_refused_naming_the_option():
    pipe = tiny_wan_pipeline()
    with pytest.raises(ConfigError, match="predictor_path.*calibrate --strategy learned_cache --learn"):
        pipe.enable_accel("learned_cache", threshold=0.3)
    assert not pipe.accel_stats  # nothing installed
    assert torch.equal(run_wan(pipe), run_wan(tiny_wan_pipeline()))


def test_bad_predictor_files_are_refused_before_anything_is_installed(trained, tmp_path):
    pipe, run, base, path, _, _ = trained["wan"]
    pickled = tmp_path / "p.pt"
    torch.save({"x": torch.zeros(1)}, pickled)
    not_ours = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(not_ours))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    pred, meta = lc.load_predictor(path)
    wrong_shape = tmp_path / "shape.safetensors"
    state = {k: v for k, v in pred.state_dict().items()}
    state["mix.bias"] = torch.zeros(3)
    info = {"format": lc.FORMAT, "dim": pred.dim, "history": pred.history, "hidden": pred.hidden}
    save_file(state, str(wrong_shape), metadata={"dynaccel": json.dumps(info)})
    cases = [
        (str(tmp_path / "missing.safetensors"), "missing.safetensors"),
        (str(pickled), "not a .safetensors file"),
        (str(not_ours), "not a learned_cache predictor"),
        (str(garbage), "not a readable safetensors file"),
        (str(wrong_shape), "do not match its metadata"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            pipe.enable_accel("learned_cache", threshold=0.3, predictor_path=bad)
        assert not pipe.accel_stats
    assert torch.equal(run(pipe, steps=12), base)


def test_a_predictor_of_another_model_is_refused(trained):
    _, _, _, wan_path, _, _ = trained["wan"]
    flux = tiny_flux_pipeline()
    with pytest.raises(ConfigError, match="trained on a WanTransformer3DModel, not this FluxTransformer2DModel"):
        flux.enable_accel("learned_cache", threshold=0.3, predictor_path=wan_path)
    # the same class with another width: the channel count is checked
    from tiny_models import tiny_wan_transformer

    from diffusers import WanTransformer3DModel

    wide = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                 out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                 cross_attn_norm=True, rope_max_seq_len=32).eval()
    assert lc.model_channels(tiny_wan_transformer()) == 32
    with pytest.raises(ConfigError, match="predicts 32 channels, this WanTransformer3DModel's blocks have 64"):
        dynaccel.enable_accel(wide, "learned_cache", threshold=0.3, predictor_path=wan_path)


def test_calibrate_learn_trains_writes_the_predictor_beside_the_preset_and_the_preset_loads(tmp_path):
    from dynaccel.hf_integration import bench, calibrate
    from tiny_models import save_tiny_wan_folder

    call = {"num_inference_steps": 10, "guidance_scale": 4.0, "height": 16, "width": 16, "num_frames": 5}
    folder = save_tiny_wan_folder(tmp_path / "model", call)
    pipe = bench.load_pipeline(folder)
    with pytest.raises(bench.BenchError, match="has nothing to learn; accepted: learned_cache"):
        calibrate.calibrate(pipe, str(folder), "teacache", ["a"], ["b"], [0], call, 20.0, tmp_path, learn=True)
    with pytest.raises(bench.BenchError, match="needs a trained predictor_path: add --learn"):
        calibrate.calibrate(pipe, str(folder), "learned_cache", ["a"], ["b"], [0], call, 20.0, tmp_path)
    result = calibrate.calibrate(pipe, str(folder), "learned_cache", ["a red cube"], ["a blue ball"], [0], call,
                                 min_psnr=15.0, side_dir=tmp_path, thresholds=[0.2, 1.0], caps=[2],
                                 learn=True, learn_prompts=["a red cube", "a green cone"], timing_repeats=1)
    out = tmp_path / "presets" / "p.json"
    out.parent.mkdir()
    written = calibrate.write_preset(result, out)
    predictor = out.parent / f"{result.preset.name}-predictor.safetensors"
    assert written == [predictor, out] and predictor.exists()
    fit = result.preset.provenance["fit"]
    assert fit["learn_prompts"] == 2 and fit["error_learned"] < fit["error_reuse"]
    preset = dynaccel.Preset.load(out)
    assert preset.config["predictor_path"] == str(predictor.resolve())
    handle = pipe.enable_accel(preset=out)
    try:
        pipe(prompt="a blue ball", generator=torch.Generator().manual_seed(0), output_type="latent", **call)
        assert handle.stats["passes"] == 20
    finally:
        pipe.disable_accel()


def test_gaps_longer_than_trained_fall_back_to_plain_reuse(trained, tmp_path):
    pipe, run, _, path, _, _ = trained["wan"]
    pred, meta = lc.load_predictor(path)
    reuse = lc.Predictor(pred.dim, pred.history, pred.hidden)
    reuse.body.load_state_dict(pred.body.state_dict())
    reuse.err.load_state_dict(pred.err.state_dict())
    short = {"architecture": meta["architecture"], "fit": {"max_gap": 0}}  # "trained" on no gap at all
    outs = []
    for name, p in (("learned", pred), ("reuse", reuse)):
        f = tmp_path / f"{name}.safetensors"
        lc.save_predictor(p, f, short)
        pipe.enable_accel("learned_cache", threshold=5.0, max_skip=2, predictor_path=str(f))
        try:
            outs.append(run(pipe, steps=12))
            assert pipe.accel_stats["learned_cache"]["skipped"] > 0
        finally:
            pipe.disable_accel()
    assert torch.equal(outs[0], outs[1])
