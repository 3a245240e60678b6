"""The VLA strategies on π0 and π0.5 (tiny configs, perturbed random weights): off settings bit-identical, disable
restores, separate state per policy, batches; the cache family on the action expert keeps the prefix cache whole."""

from __future__ import annotations

import pytest
import torch

import dynaccel
from dynaccel.core.errors import ConfigError, UnsupportedModelError

import pi0_models as pm

KINDS = ("pi0", "pi05")
#: strategy -> (off setting, a setting that changes the chunk)
SETTINGS = {
    "denoise_steps": ({"steps": 0}, {"steps": 3}),
    "teacache": ({"threshold": 0.0}, {"threshold": 5.0}),
    "fbcache": ({"threshold": 0.0}, {"threshold": 2.0}),
    "easycache": ({"threshold": 0.0}, {"threshold": 2.0}),
    "taylorseer": ({"threshold": 0.0}, {"threshold": 2.0}),
    "prefix_prune": ({"keep_ratio": 1.0}, {"keep_ratio": 0.25}),
    "fastv": ({"keep_ratio": 1.0, "layer": 1}, {"keep_ratio": 0.25, "layer": 1}),
    "visionzip": ({"keep_ratio": 1.0}, {"keep_ratio": 0.25}),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_off_is_bit_identical_on_changes_and_disable_restores(kind, name):
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    ref = pm.sample(policy, inp)
    off, on = SETTINGS[name]
    dynaccel.enable_accel(policy, name, **off)
    assert torch.equal(pm.sample(policy, inp), ref)
    handle = dynaccel.enable_accel(policy, name, **on)  # same family: replaces
    fast = pm.sample(policy, inp)
    assert fast.shape == ref.shape and torch.isfinite(fast).all()
    assert not torch.equal(fast, ref)
    stats = handle.stats
    if name == "denoise_steps":
        assert stats["steps_per_inference"] == 3 and stats["inferences"] == 1
    elif name in ("prefix_prune", "fastv", "visionzip"):
        assert stats["computed_fraction"] < 1 and len(stats["last_kept_positions"]) == pm.IMAGE_TOKENS // 4
    else:
        assert stats["skipped"] > 0 and stats["computed"] + stats["skipped"] == 10
    assert torch.equal(pm.sample(policy, inp), fast)  # every inference starts afresh: same input, same chunk
    dynaccel.disable_accel(policy)
    assert "sample_actions" not in policy.__dict__  # the instance wrapper is gone
    assert torch.equal(pm.sample(policy, inp), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_each_inference_is_a_new_run_of_the_expert_cache(kind):
    policy = pm.model(kind)
    handle = dynaccel.enable_accel(policy, "fbcache", threshold=2.0)
    a, b = pm.inputs(seed=1, kind=kind), pm.inputs(seed=2, kind=kind)
    first_a = pm.sample(policy, a)
    pm.sample(policy, b)
    assert handle.stats["computed"] + handle.stats["skipped"] == 10  # steps counted per inference
    assert torch.equal(pm.sample(policy, a), first_a)  # nothing of b's inference leaks into a's


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["teacache", "fbcache", "easycache"])
def test_skipped_expert_layers_leave_the_prefix_cache_whole(kind, name):
    """``sample_actions`` crops as many entries from every cache layer as layer 0 gained: a skipped expert layer
    must still add its share, or the crop would eat the prefix."""
    policy = pm.model(kind)
    handle = dynaccel.enable_accel(policy, name, **SETTINGS[name][1])
    lengths = []

    def seen(module, args, kwargs):
        cache = kwargs["cache"]
        lengths.append([layer.get_seq_length() for layer in cache.layers])

    hook = policy.register_forward_pre_hook(seen, with_kwargs=True)
    try:
        pm.sample(policy, pm.inputs(kind=kind))
    finally:
        hook.remove()
    prefix = pm.IMAGE_TOKENS + pm.TEXT
    assert handle.stats["skipped"] > 0
    assert lengths == [[prefix] * len(lengths[0])] * 10


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_two_policies_keep_separate_state(name):
    p1, p2 = pm.model("pi0", seed=0), pm.model("pi0", seed=5)
    x1, x2 = pm.inputs(seed=3), pm.inputs(seed=4)
    on = SETTINGS[name][1]
    dynaccel.enable_accel(p1, name, **on)
    alone1 = [pm.sample(p1, x1) for _ in range(2)]
    dynaccel.enable_accel(p2, name, **on)
    alone2 = pm.sample(p2, x2)
    mixed = [pm.sample(p1, x1), pm.sample(p2, x2), pm.sample(p1, x1)]
    assert torch.equal(mixed[0], alone1[0]) and torch.equal(mixed[2], alone1[1])
    assert torch.equal(mixed[1], alone2)
    dynaccel.disable_accel(p1)
    assert "sample_actions" in p2.__dict__  # p2's strategy stays
    dynaccel.disable_accel(p2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_batch_of_two_observations(kind, name):
    policy = pm.model(kind)
    batch = pm.inputs(batch=2, seed=7, kind=kind)
    off, on = SETTINGS[name]
    ref = pm.sample(policy, batch)
    dynaccel.enable_accel(policy, name, **off)
    assert torch.equal(pm.sample(policy, batch), ref)
    dynaccel.enable_accel(policy, name, **on)
    out = pm.sample(policy, batch)
    assert out.shape == (2, pm.CHUNK, pm.ACTION_DIM) and torch.isfinite(out).all()
    if name == "denoise_steps":  # no cross-sample decision: each row is its own 3-step chunk
        for i in range(2):
            row = {k: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            torch.testing.assert_close(pm.sample(policy, row)[0], out[i], rtol=1e-5, atol=1e-5)
    dynaccel.disable_accel(policy)


def test_denoise_steps_and_an_expert_cache_stack():
    policy = pm.model("pi0")
    inp = pm.inputs()
    dynaccel.enable_accel(policy, "denoise_steps", steps=4)
    only_steps = pm.sample(policy, inp)
    cache = dynaccel.enable_accel(policy, "teacache", threshold=0.0)
    assert torch.equal(pm.sample(policy, inp), only_steps)
    assert cache.stats["computed"] == 4
    dynaccel.disable_accel(policy)


def test_errors_name_the_model_and_the_value():
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(UnsupportedModelError) as err:
        dynaccel.enable_accel(llm, "denoise_steps", steps=4)
    assert "LlamaForCausalLM" in str(err.value) and "PI0ForConditionalGeneration" in str(err.value)
    policy = pm.model("pi0")
    with pytest.raises(ConfigError) as err:
        dynaccel.enable_accel(policy, "denoise_steps", steps=-1)
    assert "-1" in str(err.value) and "steps" in str(err.value)
    assert "sample_actions" not in policy.__dict__  # nothing installed after the error
