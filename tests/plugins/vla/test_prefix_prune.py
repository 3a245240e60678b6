"""prefix_prune on π0 and π0.5 (tiny configs): dropped image tokens are never attended to, by the prefix's later
layers or by the action expert; the kept ones are the instruction's most attended (FastV) or add diversity."""

from __future__ import annotations

import pytest
import torch

import dynaccel
from dynaccel.core.errors import ConfigError

import pi0_models as pm

KINDS = ("pi0", "pi05")


def engine_of(handle):
    return next(iter(handle.parts.values())).engine


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_tokens_are_never_attended_to(kind):
    """Whatever the dropped positions' cache entries hold, the actions do not change: every attention from the
    pruning layer on (prefix and expert) masks them."""
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    plain = pm.sample(policy, inp)
    handle = dynaccel.enable_accel(policy, "prefix_prune", keep_ratio=0.25, layer=1)
    clean = pm.sample(policy, inp)
    dropped = sorted(set(range(pm.IMAGE_TOKENS)) - set(handle.stats["last_kept_positions"]))
    assert len(dropped) == pm.IMAGE_TOKENS - pm.IMAGE_TOKENS // 4

    def scramble(module, args, kwargs):
        layer = kwargs["cache"].layers[1]
        g = torch.Generator().manual_seed(len(dropped))
        layer.keys[:, :, dropped] = torch.randn(layer.keys[:, :, dropped].shape, generator=g) * 10
        layer.values[:, :, dropped] = torch.randn(layer.values[:, :, dropped].shape, generator=g) * 10

    hook = policy.register_forward_pre_hook(scramble, with_kwargs=True)  # before every expert pass
    try:
        noisy = pm.sample(policy, inp)
    finally:
        hook.remove()
    assert torch.equal(noisy, clean)
    dynaccel.disable_accel(policy)
    assert policy.model.dit.config._attn_implementation == "sdpa"
    hook = policy.register_forward_pre_hook(scramble, with_kwargs=True)
    try:  # and the check can fail: without the strategy the scrambled entries change the actions
        assert not torch.equal(pm.sample(policy, inp), plain)
    finally:
        hook.remove()


@pytest.mark.parametrize("kind", KINDS)
def test_fastv_keeps_the_most_attended_and_diverse_adds_coverage(kind):
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    handle = dynaccel.enable_accel(policy, "prefix_prune", keep_ratio=0.5, layer=1)
    pm.sample(policy, inp)
    eng = engine_of(handle)
    rel = eng.relevance[0, : pm.IMAGE_TOKENS]
    top = set(torch.topk(rel, pm.IMAGE_TOKENS // 2).indices.tolist())
    assert set(handle.stats["last_kept_positions"]) == top
    assert handle.stats["prefix_token_layers_computed"] == (pm.IMAGE_TOKENS + pm.TEXT) + (
        pm.IMAGE_TOKENS // 2 + pm.TEXT)
    mixed = dynaccel.enable_accel(policy, "prefix_prune", keep_ratio=0.5, layer=1, diverse=0.5)
    pm.sample(policy, inp)
    kept = set(mixed.stats["last_kept_positions"])
    assert len(kept) == pm.IMAGE_TOKENS // 2
    half = set(torch.topk(rel, pm.IMAGE_TOKENS // 4).indices.tolist())
    assert half <= kept and kept != top  # the top quarter by attention, then the most different tokens


def test_errors_name_the_value():
    policy = pm.model("pi0")
    with pytest.raises(ConfigError, match="'layer': got 2"):
        dynaccel.enable_accel(policy, "prefix_prune", layer=2)  # the tiny prefix has 2 layers
    with pytest.raises(ConfigError, match="keep_ratio"):
        dynaccel.enable_accel(policy, "prefix_prune", keep_ratio=0.0)
    assert "sample_actions" not in policy.__dict__
    assert policy.model.vlm.language_model.config._attn_implementation == "sdpa"
