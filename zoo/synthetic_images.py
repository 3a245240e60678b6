"""Procedural training data for the zoo's tiny image models: one coloured shape placed in a region of the image.

Every image shows a single shape (circle, square or triangle, the shapes of :mod:`dynaccel.zoo.synthetic`) in one
colour (red, green, blue, yellow), small or large, in the left, right, top or bottom part of a dark background,
and comes with a prompt from a small grammar::

    a <size> <colour> <shape> on the <position>        e.g. "a large red circle on the left"

Everything is deterministic from a seed and uses numpy only (torch is optional, for ``as_tensor``).
``analyse_image`` reads colour, position and size back out of an image (real or generated); the training script
uses it to gate the VAE and the tests use it to check generated samples.

Example::

    from dynaccel.zoo import synthetic_images as si
    images, prompts, labels = si.make_batch(4, seed=0)   # images: (4, 48, 48, 3) in [0, 1]
    si.analyse_image(images[0])                          # {'colour': ..., 'position': ..., 'size': ...}
"""

from __future__ import annotations

import numpy as np

from .synthetic import BACKGROUND, COLOURS, SHAPES, _coverage

POSITIONS = ("left", "right", "top", "bottom")
SIZES = {"small": 0.13, "large": 0.24}  # radius as a fraction of the image side
SIZE = 48

#: Every word the prompt grammar can produce, in a fixed order (the tokenizer's vocabulary after the specials).
VOCABULARY = ("a", *SIZES, *COLOURS, *SHAPES, "on", "the", *POSITIONS)


def prompt_for(size: str, colour: str, shape: str, position: str) -> str:
    """The prompt of one image, e.g. ``"a large red circle on the left"``."""
    return f"a {size} {colour} {shape} on the {position}"


def all_prompts() -> list[str]:
    """All 96 prompts of the grammar, in a fixed order."""
    return [prompt_for(z, c, s, p) for z in SIZES for c in COLOURS for s in SHAPES for p in POSITIONS]


def parse_prompt(prompt: str) -> dict:
    """Labels of a grammar prompt: ``{"size", "colour", "shape", "position"}``; ValueError for anything else."""
    words = prompt.split()
    if (len(words) != 7 or words[0] != "a" or words[1] not in SIZES or words[2] not in COLOURS
            or words[3] not in SHAPES or words[4:6] != ["on", "the"] or words[6] not in POSITIONS):
        raise ValueError(f"not a prompt of the tiny image grammar: {prompt!r}; expected e.g. "
                         f"{prompt_for('large', 'red', 'circle', 'left')!r}")
    return {"size": words[1], "colour": words[2], "shape": words[3], "position": words[6]}


def render_image(size_word: str, colour: str, shape: str, position: str, rng: np.random.Generator,
                 size: int = SIZE) -> np.ndarray:
    """One image, (size, size, 3) float32 in [0, 1]; exact placement, radius and tint drawn from ``rng``."""
    r = SIZES[size_word] * size * rng.uniform(0.9, 1.1)
    mid = size / 2.0
    # the centre lies off the middle by at least 0.15 of the side towards the named side, and further along that
    # axis than across it, so "left" always reads as left (not top or bottom)
    along = rng.uniform(0.15 * size, mid - r - 1.0)
    across = rng.uniform(-0.6, 0.6) * along
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r}; available: {', '.join(POSITIONS)}")
    sign = -1.0 if position in ("left", "top") else 1.0
    if position in ("left", "right"):
        cx, cy = mid + sign * along, mid + across
    else:
        cx, cy = mid + across, mid + sign * along
    rgb = np.clip(np.asarray(COLOURS[colour]) + rng.uniform(-0.04, 0.04, 3), 0.0, 1.0)
    bg = np.asarray(BACKGROUND)
    cov = _coverage(shape, cx, cy, r, size)[..., None]
    return (bg * (1.0 - cov) + rgb * cov).astype(np.float32)


def make_batch(n: int, seed: int, size: int = SIZE):
    """``n`` images (n, size, size, 3) in [0, 1], their prompts and label dicts; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    images, prompts, labels = [], [], []
    for _ in range(n):
        lab = {
            "size": list(SIZES)[rng.integers(len(SIZES))],
            "colour": list(COLOURS)[rng.integers(len(COLOURS))],
            "shape": SHAPES[rng.integers(len(SHAPES))],
            "position": POSITIONS[rng.integers(len(POSITIONS))],
        }
        images.append(render_image(lab["size"], lab["colour"], lab["shape"], lab["position"], rng, size))
        prompts.append(prompt_for(**lab))
        labels.append(lab)
    return np.stack(images), prompts, labels


def as_tensor(images: np.ndarray):
    """(n, H, W, 3) in [0, 1] -> torch (n, 3, H, W) in [-1, 1], the layout an image VAE takes."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).mul(2.0).sub(1.0)


def analyse_image(image: np.ndarray, threshold: float = 0.25) -> dict:
    """Read colour, position and size from one image (H, W, 3) in [0, 1].

    colour: the palette colour nearest to the mean colour of the foreground pixels (RGB distance from the
    background above ``threshold``), "none" without foreground. position: the half (left/right/top/bottom) the
    foreground centroid lies furthest into. size: "large" when the foreground covers more than the midpoint
    between the largest small shape (a circle) and the smallest large shape (a triangle), else "small".
    """
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    mask = np.linalg.norm(image - np.asarray(BACKGROUND, np.float32), axis=-1) > threshold
    result = {"colour": "none", "position": "none", "size": "none", "foreground_fraction": float(mask.mean())}
    if mask.sum() < 4:
        return result
    mean_rgb = image[mask].mean(axis=0)
    names = list(COLOURS)
    result["colour"] = names[int(np.argmin([np.linalg.norm(mean_rgb - np.asarray(COLOURS[c])) for c in names]))]
    ys, xs = np.nonzero(mask)
    dx, dy = xs.mean() + 0.5 - w / 2.0, ys.mean() + 0.5 - h / 2.0
    if abs(dx) >= abs(dy):
        result["position"] = "right" if dx > 0 else "left"
    else:
        result["position"] = "bottom" if dy > 0 else "top"
    # areas: circle pi r^2, square 2.89 r^2, triangle 1.8 r^2; small r <= 1.1 x 0.13 side, large r >= 0.9 x 0.24
    # side, so a small circle covers at most ~148 px and a large triangle at least ~193 px of a 48 px image
    r_mid = np.sqrt(SIZES["small"] * 1.1 * SIZES["large"] * 0.9) * min(h, w)
    result["size"] = "large" if mask.sum() > 2.4 * r_mid**2 else "small"
    return result
