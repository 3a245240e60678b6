"""Prefill and decode speed of the visual token strategies on random-weight VLMs built from config (CPU).

Speed only: the weights are random, so the outputs say nothing about quality (that needs the zoo's tiny-vlm, not
trained yet). Two models, each sized so that the LLM dominates like in a real VLM:

- Llava: CLIP tower 224x224 / 14x14 patches (256 image tokens, 4 layers x 256) + Llama LM (8 layers x 512), one
  image and a 32-token question: fastv, visionzip, visual_exit, sliminfer.
- Qwen2-VL: a 8-frame video (8 temporal patches of a 16x16-patch grid -> 64 tokens per frame, 512 video tokens) +
  Qwen2 LM (8 layers x 512): dycoke (temporal merging and decode-time KV pruning), fastv.
- LLaVA-OneVision: SigLIP tower 224x224 / 14x14 patches (4 layers x 256) + Qwen2 LM (8 layers x 512); an anyres image
  (base tile + a 2x2 tile grid unpadded to 22 of 32 rows: 982 image tokens) and an 8-frame video (8 x 64 pooled tokens +
  newline): visionzip, fastv, dycoke.
- Qwen2.5-VL: a 448x448 image (256 merged tokens; the 4-block tower attends in 4x4-group windows, block 3 to the
  whole image) + Qwen2 LM (8 layers x 512): visionzip, fastv.

Settings are measured round-robin (a warm-up round, then the median of --repeats rounds), one torch thread.

    python scripts/bench_vlm_tokens.py --repeats 3
    python scripts/bench_vlm_tokens.py --models onevision_image,onevision_video,qwen2_5_vl --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import platform

import torch

import dynaccel  # noqa: F401  (adds model.enable_accel)


def llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                              image_size=224, patch_size=14, projection_dim=256)
    text = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, pad_token_id=0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=999,
                                                      attn_implementation="sdpa")).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, None
    ids = torch.cat([torch.tensor([1, 5, 6]), torch.full((256,), 999), torch.randint(3, 900, (32,))])[None]
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(1, 3, 224, 224)}
    settings = [
        ("full compute", None, {}),
        ("fastv K=2 keep=0.25", "fastv", dict(layer=2, keep_ratio=0.25)),
        ("visionzip keep=0.25", "visionzip", dict(keep_ratio=0.25)),
        ("visual_exit layer=2", "visual_exit", dict(layer=2)),
        ("sliminfer L=2/2 keep=0.5", "sliminfer", dict(layer=2, interval=2, keep_ratio=0.5, block_size=16)),
    ]
    return "Llava (random weights), 291-token prompt with 256 image tokens", model, x, settings


def qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    text = dict(vocab_size=1000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, max_position_embeddings=4096, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]})
    vision = dict(depth=2, embed_dim=128, hidden_size=512, num_heads=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=998, video_token_id=999,
                        vision_start_token_id=996, vision_end_token_id=997, attn_implementation="sdpa")
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, None
    t, h, w = 8, 16, 16
    ids = torch.cat([torch.tensor([1, 5, 996]), torch.full((t * h * w // 4,), 999), torch.tensor([997]),
                     torch.randint(3, 900, (32,))])[None]
    base = torch.randn(1, h * w, 3 * 2 * 14 * 14)
    frames = (base + 0.2 * torch.randn(t, h * w, 3 * 2 * 14 * 14)).reshape(-1, 3 * 2 * 14 * 14)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": frames,
         "video_grid_thw": torch.tensor([[t, h, w]])}
    settings = [
        ("full compute", None, {}),
        ("dycoke keep=0.5 kv_keep=0.3", "dycoke", dict(keep_ratio=0.5, window=4, kv_layer=3, kv_keep_ratio=0.3)),
        ("dycoke keep=1.0 kv_keep=0.3", "dycoke", dict(keep_ratio=1.0, kv_layer=3, kv_keep_ratio=0.3)),
        ("fastv K=2 keep=0.25", "fastv", dict(layer=2, keep_ratio=0.25)),
    ]
    return f"Qwen2-VL (random weights), {ids.shape[1]}-token prompt with an 8-frame video (512 video tokens)", model, x, settings


def _text512(**over):
    kw = dict(vocab_size=1000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=4, max_position_embeddings=4096, pad_token_id=0)
    kw.update(over)
    return kw


def _onevision():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                image_size=224, patch_size=14)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=Qwen2Config(**_text512()), image_token_index=998,
                               video_token_index=999, vision_feature_layer=-1, attn_implementation="sdpa",
                               image_grid_pinpoints=[[224, 224], [224, 448], [448, 224], [448, 448]])
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, None
    return model


def onevision_image():
    model = _onevision()
    sizes = torch.tensor([[300, 450]])  # best resolution 448x448: base tile + 2x2 grid, unpadded to 22 of 32 rows
    pixels = torch.randn(1, 5, 3, 224, 224)
    with torch.no_grad():
        n = len(model.model.get_image_features(pixels, sizes).pooler_output[0])
    ids = torch.cat([torch.tensor([1, 5, 6]), torch.full((n,), 998), torch.randint(3, 900, (32,))])[None]
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels, "image_sizes": sizes}
    settings = [
        ("full compute", None, {}),
        ("visionzip keep=0.25", "visionzip", dict(keep_ratio=0.25)),
        ("fastv K=2 keep=0.25", "fastv", dict(layer=2, keep_ratio=0.25)),
    ]
    return f"LLaVA-OneVision (random weights), {ids.shape[1]}-token prompt with an anyres image ({n} image tokens)", model, x, settings


def onevision_video():
    model = _onevision()
    frames = 8
    n = frames * 64 + 1
    ids = torch.cat([torch.tensor([1, 5, 6]), torch.full((n,), 999), torch.randint(3, 900, (32,))])[None]
    base = torch.randn(1, 1, 3, 224, 224)
    video = base + 0.2 * torch.randn(1, frames, 3, 224, 224)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": video}
    settings = [
        ("full compute", None, {}),
        ("visionzip keep=0.25", "visionzip", dict(keep_ratio=0.25)),
        ("dycoke keep=0.5 kv_keep=1.0", "dycoke", dict(keep_ratio=0.5, window=4, kv_keep_ratio=1.0)),
        ("fastv K=2 keep=0.25", "fastv", dict(layer=2, keep_ratio=0.25)),
    ]
    return f"LLaVA-OneVision (random weights), {ids.shape[1]}-token prompt with an 8-frame video ({n} video tokens)", model, x, settings


def qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    text = _text512(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]})
    vision = dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=512, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[3], in_channels=3)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=998, video_token_id=999,
                           vision_start_token_id=996, vision_end_token_id=997, attn_implementation="sdpa")
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, None
    h = w = 32
    ids = torch.cat([torch.tensor([1, 5, 996]), torch.full((h * w // 4,), 998), torch.tensor([997]),
                     torch.randint(3, 900, (32,))])[None]
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(h * w, 3 * 2 * 14 * 14),
         "image_grid_thw": torch.tensor([[1, h, w]])}
    settings = [
        ("full compute", None, {}),
        ("visionzip keep=0.25", "visionzip", dict(keep_ratio=0.25)),
        ("fastv K=2 keep=0.25", "fastv", dict(layer=2, keep_ratio=0.25)),
    ]
    return f"Qwen2.5-VL (random weights), {ids.shape[1]}-token prompt with a 448x448 image (256 image tokens)", model, x, settings


BUILDERS = {"llava": llava, "qwen2_vl": qwen2_vl, "onevision_image": onevision_image,
            "onevision_video": onevision_video, "qwen2_5_vl": qwen2_5_vl}


def run(title, model, x, settings, repeats, new_tokens):
    from dynaccel.hf_integration.bench import Setting
    from dynaccel.hf_integration.bench_tokens import measure_speed

    rows = [(label, Setting("full") if name is None else Setting("dynaccel", name, cfg)) for label, name, cfg in settings]
    speed = measure_speed(model, x, [s for _, s in rows], repeats, new_tokens)  # round-robin, warm-up, median
    base = speed[rows[0][1].label].prefill_s
    print(f"\n{title}")
    print(f"{'setting':30s} {'prefill (s)':>11s} {'speedup':>8s} {'decode tok/s':>12s} {'token-layers':>13s}")
    for label, s in rows:
        sp = speed[s.label]
        print(f"{label:30s} {sp.prefill_s:11.3f} {base / sp.prefill_s:7.2f}x {sp.decode_tok_s:12.1f} {sp.token_layers:>13s}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="llava,qwen2_vl", help=f"comma-separated, of: {', '.join(BUILDERS)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s), torch {torch.__version__}, "
          f"{datetime.date.today()}; prefill = generate(1 token) incl. the vision tower; decode = (generate(N) - generate(1)) / (N - 1)")
    for name in args.models.split(","):
        run(*BUILDERS[name](), args.repeats, args.new_tokens)


if __name__ == "__main__":
    main()
