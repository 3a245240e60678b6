"""Adapters for diffusers' video/image DiTs: block layout, block 0's modulated input, TeaCache profile.

Matching is by class name under the ``diffusers`` package, so importing this module never imports diffusers.
"""

from __future__ import annotations

import torch

from ...core.adapters import (
    BLOCKS,
    MODULATED_INPUT,
    SELF_ATTENTION,
    TEACACHE_PROFILE,
    BlockSpec,
    ModelAdapter,
    class_name_matches,
)
from . import diffusers_attention

_ALL = frozenset({BLOCKS, MODULATED_INPUT, TEACACHE_PROFILE})
_VIDEO = _ALL | {SELF_ATTENTION}


def _name(model) -> str:
    cfg = getattr(model, "config", None)
    return (getattr(cfg, "_name_or_path", "") or "").lower()


def _stacks(model, attrs: tuple[str, ...], hs: int | None, enc: int | None = None) -> list[BlockSpec]:
    """BlockSpecs of the block lists ``attrs`` of ``model``, in execution order, all with one output layout."""
    return [
        BlockSpec(b, hidden_states_index=hs, encoder_hidden_states_index=enc)
        for attr in attrs
        for b in getattr(model, attr, None) or []
    ]


class DiffusersAdapter(ModelAdapter):
    """Base of the diffusers adapters: matches the ``architectures`` class names under the diffusers package."""

    capabilities = _ALL

    @classmethod
    def matches(cls, model) -> bool:
        return class_name_matches(model, cls.architectures, "diffusers")

    def _block0_norm1(self, block_args, block_kwargs, attr: str = "transformer_blocks"):
        """Block 0's ``norm1(hidden_states, emb=temb)`` output: the modulated input of AdaLN-Zero blocks."""
        block = getattr(self.model, attr)[0]
        spec = self.spec_of(block)
        hs = spec.get_arg("hidden_states", block_args, block_kwargs)
        temb = spec.get_arg("temb", block_args, block_kwargs)
        return block.norm1(hs, emb=temb)[0]

    #: (sparse attention) the processor class for this model's self-attention modules
    sparse_processor_class: type | None = None

    def sparse_attention_processor(self, module, original, router, index):
        return self.sparse_processor_class(original, router, index)

    def _grid(self, model_args, model_kwargs, frames_dim: int, patch_t: int, patch_h: int, patch_w: int):
        hs = model_kwargs["hidden_states"] if "hidden_states" in model_kwargs else model_args[0]
        f = hs.shape[frames_dim]
        h, w = hs.shape[-2], hs.shape[-1]
        return (f // patch_t, h // patch_h, w // patch_w)


def _timestep_sigma(model_args: tuple, model_kwargs: dict, position: int, scale: float) -> float | None:
    """sigma from a model call's ``timestep`` argument (keyword, or positional at ``position``) divided by
    ``scale``; one host read. None when there is none or it is out of [0, 1]."""
    t = model_kwargs.get("timestep", model_args[position] if len(model_args) > position else None)
    if isinstance(t, torch.Tensor):
        if not t.numel():
            return None
        t = float(t.flatten()[0])
    if not isinstance(t, (int, float)):
        return None
    sigma = float(t) / scale
    return sigma if 0.0 <= sigma <= 1.0 else None


class WanAdapter(DiffusersAdapter):
    """diffusers ``WanTransformer3DModel`` (Wan 2.1 T2V/I2V, Wan 2.2).

    TeaCache signal, as in the published Wan coefficients: in ``normal`` mode the timestep embedding ``temb``
    (captured from ``condition_embedder``), in ``retention`` mode its projection ``timestep_proj`` (block 0's
    ``temb`` argument).
    """

    name = "diffusers-wan"
    architectures = ("WanTransformer3DModel",)
    capabilities = _VIDEO
    sparse_processor_class = diffusers_attention.WanSparseProcessor

    def __init__(self, model):
        super().__init__(model)
        self._temb: torch.Tensor | None = None
        self._hooks: list = []

    def attach(self) -> None:
        def capture(_module, _args, output):
            self._temb = output[0]

        self._hooks.append(self.model.condition_embedder.register_forward_hook(capture))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._temb = None

    def blocks(self) -> list[BlockSpec]:
        return _stacks(self.model, ("blocks",), hs=None)

    def self_attention_modules(self):
        return [b.attn1 for b in self.model.blocks]

    def token_grid(self, model_args, model_kwargs):
        pt, ph, pw = self.model.config.patch_size
        return self._grid(model_args, model_kwargs, 2, pt, ph, pw)

    def noise_level(self, model_args, model_kwargs):
        # WanPipeline passes the scheduler's timestep, sigma x 1000 (num_train_timesteps) for flow matching
        return _timestep_sigma(model_args, model_kwargs, 1, 1000.0)

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        if mode == "retention":
            spec = self.spec_of(self.model.blocks[0])
            return spec.get_arg("temb", block_args, block_kwargs)
        if self._temb is None:
            raise RuntimeError("WanAdapter.attach() must run before modulated_input(mode='normal')")
        return self._temb

    def teacache_profile(self, mode="normal"):
        name = _name(self.model)
        cfg = self.model.config
        inner = cfg.num_attention_heads * cfg.attention_head_dim
        i2v = "i2v" in name or cfg.image_dim is not None
        if i2v:
            res = "720p" if "720p" in name else "480p" if ("480p" in name or inner == 5120) else None
            return f"wan2.1-i2v-{res}" if res else None
        if "1.3b" in name or (cfg.num_layers == 30 and inner == 1536):
            return "wan2.1-t2v-1.3b"
        if "14b" in name or (cfg.num_layers == 40 and inner == 5120):
            return "wan2.1-t2v-14b"
        return None


class FluxAdapter(DiffusersAdapter):
    """diffusers ``FluxTransformer2DModel`` (FLUX.1 dev/schnell/Kontext): double- then single-stream blocks."""

    name = "diffusers-flux"
    architectures = ("FluxTransformer2DModel",)

    def blocks(self):
        return _stacks(self.model, ("transformer_blocks", "single_transformer_blocks"), hs=1, enc=0)

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        return self._block0_norm1(block_args, block_kwargs)

    def noise_level(self, model_args, model_kwargs):
        # FluxPipeline passes timestep / 1000: sigma itself
        return _timestep_sigma(model_args, model_kwargs, 3, 1.0)

    def latent_grid(self, model_args, model_kwargs):
        """Flux's packed tokens (B, N, C) back on the (row, column) grid that ``img_ids`` gives each token."""
        hs = model_kwargs.get("hidden_states", model_args[0] if model_args else None)
        ids = model_kwargs.get("img_ids", model_args[4] if len(model_args) > 4 else None)
        if not isinstance(hs, torch.Tensor) or hs.ndim != 3 or not isinstance(ids, torch.Tensor):
            return None
        ids = ids[0] if ids.ndim == 3 else ids
        if ids.ndim != 2 or ids.shape[0] != hs.shape[1] or ids.shape[1] < 3:
            return None
        rows, cols = ids[:, 1].long(), ids[:, 2].long()
        rows, cols = rows - rows.min(), cols - cols.min()
        h, w = int(rows.max()) + 1, int(cols.max()) + 1
        if h * w != hs.shape[1]:  # not one full grid (e.g. reference-image tokens appended): no spectrum
            return None
        grid = hs.new_zeros(hs.shape[0], h * w, hs.shape[2])
        grid[:, rows * w + cols] = hs
        return grid.reshape(hs.shape[0], h, w, hs.shape[2]).permute(0, 3, 1, 2)

    def teacache_profile(self, mode="normal"):
        return "flux-kontext" if "kontext" in _name(self.model) else "flux"


class HunyuanVideoAdapter(DiffusersAdapter):
    """diffusers ``HunyuanVideoTransformer3DModel``: dual-stream then single-stream blocks, each returning
    ``(hidden_states, encoder_hidden_states)``.

    TeaCache signal, as in TeaCache4HunyuanVideo (``double_blocks[0].img_mod`` / ``img_norm1``): block 0's
    ``norm1`` output, the modulated latent tokens its attention receives. The I2V ``token_replace`` blocks modulate
    the first frame's tokens with their own embedding; their ``norm1`` takes it (and the token count) as arguments.
    """

    name = "diffusers-hunyuanvideo"
    architectures = ("HunyuanVideoTransformer3DModel",)
    capabilities = _VIDEO
    sparse_processor_class = diffusers_attention.HunyuanVideoSparseProcessor

    def blocks(self):
        return _stacks(self.model, ("transformer_blocks", "single_transformer_blocks"), hs=0, enc=1)

    def self_attention_modules(self):
        return [b.attn for b in list(self.model.transformer_blocks) + list(self.model.single_transformer_blocks)]

    def token_grid(self, model_args, model_kwargs):
        cfg = self.model.config
        return self._grid(model_args, model_kwargs, 2, cfg.patch_size_t, cfg.patch_size, cfg.patch_size)

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        if getattr(self.model.config, "image_condition_type", None) != "token_replace":
            return self._block0_norm1(block_args, block_kwargs)
        block = self.model.transformer_blocks[0]
        spec = self.spec_of(block)
        hs, temb, token_replace_emb, num_tokens = (
            spec.get_arg(a, block_args, block_kwargs) for a in ("hidden_states", "temb", "token_replace_emb", "num_tokens")
        )
        return block.norm1(hs, temb, token_replace_emb, num_tokens)[0]

    def teacache_profile(self, mode="normal"):
        # the published coefficients were fit on text-to-video; I2V (token_replace) falls back to identity
        if getattr(self.model.config, "image_condition_type", None) is not None:
            return None
        return "hunyuanvideo"


class CogVideoXAdapter(DiffusersAdapter):
    """diffusers ``CogVideoXTransformer3DModel`` (CogVideoX 2B/5B, 1.5, I2V): blocks return
    ``(hidden_states, encoder_hidden_states)``.

    TeaCache signal, as in TeaCache4CogVideoX1.5/teacache_sample_video.py, whose published coefficients were fit on
    it: the timestep embedding ``emb`` (with the I2V ``ofs`` embedding added), i.e. block 0's ``temb`` argument --
    not the normalized hidden states, which vary differently and would make those polynomials meaningless.
    """

    name = "diffusers-cogvideox"
    architectures = ("CogVideoXTransformer3DModel",)
    capabilities = _VIDEO
    sparse_processor_class = diffusers_attention.CogVideoXSparseProcessor

    def blocks(self):
        return _stacks(self.model, ("transformer_blocks",), hs=0, enc=1)

    def self_attention_modules(self):
        return [b.attn1 for b in self.model.transformer_blocks]

    def token_grid(self, model_args, model_kwargs):
        cfg = self.model.config
        return self._grid(model_args, model_kwargs, 1, cfg.patch_size_t or 1, cfg.patch_size, cfg.patch_size)

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        spec = self.spec_of(self.model.transformer_blocks[0])
        return spec.get_arg("temb", block_args, block_kwargs)

    def teacache_profile(self, mode="normal"):
        name = _name(self.model)
        cfg = self.model.config
        v15 = "1.5" in name or getattr(cfg, "patch_size_t", None) is not None
        i2v = "i2v" in name or cfg.in_channels == 32
        if v15:
            return "cogvideox1.5-i2v" if i2v else "cogvideox1.5-5b"
        if "2b" in name or (cfg.num_layers == 30 and cfg.num_attention_heads == 30):
            return "cogvideox-2b"
        if "5b" in name or (cfg.num_layers == 42 and cfg.num_attention_heads == 48):
            return "cogvideox-5b"
        return None


class LTXVideoAdapter(DiffusersAdapter):
    """diffusers ``LTXVideoTransformer3DModel``: single-stream blocks with a scale-shift table."""

    name = "diffusers-ltxvideo"
    architectures = ("LTXVideoTransformer3DModel",)

    def blocks(self):
        return _stacks(self.model, ("transformer_blocks",), hs=None)

    def modulated_input(self, block_args, block_kwargs, mode="normal"):
        block = self.model.transformer_blocks[0]
        spec = self.spec_of(block)
        hs = spec.get_arg("hidden_states", block_args, block_kwargs)
        temb = spec.get_arg("temb", block_args, block_kwargs)
        b = hs.size(0)
        norm = block.norm1(hs)
        n_ada = block.scale_shift_table.shape[0]
        ada = block.scale_shift_table[None, None].to(temb.device) + temb.reshape(b, temb.size(1), n_ada, -1)
        shift_msa, scale_msa = ada[:, :, 0], ada[:, :, 1]
        return norm * (1 + scale_msa) + shift_msa

    def teacache_profile(self, mode="normal"):
        return "ltx-video"


DIFFUSERS_ADAPTERS = (WanAdapter, FluxAdapter, HunyuanVideoAdapter, CogVideoXAdapter, LTXVideoAdapter)

__all__ = [c.__name__ for c in DIFFUSERS_ADAPTERS] + ["DIFFUSERS_ADAPTERS"]

