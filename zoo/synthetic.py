"""Procedural training data for the zoo's tiny video models: one coloured shape moving over a dark background.

Every clip shows a single shape (circle, square or triangle) in one colour (red, green, blue, yellow) moving
left, right, up or down, slowly or fast, and comes with a prompt from a small grammar::

    a <colour> <shape> moving <direction> <speed>        e.g. "a red circle moving left fast"

Everything is deterministic from a seed and uses numpy only (torch is optional, for ``as_tensor``).
``analyse_clip`` reads the colour and motion direction back out of a clip (real or generated); the training
script uses it to gate the VAE on its reconstructions and the tests use it to check generated samples.

Example::

    from dynaccel.zoo import synthetic
    clips, prompts, labels = synthetic.make_batch(4, seed=0, num_frames=17)   # clips: (4, 17, 32, 32, 3) in [0, 1]
    synthetic.analyse_clip(clips[0])   # {'colour': 'red', 'direction': 'left', ...}
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (0.92, 0.16, 0.14),
    "green": (0.16, 0.85, 0.22),
    "blue": (0.20, 0.38, 1.00),
    "yellow": (0.95, 0.88, 0.15),
}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS = {"slow": 0.5, "fast": 1.0}  # pixels per frame at 32x32
BACKGROUND = (0.06, 0.06, 0.08)
SIZE = 32

#: Every word the prompt grammar can produce, in a fixed order (the tokenizer's vocabulary after the specials).
VOCABULARY = ("a", *COLOURS, *SHAPES, "moving", *DIRECTIONS, *SPEEDS)


def prompt_for(colour: str, shape: str, direction: str, speed: str) -> str:
    """The prompt of one clip, e.g. ``"a red circle moving left fast"``."""
    return f"a {colour} {shape} moving {direction} {speed}"


def all_prompts() -> list[str]:
    """All 96 prompts of the grammar, in a fixed order."""
    return [
        prompt_for(c, s, d, v) for c in COLOURS for s in SHAPES for d in DIRECTIONS for v in SPEEDS
    ]


def _coverage(shape: str, cx: float, cy: float, r: float, size: int, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of one shape, by ``ss`` x ``ss`` supersampling."""
    offs = (np.arange(ss) + 0.5) / ss
    coords = (np.arange(size)[:, None] + offs[None, :]).reshape(-1)  # sub-pixel centres
    y, x = np.meshgrid(coords, coords, indexing="ij")
    dx, dy = x - cx, y - cy
    if shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif shape == "square":
        h = 0.85 * r
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif shape == "triangle":  # apex up, base below the centre
        top, bottom = -r, 0.8 * r
        frac = (dy - top) / (bottom - top)
        inside = (dy >= top) & (dy <= bottom) & (np.abs(dx) <= r * frac)
    else:
        raise ValueError(f"unknown shape {shape!r}; available: {', '.join(SHAPES)}")
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render_clip(
    colour: str,
    shape: str,
    direction: str,
    speed: str,
    rng: np.random.Generator,
    num_frames: int = 17,
    size: int = SIZE,
) -> np.ndarray:
    """One clip, (num_frames, size, size, 3) float32 in [0, 1]; position, size and tint drawn from ``rng``."""
    r = rng.uniform(4.5, 5.5) * size / SIZE
    step = SPEEDS[speed] * size / SIZE * 16 / max(num_frames - 1, 1)  # same total path whatever the length
    ux, uy = DIRECTIONS[direction]
    travel = step * (num_frames - 1)
    lo, hi = r + 1.0, size - r - 1.0
    # along the motion axis the whole path stays inside the frame; across it, anywhere inside
    along = rng.uniform(lo + travel, hi) if (ux < 0 or uy < 0) else rng.uniform(lo, hi - travel)
    across = rng.uniform(lo, hi)
    cx0, cy0 = (along, across) if ux != 0 else (across, along)
    rgb = np.clip(np.asarray(COLOURS[colour]) + rng.uniform(-0.04, 0.04, 3), 0.0, 1.0)
    bg = np.asarray(BACKGROUND)
    out = np.empty((num_frames, size, size, 3), np.float32)
    for t in range(num_frames):
        cov = _coverage(shape, cx0 + ux * step * t, cy0 + uy * step * t, r, size)[..., None]
        out[t] = bg * (1.0 - cov) + rgb * cov
    return out


def make_batch(n: int, seed: int, num_frames: int = 17, size: int = SIZE):
    """``n`` clips (n, num_frames, size, size, 3) in [0, 1], their prompts and label dicts; deterministic."""
    rng = np.random.default_rng(seed)
    clips, prompts, labels = [], [], []
    for _ in range(n):
        lab = {
            "colour": list(COLOURS)[rng.integers(len(COLOURS))],
            "shape": SHAPES[rng.integers(len(SHAPES))],
            "direction": list(DIRECTIONS)[rng.integers(len(DIRECTIONS))],
            "speed": list(SPEEDS)[rng.integers(len(SPEEDS))],
        }
        clips.append(render_clip(rng=rng, num_frames=num_frames, size=size, **lab))
        prompts.append(prompt_for(**lab))
        labels.append(lab)
    return np.stack(clips), prompts, labels


def as_tensor(clips: np.ndarray):
    """(n, T, H, W, 3) in [0, 1] -> torch (n, 3, T, H, W) in [-1, 1], the layout the Wan VAE takes."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3).mul(2.0).sub(1.0)


def foreground_mask(clip: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Pixels (T, H, W) whose colour is further than ``threshold`` (RGB distance) from the background."""
    return np.linalg.norm(clip - np.asarray(BACKGROUND, np.float32), axis=-1) > threshold


def analyse_clip(clip: np.ndarray) -> dict:
    """Read colour and motion direction from one clip (T, H, W, 3) in [0, 1].

    colour: the palette colour nearest to the mean colour of the foreground pixels ("none" if there are none).
    direction: the sign of the larger component of the foreground centroid's displacement between the first
    and last quarter of the clip ("none" if either has no foreground or it moved under one pixel).
    """
    clip = np.asarray(clip, np.float32)
    mask = foreground_mask(clip)
    result = {"colour": "none", "direction": "none", "foreground_fraction": float(mask.mean())}
    if mask.sum() < 4:
        return result
    mean_rgb = clip[mask].mean(axis=0)
    names = list(COLOURS)
    dists = [np.linalg.norm(mean_rgb - np.asarray(COLOURS[c])) for c in names]
    result["colour"] = names[int(np.argmin(dists))]
    result["mean_rgb"] = mean_rgb.round(3).tolist()

    T = clip.shape[0]
    q = max(1, T // 4)

    def centroid(frames):
        m = mask[frames]
        if m.sum() < 2:
            return None
        _, ys, xs = np.nonzero(m)
        return np.array([xs.mean(), ys.mean()])

    a, b = centroid(slice(0, q)), centroid(slice(T - q, T))
    if a is None or b is None:
        return result
    dx, dy = b - a
    if max(abs(dx), abs(dy)) < 1.0:
        return result
    if abs(dx) >= abs(dy):
        result["direction"] = "right" if dx > 0 else "left"
    else:
        result["direction"] = "down" if dy > 0 else "up"
    return result
