"""Caches on few-step schedules (distilled students, LCM, Lightning): a clear warning once per handle, on Wan and
Flux, naming how many passes can be reused at most; none on long schedules or with threshold 0."""

import warnings

import pytest
from tiny_models import run_flux, run_wan, tiny_flux_pipeline, tiny_wan_pipeline

from dynaccel import AccelWarning

ARCHS = {"wan": (tiny_wan_pipeline, run_wan), "flux": (tiny_flux_pipeline, run_flux)}


def _few_step_warnings(caught):
    return [w for w in caught if issubclass(w.category, AccelWarning) and "-step schedule" in str(w.message)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", ["teacache", "fbcache"])
def test_a_few_step_run_warns_once_naming_what_can_be_reused(arch, strategy):
    make, run = ARCHS[arch]
    pipe = make()
    pipe.enable_accel(strategy, threshold=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(pipe, steps=4)
        run(pipe, steps=4)
    [w] = _few_step_warnings(caught)  # once per handle, not once per generation
    assert f"{strategy} on a 4-step schedule" in str(w.message)
    assert "step 0 and step 3 are always computed, so at most 2 of 4 passes can be reused" in str(w.message)
    pipe.disable_accel()
    pipe.enable_accel(strategy, threshold=0.1, compute_last=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(pipe, steps=3)
    [w] = _few_step_warnings(caught)
    assert "step 0 is always computed, so at most 2 of 3 passes" in str(w.message)


@pytest.mark.parametrize("arch", ARCHS)
def test_long_schedules_and_threshold_zero_stay_quiet(arch):
    make, run = ARCHS[arch]
    pipe = make()
    pipe.enable_accel("fbcache", threshold=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(pipe, steps=12)
    assert not _few_step_warnings(caught)
    pipe.disable_accel()
    pipe.enable_accel("fbcache", threshold=0.0)  # never skips: nothing to warn about
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(pipe, steps=4)
    assert not _few_step_warnings(caught)
