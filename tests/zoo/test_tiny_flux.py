"""The zoo's tiny-flux is a complete diffusers folder that the stock FluxPipeline loads offline and that really
follows its prompts: the shape has the prompted colour, sits in the prompted half and has the prompted size."""

import pytest
import torch

import dynaccel.zoo as zoo
from dynaccel.zoo import synthetic_images as si

# 16 prompts: every colour, position and size 4x or more, every shape.
PROMPTS = [
    si.prompt_for(z, c, s, p)
    for z, c, s, p in zip(
        ["small", "large"] * 8,
        list(si.COLOURS) * 4,
        list(si.SHAPES) * 6,
        ["left", "right", "top", "bottom", "right", "top", "bottom", "left"] * 2,
    )
]


@pytest.fixture(scope="module")
def reads():
    pytest.importorskip("diffusers")
    from diffusers import FluxPipeline

    torch.set_num_threads(1)
    pipe = FluxPipeline.from_pretrained(zoo.path("tiny-flux"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="np",
                  **zoo.generation_defaults("tiny-flux")).images
    return [si.analyse_image(img) for img in images]


def test_tiny_flux_is_in_the_zoo_with_its_defaults_and_prompts():
    assert "tiny-flux" in zoo.available()
    kw = zoo.generation_defaults("tiny-flux")
    assert (kw["height"], kw["width"], kw["max_sequence_length"]) == (48, 48, 8)
    # 2x VAE, 2x2 packing: one token per 4x4 pixels
    assert (kw["height"] // 4) * (kw["width"] // 4) == 144
    for p in zoo.default_prompts("tiny-flux"):
        si.parse_prompt(p)


@pytest.mark.slow
@pytest.mark.parametrize("label", ["colour", "position", "size"])
def test_samples_follow_the_prompt(reads, label):
    wanted = [si.parse_prompt(p)[label] for p in PROMPTS]
    got = [r[label] for r in reads]
    hits = sum(w == g for w, g in zip(wanted, got))
    assert hits >= 0.8 * len(PROMPTS), list(zip(wanted, got))


def test_adherence_scorer_reads_rendered_images():
    import numpy as np

    from dynaccel.zoo import synthetic_images as si

    score = zoo.adherence("tiny-flux")
    image = si.render_image("large", "green", "circle", "right", np.random.default_rng(0))
    assert score(image, "a large green circle on the right") == {"colour": True, "position": True, "size": True}
    assert score(image, "a small red circle on the left") == {"colour": False, "position": False, "size": False}
    assert score(image, "not a grammar prompt") == {}


@pytest.mark.parametrize("name,criterion", [("tiny-wan", 4), ("tiny-flux", -1)])
def test_distillation_prompts_hold_out_one_per_colour_and_direction_or_position(name, criterion):
    from collections import Counter

    fit, heldout = zoo.distill_prompts(name)
    assert len(fit) == 80 and len(heldout) == 16 and not set(fit) & set(heldout)
    assert set(zoo.default_prompts(name)) <= set(heldout)  # the bench's prompts are never distilled on
    colour = 1 if name == "tiny-wan" else 2
    assert set(Counter(p.split()[colour] for p in heldout).values()) == {4}
    assert set(Counter(p.split()[criterion] for p in heldout).values()) == {4}
    assert zoo.distill_prompts("tiny-vlm") == ([], [])
