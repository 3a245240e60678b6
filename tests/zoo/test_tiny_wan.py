"""The zoo's tiny-wan is a complete diffusers folder that the stock WanPipeline loads offline and that really
follows its prompts: the moving shape has the prompted colour (and moves the prompted way)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import dynaccel.zoo as zoo  # noqa: E402
from dynaccel.zoo import synthetic  # noqa: E402

# 16 prompts: every colour 4x, every direction 4x, every shape, both speeds.
PROMPTS = [
    synthetic.prompt_for(c, s, d, v)
    for c, s, d, v in zip(
        list(synthetic.COLOURS) * 4,
        list(synthetic.SHAPES) * 6,
        ["left", "right", "up", "down", "right", "up", "down", "left"] * 2,
        ["fast", "slow"] * 8,
    )
]


def test_unknown_model_names_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown zoo model 'nope'; available: .*tiny-wan"):
        zoo.path("nope")
    assert "tiny-wan" in zoo.available()


@pytest.fixture(scope="module")
def samples():
    pytest.importorskip("diffusers")
    from diffusers import WanPipeline

    torch.set_num_threads(1)
    pipe = WanPipeline.from_pretrained(zoo.path("tiny-wan"))
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        PROMPTS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **zoo.generation_defaults("tiny-wan"),
    ).frames
    return [synthetic.analyse_clip(clip) for clip in frames]


def test_defaults_put_at_least_256_tokens_through_the_transformer():
    kw = zoo.generation_defaults("tiny-wan")
    # 4x temporal / 4x spatial VAE, patch (1, 1, 1)
    tokens = ((kw["num_frames"] - 1) // 4 + 1) * (kw["height"] // 4) * (kw["width"] // 4)
    assert tokens >= 256


@pytest.mark.slow
def test_samples_have_the_prompted_colour(samples):
    read = [a["colour"] for a in samples]
    wanted = [p.split()[1] for p in PROMPTS]
    hits = sum(r == w for r, w in zip(read, wanted))
    assert hits >= 0.8 * len(PROMPTS), list(zip(wanted, read))


@pytest.mark.slow
def test_samples_move_in_the_prompted_direction(samples):
    read = [a["direction"] for a in samples]
    wanted = [p.split()[4] for p in PROMPTS]
    hits = sum(r == w for r, w in zip(read, wanted))
    assert hits >= 0.8 * len(PROMPTS), list(zip(wanted, read))


def test_adherence_scorer_reads_rendered_clips_and_ignores_other_prompts():
    import numpy as np

    score = zoo.adherence("tiny-wan")
    clip = synthetic.render_clip("blue", "square", "left", "fast", np.random.default_rng(0))
    assert score(clip, "a blue square moving left fast") == {"colour": True, "direction": True}
    assert score(clip, "a red square moving up fast") == {"colour": False, "direction": False}
    assert score(clip, "a photo of a cat") == {}
    assert zoo.adherence("tiny-vlm") is None and zoo.teacher_of("tiny-wan") is None
