"""Stacking through two targets that share a module (issue 13, defect 1).

A pipeline and its transformer are two targets and one module: a cache strategy enabled through the pipeline and
another enabled on the transformer would hook the same module. The second is refused with a StackingError naming
both, and the first keeps working: its output and its counts are those of the pipeline's strategy alone.
"""

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel
from dynaccel.core.errors import StackingError


@pytest.fixture(scope="module")
def pipe():
    p = tiny_wan_pipeline()
    yield p
    p.disable_accel()


def test_a_second_cache_strategy_on_the_pipelines_transformer_is_refused_and_the_first_keeps_working(pipe):
    handle = pipe.enable_accel("fbcache", threshold=1.0)
    expected = run_wan(pipe)
    expected_stats = pipe.accel_stats["fbcache"]
    assert expected_stats["skipped"] > 0  # the strategy does skip passes here

    with pytest.raises(StackingError) as err:
        dynaccel.enable_accel(pipe.transformer, "teacache", threshold=0.1)
    message = str(err.value)
    assert "'teacache'" in message and "'fbcache'" in message and "pipeline" in message

    assert handle.active and list(pipe.accel_stats) == ["fbcache"]
    assert dynaccel.active_handles(pipe.transformer) == {"cache": handle}
    out = run_wan(pipe)
    assert torch.equal(out, expected)  # still fbcache's output, not full compute
    stats = pipe.accel_stats["fbcache"]
    assert (stats["computed"], stats["skipped"]) == (expected_stats["computed"], expected_stats["skipped"])

    # the other way round: the transformer's strategy blocks the pipeline's
    pipe.disable_accel()
    assert dynaccel.active_handles(pipe) == {}
    full = run_wan(pipe)
    assert not torch.equal(full, expected)
    dynaccel.enable_accel(pipe.transformer, "fbcache", threshold=1.0)
    with pytest.raises(StackingError, match="'teacache'.*'fbcache'"):
        pipe.enable_accel("teacache", threshold=0.1)
    dynaccel.disable_accel(pipe.transformer)
    assert torch.equal(run_wan(pipe), full)


def test_two_engines_on_one_module_have_their_own_hook_names_and_each_removes_only_its_own(pipe):
    """Different families on one transformer (cache through the pipeline, sparse attention on the module)."""
    fb = pipe.enable_accel("fbcache", threshold=1.0)
    cached = run_wan(pipe)
    dynaccel.enable_accel(pipe.transformer, "sliding_tile", dense_steps=100, block_size=16)  # dense: exact
    names = list(pipe.transformer._diffusers_hook.hooks)
    assert len(names) == len(set(names)) == 2
    assert set(pipe.accel_stats) == {"fbcache", "sliding_tile"}
    assert torch.equal(run_wan(pipe), cached)
    dynaccel.disable_accel(pipe.transformer, "sliding_tile")
    assert torch.equal(run_wan(pipe), cached) and list(pipe.accel_stats) == ["fbcache"]

    # the hook registered first goes while a later one stays: the later one keeps running
    sparse = dynaccel.enable_accel(pipe.transformer, "sliding_tile", dense_steps=100, block_size=16)
    pipe.disable_accel("fbcache")
    plain = run_wan(pipe)
    assert not torch.equal(plain, cached) and not fb.active
    assert list(pipe.accel_stats) == ["sliding_tile"] and sparse.stats["attention_calls"] > 0
    dynaccel.disable_accel(pipe.transformer)
    assert torch.equal(run_wan(pipe), plain) and not pipe.transformer._diffusers_hook.hooks
