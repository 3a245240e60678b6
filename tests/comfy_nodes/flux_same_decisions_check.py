"""The diffusers path and the ComfyUI path on one shared tiny Flux model: same skip decisions.

Run with ComfyUI's Python (ComfyUI's folder and this repo, as ``dynaccel``, on sys.path; diffusers installed
there); prints one JSON line. Used by ``test_comfyui_integration.py::test_flux_diffusers_and_comfyui_paths_make_the_same_decisions``.

A tiny diffusers ``FluxTransformer2DModel`` (FLUX.1-dev layout with guidance embedding; width 64, 1 head, 2 double-
and 2 single-stream blocks, text width 64, pooled width 32; random weights) is built from config. Its weights go
through ComfyUI's own diffusers-to-Flux converter (``comfy.model_detection.convert_diffusers_mmdit``) into ComfyUI's
``model_base.Flux`` (``comfy.ldm.flux.model.Flux`` inside) built from the matching unet config, in a ``ModelPatcher``:
ComfyUI's model detection fixes Flux's width at 3072, so ``comfy.sd.load_diffusion_model`` cannot be used for it.

For each strategy and threshold ComfyUI samples through ``comfy.sample.sample`` (euler, simple schedule, cfg 1,
Flux guidance 3.5) on the model the dynaccel node's ``accelerate`` patched; the diffusers model runs the same Euler
steps on the same sigmas, noise and text features with ``enable_accel``. Both paths' decisions (skipped steps,
per-block reuse) are reported, with their outputs against their plain runs and the plain models' agreement.
ComfyUI's Flux blocks add into their input tensors in place (diffusers' do not), which this comparison covers.
"""

from __future__ import annotations

import json
import sys

import torch

STEPS = 10
SEED = 5
CASES = (
    [("teacache", t) for t in (0.0, 0.3, 0.6, 1.0)]
    + [("fbcache", t) for t in (0.0, 0.1, 0.3)]
    + [("bwcache", t) for t in (0.0, 0.1, 0.3)]
    + [("taylorseer", t) for t in (0.0, 0.1, 0.3)]
    + [("adacache", t) for t in (0.0, 0.3, 1.0)]
    + [("easycache", t) for t in (0.0, 0.3)]
)

UNET_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 64,
    "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 1, "depth": 2, "depth_single_blocks": 2, "axes_dim": [16, 24, 24],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}


def main() -> None:
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models
    from diffusers import FluxTransformer2DModel

    import dynaccel
    from dynaccel.comfy_nodes.runner import accelerate

    torch.manual_seed(0)
    dmodel = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=64, num_attention_heads=1,
        joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 24, 24),
    ).eval()
    sd = comfy.model_detection.convert_diffusers_mmdit({k: v.clone() for k, v in dmodel.state_dict().items()}, "")
    model_config = comfy.supported_models.Flux(UNET_CONFIG)
    model_config.set_inference_dtype(torch.float32, None)
    base_model = model_config.get_model(sd, "")
    missing, unexpected = base_model.diffusion_model.load_state_dict(sd, strict=False)
    patcher = comfy.model_patcher.ModelPatcher(base_model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    g = torch.Generator().manual_seed(SEED)
    noise = torch.randn(1, 16, 16, 16, generator=g)
    cond = torch.randn(1, 8, 64, generator=g)
    pooled = torch.randn(1, 32, generator=g)
    latent = torch.zeros(1, 16, 16, 16)
    sampling = patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS).float()

    def comfy_run(strategy=None, threshold=0.0):
        m, acc = (patcher, None) if strategy is None else accelerate(patcher, strategy, {"threshold": threshold})
        conds = [[cond, {"pooled_output": pooled, "guidance": 3.5}]]
        out = comfy.sample.sample(
            m, noise, STEPS, 1.0, "euler", "simple", conds, conds, latent, denoise=1.0, disable_pbar=True, seed=SEED
        )
        return out, acc.last_stats if acc is not None else None

    h, w = noise.shape[-2] // 2, noise.shape[-1] // 2
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    img_ids = img_ids.reshape(h * w, 3)
    txt_ids = torch.zeros(cond.shape[1], 3)

    def pack(x):  # (b, c, 2h, 2w) -> (b, h*w, c*4), as ComfyUI's Flux.process_img and diffusers' Flux pipeline
        b, c = x.shape[:2]
        return x.view(b, c, h, 2, w, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * 4)

    def unpack(x):
        b = x.shape[0]
        return x.view(b, h, w, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, h * 2, w * 2)

    def diffusers_run(strategy=None, threshold=0.0):
        handle = None
        if strategy is not None:
            handle = dynaccel.enable_accel(dmodel, strategy, threshold=threshold)
            handle.reset(num_steps=STEPS)
        x = sampling.noise_scaling(sigmas[0], noise, base_model.process_latent_in(latent))
        with torch.no_grad():
            for i in range(STEPS):
                s = sigmas[i]
                v = dmodel(
                    hidden_states=pack(x), encoder_hidden_states=cond, pooled_projections=pooled, timestep=s.reshape(1),
                    img_ids=img_ids, txt_ids=txt_ids, guidance=torch.tensor([3.5]), return_dict=False,
                )[0]
                x = x + (sigmas[i + 1] - s) * unpack(v)
        stats = handle.stats if handle is not None else None
        if handle is not None:
            dynaccel.disable_accel(dmodel)
        return base_model.process_latent_out(x), stats

    plain_c, _ = comfy_run()
    plain_d, _ = diffusers_run()
    report = {
        "dynaccel_file": dynaccel.__file__,
        "missing_keys": list(missing),
        "unexpected_keys": list(unexpected),
        "plain_rel_diff": float((plain_c - plain_d).norm() / plain_d.norm()),
        "cases": [],
    }
    for strategy, threshold in CASES:
        out_c, stats_c = comfy_run(strategy, threshold)
        out_d, stats_d = diffusers_run(strategy, threshold)
        report["cases"].append({
            "strategy": strategy,
            "threshold": threshold,
            "comfy_skipped": stats_c["branches"]["cond"]["skipped_steps"],
            "diffusers_skipped": stats_d["branches"]["default"]["skipped_steps"],
            "comfy_reused_per_block": stats_c.get("reused_per_block"),
            "diffusers_reused_per_block": stats_d.get("reused_per_block"),
            "comfy_vs_plain": float((out_c - plain_c).norm() / plain_c.norm()),
            "diffusers_vs_plain": float((out_d - plain_d).norm() / plain_d.norm()),
        })
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
