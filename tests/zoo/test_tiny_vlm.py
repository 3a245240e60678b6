"""The zoo's tiny-vlm: a stock LlavaForConditionalGeneration folder that loads offline and answers its held-out
questions (count the shapes, the circle's colour, which half holds the circle) from the image."""

import json
import os

import pytest
import torch

import dynaccel.zoo as zoo
from dynaccel.zoo import train_tiny_vlm as tv


@pytest.fixture(scope="module")
def vlm():
    pytest.importorskip("transformers")
    import huggingface_hub.constants

    from dynaccel.hf_integration.bench_tokens import load_tiny_vlm

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:  # offline for the load only (the Hub tests need it unset)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        return load_tiny_vlm()


def test_tiny_vlm_is_a_small_stock_llava_folder_matching_the_training_script(vlm):
    from transformers import LlavaForConditionalGeneration

    model, vocab = vlm
    folder = zoo.path("tiny-vlm")
    assert "tiny-vlm" in zoo.available()
    assert type(model) is LlavaForConditionalGeneration
    assert vocab == tv.vocabulary()
    weights = os.path.join(folder, "model.safetensors")
    assert os.path.getsize(weights) <= 15 * 2**20
    cfg = model.config
    assert cfg.text_config.num_hidden_layers == tv.ARCH["text_layers"]
    assert cfg.vision_config.image_size == tv.SIZE and (tv.SIZE // tv.PATCH) ** 2 == tv.IMAGE_TOKENS >= 144
    info = json.load(open(os.path.join(folder, "training_info.json")))
    assert info["threads"] == 1 and info["steps"] == tv.DEFAULT_STEPS and info["seed"] == 0
    assert set(info["heldout_accuracy_per_question"]) == set(tv.QUESTIONS)


@pytest.mark.slow
def test_tiny_vlm_answers_held_out_questions_from_the_image(vlm):
    model, vocab = vlm
    items = tv.heldout(60)
    acc = tv.accuracy(model, vocab, items, batch_size=30)
    # measured on these 60: overall 0.72, count 0.85, colour 0.76, where 0.44; the best guess without the image
    # scores 0.31 overall (count 0.25, colour 0.25, where 0.5). "where" was not learned (zoo/tiny-vlm/README.md)
    assert acc["overall"] >= 0.6, acc
    assert acc["count"] >= 0.7 and acc["colour"] >= 0.6, acc
    # the answers come from the image: the same questions on images with their content moved elsewhere fail
    shuffled = [(items[(i + 7) % len(items)][0], q, a) for i, (_, q, a) in enumerate(items)]
    assert tv.accuracy(model, vocab, shuffled, batch_size=30)["overall"] < acc["overall"] - 0.2
