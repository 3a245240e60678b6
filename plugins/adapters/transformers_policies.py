"""Model adapters for flow-matching robot policies in transformers: π0 and π0.5.

``PI0ForConditionalGeneration`` / ``PI05ForConditionalGeneration`` (the port of lerobot/openpi's π0): a PaliGemma
(``model.model.vlm``: SigLIP tower + Gemma LM) reads the camera images and the instruction once per inference
(the *prefix*, kept as a KV cache), then a Gemma action expert (``model.model.dit``) denoises an action chunk by
flow matching: ``sample_actions`` calls the model's own ``forward`` once per denoising step with the noisy chunk
(``noise``), the time (``timestep``, from 1 down) and the prefix cache, and steps along the predicted velocity
(``logits``). Matched by class name; transformers is never imported here.

What the adapter answers:

- the VLA family: the sampling method, chunk size, action and state sizes, the prefix modules and which prefix
  positions are image tokens (:data:`~dynaccel.core.adapters.FLOW_POLICY`);
- the cache family, on the action expert (:data:`~dynaccel.core.adapters.DENOISER_CALLS` and ``BLOCKS``): each
  ``forward`` call is one denoising step of one inference (step index and count from the sampling call, see
  :mod:`dynaccel.plugins.engine.policy_calls`), its input is the noisy chunk and its output the velocity; the blocks
  are the expert's decoder layers. A skipped expert layer still owes the prefix cache its entries: ``sample_actions``
  crops the same number of entries from every layer after each step, so a skipped layer appends placeholders
  (zeros, never attended to: the step's own entries are cropped before the next step reads the cache).
"""

from __future__ import annotations

import sys
import types
from typing import Any, ClassVar

import torch

from ...core.adapters import BLOCKS, DENOISER_CALLS, FLOW_POLICY, MODULATED_INPUT, BlockSpec, ModelAdapter, class_name_matches
from ..engine.policy_calls import current_call, policy_calls


class Pi0Adapter(ModelAdapter):
    """transformers' ``PI0ForConditionalGeneration`` and ``PI05ForConditionalGeneration``."""

    name = "transformers-pi0"
    architectures: ClassVar[tuple[str, ...]] = ("PI0ForConditionalGeneration", "PI05ForConditionalGeneration")
    capabilities = frozenset({BLOCKS, MODULATED_INPUT, DENOISER_CALLS, FLOW_POLICY})
    sample_method = "sample_actions"

    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        self._listener = f"adapter#{id(self)}"
        self._attached = False

    @classmethod
    def matches(cls, model: Any) -> bool:
        return class_name_matches(model, cls.architectures, "transformers")

    # ---- the policy ---------------------------------------------------------------------------------------------
    @property
    def adaptive_norm(self) -> bool:
        """π0.5: the expert's norms take the timestep embedding (adaRMS)."""
        return "05" in type(self.model).__name__

    def chunk_size(self) -> int:
        return int(self.model.config.chunk_size)

    def default_steps(self) -> int:
        return int(self.model.config.num_inference_steps)

    def prefix_model(self) -> torch.nn.Module:
        """The vision-language model that encodes the prefix once per inference (PaliGemma)."""
        return self.model.model.vlm

    def prefix_layers(self) -> list[torch.nn.Module]:
        """The prefix language model's decoder layers (their index is their KV-cache layer index)."""
        return list(self.model.model.vlm.language_model.layers)

    def prefix_text_config(self) -> Any:
        return self.model.model.vlm.language_model.config

    def expert(self) -> torch.nn.Module:
        return self.model.model.dit

    def image_token_id(self) -> int:
        return int(self.model.config.vlm_config.image_token_id)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the prefix positions that hold image tokens."""
        return input_ids == self.image_token_id()

    def prefix_layer_keys_values(self, layer: torch.nn.Module, hidden_states: torch.Tensor,
                                 layer_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values prefix ``layer`` would cache for ``hidden_states`` (its input), without running the
        rest of it: the input norm, the key and value projections and the rotary embedding of the keys. A layer's
        keys and values depend on its input alone, so these equal the ones its own forward caches."""
        attn = layer.self_attn
        x = layer.input_layernorm(hidden_states)
        shape = (*hidden_states.shape[:-1], -1, attn.head_dim)
        keys = attn.k_proj(x).view(shape).transpose(1, 2)
        values = attn.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = layer_kwargs["position_embeddings"]
        rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the model's own rotary function
        _, keys = rotate(keys, keys, cos, sin)
        return keys, values

    def vision_score_attention(self) -> torch.nn.Module:
        """The vision tower's attention whose output feeds the projector (SigLIP's last encoder layer)."""
        tower = self.model.model.vlm.vision_tower
        tower = getattr(tower, "vision_model", tower)  # SiglipVisionModel wraps a SiglipVisionTransformer
        return tower.encoder.layers[-1].self_attn

    @staticmethod
    def vision_query_key(attn: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(queries, keys, scale) of the vision attention ``attn`` for its input ``hidden_states``: (B, H, N, d)."""
        b, n, _ = hidden_states.shape
        q = attn.q_proj(hidden_states).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(hidden_states).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
        return q, k, float(attn.scale)

    def image_token_scores(self, scores: torch.Tensor, input_ids: torch.Tensor,
                           pixel_attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Per-image-patch scores (B * cameras, tokens per image), as the vision tower saw the images, placed where
        the prefix holds each patch's image token: (B, L), NaN elsewhere. The cameras map to image tokens as in
        ``embed_prefix``: the k-th image of a row fills the row's k-th run of image tokens, among its present
        cameras (``pixel_attention_mask``)."""
        b, length = input_ids.shape
        per_image = scores.shape[-1]
        cams = scores.shape[0] // b
        flat = scores.reshape(b, cams * per_image).float()
        image = self.image_token_mask(input_ids)
        rank = image.long().cumsum(-1) - 1
        camera, offset = rank // per_image, rank % per_image
        present = (torch.ones(b, cams, dtype=torch.bool, device=scores.device) if pixel_attention_mask is None
                   else pixel_attention_mask.bool().to(scores.device))
        slot = present.long().cumsum(-1) - 1
        match = (slot[:, None, :] == camera[..., None].to(slot.device)) & present[:, None, :]
        index = (match.int().argmax(-1) * per_image + offset.to(slot.device)).clamp(0, cams * per_image - 1)
        out = flat.gather(1, index)
        return out.masked_fill(~image.to(out.device), float("nan"))

    # ---- the cache family on the action expert ------------------------------------------------------------------
    def attach(self) -> None:
        if not self._attached:
            policy_calls(self.model, self.sample_method).add(self._listener)  # step index and count per inference
            self._attached = True

    def detach(self) -> None:
        if self._attached:
            policy_calls(self.model, self.sample_method).remove(self._listener)
            self._attached = False

    def blocks(self) -> list[BlockSpec]:
        return [BlockSpec(layer, "hidden_states", None, None, None) for layer in self.expert().layers]

    def modulated_input(self, block_args: tuple, block_kwargs: dict, mode: str = "normal") -> torch.Tensor:
        spec = self.blocks()[0]
        layer = spec.module
        hs = spec.get_arg("hidden_states", block_args, block_kwargs)
        if self.adaptive_norm:
            temb = spec.get_arg("timestep_embeds", block_args, block_kwargs)
            return layer.input_layernorm(hs, temb)[0]
        return layer.input_layernorm(hs)

    def call_context(self, args: tuple, kwargs: dict) -> Any:
        call = current_call(self.model)
        if call is None or call.step < 0:
            return None
        return types.SimpleNamespace(name="default", step_index=call.step, num_inference_steps=call.num_steps,
                                     timestep=None)

    def denoiser_input(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        return kwargs.get("noise")

    def denoiser_output(self, out: Any) -> torch.Tensor | None:
        return out.logits

    def with_denoiser_output(self, out: Any, sample: torch.Tensor) -> Any:
        fields = {k: v for k, v in out.items()}
        fields["logits"] = sample
        return type(out)(**fields)

    def block_skipped(self, index: int, args: tuple, kwargs: dict) -> None:
        spec = self.spec_of(self.expert().layers[index])
        cache = spec.get_arg("cache", args, kwargs)
        if cache is None:
            cache = kwargs.get("past_key_values")
        if cache is None:
            return
        hs = spec.get_arg("hidden_states", args, kwargs)
        cfg = self.model.config.dit_config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        placeholder = hs.new_zeros(hs.shape[0], kv_heads, hs.shape[1], head_dim)
        cache.update(placeholder, placeholder, spec.module.self_attn.layer_idx)


POLICY_ADAPTERS = (Pi0Adapter,)
