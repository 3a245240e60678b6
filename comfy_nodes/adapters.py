"""Model adapters for ComfyUI's own diffusion-model classes (``comfy.ldm.*``), for the cache and sparse-attention
strategies.

They answer the same questions as the diffusers adapters (block list, block 0's modulated input, TeaCache profile)
in ComfyUI's terms: a block is addressed by its ``("double_block" | "single_block", i)`` replace-patch key, its
inputs and outputs are the dicts ComfyUI passes to and expects from a block replace patch (``{"img", "txt", "vec",
...}``). Matching is by class name under ``comfy.ldm``, so importing this module never imports ComfyUI.

For the sparse-attention strategies (capability ``SELF_ATTENTION``, Wan only so far) an adapter also answers the
video token grid after patching (:meth:`token_grid`), which blocks hold a video self-attention and how to find it
among the block's attention calls (:meth:`self_attention_blocks`: the block's first attention call), and how many
text tokens that call holds (``self_attention_text``: none in Wan). :func:`attention_call` and
:func:`attention_output` read and write the layout of ComfyUI's attention functions (``func(q, k, v, heads, mask=None,
..., skip_reshape=False, skip_output_reshape=False, **kwargs)``: q, k, v as ``(B, N, heads * dim)``, or as ``(B,
heads, N, dim)`` with ``skip_reshape``), which is what ``transformer_options["optimized_attention_override"]``
receives.

Registered through the ``register_model_adapters`` hook by ``dynaccel.comfy_nodes.plugin`` (a built-in plugin).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.adapters import BLOCKS, MODULATED_INPUT, SELF_ATTENTION, TEACACHE_PROFILE, ModelAdapter, class_name_matches

_ALL = frozenset({BLOCKS, MODULATED_INPUT, TEACACHE_PROFILE})

_ATTENTION_PARAMS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")


def attention_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """q, k, v of a call to one of ComfyUI's attention functions as ``(B, N, heads, dim)``; None when the call is
    not a plain self-attention (an attention mask, or keys of another length than the queries)."""
    bound = dict(zip(_ATTENTION_PARAMS, args))
    bound.update({n: kwargs[n] for n in _ATTENTION_PARAMS if n in kwargs})
    q, k, v = bound.get("q"), bound.get("k"), bound.get("v")
    if not all(isinstance(x, torch.Tensor) for x in (q, k, v)) or bound.get("mask") is not None:
        return None
    if bound.get("skip_reshape"):  # (B, heads, N, dim)
        if q.dim() != 4:
            return None
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    else:  # (B, N, heads * dim)
        heads = bound.get("heads")
        if not isinstance(heads, int) or q.dim() != 3 or q.shape[-1] % heads:
            return None
        q, k, v = (x.unflatten(2, (heads, -1)) for x in (q, k, v))
    if k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]:
        return None
    return q, k, v


def attention_output(out: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """``out`` (``(B, N, heads, dim)``) in the layout the attention function called with ``args``/``kwargs``
    returns: ``(B, heads, N, dim)`` with ``skip_output_reshape``, else ``(B, N, heads * dim)``."""
    bound = dict(zip(_ATTENTION_PARAMS, args))
    bound.update({n: kwargs[n] for n in _ATTENTION_PARAMS if n in kwargs})
    if bound.get("skip_output_reshape"):
        return out.transpose(1, 2)
    return out.flatten(2, 3)


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

    # ---- sparse attention (adapters with the SELF_ATTENTION capability) -------------------------------------------
    #: text tokens in the video self-attention calls (appended after the video tokens)
    self_attention_text = 0

    def self_attention_blocks(self) -> list[tuple[str, int]]:
        """Replace-patch keys ``(kind, index)`` of the blocks whose *first* attention call is their video
        self-attention (the sparse runner marks the block, the attention override takes its first call); the index
        is the attention layer the policies see."""
        return []

    def self_attention_modules(self) -> list[torch.nn.Module]:
        """The self-attention modules, one per entry of :meth:`self_attention_blocks`."""
        return []

    def token_grid(self, model_args: tuple, model_kwargs: dict) -> tuple[int, int, int]:
        """The video token grid (frames, height, width) after patching of a diffusion-model call."""
        raise NotImplementedError

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
    capabilities = _ALL | {SELF_ATTENTION}

    def blocks(self):
        return self._stack("blocks", "double_block", has_txt=False)

    # Sparse attention: a WanAttentionBlock calls its self_attn (video tokens only, RoPE applied, q and k as
    # (B, N, heads * dim) with heads given) before its cross_attn (one call, two for I2V); the blocks of the main
    # stack go through ("double_block", i) replace patches. VACE's extra blocks are not patched: they run plain.
    def self_attention_blocks(self):
        return [("double_block", i) for i in range(len(getattr(self.model, "blocks", None) or []))]

    def self_attention_modules(self):
        return [b.self_attn for b in getattr(self.model, "blocks", None) or []]

    def token_grid(self, model_args, model_kwargs):
        # WanModel.forward(x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options, **kw):
        # x (B, C, T, H, W) is padded to the patch size, time_dim_concat's frames are appended, and a
        # reference_latent (models with ref_conv) is prepended as one more frame
        x = model_args[0] if model_args else model_kwargs["x"]
        pt, ph, pw = self.model.patch_size
        frames = -(-x.shape[2] // pt)
        extra = model_args[4] if len(model_args) > 4 else model_kwargs.get("time_dim_concat")
        if isinstance(extra, torch.Tensor):
            frames += -(-extra.shape[2] // pt)
        if getattr(self.model, "ref_conv", None) is not None and model_kwargs.get("reference_latent") is not None:
            frames += 1
        return (frames, -(-x.shape[3] // ph), -(-x.shape[4] // pw))

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
