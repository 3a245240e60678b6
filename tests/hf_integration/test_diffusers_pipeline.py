"""The diffusers surface: methods on every pipeline, untouched pipelines, several denoisers."""

import subprocess
import sys

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline, tiny_wan_transformer

import dynaccel


def test_every_stock_pipeline_class_gets_the_methods():
    import diffusers

    for cls in (diffusers.WanPipeline, diffusers.FluxPipeline, diffusers.CogVideoXPipeline, diffusers.DiffusionPipeline):
        assert callable(cls.enable_accel) and callable(cls.disable_accel)
        assert isinstance(vars(diffusers.DiffusionPipeline)["accel_stats"], property)


@pytest.mark.slow
def test_methods_appear_whichever_is_imported_first():
    for order in ("import dynaccel, diffusers", "import diffusers, dynaccel"):
        code = f"{order}; from diffusers import WanPipeline; print(hasattr(WanPipeline, 'enable_accel'))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip().endswith("True"), order


def test_importing_dynaccel_does_not_import_diffusers():
    code = "import sys, dynaccel; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_pipeline_that_never_enables_is_untouched():
    pipe = tiny_wan_pipeline()
    before = dict(vars(pipe.transformer))
    run_wan(pipe, steps=3)
    assert pipe.accel_stats == {}
    assert "forward" not in vars(pipe.transformer)
    assert all(not hasattr(b, "_diffusers_hook") or not b._diffusers_hook.hooks for b in pipe.transformer.blocks)
    assert set(vars(pipe.transformer)) - set(before) <= {"_diffusers_hook"}  # diffusers' own cache_context


def test_accel_stats_report_the_last_call_per_branch():
    pipe = tiny_wan_pipeline()
    pipe.enable_accel("fbcache", threshold=1.0)
    run_wan(pipe, steps=8)
    first = pipe.accel_stats["fbcache"]
    run_wan(pipe, steps=4, guidance=1.0)  # no CFG: one branch
    stats = pipe.accel_stats["fbcache"]
    assert first["num_steps"] == 8 and set(first["branches"]) == {"cond", "uncond"}
    assert stats["num_steps"] == 4 and set(stats["branches"]) == {"cond"} and stats["passes"] == 4


def test_wan22_style_pipeline_accelerates_both_transformers():
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=tiny_wan_transformer(seed=1), vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       transformer_2=tiny_wan_transformer(seed=2), boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    base = run_wan(pipe, steps=10)
    handle = pipe.enable_accel("teacache", threshold=0.0)
    assert torch.equal(run_wan(pipe, steps=10), base)
    assert set(handle.stats) == {"transformer", "transformer_2"}
    assert sum(s["passes"] for s in handle.stats.values()) == 20
    pipe.enable_accel("teacache", threshold=1.0)
    run_wan(pipe, steps=10)
    assert sum(s["skipped"] for s in pipe.accel_stats["teacache"].values()) > 0
    pipe.disable_accel()
    assert torch.equal(run_wan(pipe, steps=10), base)


def test_caching_with_a_stochastic_scheduler_warns():
    import pytest
    from diffusers import DPMSolverMultistepScheduler

    from dynaccel.core.api import AccelWarning

    import warnings

    pipe = tiny_wan_pipeline()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccelWarning)
        pipe.enable_accel("teacache")  # the flow-matching Euler scheduler: no warning
    pipe.scheduler = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    with pytest.warns(AccelWarning, match="fbcache: scheduler DPMSolverMultistepScheduler injects fresh noise"):
        pipe.enable_accel("fbcache")
    pipe.disable_accel()
