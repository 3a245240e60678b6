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
