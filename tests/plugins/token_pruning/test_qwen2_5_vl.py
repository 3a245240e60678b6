"""The token strategies on a tiny Qwen2.5-VL built from config (its tower attends in windows of reordered patches):
no-op settings are bit-identical through generate(), pruned ones compute and cache less, disable restores, batch 2
with left padding; VisionZip's encoder scores are put back from the tower's window order into the raster order the
LLM sees (checked against an independent reference)."""

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
        ("visionzip", dict(keep_ratio=1.0), dict(keep_ratio=0.25)),
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


def _reference_raster_scores(model, x):
    """VisionZip's ranking computed without dynaccel: the last full-attention block's attention received by each patch
    (mean over heads and queries, per frame), summed per merged 2x2 group, in the tower's window order; put in raster
    order by matching the merger's outputs (window order) with the model's image features (raster order) row by row.
    Returns (raster scores, the same scores left in window order)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    visual = model.model.visual
    block = visual.blocks[visual.fullatt_block_indexes[-1]]
    assert block is visual.blocks[-1]
    seen = {}
    hooks = [
        block.attn.register_forward_pre_hook(lambda m, a, k: seen.update(attn_in=a[0] if a else k["hidden_states"], **k) or None, with_kwargs=True),
        block.register_forward_hook(lambda m, a, out: seen.update(block_out=out) or None),
    ]
    try:
        with torch.no_grad():
            raster = visual(x["pixel_values"], grid_thw=x["image_grid_thw"]).pooler_output
            attn, h = block.attn, seen["attn_in"]
            q, k, _ = attn.qkv(h).reshape(h.shape[0], 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q, k = apply_rotary_pos_emb_vision(q, k, *seen["position_embeddings"])
            cu = seen["cu_seqlens"].tolist()
            patch = torch.cat([
                torch.einsum("qhd,khd->hqk", q[a:b], k[a:b]).mul(attn.scaling).softmax(-1).mean(dim=(0, 1))
                for a, b in zip(cu[:-1], cu[1:])
            ])
            window_order = patch.view(-1, 4).sum(-1)
            merged = visual.merger(seen["block_out"])  # merged groups in window order
    finally:
        for hk in hooks:
            hk.remove()
    match = (raster[:, None, :] == merged[None, :, :]).all(-1)  # (raster, window): identical rows
    assert bool((match.sum(1) == 1).all())
    return window_order[match.float().argmax(1)], window_order


def test_qwen2_5_vl_visionzip_keeps_the_tokens_the_tower_ranks_highest_in_raster_order(qwen25):
    model, make = qwen25
    x = make((20, 17))  # two images, 16 merged tokens each; the second prompt is left-padded
    raster, window = _reference_raster_scores(model, x)
    handle = model.enable_accel("visionzip", keep_ratio=0.25, contextual=0.0)  # dominant tokens only
    try:
        with torch.no_grad():
            cache = model(**x, use_cache=True).cache
    finally:
        model.disable_accel()
    assert handle.stats["kept_visual_tokens"] == [4, 4]
    kept_all = cache.layers[0].positions
    differs = False
    for b in range(2):
        image = torch.nonzero(x["input_ids"][b] == 90).flatten()  # raster order of the image's merged tokens
        kept = [p for p in kept_all[b].tolist() if p in set(image.tolist())]
        m = len(kept)
        assert m == 4 if b == 0 else m >= 4  # the padded row drops its pads first, so it keeps a few more
        ref = raster[16 * b:16 * (b + 1)]
        order = ref.argsort(descending=True)
        assert float(ref[order[m - 1]] - ref[order[m]]) > 1e-6  # the reference ranking is not a near tie
        assert sorted(kept) == sorted(image[order[:m]].tolist())
        naive = window[16 * b:16 * (b + 1)].argsort(descending=True)[:m]  # window-order scores read as raster
        differs |= sorted(image[naive].tolist()) != sorted(kept)
    assert differs  # the window order matters on this input: reading it as raster order picks other tokens


def test_qwen2_5_vl_visionzip_on_video_frames(qwen25):
    model, make = qwen25
    x = make((20, 17), grid=(3, 8, 8), video=True)  # 3 frames x 16 tokens per prompt
    seq, scores = generate(model, x)
    model.enable_accel("visionzip", keep_ratio=1.0)
    s2, sc2 = generate(model, x)
    assert torch.equal(s2, seq) and torch.equal(sc2, scores)
    handle = model.enable_accel("visionzip", keep_ratio=0.25)
    s2, sc2 = generate(model, x)
    st = handle.stats
    assert st["kept_visual_tokens"] == [12, 12] and st["layouts"] == ["window order undone: 3x8x8 3x8x8"]
    assert st["prefill_computed_per_layer"] == [st["kept_tokens"]] * 6 and st["prefill_tokens"] - st["kept_tokens"] == 36
    assert s2.shape == seq.shape and not torch.equal(sc2, scores)
    model.disable_accel()
    s3, sc3 = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


@pytest.mark.parametrize("cfg, message", [(dict(keep_ratio=0.0), r"option 'keep_ratio': got 0.0"), (dict(keep_ratio=2.0), r"option 'keep_ratio': got 2.0")])
def test_qwen2_5_vl_bad_visionzip_input_is_refused_and_leaves_the_model_unchanged(qwen25, cfg, message):
    model, make = qwen25
    x = make((20, 17))
    seq, scores = generate(model, x, n=2)
    with pytest.raises(dynaccel.ConfigError, match=message):
        model.enable_accel("visionzip", **cfg)
    assert dynaccel.accel_stats(model) == {}
    assert model.config.vision_config._attn_implementation == "sdpa"
    s2, sc2 = generate(model, x, n=2)
    assert torch.equal(s2, seq) and torch.equal(sc2, scores)
