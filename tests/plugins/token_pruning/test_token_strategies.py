"""Token strategies on tiny Llama, Qwen2 (text) and Llava, Qwen2-VL (vision-language) built from config, through
generate() with the KV cache, batch 2 with left padding."""

import pytest
import torch

import dynaccel
from tiny_lms import tiny_llama, tiny_llava, tiny_llava_onevision, tiny_qwen2, tiny_qwen2_vl

TEXT = {"llama": tiny_llama, "qwen2": tiny_qwen2}
VISUAL = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl}
ALL = {**TEXT, **VISUAL}
_MODELS = {}


def model_and_inputs(arch, attn="sdpa"):
    key = (arch, attn)
    if key not in _MODELS:
        model, make = ALL[arch](attn)
        lengths = (20, 17) if arch in VISUAL else (48, 39)  # different lengths: left padding
        _MODELS[key] = (model, make(lengths))
    return _MODELS[key]


def generate(model, inputs, n=6):
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


@pytest.fixture(autouse=True)
def clean_models():
    yield
    for model, _ in _MODELS.values():
        dynaccel.disable_accel(model)


def assert_untouched(model):
    """No hook of ours is left and the attention implementation name is the model's own."""
    for m in model.modules():
        hooks = list(m._forward_pre_hooks.values()) + list(m._forward_hooks.values())
        assert not [h for h in hooks if getattr(h, "__module__", "").startswith("dynaccel")], type(m).__name__
        assert not type(m).__name__.startswith("_Skipped")
    assert not model.config.get_text_config()._attn_implementation.startswith("dynaccel_")


NOOP = [
    ("fastv", dict(layer=2, keep_ratio=1.0)),
    ("sliminfer", dict(layer=2, interval=2, keep_ratio=1.0, block_size=4)),
    ("layer_skip", dict(keep_ratio=1.0)),
]
PRUNED = [
    ("fastv", dict(layer=2, keep_ratio=0.5)),
    ("sliminfer", dict(layer=2, interval=2, keep_ratio=0.6, block_size=4)),
    ("layer_skip", dict(keep_ratio=0.5)),
]
VISUAL_NOOP = [
    ("visual_exit", dict(layer=6)),
    ("visual_exit", dict(layer=6, mode="adaptive", threshold=0.0)),
    ("visionzip", dict(keep_ratio=1.0)),
    ("dycoke", dict(keep_ratio=1.0, kv_keep_ratio=1.0)),
]
VISUAL_PRUNED = [
    ("visual_exit", dict(layer=3)),
    ("visual_exit", dict(layer=2, mode="adaptive", threshold=0.9)),
    ("visionzip", dict(keep_ratio=0.25)),
    ("dycoke", dict(keep_ratio=1.0, kv_keep_ratio=0.5)),  # decode-time KV pruning alone (one image: no frames)
]


def _id(p):
    return f"{p[0]}-" + ",".join(f"{k}={v}" for k, v in p[1].items())


@pytest.mark.parametrize("arch", list(ALL))
def test_noop_settings_are_bit_identical_through_generate_and_disable_restores(arch):
    model, inputs = model_and_inputs(arch)
    seq, scores = generate(model, inputs)
    settings = NOOP + (VISUAL_NOOP if arch in VISUAL else [])
    for name, cfg in settings:
        handle = model.enable_accel(name, **cfg)
        s2, sc2 = generate(model, inputs)
        assert torch.equal(s2, seq) and torch.equal(sc2, scores), (name, cfg)
        assert handle.stats["prefill_token_layers"] == handle.stats["prefill_token_layers_full"] > 0
        assert handle.stats["kv_entries"] == handle.stats["kv_entries_full"]
        model.disable_accel()
        assert_untouched(model)
    s3, sc3 = generate(model, inputs)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


@pytest.mark.parametrize(
    "arch,setting",
    [pytest.param(a, p, id=f"{a}-{_id(p)}") for a in ALL for p in PRUNED + (VISUAL_PRUNED if a in VISUAL else [])],
)
def test_pruned_settings_compute_less_and_disable_restores(arch, setting):
    name, cfg = setting
    model, inputs = model_and_inputs(arch)
    seq, scores = generate(model, inputs)
    handle = dynaccel.enable_accel(model, name, **cfg)
    s2, sc2 = generate(model, inputs)
    st = handle.stats
    assert s2.shape == seq.shape and torch.isfinite(sc2).all()
    assert torch.equal(s2[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    if name == "dycoke":  # the prompt is computed whole; decode steps attend to half the visual entries
        assert st["prefill_token_layers"] == st["prefill_token_layers_full"]
        assert 0 < st["decode_visual_entries_attended"] <= st["decode_visual_entries"] // 2 + 2
    elif name == "layer_skip":  # the prompt runs every layer; decode steps skip some
        assert st["prefill_token_layers"] == st["prefill_token_layers_full"]
        assert len(st["skipped_layers"]) == 3 and 0 not in st["skipped_layers"] and 5 not in st["skipped_layers"]
        assert st["decode_token_layers"] == st["decode_token_layers_full"] // 2
    else:
        assert st["prefill_token_layers"] < st["prefill_token_layers_full"]
    if name != "dycoke":  # (dycoke keeps every entry: a dropped visual token may return at the next step)
        assert st["kv_entries"] < st["kv_entries_full"]  # the cache holds fewer entries
    assert not torch.equal(sc2, scores)  # pruning changed the computation
    assert dynaccel.accel_stats(model)[name] == st
    dynaccel.disable_accel(model)
    assert_untouched(model)
    s3, sc3 = generate(model, inputs)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


@pytest.mark.parametrize("arch", ["llama", "llava"])
def test_fastv_keeps_the_best_ranked_tokens_at_their_original_positions(arch):
    model, inputs = model_and_inputs(arch)
    handle = model.enable_accel("fastv", layer=2, keep_ratio=0.5)
    out = model(**inputs, use_cache=True)
    cache = out.cache
    length = inputs["input_ids"].shape[1]
    first = cache.layers[1]
    assert first.keys.shape[-2] == length and cache.get_seq_length() == length  # layers before K keep everything
    kept = cache.layers[2]
    assert kept.get_seq_length() == length and kept.keys.shape[-2] == handle.stats["kept_tokens"] < length
    positions = kept.positions
    assert torch.equal(positions, positions.sort(dim=1).values) and int(positions.max()) == length - 1
    pad = inputs["attention_mask"] == 0
    if arch == "llava":  # all text tokens stay; only visual ones go
        visual = inputs["input_ids"] == 90
        for b in range(2):
            text = torch.nonzero(~visual[b] & ~pad[b]).flatten()
            assert set(text.tolist()) <= set(positions[b].tolist())
    dropped = length - handle.stats["kept_tokens"]
    for b in range(2):  # padding goes first: a row keeps padding only when it has more than the tokens dropped
        kept_pad = set(torch.nonzero(pad[b]).flatten().tolist()) & set(positions[b].tolist())
        assert len(kept_pad) == max(0, int(pad[b].sum()) - dropped)
    assert out.logits.shape[1] == length  # outputs keep the sequence length
    for layer in cache.layers[2:]:
        assert layer.positions is positions  # one index map shared by the layers with the same history


@pytest.mark.parametrize(
    "arch,inputs",
    [("llava", dict(lengths=(20, 17), images=3)), ("qwen2_vl", dict(lengths=(20, 17), grid=(3, 8, 8), video=True))],
    ids=["llava-3-images", "qwen2_vl-video-3-frames"],
)
def test_dycoke_merges_repeated_frame_tokens_and_prunes_visual_kv_while_decoding(arch, inputs):
    model, make = ALL[arch]()
    x = make(**inputs)
    seq, scores = generate(model, x)
    handle = model.enable_accel("dycoke", keep_ratio=0.5, window=4, kv_layer=3, kv_keep_ratio=0.5)
    s2, sc2 = generate(model, x)
    st = handle.stats
    # 3 frames of 16 tokens: frames 2 and 3 lose 8 tokens each, the same number in both rows
    assert st["prefill_tokens"] - st["kept_tokens"] >= 16
    assert st["prefill_computed_per_layer"] == [st["kept_tokens"]] * 6  # merged before the first layer
    assert st["decode_visual_entries_attended"] < st["decode_visual_entries"]
    assert s2.shape == seq.shape and not torch.equal(sc2, scores)
    model.disable_accel()
    s3, sc3 = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


@pytest.mark.parametrize("arch", list(VISUAL))
def test_visionzip_keeps_a_quarter_of_the_visual_tokens_from_the_first_layer(arch):
    model, inputs = model_and_inputs(arch)
    handle = model.enable_accel("visionzip", keep_ratio=0.25, contextual=0.25)
    generate(model, inputs, n=2)
    st = handle.stats
    assert st["kept_visual_tokens"] == [4, 4]  # 16 visual tokens per prompt: 3 dominant + 1 contextual
    assert st["prefill_computed_per_layer"] == [st["kept_tokens"]] * 6
    assert st["prefill_tokens"] - st["kept_tokens"] == 12  # each row drops 12 (the padded row: pads first)
    assert st["visual_tokens_in_sequence"] == [4, 7]  # the padded row drops its 3 pads and 9 visual tokens


def test_llava_onevision_video_runs_every_token_strategy():
    model, make = tiny_llava_onevision()
    x = make((20, 17))  # a 4-frame video per prompt, left padding
    seq, scores = generate(model, x)
    for name, noop, pruned in [
        ("fastv", dict(keep_ratio=1.0), dict(layer=2, keep_ratio=0.5)),
        ("visual_exit", dict(layer=6), dict(layer=3)),
        ("sliminfer", dict(keep_ratio=1.0), dict(layer=2, interval=2, keep_ratio=0.5, block_size=4)),
        ("layer_skip", dict(keep_ratio=1.0), dict(keep_ratio=0.5)),
        ("visionzip", dict(keep_ratio=1.0), dict(keep_ratio=0.25)),
        ("dycoke", dict(keep_ratio=1.0, kv_keep_ratio=1.0), dict(keep_ratio=0.5, kv_keep_ratio=0.5)),
    ]:
        model.enable_accel(name, **noop)
        s2, sc2 = generate(model, x)
        assert torch.equal(s2, seq) and torch.equal(sc2, scores), name
        handle = model.enable_accel(name, **pruned)
        s2, sc2 = generate(model, x)
        st = handle.stats
        assert not torch.equal(sc2, scores) and st["kv_entries"] < st["kv_entries_full"], name
        model.disable_accel()
        assert_untouched(model)
    s3, sc3 = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


def test_sdpa_and_eager_agree_under_pruning():
    (sdpa, inputs), (eager, _) = model_and_inputs("qwen2"), model_and_inputs("qwen2", "eager")
    for model in (sdpa, eager):
        model.enable_accel("sliminfer", layer=2, interval=2, keep_ratio=0.6, block_size=4)
    s1, sc1 = generate(sdpa, inputs)
    s2, sc2 = generate(eager, inputs)
    assert torch.equal(s1, s2)
    torch.testing.assert_close(sc1, sc2, rtol=1e-4, atol=1e-4)


def test_batch_rows_match_single_runs_without_padding():
    model, make = tiny_llama()
    both = make((40, 40), seed=3)
    seq, scores = generate(model, both)
    model.enable_accel("fastv", layer=2, keep_ratio=0.5)
    s2, sc2 = generate(model, both)
    for b in range(2):
        single = {k: v[b : b + 1] for k, v in both.items()}
        s1, sc1 = generate(model, single)
        assert torch.equal(s1[0], s2[b])
        torch.testing.assert_close(sc1[:, 0], sc2[:, b], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "arch,name,cfg,error,message",
    [
        ("llama", "fastv", dict(layer=6), dynaccel.ConfigError, r"option 'layer': got 6 \(the model has 6 decoder layers\); accepted for 'fastv' on this model: int with 1 <= layer <= 5"),
        ("qwen2", "sliminfer", dict(layer=9), dynaccel.ConfigError, r"option 'layer': got 9"),
        ("llava", "visual_exit", dict(layer=7), dynaccel.ConfigError, r"1 <= layer <= 6"),
        ("llama", "fastv", dict(layer=0), dynaccel.ConfigError, r"option 'layer': got 0 .*accepted: int with 1 <= layer"),
        ("llama", "fastv", dict(keep_ratio=0.0), dynaccel.ConfigError, r"option 'keep_ratio': got 0.0 .*0 < keep_ratio <= 1"),
        ("qwen2_vl", "sliminfer", dict(keep_ratio=1.5), dynaccel.ConfigError, r"option 'keep_ratio': got 1.5"),
        ("llava", "layer_skip", dict(keep_ratio=-0.1), dynaccel.ConfigError, r"option 'keep_ratio'"),
        ("llama", "visual_exit", dict(layer=2), dynaccel.UnsupportedModelError, r"strategy 'visual_exit' does not support LlamaForCausalLM; supported architectures: .*LlavaForConditionalGeneration"),
        ("qwen2", "visual_exit", dict(), dynaccel.UnsupportedModelError, r"does not support Qwen2ForCausalLM"),
        ("llama", "visionzip", dict(), dynaccel.UnsupportedModelError, r"strategy 'visionzip' does not support LlamaForCausalLM; supported architectures: .*Qwen2VLForConditionalGeneration"),
        ("qwen2", "dycoke", dict(), dynaccel.UnsupportedModelError, r"strategy 'dycoke' does not support Qwen2ForCausalLM"),
        ("llava", "visionzip", dict(keep_ratio=0.0), dynaccel.ConfigError, r"option 'keep_ratio': got 0.0"),
        ("qwen2_vl", "dycoke", dict(kv_layer=6), dynaccel.ConfigError, r"option 'kv_layer': got 6 \(the model has 6 decoder layers\)"),
        ("llava", "dycoke", dict(kv_keep_ratio=0.0), dynaccel.ConfigError, r"option 'kv_keep_ratio': got 0.0"),
    ],
)
def test_bad_input_raises_clearly_and_leaves_the_model_unchanged(arch, name, cfg, error, message):
    model, inputs = model_and_inputs(arch)
    seq, scores = generate(model, inputs, n=3)
    with pytest.raises(error, match=message):
        model.enable_accel(name, **cfg)
    assert_untouched(model)
    assert dynaccel.accel_stats(model) == {}
    s2, sc2 = generate(model, inputs, n=3)
    assert torch.equal(s2, seq) and torch.equal(sc2, scores)


def test_other_attention_implementations_are_refused():
    model, _ = tiny_llama()
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(dynaccel.UnsupportedModelError, match="attention implementation .* uses 'flex_attention'"):
        model.enable_accel("fastv")
    assert_untouched(model)


def test_token_strategies_do_not_stack_across_families():
    model, _ = model_and_inputs("llama")
    model.enable_accel("fastv")
    with pytest.raises(dynaccel.StackingError, match="'layer_skip' \\(early_exit\\) cannot run together with 'fastv'"):
        model.enable_accel("layer_skip")
    model.enable_accel("sliminfer")  # same family: replaces fastv
    assert list(model.accel_stats) == ["sliminfer"]


@pytest.mark.parametrize("arch", list(TEXT))
def test_fastv_equals_running_the_kept_tokens_at_their_original_positions_by_hand(arch):
    """Reference built without the engine: from layer K on, run the decoder layers by hand on the kept tokens only,
    with a causal mask and rotary embeddings made from their original positions; same last-token logits."""
    model, make = ALL[arch]()
    x = make((40,), seed=5)
    handle = model.enable_accel("fastv", layer=2, keep_ratio=0.5)
    out = model(**x, use_cache=True)
    kept = out.cache.layers[2].positions  # (1, n) original positions of the kept tokens
    assert kept.shape[1] == handle.stats["kept_tokens"] < 40
    model.disable_accel()
    stack = model.model
    with torch.no_grad():
        hidden = model(**x, output_hidden_states=True).hidden_states[2]  # input of layer 2, full length
        h = hidden[:, kept[0]]
        pos = kept
        causal = (pos[:, None, :, None] >= pos[:, None, None, :])  # (1, 1, n, n): key position <= query position
        pe = stack.rotary_emb(h, position_ids=pos)
        for layer in stack.layers[2:]:
            h = layer(h, attention_mask=causal, position_embeddings=pe, position_ids=pos)
        want = model.lm_head(stack.norm(h))[:, -1]
    torch.testing.assert_close(out.logits[:, -1], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "llava"])
def test_pruning_without_a_kv_cache(arch):
    """use_cache=False: every step is a fresh prefill, pruned the same way; batch 2 with left padding."""
    model, inputs = model_and_inputs(arch)
    name, cfg = ("fastv", dict(layer=2, keep_ratio=0.5)) if arch == "qwen2" else ("visual_exit", dict(layer=3))  # noqa: E501
    handle = model.enable_accel(name, **cfg)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert handle.stats["prefill_token_layers"] < handle.stats["prefill_token_layers_full"]
    logits = model(**inputs, use_cache=False).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", list(TEXT))
def test_a_decode_step_after_fastv_equals_the_kept_tokens_plus_the_new_one_by_hand(arch):
    """The decode step reads the pruned cache: layers from K on attend to the kept prompt tokens and the new token
    at its original position. Reference without the engine: one pass over prompt + new token, layers >= K run by hand
    on the kept tokens and the new one."""
    model, make = ALL[arch]()
    x = make((40,), seed=6)
    model.enable_accel("fastv", layer=3, keep_ratio=0.4)
    out = model(**x, use_cache=True)
    cache = out.cache
    kept = cache.layers[3].positions
    new = out.logits[:, -1:].argmax(-1)
    step = model(input_ids=new, attention_mask=torch.ones(1, 41, dtype=torch.long), cache=cache, use_cache=True)
    assert cache.get_seq_length() == 41 and cache.layers[3].keys.shape[-2] == kept.shape[1] + 1
    model.disable_accel()
    stack = model.model
    with torch.no_grad():
        full_ids = torch.cat([x["input_ids"], new], dim=1)
        hidden = model(input_ids=full_ids, output_hidden_states=True).hidden_states[3]
        pos = torch.cat([kept, torch.tensor([[40]])], dim=1)
        h = hidden[:, pos[0]]
        causal = pos[:, None, :, None] >= pos[:, None, None, :]
        pe = stack.rotary_emb(h, position_ids=pos)
        for layer in stack.layers[3:]:
            h = layer(h, attention_mask=causal, position_embeddings=pe, position_ids=pos)
        want = model.lm_head(stack.norm(h))[:, -1]
    torch.testing.assert_close(step.logits[:, -1], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", list(TEXT))
def test_layer_skip_decode_equals_leaving_the_skipped_layers_out_by_hand(arch):
    """Two decode steps with skipped layers equal a hand-run loop that leaves those layers out (their cache gets no
    entry for the new tokens, later tokens attend to what it has)."""
    from transformers import DynamicCache

    model, make = ALL[arch]()
    x = make((30,), seed=8)
    handle = model.enable_accel("layer_skip", keep_ratio=0.5)
    out = model(**x, use_cache=True)
    cache, tokens, got = out.cache, [out.logits[:, -1:].argmax(-1)], []
    skipped = set(handle.stats["skipped_layers"])
    assert len(skipped) == 3
    for step in range(2):
        o = model(input_ids=tokens[-1], attention_mask=torch.ones(1, 31 + step, dtype=torch.long), cache=cache, use_cache=True)
        got.append(o.logits[:, -1])
        tokens.append(o.logits[:, -1:].argmax(-1))
    assert handle.stats["decode_token_layers"] == 2 * 3
    model.disable_accel()
    stack = model.model
    with torch.no_grad():
        ref_cache = DynamicCache(config=model.config)
        model(**x, cache=ref_cache, use_cache=True)
        for step in range(2):
            pos = torch.tensor([[30 + step]])
            h = stack.embed_tokens(tokens[step])
            pe = stack.rotary_emb(h, position_ids=pos)
            for i, layer in enumerate(stack.layers):
                if i not in skipped:
                    h = layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos, cache=ref_cache, use_cache=True)
            want = model.lm_head(stack.norm(h))[:, -1]
            torch.testing.assert_close(got[step], want, rtol=1e-5, atol=1e-5)
