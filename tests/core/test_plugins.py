"""pluggy core: every hookspec documented and tested, runtime plugins, environment switches, stacking."""

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel
from dynaccel.core import hookspecs
from dynaccel.core.adapters import ModelAdapter
from dynaccel.core.config import StrategyConfig, option
from dynaccel.core.distiller import Distiller, DistillerConfig
from dynaccel.core.presets import Preset
from dynaccel.core.strategy import Handle, Strategy

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "dynaccel_spec"))


def test_the_hookspecs_are_the_documented_seven():
    assert HOOKS == ["identify_model", "register_commands", "register_distillers", "register_model_adapters",
                     "register_presets", "register_strategies", "resolve_preset"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_has_a_docstring(hook):
    assert getattr(hookspecs, hook).__doc__.strip()


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_is_documented(hook):
    doc = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^#### `{hook}\(", doc, re.M), f"docs/plugins.md has no '#### `{hook}(...)`' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_has_a_test(hook):
    tree = ast.parse(Path(__file__).read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert f"test_hook_{hook}" in names, f"no test_hook_{hook} in {Path(__file__).name}"


# ---- a runtime plugin exercising every hook ------------------------------------------------------------------------


@dataclass(frozen=True)
class NoopConfig(StrategyConfig):
    scale: float = option(1.0, doc="multiplies nothing", min=0.0, max=2.0)


class NoopHandle(Handle):
    def _remove(self):
        pass

    def _reset(self, num_steps):
        pass


class Noop(Strategy):
    name = "noop_test"
    family = "testing"
    Config = NoopConfig
    summary = "does nothing"
    needs_adapter = False

    def apply(self, target, config, adapter, run_probe):
        return NoopHandle(self.name, self.family, target, config)


class Hostile(Noop):
    name = "hostile_test"
    family = "hostile"
    conflicts_with = frozenset({"cache"})


class LinearAdapter(ModelAdapter):
    name = "test-linear"
    architectures = ("Linear",)
    capabilities = frozenset({"blocks"})

    @classmethod
    def matches(cls, model):
        return isinstance(model, torch.nn.Linear)


@dataclass(frozen=True)
class HalfwayConfig(DistillerConfig):
    at: float = option(0.5, doc="the noise level of every pair", min=0.0, max=1.0)


class HalfwayDistiller(Distiller):
    """Pairs at one noise level on the straight line (a test method)."""

    name = "halfway_test"
    summary = "every pair at one noise level"
    Config = HalfwayConfig

    def pairs(self, states, sigmas, generator):
        s = torch.full((states.shape[0],), self.config.at)
        noise, out = states[:, 0], states[:, -1]
        return (1 - self.config.at) * out + self.config.at * noise, s, noise - out


class TestPlugin:
    @dynaccel.hookimpl
    def register_strategies(self, register):
        register(Noop)
        register(Hostile)

    @dynaccel.hookimpl
    def register_model_adapters(self, register):
        register(LinearAdapter)

    @dynaccel.hookimpl
    def register_presets(self, register):
        register(Preset(name="noop-half", strategy="noop_test", config={"scale": 0.5}))

    @dynaccel.hookimpl
    def register_distillers(self, register):
        register(HalfwayDistiller)

    @dynaccel.hookimpl
    def register_commands(self, cli):
        @cli.command(name="hello-test")
        def hello():
            click.echo("hello from a plugin")


@pytest.fixture
def plugged(fresh_registry):
    reg = fresh_registry.get_registry()
    reg.add_plugin(TestPlugin(), name="test-plugin")
    yield reg


def test_hook_register_strategies(plugged):
    assert "noop_test" in dynaccel.list_strategies()
    handle = dynaccel.enable_accel(torch.nn.Linear(2, 2), "noop_test", scale=0.5)
    assert handle.config.scale == 0.5 and handle.family == "testing"


def test_hook_register_model_adapters(plugged):
    adapter = plugged.find_adapter(torch.nn.Linear(2, 2))
    assert isinstance(adapter, LinearAdapter)
    assert plugged.plugins["test-plugin"].adapters == ["test-linear"]


class SurfaceAdapter(ModelAdapter):
    """The base class of one surface's adapters (as ComfyAdapter is ComfyUI's)."""


class SurfaceLinearAdapter(SurfaceAdapter):
    name = "test-surface-linear"
    architectures = ("SurfaceLinear",)
    capabilities = frozenset()

    @classmethod
    def matches(cls, model):
        return isinstance(model, torch.nn.Linear)


def test_adapters_are_looked_up_among_a_surface_s_own_kind(plugged, monkeypatch):
    class SurfacePlugin:
        @dynaccel.hookimpl
        def register_model_adapters(self, register):
            register(SurfaceLinearAdapter)

    plugged.add_plugin(SurfacePlugin(), name="surface-plugin")
    linear = torch.nn.Linear(2, 2)
    # the last registered match wins among all adapters; `among` keeps to one kind, whenever it was registered
    assert type(plugged.find_adapter(linear)) is SurfaceLinearAdapter
    assert plugged.adapter_classes(among=SurfaceAdapter) == [SurfaceLinearAdapter]
    assert type(plugged.find_adapter(linear, among=SurfaceAdapter)) is SurfaceLinearAdapter
    assert plugged.find_adapter(torch.nn.Conv1d(1, 1, 1), among=SurfaceAdapter) is None
    blocks = plugged.strategy("noop_test")
    monkeypatch.setattr(blocks, "needs_capabilities", frozenset({"blocks"}))
    assert "Linear" in plugged.supported_architectures(blocks)
    assert plugged.supported_architectures(blocks, among=SurfaceAdapter) == []
    assert not plugged.supports(plugged.find_adapter(linear), blocks)  # the surface adapter lacks "blocks"
    with pytest.raises(dynaccel.UnsupportedModelError, match="does not support Linear; supported architectures:"):
        plugged.adapter_for(linear, blocks)


def test_hook_register_presets(plugged):
    assert "noop-half" in dynaccel.list_presets()
    handle = dynaccel.enable_accel(torch.nn.Linear(2, 2), preset="noop-half")
    assert handle.strategy == "noop_test" and handle.config.scale == 0.5


def test_hook_register_distillers(plugged):
    assert plugged.distiller("halfway_test") is HalfwayDistiller
    assert plugged.plugins["test-plugin"].distillers == ["halfway_test"]
    assert {"reflow", "perflow"} <= set(plugged.distillers)  # the built-in ones beside it
    method = HalfwayDistiller(at=0.25)
    states = torch.stack([torch.ones(2, 3), torch.zeros(2, 3)], dim=1)  # noise 1, output 0
    x, s, v = method.pairs(states, torch.tensor([1.0, 0.0]), torch.Generator())
    assert torch.equal(x, torch.full((2, 3), 0.25)) and torch.equal(v, torch.ones(2, 3)) and s.tolist() == [0.25] * 2
    with pytest.raises(dynaccel.ConfigError, match="at"):
        HalfwayDistiller(at=2.0)
    with pytest.raises(dynaccel.ConfigError, match="unknown distillation method 'nope'; available: .*halfway_test"):
        plugged.distiller("nope")
    plugged.remove_plugin("test-plugin")
    assert "halfway_test" not in plugged.distillers and "reflow" in plugged.distillers


def test_hook_register_commands(plugged):
    group = click.Group()
    plugged.pm.hook.register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello-test"])
    assert result.output == "hello from a plugin\n"


def test_removing_a_runtime_plugin(plugged):
    plugged.remove_plugin("test-plugin")
    assert "noop_test" not in dynaccel.list_strategies()


def test_a_misspelled_hookimpl_is_caught():
    class Typo:
        @dynaccel.hookimpl
        def register_strategys(self, register):
            pass

    reg = dynaccel.core.registry.get_registry()
    with pytest.raises(Exception, match="register_strategys"):
        reg.add_plugin(Typo(), name="typo")
    reg.pm.unregister(name="typo")


def test_hook_resolve_preset(plugged):
    class Resolver:
        @dynaccel.hookimpl
        def resolve_preset(self, reference):
            if reference.startswith("mine:"):
                return Preset(name=reference[5:], strategy="noop_test", config={"scale": 1.5})
            return None

    plugged.add_plugin(Resolver(), name="resolver")
    handle = dynaccel.enable_accel(torch.nn.Linear(2, 2), preset="mine:wide")
    assert (handle.strategy, handle.config.scale) == ("noop_test", 1.5)
    assert plugged.resolve_preset_reference("other:wide") is None
    with pytest.raises(dynaccel.ConfigError, match="unknown preset 'other:wide'"):
        dynaccel.enable_accel(torch.nn.Linear(2, 2), preset="other:wide")


def test_hook_identify_model(plugged, tmp_path):
    class Namer:
        @dynaccel.hookimpl
        def identify_model(self, path):
            return "my-wan" if Path(path) == tmp_path else None

    plugged.add_plugin(Namer(), name="namer")
    pipe = tiny_wan_pipeline()
    pipe.register_to_config(_name_or_path=str(tmp_path))
    assert plugged.identify_model(str(tmp_path)) == "my-wan"
    other = Preset(name="for-other", strategy="fbcache", config={}, model_id="other-wan")
    with pytest.raises(dynaccel.ConfigError, match="field 'model_id': the preset was tuned for 'other-wan'; this "
                                                   "pipeline is 'my-wan'"):
        pipe.enable_accel(preset=other)
    assert pipe.accel_stats == {}
    pipe.enable_accel(preset=Preset(name="for-mine", strategy="fbcache", config={}, model_id="my-wan"))
    assert list(pipe.accel_stats) == ["fbcache"]
    pipe.disable_accel()


# ---- stacking across families ---------------------------------------------------------------------------------------


def test_other_families_stack_and_conflicting_ones_are_refused(plugged):
    pipe = tiny_wan_pipeline()
    base = run_wan(pipe, steps=4)
    pipe.enable_accel("teacache", threshold=0.0)
    pipe.enable_accel("noop_test")
    assert set(pipe.accel_stats) == {"teacache", "noop_test"}
    with pytest.raises(dynaccel.StackingError, match=r"'hostile_test' \(hostile\) cannot run together with 'teacache' \(cache\)"):
        pipe.enable_accel("hostile_test")
    assert set(pipe.accel_stats) == {"teacache", "noop_test"}
    assert sorted(pipe.disable_accel()) == ["noop_test", "teacache"]
    assert torch.equal(run_wan(pipe, steps=4), base)


# ---- environment switches (fresh interpreters) ----------------------------------------------------------------------


def _strategies_with_env(**env):
    import os

    code = "import dynaccel; print(','.join(dynaccel.list_strategies()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(",") if out.stdout.strip() else []


def test_block_list_switches_off_a_builtin_plugin():
    assert _strategies_with_env(DYNACCEL_BLOCK_PLUGINS="dynaccel.cache,dynaccel.sparse_attention,dynaccel.token_pruning,"
                                                       "dynaccel.early_exit,dynaccel.vla") == []
    assert _strategies_with_env(DYNACCEL_BLOCK_PLUGINS="dynaccel.cache,dynaccel.sparse_attention,dynaccel.vla") == [
        "dycoke", "fastv", "layer_skip", "sliminfer", "visionzip", "visual_exit"
    ]
    assert _strategies_with_env(DYNACCEL_BLOCK_PLUGINS="dynaccel.cache,dynaccel.sparse_attention,dynaccel.token_pruning,"
                                                       "dynaccel.early_exit") == ["denoise_steps", "prefix_prune", "vla_cache"]


def test_allow_list_loads_only_the_named_plugins():
    assert _strategies_with_env(DYNACCEL_PLUGINS="dynaccel.cache,dynaccel.adapters") == [
        "adacache", "bwcache", "easycache", "fbcache", "learned_cache", "magcache", "seacache", "smoothcache",
        "taylorseer", "teacache"
    ]


def test_import_needs_no_diffusers_triton_comfyui_or_simulator():
    heavy = ('diffusers', 'triton', 'comfy', 'transformers', 'metaworld', 'mujoco', 'gymnasium')
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {heavy!r}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dynaccel, dynaccel.zoo, dynaccel.zoo.robot_tasks\n"
        "print(dynaccel.list_strategies(), dynaccel.comfy_entrypoint)\n"
        f"assert not any(m.split('.')[0] in {heavy!r} for m in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "teacache" in out.stdout
