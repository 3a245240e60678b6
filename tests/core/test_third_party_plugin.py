"""A third-party plugin installed with pip shows up in `dynaccel plugins`, `dynaccel strategies` and `dynaccel bench`'s
default rows (a cache strategy, with no edit in dynaccel), and works through pipe.enable_accel by diffusers' hook
API (it never rebinds forward: it is the template plugin authors copy)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import run_wan, tiny_wan_pipeline

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
    assert "n  " in detail and "compute one call in n" in detail
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


def test_it_works_through_pipe_enable_accel(installed):
    assert "every_n" in dynaccel.list_strategies()
    pipe = tiny_wan_pipeline()
    base = run_wan(pipe, steps=6)
    pipe.enable_accel("every_n", n=2)
    out = run_wan(pipe, steps=6)
    stats = pipe.accel_stats["every_n"]
    assert stats["passes"] == 12 and stats["computed"] == 6  # every other call of each CFG branch
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    pipe.disable_accel()
    assert torch.equal(run_wan(pipe, steps=6), base)


def test_it_installs_through_the_hook_api_and_never_rebinds_forward(installed):
    from diffusers.hooks import HookRegistry

    pipe = tiny_wan_pipeline()
    model = pipe.transformer
    pipe.enable_accel("every_n", n=2)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    assert "dynaccel_example.every_n" in registry.hooks
    pipe.disable_accel()
    assert "dynaccel_example.every_n" not in registry.hooks
    source = (EXAMPLE / "dynaccel_example" / "__init__.py").read_text()
    assert ".forward =" not in source and "HookRegistry" in source


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
