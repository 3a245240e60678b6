"""Prefill and decode speed of the visual token strategies on random-weight VLMs built from config (CPU).

Speed only: the weights are random, so the outputs say nothing about quality (that needs the zoo's tiny-vlm, not
trained yet). Two models, each sized so that the LLM dominates like in a real VLM:

- Llava: CLIP tower 224x224 / 14x14 patches (256 image tokens, 4 layers x 256) + Llama LM (8 layers x 512), one
  image and a 32-token question: fastv, visionzip, visual_exit, sliminfer.
- Qwen2-VL: a 8-frame video (8 temporal patches of a 16x16-patch grid -> 64 tokens per frame, 512 video tokens) +
  Qwen2 LM (8 layers x 512): dycoke (temporal merging and decode-time KV pruning), fastv.

Settings are measured round-robin (a warm-up round, then the median of --repeats rounds), one torch thread.

    python scripts/bench_vlm_tokens.py --repeats 3
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s), torch {torch.__version__}, "
          f"{datetime.date.today()}; prefill = generate(1 token) incl. the vision tower; decode = (generate(N) - generate(1)) / (N - 1)")
    for build in (llava, qwen2_vl):
        run(*build(), args.repeats, args.new_tokens)


if __name__ == "__main__":
    main()
