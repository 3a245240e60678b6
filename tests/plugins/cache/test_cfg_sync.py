"""cfg_sync: with two-pass CFG the uncond branch takes the cond branch's skip decision at each step.

Without it each branch decides on its own, and at thresholds near a decision boundary the two branches part: one
reuses while the other computes, and guidance then amplifies the stale half (``uncond + s * (cond - uncond)``).
"""

import pytest
import torch
from tiny_models import PIPELINES

STRATEGIES = ["teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer", "seacache"]
CALIBRATED = {"magcache", "smoothcache"}
GRID = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8]


@pytest.fixture(scope="module")
def pipes():
    return {arch: make() for arch, (make, _) in PIPELINES.items()}


def _decisions(pipe, run, strategy, threshold, sync):
    pipe.enable_accel(strategy, threshold=threshold, cfg_sync=sync)
    try:
        out = run(pipe)
        if strategy in CALIBRATED:  # the first call calibrates
            out = run(pipe)
        branches = pipe.accel_stats[strategy]["branches"]
    finally:
        pipe.disable_accel()
    assert set(branches) == {"cond", "uncond"}
    return out, {name: (b["skipped_steps"], b.get("blocks_reused")) for name, b in branches.items()}


@pytest.mark.parametrize("arch", list(PIPELINES))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_branches_decide_in_step_at_every_threshold(pipes, arch, strategy):
    pipe, run = pipes[arch], PIPELINES[arch][1]
    reused_any = False
    for t in GRID:
        out, d = _decisions(pipe, run, strategy, t, True)
        assert d["cond"] == d["uncond"], (t, d)
        assert torch.isfinite(out).all()
        reused_any |= bool(d["cond"][0]) or bool(d["cond"][1])
    assert reused_any  # the grid reaches thresholds that reuse


# (arch, strategy) pairs whose branches part somewhere on the grid when each decides alone (found by the test itself)
PARTING = [("wan", "magcache"), ("wan", "smoothcache"), ("flux", "fbcache"), ("flux", "magcache"),
           ("flux", "adacache"), ("flux", "taylorseer"), ("flux", "smoothcache")]


@pytest.mark.parametrize("arch,strategy", PARTING)
def test_without_sync_each_branch_decides_alone(pipes, arch, strategy):
    pipe, run = pipes[arch], PIPELINES[arch][1]
    for t in GRID:
        alone_out, alone = _decisions(pipe, run, strategy, t, False)
        if alone["cond"] != alone["uncond"]:
            break
    else:
        pytest.fail(f"{arch}/{strategy}: the branches never parted on {GRID}")
    synced_out, synced = _decisions(pipe, run, strategy, t, True)
    # cond runs first at every step, so it leads; with sync uncond repeats its decisions
    assert synced["cond"] == synced["uncond"] == alone["cond"]
    assert not torch.equal(synced_out, alone_out)


def test_the_follower_reuses_where_its_own_test_would_compute(pipes):
    """wan/magcache at 0.02: alone, cond skips steps uncond computes; synced, uncond reuses there too (a forecast
    for taylorseer, a cached residual here), and computes where cond computes."""
    pipe, run = pipes["wan"], PIPELINES["wan"][1]
    _, alone = _decisions(pipe, run, "magcache", 0.02, False)
    only_cond = set(alone["cond"][0]) - set(alone["uncond"][0])
    only_uncond = set(alone["uncond"][0]) - set(alone["cond"][0])
    assert only_cond and only_uncond, alone
    _, synced = _decisions(pipe, run, "magcache", 0.02, True)
    assert set(synced["uncond"][0]) == set(alone["cond"][0])


def test_a_single_branch_is_unaffected(pipes):
    """Without CFG there is nothing to follow: cfg_sync on and off give the same output and decisions."""
    pipe, run = pipes["wan"], PIPELINES["wan"][1]

    def no_cfg(p):
        return run(p, guidance=1.0)

    outs = {}
    for sync in (True, False):
        pipe.enable_accel("teacache", threshold=0.3, cfg_sync=sync)
        outs[sync] = (no_cfg(pipe), pipe.accel_stats["teacache"]["branches"])
        pipe.disable_accel()
    assert torch.equal(outs[True][0], outs[False][0])
    assert outs[True][1] == outs[False][1] and len(outs[True][1]) == 1
