"""Model adapters for transformers language and vision-language models (used by the token families).

Matched by class name, so transformers is never imported here. The adapters answer: where the decoder layers are
(``model.model.layers`` for causal LMs, ``model.model.language_model.layers`` for the VLMs), which attention module
each layer calls, which config picks the attention function, and which input positions are visual tokens (the
placeholder ids the VLM replaces with image or video features).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ...core.adapters import (
    DECODER_LAYERS,
    VISION_SCORES,
    VISUAL_FRAMES,
    VISUAL_TOKENS,
    ModelAdapter,
    class_name_matches,
)
from ...core.errors import UnsupportedModelError
from .vision_score_maps import OnevisionVisionScoreMap, QwenVisionScoreMap, VisionScoreMap


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
    architectures: ClassVar[tuple[str, ...]] = ()  # a base: the adapters below name their architectures
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


    def vision_config(self) -> Any:
        return self.model.config.vision_config

    def vision_tower_module(self) -> torch.nn.Module | None:
        """The vision encoder; one forward of it is one encoding call (images, or a video)."""
        return getattr(self.model.model, "vision_tower", None)

    def vision_score_map(self) -> VisionScoreMap:
        module, kind, group = self.vision_score_layer()
        return VisionScoreMap(self, module, kind, group, self.vision_tower_module())


def _runs(positions: torch.Tensor, size: int) -> torch.Tensor | None:
    """Split sorted positions into consecutive frames of ``size``; None when fewer than two."""
    if size <= 0 or positions.numel() < 2 * size or positions.numel() % size:
        return None
    return positions.view(-1, size)


class LlavaAdapter(VisionLanguageAdapter):
    """Llava: a CLIP-style tower; each image is one run of image tokens (several images of one size act as frames)."""

    name = "transformers-llava"
    architectures = ("LlavaForConditionalGeneration",)
    capabilities = frozenset({DECODER_LAYERS, VISUAL_TOKENS, VISION_SCORES, VISUAL_FRAMES})

    def _tower_layers(self) -> torch.nn.ModuleList:
        tower = self.model.model.vision_tower
        return (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers

    def vision_score_layer(self) -> tuple[torch.nn.Module, str, int]:
        cfg = self.model.config
        layers = self._tower_layers()
        vfl = cfg.vision_feature_layer
        if not isinstance(vfl, int):
            raise UnsupportedModelError(
                f"visionzip ranks the tokens by one tower layer's attention; this model concatenates the features of "
                f"several tower layers (vision_feature_layer={vfl!r}); accepted: one int"
            )
        index = len(layers) + vfl if vfl < 0 else vfl - 1  # hidden_states[i] is the output of layer i - 1
        kind = "cls" if cfg.vision_feature_select_strategy == "default" else "mean"
        return layers[index].self_attn, kind, 1

    def tokens_per_image(self) -> int:
        v = self.model.config.vision_config
        n = (v.image_size // v.patch_size) ** 2
        return n if self.model.config.vision_feature_select_strategy == "default" else n + 1

    def visual_frames(self, input_ids: torch.Tensor, inputs: dict, chunks: list[int] | None = None) -> list[torch.Tensor] | None:
        frames = []
        for row in self.visual_token_mask(input_ids):
            f = _runs(torch.nonzero(row).flatten(), self.tokens_per_image())
            if f is None:
                return None
            frames.append(f)
        return frames


class QwenVLAdapter(VisionLanguageAdapter):
    """Qwen2-VL / Qwen2.5-VL: a windowed ViT whose 2x2 patch groups merge into one LLM token; videos come with
    ``video_grid_thw`` (temporal patches x height x width)."""

    name = "transformers-qwen-vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    capabilities = frozenset({DECODER_LAYERS, VISUAL_TOKENS, VISION_SCORES, VISUAL_FRAMES})

    def vision_score_layer(self) -> tuple[torch.nn.Module, str, int]:
        visual = self.model.model.visual
        return visual.blocks[-1].attn, "mean", visual.spatial_merge_size**2

    def vision_tower_module(self) -> torch.nn.Module:
        return self.model.model.visual

    def vision_score_map(self) -> VisionScoreMap:
        module, kind, group = self.vision_score_layer()
        return QwenVisionScoreMap(self, module, kind, group, self.vision_tower_module(), self.window_index())

    def window_index(self) -> Any:
        """None: the tower sees the merged groups in raster order."""
        return None

    def frame_attention_module(self) -> tuple[torch.nn.Module, int] | None:
        visual = self.model.model.visual
        return visual.blocks[-1].attn, visual.spatial_merge_size**2

    def visual_frames(self, input_ids: torch.Tensor, inputs: dict, chunks: list[int] | None = None) -> list[torch.Tensor] | None:
        """Frames of one video per row: from ``video_grid_thw`` when the forward got it, else from the vision
        encoder's per-frame attention calls (generate() encodes the video first and drops the grid); the video
        chunks are the last ones encoded."""
        video_id = getattr(self.model.config, "video_token_id", None)
        if video_id is None:
            return None
        rows = [torch.nonzero(row == video_id).flatten() for row in input_ids]
        grid = inputs.get("video_grid_thw")
        merge = self.model.model.visual.spatial_merge_size**2
        if grid is not None and len(grid) == len(rows):
            sizes = [[h * w // merge] * t for t, h, w in grid.tolist()]
        elif chunks:
            total, sizes, taken = sum(r.numel() for r in rows), [], 0
            tail = []
            for c in reversed(chunks):
                if taken >= total:
                    break
                tail.insert(0, c)
                taken += c
            if taken != total:
                return None
            sizes, k = [], 0
            for r in rows:
                row_sizes, n = [], 0
                while n < r.numel() and k < len(tail):
                    row_sizes.append(tail[k])
                    n += tail[k]
                    k += 1
                sizes.append(row_sizes)
        else:
            return None
        frames = []
        for r, row_sizes in zip(rows, sizes):
            if len(row_sizes) < 2 or len(set(row_sizes)) != 1 or sum(row_sizes) != r.numel():
                return None
            frames.append(r.view(len(row_sizes), row_sizes[0]))
        return frames


class Qwen25VLAdapter(QwenVLAdapter):
    """Qwen2.5-VL: as Qwen2-VL, but its tower reorders the merged 2x2 groups into attention windows
    (``window_index``) and puts the merged tokens back in raster order after the merger; VisionZip's scores come from
    the last full-attention block (one frame per call, the last block in released checkpoints) and are put back in
    raster order the same way. The full-attention blocks attend one frame at a time (DyCoke's frames)."""

    name = "transformers-qwen2.5-vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    capabilities = frozenset({DECODER_LAYERS, VISUAL_TOKENS, VISION_SCORES, VISUAL_FRAMES})

    def vision_score_layer(self) -> tuple[torch.nn.Module, str, int]:
        visual = self.model.model.visual
        return visual.blocks[visual.fullatt_block_indexes[-1]].attn, "mean", visual.spatial_merge_size**2

    def window_index(self) -> Any:
        visual = self.model.model.visual

        def index(grid_thw: torch.Tensor) -> torch.Tensor:
            if hasattr(visual, "get_window_index"):  # transformers releases that kept it on the tower
                return visual.get_window_index(grid_thw)[0]
            from transformers.vision_utils import get_vision_window_index

            return get_vision_window_index(
                grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
                patch_size=visual.patch_size,
            )[0]

        return index

    def frame_attention_module(self) -> tuple[torch.nn.Module, int] | None:
        visual = self.model.model.visual
        return visual.blocks[visual.fullatt_block_indexes[-1]].attn, visual.spatial_merge_size**2


class LlavaOnevisionAdapter(LlavaAdapter):
    """LLaVA-OneVision: a SigLIP tower and a Qwen2 LM. Images are packed anyres (base tile, unpadded tile grid with
    a newline token per row), videos pooled 2x2 per frame with one newline token per video; VisionZip's scores are
    mapped through that packing (:class:`OnevisionVisionScoreMap`), DyCoke's frames are the pooled video frames."""

    name = "transformers-llava-onevision"
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    capabilities = frozenset({DECODER_LAYERS, VISUAL_TOKENS, VISION_SCORES, VISUAL_FRAMES})

    def vision_score_map(self) -> VisionScoreMap:
        module, kind, group = self.vision_score_layer()
        return OnevisionVisionScoreMap(self, module, kind, group, self.vision_tower_module(), self.model.model.multi_modal_projector)

    def tokens_per_frame(self) -> int:
        v = self.model.config.vision_config
        side = v.image_size // v.patch_size
        return math.ceil(side / 2) ** 2

    def visual_frames(self, input_ids: torch.Tensor, inputs: dict, chunks: list[int] | None = None) -> list[torch.Tensor] | None:
        """Per row, the pooled frames of its video: the row's video tokens are one run of frames x tokens per frame,
        then the newline token (which is no frame's). Rows with no video, several videos or a run that does not fit
        that layout give None (no temporal merging)."""
        per_frame = self.tokens_per_frame()
        frames = []
        for row in input_ids == self.model.config.video_token_id:
            pos = torch.nonzero(row).flatten()
            if pos.numel() < 2 or int(pos[-1] - pos[0]) + 1 != pos.numel():  # none, or not one run
                return None
            f = _runs(pos[:-1], per_frame)
            if f is None:
                return None
            frames.append(f)
        return frames


TRANSFORMERS_ADAPTERS = (
    CausalLMAdapter, LlavaAdapter, QwenVLAdapter, Qwen25VLAdapter, LlavaOnevisionAdapter,
)
