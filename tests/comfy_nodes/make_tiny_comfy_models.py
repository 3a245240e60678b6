"""Build tiny random-weight models with ComfyUI's own classes and save them as safetensors (run with ComfyUI's
python, ComfyUI's folder on sys.path): ``python make_tiny_comfy_models.py OUT_DIR``.

- ``tiny_wan21.safetensors``: ``comfy.ldm.wan.model.WanModel`` (t2v), dim 128 (1 head of 128), 4 layers, text width
  4096; ComfyUI's model detection recognises it as Wan 2.1.
- ``tiny_hunyuanvideo.safetensors``: ``comfy.ldm.hunyuan_video.model.HunyuanVideo``, width 128 (1 head), 2 double-
  and 2 single-stream blocks, text width 4096, 64 latent channels (ComfyUI detects it as HunyuanImage 2.1, which runs on this class),
  no pooled-vector input and no guidance embedding.
- ``tiny_wan22.safetensors``: the same ``WanModel`` with 48 latent channels: detected as Wan 2.2 (TI2V 5B layout).
- ``tiny_ltxv.safetensors``: ``comfy.ldm.lightricks.model.LTXVModel``, 32 heads of 4 (width 128), 2 layers, 128 latent
  channels, caption width 4096.
- ``tiny_flux.safetensors``: ``comfy.ldm.flux.model.Flux`` (FLUX.1-dev layout with guidance embedding), width 64
  (1 head), 2 double- and 2 single-stream blocks, text width 64, pooled-vector width 32. ComfyUI's model detection
  fixes Flux's width at 3072 (and its text width at 4096), so it cannot load this file: its unet config is stored in
  the file's metadata (``dynaccel_unet_config``) and the test pack's ``DynaccelTest_TinyFluxLoader`` builds the model
  from it the way ComfyUI's loader does after detection (``supported_models.Flux`` -> ``model_base.Flux`` ->
  ``ModelPatcher``).
- ``tiny_sd3.safetensors``: ``comfy.ldm.modules.diffusionmodules.mmdit.MMDiT`` (SD3 layout, depth 2 = width 128),
  an architecture no dynaccel ComfyUI adapter covers (for the bad-input test).
"""

import json
import sys

import torch
from safetensors.torch import save_file


def _init(model: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or (name.endswith(".weight") and p.ndim == 1):
            t = torch.ones(p.shape)
        elif name.endswith(".bias"):
            t = torch.zeros(p.shape)
        else:
            fan_in = p[0].numel() if p.ndim > 1 else p.shape[-1]
            t = torch.randn(p.shape, generator=g) / max(fan_in, 1) ** 0.5
        sd[name] = t.contiguous()
    return sd


def _cpu_only() -> None:
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported: no CUDA probing


def wan(out: str, channels: int = 16, name: str = "tiny_wan21") -> None:
    _cpu_only()
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    m = WanModel(
        model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=channels, dim=128, ffn_dim=256, freq_dim=256,
        text_dim=4096, out_dim=channels, num_heads=1, num_layers=4, window_size=(-1, -1), qk_norm=True,
        cross_attn_norm=True, eps=1e-6, operations=comfy.ops.disable_weight_init,
    )
    sd = _init(m, 0)
    sd = {k: (v * 0.2 if "modulation" in k else v) for k, v in sd.items()}
    save_file(sd, f"{out}/{name}.safetensors")


def ltxv(out: str) -> None:
    _cpu_only()
    import comfy.ops
    from comfy.ldm.lightricks.model import LTXVModel

    m = LTXVModel(
        in_channels=128, cross_attention_dim=128, attention_head_dim=4, num_attention_heads=32, caption_channels=4096,
        num_layers=2, operations=comfy.ops.disable_weight_init,
    )
    sd = _init(m, 3)
    sd = {k: (v * 0.2 if "scale_shift_table" in k else v) for k, v in sd.items()}
    save_file(sd, f"{out}/tiny_ltxv.safetensors")


def hunyuanvideo(out: str) -> None:
    _cpu_only()
    import comfy.ops
    from comfy.ldm.hunyuan_video.model import HunyuanVideo

    m = HunyuanVideo(
        image_model="hunyuan_video", in_channels=64, patch_size=[1, 2, 2], out_channels=64, vec_in_dim=None,
        axes_dim=[16, 56, 56], meanflow=False, context_in_dim=4096, hidden_size=128, mlp_ratio=4.0, num_heads=1,
        depth=2, depth_single_blocks=2, theta=256, qkv_bias=True, byt5=False, guidance_embed=False,
        operations=comfy.ops.disable_weight_init,
    )
    sd = _init(m, 2)
    sd = {k: (v * 0.2 if "_mod." in k or "modulation" in k else v) for k, v in sd.items()}
    save_file(sd, f"{out}/tiny_hunyuanvideo.safetensors")


FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 64,
    "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 1, "depth": 2, "depth_single_blocks": 2, "axes_dim": [16, 24, 24],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}


def flux(out: str) -> None:
    _cpu_only()
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    m = Flux(operations=comfy.ops.disable_weight_init, **FLUX_CONFIG)
    sd = _init(m, 4)
    # RMS-norm scales (``*.scale``) start at one; modulations small, as in the other tiny models
    sd = {k: (torch.ones_like(v) if k.endswith(".scale") else v * 0.2 if "_mod." in k or "modulation" in k else v)
          for k, v in sd.items()}
    save_file(sd, f"{out}/tiny_flux.safetensors", metadata={"dynaccel_unet_config": json.dumps(FLUX_CONFIG)})


def sd3(out: str) -> None:
    _cpu_only()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    m = MMDiT(
        input_size=None, in_channels=16, out_channels=16, patch_size=2, depth=2, adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
        num_patches=1024, pos_embed_max_size=32, pos_embed_scaling_factor=None, x_block_self_attn_layers=[],
        operations=comfy.ops.disable_weight_init,
    )
    save_file(_init(m, 1), f"{out}/tiny_sd3.safetensors")


if __name__ == "__main__":
    wan(sys.argv[1])
    wan(sys.argv[1], channels=48, name="tiny_wan22")
    ltxv(sys.argv[1])
    hunyuanvideo(sys.argv[1])
    flux(sys.argv[1])
    sd3(sys.argv[1])
