"""One bad plugin never breaks the others: a duplicate strategy or preset name, a hook that raises, a plugin that
fails to import or names a hook that does not exist are skipped with a warning naming both plugins and their
distributions; the built-ins keep working, and `dynaccel plugins` lists everything and exits 0."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel
from dynaccel.core.errors import PluginWarning
from dynaccel.core.presets import Preset
from dynaccel.plugins.cache.teacache import TeaCache

from test_plugins import Noop  # noqa: E402  (tests/core is on sys.path when pytest runs this folder)


class DuplicateStrategy:
    @dynaccel.hookimpl
    def register_strategies(self, register):
        register(type("FakeTeaCache", (Noop,), {"name": "teacache"}))
        register(Noop)


class DuplicatePreset:
    @dynaccel.hookimpl
    def register_presets(self, register):
        register(Preset(name="tiny-wan-teacache", strategy="fbcache", config={"threshold": 0.3}))
        register(Preset(name="dup-own", strategy="fbcache", config={}))


class Raising:
    @dynaccel.hookimpl
    def register_strategies(self, register):
        register(Noop)
        raise RuntimeError("boom")

    @dynaccel.hookimpl
    def register_presets(self, register):
        register(Preset(name="raising-ok", strategy="fbcache", config={}))


def _teacache_works():
    pipe = tiny_wan_pipeline()
    base = run_wan(pipe, steps=4)
    handle = pipe.enable_accel("teacache", threshold=0.0)
    assert torch.equal(run_wan(pipe, steps=4), base) and handle.stats
    pipe.disable_accel()


def test_a_duplicate_strategy_name_is_skipped_with_a_warning_naming_both(fresh_registry):
    reg = fresh_registry.get_registry()
    with pytest.warns(PluginWarning) as record:
        reg.add_plugin(DuplicateStrategy(), name="dup")
    messages = [str(w.message) for w in record]
    assert ("strategy 'teacache' of plugin 'dup' (distribution '(runtime)') skipped: the name is already registered "
            "by plugin 'dynaccel.cache' (distribution 'dynaccel')") in messages[0]
    assert reg.strategies["teacache"] is TeaCache  # the built-in keeps its name
    assert "noop_test" in dynaccel.list_strategies()  # the plugin's other strategy is registered
    assert reg.plugins["dup"].strategies == ["noop_test"]
    assert "teacache" in reg.plugins["dynaccel.cache"].strategies
    assert reg.adapters and "diffusers-wan" in reg.plugins["dynaccel.adapters"].adapters  # nothing half-collected
    _teacache_works()


def test_a_duplicate_preset_name_keeps_the_first_with_a_warning_naming_both(fresh_registry):
    reg = fresh_registry.get_registry()
    first = reg.presets["tiny-wan-teacache"]
    with pytest.warns(PluginWarning, match=r"preset 'tiny-wan-teacache' of plugin 'dup' \(distribution '\(runtime\)'\) "
                                           r"skipped: the name is already registered by plugin 'dynaccel.cache' "
                                           r"\(distribution 'dynaccel'\)"):
        reg.add_plugin(DuplicatePreset(), name="dup")
    assert reg.presets["tiny-wan-teacache"] == first and first.strategy == "teacache" and "dup-own" in reg.presets


def test_a_hook_that_raises_is_skipped_and_the_rest_works(fresh_registry):
    reg = fresh_registry.get_registry()
    with pytest.warns(PluginWarning, match=r"plugin 'raising' \(distribution '\(runtime\)'\): its register_strategies "
                                           r"hook raised RuntimeError: boom; skipped"):
        reg.add_plugin(Raising(), name="raising")
    assert "noop_test" not in reg.strategies  # what the failing call registered part-way is dropped
    assert "raising-ok" in reg.presets  # its other hook worked
    assert {"teacache", "fbcache", "fastv"} <= set(reg.strategies)
    _teacache_works()


# ---- third-party distributions (entry points), through the command line -------------------------------------------


def _fake_distribution(root, dist, module, source):
    """A minimal installed distribution on sys.path: a module and a dist-info with a ``dynaccel`` entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[dynaccel]\n{module} = {module}\n")


@pytest.fixture
def bad_plugins(tmp_path):
    _fake_distribution(tmp_path, "dupe-plugin", "dupe_plugin", """
        from dataclasses import dataclass
        import click
        import dynaccel
        from dynaccel import Strategy, StrategyConfig, option

        @dataclass(frozen=True)
        class Cfg(StrategyConfig):
            n: int = option(2, doc="n", min=1, max=3)

        class Fake(Strategy):
            name, family, Config, summary, needs_adapter = "teacache", "cache", Cfg, "fake", False

        class Own(Strategy):
            name, family, Config, summary, needs_adapter = "dupe_own", "testing", Cfg, "its own", False

        @dynaccel.hookimpl
        def register_strategies(register):
            register(Fake)
            register(Own)

        @dynaccel.hookimpl
        def register_commands(cli):
            raise RuntimeError("no commands today")
    """)
    _fake_distribution(tmp_path, "broken-plugin", "broken_plugin", "raise ImportError('missing dependency xyz')\n")
    _fake_distribution(tmp_path, "typo-plugin", "typo_plugin", """
        import dynaccel

        @dynaccel.hookimpl
        def register_strategys(register):
            pass
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("DYNACCEL_NO_AUTOLOAD", None)
    return env


def test_dynaccel_plugins_lists_everything_and_exits_0_with_one_line_warnings(bad_plugins):
    out = subprocess.run([sys.executable, "-m", "dynaccel.core.cli", "plugins"], capture_output=True, text=True,
                         env=bad_plugins, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    warnings = out.stderr.strip().splitlines()
    assert all(line.startswith("Warning: ") for line in warnings), out.stderr
    assert any("strategy 'teacache' of plugin 'dupe_plugin' (distribution 'dupe-plugin') skipped: the name is "
               "already registered by plugin 'dynaccel.cache' (distribution 'dynaccel')" in w for w in warnings)
    assert any("plugin 'broken_plugin' (distribution 'broken-plugin')" in w and "missing dependency xyz" in w
               for w in warnings)
    assert any("plugin 'typo_plugin' (distribution 'typo-plugin')" in w and "register_strategys" in w
               for w in warnings)
    assert any("its register_commands hook raised RuntimeError: no commands today" in w for w in warnings)
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[2:]}
    assert "teacache (cache)" in rows["dynaccel.cache"] and "dupe_own (testing)" in rows["dupe_plugin"]
    assert "diffusers-wan" in rows["dynaccel.adapters"]


def test_the_builtins_keep_working_beside_a_bad_third_party_plugin(bad_plugins):
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "import dynaccel\n"
            "from dynaccel.core.registry import get_registry\n"
            "from tiny_models import run_wan, tiny_wan_pipeline\n"
            "print(','.join(dynaccel.list_strategies()))\n"
            "print(type(get_registry().strategies['teacache']).__name__, get_registry().strategies['teacache'].__module__)\n"
            "pipe = tiny_wan_pipeline(); pipe.enable_accel('teacache'); run_wan(pipe, steps=4)\n"
            "print(pipe.accel_stats['teacache']['computed'] > 0)\n")
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**bad_plugins, "PYTHONPATH": os.pathsep.join([tests, bad_plugins["PYTHONPATH"]])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    names, owner, ran = out.stdout.strip().splitlines()
    assert {"teacache", "fbcache", "dupe_own", "fastv"} <= set(names.split(","))
    assert owner.endswith("dynaccel.plugins.cache.teacache") and ran == "True"
