"""Model adapters for ComfyUI's own diffusion-model classes (``comfy.ldm.*``), for the cache strategies.

They answer the same questions as the diffusers adapters (block list, block 0's modulated input, TeaCache profile)
in ComfyUI's terms: a block is addressed by its ``("double_block" | "single_block", i)`` replace-patch key, its
inputs and outputs are the dicts ComfyUI passes to and expects from a block replace patch (``{"img", "txt", "vec",
...}``). Matching is by class name under ``comfy.ldm``, so importing this module never imports ComfyUI.

Registered through the ``register_model_adapters`` hook by ``dynaccel.comfy_nodes.plugin`` (a built-in plugin).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.adapters import BLOCKS, MODULATED_INPUT, TEACACHE_PROFILE, ModelAdapter, class_name_matches

_ALL = frozenset({BLOCKS, MODULATED_INPUT, TEACACHE_PROFILE})


class _Layout:
    """Per-pass facts shared by an adapter's block specs (the text length of a joint img+txt stream)."""

    txt_len: int | None = None


class ComfyBlockSpec:
    """One ComfyUI block, as seen through its replace patch: ``inputs``/``outputs``/``pack`` like core BlockSpec.

    ``joint`` tells how a single-stream block's ``img`` holds both streams: ``"txt_first"`` (Flux:
    ``cat(txt, img)``), ``"img_first"`` (HunyuanVideo: ``cat(img, txt)``) or None (separate ``img``/``txt`` keys,
    or ``img`` alone when ``has_txt`` is False). Joint streams are split so that the cache strategies see the
    image and text hidden states separately, exactly as for the diffusers models.
    """

    def __init__(self, module: torch.nn.Module, kind: str, index: int, layout: _Layout, *, has_txt: bool, joint: str | None = None):
        self.module = module
        self.kind = kind
        self.index = index
        self.layout = layout
        self.has_txt = has_txt
        self.joint = joint

    @property
    def key(self) -> tuple[str, int]:
        return (self.kind, self.index)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.layout.txt_len or 0
        if self.joint == "txt_first":
            return x[:, n:], x[:, :n]
        return x[:, : x.shape[1] - n], x[:, x.shape[1] - n :]

    def _join(self, img: torch.Tensor, txt: torch.Tensor | None) -> torch.Tensor:
        if txt is None or txt.shape[1] == 0:
            return img
        return torch.cat((txt, img), 1) if self.joint == "txt_first" else torch.cat((img, txt), 1)

    def inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        d = args[0]
        if self.joint:
            return self._split(d["img"])
        txt = d.get("txt") if self.has_txt else None
        if txt is not None and self.index == 0 and self.kind == "double_block":
            self.layout.txt_len = txt.shape[1]
        return d["img"], txt

    def outputs(self, out: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.joint:
            return self._split(out["img"])
        return out["img"], (out.get("txt") if self.has_txt else None)

    def pack(self, hs: torch.Tensor, enc: torch.Tensor | None) -> dict:
        if self.joint:
            return {"img": self._join(hs, enc)}
        out = {"img": hs}
        if self.has_txt:
            out["txt"] = enc
        return out


class ComfyAdapter(ModelAdapter):
    """Base of the ComfyUI adapters. ``model`` is the diffusion model (``ModelPatcher.model.diffusion_model``)."""

    capabilities = _ALL
    #: the class names it covers (subclasses of them match too) and the module they live under
    classes: tuple[str, ...] = ()
    module_prefix = "comfy.ldm"
    #: the architectures (as presets name them: the diffusers class of the same model) whose presets apply here
    preset_architectures: tuple[str, ...] = ()
    #: whether its blocks modify their input tensors in place (then the runner hands them copies)
    inplace_blocks = False

    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        self.layout = _Layout()
        self._call: tuple[tuple, dict] = ((), {})

    @classmethod
    def matches(cls, model: Any) -> bool:
        return class_name_matches(model, cls.classes, cls.module_prefix)

    def begin_call(self, args: tuple, kwargs: dict) -> None:
        """The diffusion model is being called with ``args``/``kwargs`` (x, timestep, context, ...)."""
        self._call = (args, kwargs)
        self.layout.txt_len = None

    def model_id(self) -> str | None:
        return None

    def _stack(self, attr: str, kind: str, *, has_txt: bool, joint: str | None = None) -> list[ComfyBlockSpec]:
        return [
            ComfyBlockSpec(b, kind, i, self.layout, has_txt=has_txt, joint=joint)
            for i, b in enumerate(getattr(self.model, attr, None) or [])
        ]


class ComfyWanAdapter(ComfyAdapter):
    """ComfyUI ``WanModel`` and its subclasses (Wan 2.1 T2V/I2V/VACE/camera, Wan 2.2 5B and both 14B experts).

    TeaCache signal as in the published Wan coefficients and the diffusers adapter: ``normal`` mode the timestep
    embedding (``time_embedding`` of the sinusoidal timestep, recomputed here from the call's timestep), ``retention``
    mode its projection (block 0's ``vec``).
    """

    name = "comfy-wan"
    architectures = ("ComfyUI WanModel (Wan 2.1, Wan 2.2)",)
    classes = ("WanModel",)
    preset_architectures = ("WanTransformer3DModel",)

    def blocks(self):
        return self._stack("blocks", "double_block", has_txt=False)

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        d = block_args[0]
        if mode == "retention":
            return d["vec"]
        from comfy.ldm.wan.model import sinusoidal_embedding_1d  # ComfyUI is running when this is called

        args, kwargs = self._call
        x, t = args[0], (args[1] if len(args) > 1 else kwargs["timestep"])
        m = self.model
        e = m.time_embedding(sinusoidal_embedding_1d(m.freq_dim, t.flatten()).to(dtype=x.dtype))
        return e.reshape(t.shape[0], -1, e.shape[-1])

    def teacache_profile(self, mode="normal"):
        m = self.model
        dim, layers = getattr(m, "dim", None), getattr(m, "num_layers", None)
        if getattr(m, "model_type", "t2v") == "i2v":
            return "wan2.1-i2v-480p" if dim == 5120 else None  # the 720p set cannot be told apart by shape
        if (layers, dim) == (30, 1536):
            return "wan2.1-t2v-1.3b"
        if (layers, dim) == (40, 5120):
            return "wan2.1-t2v-14b"
        return None


def _flux_style_modulated(block: torch.nn.Module, d: dict) -> torch.Tensor:
    """Block 0's ``img_norm1`` output modulated by ``img_mod``: what its attention receives (Flux, HunyuanVideo)."""
    from comfy.ldm.flux.layers import apply_mod  # ComfyUI is running when this is called

    mod1, _ = block.img_mod(d["vec"])
    return apply_mod(block.img_norm1(d["img"]), 1 + mod1.scale, mod1.shift, d.get("modulation_dims_img"))


class ComfyFluxAdapter(ComfyAdapter):
    """ComfyUI ``Flux`` (FLUX.1 dev/schnell/Kontext): double-stream blocks, then single-stream blocks over
    ``cat(txt, img)``."""

    name = "comfy-flux"
    architectures = ("ComfyUI Flux",)
    classes = ("Flux",)
    preset_architectures = ("FluxTransformer2DModel",)
    inplace_blocks = True

    def blocks(self):
        return self._stack("double_blocks", "double_block", has_txt=True) + self._stack(
            "single_blocks", "single_block", has_txt=True, joint="txt_first"
        )

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        return _flux_style_modulated(self.model.double_blocks[0], block_args[0])

    def teacache_profile(self, mode="normal"):
        return "flux"


class ComfyHunyuanVideoAdapter(ComfyAdapter):
    """ComfyUI ``HunyuanVideo`` (HunyuanVideo, and HunyuanImage 2.1 which ComfyUI runs with the same class):
    double-stream blocks, then single-stream blocks over ``cat(img, txt)``.
    TeaCache signal as in TeaCache4HunyuanVideo: block 0's modulated ``img_norm1`` output."""

    name = "comfy-hunyuanvideo"
    architectures = ("ComfyUI HunyuanVideo (HunyuanVideo, HunyuanImage 2.1)",)
    classes = ("HunyuanVideo",)
    preset_architectures = ("HunyuanVideoTransformer3DModel",)
    inplace_blocks = True

    def blocks(self):
        return self._stack("double_blocks", "double_block", has_txt=True) + self._stack(
            "single_blocks", "single_block", has_txt=True, joint="img_first"
        )

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        return _flux_style_modulated(self.model.double_blocks[0], block_args[0])

    def teacache_profile(self, mode="normal"):
        # the class also serves HunyuanImage 2.1 and later variants; the published coefficients were fit on
        # HunyuanVideo text-to-video (16 latent channels, 3-D patches), the others fall back to identity
        p = getattr(self.model, "params", None)
        if getattr(p, "in_channels", None) == 16 and len(getattr(p, "patch_size", ()) or ()) == 3 and not getattr(p, "byt5", False):
            return "hunyuanvideo"
        return None


class ComfyLTXVAdapter(ComfyAdapter):
    """ComfyUI ``LTXVModel`` (LTX-Video): single-stream blocks with a scale-shift table, RMS-normed input."""

    name = "comfy-ltxv"
    architectures = ("ComfyUI LTXVModel (LTX-Video)",)
    classes = ("LTXVModel",)
    preset_architectures = ("LTXVideoTransformer3DModel",)
    inplace_blocks = True

    def blocks(self):
        return self._stack("transformer_blocks", "double_block", has_txt=False)

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        from comfy.ldm.common_dit import rms_norm  # ComfyUI is running when this is called

        d = block_args[0]
        x, t = d["img"], d["vec"]
        table = self.model.transformer_blocks[0].scale_shift_table
        ada = table[None, None].to(device=x.device, dtype=x.dtype) + t.reshape(x.shape[0], t.shape[1], table.shape[0], -1)
        shift, scale = ada[:, :, 0], ada[:, :, 1]
        return rms_norm(x) * (1 + scale) + shift

    def teacache_profile(self, mode="normal"):
        return "ltx-video"


COMFY_ADAPTERS = (ComfyWanAdapter, ComfyFluxAdapter, ComfyHunyuanVideoAdapter, ComfyLTXVAdapter)
