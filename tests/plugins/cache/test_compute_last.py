"""compute_last: the last step is computed by default (as TeaCache does); with compute_last=False it may reuse like
any other step (as diffusers' MagCache does). The first step is always computed: nothing is cached before it."""

import pytest
import torch
from tiny_models import PIPELINES

CALIBRATED = {"magcache", "smoothcache"}
HIGH = {"fbcache": 1.0, "easycache": 0.5, "magcache": 1.0, "bwcache": 1.0}


def _run(pipe, run, strategy, **options):
    pipe.enable_accel(strategy, threshold=HIGH[strategy], **options)
    try:
        out = run(pipe)
        if strategy in CALIBRATED:
            out = run(pipe)
        return out, pipe.accel_stats[strategy]
    finally:
        pipe.disable_accel()


@pytest.mark.parametrize("arch", list(PIPELINES))
@pytest.mark.parametrize("strategy", ["fbcache", "easycache", "magcache"])
def test_the_last_step_reuses_only_when_allowed(arch, strategy):
    pipe, run = PIPELINES[arch][0](), PIPELINES[arch][1]
    kept_out, kept = _run(pipe, run, strategy)
    free_out, free = _run(pipe, run, strategy, compute_last=False)
    for name in ("cond", "uncond"):
        assert 9 not in kept["branches"][name]["skipped_steps"]
        assert 9 in free["branches"][name]["skipped_steps"]
        assert 0 not in free["branches"][name]["skipped_steps"]
    assert free["computed"] == kept["computed"] - 2  # one pass fewer per branch
    assert torch.isfinite(free_out).all() and not torch.equal(free_out, kept_out)


def test_per_block_strategies_reuse_blocks_in_the_last_step_when_allowed():
    pipe, run = PIPELINES["wan"][0](), PIPELINES["wan"][1]
    _, kept = _run(pipe, run, "bwcache")
    _, free = _run(pipe, run, "bwcache", compute_last=False)
    assert free["blocks_reused"] > kept["blocks_reused"]
    assert free["blocks_computed"] + free["blocks_reused"] == kept["blocks_computed"] + kept["blocks_reused"]
