"""The token strategies on a tiny Qwen2.5-VL built from config (its tower attends in windows of reordered patches):
no-op settings are bit-identical through generate(), pruned ones compute and cache less, disable restores, batch 2
with left padding; VisionZip is refused with a clear error (its encoder scores are not in token order)."""

import pytest
import torch

import dynaccel
from tiny_lms import tiny_qwen2_5_vl

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def qwen25():
    model, make = tiny_qwen2_5_vl()
    return model, make


def generate(model, inputs, n=5):
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize(
    "name, noop, pruned",
    [
        ("fastv", dict(layer=2, keep_ratio=1.0), dict(layer=2, keep_ratio=0.25)),
        ("visual_exit", dict(layer=6), dict(layer=2)),
        ("sliminfer", dict(keep_ratio=1.0), dict(layer=2, interval=2, keep_ratio=0.5, block_size=4)),
    ],
)
def test_qwen2_5_vl_image_prompts(qwen25, name, noop, pruned):
    model, make = qwen25
    x = make((20, 17))  # one image (16 tokens) per prompt, left padding
    seq, scores = generate(model, x)
    model.enable_accel(name, **noop)
    s2, sc2 = generate(model, x)
    assert torch.equal(s2, seq) and torch.equal(sc2, scores)
    handle = model.enable_accel(name, **pruned)
    s2, sc2 = generate(model, x)
    st = handle.stats
    assert st["prefill_token_layers"] < st["prefill_token_layers_full"]
    assert st["kv_entries"] < st["kv_entries_full"]
    assert s2.shape == seq.shape and not torch.equal(sc2, scores)
    model.disable_accel()
    s3, sc3 = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


def test_qwen2_5_vl_fastv_keeps_a_quarter_of_the_image_tokens_from_layer_2(qwen25):
    model, make = qwen25
    x = make((20,))
    handle = model.enable_accel("fastv", layer=2, keep_ratio=0.25)
    generate(model, x, n=2)
    per_layer = handle.stats["prefill_computed_per_layer"]
    # 38 tokens: <bos>, 2 words, <vision_start>, 16 image tokens, <vision_end>, 17 words; 4 image tokens from layer 2 on
    assert per_layer[:2] == [38, 38] and per_layer[2:] == [38 - 12] * 4
    model.disable_accel()


def test_qwen2_5_vl_dycoke_merges_video_frames(qwen25):
    model, make = qwen25
    x = make((20, 17), grid=(3, 8, 8), video=True)
    seq, scores = generate(model, x)
    handle = model.enable_accel("dycoke", keep_ratio=0.5, window=4, kv_layer=3, kv_keep_ratio=0.5)
    s2, _ = generate(model, x)
    st = handle.stats
    assert st["prefill_tokens"] - st["kept_tokens"] >= 16  # frames 2 and 3 lose 8 of 16 tokens each
    assert st["decode_visual_entries_attended"] < st["decode_visual_entries"]
    model.disable_accel()
    s3, sc3 = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


def test_qwen2_5_vl_visionzip_is_refused_and_leaves_the_model_unchanged(qwen25):
    model, make = qwen25
    x = make((20,))
    seq, scores = generate(model, x)
    with pytest.raises(dynaccel.UnsupportedModelError, match="strategy 'visionzip' does not support Qwen2_5_VL"):
        model.enable_accel("visionzip", keep_ratio=0.25)
    s2, sc2 = generate(model, x)
    assert torch.equal(s2, seq) and torch.equal(sc2, scores)
