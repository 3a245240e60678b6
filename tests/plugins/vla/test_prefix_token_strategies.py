"""The token family on a robot policy's prefix (π0 and π0.5, tiny configs): fastv, visionzip and layer_skip through
the policy adapter. What each keeps or skips is checked against an independent computation; dropped image tokens
are never attended to; a skipped prefix layer still hands the expert the keys and values of its input."""

from __future__ import annotations

import pytest
import torch

import dynaccel
from dynaccel.core.errors import ConfigError, StackingError

import pi0_models as pm

KINDS = ("pi0", "pi05")


def scramble_dropped(policy, dropped, layers):
    """A pre-hook on every expert pass that fills the dropped positions' prefix-cache entries with noise."""

    def hook(module, args, kwargs):
        g = torch.Generator().manual_seed(len(dropped))
        for i in layers:
            layer = kwargs["cache"].layers[i]
            layer.keys[:, :, dropped] = torch.randn(layer.keys[:, :, dropped].shape, generator=g) * 10
            layer.values[:, :, dropped] = torch.randn(layer.values[:, :, dropped].shape, generator=g) * 10

    return policy.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("kind", KINDS)
def test_fastv_on_a_policy_is_prefix_prune_without_diversity(kind):
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    dynaccel.enable_accel(policy, "prefix_prune", keep_ratio=0.5, layer=1)
    pruned = pm.sample(policy, inp)
    dynaccel.disable_accel(policy)
    handle = dynaccel.enable_accel(policy, "fastv", keep_ratio=0.5, layer=1)
    assert torch.equal(pm.sample(policy, inp), pruned)
    assert handle.family == "token_pruning" and handle.stats["layer"] == 1
    dynaccel.disable_accel(policy)


def _vision_attention_received(policy, inp):
    """Attention each patch receives in the vision tower's last layer, averaged over queries and heads, computed
    by hand from that layer's input (eager softmax, no kernel of ours)."""
    tower = policy.model.vlm.vision_tower
    attn = getattr(tower, "vision_model", tower).encoder.layers[-1].self_attn
    seen = {}
    hook = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(hs=kw["hidden_states"]), with_kwargs=True)
    try:
        pm.sample(policy, inp)
    finally:
        hook.remove()
    hs = seen["hs"]
    b, n, _ = hs.shape
    q = attn.q_proj(hs).view(b, n, attn.num_heads, -1).transpose(1, 2)
    k = attn.k_proj(hs).view(b, n, attn.num_heads, -1).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # (B, H, N, N)
    return probs.mean(1).mean(1)  # (B, N): received, averaged over heads and queries


@pytest.mark.parametrize("kind", KINDS)
def test_visionzip_keeps_the_patches_the_vision_tower_attends_to_most(kind):
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    with torch.no_grad():
        received = _vision_attention_received(policy, inp)[0]
    handle = dynaccel.enable_accel(policy, "visionzip", keep_ratio=0.5, contextual=0.0)
    pm.sample(policy, inp)
    top = set(torch.topk(received, pm.IMAGE_TOKENS // 2).indices.tolist())
    assert set(handle.stats["last_kept_positions"]) == top  # image tokens sit at prefix positions 0..15
    merged = dynaccel.enable_accel(policy, "visionzip", keep_ratio=0.5, contextual=0.25)
    pm.sample(policy, inp)
    kept = set(merged.stats["last_kept_positions"])
    assert merged.stats["last_contextual_tokens"] == 2 and len(kept) == pm.IMAGE_TOKENS // 2
    assert set(torch.topk(received, pm.IMAGE_TOKENS // 2 - 2).indices.tolist()) <= kept and kept != top
    dynaccel.disable_accel(policy)


@pytest.mark.parametrize("kind", KINDS)
def test_visionzip_dropped_tokens_are_never_attended_to(kind):
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    handle = dynaccel.enable_accel(policy, "visionzip", keep_ratio=0.25, contextual=0.25)
    clean = pm.sample(policy, inp)
    dropped = sorted(set(range(pm.IMAGE_TOKENS)) - set(handle.stats["last_kept_positions"]))
    assert len(dropped) == pm.IMAGE_TOKENS - pm.IMAGE_TOKENS // 4
    hook = scramble_dropped(policy, dropped, layers=(0, 1))
    try:
        assert torch.equal(pm.sample(policy, inp), clean)
    finally:
        hook.remove()
    dynaccel.disable_accel(policy)
    hook = scramble_dropped(policy, dropped, layers=(0, 1))
    try:  # the check can fail: without the strategy the scrambled entries change the actions
        assert not torch.equal(pm.sample(policy, inp), pm.sample(pm.model(kind), inp))
    finally:
        hook.remove()


@pytest.mark.parametrize("kind", KINDS)
def test_skipping_the_last_prefix_layer_is_free(kind):
    """The expert reads the prefix's keys and values only; the last layer's output is never read. Skipped, it
    still caches the keys and values of its input: the actions are bit-identical, with half the layers run."""
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    ref = pm.sample(policy, inp)
    handle = dynaccel.enable_accel(policy, "layer_skip", keep_ratio=0.5)
    calls = []
    hook = policy.model.vlm.language_model.layers[1].mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert torch.equal(pm.sample(policy, inp), ref)
    finally:
        hook.remove()
    assert calls == [] and handle.stats["skipped_layers"] == [1] and handle.stats["computed_fraction"] == 0.5
    dynaccel.disable_accel(policy)
    assert "forward" not in policy.model.vlm.language_model.layers[1].__dict__


@pytest.mark.parametrize("kind", KINDS)
def test_layer_skip_measures_on_the_first_inference_and_skips_the_most_redundant_layers_after(kind):
    policy = pm.model(kind, prefix_layers=5, expert_layers=5)  # expert layer i reads prefix layer i, as in π0
    inp = pm.inputs(kind=kind)
    ref = pm.sample(policy, inp)
    handle = dynaccel.enable_accel(policy, "layer_skip", keep_ratio=0.6)  # 2 of 5: the last and one measured
    first = pm.sample(policy, inp)
    assert torch.equal(first, ref)  # measuring: only the (free) last layer skipped
    sims = handle.stats["similarity"]
    assert sorted(sims) == [0, 1, 2, 3]
    most = max((s, i) for i, s in sims.items() if i > 0)[1]
    assert handle.stats["skipped_layers"] == sorted({4, most})
    # independent: the similarity of the chosen layer, from its input and output in a plain run
    dynaccel.disable_accel(policy)
    seen = {}
    layer = policy.model.vlm.language_model.layers[most]
    hook = layer.register_forward_hook(lambda m, a, out: seen.update(inp=a[0], out=out))
    try:
        pm.sample(policy, inp)
    finally:
        hook.remove()
    cos = torch.nn.functional.cosine_similarity(seen["inp"].float(), seen["out"].float(), dim=-1).mean()
    assert abs(float(cos) - sims[most]) < 1e-3
    handle = dynaccel.enable_accel(policy, "layer_skip", keep_ratio=0.6)
    pm.sample(policy, inp)
    second = pm.sample(policy, inp)
    assert not torch.equal(second, ref) and torch.isfinite(second).all()
    assert handle.stats["measured_inferences"] == 1 and handle.stats["prefix_layers_run"] == 4 + 3  # the last layer skipped in both
    handle.reset()  # a new episode measures again
    assert torch.equal(pm.sample(policy, inp), ref) and handle.stats["measured_inferences"] == 1
    strict = dynaccel.enable_accel(policy, "layer_skip", keep_ratio=0.6, min_similarity=1.0)
    pm.sample(policy, inp)
    assert torch.equal(pm.sample(policy, inp), ref) and strict.stats["skipped_layers"] == [4]
    off = dynaccel.enable_accel(policy, "layer_skip", keep_ratio=1.0)
    pm.sample(policy, inp)
    assert torch.equal(pm.sample(policy, inp), ref) and off.stats["skipped_layers"] == []
    dynaccel.disable_accel(policy)


def test_prefix_layers_past_the_experts_depth_are_skipped_for_free():
    policy = pm.model("pi0", prefix_layers=4, expert_layers=2)  # expert layers read prefix layers 0 and 1 only
    inp = pm.inputs()
    ref = pm.sample(policy, inp)
    handle = dynaccel.enable_accel(policy, "layer_skip", keep_ratio=0.9)
    assert torch.equal(pm.sample(policy, inp), ref) and torch.equal(pm.sample(policy, inp), ref)
    assert handle.stats["skipped_layers"] == [1, 2, 3] and handle.stats["measured_inferences"] == 0
    dynaccel.disable_accel(policy)


def test_two_policies_and_a_batch_with_layer_skip():
    p1 = pm.model("pi0", seed=0, prefix_layers=4, expert_layers=4)
    p2 = pm.model("pi0", seed=5, prefix_layers=4, expert_layers=4)
    x1, x2 = pm.inputs(seed=3), pm.inputs(seed=4)
    dynaccel.enable_accel(p1, "layer_skip", keep_ratio=0.5)
    alone1 = [pm.sample(p1, x1) for _ in range(2)]
    dynaccel.enable_accel(p2, "layer_skip", keep_ratio=0.5)
    alone2 = [pm.sample(p2, x2) for _ in range(2)]
    dynaccel.disable_accel(p1)
    dynaccel.disable_accel(p2)
    h1 = dynaccel.enable_accel(p1, "layer_skip", keep_ratio=0.5)
    h2 = dynaccel.enable_accel(p2, "layer_skip", keep_ratio=0.5)
    mixed = [pm.sample(p1, x1), pm.sample(p2, x2), pm.sample(p1, x1), pm.sample(p2, x2)]
    assert torch.equal(mixed[0], alone1[0]) and torch.equal(mixed[2], alone1[1])
    assert torch.equal(mixed[1], alone2[0]) and torch.equal(mixed[3], alone2[1])
    assert h1.stats["skipped_layers"] != [] and h2.stats["measured_inferences"] == 1
    batch = pm.inputs(batch=2, seed=7)
    out = [pm.sample(p1, batch) for _ in range(2)]
    assert all(o.shape == (2, pm.CHUNK, pm.ACTION_DIM) and torch.isfinite(o).all() for o in out)
    dynaccel.disable_accel(p1)
    dynaccel.disable_accel(p2)


def test_errors_name_the_value_and_the_prefix_is_pruned_once():
    policy = pm.model("pi0")
    ref = pm.sample(policy, pm.inputs())
    with pytest.raises(ConfigError, match=r"'layer': got 2 \(the model has 2 decoder layers\)"):
        dynaccel.enable_accel(policy, "fastv", layer=2)
    with pytest.raises(ConfigError, match="keep_ratio"):
        dynaccel.enable_accel(policy, "visionzip", keep_ratio=0.0)
    assert "sample_actions" not in policy.__dict__
    dynaccel.enable_accel(policy, "visionzip", keep_ratio=0.5)
    with pytest.raises(StackingError):
        dynaccel.enable_accel(policy, "prefix_prune", keep_ratio=0.5)
    with pytest.raises(StackingError):
        dynaccel.enable_accel(policy, "layer_skip", keep_ratio=0.5)
    assert [h.strategy for h in dynaccel.active_handles(policy).values()] == ["visionzip"]  # nothing half-applied
    dynaccel.disable_accel(policy)
    assert torch.equal(pm.sample(policy, pm.inputs()), ref)
    assert policy.model.vlm.language_model.config._attn_implementation == "sdpa"
