"""The contract of the sparse-attention strategies on tiny Wan (pipeline), HunyuanVideo and CogVideoX (models)."""

import pytest
import torch
from tiny_models import (
    TEXT_DIM,
    _embeds,
    _gen,
    cogvideox_inputs,
    hunyuan_inputs,
    tiny_cogvideox_transformer,
    tiny_flux_transformer,
    tiny_hunyuan_transformer,
    tiny_wan_pipeline,
)

import dynaccel
from dynaccel.core.errors import ConfigError, UnsupportedModelError

STRATEGIES = ["sliding_tile", "radial", "svg", "pasa"]
# the setting of each strategy that is exactly dense attention, and one that is sparse on these tiny grids
DENSE = {
    "sliding_tile": dict(radius_frames=1000, radius_height=1000, radius_width=1000),
    "radial": dict(dense_frames=1000),
    "svg": dict(frame_window=1000),
    "pasa": dict(density=1.0),
}
SPARSE = {
    "sliding_tile": dict(radius_frames=0, radius_height=1, radius_width=0),
    "radial": dict(dense_frames=0, window=0),
    "svg": dict(),
    "pasa": dict(density=0.25, max_density=0.4),
}
# within float tolerance: the sparse path with a full mask vs the model's own attention (float32 models)
FORCED_TOL = dict(rtol=1e-4, atol=1e-5)


def run_wan(pipe, steps=6):
    """128x128 px, 9 frames -> a (3, 8, 8) token grid: 192 video tokens, 12 blocks of 16."""
    return pipe(
        prompt_embeds=_embeds(1, 11, 8, TEXT_DIM), negative_prompt_embeds=_embeds(1, 12, 8, TEXT_DIM),
        height=128, width=128, num_frames=9, num_inference_steps=steps, guidance_scale=5.0,
        output_type="latent", generator=torch.Generator().manual_seed(0),
    ).frames


class Arch:
    def __init__(self, name):
        self.name = name
        if name == "wan":
            self.target = tiny_wan_pipeline()
            self.model = self.target.transformer
        else:
            make, inputs = {
                "hunyuan": (tiny_hunyuan_transformer, hunyuan_inputs),
                "cogvideox": (tiny_cogvideox_transformer, cogvideox_inputs),
            }[name]
            self.target = self.model = make()
            self.inputs = inputs()
            # (B, C, F, H, W) for HunyuanVideo, (B, F, C, H, W) for CogVideoX: a (4, 8, 8) grid of 256 tokens
            shape = (2, 4, 4, 16, 16)
            self.inputs["hidden_states"] = torch.randn(*shape, generator=_gen(5))

    def run(self):
        if self.name == "wan":
            return run_wan(self.target)
        with torch.no_grad():
            return self.model(**self.inputs, return_dict=False)[0]

    def processors(self):
        return [m.processor for m in dynaccel.core.registry.get_registry().find_adapter(self.model).self_attention_modules()]


ARCHS = ["wan", "hunyuan", "cogvideox"]
CASES = [pytest.param(a, s, id=f"{a}-{s}") for a in ARCHS for s in STRATEGIES]


@pytest.fixture(scope="module")
def archs():
    made = {a: Arch(a) for a in ARCHS}
    for a in made.values():
        a.baseline = a.run()
    return made


@pytest.fixture
def arch_of(archs):
    used = []

    def get(name):
        used.append(archs[name])
        return archs[name]

    yield get
    for a in used:
        dynaccel.disable_accel(a.target)


def enable(a, strategy, **kw):
    return dynaccel.enable_accel(a.target, strategy, block_size=16, **kw)


@pytest.mark.parametrize("arch,strategy", CASES)
def test_dense_setting_is_bit_identical(arch_of, arch, strategy):
    a = arch_of(arch)
    h = enable(a, strategy, **DENSE[strategy])
    assert torch.equal(a.run(), a.baseline)
    s = h.stats
    assert s["sparse_calls"] == 0 and s["dense_calls"] > 0 and s["mean_density"] == 1.0


@pytest.mark.parametrize("arch,strategy", CASES)
def test_sparse_path_with_a_full_mask_matches_dense_within_tolerance(arch_of, arch, strategy):
    a = arch_of(arch)
    _assert_forced_full_mask_matches_dense(a, enable(a, strategy, **DENSE[strategy]))


def _assert_forced_full_mask_matches_dense(a, h):
    # the processors' own q/k/v/RoPE/text handling + kernel, forced to run with the dense setting's full mask
    next(iter(h.parts.values())).engine.policy.full = lambda grid, step: False
    out = a.run()
    assert h.stats["sparse_calls"] > 0 and h.stats["mean_density"] == pytest.approx(1.0)
    torch.testing.assert_close(out, a.baseline, **FORCED_TOL)


@pytest.mark.parametrize("arch,strategy", CASES)
def test_sparse_setting_skips_blocks_and_disable_restores(arch_of, arch, strategy):
    a = arch_of(arch)
    before = a.processors()
    h = enable(a, strategy, **SPARSE[strategy])
    assert all(type(p).__name__.endswith("SparseProcessor") for p in a.processors())
    out = a.run()
    s = h.stats
    assert s["sparse_calls"] > 0 and 0 < s["mean_density"] < 0.9
    assert not torch.equal(out, a.baseline) and torch.isfinite(out).all()
    dynaccel.disable_accel(a.target)
    assert a.processors() == before
    assert torch.equal(a.run(), a.baseline)


def test_dense_steps_warm_up_then_sparse(arch_of):
    a = arch_of("wan")
    h = enable(a, "sliding_tile", dense_steps=2, **SPARSE["sliding_tile"])
    a.run()
    per_step = h.stats["density_per_step"]
    assert h.stats["steps"] == 6 and per_step[0] == per_step[1] == 1.0 and all(per_step[s] < 1 for s in range(2, 6))


def test_pasa_budget_follows_the_step_and_stays_in_range(arch_of):
    a = arch_of("wan")
    h = enable(a, "pasa", density=0.2, max_density=0.6, gain=2.0)
    a.run()
    budgets = h.stats["budget_per_step"]
    assert list(budgets) == list(range(6)) and budgets[0] == budgets[1] == 0.6
    assert all(0.2 <= b <= 0.6 for b in budgets.values()) and len(set(budgets.values())) > 1


def test_pasa_noise_changes_the_selection_but_is_reproducible(arch_of):
    a = arch_of("wan")
    enable(a, "pasa", density=0.25, max_density=0.25, noise=1.0, seed=1)
    o1, o2 = a.run(), a.run()
    enable(a, "pasa", density=0.25, max_density=0.25, noise=1.0, seed=2)
    o3 = a.run()
    assert torch.equal(o1, o2) and not torch.equal(o1, o3)


def test_svg_classifies_heads(arch_of):
    a = arch_of("hunyuan")
    h = enable(a, "svg")
    a.run()
    share = h.stats["spatial_head_share"]
    assert share is not None and 0.0 <= share <= 1.0


def test_composes_with_teacache_in_one_pipeline(arch_of):
    a = arch_of("wan")
    dynaccel.enable_accel(a.target, "teacache", threshold=0.0)
    enable(a, "sliding_tile", **DENSE["sliding_tile"])
    assert torch.equal(a.run(), a.baseline)  # both at their exact settings
    tea = dynaccel.enable_accel(a.target, "teacache", threshold=1.0)
    sta = enable(a, "sliding_tile", **SPARSE["sliding_tile"])
    out = a.run()
    stats = dynaccel.accel_stats(a.target)
    assert set(stats) == {"teacache", "sliding_tile"}
    assert tea.stats["skipped"] > 0 and sta.stats["sparse_calls"] > 0
    assert not torch.equal(out, a.baseline)
    dynaccel.disable_accel(a.target)
    assert torch.equal(a.run(), a.baseline)


@pytest.mark.parametrize(
    ("strategy", "kwargs", "match"),
    [
        ("sliding_tile", dict(block_size=24), r"option 'block_size': got 24 .*accepted: one of 8, 16, 32, 64, 128"),
        ("pasa", dict(block_size=8, backend="triton"),
         r"option 'block_size': got 8 with backend='triton'; accepted: block_size >= 16 .*or backend 'torch' or 'auto'"),
        ("sliding_tile", dict(radius_frames=-1), r"option 'radius_frames': got -1 .*accepted: int with 0 <= radius_frames"),
        ("radial", dict(window=1.5), r"option 'window': got 1.5 \(type float\)"),
        ("svg", dict(sample_rows=0), r"option 'sample_rows': got 0"),
        ("pasa", dict(density=1.5), r"option 'density': got 1.5 .*accepted: float with 0.0 <= density <= 1.0"),
        ("pasa", dict(budget=0.3), r"unknown option 'budget' for strategy 'pasa'"),
        ("svg", dict(backend="cuda"), r"option 'backend': got 'cuda' .*one of 'auto', 'triton', 'torch'"),
    ],
    ids=["block", "block8-triton", "radius", "window-type", "rows", "density", "unknown", "backend"],
)
def test_bad_config_is_refused_and_leaves_the_model_unchanged(arch_of, strategy, kwargs, match):
    a = arch_of("wan")
    before = a.processors()
    with pytest.raises(ConfigError, match=match):
        dynaccel.enable_accel(a.target, strategy, **kwargs)
    assert a.processors() == before and not dynaccel.active_handles(a.target)


def test_failure_while_installing_leaves_the_model_unchanged(arch_of, monkeypatch):
    from dynaccel.plugins.adapters.diffusers_models import WanAdapter

    a = arch_of("wan")
    before = a.processors()
    real = WanAdapter.sparse_attention_processor

    def flaky(self, module, original, router, index):
        if index == 2:
            raise RuntimeError("boom")
        return real(self, module, original, router, index)

    monkeypatch.setattr(WanAdapter, "sparse_attention_processor", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        enable(a, "sliding_tile")
    assert a.processors() == before
    assert torch.equal(a.run(), a.baseline)


def test_model_without_video_self_attention_is_refused():
    with pytest.raises(UnsupportedModelError) as info:
        dynaccel.enable_accel(tiny_flux_transformer(), "sliding_tile")
    msg = str(info.value)
    assert "FluxTransformer2DModel" in msg
    for arch in ("WanTransformer3DModel", "HunyuanVideoTransformer3DModel", "CogVideoXTransformer3DModel"):
        assert arch in msg


def test_strategies_are_registered_with_papers():
    for name in STRATEGIES:
        info = dynaccel.strategy_info(name)
        assert info["family"] == "sparse_attention" and "arXiv" in info["paper"]


def test_documented_sparse_attention_example_runs():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "strategies.md").read_text()
    section = doc.split("## Sparse attention\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "docs/strategies.md (Sparse attention)", "exec"), scope)
    assert scope["sta"].stats["sparse_calls"] > 0 and not scope["sta"].active


def test_steps_follow_the_timestep_given_positionally(arch_of):
    # CogVideoX takes (hidden_states, encoder_hidden_states, timestep): the step counter must read the timestep
    a = arch_of("cogvideox")
    h = enable(a, "sliding_tile", dense_steps=1, **SPARSE["sliding_tile"])
    x = a.inputs
    with torch.no_grad():
        for t in (999, 999, 500):  # two CFG-like calls at one timestep, then the next step
            a.model(x["hidden_states"], x["encoder_hidden_states"], torch.full((2,), t), return_dict=False)
    s = h.stats
    assert s["steps"] == 2 and s["density_per_step"][0] == 1.0 and s["density_per_step"][1] < 1.0


def test_pasa_head_allocation_spends_the_budget_unevenly_across_rows(arch_of, monkeypatch):
    from dynaccel.plugins.sparse_attention import engine as engine_mod

    seen = []
    real = engine_mod.SparseAttentionEngine._run_pass

    def spy(self, p, *args):
        seen.append(p.block_mask)
        return real(self, p, *args)

    monkeypatch.setattr(engine_mod.SparseAttentionEngine, "_run_pass", spy)
    a = arch_of("wan")
    enable(a, "pasa", density=0.25, max_density=0.25, allocation="head")
    a.run()
    per_row = torch.stack([m[..., :12].sum(-1) for m in seen])  # key blocks kept per query block (12 video blocks)
    per_head = per_row.sum(-1)
    assert (per_head == per_head.flatten()[0]).all()  # the same budget for every head: ceil(0.25 * 144) = 36 pairs
    assert int(per_head.flatten()[0]) == 36
    assert per_row.min() < per_row.max()  # but not the same number per row
    enable(a, "pasa", density=0.25, max_density=0.25, allocation="row")
    seen.clear()
    a.run()
    assert all((m[..., :12].sum(-1) == 3).all() for m in seen)  # ceil(0.25 * 12) = 3 per row


# ---- remainder="pooled": skipped key blocks still contribute through their mean key and value

POOLED_CASES = [pytest.param(a, s, id=f"{a}-{s}") for a in ARCHS for s in ("sliding_tile", "pasa")]


@pytest.mark.parametrize("arch,strategy", POOLED_CASES)
def test_pooled_remainder_keeps_the_sparsity_and_moves_towards_dense(arch_of, arch, strategy):
    a = arch_of(arch)
    drop = enable(a, strategy, **SPARSE[strategy])
    out_drop = a.run()
    s_drop = drop.stats
    pooled = enable(a, strategy, remainder="pooled", **SPARSE[strategy])
    out_pooled = a.run()
    s = pooled.stats
    assert s["remainder"] == "pooled" and s["sparse_calls"] == s_drop["sparse_calls"] > 0
    assert s["mean_density"] == pytest.approx(s_drop["mean_density"])  # the same blocks are computed exactly
    # plus one pooled key row per skipped block of 16 keys
    assert s["mean_work"] == pytest.approx(s["mean_density"] + (1 - s["mean_density"]) / 16)
    assert s_drop["mean_work"] == pytest.approx(s_drop["mean_density"])
    assert torch.isfinite(out_pooled).all() and not torch.equal(out_pooled, out_drop)
    err_drop = (out_drop - a.baseline).pow(2).mean()
    err_pooled = (out_pooled - a.baseline).pow(2).mean()
    assert err_pooled < err_drop


@pytest.mark.parametrize("arch", ARCHS)
def test_pooled_remainder_dense_setting_is_bit_identical(arch_of, arch):
    a = arch_of(arch)
    h = enable(a, "pasa", remainder="pooled", **DENSE["pasa"])
    assert torch.equal(a.run(), a.baseline) and h.stats["sparse_calls"] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_pooled_remainder_with_a_full_mask_matches_dense_within_tolerance(arch_of, arch):
    a = arch_of(arch)
    h = enable(a, "sliding_tile", remainder="pooled", **DENSE["sliding_tile"])
    next(iter(h.parts.values())).engine.policy.full = lambda grid, step: False
    out = a.run()
    assert h.stats["sparse_calls"] > 0 and h.stats["mean_work"] == pytest.approx(1.0)
    torch.testing.assert_close(out, a.baseline, **FORCED_TOL)


def test_a_pass_for_some_heads_leaves_the_other_heads_to_other_passes(arch_of):
    # svg splits heads between two passes; with the pooled remainder a refused row is not empty, so the engine must
    # zero each pass outside its heads (else the passes' sum would count pooled keys twice)
    from dynaccel.plugins.sparse_attention.engine import Pass
    from dynaccel.plugins.sparse_attention.masks import spatial_head_mask

    a = arch_of("wan")
    h = enable(a, "svg", remainder="pooled")
    engine = next(iter(h.parts.values())).engine
    plan = spatial_head_mask((3, 8, 8), 0, 16)
    q, k, v = (torch.randn(1, 192, 4, 16, generator=_gen(i)) for i in (1, 2, 3))
    heads = torch.tensor([[True, False, True, False]])
    full = engine._run_pass(Pass(plan, plan.block_mask[None]), q, k, v, 192, None)
    only = Pass(plan, plan.block_mask[None] & heads[:, :, None, None], heads=heads)
    part = engine._run_pass(only, q, k, v, 192, None)
    assert torch.equal(part[:, :, heads[0]], full[:, :, heads[0]])
    assert torch.count_nonzero(part[:, :, ~heads[0]]) == 0


def test_svg_with_the_pooled_remainder_runs_both_head_kinds(arch_of):
    a = arch_of("hunyuan")
    h = enable(a, "svg", remainder="pooled")
    out = a.run()
    assert torch.isfinite(out).all() and h.stats["sparse_calls"] > 0
    assert 0.0 <= h.stats["spatial_head_share"] <= 1.0


def test_density_per_run_keeps_one_entry_per_generation(arch_of):
    a = arch_of("wan")
    h = enable(a, "pasa", density=0.2, max_density=0.6, gain=2.0)
    a.run()
    first = h.stats["mean_density"]
    a.run()
    runs = h.stats["density_per_run"]
    assert len(runs) == 2 and runs[0] == pytest.approx(first) and runs[1] == pytest.approx(h.stats["mean_density"])
    assert h.stats["work_per_run"] == pytest.approx(runs)  # remainder="drop": no pooled rows


# ---- 8-token blocks (a finer selection for tiny models; the torch path)


def enable8(a, strategy, **kw):
    return dynaccel.enable_accel(a.target, strategy, block_size=8, **kw)


# 8-token tiles: 1x2x4 for the static patterns, 2x2x2 for pasa (the tiny-wan pick)
TILES_8 = {
    "sliding_tile": dict(tile_frames=1, tile_height=2, tile_width=4),
    "radial": dict(tile_height=2, tile_width=4),
    "svg": dict(),
    "pasa": dict(tile_frames=2, tile_height=2, tile_width=2),
}


@pytest.mark.parametrize("arch,strategy", CASES)
def test_block_8_dense_setting_is_bit_identical(arch_of, arch, strategy):
    a = arch_of(arch)
    h = enable8(a, strategy, **TILES_8[strategy], **DENSE[strategy])
    assert torch.equal(a.run(), a.baseline) and h.stats["sparse_calls"] == 0


@pytest.mark.parametrize("arch,strategy", CASES)
@pytest.mark.parametrize("remainder", ["drop", "pooled"])
def test_block_8_sparse_path_with_a_full_mask_matches_dense_within_tolerance(arch_of, arch, strategy, remainder):
    a = arch_of(arch)
    _assert_forced_full_mask_matches_dense(
        a, enable8(a, strategy, remainder=remainder, **TILES_8[strategy], **DENSE[strategy])
    )


@pytest.mark.parametrize("arch,strategy", CASES)
def test_block_8_sparse_setting_skips_blocks_and_disable_restores(arch_of, arch, strategy):
    a = arch_of(arch)
    before = a.processors()
    h = enable8(a, strategy, remainder="pooled", **TILES_8[strategy], **SPARSE[strategy])
    out = a.run()
    s = h.stats
    assert s["sparse_calls"] > 0 and 0 < s["mean_density"] < 0.9
    # one pooled key row per skipped block of 8 keys
    assert s["mean_work"] == pytest.approx(s["mean_density"] + (1 - s["mean_density"]) / 8)
    assert not torch.equal(out, a.baseline) and torch.isfinite(out).all()
    dynaccel.disable_accel(a.target)
    assert a.processors() == before and torch.equal(a.run(), a.baseline)


@pytest.mark.parametrize("arch", ["wan", "hunyuan"])
def test_block_8_pasa_keeps_its_share_of_8_token_blocks_per_row(arch_of, arch, monkeypatch):
    from dynaccel.plugins.sparse_attention import engine as engine_mod

    seen = []
    real = engine_mod.SparseAttentionEngine._run_pass

    def spy(self, p, *args):
        seen.append((p.plan.block_size, p.block_mask))
        return real(self, p, *args)

    monkeypatch.setattr(engine_mod.SparseAttentionEngine, "_run_pass", spy)
    a = arch_of(arch)
    nv_blocks = {"wan": 192, "hunyuan": 256}[arch] // 8  # (3, 8, 8) and (4, 8, 8) grids
    enable8(a, "pasa", density=0.25, max_density=0.25, **TILES_8["pasa"])
    a.run()
    assert seen and all(bs == 8 for bs, _ in seen)
    keep = -(-nv_blocks // 4)  # ceil(0.25 * blocks)
    for _, m in seen:
        assert m.shape[-2] == nv_blocks and (m[..., :nv_blocks].sum(-1) == keep).all()
        assert m[..., nv_blocks:].all()  # text key blocks always attended
