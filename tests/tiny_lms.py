"""Tiny transformers language and vision-language models built from config (random weights, eval mode).

Each builder returns ``(model, make_inputs)``; ``make_inputs(batch, lengths)`` gives generate() keyword arguments
with left padding when the lengths differ. Prompts are long enough (tens of tokens) for pruning to matter.
"""

from __future__ import annotations

import torch

VOCAB = 96
IMAGE_TOKEN = 90
VIDEO_TOKEN = 91
PAD = 0


def _text_kwargs(**over):
    kw = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )
    kw.update(over)
    return kw


def _ids(gen, n):
    return torch.randint(3, IMAGE_TOKEN - 1, (n,), generator=gen)


def _pad_left(rows):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def _finish(model, attn):
    model.eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # never stop early: every run makes max_new_tokens tokens
    return model


def tiny_llama(attn: str = "sdpa", seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = _finish(LlamaForCausalLM(LlamaConfig(**_text_kwargs(), attn_implementation=attn)), attn)
    return model, _text_inputs


def tiny_qwen2(attn: str = "sdpa", seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = _finish(Qwen2ForCausalLM(Qwen2Config(**_text_kwargs(), attn_implementation=attn)), attn)
    return model, _text_inputs


def _text_inputs(lengths=(48,), seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.cat([torch.tensor([1]), _ids(gen, n - 1)]) for n in lengths]
    ids, mask = _pad_left(rows)
    return {"input_ids": ids, "attention_mask": mask}


def tiny_llava(attn: str = "sdpa", seed: int = 0):
    """Llava with a tiny CLIP tower: 32x32 images, 8x8 patches -> 16 image tokens per image."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(**_text_kwargs())
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                      vision_feature_select_strategy="default", vision_feature_layer=-2, attn_implementation=attn)
    model = _finish(LlavaForConditionalGeneration(cfg), attn)

    def inputs(lengths=(20,), seed=0, images=1):
        """``images`` images per prompt (16 tokens each); several images of a prompt act as frames for DyCoke."""
        gen = torch.Generator().manual_seed(seed)
        rows = [torch.cat([torch.tensor([1]), _ids(gen, 2), torch.full((16 * images,), IMAGE_TOKEN), _ids(gen, n - 3)])
                for n in lengths]
        ids, mask = _pad_left(rows)
        base = torch.randn((len(lengths), 1, 3, 32, 32), generator=gen)  # frames: one picture plus a little change
        pixels = (base + 0.3 * torch.randn((len(lengths), images, 3, 32, 32), generator=gen)).flatten(0, 1)
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}

    return model, inputs


def tiny_qwen2_vl(attn: str = "sdpa", seed: int = 0):
    """Qwen2-VL with a one-block vision tower: a 8x8-patch grid merged 2x2 -> 16 image tokens per image."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    text = dict(_text_kwargs(), rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
                        vision_start_token_id=88, vision_end_token_id=89, attn_implementation=attn)
    model = _finish(Qwen2VLForConditionalGeneration(cfg), attn)

    def inputs(lengths=(20,), seed=0, grid=(1, 8, 8), video=False):
        """One image per prompt, or (``video=True``) one video of ``grid[0]`` temporal patches (frames)."""
        gen = torch.Generator().manual_seed(seed)
        t, h, w = grid
        n_vis = t * h * w // 4
        token = VIDEO_TOKEN if video else IMAGE_TOKEN
        rows = [torch.cat([torch.tensor([1]), _ids(gen, 2), torch.tensor([88]), torch.full((n_vis,), token),
                           torch.tensor([89]), _ids(gen, n - 3)]) for n in lengths]
        ids, mask = _pad_left(rows)
        patch_dim = 3 * 2 * 4 * 4
        base = torch.randn((len(lengths), 1, h * w, patch_dim), generator=gen)  # frames: one picture, small changes
        pixels = (base + 0.3 * torch.randn((len(lengths), t, h * w, patch_dim), generator=gen)).reshape(-1, patch_dim)
        thw = torch.tensor([list(grid)] * len(lengths))
        if video:
            return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels, "video_grid_thw": thw}
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "image_grid_thw": thw}

    return model, inputs


def tiny_qwen2_5_vl(attn: str = "sdpa", seed: int = 0):
    """Qwen2.5-VL with a two-block vision tower (block 0 attends in windows of 2x2 merged groups, block 1 to the
    whole image): an 8x8-patch grid merged 2x2 -> 16 image tokens per image; inputs as :func:`tiny_qwen2_vl`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    text = dict(_text_kwargs(), rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1],
                  in_channels=3)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN,
                           video_token_id=VIDEO_TOKEN, vision_start_token_id=88, vision_end_token_id=89,
                           attn_implementation=attn)
    model = _finish(Qwen2_5_VLForConditionalGeneration(cfg), attn)
    _, inputs = tiny_qwen2_vl(attn, seed)  # the same prompt layout and patch format
    return model, inputs


def tiny_llava_onevision(attn: str = "sdpa", seed: int = 0, aspect: str = "anyres_max_9"):
    """LLaVA-OneVision with a tiny SigLIP tower and a Qwen2 LM. Video prompts: 4 frames of 32x32, 8x8 patches pooled
    2x2 -> 4 tokens per frame, plus the newline token: 17 video tokens. Image prompts (``image_sizes``): anyres
    tiles of 32x32 (4x4 tokens each) on grid pinpoints up to 64x64, packed by the model (base tile, unpadded grid,
    a newline token per row; ``aspect`` "anyres_max_1" makes the model downsize every 2x2 grid)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    text = Qwen2Config(**_text_kwargs())
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                               video_token_index=VIDEO_TOKEN, vision_feature_layer=-1, attn_implementation=attn,
                               image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]], vision_aspect_ratio=aspect)
    model = _finish(LlavaOnevisionForConditionalGeneration(cfg), attn)

    def inputs(lengths=(20,), seed=0, frames=4, image_sizes=None):
        """A video of ``frames`` frames per prompt, or (``image_sizes``, one (height, width) per prompt) one image."""
        gen = torch.Generator().manual_seed(seed)
        if image_sizes is None:
            counts = [4 * frames + 1] * len(lengths)
        else:
            from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

            sizes = torch.tensor(image_sizes)
            tiles = [image_size_to_num_patches(s, cfg.image_grid_pinpoints, 32) for s in sizes]
            pixels = torch.zeros((len(lengths), max(tiles), 3, 32, 32))
            for i, t in enumerate(tiles):
                pixels[i, :t] = torch.randn((t, 3, 32, 32), generator=gen)
            with torch.no_grad():  # the model's own packing tells how many placeholders each image fills
                counts = [len(f) for f in model.model.get_image_features(pixels, sizes).pooler_output]
        token = VIDEO_TOKEN if image_sizes is None else IMAGE_TOKEN
        rows = [torch.cat([torch.tensor([1]), _ids(gen, 2), torch.full((c,), token), _ids(gen, n - 3)])
                for n, c in zip(lengths, counts)]
        ids, mask = _pad_left(rows)
        if image_sizes is not None:
            return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "image_sizes": sizes}
        pixels = torch.randn((len(lengths), frames, 3, 32, 32), generator=gen)
        return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels}

    return model, inputs
