"""Dropping a model or pipeline with a strategy still enabled frees it: nothing of dynaccel keeps it alive."""

import gc
import weakref

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel


@pytest.mark.parametrize("strategy,options", [("teacache", {"threshold": 0.5}), ("sliding_tile", {"block_size": 8})],
                         ids=["cache", "sparse_attention"])
def test_a_dropped_pipeline_is_freed_with_its_strategy_enabled(strategy, options):
    pipe = tiny_wan_pipeline()
    pipe.enable_accel(strategy, **options)
    run_wan(pipe, steps=3)
    pipe_ref, model_ref = weakref.ref(pipe), weakref.ref(pipe.transformer)
    del pipe
    gc.collect()
    assert pipe_ref() is None and model_ref() is None


def test_a_dropped_language_model_is_freed_with_fastv_enabled():
    from tiny_lms import tiny_llama

    model, make = tiny_llama()
    inputs = make((24, 20))
    model.enable_accel("fastv", layer=2, keep_ratio=0.5)
    with torch.no_grad():
        model(**inputs)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
