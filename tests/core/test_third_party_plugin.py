"""A third-party cache strategy installed with pip (the example plugin, the template plugin authors copy) shows up
everywhere with no edit in dynaccel: `dynaccel plugins` / `strategies`, `dynaccel bench`'s default rows, the ComfyUI
nodes (driven by the same engine) and the demo's controls; it runs on dynaccel's public cache engine (per-branch
state, forced steps, bare models through handle.reset) and never installs a hook of its own."""

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import TEXT_DIM, run_wan, tiny_wan_pipeline, tiny_wan_transformer

import dynaccel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dynaccel-example-plugin"


def _pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin") / "src"
    shutil.copytree(EXAMPLE, src)  # build outside the repo: leaves no build/ or egg-info behind
    _pip("install", "--no-deps", "--no-build-isolation", str(src))
    from dynaccel.core import registry

    registry.reload()
    yield registry
    _pip("uninstall", "-y", "dynaccel-example-plugin")
    registry.reload()


def test_dynaccel_plugins_lists_it_with_distribution_and_version(installed):
    cli = [sys.executable, "-m", "dynaccel.core.cli"]
    out = subprocess.run([*cli, "plugins"], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("example "))
    assert "every_n (cache)" in line and "dynaccel-example-plugin" in line and "0.1.0" in line
    detail = subprocess.run([*cli, "strategies", "every_n"], capture_output=True, text=True, check=True).stdout
    assert "n  " in detail and "compute one step in n" in detail
    listing = subprocess.run([*cli, "strategies"], capture_output=True, text=True, check=True).stdout
    assert any(ln.split()[:2] == ["every_n", "cache"] for ln in listing.splitlines())


def test_it_is_a_default_row_of_dynaccel_bench(installed, monkeypatch):
    from dynaccel.core.cli import main
    from dynaccel.hf_integration import bench

    seen = []

    class Stop(Exception):
        pass

    def fake_run(pipe, settings, *args, **kwargs):
        seen.extend(s.label for s in settings)
        raise Stop

    monkeypatch.setattr(bench, "run_bench", fake_run)
    with pytest.raises(Stop):
        main(["bench", "--model", "tiny-wan", "--no-peers"])
    assert "every_n" in seen and "preset:tiny-wan-teacache" in seen
    assert "every_n" in bench.default_strategies()


def test_it_works_through_pipe_enable_accel_on_the_cache_engine(installed):
    assert "every_n" in dynaccel.list_strategies()
    pipe = tiny_wan_pipeline()
    base = run_wan(pipe, steps=10)
    pipe.enable_accel("every_n", n=2, compute_last=False)
    out = run_wan(pipe, steps=10)
    stats = pipe.accel_stats["every_n"]
    # half the passes of each CFG branch, each branch on its own state: the odd steps reuse the last output
    assert stats["passes"] == 20 and stats["computed"] == 10
    assert {b: s["skipped_steps"] for b, s in stats["branches"].items()} == {"cond": [1, 3, 5, 7, 9],
                                                                            "uncond": [1, 3, 5, 7, 9]}
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    pipe.enable_accel("every_n", n=3)  # the engine's options: the first and the last step are always computed
    run_wan(pipe, steps=10)
    assert pipe.accel_stats["every_n"]["branches"]["cond"]["skipped_steps"] == [1, 2, 4, 5, 7, 8]
    pipe.disable_accel()
    assert torch.equal(run_wan(pipe, steps=10), base)


def test_n_1_is_bit_identical_to_the_plain_pipeline(installed):
    pipe = tiny_wan_pipeline()
    base = run_wan(pipe, steps=6)
    pipe.enable_accel("every_n", n=1, compute_last=False)
    assert torch.equal(run_wan(pipe, steps=6), base)
    assert pipe.accel_stats["every_n"]["skipped"] == 0 and pipe.accel_stats["every_n"]["passes"] == 12


def test_a_bare_model_works_through_handle_reset(installed):
    model = tiny_wan_transformer(num_layers=2)
    g = torch.Generator().manual_seed(0)
    x, enc = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 6, TEXT_DIM, generator=g)

    def generate(steps=8):
        outs = []
        for i in range(steps):
            t = torch.tensor([1000.0 * (1 - i / steps)])
            outs.append(model(hidden_states=x, timestep=t, encoder_hidden_states=enc, return_dict=False)[0])
        return outs

    plain = generate()
    handle = dynaccel.enable_accel(model, "every_n", n=2, start=0.25)
    with pytest.raises(dynaccel.DynaccelError, match=r"handle.reset\(num_steps=N\)"):
        generate()  # start/end are fractions of a step count a bare model cannot know
    handle.reset(num_steps=8)
    outs = generate()
    # steps 0, 1 (start: the first quarter), 2, 4, 6 and the last are computed; 3 and 5 reuse the step before
    assert handle.stats["branches"]["default"]["skipped_steps"] == [3, 5]
    assert [torch.equal(o, p) for o, p in zip(outs, plain)] == [True] * 3 + [False, True, False, True, True]
    assert torch.equal(outs[3], plain[2]) and torch.equal(outs[5], plain[4])
    handle.reset(num_steps=8)  # a new generation: the cache of the last one is not reused at its first step
    assert torch.equal(generate(1)[0], plain[0])
    dynaccel.disable_accel(model)
    assert all(torch.equal(o, p) for o, p in zip(generate(), plain))


def test_it_is_a_comfyui_node_driven_by_the_runner_like_the_diffusers_path(installed):
    from dynaccel.comfy_nodes import runner
    from dynaccel.comfy_nodes.presets import comfy_strategies
    from dynaccel.comfy_nodes.schema import config_from_inputs, node_inputs

    cls = installed.get_registry().strategy("every_n")
    assert cls in comfy_strategies()  # nodes.py makes one node per strategy listed here
    inputs = {s.name: s for s in node_inputs(cls.Config)}
    assert (inputs["n"].kind, inputs["n"].default, inputs["n"].min, inputs["n"].max, inputs["n"].step) == \
        ("int", 2, 1, 10, 1)
    assert (inputs["threshold"].min, inputs["threshold"].max) == (0.0, 0.0) and "unused" in inputs["threshold"].tooltip
    assert config_from_inputs("every_n", cls.Config, {"n": 3.0, "model": object()}).n == 3

    model = tiny_wan_transformer(num_layers=2)
    g = torch.Generator().manual_seed(0)
    x, enc = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 6, TEXT_DIM, generator=g)
    steps = 6
    sigmas = torch.linspace(1.0, 0.0, steps + 1)

    def euler(call):
        y = x
        for i in range(steps):
            y = y + (sigmas[i + 1] - sigmas[i]) * call(y, sigmas[i].repeat(1))
        return y

    def plain(y, s):
        return model(hidden_states=y, timestep=s * 1000, encoder_hidden_states=enc, return_dict=False)[0]

    handle = dynaccel.enable_accel(model, "every_n", n=2)
    handle.reset(num_steps=steps)
    ref = euler(plain)
    ref_stats = handle.stats
    dynaccel.disable_accel(model)

    acc = runner.make_accelerator(SimpleNamespace(model=SimpleNamespace(diffusion_model=model)), "every_n", {"n": 2})

    def sample(*_):  # what ComfyUI's OUTER_SAMPLE / DIFFUSION_MODEL wrappers hand the runner
        def call(y, s):
            opts = {"sigmas": s, "cond_or_uncond": [0], "uuids": ["u0"]}
            return acc.diffusion_model_call(lambda y, s, o: plain(y, s), y, s, opts)

        return euler(call)

    out = acc.outer_sample(sample, None, None, None, sigmas)
    assert acc.last_stats["branches"]["cond"]["skipped_steps"] == ref_stats["branches"]["default"]["skipped_steps"] \
        == [1, 3]
    assert torch.equal(out, ref)
    assert acc.last_stats["summary"] == "every_n: computed 4/6 steps, 1.50x"


def test_the_demo_offers_its_controls_from_the_schema(installed):
    pytest.importorskip("gradio")
    from dynaccel.hf_integration import demo

    app = demo.build_app("tiny-wan", warmup=False)
    by_id = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    assert "every_n" in [c[0] if isinstance(c, tuple) else c for c in by_id["strategy"].choices]
    n = by_id["opt-every_n-n"]
    assert (type(n).__name__, n.minimum, n.maximum, n.step, n.value) == ("Slider", 1, 10, 1, 2)
    assert all(f"opt-every_n-{f.name}" in by_id for f in installed.get_registry().strategy("every_n").Config.fields_info())
    assert demo.sweep_field("every_n").name == "n"
    assert demo.sweep_values("every_n") == [1, 2, 3, 5, 8]
    pinned = by_id["opt-every_n-threshold"]  # a field pinned to one value: a number box, not a slider
    assert (type(pinned).__name__, pinned.minimum, pinned.maximum, pinned.value) == ("Number", 0.0, 0.0, 0.0)


def test_it_runs_on_the_public_cache_engine_and_never_rebinds_forward(installed):
    from diffusers.hooks import HookRegistry

    source = (EXAMPLE / "dynaccel_example" / "__init__.py").read_text()
    # no hook of its own: the engine installs (diffusers' hook API) and removes it
    for own_install in (".forward =", "forward =", "setattr(", "register_forward", "HookRegistry", "ModelHook", "diffusers"):
        assert own_install not in source.split('"""', 2)[2], own_install
    assert "from dynaccel.plugins.cache import" in source
    pipe = tiny_wan_pipeline()
    model = pipe.transformer
    forward = type(model).forward
    pipe.enable_accel("every_n", n=2)
    hooks = HookRegistry.check_if_exists_or_initialize(model).hooks
    assert any(name.startswith("dynaccel.cache.run#") for name in hooks)
    assert type(model).forward is forward  # the class is never touched
    pipe.disable_accel()
    assert not any(name.startswith("dynaccel.") for name in HookRegistry.check_if_exists_or_initialize(model).hooks)


def test_the_block_list_switch_keeps_it_out(installed, monkeypatch):
    monkeypatch.setenv("DYNACCEL_BLOCK_PLUGINS", "example")
    out = subprocess.run([sys.executable, "-c", "import dynaccel; print(dynaccel.list_strategies())"],
                         capture_output=True, text=True, check=True).stdout
    assert "every_n" not in out and "teacache" in out
    monkeypatch.setenv("DYNACCEL_NO_AUTOLOAD", "1")
    monkeypatch.delenv("DYNACCEL_BLOCK_PLUGINS")
    out = subprocess.run([sys.executable, "-c", "import dynaccel; print(dynaccel.list_strategies())"],
                         capture_output=True, text=True, check=True).stdout
    assert "every_n" not in out
