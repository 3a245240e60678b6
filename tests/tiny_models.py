"""Tiny diffusers models and pipelines built from config (random weights, eval mode), shared by the tests.

The pipelines take precomputed prompt embeddings (no tokenizer or text encoder, nothing downloaded) and return
latents, so a 10-step generation with CFG takes well under a second on one CPU thread.
"""

from __future__ import annotations

import torch

TEXT_DIM = 32


def tiny_wan_transformer(num_layers: int = 3, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=num_layers, cross_attn_norm=True, rope_max_seq_len=32,
    ).eval()


def tiny_wan_pipeline(seed: int = 0):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    transformer = tiny_wan_transformer(seed=seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, axes_dims_rope=[4, 6, 6],
    ).eval()


def tiny_flux_pipeline(seed: int = 0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer = tiny_flux_transformer(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], latent_channels=4,
                        layers_per_block=1, norm_num_groups=4).eval()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embeds(batch: int, seed: int, *shape: int, same: bool = False) -> torch.Tensor:
    if same:
        return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed)).expand(batch, *shape).clone()
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def run_wan(pipe, *, steps: int = 10, batch: int = 1, guidance: float = 5.0, seed: int = 0,
            same_prompt: bool = False) -> torch.Tensor:
    """One generation; returns the final latents. ``same_prompt``: every sample gets the same embedding."""
    return pipe(
        prompt_embeds=_embeds(batch, 11, 8, TEXT_DIM, same=same_prompt),
        negative_prompt_embeds=_embeds(batch, 12, 8, TEXT_DIM, same=same_prompt),
        height=16, width=16, num_frames=5, num_inference_steps=steps, guidance_scale=guidance,
        output_type="latent", generator=torch.Generator().manual_seed(seed),
    ).frames


def run_flux(pipe, *, steps: int = 10, batch: int = 1, guidance: float = 3.0, seed: int = 0,
             same_prompt: bool = False) -> torch.Tensor:
    kwargs = {}
    if guidance > 1:
        kwargs = dict(negative_prompt_embeds=_embeds(batch, 13, 8, TEXT_DIM, same=same_prompt),
                      negative_pooled_prompt_embeds=_embeds(batch, 14, TEXT_DIM, same=same_prompt),
                      true_cfg_scale=guidance)
    return pipe(
        prompt_embeds=_embeds(batch, 11, 8, TEXT_DIM, same=same_prompt),
        pooled_prompt_embeds=_embeds(batch, 12, TEXT_DIM, same=same_prompt),
        height=16, width=16, num_inference_steps=steps, output_type="latent",
        generator=torch.Generator().manual_seed(seed), **kwargs,
    ).images


PIPELINES = {"wan": (tiny_wan_pipeline, run_wan), "flux": (tiny_flux_pipeline, run_flux)}


def block_modules(pipe) -> list[torch.nn.Module]:
    t = pipe.transformer
    if hasattr(t, "blocks"):
        return list(t.blocks)
    return list(t.transformer_blocks) + list(getattr(t, "single_transformer_blocks", []))


def BlockCounter(pipe):
    """Counts how many times the blocks' attention actually ran (a skipped block never reaches it)."""
    from dynaccel.hf_integration.bench import AttentionCounter

    return AttentionCounter(block_modules(pipe))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_hunyuan_transformer(seed: int = 0, image_condition_type: str | None = None):
    """HunyuanVideo with 1 dual-stream and 2 single-stream blocks (``token_replace``: the I2V block classes)."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, rope_axes_dim=(4, 6, 6),
        image_condition_type=image_condition_type,
    ).eval()


def hunyuan_inputs(batch: int = 2, seed: int = 0) -> dict:
    """Latents (B, C, F, H, W) = (B, 4, 3, 8, 8) -> 48 tokens; 8 text tokens, the last 2 of sample 0 padded."""
    mask = torch.ones(batch, 8, dtype=torch.long)
    mask[0, -2:] = 0
    return dict(
        hidden_states=torch.randn(batch, 4, 3, 8, 8, generator=_gen(seed)),
        timestep=torch.full((batch,), 999.0),
        encoder_hidden_states=torch.randn(batch, 8, TEXT_DIM, generator=_gen(seed + 1)),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, TEXT_DIM, generator=_gen(seed + 2)),
        guidance=torch.full((batch,), 6000.0),  # the pipeline passes guidance_scale * 1000
    )


def tiny_cogvideox_transformer(seed: int = 0):
    """CogVideoX (2B layout: sincos positional embeddings, no RoPE) with 2 blocks."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=TEXT_DIM, num_layers=2, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8,
    ).eval()


def cogvideox_inputs(batch: int = 2, seed: int = 0) -> dict:
    """Latents (B, F, C, H, W) = (B, 2, 4, 8, 8) -> 32 tokens; 8 text tokens (= max_text_seq_length)."""
    return dict(
        hidden_states=torch.randn(batch, 2, 4, 8, 8, generator=_gen(seed)),
        encoder_hidden_states=torch.randn(batch, 8, TEXT_DIM, generator=_gen(seed + 1)),
        timestep=torch.full((batch,), 999, dtype=torch.long),
    )


def tiny_ltx_transformer(seed: int = 0):
    """LTX-Video with 2 blocks."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=32, num_layers=2, caption_channels=TEXT_DIM,
    ).eval()


def ltx_inputs(batch: int = 2, seed: int = 0) -> dict:
    """Packed latents (B, F*H*W, C) with F, H, W = 2, 4, 4; 8 text tokens, the last 2 of sample 0 padded."""
    mask = torch.ones(batch, 8, dtype=torch.long)
    mask[0, -2:] = 0
    return dict(
        hidden_states=torch.randn(batch, 2 * 4 * 4, 4, generator=_gen(seed)),
        encoder_hidden_states=torch.randn(batch, 8, TEXT_DIM, generator=_gen(seed + 1)),
        timestep=torch.full((batch,), 999.0),
        encoder_attention_mask=mask,
        num_frames=2, height=4, width=4,
        rope_interpolation_scale=(8 / 25, 32, 32),  # as LTXPipeline: (temporal compression / frame rate, spatial x2)
    )


def save_tiny_wan_folder(path, call: dict) -> "Path":
    """A complete WanPipeline folder (tokenizer and text encoder included, random weights) with the generation
    settings in ``dynaccel_generation.json``: what `dynaccel bench` and `calibrate` load."""
    import json

    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    from dynaccel.zoo.train_tiny_wan import build_text_encoder, build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                           latents_std=[1.0] * 4).eval()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=build_text_encoder(len(tokenizer)),
                       transformer=tiny_wan_transformer(), vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(path)
    (path / "dynaccel_generation.json").write_text(json.dumps(call))
    return path
