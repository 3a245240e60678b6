"""torch.compile and the cache strategies: compiling the transformer after enable_accel keeps every decision and
output, and after warm-up a generation compiles nothing new (no recompilation per step).

Dynamo's ``aot_eager`` backend keeps the test fast: it traces, guards and recompiles exactly as inductor does (the
recompilation question), without inductor's C++ code generation. A graph break at each decision (the one host read
of ``all_below``) is by design."""

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel  # noqa: F401  (pipe.enable_accel)

torch._dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

THRESHOLDS = {"teacache": 1.0, "fbcache": 1.0, "easycache": 0.5, "magcache": 1.0, "adacache": 1.0, "bwcache": 1.0,
              "smoothcache": 1.0, "taylorseer": 1.0, "seacache": 1.0}


@pytest.mark.parametrize("strategy", list(THRESHOLDS))
def test_compiled_after_enable_accel_same_decisions_and_no_recompilation_after_warmup(strategy):
    torch._dynamo.reset()
    pipe = tiny_wan_pipeline()
    handle = pipe.enable_accel(strategy, threshold=THRESHOLDS[strategy])
    run_wan(pipe)  # the calibrated strategies calibrate on the first generation
    eager = run_wan(pipe)
    eager_stats = handle.stats
    assert eager_stats["skipped"] + eager_stats.get("blocks_reused", 0) > 0
    pipe.transformer.compile(backend="aot_eager")
    try:
        for _ in range(2):  # warm-up: every branch, step and decision path gets its graphs
            run_wan(pipe)
        counters.clear()
        out = run_wan(pipe)
        assert sum(counters["frames"].values()) == 0, dict(counters["frames"])  # nothing compiled any more
        assert handle.stats["branches"] == eager_stats["branches"]  # the same passes skipped
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    finally:
        torch._dynamo.reset()
