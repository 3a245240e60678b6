"""Map vision-encoder token scores onto the visual tokens of a VLM's LLM sequence (VisionZip's ranking).

A vision encoder scores its own tokens (attention received, or the class token's attention) in *its* order; the LLM
sees the projected tokens in the order the VLM packs them. The two orders differ per architecture:

- Llava: one run of tower tokens per image, in tower order (identity);
- Qwen2-VL: 2x2 patch groups merge into one LLM token; the tower runs in token order (sum per group);
- Qwen2.5-VL: the tower reorders the patch groups into attention windows (``window_index``) and the model puts the
  merged tokens back in raster order after the merger; scores are put back the same way;
- LLaVA-OneVision images: anyres packing (a base tile, then the grid tiles laid out as one picture, unpadded, maybe
  bilinearly downsized, a newline token after each row); videos: each frame's tokens bilinearly pooled 2x2, one
  newline token after each video.

A :class:`VisionScoreMap` records, per vision-encoder forward ("call"), the score rows of the ranking attention layer
(and whatever the architecture needs to know the layout: the grid, the projected features), then maps them onto
the prompt in :meth:`VisionScoreMap.score_map`. Layouts it cannot map raise :class:`UnsupportedModelError` (before
any token is dropped), never a silent misalignment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ...core.errors import UnsupportedModelError

#: (module, "pre" | "post", hook) forward hooks with kwargs the engine installs for a score map
Observer = tuple[torch.nn.Module, str, Callable]


class VisionScoreMap:
    """Default: the tower scores every LLM visual token once, in prompt order (Llava).

    ``module`` is the vision attention whose calls are scored; ``kind`` "cls" or "mean"; ``group`` encoder tokens
    per LLM token. ``tower`` (optional) is the module one forward of which is one call.
    """

    def __init__(self, adapter: Any, module: torch.nn.Module, kind: str, group: int, tower: torch.nn.Module | None = None):
        self.adapter, self.attention_module, self.kind, self.group, self.tower = adapter, module, kind, group, tower
        self.calls: list[dict[str, Any]] = []
        self.layouts: list[str] = []

    # ------------------------------------------------------------------------------------------------- recording

    def observers(self) -> list[Observer]:
        return [] if self.tower is None else [(self.tower, "pre", self._on_tower)]

    def _on_tower(self, module, args, kwargs):
        del self.calls[:-3]  # encodings no prefill consumed (a prompt holds at most images and a video): drop them
        self.calls.append({"scores": [], "args": args, "kwargs": kwargs})
        return None

    def add(self, scores: torch.Tensor) -> None:
        """Score rows (items of the encoder batch, LLM tokens of each) of one attention call."""
        if not self.calls or self.tower is None:
            self.calls.append({"scores": []})
        self.calls[-1]["scores"].append(scores)

    def reset(self) -> None:
        self.calls = []

    # --------------------------------------------------------------------------------------------------- mapping

    def modality_ids(self) -> list[int]:
        """Placeholder ids, in the order the VLM encodes the modalities (images before videos)."""
        return self.adapter.visual_token_ids()

    def score_map(self, input_ids: torch.Tensor, inputs: dict, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(scores (B, L) float32, candidates (B, L) bool) over the prompt, or None when no scores were recorded
        for it (or they do not add up); consumes the recorded calls."""
        calls, self.calls, self.layouts = [c for c in self.calls if c["scores"]], [], []
        present = [t for t in self.modality_ids() if bool((input_ids == t).any())]
        if not present or len(calls) < len(present):
            return None
        b, length = input_ids.shape
        device = hidden.device
        scores = torch.zeros(b, length, device=device)
        cand = torch.zeros(b, length, dtype=torch.bool, device=device)
        for token, call in zip(present, calls[len(calls) - len(present):]):
            where = input_ids == token
            mapped = self.map_call(token, call, where, hidden, inputs)
            if mapped is None:
                return None
            flat, flags = mapped
            if flat.numel() != int(where.sum()):
                return None
            scores[where] = flat.to(device, torch.float32)
            cand[where] = flags.to(device)
        return scores, cand

    def map_call(self, token: int, call: dict, where: torch.Tensor, hidden: torch.Tensor, inputs: dict):
        """(flat scores, candidate flags) in the order the VLM scatters this call's features over ``token``."""
        flat = torch.cat([s.reshape(-1) for s in call["scores"]])
        return flat, torch.ones(flat.shape, dtype=torch.bool)


class QwenVisionScoreMap(VisionScoreMap):
    """Qwen2-VL / Qwen2.5-VL: one call per ``visual(pixels, grid_thw)`` forward (one modality); its attention runs
    once per frame (chunk). Qwen2.5-VL's tower sees the merged groups in window order: ``window_index`` gives, for
    each position of that order, the raster index of the group, so raster scores are ``scores[argsort(index)]``."""

    def __init__(self, adapter, module, kind, group, tower, window_index: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__(adapter, module, kind, group, tower)
        self.window_index = window_index

    def map_call(self, token, call, where, hidden, inputs):
        flat = torch.cat([s.reshape(-1) for s in call["scores"]])
        if self.window_index is not None:
            grid = call["kwargs"].get("grid_thw", call["args"][1] if len(call["args"]) > 1 else None)
            if grid is None:
                raise UnsupportedModelError("visionzip: the Qwen2.5-VL vision tower was called without grid_thw; cannot undo its window order")
            index = self.window_index(grid).to(flat.device)
            if index.numel() != flat.numel():
                return None
            flat = flat[torch.argsort(index)]
            self.layouts.append("window order undone: " + " ".join("x".join(str(v) for v in g) for g in grid.tolist()))
        return flat, torch.ones(flat.shape, dtype=torch.bool)


# -------------------------------------------------------------------------------------------------- LLaVA-OneVision


@dataclass(frozen=True)
class AnyresLayout:
    """How LLaVA-OneVision packs one image: ``tiles`` tower tiles (the base tile first); ``grid`` (rows, cols) of
    tiles after it (None: the base tile alone); the kept rows/cols of the tiled picture (unpadding); ``size`` the
    bilinear downsizing (None: none); a newline token after each row (or after the base tile alone)."""

    tiles: int
    grid: tuple[int, int] | None = None
    rows: tuple[int, int] = (0, 0)
    cols: tuple[int, int] = (0, 0)
    size: tuple[int, int] | None = None

    def tokens(self, per_tile: int) -> int:
        if self.grid is None:
            return per_tile + 1
        r, c = self.size or (self.rows[1] - self.rows[0], self.cols[1] - self.cols[0])
        return per_tile + r * (c + 1)

    def describe(self) -> str:
        if self.grid is None:
            return "base tile"
        text = f"anyres {self.grid[0]}x{self.grid[1]} rows {self.rows[0]}:{self.rows[1]} cols {self.cols[0]}:{self.cols[1]}"
        return text + (f" resized to {self.size[0]}x{self.size[1]}" if self.size else "")

    def pack(self, tiles: torch.Tensor, side: int, newline: torch.Tensor) -> torch.Tensor:
        """Tower tiles (T, side*side, C) -> packed (tokens, C), the way the model packs its projected features."""
        base = tiles[0]
        if self.grid is None:
            return torch.cat([base, newline[None].to(base)], dim=0)
        gh, gw = self.grid
        channels = tiles.shape[-1]
        picture = tiles[1:].reshape(gh, gw, side, side, channels).permute(4, 0, 2, 1, 3).reshape(channels, gh * side, gw * side)
        picture = picture[:, self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]]
        if self.size is not None:
            picture = torch.nn.functional.interpolate(picture[None], list(self.size), mode="bilinear")[0]
        ends = newline.to(picture)[:, None, None].expand(channels, picture.shape[1], 1)
        picture = torch.cat([picture, ends], dim=-1)
        return torch.cat([base, picture.flatten(1, 2).transpose(0, 1)], dim=0)


def _max_tiles(aspect: str) -> int:
    found = re.fullmatch(r"anyres_max_(\d+)", str(aspect))
    if found is None:
        raise UnsupportedModelError(f"visionzip: LLaVA-OneVision vision_aspect_ratio {aspect!r} is not of the form 'anyres_max_<n>'")
    return int(found.group(1))


def _downsized(rows: int, cols: int, side: int, max_tiles: int) -> tuple[int, int] | None:
    """The model's rule: shrink the unpadded picture when it holds more than ~max_tiles tiles (ratio > 1.1)."""
    ratio = math.sqrt(rows * cols / (max_tiles * side**2))
    return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else None


class OnevisionVisionScoreMap(VisionScoreMap):
    """LLaVA-OneVision: tower calls (one per modality), with the projected features of each (a forward hook on the
    projector) to check the layout against what the model actually packed.

    Images: the per-image layout comes from ``image_sizes`` when the forward got them; under ``generate()`` (which
    encodes the images first and drops ``image_sizes``) it is found among the layouts the config allows (grid
    pinpoints x unpadding crops x the downsizing rule) that give the image's token count and reproduce the packed
    features the model placed in the prompt. Videos: each frame pooled as the model does (bilinear to half size), a
    newline token after each video. Newline tokens carry no tower score: they are never candidates (always kept).
    """

    def __init__(self, adapter, module, kind, group, tower, projector: torch.nn.Module):
        super().__init__(adapter, module, kind, group, tower)
        self.projector = projector

    def observers(self) -> list[Observer]:
        return super().observers() + [(self.projector, "post", self._on_projector)]

    def _on_projector(self, module, args, kwargs, output):
        if self.calls and "features" not in self.calls[-1]:
            self.calls[-1]["features"] = output.detach()
        return None

    def modality_ids(self) -> list[int]:
        cfg = self.adapter.model.config
        return [cfg.image_token_id, cfg.video_token_id]

    # ---------------------------------------------------------------------------------------------------- common

    def _side(self) -> int:
        v = self.adapter.model.config.vision_config
        return v.image_size // v.patch_size

    def _tile_scores(self, call: dict) -> torch.Tensor:
        side = self._side()
        scores = torch.cat(call["scores"], dim=0).float()
        if scores.shape[1] != side * side:
            raise UnsupportedModelError(
                f"visionzip: LLaVA-OneVision tower gives {scores.shape[1]} scored tokens per tile, the packing expects "
                f"{side * side} (vision_feature_select_strategy {self.adapter.model.config.vision_feature_select_strategy!r})"
            )
        return scores

    def _check(self, packed: torch.Tensor, target: torch.Tensor) -> bool:
        """Our packing of the projected tower features reproduces the features the model placed in the prompt."""
        packed, target = packed.float(), target.float()
        scale = float(target.abs().max()) if target.numel() else 1.0
        return packed.shape == target.shape and bool(torch.allclose(packed, target, rtol=1e-3, atol=1e-4 * max(scale, 1.0)))

    def map_call(self, token, call, where, hidden, inputs):
        target = hidden.detach()[where]  # the features the model scattered over these placeholders, in scatter order
        if token == self.adapter.model.config.video_token_id:
            return self._map_video(call, target)
        return self._map_images(call, target, inputs)

    # ---------------------------------------------------------------------------------------------------- videos

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """(frames, side*side, C) -> (frames, pooled, C), as the model pools video frames."""
        side = self._side()
        n, _, c = x.shape
        grid = x.reshape(n, side, side, c).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(grid, size=[math.ceil(side / 2), math.ceil(side / 2)], mode="bilinear")
        return grid.permute(0, 2, 3, 1).reshape(n, -1, c)

    def _map_video(self, call, target):
        scores = self._tile_scores(call)
        frames = scores.shape[0]
        pooled = self._pool(scores[:, :, None])[..., 0]  # (frames, per_frame)
        per_frame = pooled.shape[1]
        videos = target.shape[0] - frames * per_frame  # each video: its frames' tokens, then one newline token
        if videos < 1 or frames % videos:
            raise UnsupportedModelError(
                f"visionzip: {target.shape[0]} video tokens do not hold {frames} frames of {per_frame} pooled tokens "
                "plus one newline per video"
            )
        per_video = frames // videos
        flat, flags = [], []
        for v in range(videos):
            s = pooled[v * per_video:(v + 1) * per_video].reshape(-1)
            flat += [s, s.new_zeros(1)]
            flags += [torch.ones(s.shape, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)]
        flat, flags = torch.cat(flat), torch.cat(flags)
        if "features" in call:
            feats = self._pool(call["features"]).reshape(videos, -1, target.shape[-1])
            if not self._check(feats.reshape(-1, target.shape[-1]), target[flags.to(target.device)].reshape(-1, target.shape[-1])):
                raise UnsupportedModelError("visionzip: LLaVA-OneVision video features are not the pooled tower frames; cannot map the scores")
        self.layouts.append(f"video: {videos} x {per_video} frames x {per_frame} pooled tokens + newline")
        return flat, flags

    # ---------------------------------------------------------------------------------------------------- images

    def _layouts_from_sizes(self, inputs: dict, tiles_total: int) -> list[AnyresLayout] | None:
        sizes = inputs.get("image_sizes")
        if sizes is None:
            return None
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            get_anyres_image_grid_shape,
            image_size_to_num_patches,
            unpad_image,
        )

        cfg = self.adapter.model.config
        side, tile = self._side(), cfg.vision_config.image_size
        max_tiles = _max_tiles(inputs.get("vision_aspect_ratio") or cfg.vision_aspect_ratio)
        counts = inputs.get("batch_num_images")
        patching = [True] * len(sizes) if counts is None else [int(n) == 1 for n in counts for _ in range(int(n))]
        layouts = []
        for size, anyres in zip(sizes, patching):
            tiles = image_size_to_num_patches(size, cfg.image_grid_pinpoints, tile) if anyres else 1
            if tiles == 1:
                layouts.append(AnyresLayout(1))
                continue
            gh, gw = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, tile)
            rows, cols = gh * side, gw * side
            kept = unpad_image(torch.arange(rows * cols).view(1, rows, cols), size)  # which cells unpadding keeps
            r0, c0 = divmod(int(kept[0, 0, 0]), cols)
            r1, c1 = r0 + kept.shape[1], c0 + kept.shape[2]
            layouts.append(AnyresLayout(tiles, (gh, gw), (r0, r1), (c0, c1), _downsized(r1 - r0, c1 - c0, side, max_tiles)))
        return layouts

    def _candidates(self, tokens: int, tiles_left: int) -> list[AnyresLayout]:
        """Layouts the config allows that give ``tokens`` packed tokens."""
        cfg = self.adapter.model.config
        side, tile = self._side(), cfg.vision_config.image_size
        max_tiles = _max_tiles(cfg.vision_aspect_ratio)
        found = [AnyresLayout(1)] if tokens == side * side + 1 else []
        grids = sorted({(int(h) // tile, int(w) // tile) for h, w in (cfg.image_grid_pinpoints or [])})
        for gh, gw in grids:
            if gh * gw + 1 > tiles_left:
                continue
            rows, cols = gh * side, gw * side
            crops = [((0, rows), (0, cols))]
            crops += [((p, rows - p), (0, cols)) for p in range(1, (rows + 1) // 2)]
            crops += [((0, rows), (p, cols - p)) for p in range(1, (cols + 1) // 2)]
            for r, c in crops:
                layout = AnyresLayout(gh * gw + 1, (gh, gw), r, c, _downsized(r[1] - r[0], c[1] - c[0], side, max_tiles))
                if layout.tokens(side * side) == tokens:
                    found.append(layout)
        return found

    def _map_images(self, call, target, inputs):
        scores = self._tile_scores(call)
        feats = call.get("features")
        side, per_tile = self._side(), self._side() ** 2
        newline = self.adapter.model.model.image_newline.detach()
        layouts = self._layouts_from_sizes(inputs, scores.shape[0])
        lengths = None
        if layouts is None:
            encoded = (inputs.get("mm_encoder_outputs") or {}).get("image")
            packed = getattr(encoded, "pooler_output", None)
            if packed is None or feats is None:
                raise UnsupportedModelError(
                    "visionzip: cannot tell how LLaVA-OneVision packed the images of this prompt (no image_sizes and no "
                    "pre-encoded image features)"
                )
            lengths = [int(p.shape[0]) for p in packed]
        flat, flags = [], []
        tile, offset = 0, 0
        for i in range(len(layouts) if layouts is not None else len(lengths)):
            if layouts is not None:
                options = [layouts[i]]
            else:
                options = self._candidates(lengths[i], scores.shape[0] - tile)
            chosen = None
            for layout in options:
                n = layout.tokens(per_tile)
                if tile + layout.tiles > scores.shape[0] or offset + n > target.shape[0]:
                    continue
                if feats is not None:
                    mine = layout.pack(feats[tile:tile + layout.tiles], side, newline)
                    if not self._check(mine, target[offset:offset + n]):
                        continue
                chosen = layout
                break
            if chosen is None:
                raise UnsupportedModelError(
                    f"visionzip: no LLaVA-OneVision packing layout (grid pinpoints x unpadding x downsizing with "
                    f"vision_aspect_ratio {self.adapter.model.config.vision_aspect_ratio!r}) reproduces image {i} of "
                    "this prompt; cannot map the tower scores onto it"
                )
            tagged = torch.stack([scores[tile:tile + chosen.tiles], torch.ones_like(scores[tile:tile + chosen.tiles])], dim=-1)
            packed = chosen.pack(tagged, side, torch.zeros(2))
            flat.append(packed[:, 0])
            flags.append(packed[:, 1] > 0.5)
            self.layouts.append(f"image {i}: {chosen.describe()}")
            tile += chosen.tiles
            offset += chosen.tokens(per_tile)
        if tile != scores.shape[0] or offset != target.shape[0]:
            raise UnsupportedModelError(
                f"visionzip: LLaVA-OneVision images use {tile} of {scores.shape[0]} tower tiles and {offset} of "
                f"{target.shape[0]} image tokens; cannot map the tower scores"
            )
        return torch.cat(flat), torch.cat(flags).cpu()
