"""The procedural image data of tiny-flux: prompts follow the grammar and the reader recovers every label."""

import numpy as np
import pytest

from dynaccel.zoo import synthetic_images as si


def test_the_reader_recovers_colour_position_and_size_of_rendered_images():
    images, prompts, labels = si.make_batch(300, seed=123)
    assert images.shape == (300, si.SIZE, si.SIZE, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    for img, prompt, lab in zip(images, prompts, labels):
        assert si.parse_prompt(prompt) == lab
        read = si.analyse_image(img)
        assert (read["colour"], read["position"], read["size"]) == (lab["colour"], lab["position"], lab["size"])


def test_batches_are_deterministic_in_the_seed():
    a, pa, _ = si.make_batch(4, seed=7)
    b, pb, _ = si.make_batch(4, seed=7)
    c, _, _ = si.make_batch(4, seed=8)
    assert np.array_equal(a, b) and pa == pb and not np.array_equal(a, c)


def test_grammar_and_bad_input():
    prompts = si.all_prompts()
    assert len(prompts) == len(set(prompts)) == 96
    assert set(" ".join(prompts).split()) == set(si.VOCABULARY)
    with pytest.raises(ValueError, match=r"not a prompt of the tiny image grammar: 'a red circle'"):
        si.parse_prompt("a red circle")
    with pytest.raises(ValueError, match=r"unknown position 'middle'; available: left, right, top, bottom"):
        si.render_image("small", "red", "circle", "middle", np.random.default_rng(0))


def test_an_empty_image_reads_as_none():
    blank = np.broadcast_to(np.asarray(si.BACKGROUND, np.float32), (si.SIZE, si.SIZE, 3))
    assert si.analyse_image(blank)["colour"] == "none"
