"""Small reference models trained here and committed as local folders (no network needed to load them).

Each model lives in ``zoo/<name>/`` as a complete folder for its library's ``from_pretrained``::

    from diffusers import WanPipeline
    import dynaccel.zoo

    pipe = WanPipeline.from_pretrained(dynaccel.zoo.path("tiny-wan"))
    video = pipe("a red circle moving left fast", **dynaccel.zoo.generation_defaults("tiny-wan")).frames[0]

``tiny-vlm`` is a transformers folder (a stock LlavaForConditionalGeneration, a word vocabulary in ``vocab.json``);
``dynaccel.zoo.train_tiny_vlm`` builds its prompts and scores it::

    from transformers import LlavaForConditionalGeneration
    from dynaccel.zoo import train_tiny_vlm as tv

    model = LlavaForConditionalGeneration.from_pretrained(dynaccel.zoo.path("tiny-vlm"))
    print(tv.accuracy(model, tv.vocabulary(), tv.heldout(60)))     # {'overall': ..., 'count': ..., ...}

This module imports nothing heavy (no diffusers, no torch).
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))

#: Settings each model was trained for; pass them to the pipeline call (the stock defaults do not fit).
_GENERATION_DEFAULTS = {
    "tiny-wan": {
        "height": 32,
        "width": 32,
        "num_frames": 17,
        "num_inference_steps": 30,
        "guidance_scale": 4.0,
        "max_sequence_length": 8,
    },
    # FLUX.1-dev's default of 28 steps; a single pass per step, as FLUX.1-dev runs (guidance_scale is ignored:
    # tiny-flux has no guidance embedding)
    "tiny-flux": {
        "height": 48,
        "width": 48,
        "num_inference_steps": 28,
        "max_sequence_length": 8,
    },
}

#: Four prompts per model for benchmarks and calibration (the first two fit, the last two are held out).
_DEFAULT_PROMPTS = {
    "tiny-wan": [
        "a red circle moving right fast",
        "a blue square moving up slow",
        "a green triangle moving left fast",
        "a yellow circle moving down slow",
    ],
    "tiny-flux": [
        "a large red circle on the left",
        "a small blue square on the top",
        "a large green triangle on the right",
        "a small yellow circle on the bottom",
    ],
}


def available() -> list[str]:
    """Names of the models present in the zoo (folders holding a ``model_index.json`` or ``config.json``)."""
    names = []
    for entry in sorted(os.listdir(_HERE)):
        folder = os.path.join(_HERE, entry)
        if os.path.isdir(folder) and any(
            os.path.isfile(os.path.join(folder, f)) for f in ("model_index.json", "config.json")
        ):
            names.append(entry)
    return names


def path(name: str) -> str:
    """Absolute folder of the zoo model ``name``; raises ``ValueError`` naming the available models."""
    folder = os.path.join(_HERE, name)
    if name in available():
        return folder
    models = ", ".join(available()) or "(none)"
    raise ValueError(f"unknown zoo model {name!r}; available: {models}")


def distill_prompts(name: str) -> tuple[list[str], list[str]]:
    """(fit prompts, held-out prompts) for distilling ``name`` (``dynaccel distill``); ([], []) when it has none.

    tiny-wan and tiny-flux: all 96 prompts of their grammar but 16 held out (one per colour and direction /
    position), the benchmark's four default prompts among them; the held-out ones are never distilled on and judge
    the student."""
    path(name)
    if name == "tiny-flux":
        from . import synthetic_images as si  # numpy only

        defaults = {(p.split()[2], p.split()[-1]): p for p in _DEFAULT_PROMPTS["tiny-flux"]}
        heldout = []  # one prompt per (colour, position): each colour and each position 4 times
        for ci, colour in enumerate(si.COLOURS):
            for pi, position in enumerate(si.POSITIONS):
                heldout.append(defaults.get((colour, position)) or si.prompt_for(
                    list(si.SIZES)[(ci + pi) % 2], colour, si.SHAPES[(2 * ci + pi) % len(si.SHAPES)], position))
        return [p for p in si.all_prompts() if p not in heldout], heldout
    if name != "tiny-wan":
        return [], []
    from . import synthetic  # numpy only

    every = synthetic.all_prompts()
    defaults = {(p.split()[1], p.split()[4]): p for p in _DEFAULT_PROMPTS["tiny-wan"]}
    heldout = []  # one prompt per (colour, direction): each colour and each direction 4 times
    for ci, colour in enumerate(synthetic.COLOURS):
        for di, direction in enumerate(synthetic.DIRECTIONS):
            heldout.append(defaults.get((colour, direction)) or synthetic.prompt_for(
                colour, synthetic.SHAPES[(ci + di) % len(synthetic.SHAPES)], direction,
                list(synthetic.SPEEDS)[(2 * ci + di) % len(synthetic.SPEEDS)]))
    return [p for p in every if p not in heldout], heldout


def teacher_of(name: str) -> str | None:
    """The zoo model a zoo student was distilled from (its ``distill_info.json``), or None for a trained model."""
    info = os.path.join(path(name), "distill_info.json")
    if not os.path.isfile(info):
        return None
    import json

    with open(info) as f:
        teacher = json.load(f).get("settings", {}).get("teacher")
    return teacher if teacher in available() else None


def students(name: str) -> list[str]:
    """The zoo's distilled students of ``name`` (``tiny-wan`` -> ``["tiny-wan-4step"]``)."""
    path(name)
    return [m for m in available() if m != name and teacher_of(m) == name]


def adherence(name: str):
    """A scorer of prompt adherence for the zoo model ``name`` (its students use their teacher's), or None.

    ``score(output, prompt) -> {criterion: bool}``: for tiny-wan a clip (F, H, W, 3) in [0, 1] and the criteria
    ``colour`` and ``direction``; for tiny-flux an image (H, W, 3) and ``colour``, ``position``, ``size``. A prompt
    outside the model's grammar gives ``{}``."""
    base = teacher_of(name) or name
    path(name)
    if base == "tiny-wan":
        from . import synthetic

        def score_clip(clip, prompt: str) -> dict:
            words = prompt.split()
            if len(words) != 6 or words[1] not in synthetic.COLOURS or words[4] not in synthetic.DIRECTIONS:
                return {}
            read = synthetic.analyse_clip(clip)
            return {"colour": read["colour"] == words[1], "direction": read["direction"] == words[4]}

        return score_clip
    if base == "tiny-flux":
        from . import synthetic_images as si

        def score_image(image, prompt: str) -> dict:
            try:
                labels = si.parse_prompt(prompt)
            except ValueError:
                return {}
            read = si.analyse_image(image)
            return {k: read[k] == labels[k] for k in ("colour", "position", "size")}

        return score_image
    return None


def generation_defaults(name: str) -> dict:
    """Pipeline call settings the model was trained for (size, frames, steps, guidance, sequence length).

    A distilled student (``tiny-wan-4step``) carries its own in ``dynaccel_generation.json`` (written by
    ``dynaccel distill``: its step count, guidance 1)."""
    folder = path(name)  # same error for an unknown name
    if name in _GENERATION_DEFAULTS:
        return dict(_GENERATION_DEFAULTS[name])
    extra = os.path.join(folder, "dynaccel_generation.json")
    if os.path.isfile(extra):
        import json

        with open(extra) as f:
            return dict(json.load(f))
    return {}


def default_prompts(name: str) -> list[str]:
    """Four prompts of the model's grammar for benchmarks and calibration (fit: the first two, held out: the rest)."""
    path(name)
    return list(_DEFAULT_PROMPTS.get(name, []))


__all__ = ["adherence", "available", "default_prompts", "distill_prompts", "generation_defaults", "path", "students",
           "teacher_of"]
