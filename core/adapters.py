"""Model adapters: where an architecture keeps its blocks, modulation and tokens.

Strategies ask adapters, never model classes. An adapter class declares which models it handles
(:meth:`ModelAdapter.matches`, usually by class name so that the library need not be imported) and what it can
answer (``capabilities``). Third parties add architectures with the ``register_model_adapters`` hook.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

#: capability names used by the cache family
BLOCKS = "blocks"  # ordered transformer blocks with their input/output layout
MODULATED_INPUT = "modulated_input"  # block 0's timestep-modulated input (TeaCache signal)
TEACACHE_PROFILE = "teacache_profile"  # which published TeaCache coefficients fit this model
#: capability used by the sparse-attention family
SELF_ATTENTION = "self_attention"  # self-attention modules, a processor for them, the video token grid
#: capability names used by the token families (token_pruning, early_exit) on transformers models
DECODER_LAYERS = "decoder_layers"  # the language model's decoder layers, their attention modules and text config
VISUAL_TOKENS = "visual_tokens"  # which input positions hold visual (image or video) tokens
VISION_SCORES = "vision_scores"  # the vision-encoder attention that ranks visual tokens (VisionZip)
VISUAL_FRAMES = "visual_frames"  # visual tokens grouped into same-size frames (DyCoke's temporal merging)
#: capability names used by the VLA family (and the cache family on a policy's action expert)
DENOISER_CALLS = "denoiser_calls"  # the model is called once per denoising step outside a diffusers pipeline
FLOW_POLICY = "flow_policy"  # a flow-matching chunking policy: sampling method, chunk, prefix, action expert


@dataclass
class BlockSpec:
    """One transformer block and how its hidden states go in and come out.

    ``hidden_states_index`` / ``encoder_hidden_states_index`` give the positions in a tuple output; when
    ``encoder_hidden_states_index`` is None and ``hidden_states_index`` is None, the block returns the hidden
    states tensor alone.
    """

    module: torch.nn.Module
    hidden_states_arg: str = "hidden_states"
    encoder_hidden_states_arg: str | None = "encoder_hidden_states"
    hidden_states_index: int | None = None
    encoder_hidden_states_index: int | None = None

    def __post_init__(self) -> None:
        params = list(inspect.signature(self.module.forward).parameters)
        self._positions = {p: i for i, p in enumerate(params)}

    def get_arg(self, name: str | None, args: tuple, kwargs: dict) -> Any:
        if name is None:
            return None
        if name in kwargs:
            return kwargs[name]
        pos = self._positions.get(name)
        if pos is not None and pos < len(args):
            return args[pos]
        return None

    def inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        hs = self.get_arg(self.hidden_states_arg, args, kwargs)
        enc = self.get_arg(self.encoder_hidden_states_arg, args, kwargs)
        return hs, enc

    def outputs(self, out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.hidden_states_index is None:
            return out, None
        enc = out[self.encoder_hidden_states_index] if self.encoder_hidden_states_index is not None else None
        return out[self.hidden_states_index], enc

    def pack(self, hs: torch.Tensor, enc: torch.Tensor | None) -> Any:
        """Build an output in this block's format from hidden states (and encoder hidden states)."""
        if self.hidden_states_index is None:
            return hs
        size = 1 + (self.encoder_hidden_states_index is not None)
        out: list[Any] = [None] * max(size, self.hidden_states_index + 1)
        out[self.hidden_states_index] = hs
        if self.encoder_hidden_states_index is not None:
            out[self.encoder_hidden_states_index] = enc
        return tuple(out)


class ModelAdapter:
    """Base class of adapters. One instance wraps one model."""

    #: short unique name, e.g. "diffusers-wan"
    name: ClassVar[str]
    #: the architectures it covers, as users know them (used in error messages and listings)
    architectures: ClassVar[tuple[str, ...]]
    #: which questions it can answer (see the capability names in this module)
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @classmethod
    def matches(cls, model: Any) -> bool:
        raise NotImplementedError

    def spec_of(self, block: torch.nn.Module) -> BlockSpec:
        """A cached argument-layout reader for ``block`` (for reading its call arguments)."""
        cache = self.__dict__.setdefault("_specs", {})
        if id(block) not in cache:
            cache[id(block)] = BlockSpec(block)
        return cache[id(block)]

    def attach(self) -> None:
        """Install whatever the adapter needs to observe (e.g. a forward hook capturing an embedding)."""

    def detach(self) -> None:
        """Remove what :meth:`attach` installed."""

    def blocks(self) -> list[BlockSpec]:
        """Transformer blocks in execution order."""
        raise NotImplementedError

    def modulated_input(self, block_args: tuple, block_kwargs: dict, mode: str = "normal") -> torch.Tensor:
        """Block 0's timestep-modulated input, computed from block 0's call arguments."""
        raise NotImplementedError

    def self_attention_modules(self) -> list[torch.nn.Module]:
        """The attention modules whose queries and keys include the video tokens (self or joint text+video
        attention), in execution order. Cross-attention to the prompt is not included."""
        raise NotImplementedError

    def sparse_attention_processor(self, module: torch.nn.Module, original: Any, router: Any, index: int) -> Any:
        """A processor for ``module`` that computes q, k, v as the model does and asks ``router`` for the attention
        output, telling it how many text tokens the joint sequence holds and where (see
        ``plugins/adapters/diffusers_attention.py`` for the router protocol); ``original`` is the module's own."""
        raise NotImplementedError

    def token_grid(self, model_args: tuple, model_kwargs: dict) -> tuple[int, int, int]:
        """(frames, height, width) of the video tokens after patching, from the model's call arguments. The
        attention sees the video tokens in this raster order (frame, row, column)."""
        raise NotImplementedError

    def latent_grid(self, model_args: tuple, model_kwargs: dict) -> torch.Tensor | None:
        """The noisy latent a model call denoises, laid out on its grid: (batch, channels, *spatial), e.g.
        (B, C, T, H, W) for video, for indicators that look at its spectrum (None: no grid to be had). Default:
        the ``hidden_states`` argument when it already has 4 or 5 dimensions."""
        hs = model_kwargs.get("hidden_states", model_args[0] if model_args else None)
        return hs if isinstance(hs, torch.Tensor) and hs.ndim in (4, 5) else None

    def noise_level(self, model_args: tuple, model_kwargs: dict) -> float | None:
        """The call's noise level sigma in [0, 1] (flow matching: the share of noise in the sample), read from its
        arguments; None when the adapter cannot tell (strategies then fall back to the step fraction)."""
        return None

    def teacache_profile(self, mode: str = "normal") -> str | None:
        """Name of the published TeaCache coefficient set for this model, or None when there is none."""
        return None

    # -- token families (transformers language and vision-language models) --------------------------------------

    def decoder_layers(self) -> list[torch.nn.Module]:
        """The language model's decoder layers in execution order (their index is their KV-cache layer index)."""
        raise NotImplementedError

    def decoder_layer_container(self) -> torch.nn.ModuleList:
        """The ModuleList the model iterates over (layer skipping stands a pass-through in for a layer there)."""
        raise NotImplementedError

    def attention_module(self, layer: torch.nn.Module) -> torch.nn.Module:
        """The self-attention module of one decoder layer (the one that calls the attention interface)."""
        raise NotImplementedError

    def text_config(self) -> Any:
        """The config the decoder layers read (its ``_attn_implementation`` picks their attention function)."""
        raise NotImplementedError

    def entry_module(self) -> torch.nn.Module:
        """The module whose forward receives ``input_ids`` and the 2-D ``attention_mask`` (usually the model)."""
        return self.model

    def visual_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """(B, L) bool: which positions of ``input_ids`` are visual tokens; None for text-only models."""
        return None

    def vision_score_layer(self) -> tuple[torch.nn.Module, str, int]:
        """(attention module, kind, group) of the vision-encoder layer whose attention ranks the visual tokens:
        kind "cls" (the class token's row, which is not itself a visual token) or "mean" (attention received, averaged
        over the queries); ``group`` encoder tokens make one LLM token (patch merging)."""
        raise NotImplementedError

    def vision_score_map(self) -> Any:
        """A recorder that maps the vision encoder's token scores onto the LLM's visual tokens (see
        ``plugins/adapters/vision_score_maps.py``), for architectures whose packing is not one score per visual
        token in prompt order; None: that default, built from :meth:`vision_score_layer`."""
        return None

    def frame_attention_module(self) -> tuple[torch.nn.Module, int] | None:
        """(attention module, tokens per LLM token) of a vision-encoder layer that attends within one frame per
        call, when frame sizes must be read from those calls; None when :meth:`visual_frames` needs none."""
        return None

    def vision_config(self) -> Any:
        """The config the vision encoder's attention reads."""
        raise NotImplementedError

    def visual_frames(
        self, input_ids: torch.Tensor, inputs: dict, chunks: list[int] | None = None
    ) -> list[torch.Tensor] | None:
        """Per batch row, a (frames, tokens per frame) LongTensor of positions (frames of one video, or images of
        one size), or None when the prompt has fewer than two frames. ``chunks``: LLM tokens per vision-encoder
        attention call, in encoding order, for encoders that attend within one frame at a time."""
        return None

    # -- denoisers called outside diffusers pipelines (a policy's action expert) ----------------------------------

    def call_context(self, args: tuple, kwargs: dict) -> Any:
        """When no diffusers cache context is set: an object with ``name``, ``step_index``,
        ``num_inference_steps`` and ``timestep`` for this model call (None: a bare call)."""
        return None

    def denoiser_input(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The noisy sample a model call denoises (None: the ``hidden_states`` argument)."""
        return None

    def denoiser_output(self, out: Any) -> torch.Tensor | None:
        """The prediction in a model call's output (None: its ``sample`` or first element)."""
        return None

    def with_denoiser_output(self, out: Any, sample: torch.Tensor) -> Any:
        """A copy of output ``out`` holding ``sample`` as its prediction (with :meth:`denoiser_output`)."""
        raise NotImplementedError

    def block_skipped(self, index: int, args: tuple, kwargs: dict) -> None:
        """Block ``index`` of :meth:`blocks` was not run in this pass: do what it owes its callers besides its
        output (e.g. KV-cache entries the model crops afterwards). Default: nothing."""

    def model_id(self) -> str | None:
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "_name_or_path", None) or None


def class_name_matches(model: Any, names: tuple[str, ...], module_prefix: str = "") -> bool:
    """True when ``type(model)`` (or a base class) is called one of ``names`` and lives under ``module_prefix``."""
    for klass in type(model).__mro__:
        if klass.__name__ in names and klass.__module__.startswith(module_prefix):
            return True
    return False
