"""Small reference models trained here and committed as local folders (no network needed to load them).

Each model lives in ``zoo/<name>/`` as a complete folder for its library's ``from_pretrained``::

    from diffusers import WanPipeline
    import dynaccel.zoo

    pipe = WanPipeline.from_pretrained(dynaccel.zoo.path("tiny-wan"))
    video = pipe("a red circle moving left fast", **dynaccel.zoo.generation_defaults("tiny-wan")).frames[0]

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
        "num_inference_steps": 20,
        "guidance_scale": 4.0,
        "max_sequence_length": 8,
    },
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


def generation_defaults(name: str) -> dict:
    """Pipeline call settings the model was trained for (size, frames, steps, guidance, sequence length)."""
    path(name)  # same error for an unknown name
    return dict(_GENERATION_DEFAULTS.get(name, {}))


__all__ = ["available", "generation_defaults", "path"]
