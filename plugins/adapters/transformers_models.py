"""Model adapters for transformers language and vision-language models (used by the token families).

Matched by class name, so transformers is never imported here. The adapters answer: where the decoder layers are
(``model.model.layers`` for causal LMs, ``model.model.language_model.layers`` for the VLMs), which attention module
each layer calls, which config picks the attention function, and which input positions are visual tokens (the
placeholder ids the VLM replaces with image or video features).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...core.adapters import DECODER_LAYERS, VISUAL_TOKENS, ModelAdapter, class_name_matches


class CausalLMAdapter(ModelAdapter):
    """Llama- and Qwen2-style causal language models: ``model.model.layers``, each with ``self_attn``."""

    name = "transformers-causal-lm"
    architectures: ClassVar[tuple[str, ...]] = ("LlamaForCausalLM", "Qwen2ForCausalLM")
    capabilities = frozenset({DECODER_LAYERS})

    @classmethod
    def matches(cls, model: Any) -> bool:
        return class_name_matches(model, cls.architectures, "transformers")

    def decoder_stack(self) -> torch.nn.Module:
        return self.model.model

    def decoder_layers(self) -> list[torch.nn.Module]:
        return list(self.decoder_stack().layers)

    def decoder_layer_container(self) -> torch.nn.ModuleList:
        return self.decoder_stack().layers

    def attention_module(self, layer: torch.nn.Module) -> torch.nn.Module:
        return layer.self_attn

    def text_config(self) -> Any:
        return self.decoder_stack().config


class VisionLanguageAdapter(CausalLMAdapter):
    """VLMs whose language model is ``model.model.language_model`` and whose prompt holds placeholder ids that the
    model replaces with visual features (``config.image_token_id`` / ``config.video_token_id``)."""

    name = "transformers-vlm"
    architectures = (
        "LlavaForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "LlavaOnevisionForConditionalGeneration",
    )
    capabilities = frozenset({DECODER_LAYERS, VISUAL_TOKENS})

    def decoder_stack(self) -> torch.nn.Module:
        return self.model.model.language_model

    def visual_token_ids(self) -> list[int]:
        cfg = self.model.config
        ids = []
        for attr in ("image_token_id", "video_token_id"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                ids.append(value)
        return ids

    def visual_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        ids = torch.tensor(self.visual_token_ids(), device=input_ids.device, dtype=input_ids.dtype)
        return torch.isin(input_ids, ids)


TRANSFORMERS_ADAPTERS = (CausalLMAdapter, VisionLanguageAdapter)
