"""VisionZip and DyCoke on a tiny LLaVA-OneVision built from config: the tower's scores reach the right tokens of the
packed sequence (anyres images: base tile, unpadded tile grid, newline tokens, downsizing; videos: pooled frames),
checked against references computed without dynaccel; no-op settings bit-identical through generate(); disable
restores; batch 2 with left padding; layouts that cannot be mapped are refused with a clear error."""

import pytest
import torch

import dynaccel
from tiny_lms import IMAGE_TOKEN, VIDEO_TOKEN, tiny_llava_onevision

pytest.importorskip("transformers")

SIZES = [[40, 60], [64, 30]]  # (height, width): a 2x2 tile grid unpadded to rows 1:7, and a 2x1 grid


@pytest.fixture(scope="module")
def onevision():
    return tiny_llava_onevision()


@pytest.fixture(scope="module")
def onevision_downsizing():
    return tiny_llava_onevision(aspect="anyres_max_1")  # every 2x2 grid holds more than ~1 tile: downsized


@pytest.fixture(autouse=True)
def disabled_after(onevision, onevision_downsizing):
    yield
    for model, _ in (onevision, onevision_downsizing):
        dynaccel.disable_accel(model)


def generate(model, inputs, n=4, **kw):
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.scores), out


def tower_scores(model, pixels):
    """(tiles, 16): attention each tower token receives in the last SigLIP layer (whose output feeds the projector),
    mean over heads and queries, computed by hand from that layer's input."""
    tower = model.model.vision_tower
    layer = getattr(tower, "vision_model", tower).encoder.layers[-1]
    attn = layer.self_attn
    with torch.no_grad():
        x = layer.layer_norm1(tower(pixels, output_hidden_states=True).hidden_states[-2])
        n, length, _ = x.shape
        q = attn.q_proj(x).view(n, length, attn.num_heads, -1).transpose(1, 2)
        k = attn.k_proj(x).view(n, length, attn.num_heads, -1).transpose(1, 2)
        return (q @ k.transpose(-1, -2) * attn.scale).softmax(-1).mean(dim=(1, 2))


def assert_top(ref_scores, positions, kept, m):
    """``kept`` (the candidate positions the model kept) are the ``m`` best by the reference scores."""
    order = ref_scores.argsort(descending=True)
    assert float(ref_scores[order[m - 1]] - ref_scores[order[m]]) > 1e-6  # not a near tie
    assert sorted(kept) == sorted(positions[order[:m]].tolist())


# ------------------------------------------------------------------------------------------------------------ images


def test_visionzip_on_anyres_images_keeps_the_tokens_the_tower_ranks_highest(onevision):
    """Reference mapping by identity: each packed image token the model placed in the prompt equals one projected
    tower token (tile, patch) or the newline embedding; the kept tokens must be the best by that tile's score."""
    model, make = onevision
    x = make((20, 17), image_sizes=SIZES)  # 70 and 56 image tokens: different lengths, left padding
    seq, scores, _ = generate(model, x)
    sizes = torch.tensor(SIZES)
    tiles_per_image = [5, 3]
    pixels = torch.cat([x["pixel_values"][i, :t] for i, t in enumerate(tiles_per_image)])
    ref_tiles = tower_scores(model, pixels)
    with torch.no_grad():
        projected = model.model.multi_modal_projector(model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1])
        packed = model.model.get_image_features(x["pixel_values"], sizes).pooler_output

    model.enable_accel("visionzip", keep_ratio=1.0)
    s2, sc2, _ = generate(model, x)
    assert torch.equal(s2, seq) and torch.equal(sc2, scores)

    handle = model.enable_accel("visionzip", keep_ratio=0.25, contextual=0.0)  # dominant tokens only
    s2, sc2, out = generate(model, x, n=2)
    st = handle.stats
    # found from the token counts and checked against the packed features (generate() drops image_sizes)
    assert st["layouts"] == ["image 0: anyres 2x2 rows 1:7 cols 0:8", "image 1: anyres 2x1 rows 0:8 cols 0:4"]
    assert st["kept_visual_tokens"] == [16, 12]  # of 64 and 48 scored tokens; the 6 and 8 newline tokens stay
    length = x["input_ids"].shape[1]
    first_tile = [0, 5]
    for b in range(2):
        flat = projected[first_tile[b]:first_tile[b] + tiles_per_image[b]].flatten(0, 1)
        ref, newline = [], []
        for token in packed[b]:
            same = torch.nonzero((flat == token).all(-1)).flatten()
            if same.numel() == 0:
                assert torch.equal(token, model.model.image_newline.detach())
                newline.append(True)
                ref.append(float("nan"))
                continue
            newline.append(False)
            tile, patch = divmod(int(same[0]), 16)
            ref.append(float(ref_tiles[first_tile[b] + tile, patch]))
        newline, ref = torch.tensor(newline), torch.tensor(ref)
        image = torch.nonzero(x["input_ids"][b] == IMAGE_TOKEN).flatten()
        assert image.numel() == len(packed[b])
        kept_prompt = {p for p in out.cache.layers[0].positions[b].tolist() if p < length}
        assert set(image[newline].tolist()) <= kept_prompt  # newline tokens carry no score and always stay
        kept = [p for p in image[~newline].tolist() if p in kept_prompt]
        m = len(kept)
        assert m == 16 if b == 0 else m >= 12
        assert_top(ref[~newline], image[~newline], kept, m)
    model.disable_accel()
    s3, sc3, _ = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


def test_visionzip_maps_downsized_anyres_grids_and_the_direct_forward_agrees_with_generate(onevision_downsizing):
    model, make = onevision_downsizing
    x = make((20, 17), image_sizes=SIZES)
    seq, scores, _ = generate(model, x, n=2)
    handle = model.enable_accel("visionzip", keep_ratio=0.5)
    s2, sc2, out = generate(model, x, n=2)
    st = handle.stats
    # 6x8 unpadded cells -> ratio sqrt(48/16) = 1.73 -> 3x4; 8x4 -> ratio 2.24 (from sqrt(32/16)... of 2x1) -> 5x2 (model's rule)
    assert st["layouts"] == ["image 0: anyres 2x2 rows 1:7 cols 0:8 resized to 3x4", "image 1: anyres 2x1 rows 0:8 cols 0:4 resized to 5x2"]
    assert st["kept_visual_tokens"] == [14, 13]  # ceil(0.5 * (16 + 12)) and ceil(0.5 * (16 + 10))
    length = x["input_ids"].shape[1]
    via_generate = [[p for p in row.tolist() if p < length] for row in out.cache.layers[0].positions]
    with torch.no_grad():  # a direct forward has image_sizes: the layout comes from them, the same tokens stay
        cache = model(**x, use_cache=True).cache
    assert [row.tolist() for row in cache.layers[0].positions] == via_generate
    assert st["layouts"] == handle.stats["layouts"]
    assert s2.shape == seq.shape and torch.isfinite(sc2).all() and not torch.equal(sc2, scores)
    model.disable_accel()
    s3, sc3, _ = generate(model, x, n=2)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


def test_visionzip_on_several_images_per_prompt_each_a_base_tile(onevision):
    """batch_num_images > 1: each image is its base tile plus one newline token (no anyres grid)."""
    model, make = onevision
    ids = torch.cat([torch.tensor([1, 5, 6]), torch.full((17,), IMAGE_TOKEN), torch.tensor([7]),
                     torch.full((17,), IMAGE_TOKEN), torch.arange(10, 30)])[None]
    gen = torch.Generator().manual_seed(4)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn((2, 5, 3, 32, 32), generator=gen),
         "image_sizes": torch.tensor([[32, 32], [40, 40]]), "batch_num_images": torch.tensor([2])}
    seq, scores, _ = generate(model, x)
    ref = tower_scores(model, x["pixel_values"][:, 0])  # one tile per image
    handle = model.enable_accel("visionzip", keep_ratio=0.25, contextual=0.0)
    s2, sc2, out = generate(model, x, n=2)
    assert handle.stats["layouts"] == ["image 0: base tile", "image 1: base tile"]
    image = torch.nonzero(ids[0] == IMAGE_TOKEN).flatten()
    scored = torch.cat([image[:16], image[17:33]])
    kept = [p for p in out.cache.layers[0].positions[0].tolist() if p in set(scored.tolist())]
    assert len(kept) == 8 and {int(image[16]), int(image[33])} <= set(out.cache.layers[0].positions[0].tolist())
    assert_top(ref.flatten(), scored, kept, 8)
    model.disable_accel()
    s3, sc3, _ = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


def test_an_image_packing_the_config_does_not_describe_is_refused(onevision, onevision_downsizing):
    """generate() may pack with a vision_aspect_ratio other than the config's (and drops it before the forward);
    then no layout the config allows reproduces the packed features: a clear error before any token is dropped, and
    the model keeps working."""
    model, make = onevision
    x = make((20, 17), image_sizes=SIZES)
    seq, scores, _ = generate(model, x)
    other = onevision_downsizing[1]((20, 17), image_sizes=SIZES)  # placeholders for the anyres_max_1 packing
    handle = model.enable_accel("visionzip", keep_ratio=0.25)
    with pytest.raises(dynaccel.UnsupportedModelError, match=r"no LLaVA-OneVision packing layout .*reproduces image 0"):
        generate(model, {**other, "vision_aspect_ratio": "anyres_max_1"})
    generate(model, x)  # the same handle still works on a prompt it can map
    assert handle.stats["kept_visual_tokens"] == [16, 12]
    model.disable_accel()
    s3, sc3, _ = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


@pytest.mark.parametrize(
    "name, change, error, message",
    [
        ("visionzip", dict(keep_ratio=0.0), dynaccel.ConfigError, r"option 'keep_ratio': got 0.0"),
        ("visionzip", dict(keep_ratio=1.5), dynaccel.ConfigError, r"option 'keep_ratio': got 1.5"),
        ("visionzip", "feature_layers", dynaccel.UnsupportedModelError, r"several tower layers \(vision_feature_layer=\[-2, -1\]\); accepted: one int"),
        ("dycoke", dict(kv_layer=6), dynaccel.ConfigError, r"option 'kv_layer': got 6 \(the model has 6 decoder layers\)"),
        ("dycoke", dict(keep_ratio=0.0), dynaccel.ConfigError, r"option 'keep_ratio': got 0.0"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_model_unchanged(onevision, name, change, error, message):
    model, make = onevision
    x = make((20, 17))
    seq, scores, _ = generate(model, x, n=2)
    cfg = dict(keep_ratio=0.25)
    if change == "feature_layers":
        model.config.vision_feature_layer = [-2, -1]
    else:
        cfg = change
    try:
        with pytest.raises(error, match=message):
            model.enable_accel(name, **cfg)
    finally:
        model.config.vision_feature_layer = -1
    assert dynaccel.accel_stats(model) == {}
    for m in model.modules():
        assert not [h for h in list(m._forward_pre_hooks.values()) + list(m._forward_hooks.values())
                    if getattr(h, "__module__", "").startswith("dynaccel")]
    assert model.config.get_text_config()._attn_implementation == "sdpa" and model.config.vision_config._attn_implementation == "sdpa"
    s2, sc2, _ = generate(model, x, n=2)
    assert torch.equal(s2, seq) and torch.equal(sc2, scores)


# ------------------------------------------------------------------------------------------------------------ videos


def test_visionzip_on_video_keeps_the_best_pooled_frame_tokens(onevision):
    """Each frame's 4x4 tower tokens are pooled to 2x2 (bilinear to half size: the mean of each 2x2 block); the
    pooled token's score is the same mix of its tokens' scores; the newline token after the video stays."""
    model, make = onevision
    x = make((20, 17))
    ref_frames = tower_scores(model, x["pixel_values_videos"].flatten(0, 1))  # (8 frames, 16)
    pooled = ref_frames.view(-1, 2, 2, 2, 2).mean(dim=(2, 4)).reshape(2, 16)  # (video, 4 frames x 4 pooled)
    handle = model.enable_accel("visionzip", keep_ratio=0.25, contextual=0.0)
    try:
        with torch.no_grad():
            cache = model(**x, use_cache=True).cache
    finally:
        model.disable_accel()
    assert handle.stats["layouts"] == ["video: 2 x 4 frames x 4 pooled tokens + newline"]
    for b in range(2):
        video = torch.nonzero(x["input_ids"][b] == VIDEO_TOKEN).flatten()
        kept_all = set(cache.layers[0].positions[b].tolist())
        assert int(video[-1]) in kept_all  # the newline token
        kept = [p for p in video[:-1].tolist() if p in kept_all]
        assert len(kept) == 4 if b == 0 else len(kept) >= 4
        assert_top(pooled[b], video[:-1], kept, len(kept))


def test_dycoke_merges_the_pooled_frames_of_a_onevision_video(onevision):
    """Temporal merging drops, in frames 2..4, the tokens most similar to the same place of the frame before (the
    model's own video features, compared without dynaccel); frame 1 and the newline token stay; decode steps
    attend to half the visual entries."""
    model, make = onevision
    x = make((20, 17))
    seq, scores, _ = generate(model, x)
    with torch.no_grad():
        embeds = model(**x, output_hidden_states=True).hidden_states[0]  # layer 0 input: text + video features
    handle = model.enable_accel("dycoke", keep_ratio=0.5, window=4, kv_layer=3, kv_keep_ratio=0.5)
    s2, sc2, _ = generate(model, x)
    st = handle.stats
    assert st["prefill_tokens"] - st["kept_tokens"] == 6  # 3 later frames x 2 of 4 tokens
    assert st["prefill_computed_per_layer"] == [st["kept_tokens"]] * 6
    assert 0 < st["decode_visual_entries_attended"] < st["decode_visual_entries"]
    assert not torch.equal(sc2, scores)
    with torch.no_grad():
        cache = model(**x, use_cache=True).cache
    video = torch.nonzero(x["input_ids"][0] == VIDEO_TOKEN).flatten()
    frames = video[:-1].view(4, 4)
    dropped = set(range(x["input_ids"].shape[1])) - set(cache.layers[0].positions[0].tolist())
    h = torch.nn.functional.normalize(embeds[0].float(), dim=-1)
    want = set()
    for i in range(1, 4):
        sim = (h[frames[i]] * h[frames[i - 1]]).sum(-1)
        want |= set(frames[i][sim.argsort(descending=True)[:2]].tolist())
    assert dropped == want
    pads = torch.nonzero(x["attention_mask"][1] == 0).flatten().tolist()
    assert not set(pads) & set(cache.layers[0].positions[1].tolist())  # the padded row drops its pads first
    model.disable_accel()
    s3, sc3, _ = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)


def test_dycoke_on_onevision_images_has_no_frames(onevision):
    """Anyres images are not frames: temporal merging leaves an image prompt whole (decode-time KV pruning runs)."""
    model, make = onevision
    x = make((20, 17), image_sizes=SIZES)
    handle = model.enable_accel("dycoke", keep_ratio=0.5, kv_keep_ratio=0.5)
    generate(model, x)
    st = handle.stats
    assert st["note"].startswith("fewer than two frames") and st["prefill_token_layers"] == st["prefill_token_layers_full"]
    assert 0 < st["decode_visual_entries_attended"] < st["decode_visual_entries"]
    model.disable_accel()
