"""vla_cache on π0 and π0.5 (tiny configs): reused keys/values equal a fresh computation for unchanged frames, changed
and task-relevant tokens are recomputed, the off setting and disable are bit-identical, state per policy/episode."""

from __future__ import annotations

import pytest
import torch

import dynaccel
from dynaccel.core.errors import ConfigError, UnsupportedModelError

import pi0_models as pm

KINDS = ("pi0", "pi05")
ALL = dict(similarity=0.99, max_reuse=1.0, task_relevant=0.0, layer_adaptive=False)


def prefix_caches(policy, inp):
    """The prefix KV cache of each layer as the action expert first sees it, for one inference."""
    seen = []

    def grab(module, args, kwargs):
        if not seen:
            seen.append([(layer.keys.clone(), layer.values.clone()) for layer in kwargs["cache"].layers])

    hook = policy.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        chunk = pm.sample(policy, inp)
    finally:
        hook.remove()
    return seen[0], chunk


def moved(inp, rows=slice(0, pm.PATCH), cols=slice(0, pm.PATCH)):
    """The same observation with one image patch changed (top-left by default)."""
    out = dict(inp)
    px = inp["pixel_values"].clone()
    px[..., rows, cols] = -px[..., rows, cols] + 0.3
    out["pixel_values"] = px
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_identical_frames_reuse_keys_values_equal_to_a_fresh_computation(kind):
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    fresh, ref = prefix_caches(policy, inp)
    handle = dynaccel.enable_accel(policy, "vla_cache", **ALL)
    prefix_caches(policy, inp)  # the first inference computes everything
    reused, chunk = prefix_caches(policy, inp)
    assert handle.stats["last"]["reused_per_layer"] == [pm.IMAGE_TOKENS] * 2  # every image token, every layer
    assert handle.stats["inferences_reusing"] == 1
    for (k0, v0), (k1, v1) in zip(fresh, reused):
        torch.testing.assert_close(k1, k0, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunk, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_changed_patches_are_recomputed_and_the_rest_reused(kind):
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    handle = dynaccel.enable_accel(policy, "vla_cache", **ALL)
    pm.sample(policy, inp)
    pm.sample(policy, moved(inp))
    last = handle.stats["last"]
    assert last["static"] == pm.IMAGE_TOKENS - 1
    for layer, positions in last["reused_positions"].items():
        assert 0 not in positions  # the top-left patch is image token 0: recomputed
        assert len(positions) == pm.IMAGE_TOKENS - 1
    # the text tokens are never reused
    assert all(p < pm.IMAGE_TOKENS for ps in last["reused_positions"].values() for p in ps)


@pytest.mark.parametrize("kind", KINDS)
def test_task_relevant_tokens_are_recomputed_and_max_reuse_caps(kind):
    policy = pm.model(kind)
    inp = pm.inputs(kind=kind)
    handle = dynaccel.enable_accel(policy, "vla_cache", similarity=0.99, max_reuse=1.0, task_relevant=0.25,
                                   layer_adaptive=False)
    pm.sample(policy, inp)
    relevance = next(iter(handle.parts.values())).engine.last.relevance[0, : pm.IMAGE_TOKENS]
    top = set(torch.topk(relevance, pm.IMAGE_TOKENS // 4).indices.tolist())
    pm.sample(policy, inp)
    reused = handle.stats["last"]["reused_positions"]
    assert all(len(ps) == pm.IMAGE_TOKENS - len(top) and not (set(ps) & top) for ps in reused.values())
    dynaccel.enable_accel(policy, "vla_cache", similarity=0.99, max_reuse=0.5, task_relevant=0.0,
                          layer_adaptive=False)
    pm.sample(policy, inp)
    pm.sample(policy, inp)
    stats = dynaccel.accel_stats(policy)["vla_cache"]
    assert stats["last"]["reused_per_layer"] == [pm.IMAGE_TOKENS // 2] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_off_setting_and_disable_are_bit_identical(kind):
    policy = pm.model(kind)
    frames = [pm.inputs(kind=kind), None, None]
    frames[1] = moved(frames[0])
    frames[2] = frames[1]
    ref = [pm.sample(policy, f) for f in frames]
    dynaccel.enable_accel(policy, "vla_cache", max_reuse=0.0)
    assert all(torch.equal(pm.sample(policy, f), r) for f, r in zip(frames, ref))
    dynaccel.enable_accel(policy, "vla_cache", **ALL)
    for f in frames:
        pm.sample(policy, f)
    dynaccel.disable_accel(policy)
    assert policy.model.vlm.language_model.config._attn_implementation == "sdpa"
    assert all(torch.equal(pm.sample(policy, f), r) for f, r in zip(frames, ref))


def test_new_instruction_and_reset_compute_everything():
    policy = pm.model("pi0")
    inp = pm.inputs()
    handle = dynaccel.enable_accel(policy, "vla_cache", **ALL)
    pm.sample(policy, inp)
    other = dict(inp)
    other["input_ids"] = inp["input_ids"].clone()
    other["input_ids"][:, pm.IMAGE_TOKENS] += 1  # another instruction
    pm.sample(policy, other)
    assert handle.stats["inferences_reusing"] == 0
    pm.sample(policy, other)
    assert handle.stats["inferences_reusing"] == 1
    handle.reset()  # a new episode
    pm.sample(policy, other)
    assert handle.stats["inferences_reusing"] == 0 and handle.stats["inferences"] == 1


def test_two_policies_keep_separate_state_and_a_batch_of_two_works():
    p1, p2 = pm.model("pi0", seed=0), pm.model("pi0", seed=5)
    a, b = pm.inputs(seed=1), pm.inputs(seed=2)
    dynaccel.enable_accel(p1, "vla_cache", **ALL)
    alone = [pm.sample(p1, a), pm.sample(p1, moved(a))]
    dynaccel.disable_accel(p1)
    dynaccel.enable_accel(p1, "vla_cache", **ALL)
    dynaccel.enable_accel(p2, "vla_cache", **ALL)
    out = [pm.sample(p1, a), pm.sample(p2, b), pm.sample(p1, moved(a))]
    assert torch.equal(out[0], alone[0]) and torch.equal(out[2], alone[1])
    batch = pm.inputs(batch=2, seed=3)
    ref = [pm.sample(p2, batch)]
    second = moved(batch, rows=slice(8, 16))  # one patch changes in both rows
    fast = pm.sample(p2, second)
    assert fast.shape == (2, pm.CHUNK, pm.ACTION_DIM) and torch.isfinite(fast).all()
    assert dynaccel.accel_stats(p2)["vla_cache"]["last"]["static"] == pm.IMAGE_TOKENS - 1
    del ref


def test_stacks_with_a_cache_on_the_action_expert_and_errors():
    policy = pm.model("pi0")
    inp = pm.inputs()
    dynaccel.enable_accel(policy, "vla_cache", **ALL)
    dynaccel.enable_accel(policy, "fbcache", threshold=0.0)
    dynaccel.enable_accel(policy, "denoise_steps", steps=0)
    assert len(dynaccel.active_handles(policy)) == 3
    pm.sample(policy, inp)
    pm.sample(policy, inp)
    assert dynaccel.accel_stats(policy)["vla_cache"]["inferences_reusing"] == 1
    dynaccel.disable_accel(policy)
    with pytest.raises(ConfigError) as err:
        dynaccel.enable_accel(policy, "vla_cache", relevance_layer=7)
    assert "relevance_layer" in str(err.value) and "7" in str(err.value)
    assert "sample_actions" not in policy.__dict__
    with pytest.raises(ConfigError):
        dynaccel.enable_accel(policy, "vla_cache", similarity=1.5)
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM"):
        dynaccel.enable_accel(llm, "vla_cache")
