"""Integration tests against a real ComfyUI, started headless on 127.0.0.1 with this pack loaded.

Needs ``COMFYUI_PATH`` (a ComfyUI checkout) and a Python that runs it: ``COMFYUI_PYTHON``, default
``$COMFYUI_PATH/.venv/bin/python`` (with dynaccel's runtime deps pluggy and click). Skipped without them (so in CI);
CONTRIBUTING.md says how to set one up. Each run builds tiny random-weight models with ComfyUI's own classes
(``make_tiny_comfy_models.py``), links this repo and a test-only node pack (``comfy_testpack``) into a temporary
``custom_nodes`` folder, and queues API-format workflows over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from dynaccel.core.registry import get_registry

HERE = Path(__file__).parent
REPO = HERE.parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")
PYTHON = os.environ.get("COMFYUI_PYTHON") or (str(Path(COMFYUI) / ".venv" / "bin" / "python") if COMFYUI else None)

pytestmark = pytest.mark.skipif(
    not COMFYUI or not Path(COMFYUI, "main.py").exists() or not PYTHON or not Path(PYTHON).exists(),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON, default $COMFYUI_PATH/.venv/bin/python); "
    "see CONTRIBUTING.md",
)

TEACACHE = {"threshold": 0.0, "start": 0.0, "end": 1.0, "mode": "normal", "retention_steps": 5, "coefficients": ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, custom_nodes: dict[str, Path], python: str | None = None,
                 env: dict[str, str] | None = None):
        self.root = root
        self.env = env or {}
        self.python = python or PYTHON
        self.out = root / "out"
        self.models = root / "models"
        nodes = root / "custom_nodes"
        for d in (self.out, self.models, nodes):
            d.mkdir(parents=True, exist_ok=True)
        for name, target in custom_nodes.items():
            link = nodes / name
            if target.is_dir():
                link.symlink_to(target, target_is_directory=True)
            else:
                link.write_text(target.read_text())
        (root / "extra.yaml").write_text(
            f"dynaccel_test:\n    base_path: {root}\n    custom_nodes: custom_nodes\n    diffusion_models: models\n"
        )
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", DYNACCEL_TEST_OUT=str(self.out), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        env.update(self.env)
        cmd = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-api-nodes",
            "--database-url", "sqlite:///:memory:", "--preview-method", "none",
            "--extra-model-paths-config", str(self.root / "extra.yaml"), "--output-directory", str(self.out),
        ]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def get(self, path: str):
        return json.load(urllib.request.urlopen(self.url + path, timeout=30))

    def queue(self, graph: dict) -> dict:
        """Queue a workflow and wait for it; returns its history entry, or {"http_error", "body"} when refused."""
        req = urllib.request.Request(
            self.url + "/prompt", data=json.dumps({"prompt": graph}).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            pid = json.load(urllib.request.urlopen(req, timeout=30))["prompt_id"]
        except urllib.error.HTTPError as e:
            return {"http_error": e.code, "body": json.loads(e.read())}
        deadline = time.time() + 300
        while time.time() < deadline:
            h = self.get(f"/history/{pid}")
            if pid in h and h[pid].get("status", {}).get("status_str") in ("success", "error"):
                return h[pid]
            time.sleep(0.2)
        raise TimeoutError(f"prompt {pid} did not finish")

    def record(self, name: str) -> tuple[torch.Tensor, int]:
        from safetensors.torch import load_file

        samples = load_file(str(self.out / f"{name}.safetensors"))["samples"]
        calls = json.loads((self.out / f"{name}.json").read_text())["block_calls"]
        return samples, calls


def _make_models(dest: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=COMFYUI)
    subprocess.run([PYTHON, str(HERE / "make_tiny_comfy_models.py"), str(dest)], check=True, env=env, cwd=COMFYUI, timeout=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui")
    srv = Server(root, {"dynaccel": REPO, "dynaccel_testpack": HERE / "comfy_testpack"})
    _make_models(srv.models)
    srv.start()
    yield srv
    srv.stop()


def workflow(name: str, strategy: str | None = None, options: dict | None = None, *, steps: int = 10, cfg: float = 5.0,
             batch: int = 1, unet: str = "tiny_wan21.safetensors", preset: str | None = None,
             latent: tuple[str, dict] | None = None, mask: bool = False) -> dict:
    """Tiny Wan 2.1 text-to-video: loader -> [dynaccel node] -> block counter -> KSampler -> record."""
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "DynaccelTest_CountBlocks", "inputs": {"model": ["3", 0] if (strategy or preset) else ["1", 0]}},
        "4": {"class_type": "DynaccelTest_RandomConditioning", "inputs": {"seed": 0, "tokens": 8, "width": 4096, "attention_mask": mask}},
        "5": {"class_type": "DynaccelTest_RandomConditioning", "inputs": {"seed": 1, "tokens": 8, "width": 4096, "attention_mask": mask}},
        "6": {"class_type": latent[0], "inputs": dict(latent[1], batch_size=batch)} if latent else
             {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": batch}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": 42, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "DynaccelTest_Record", "inputs": {"latent": ["7", 0], "name": name}},
        "9": {"class_type": "Dynaccel_Stats", "inputs": {"model": ["2", 0], "latent": ["7", 0]}},
    }
    if strategy:
        g["3"] = {"class_type": f"Dynaccel_{strategy}", "inputs": {"model": ["1", 0], **(options or {})}}
    elif preset:
        g["3"] = {"class_type": "Dynaccel_Preset", "inputs": {"model": ["1", 0], "preset": preset}}
    else:
        del g["9"]
    return g


def _defaults(strategy: str) -> dict:
    cls = get_registry().strategy(strategy)
    return {f.name: f.default for f in cls.Config.fields_info()}


def _ok(result: dict) -> dict:
    assert result.get("status", {}).get("status_str") == "success", json.dumps(result)[:3000]
    return result


def _stats_text(result: dict, node: str = "9") -> str:
    return result["outputs"][node]["text"][0]


@pytest.fixture(scope="module")
def baseline(server):
    _ok(server.queue(workflow("baseline")))
    return server.record("baseline")


def test_pack_loads_without_import_errors_and_lists_a_node_per_cache_strategy(server):
    info = server.get("/object_info")
    reg = get_registry()
    for name in ("teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer"):
        node = info[f"Dynaccel_{name}"]
        required, optional = node["input"]["required"], node["input"].get("optional", {})
        assert required["model"][0] == "MODEL" and node["output"] == ["MODEL"]
        # every option is an optional input (a workflow saved before an option existed still validates)
        assert set(required) == {"model"}
        calibrates = name in ("magcache", "smoothcache")  # these keep their calibration unless told not to
        assert set(optional) == {f.name for f in reg.strategy(name).Config.fields_info()} | (
            {"keep_calibration"} if calibrates else set())
        for f in reg.strategy(name).Config.fields_info():
            kind, opts = optional[f.name]
            assert opts["default"] == f.default and f.doc in opts["tooltip"]
            if f.min is not None and not f.choices:
                assert (opts["min"], opts["max"]) == f.offered_range(opts["step"])
    assert "Dynaccel_Preset" in info and "Dynaccel_Stats" in info
    log = server.log_path.read_text()
    assert "IMPORT FAILED" not in log and "Traceback" not in log and "Cannot import" not in log
    assert "custom_nodes/dynaccel" in log  # listed under "Import times for custom nodes"


def test_threshold_zero_is_identical_to_no_node_for_every_strategy(server, baseline):
    base, base_calls = baseline
    for name in ("teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer"):
        opts = _defaults(name) | {"threshold": 0.0}
        result = _ok(server.queue(workflow(f"{name}-zero", name, opts)))
        out, calls = server.record(f"{name}-zero")
        assert torch.equal(out, base), name
        assert calls == base_calls, name
        assert "computed" in _stats_text(result)


@pytest.mark.parametrize(
    "name,options",
    [("teacache", {"threshold": 1.0}), ("fbcache", {"threshold": 0.3}), ("bwcache", {"threshold": 0.3}),
     ("easycache", {"threshold": 0.8, "warmup_steps": 2})],
)
def test_conservative_threshold_calls_the_blocks_less_and_stays_close(server, baseline, name, options):
    base, base_calls = baseline
    result = _ok(server.queue(workflow(f"{name}-on", name, _defaults(name) | options)))
    out, calls = server.record(f"{name}-on")
    assert calls < base_calls
    rel = float((out - base).norm() / base.norm())  # random-weight tiny model: its steps differ a lot
    assert 0 < rel < 0.15, rel
    text = _stats_text(result)
    assert text.startswith(f"{name}: computed ")
    assert f"{name}: computed" in server.log_path.read_text()  # the per-run log line


def test_unsupported_model_fails_at_the_node_with_a_clear_message_then_the_fixed_workflow_runs(server, baseline):
    bad = workflow("bad", "teacache", TEACACHE | {"threshold": 1.0}, unet="tiny_sd3.safetensors")
    result = server.queue(bad)
    assert result["status"]["status_str"] == "error"
    err = next(m[1] for m in result["status"]["messages"] if m[0] == "execution_error")
    assert err["node_type"] == "Dynaccel_teacache"
    assert "is not supported" in err["exception_message"] and "WanModel" in err["exception_message"]
    assert "7" not in err["executed"]  # the sampler never ran
    fixed = dict(bad)
    fixed["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan21.safetensors", "weight_dtype": "default"}}
    _ok(server.queue(fixed))
    assert server.record("bad")[1] < baseline[1]


def test_out_of_range_input_is_refused_by_the_schema(server):
    result = server.queue(workflow("oor", "teacache", TEACACHE | {"threshold": 9.0}))
    assert result["http_error"] == 400
    errors = result["body"]["node_errors"]["3"]["errors"]
    assert errors[0]["type"] == "value_bigger_than_max" and errors[0]["details"] == "threshold"


def test_a_workflow_saved_before_an_option_existed_still_runs(server):
    """Option inputs are optional: a workflow from an older dynaccel (here without ``cfg_sync``, and with only
    ``threshold`` set) validates, and the missing options take their defaults, as the Python API would."""
    assert "cfg_sync" not in TEACACHE
    _ok(server.queue(workflow("old-base")))
    base, base_calls = server.record("old-base")
    _ok(server.queue(workflow("old-zero", "teacache", {"threshold": 0.0})))
    assert torch.equal(server.record("old-zero")[0], base)
    result = _ok(server.queue(workflow("old-on", "teacache", {"threshold": 1.0})))
    assert server.record("old-on")[1] < base_calls
    assert "teacache: computed" in _stats_text(result)


def test_batch_of_two_with_batched_cfg(server):
    _ok(server.queue(workflow("b2-base", batch=2)))
    base, base_calls = server.record("b2-base")
    result = _ok(server.queue(workflow("b2-zero", "teacache", TEACACHE, batch=2)))
    assert torch.equal(server.record("b2-zero")[0], base)
    result = _ok(server.queue(workflow("b2-on", "teacache", TEACACHE | {"threshold": 1.0}, batch=2)))
    out, calls = server.record("b2-on")
    assert out.shape[0] == 2 and calls < base_calls
    stats = json.loads(_stats_text(result).split("\n", 1)[1])[-1]
    # ComfyUI ran the uncond and cond rows of both samples as one batch of 4: one branch, decided together
    assert list(stats["branches"]) in (["uncond_cond"], ["cond_uncond"])
    assert stats["passes"] == 10 and stats["skipped"] > 0


def test_two_samplers_with_different_step_counts_in_one_workflow(server):
    g = workflow("two-a", "teacache", TEACACHE | {"threshold": 1.0}, steps=6)
    g["10"] = dict(g["7"], inputs=dict(g["7"]["inputs"], steps=13, seed=7))
    g["11"] = {"class_type": "Dynaccel_Stats", "inputs": {"model": ["2", 0], "latent": ["10", 0]}}
    g["12"] = {"class_type": "DynaccelTest_Record", "inputs": {"latent": ["10", 0], "name": "two-b"}}
    log_before = len(server.log_path.read_text())
    _ok(server.queue(g))
    lines = re.findall(r"teacache: computed (\d+)/(\d+) steps, ", server.log_path.read_text()[log_before:])
    assert sorted(int(total) for _, total in lines) == [6, 13]  # one run per sampler, each with its own step count
    assert any(int(done) < int(total) for done, total in lines)
    assert server.record("two-a")[0].shape == server.record("two-b")[0].shape


# other architectures: (model file, latent node, attention mask in the conditioning, [(strategy, options, max rel. error)])
ARCHS = {
    # Wan 2.2 TI2V-5B layout (48 latent channels), same WanModel class
    "wan22": ("tiny_wan22.safetensors", None, False,
              [("teacache", {"threshold": 1.0}, 0.1), ("bwcache", {"threshold": 0.3}, 0.1), ("easycache", {"threshold": 0.8}, 0.15)]),
    # HunyuanVideo class (ComfyUI detects this one as HunyuanImage 2.1): double-stream then single-stream blocks over
    # cat(img, txt); the adapter splits the joint stream for the engine
    "hunyuanvideo": ("tiny_hunyuanvideo.safetensors", None, False,
                     [("teacache", {"threshold": 2.0}, 0.15), ("bwcache", {"threshold": 0.3}, 0.15), ("easycache", {"threshold": 0.8}, 0.15)]),
    # blocks that add into their inputs in place (the runner runs them on copies, so that the block inputs the engine
    # keeps stay intact: when it did not, block 0's input became its output, so TeaCache's reused residual lacked
    # block 0's part (rel. error 0.148 here instead of 0.029) and FBCache compared zero residuals and always skipped)
    "ltxv": ("tiny_ltxv.safetensors", ("EmptyLTXVLatentVideo", {"width": 128, "height": 128, "length": 17}), True,
             [("teacache", {"threshold": 0.3}, 0.1), ("fbcache", {"threshold": 0.3}, 0.1), ("easycache", {"threshold": 0.8}, 0.1)]),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_other_architectures_identical_at_zero_and_fewer_calls_when_on(server, arch):
    unet, latent, mask, cases = ARCHS[arch]
    kw = dict(unet=unet, latent=latent, mask=mask)
    _ok(server.queue(workflow(f"{arch}-base", **kw)))
    base, base_calls = server.record(f"{arch}-base")
    for name, options, bound in cases:
        _ok(server.queue(workflow(f"{arch}-{name}-zero", name, _defaults(name) | {"threshold": 0.0}, **kw)))
        zero, zero_calls = server.record(f"{arch}-{name}-zero")
        assert torch.equal(zero, base) and zero_calls == base_calls, name
        result = _ok(server.queue(workflow(f"{arch}-{name}-on", name, _defaults(name) | options, **kw)))
        out, calls = server.record(f"{arch}-{name}-on")
        assert calls < base_calls, name
        rel = float((out - base).norm() / base.norm())
        assert 0 < rel < bound, (name, rel)
        assert _stats_text(result).startswith(f"{name}: computed ")


# Flux: ComfyUI's model detection fixes Flux's width at 3072, so no tiny Flux file goes through UNETLoader; the test
# pack's DynaccelTest_TinyFluxLoader builds ComfyUI's own model_base.Flux (comfy.ldm.flux.model.Flux inside, random
# weights, width 64, 2 double- and 2 single-stream blocks) and its ModelPatcher from the file's stored config; from
# there on the workflow is the usual one: dynaccel node -> KSampler (cfg 5: cond and uncond) -> record.
FLUX_CASES = [("teacache", {"threshold": 0.6}, 0.1), ("fbcache", {"threshold": 1.0}, 0.1), ("bwcache", {"threshold": 0.3}, 0.1)]


def flux_workflow(name: str, strategy: str | None = None, options: dict | None = None, *, seed: int = 42,
                  steps: int = 10) -> dict:
    g = workflow(name, strategy, options, steps=steps, latent=("EmptySD3LatentImage", {"width": 128, "height": 128}))
    g["1"] = {"class_type": "DynaccelTest_TinyFluxLoader", "inputs": {"unet_name": "tiny_flux.safetensors"}}
    for node in ("4", "5"):
        g[node]["inputs"].update(width=64, pooled=32)  # T5-like text features and a CLIP-like pooled vector
    g["7"]["inputs"]["seed"] = seed
    return g


@pytest.fixture(scope="module")
def flux_baseline(server):
    _ok(server.queue(flux_workflow("flux-base")))
    return server.record("flux-base")


def test_flux_threshold_zero_is_identical_to_no_node_for_every_strategy(server, flux_baseline):
    base, base_calls = flux_baseline
    assert base_calls == 10 * 2 * 4 or base_calls == 10 * 4  # 10 steps, cond and uncond (or batched), 4 blocks
    for name in ("teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer"):
        result = _ok(server.queue(flux_workflow(f"flux-{name}-zero", name, _defaults(name) | {"threshold": 0.0})))
        out, calls = server.record(f"flux-{name}-zero")
        assert torch.equal(out, base) and calls == base_calls, name
        assert _stats_text(result).startswith(f"{name}: computed "), name


@pytest.mark.parametrize("name,options,bound", FLUX_CASES, ids=[c[0] for c in FLUX_CASES])
def test_flux_fewer_block_calls_close_output_and_fresh_state_per_run(server, flux_baseline, name, options, bound):
    base, base_calls = flux_baseline
    opts = _defaults(name) | options
    _ok(server.queue(flux_workflow(f"flux-{name}-on", name, opts)))
    out, calls = server.record(f"flux-{name}-on")
    assert calls < base_calls
    rel = float((out - base).norm() / base.norm())
    assert 0 < rel < bound, rel
    # the same patched model (ComfyUI reuses the cached node outputs) samples other noise with another step count,
    # then the first run again: identical output and block calls, so nothing of a run's state leaks into the next
    _ok(server.queue(flux_workflow(f"flux-{name}-other", name, opts, seed=7, steps=6)))
    assert server.record(f"flux-{name}-other")[1] > 0
    result = _ok(server.queue(flux_workflow(f"flux-{name}-again", name, opts)))
    again, again_calls = server.record(f"flux-{name}-again")
    assert torch.equal(again, out) and again_calls == calls
    runs = json.loads(_stats_text(result).split("\n", 1)[1])[-3:]
    assert [r["num_steps"] for r in runs] == [10, 6, 10]  # one accelerator, three runs
    for key in ("summary", "branches", "reused_per_block"):
        assert runs[0].get(key) == runs[2].get(key), key
    assert runs[0]["summary"].startswith(f"{name}: computed ")


def test_a_second_dynaccel_node_replaces_the_first(server, baseline):
    g = workflow("chain", "easycache", _defaults("easycache") | {"threshold": 0.0})
    g["3b"] = {"class_type": "Dynaccel_teacache", "inputs": {"model": ["1", 0], **TEACACHE, "threshold": 1.0}}
    g["3"]["inputs"]["model"] = ["3b", 0]  # loader -> teacache -> easycache (threshold 0) -> sampler
    log_before = len(server.log_path.read_text())
    _ok(server.queue(g))
    log = server.log_path.read_text()[log_before:]
    assert "easycache: computed 10/10 steps" in log and "teacache: computed" not in log
    out, calls = server.record("chain")
    assert torch.equal(out, baseline[0]) and calls == baseline[1]  # teacache's leftover block patches are inert


def test_preset_node_applies_a_preset_by_name(server, baseline):
    result = _ok(server.queue(workflow("preset", preset="tiny-wan-fbcache")))
    assert _stats_text(result).startswith("fbcache: computed ")
    assert server.record("preset")[1] <= baseline[1]


@pytest.mark.parametrize("path", sorted((REPO / "comfy_nodes" / "workflows").glob("*.api.json")), ids=lambda p: p.name)
def test_example_workflows_use_only_nodes_and_inputs_this_comfyui_has(server, path):
    info = server.get("/object_info")
    for node in json.loads(path.read_text()).values():
        assert node["class_type"] in info, node["class_type"]
        spec = info[node["class_type"]]["input"]
        known = set(spec.get("required", {})) | set(spec.get("optional", {}))
        assert set(node["inputs"]) <= known, (node["class_type"], set(node["inputs"]) - known)


def _run_check_script(script: str, tmp_path: Path) -> dict:
    """Run one of the side-by-side scripts with ComfyUI's Python, importing ``dynaccel`` from THIS repo (a link named
    ``dynaccel`` first on PYTHONPATH, ahead of any dynaccel installed there); returns its JSON report."""
    probe = subprocess.run([PYTHON, "-c", "import diffusers"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("needs diffusers in ComfyUI's Python (see CONTRIBUTING.md)")
    (tmp_path / "dynaccel").symlink_to(REPO, target_is_directory=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(tmp_path), COMFYUI]))
    out = subprocess.run([PYTHON, str(HERE / script)], capture_output=True, text=True, env=env, cwd=COMFYUI,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(report["dynaccel_file"]).parent == tmp_path / "dynaccel"  # this repo, not an installed copy
    return report


def test_diffusers_and_comfyui_paths_make_the_same_decisions(tmp_path):
    """One tiny Wan 2.1 model, its weights in both layouts: ComfyUI's sampler with the node's runner and the diffusers
    model with enable_accel, same sigmas, noise and text features (see same_decisions_check.py)."""
    report = _run_check_script("same_decisions_check.py", tmp_path)
    assert report["plain_rel_diff"] < 1e-5  # the two implementations of the model agree
    skipping = set()
    for case in report["cases"]:
        assert case["comfy_skipped"] == case["diffusers_skipped"], case
        assert case["comfy_reused_per_block"] == case["diffusers_reused_per_block"], case
        assert abs(case["comfy_vs_plain"] - case["diffusers_vs_plain"]) < 1e-5, case
        if case["threshold"] == 0.0:
            assert case["comfy_skipped"] == [] and case["comfy_vs_plain"] == 0.0
        elif case["comfy_skipped"] or any(case["comfy_reused_per_block"] or []):
            skipping.add(case["strategy"])
    assert skipping == {"teacache", "fbcache", "taylorseer", "easycache", "adacache", "bwcache"}


def test_pip_install_one_line_shim(tmp_path):
    """With dynaccel installed in ComfyUI's Python, the documented one-line file in custom_nodes loads the pack."""
    probe = subprocess.run([PYTHON, "-c", "import dynaccel.comfy_nodes"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("dynaccel is not pip-installed in ComfyUI's Python (pip install -e . --no-deps there)")
    shim = tmp_path / "shim.py"
    shim.write_text("from dynaccel.comfy_nodes import comfy_entrypoint  # noqa: F401\n")
    srv = Server(tmp_path / "srv", {"dynaccel_nodes.py": shim})
    srv.start()
    try:
        info = srv.get("/object_info")
        assert "Dynaccel_teacache" in info and "Dynaccel_Preset" in info
        assert "IMPORT FAILED" not in srv.log_path.read_text()
    finally:
        srv.stop()


def test_flux_diffusers_and_comfyui_paths_make_the_same_decisions(tmp_path):
    """One tiny Flux (random weights) in both layouts, converted by ComfyUI's own diffusers-to-Flux converter: ComfyUI's
    sampler with the node's runner and the diffusers model with enable_accel make the same decisions (see
    flux_same_decisions_check.py). ComfyUI's Flux blocks add into their inputs in place; diffusers' do not."""
    report = _run_check_script("flux_same_decisions_check.py", tmp_path)
    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    assert report["plain_rel_diff"] < 1e-5, report["plain_rel_diff"]  # the two implementations of Flux agree
    skipping = set()
    for case in report["cases"]:
        assert case["comfy_skipped"] == case["diffusers_skipped"], case
        assert case["comfy_reused_per_block"] == case["diffusers_reused_per_block"], case
        assert abs(case["comfy_vs_plain"] - case["diffusers_vs_plain"]) < 1e-5, case  # same error: same reuse
        if case["threshold"] == 0.0:
            assert case["comfy_skipped"] == [] and case["comfy_vs_plain"] == 0.0, case
        elif case["comfy_skipped"] or any(case["comfy_reused_per_block"] or []):
            skipping.add(case["strategy"])
    assert skipping == {"teacache", "fbcache", "bwcache", "taylorseer", "adacache", "easycache"}


# ---- defect 6: the Preset node checks the preset against the model ---------------------------------------------------


def _node_error(result: dict) -> dict:
    assert result["status"]["status_str"] == "error", json.dumps(result)[:2000]
    return next(m[1] for m in result["status"]["messages"] if m[0] == "execution_error")


def test_preset_node_offers_presets_for_comfyui_models_with_a_sensible_default(server):
    combo = server.get("/object_info")["Dynaccel_Preset"]["input"]["required"]["preset"]
    options, default = combo[1]["options"] if len(combo) > 1 and "options" in combo[1] else combo[0], combo[1]["default"]
    assert "teacache-cogvideox1.5-5b" not in options  # no ComfyUI adapter covers CogVideoX
    assert default == "teacache-wan2.1-t2v-1.3b" and "tiny-wan-teacache" in options and "teacache-flux" in options


@pytest.mark.parametrize("preset,unet,wanted", [
    ("teacache-flux", "tiny_wan21.safetensors", "the preset is for FluxTransformer2DModel"),
    ("tiny-wan-teacache", "tiny_hunyuanvideo.safetensors", "the preset is for WanTransformer3DModel"),
])
def test_preset_for_another_architecture_fails_at_the_node(server, preset, unet, wanted):
    err = _node_error(server.queue(workflow(f"wrong-{preset}", preset=preset, unet=unet)))
    assert err["node_type"] == "Dynaccel_Preset" and wanted in err["exception_message"]
    assert "presets for it:" in err["exception_message"]
    assert "7" not in err["executed"]  # the sampler never ran


# ---- defect 10: calibration said, and kept per model across node re-runs -------------------------------------------


def _log_since(server, start: int) -> str:
    return server.log_path.read_text()[start:]


def test_calibration_is_said_and_kept_across_node_reruns_unless_opted_out(server):
    opts = _defaults("magcache") | {"max_skip_steps": 2, "start": 0.0}
    # opted out: this node calibrates (its first run computes everything) and keeps nothing
    start = len(server.log_path.read_text())
    result = _ok(server.queue(workflow("mag-a", "magcache", opts | {"threshold": 1.9, "keep_calibration": False})))
    log = _log_since(server, start)
    assert re.search(r"magcache: computed 10/10 steps.*\(calibration run: every step computed to calibrate magcache", log)
    assert "calibration run" in _stats_text(result)
    assert json.loads(_stats_text(result).split("\n", 1)[1])[-1]["calibration"] == "calibrated in this run"
    # kept (the default): calibrates once more, then a re-run of the node (another threshold) starts calibrated
    _ok(server.queue(workflow("mag-b", "magcache", opts | {"threshold": 1.8})))
    start = len(server.log_path.read_text())
    result = _ok(server.queue(workflow("mag-c", "magcache", opts | {"threshold": 2.0})))
    log = _log_since(server, start)
    assert "calibration run" not in log and "calibration run" not in _stats_text(result)
    done, total = map(int, re.search(r"magcache: computed (\d+)/(\d+) steps", log).groups())
    assert total == 10 and done < total  # skipped from its first run: the calibration was kept
    assert json.loads(_stats_text(result).split("\n", 1)[1])[-1]["calibration"] == "calibrated"


# ---- defect 12: the log line is prefixed and starts its own line ---------------------------------------------------


def test_the_log_line_names_dynaccel_and_the_node_on_a_line_of_its_own(server):
    start = len(server.log_path.read_text())
    _ok(server.queue(workflow("log-line", "teacache", TEACACHE | {"threshold": 0.5})))
    lines = _log_since(server, start).split("\n")
    ours = [ln for ln in lines if "teacache: computed" in ln]
    assert len(ours) == 1 and ours[0].startswith("dynaccel [node 3]: teacache: computed "), ours


# ---- defect 11: a clone into custom_nodes, with requirements.txt installed, loads ----------------------------------


def _tracked_copy(dest: Path) -> None:
    """The repo's files as ``git clone`` gives them (tracked and not ignored), copied (not linked)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _python_without(names: tuple[str, ...], root: Path) -> str:
    """A Python with ComfyUI's packages except ``names`` (and no installed dynaccel): a new venv whose site-packages
    links every other entry of ComfyUI's."""
    info = json.loads(subprocess.run([PYTHON, "-c", "import json, sys, sysconfig; print(json.dumps("
                                      "[sys._base_executable, sysconfig.get_paths()['purelib']]))"],
                                     capture_output=True, text=True, check=True).stdout)
    base, comfy_site = info
    venv = root / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for entry in Path(comfy_site).iterdir():
        low = entry.name.lower()
        if any(low.startswith(n) for n in names) or "dynaccel" in low or (site / entry.name).exists():
            continue
        (site / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return py


def test_clone_install_with_requirements_loads_without_import_failed(tmp_path):
    py = _python_without(("pluggy", "click"), tmp_path)
    assert subprocess.run([py, "-c", "import pluggy"], capture_output=True).returncode != 0  # really without
    clone = tmp_path / "srv" / "custom_nodes" / "dynaccel"
    clone.mkdir(parents=True)
    _tracked_copy(clone)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # what ComfyUI-Manager / the registry do for a cloned pack: install its requirements.txt
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--target", site, "-r", str(clone / "requirements.txt")],
                   check=True, timeout=600)
    srv = Server(tmp_path / "srv", {}, python=py)
    srv.start()
    try:
        info = srv.get("/object_info")
        assert "Dynaccel_teacache" in info and "Dynaccel_Preset" in info
        log = srv.log_path.read_text()
        assert "IMPORT FAILED" not in log and "No module named" not in log, log[-3000:]
    finally:
        srv.stop()


def test_a_third_party_cache_strategy_is_a_node_that_runs(tmp_path):
    """The example plugin (every_n), installed in ComfyUI's Python beside dynaccel, is a node with no edit in dynaccel,
    driven by the same engine: n=1 is identical to no node, n=2 computes the steps it says.

    Both go to a pip ``--target`` folder on ComfyUI's PYTHONPATH (ComfyUI's own environment is untouched): the plugin,
    and ``dynaccel`` as a link to this checkout, loaded by the one-line file in custom_nodes (the pip-install layout),
    so the plugin's ``import dynaccel`` is the very copy that runs the nodes."""
    site = tmp_path / "site"
    src = tmp_path / "plugin"
    shutil.copytree(REPO / "examples" / "dynaccel-example-plugin", src)
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(src)], check=True)
    (site / "dynaccel").symlink_to(REPO, target_is_directory=True)
    shim = tmp_path / "shim.py"
    shim.write_text("from dynaccel.comfy_nodes import comfy_entrypoint  # noqa: F401\n")
    srv = Server(tmp_path / "srv", {"dynaccel_nodes.py": shim, "dynaccel_testpack": HERE / "comfy_testpack"},
                 env={"PYTHONPATH": str(site)})
    _make_models(srv.models)
    srv.start()
    try:
        node = srv.get("/object_info")["Dynaccel_every_n"]
        assert node["display_name"] == "dynaccel EveryN" and node["output"] == ["MODEL"]
        n = node["input"]["optional"]["n"]
        assert n[0] == "INT" and (n[1]["default"], n[1]["min"], n[1]["max"]) == (2, 1, 10)
        _ok(srv.queue(workflow("base")))
        base, base_calls = srv.record("base")
        _ok(srv.queue(workflow("every-1", "every_n", {"n": 1})))
        out, calls = srv.record("every-1")
        assert torch.equal(out, base) and calls == base_calls
        result = _ok(srv.queue(workflow("every-2", "every_n", {"n": 2})))
        out, calls = srv.record("every-2")
        # 10 steps: 0, 2, 4, 6, 8 and the last are computed, the odd ones reuse the step before's output
        assert _stats_text(result).startswith("every_n: computed 6/10 steps")
        assert calls * 10 == base_calls * 6 and not torch.equal(out, base) and torch.isfinite(out).all()
        assert "IMPORT FAILED" not in srv.log_path.read_text() and "PluginWarning" not in srv.log_path.read_text()
    finally:
        srv.stop()


# ---- sparse attention (issue 13): the same engine and policies through ComfyUI's attention override ------------------

SPARSE = ("sliding_tile", "radial", "svg", "pasa")
# 128x128x9 video: a 16x16x3 latent, a (3, 8, 8) token grid of 192 tokens, 12 kernel blocks of 16 tokens
SPARSE_LATENT = ("EmptyHunyuanLatentVideo", {"width": 128, "height": 128, "length": 9})
TILES = {"tile_frames": 1, "tile_height": 4, "tile_width": 4, "block_size": 16}
# strategy -> (a full mask: dense without dense_steps, a sparse setting)
SPARSE_CASES = {
    "sliding_tile": (TILES | {"radius_frames": 1000, "radius_height": 1000, "radius_width": 1000},
                     TILES | {"radius_frames": 0, "radius_height": 1, "radius_width": 1, "dense_steps": 2}),
    "radial": ({"tile_height": 4, "tile_width": 4, "block_size": 16, "dense_frames": 1000},
               {"tile_height": 4, "tile_width": 4, "block_size": 16, "dense_frames": 0, "window": 0, "dense_steps": 2}),
    "svg": ({"block_size": 16, "frame_window": 1000},
            {"block_size": 16, "frame_window": 0, "position_window": 16, "dense_steps": 2}),
    "pasa": (TILES | {"density": 1.0, "max_density": 1.0},
             TILES | {"density": 0.4, "max_density": 0.7, "dense_steps": 2}),
}


def _run_stats(result: dict) -> dict:
    return json.loads(_stats_text(result).split("\n", 1)[1])[-1]


@pytest.fixture(scope="module")
def sparse_baseline(server):
    _ok(server.queue(workflow("sparse-base", latent=SPARSE_LATENT)))
    return server.record("sparse-base")


def test_a_node_per_sparse_attention_strategy_with_inputs_from_its_config(server):
    info = server.get("/object_info")
    reg = get_registry()
    for name in SPARSE:
        node = info[f"Dynaccel_{name}"]
        required, optional = node["input"]["required"], node["input"].get("optional", {})
        assert set(required) == {"model"} and required["model"][0] == "MODEL" and node["output"] == ["MODEL"]
        assert set(optional) == {f.name for f in reg.strategy(name).Config.fields_info()}
        for f in reg.strategy(name).Config.fields_info():
            kind, opts = optional[f.name]
            assert opts["default"] == f.default and f.doc in opts["tooltip"], (name, f.name)


@pytest.mark.parametrize("name", SPARSE)
def test_sparse_attention_dense_settings_are_identical_and_a_sparse_one_computes_fewer_blocks(server, sparse_baseline, name):
    base, base_calls = sparse_baseline
    full_mask, sparse = SPARSE_CASES[name]
    # dense: every step a warm-up step, or a mask that covers everything: ComfyUI's own attention runs every call
    for label, opts in (("steps", {"dense_steps": 10}), ("mask", full_mask)):
        result = _ok(server.queue(workflow(f"{name}-dense-{label}", name, opts, latent=SPARSE_LATENT)))
        out, calls = server.record(f"{name}-dense-{label}")
        assert torch.equal(out, base) and calls == base_calls, (name, label)
        stats = _run_stats(result)
        assert stats["sparse_calls"] == 0 and stats["mean_density"] == 1.0 and stats["steps"] == 10, (label, stats)
    log_before = len(server.log_path.read_text())
    result = _ok(server.queue(workflow(f"{name}-sparse", name, sparse, latent=SPARSE_LATENT)))
    out, calls = server.record(f"{name}-sparse")
    stats = _run_stats(result)
    # 4 blocks x 10 steps, cond and uncond batched: one self-attention call per block and step (per branch)
    assert stats["steps"] == 10 and stats["attention_calls"] % 40 == 0, stats
    assert stats["dense_calls"] == stats["attention_calls"] // 5  # the 2 dense steps of 10
    assert stats["sparse_calls"] > 0 and stats["mean_density"] < 1.0 and stats["attention_sparsity"] > 0, stats
    assert all(d < 1.0 for s, d in stats["density_per_step"].items() if int(s) >= 2), stats["density_per_step"]
    assert calls == base_calls  # sparse attention computes fewer attention blocks, never fewer transformer blocks
    rel = float((out - base).norm() / base.norm())
    assert 0 < rel < 0.05, rel
    assert _stats_text(result).startswith(f"{name}: {stats['sparse_calls']}/{stats['attention_calls']} attention calls sparse, mean density ")
    assert f"dynaccel [node 3]: {name}: " in server.log_path.read_text()[log_before:]  # the per-run log line


def _plain_dense_sparse(server, prefix, strategy, **kw):
    """Queue the plain workflow, ``strategy`` kept dense (bit-identical to plain) and at its sparse case; returns
    (plain output, the sparse output, the sparse run's stats) after checking what every such run must show."""
    _ok(server.queue(workflow(f"{prefix}-base", **kw)))
    base, base_calls = server.record(f"{prefix}-base")
    _ok(server.queue(workflow(f"{prefix}-dense", strategy, {"dense_steps": 10}, **kw)))
    assert torch.equal(server.record(f"{prefix}-dense")[0], base)
    result = _ok(server.queue(workflow(f"{prefix}-sparse", strategy, SPARSE_CASES[strategy][1], **kw)))
    out, calls = server.record(f"{prefix}-sparse")
    stats = _run_stats(result)
    assert stats["sparse_calls"] > 0 and stats["mean_density"] < 1.0 and calls == base_calls, stats
    return base, out, stats


def test_sparse_attention_on_the_wan22_layout(server):
    """Wan 2.2 (TI2V-5B layout, 48 latent channels) is the same WanModel class: dense is identical, sparse runs."""
    base, out, _ = _plain_dense_sparse(server, "wan22-st", "sliding_tile", unet="tiny_wan22.safetensors",
                                       latent=SPARSE_LATENT)
    assert 0 < float((out - base).norm() / base.norm()) < 0.05


def test_sparse_attention_with_a_batch_of_two(server):
    """Batch 2 with cfg 5: ComfyUI runs cond and uncond of both samples as one batch of 4 per attention call."""
    base, out, _ = _plain_dense_sparse(server, "sparse-b2", "pasa", batch=2, latent=SPARSE_LATENT)
    assert out.shape[0] == 2
    for i in range(2):  # each sample stays close to its own plain output
        assert 0 < float((out[i] - base[i]).norm() / base[i].norm()) < 0.05


def test_a_dynaccel_node_after_a_sparse_attention_node_replaces_it(server, sparse_baseline):
    """loader -> sliding_tile (sparse) -> easycache (threshold 0) -> sampler: the sparse node no longer acts (no run
    of its own, no sparse call: its override is taken off and its leftover block patches are inert), so the output
    is the plain model's."""
    g = workflow("after-sparse", "easycache", _defaults("easycache") | {"threshold": 0.0}, latent=SPARSE_LATENT)
    g["3b"] = {"class_type": "Dynaccel_sliding_tile", "inputs": {"model": ["1", 0], **SPARSE_CASES["sliding_tile"][1]}}
    g["3"]["inputs"]["model"] = ["3b", 0]
    log_before = len(server.log_path.read_text())
    _ok(server.queue(g))
    log = server.log_path.read_text()[log_before:]
    assert "easycache: computed 10/10 steps" in log and "sliding_tile:" not in log
    assert torch.equal(server.record("after-sparse")[0], sparse_baseline[0])


def test_a_sparse_attention_node_refuses_a_model_without_a_self_attention_adapter(server):
    result = server.queue(workflow("sparse-bad", "sliding_tile", {}, unet="tiny_hunyuanvideo.safetensors"))
    err = _node_error(result)
    assert err["node_type"] == "Dynaccel_sliding_tile"
    assert "is not supported" in err["exception_message"] and "HunyuanVideo" in err["exception_message"]
    assert "supported ComfyUI models: ComfyUI WanModel" in err["exception_message"]
    assert "7" not in err["executed"]  # the sampler never ran


def test_sparse_attention_makes_the_same_decisions_on_the_diffusers_and_comfyui_paths(tmp_path):
    """One tiny Wan 2.1 model in both layouts; every sparse strategy at a dense and a sparse setting through ComfyUI's
    sampler with the node's runner and through diffusers with enable_accel (see sparse_same_decisions_check.py)."""
    report = _run_check_script("sparse_same_decisions_check.py", tmp_path)
    assert report["plain_rel_diff"] < 1e-5
    sparse = set()
    for case in report["cases"]:
        c, d = case["comfy"], case["diffusers"]
        for key in ("sparse_calls", "dense_calls", "mean_density", "density_per_step", "spatial_head_share"):
            assert c.get(key) == d.get(key), (key, case)
        for step, budget in (d.get("budget_per_step") or {}).items():  # PASA: from the latents, which agree to 1e-6
            assert abs(c["budget_per_step"][step] - budget) < 1e-4, case
        assert abs(case["comfy_vs_plain"] - case["diffusers_vs_plain"]) < 1e-5, case
        assert case["comfy_vs_diffusers"] < 1e-5, case
        if case["setting"] == "dense":
            assert case["comfy_identical_to_plain"] and c["sparse_calls"] == 0, case
        else:
            assert c["sparse_calls"] > 0 and c["mean_density"] < 1.0 and case["comfy_vs_plain"] > 0, case
            sparse.add(case["strategy"])
    assert sparse == set(SPARSE)
