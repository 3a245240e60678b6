"""Bad input: clear errors, and the pipeline is unchanged after any of them."""

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_pipeline()


@pytest.fixture(scope="module")
def baseline(pipe):
    return run_wan(pipe, steps=6)


def test_list_strategies_has_the_cache_family():
    assert {"teacache", "fbcache", "easycache", "magcache"} <= set(dynaccel.list_strategies())


def test_unknown_strategy_lists_the_available_ones(pipe, baseline):
    with pytest.raises(dynaccel.UnknownStrategyError) as err:
        pipe.enable_accel("teachache")
    assert str(err.value) == f"unknown strategy 'teachache'; available: {', '.join(dynaccel.list_strategies())}"
    assert torch.equal(run_wan(pipe, steps=6), baseline)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        pytest.param({"thresh": 0.1}, "unknown option 'thresh' for strategy 'teacache'", id="unknown-option"),
        pytest.param({"threshold": "high"}, "option 'threshold': got 'high'", id="wrong-type"),
        pytest.param({"threshold": 9.0}, "got 9.0 (above the maximum); accepted: float with 0.0 <= threshold <= 5.0", id="out-of-range"),
        pytest.param({"mode": "fast"}, "accepted: one of 'normal', 'retention'", id="bad-choice"),
    ],
)
def test_bad_options_leave_the_pipeline_unchanged(pipe, baseline, kwargs, fragment):
    with pytest.raises(dynaccel.ConfigError) as err:
        pipe.enable_accel("teacache", **kwargs)
    assert fragment in str(err.value)
    assert pipe.accel_stats == {}
    assert torch.equal(run_wan(pipe, steps=6), baseline)


def test_bad_options_keep_an_active_strategy_as_it_was(pipe):
    pipe.enable_accel("fbcache", threshold=1.0)
    accelerated = run_wan(pipe, steps=6)
    with pytest.raises(dynaccel.ConfigError):
        pipe.enable_accel("teacache", threshold=-1.0)
    assert list(pipe.accel_stats) == ["fbcache"]
    assert torch.equal(run_wan(pipe, steps=6), accelerated)
    pipe.disable_accel()


def test_unsupported_architecture_names_the_supported_ones():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(dynaccel.UnsupportedModelError) as err:
        dynaccel.enable_accel(model, "teacache")
    msg = str(err.value)
    assert msg.startswith("strategy 'teacache' does not support Sequential; supported architectures: ")
    for arch in ("WanTransformer3DModel", "FluxTransformer2DModel", "HunyuanVideoTransformer3DModel",
                 "CogVideoXTransformer3DModel", "LTXVideoTransformer3DModel"):
        assert arch in msg
    assert not hasattr(model, "_diffusers_hook") or not model._diffusers_hook.hooks


def test_a_target_that_is_neither_pipeline_nor_model():
    with pytest.raises(dynaccel.UnsupportedTargetError, match="expects a diffusers pipeline .* got builtins.str"):
        dynaccel.enable_accel("my pipeline", "teacache")


def test_easycache_works_on_a_plain_torch_module():
    class Denoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, hidden_states, timestep=None):
            return (self.lin(hidden_states),)

    model = Denoiser().eval()
    xs = [torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(i)) * (1 - i / 10) for i in range(8)]
    plain = [model(x)[0] for x in xs]
    handle = dynaccel.enable_accel(model, "easycache", threshold=0.0)
    handle.reset(num_steps=8)
    assert all(torch.equal(model(x)[0], p) for x, p in zip(xs, plain))
    assert handle.stats["computed"] == 8
    dynaccel.disable_accel(model)
    assert "forward" not in vars(model) or not model._diffusers_hook.hooks


def test_bare_model_with_step_fractions_needs_the_step_count():
    from tiny_models import tiny_wan_transformer

    model = tiny_wan_transformer()
    handle = dynaccel.enable_accel(model, "magcache")  # start=0.2 by default
    x = torch.randn(1, 4, 2, 4, 4)
    enc = torch.randn(1, 8, 32)
    model(x, torch.tensor([999]), enc)  # the first step is always computed: nothing to decide yet
    with pytest.raises(dynaccel.DynaccelError, match=r"call handle.reset\(num_steps=N\)"):
        model(x, torch.tensor([900]), enc)  # the second needs the step count for start=0.2
    handle.reset(num_steps=4)
    model(x, torch.tensor([999]), enc)
    dynaccel.disable_accel(model)


def test_disable_of_a_strategy_that_is_not_enabled(pipe):
    with pytest.raises(dynaccel.ConfigError, match="'teacache' is not enabled on this target; enabled: none"):
        pipe.disable_accel("teacache")


def test_unknown_preset_and_mismatched_preset(pipe, tmp_path):
    with pytest.raises(dynaccel.ConfigError, match="unknown preset 'nope'; give a JSON file path or one of: teacache-"):
        pipe.enable_accel(preset="nope")
    with pytest.raises(dynaccel.ConfigError, match="is for strategy 'teacache', not 'fbcache'"):
        pipe.enable_accel("fbcache", preset="teacache-flux")
    with pytest.raises(dynaccel.ConfigError, match="does not exist"):
        pipe.enable_accel(preset=str(tmp_path / "missing.json"))
    assert pipe.accel_stats == {}
