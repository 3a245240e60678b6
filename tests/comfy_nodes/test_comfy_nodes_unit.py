"""The node pack without ComfyUI: schema -> node inputs, config mapping, import safety, the runner's run/branch/step
tracking, and the same skip decisions as the diffusers path on the same model and inputs."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from tiny_models import TEXT_DIM, tiny_wan_transformer

import dynaccel
from dynaccel.comfy_nodes import runner
from dynaccel.comfy_nodes.adapters import COMFY_ADAPTERS, ComfyWanAdapter
from dynaccel.comfy_nodes.schema import config_from_inputs, node_inputs
from dynaccel.core.config import StrategyConfig, option
from dynaccel.core.registry import get_registry

CACHE = ["adacache", "bwcache", "easycache", "fbcache", "learned_cache", "magcache", "seacache", "smoothcache",
         "taylorseer", "teacache"]


@pytest.mark.parametrize("name", CACHE)
def test_node_inputs_come_from_the_config_schema(name):
    cls = get_registry().strategy(name)
    specs = {s.name: s for s in node_inputs(cls.Config)}
    fields = cls.Config.fields_info()
    assert list(specs) == [f.name for f in fields]
    for f in fields:
        s = specs[f.name]
        assert s.default == f.default and f.doc in s.tooltip and f.accepted() in s.tooltip
        if f.choices:
            assert s.kind == "combo" and s.options == f.choices
        elif f.type in ("float", "int"):
            assert s.kind == f.type and (s.min, s.max) == f.offered_range(s.step)
            assert s.step == (f.step if f.step is not None else {"float": 0.001, "int": 1}[f.type])
        else:
            assert s.kind == {"bool": "bool", "str": "string"}[f.type]


def test_teacache_inputs_in_detail():
    specs = {s.name: s for s in node_inputs(get_registry().strategy("teacache").Config)}
    assert (specs["threshold"].kind, specs["threshold"].min, specs["threshold"].max, specs["threshold"].step) == ("float", 0.0, 5.0, 0.01)
    assert specs["mode"].options == ("normal", "retention")
    assert specs["retention_steps"].kind == "int" and specs["retention_steps"].step == 1
    assert specs["coefficients"].kind == "string"


def test_a_widget_offers_one_step_inside_an_exclusive_bound_and_the_value_is_accepted():
    @dataclass(frozen=True)
    class KeepConfig(StrategyConfig):
        keep_ratio: float = option(0.5, doc="share kept", min=0.0, min_exclusive=True, max=1.0, step=0.05)
        share: float = option(0.5, doc="share", min=0.0, max=1.0, max_exclusive=True)

    keep, share = node_inputs(KeepConfig)
    assert (keep.min, keep.max, share.min, share.max) == (0.05, 1.0, 0.0, 0.999)
    assert "0.0 < keep_ratio <= 1.0" in keep.tooltip
    cfg = config_from_inputs("keep", KeepConfig, {"keep_ratio": keep.min, "share": share.max})
    assert (cfg.keep_ratio, cfg.share) == (0.05, 0.999)
    with pytest.raises(dynaccel.ConfigError, match="exclusive minimum"):
        config_from_inputs("keep", KeepConfig, {"keep_ratio": 0})


def test_config_from_inputs_validates_and_maps_whole_floats():
    cls = get_registry().strategy("teacache")
    cfg = config_from_inputs("teacache", cls.Config, {"threshold": 0, "mode": "retention", "model": object()})
    assert cfg.threshold == 0.0 and isinstance(cfg.threshold, float) and cfg.mode == "retention"
    with pytest.raises(dynaccel.ConfigError, match=r"option 'threshold': got 9\.0 .*0\.0 <= threshold <= 5\.0"):
        config_from_inputs("teacache", cls.Config, {"threshold": 9.0})
    with pytest.raises(dynaccel.ConfigError, match="option 'mode'"):
        config_from_inputs("teacache", cls.Config, {"mode": "fast"})


def test_package_and_node_modules_import_without_comfyui():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('comfy', 'comfy_api'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import inspect, asyncio, dynaccel\n"
        "import dynaccel.comfy_nodes, dynaccel.comfy_nodes.runner, dynaccel.comfy_nodes.adapters, dynaccel.comfy_nodes.schema\n"
        "assert inspect.iscoroutinefunction(dynaccel.comfy_entrypoint)\n"
        "assert not hasattr(dynaccel, 'NODE_CLASS_MAPPINGS')  # ComfyUI would take the V1 path and skip comfy_entrypoint\n"
        "assert not any(m.split('.')[0] in ('comfy', 'comfy_api') for m in sys.modules)\n"
        "try:\n"
        "    asyncio.run(dynaccel.comfy_entrypoint())\n"
        "except ImportError as e:\n"
        "    print('entrypoint needs ComfyUI:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "entrypoint needs ComfyUI: blocked comfy_api" in out.stdout


def test_comfy_adapters_are_registered_by_a_builtin_plugin_and_name_no_diffusers_class():
    reg = get_registry()
    assert "dynaccel.comfy" in reg.plugins
    assert set(reg.plugins["dynaccel.comfy"].adapters) == {a.name for a in COMFY_ADAPTERS}
    wan = tiny_wan_transformer(num_layers=2)
    assert not any(a.matches(wan) for a in COMFY_ADAPTERS)  # comfy.ldm classes only
    assert type(reg.find_adapter(wan)).__name__ == "WanAdapter"  # the diffusers adapter still wins there


def test_step_and_branch_helpers():
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [runner.step_of(torch.tensor([s]), sigmas) for s in sigmas[:-1]] == [0, 1, 2, 3]
    assert runner.step_of(torch.tensor([0.74]), sigmas) == 1 and runner.step_of(None, sigmas) is None
    assert runner.branch_name([0]) == "cond" and runner.branch_name([1]) == "uncond"
    assert runner.branch_name([1, 0]) == "uncond_cond" and runner.branch_name(None) == "default"


def _patcher(model):
    """What the runner reads of a ComfyUI ModelPatcher: ``.model.diffusion_model``."""
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=model))


def test_make_accelerator_refuses_bad_input_before_touching_the_model():
    wan = tiny_wan_transformer(num_layers=2)
    before = {k: v.clone() for k, v in wan.state_dict().items()}
    with pytest.raises(dynaccel.UnknownStrategyError, match="unknown strategy 'teachache'"):
        runner.make_accelerator(_patcher(wan), "teachache", {})
    with pytest.raises(dynaccel.ConfigError, match="option 'threshold'"):
        runner.make_accelerator(_patcher(wan), "teacache", {"threshold": -1.0})
    with pytest.raises(dynaccel.UnsupportedModelError, match="has no diffusion model"):
        runner.make_accelerator(SimpleNamespace(), "teacache", {})
    with pytest.raises(dynaccel.UnsupportedModelError, match=r"teacache: this model \(diffusers\..*WanTransformer3DModel\) is not supported; supported ComfyUI models: .*WanModel"):
        runner.make_accelerator(_patcher(wan), "teacache", {})
    assert all(torch.equal(v, before[k]) for k, v in wan.state_dict().items())
    assert not wan._forward_hooks and not wan._forward_pre_hooks


# ---- the same decisions as the diffusers path --------------------------------------------------------------------

STEPS = 10


def _inputs(seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 3, 8, 8, generator=g)
    enc = torch.randn(batch, 6, TEXT_DIM, generator=g)
    return x, enc


def _euler(call, x, enc, steps=STEPS):
    """A flow-matching Euler loop; ``call(x, sigma, enc, sigma_tensor)`` returns the velocity."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        s = sigmas[i].repeat(x.shape[0])
        v = call(x, s * 1000, enc, s)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x, sigmas


def _diffusers_run(model, name, opts, x, enc, steps=STEPS):
    h = dynaccel.enable_accel(model, name, **opts)
    h.reset(num_steps=steps)
    out, _ = _euler(lambda x, t, e, s: model(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0], x, enc, steps)
    stats = h.stats
    dynaccel.disable_accel(model)
    return out, stats


def _comfy_run(acc, model, x, enc, steps=STEPS, cond_or_uncond=(0,)):
    """Drive the runner as ComfyUI does: OUTER_SAMPLE around the run, DIFFUSION_MODEL around every call."""

    def diffusion_model(x, t, e, transformer_options):
        return model(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0]

    def sample(noise, latent, sampler, sigmas):
        def call(x, t, e, s):
            opts = {"sigmas": s, "cond_or_uncond": list(cond_or_uncond), "uuids": ["u%d" % c for c in cond_or_uncond]}
            return acc.diffusion_model_call(diffusion_model, x, t, e, opts)

        return _euler(call, x, enc, steps)[0]

    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    out = acc.outer_sample(sample, None, None, None, sigmas)
    return out, acc.last_stats


def _accelerator(model, name, opts):
    from dynaccel.plugins.cache.engine import CacheConfig  # noqa: F401 - the policies live there

    cls = get_registry().strategy(name)
    cfg = cls.Config.from_kwargs(name, **opts)
    return runner.Accelerator(cls, cfg, cls.Policy(cfg, runner._ModelOnly(model)), model)


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 1.5])
def test_easycache_makes_the_same_skip_decisions_on_both_paths(threshold, caplog):
    model = tiny_wan_transformer(num_layers=2)
    x, enc = _inputs()
    opts = {"threshold": threshold, "warmup_steps": 2}
    ref, ref_stats = _diffusers_run(model, "easycache", opts, x, enc)
    with caplog.at_level(logging.INFO, logger="dynaccel"):
        out, stats = _comfy_run(_accelerator(model, "easycache", opts), model, x, enc)
    ref_skipped = ref_stats["branches"]["default"]["skipped_steps"]
    assert stats["branches"]["cond"]["skipped_steps"] == ref_skipped
    assert torch.equal(out, ref)
    if threshold == 0.0:
        assert ref_skipped == []
    elif threshold >= 0.3:
        assert len(ref_skipped) > 0  # these thresholds do skip on this model
    assert f"easycache: computed {STEPS - len(ref_skipped)}/{STEPS} steps" in caplog.text


def test_runs_with_different_step_counts_and_cfg_branches_keep_separate_state():
    model = tiny_wan_transformer(num_layers=2)
    acc = _accelerator(model, "easycache", {"threshold": 1.5, "warmup_steps": 2})
    x, enc = _inputs(batch=2)
    _comfy_run(acc, model, x, enc, steps=6, cond_or_uncond=(0, 1))
    _comfy_run(acc, model, x, enc, steps=13, cond_or_uncond=(1,))
    first, second = acc.history
    assert (first["num_steps"], first["passes"], list(first["branches"])) == (6, 6, ["cond_uncond"])
    assert (second["num_steps"], second["passes"], list(second["branches"])) == (13, 13, ["uncond"])
    assert second["skipped"] > 0 and acc.engine is None  # the run's engine is dropped at its end
    # a run restarted from scratch decides exactly as a fresh accelerator does: nothing leaked from the first run
    fresh = _accelerator(model, "easycache", {"threshold": 1.5, "warmup_steps": 2})
    _comfy_run(fresh, model, x, enc, steps=13, cond_or_uncond=(1,))
    assert fresh.last_stats["branches"] == second["branches"]


def test_summary_line_format():
    stats = {"strategy": "teacache", "passes": 40, "computed": 18, "skipped": 22, "pass_speedup": 40 / 18,
             "branches": {"cond": {"computed": 9, "skipped": 11}, "uncond": {"computed": 9, "skipped": 11}}}
    assert runner.summary_line(stats) == "teacache: computed 9/20 steps (cond 9/20, uncond 9/20), 2.22x"
    per_block = {"strategy": "bwcache", "passes": 10, "blocks_computed": 20, "blocks_reused": 20, "branches": {}}
    assert runner.summary_line(per_block) == "bwcache: computed 20/40 block calls in 10 passes, 2.00x"


def test_wan_adapter_profiles_from_comfy_model_shapes():
    def fake(dim, layers, model_type="t2v"):
        return SimpleNamespace(dim=dim, num_layers=layers, model_type=model_type)

    assert ComfyWanAdapter(fake(1536, 30)).teacache_profile() == "wan2.1-t2v-1.3b"
    assert ComfyWanAdapter(fake(5120, 40)).teacache_profile() == "wan2.1-t2v-14b"
    assert ComfyWanAdapter(fake(5120, 40, "i2v")).teacache_profile() == "wan2.1-i2v-480p"
    assert ComfyWanAdapter(fake(128, 4)).teacache_profile() is None  # tiny: identity fallback


def test_hunyuan_profile_only_for_the_layout_the_coefficients_were_fit_on():
    from dynaccel.comfy_nodes.adapters import ComfyHunyuanVideoAdapter

    def fake(in_channels, patch_size, byt5=False):
        return SimpleNamespace(params=SimpleNamespace(in_channels=in_channels, patch_size=patch_size, byt5=byt5))

    assert ComfyHunyuanVideoAdapter(fake(16, [1, 2, 2])).teacache_profile() == "hunyuanvideo"
    assert ComfyHunyuanVideoAdapter(fake(64, [1, 1])).teacache_profile() is None  # HunyuanImage 2.1
    assert ComfyHunyuanVideoAdapter(fake(16, [1, 2, 2], byt5=True)).teacache_profile() is None


def test_entrypoint_is_exported_lazily_from_the_root():
    assert dynaccel.comfy_entrypoint is dynaccel.comfy_nodes.comfy_entrypoint
    assert inspect.iscoroutinefunction(dynaccel.comfy_entrypoint)
    assert asyncio.iscoroutinefunction(dynaccel.comfy_nodes.comfy_entrypoint)


# ---- example workflows ----------------------------------------------------------------------------------------------

WORKFLOWS = sorted((Path(dynaccel.__file__).parent / "comfy_nodes" / "workflows").glob("*.api.json"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflows_are_valid_and_ui_matches_api(path):
    graph = json.loads(path.read_text())
    reg = get_registry()
    dyn = {k: n for k, n in graph.items() if n["class_type"].startswith("Dynaccel_")}
    assert dyn
    for node in dyn.values():
        kind = node["class_type"][len("Dynaccel_"):]
        if kind == "Preset":
            assert node["inputs"]["preset"] in reg.presets
        elif kind in reg.strategies:
            cls = reg.strategy(kind)
            config_from_inputs(kind, cls.Config, node["inputs"])  # every value valid for the schema
            assert set(node["inputs"]) - {"model"} == {f.name for f in cls.Config.fields_info()}
    ui = json.loads(path.with_name(path.name.replace(".api.", ".ui.")).read_text())
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: n["class_type"] for k, n in graph.items()}
    api_links = {(v[0], v[1], k, name) for k, n in graph.items() for name, v in n["inputs"].items() if isinstance(v, list)}
    ui_links = set()
    for lid, src, src_slot, dst, dst_slot, _ in ui["links"]:
        node = next(n for n in ui["nodes"] if n["id"] == dst)
        ui_links.add((str(src), src_slot, str(dst), node["inputs"][dst_slot]["name"]))
        assert node["inputs"][dst_slot]["link"] == lid
    assert ui_links == api_links


def test_pyproject_has_comfy_registry_metadata_and_ships_the_pack():
    import tomllib

    data = tomllib.loads((Path(dynaccel.__file__).parent / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()  # the registry refuses names containing ComfyUI
    assert project["version"] and project["description"] and project["license"] and project["urls"]["Repository"]
    assert {"PublisherId", "DisplayName", "Icon", "includes"} <= set(comfy)
    setuptools = data["tool"]["setuptools"]
    assert "dynaccel.comfy_nodes" in setuptools["packages"]
    assert "workflows/*.json" in setuptools["package-data"]["dynaccel.comfy_nodes"]
