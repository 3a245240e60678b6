"""Train the zoo's ``tiny-flux``: a complete, really trained FluxPipeline small enough for CPU tests (~2 cores).

    python -m dynaccel.zoo.train_tiny_flux --out zoo/tiny-flux            # the committed weights (fixed seed)

What it builds (all from a fixed seed, no network):

1. tokenizers: one ``tokenizers`` WordLevel model over the prompt grammar of
   :mod:`dynaccel.zoo.synthetic_images` (+ ``<pad>``, ``</s>``, ``<unk>``), lower-casing, whitespace split, a
   post-processor appending ``</s>``, saved as ``transformers.PreTrainedTokenizerFast`` in both of Flux's
   tokenizer slots (``tokenizer`` for CLIP, ``tokenizer_2`` for T5). Flux's real tokenizers (CLIP BPE, T5
   SentencePiece) would have to be downloaded; a word-level vocabulary is all this grammar needs.
2. text encoders: a random, frozen ``CLIPTextModel`` (hidden 32, 2 layers; its pooled output at ``</s>`` feeds
   the transformer's ``pooled_projections``) and a random, frozen ``T5EncoderModel`` (d_model 32, 2 layers; the
   token embeddings Flux's joint attention reads). Prompts differ by token, so random encoders separate them.
3. VAE: ``AutoencoderKL`` (block_out_channels [32, 64], one res block per stage, no mid-block attention, 4 latent
   channels, no quant convs as in Flux) -> 2x down: 48x48 px -> 4x24x24 latents, which the pipeline packs 2x2
   into **144 image tokens** of 16 channels. Loss = L1 + MSE with every pixel weighted by 1 + 12 x its distance
   from the background colour (small shapes must not vanish), + 1e-4 x KL; gate on held-out reconstructions.
   ``shift_factor`` / ``scaling_factor`` are fitted on the latent dataset (the pipeline decodes
   ``latents / scaling_factor + shift_factor``).
4. transformer: ``FluxTransformer2DModel`` (patch 1, 2 double-stream + 4 single-stream blocks, 4 heads x 32,
   RoPE axes (8, 12, 12), no guidance embedding) trained by flow matching in the convention of diffusers'
   ``FlowMatchEulerDiscreteScheduler`` (sigma = shift*u / (1 + (shift-1)*u), x_t = (1 - sigma) x0 + sigma noise,
   target noise - x0; Flux takes ``timestep = sigma``), 10% empty prompts (so true CFG is available), prompt
   embeddings from the pipeline's own ``encode_prompt`` with max_sequence_length 8, EMA weights saved.
5. ``FluxPipeline.save_pretrained`` (float32 safetensors), then a check through the stock
   ``FluxPipeline.from_pretrained`` + ``__call__``: colour, position and size of generated samples.

The step counts are the reproducible knob; ``--minutes-vae`` / ``--minutes-transformer`` only cap the wall time.
Budget on this 2-core CPU is in ``zoo/tiny-flux/training_info.json`` and ``zoo/tiny-flux/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from dynaccel.zoo import synthetic_images as si
from dynaccel.zoo.train_tiny_wan import SPECIAL_TOKENS, _lr_factor, _Progress, fit_vae

MAX_SEQUENCE_LENGTH = 8
SHIFT = 2.0
HEIGHT = WIDTH = si.SIZE
NUM_INFERENCE_STEPS = 20

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=HEIGHT,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=False,
)
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)


def build_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *si.VOCABULARY))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=MAX_SEQUENCE_LENGTH, padding_side="right",
    )


def build_text_encoders(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_SEQUENCE_LENGTH, projection_dim=32, pad_token_id=0, bos_token_id=1,
        eos_token_id=1,  # pooled output = hidden state at the first </s> (id 1; CLIP's legacy argmax is for id 2)
        attention_dropout=0.0, dropout=0.0,
    )).eval().requires_grad_(False)
    t5 = T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval().requires_grad_(False)
    return clip, t5


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.clamp(-1, 1).add(1).div(2).permute(0, 2, 3, 1).cpu().numpy()


def score_images(images, labels) -> dict:
    """Fraction of images whose colour, position and size (read by ``analyse_image``) match their labels."""
    hits = {"colour": 0, "position": 0, "size": 0}
    for img, lab in zip(images, labels):
        a = si.analyse_image(img)
        for k in hits:
            hits[k] += a[k] == lab[k]
    return {k: v / len(labels) for k, v in hits.items()}


@torch.no_grad()
def evaluate_vae(vae, n: int = 128, seed: int = 10_000) -> dict:
    """Reconstruct ``n`` held-out images: PSNR (dB, [0, 1] range) and colour/position/size correctness."""
    vae.eval()
    images, _, labels = si.make_batch(n, seed=seed)
    rec = _to_numpy(vae.decode(vae.encode(si.as_tensor(images)).latent_dist.mode()).sample)
    mse = float(((rec - images) ** 2).mean())
    vae.train()
    return {"psnr": 10 * math.log10(1.0 / max(mse, 1e-12)), **score_images(rec, labels)}


def train_vae(steps: int, max_minutes: float | None, seed: int, log: _Progress, batch: int = 16,
              stop_after: int | None = None):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG).train()

    def batches(step):
        images, _, _ = si.make_batch(batch, seed=seed * 1_000_003 + step)
        return si.as_tensor(images)

    return fit_vae(vae, batches, steps, max_minutes, log, stop_after=stop_after)


@torch.no_grad()
def encode_dataset(vae, n: int, seed: int, log: _Progress):
    """Latent means (n, 4, 24, 24) and prompts of ``n`` images."""
    lat, prompts = [], []
    for i in range(0, n, 64):
        images, p, _ = si.make_batch(min(64, n - i), seed=seed + i)
        lat.append(vae.encode(si.as_tensor(images)).latent_dist.mode())
        prompts += p
        log(f"encoded {i + len(p)}/{n} images")
    return torch.cat(lat), prompts


def train_transformer(latents, prompt_ids, embeds, pooled, empty, empty_pooled, steps, max_minutes, seed, log,
                      batch: int = 32, stop_after: int | None = None):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**TRANSFORMER_CONFIG).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    warmup = min(100, max(1, steps // 10))
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = latents.shape
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, torch.device("cpu"), torch.float32)
    txt_ids = torch.zeros(embeds.shape[1], 3)
    start, done, loss_avg = time.time(), 0, None
    for step in range(min(steps, stop_after or steps)):
        if max_minutes is not None and time.time() - start > 60 * max_minutes:
            break
        for pg in opt.param_groups:
            pg["lr"] = 1e-3 * _lr_factor(step, steps, warmup)
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = FluxPipeline._pack_latents(latents[idx], batch, c, h, w)
        cond, pool = embeds[prompt_ids[idx]], pooled[prompt_ids[idx]]
        drop = torch.rand(batch, generator=g) < 0.1
        cond = torch.where(drop.view(-1, 1, 1), empty.expand_as(cond), cond)
        pool = torch.where(drop.view(-1, 1), empty_pooled.expand_as(pool), pool)
        u = torch.rand(batch, generator=g)
        sigma = SHIFT * u / (1.0 + (SHIFT - 1.0) * u)
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1)
        xt = (1.0 - s) * x0 + s * noise
        pred = model(hidden_states=xt, timestep=sigma, pooled_projections=pool, encoder_hidden_states=cond,
                     txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        done = step + 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        log(f"transformer step {done}/{steps} loss {loss_avg:.4f} lr {opt.param_groups[0]['lr']:.2e}")
    minutes = (time.time() - start) / 60
    log(f"transformer done: {done} steps in {minutes:.1f} min, loss {loss_avg:.4f}", force=True)
    return ema, {"steps": done, "requested_steps": steps, "minutes": round(minutes, 2), "final_loss": loss_avg}


def check_prompts() -> list[str]:
    """16 prompts covering every size, colour, shape and position."""
    sizes, colours, positions = list(si.SIZES), list(si.COLOURS), list(si.POSITIONS)
    return [si.prompt_for(sizes[i % 2], colours[i % 4], si.SHAPES[i % 3], positions[(i // 4 + i) % 4])
            for i in range(16)]


@torch.no_grad()
def check_pipeline(folder: str, prompts: list[str], seed: int = 0, **overrides) -> dict:
    """Load ``folder`` with the stock FluxPipeline and score colour/position/size of generated samples."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(height=HEIGHT, width=WIDTH, num_inference_steps=NUM_INFERENCE_STEPS,
              max_sequence_length=MAX_SEQUENCE_LENGTH)
    kw.update(overrides)
    images = pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images
    return {**score_images(images, [si.parse_prompt(p) for p in prompts]), "settings": kw}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the pipeline (save_pretrained)")
    ap.add_argument("--vae-steps", type=int, default=1000, help="length of the VAE's learning-rate schedule")
    ap.add_argument("--vae-stop-after", type=int, default=None, help="stop the VAE after this many steps")
    ap.add_argument("--transformer-steps", type=int, default=3000,
                    help="length of the transformer's learning-rate schedule")
    ap.add_argument("--transformer-stop-after", type=int, default=None,
                    help="stop the transformer after this many steps")
    ap.add_argument("--minutes-vae", type=float, default=None, help="optional wall-time cap for the VAE phase")
    ap.add_argument("--minutes-transformer", type=float, default=None, help="optional cap for the transformer")
    ap.add_argument("--dataset-images", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    log = _Progress(30.0)
    t0 = time.time()
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    tokenizer = build_tokenizer()
    torch.manual_seed(args.seed)
    clip, t5 = build_text_encoders(len(tokenizer))

    vae, vae_info = train_vae(args.vae_steps, args.minutes_vae, args.seed, log, stop_after=args.vae_stop_after)
    gate = evaluate_vae(vae)
    vae_info["gate"] = gate
    ok = gate["psnr"] >= 25 and min(gate["colour"], gate["position"], gate["size"]) >= 0.95
    log(f"VAE gate (held-out images): PSNR {gate['psnr']:.2f} dB, colour {gate['colour']:.0%}, position "
        f"{gate['position']:.0%}, size {gate['size']:.0%} -> {'PASS' if ok else 'BELOW TARGET'}", force=True)

    t_enc = time.time()
    raw, prompts = encode_dataset(vae, args.dataset_images, seed=args.seed * 7919 + 500_000, log=log)
    shift, std = float(raw.mean()), float(raw.std())
    vae.register_to_config(shift_factor=round(shift, 6), scaling_factor=round(1.0 / std, 6))
    latents = (raw - vae.config.shift_factor) * vae.config.scaling_factor
    log(f"latent dataset {tuple(latents.shape)} in {time.time() - t_enc:.0f}s; shift {shift:.4f}, "
        f"scale {1 / std:.4f}", force=True)

    # Flux's pipeline computes a resolution-dependent ``mu``; a fixed shift keeps training and sampling aligned.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5,
                        tokenizer_2=copy.deepcopy(tokenizer), transformer=None)
    vocab_prompts = si.all_prompts()
    cpu = torch.device("cpu")
    embeds, pooled, _ = pipe.encode_prompt(vocab_prompts, None, device=cpu,
                                           max_sequence_length=MAX_SEQUENCE_LENGTH)
    empty, empty_pooled, _ = pipe.encode_prompt([""], None, device=cpu, max_sequence_length=MAX_SEQUENCE_LENGTH)
    index = {p: i for i, p in enumerate(vocab_prompts)}
    prompt_ids = torch.tensor([index[p] for p in prompts])

    transformer, tr_info = train_transformer(latents, prompt_ids, embeds, pooled, empty, empty_pooled,
                                             args.transformer_steps, args.minutes_transformer, args.seed + 1, log,
                                             stop_after=args.transformer_stop_after)

    os.makedirs(args.out, exist_ok=True)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5,
                        tokenizer_2=copy.deepcopy(tokenizer), transformer=transformer)
    pipe.save_pretrained(args.out, safe_serialization=True)

    prompts16 = check_prompts()
    checks = {
        "no_cfg": check_pipeline(args.out, prompts16),
        "true_cfg_4": check_pipeline(args.out, prompts16, true_cfg_scale=4.0, negative_prompt=""),
    }
    for name, c in checks.items():
        log(f"samples through FluxPipeline.from_pretrained ({name}): colour {c['colour']:.0%}, "
            f"position {c['position']:.0%}, size {c['size']:.0%}", force=True)
    info = {
        # reproduces these weights: the schedules' lengths plus where each phase stopped (a cap may end it early)
        "command": f"python -m dynaccel.zoo.train_tiny_flux --out {args.out} --vae-steps {args.vae_steps} "
                   f"--vae-stop-after {vae_info['steps']} --transformer-steps {args.transformer_steps} "
                   f"--transformer-stop-after {tr_info['steps']} --dataset-images {args.dataset_images} "
                   f"--seed {args.seed} --threads {args.threads}",
        "vae": vae_info,
        "transformer": tr_info,
        "sample_check": checks,
        "total_minutes": round((time.time() - t0) / 60, 2),
        "torch": torch.__version__,
        "threads": args.threads,
    }
    with open(os.path.join(args.out, "training_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    log(f"saved to {args.out} ({info['total_minutes']} min total)", force=True)


if __name__ == "__main__":
    main()
