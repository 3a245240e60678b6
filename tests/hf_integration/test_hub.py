"""Presets on the Hugging Face Hub, through huggingface_hub's own code paths.

The Hub is out of reach here, so pushes and first pulls go to ``fake_hub.FakeHub``, a local HTTP server speaking
the endpoints huggingface_hub calls (create repo, validate-yaml, preupload, commit, repo info, tree, resolve).
Offline use then runs in a fresh process with ``HF_HUB_OFFLINE=1`` on the huggingface_hub cache those pulls
populated (the real cache layout: blobs, snapshots, refs), with ``HF_ENDPOINT`` pointing at a dead port.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_hub import FakeHub

from dynaccel.core.cli import main
from dynaccel.core.errors import PresetError
from dynaccel.core.registry import get_registry
from dynaccel.hf_integration import hub

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_hub():
    with FakeHub() as server:
        yield server


def test_push_uploads_presets_calibration_files_and_a_model_card(fake_hub):
    url = hub.push_presets("org/presets", ["tiny-wan-teacache", "tiny-wan-magcache", "teacache-flux"],
                           endpoint=fake_hub.url, token="hf_test")
    assert url.startswith(f"{fake_hub.url}/org/presets/commit/")
    assert fake_hub.unhandled == []
    assert [r for r in fake_hub.requests] == [
        ("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
        ("POST", "/api/models/org/presets/preupload/main"), ("POST", "/api/models/org/presets/commit/main")]
    files = fake_hub.repos["org/presets"]["files"]
    assert sorted(files) == ["README.md", "calibration/tiny-wan-magcache-ratios.json", "teacache-flux.json",
                             "tiny-wan-magcache.json", "tiny-wan-teacache.json"]
    magcache = json.loads(files["tiny-wan-magcache.json"])
    assert magcache["config"]["ratios_path"] == "calibration/tiny-wan-magcache-ratios.json"
    local = get_registry().presets["tiny-wan-magcache"]
    assert files["calibration/tiny-wan-magcache-ratios.json"] == Path(local.config["ratios_path"]).read_bytes()
    assert fake_hub.commits[0]["summary"] == "dynaccel presets: tiny-wan-teacache, tiny-wan-magcache, teacache-flux"


def test_model_card_metadata_and_measurements(fake_hub, tmp_path):
    from huggingface_hub import ModelCard

    hub.push_presets("org/presets", ["tiny-wan-teacache", "teacache-flux"], endpoint=fake_hub.url)
    (tmp_path / "README.md").write_bytes(fake_hub.repos["org/presets"]["files"]["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "dynaccel"
    assert {"dynaccel", "teacache"} <= set(meta["tags"])
    assert meta["base_model"] == ["black-forest-labs/FLUX.1-dev"]
    measured = get_registry().presets["tiny-wan-teacache"].provenance["measured"]
    entry = next(p for p in meta["dynaccel"]["presets"] if p["name"] == "tiny-wan-teacache")
    assert (entry["speedup"], entry["psnr_db"], entry["ssim"]) == (measured["speedup"], measured["psnr_db"],
                                                                   measured["ssim"])
    text = card.text
    assert f"| `tiny-wan-teacache` | teacache | tiny-wan | {measured['speedup']:.2f}x | {measured['psnr_db']:.2f} |" in text
    assert "How measured: Measured by `dynaccel calibrate` on 2026-11-26" in text
    assert "held-out prompts 'a green triangle moving left fast'" in text
    assert "Measured by TeaCache authors, not dynaccel on A800. dynaccel did not measure these figures." in text
    assert 'pipe.enable_accel(preset="hub:org/presets/tiny-wan-teacache")' in text


def test_a_bad_preset_is_refused_before_any_request(fake_hub, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "name": "bad", "strategy": "fbcache",
                               "config": {"threshold": 7.0}}))
    with pytest.raises(PresetError, match="preset 'bad': field 'config.threshold'"):
        hub.push_presets("org/presets", ["tiny-wan-teacache", str(bad)], endpoint=fake_hub.url)
    assert fake_hub.requests == []
    with pytest.raises(Exception, match="repo id 'not a repo' is not ORG/REPO"):
        hub.push_presets("not a repo", ["tiny-wan-teacache"], endpoint=fake_hub.url)


def test_pull_validates_and_hub_refs_resolve(fake_hub, tmp_path):
    hub.push_presets("org/presets", ["tiny-wan-teacache", "tiny-wan-smoothcache"], endpoint=fake_hub.url)
    cache = tmp_path / "cache"
    pulled = hub.pull_presets("org/presets", endpoint=fake_hub.url, cache_dir=cache)
    assert [p.name for p in pulled] == ["tiny-wan-smoothcache", "tiny-wan-teacache"]
    smooth = pulled[0]
    side = Path(smooth.config["calibration_path"])
    assert side.is_file() and "models--org--presets/snapshots/" in side.as_posix()
    assert smooth.config["threshold"] == get_registry().presets["tiny-wan-smoothcache"].config["threshold"]
    ref = hub.load_hub_preset("hub:org/presets/tiny-wan-teacache", endpoint=fake_hub.url, cache_dir=cache)
    assert ref.config == get_registry().presets["tiny-wan-teacache"].config
    assert fake_hub.unhandled == []


@pytest.mark.parametrize(
    "files,fragment",
    [
        pytest.param({"p.json": {"name": "other"}}, "field 'name': got 'other' in p.json; accepted: 'p'", id="name"),
        pytest.param({"p.json": {"config": {"threshold": 0.4, "calibration_path": "../../../../etc/passwd"}}},
                     "field 'config.calibration_path': got '../../../../etc/passwd'; accepted: a file of the repo "
                     "under calibration/", id="path-escape"),
        pytest.param({"p.json": {"config": {"threshold": 0.4, "calibration_path": "/etc/passwd"}}},
                     "field 'config.calibration_path': got '/etc/passwd'", id="absolute-path"),
        pytest.param({"p.json": {"config": {"threshold": 0.4, "calibration_path": "calibration/x.json"}},
                      "calibration/x.json": b"\x80\x04\x95junk"}, "calibration/x.json: not valid JSON", id="bad-side"),
        pytest.param({"p.json": b"\x80\x04\x95\x1d\x00cos\nsystem\n"}, "not valid JSON", id="pickle"),
        pytest.param({"p.json": {"schema_version": 3}}, "field 'schema_version': got 3", id="schema-version"),
    ],
)
def test_hostile_hub_presets_give_clear_errors(fake_hub, tmp_path, files, fragment):
    base = {"schema_version": 1, "name": "p", "strategy": "smoothcache", "config": {"threshold": 0.4}}
    fake_hub.repos["org/evil"] = {"sha": "1" * 40, "private": False, "files": {
        k: v if isinstance(v, bytes) else json.dumps({**base, **v}).encode() for k, v in files.items()}}
    with pytest.raises(PresetError) as err:
        hub.load_hub_preset("hub:org/evil/p", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert fragment in str(err.value) and "hub:org/evil/p" in str(err.value)


def test_bad_references_and_unreachable_hub(tmp_path):
    with pytest.raises(Exception, match=r"'hub:org/presets' is not hub:ORG/REPO/NAME\[@REVISION\]"):
        hub.parse_ref("hub:org/presets")
    with pytest.raises(Exception, match="is not hub:ORG/REPO/NAME"):
        hub.parse_ref("hub:org/presets/../../x")
    assert hub.parse_ref("hub:org/presets/tiny-wan-teacache@v1") == ("org/presets", "tiny-wan-teacache", "v1")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    # (a download from a dead endpoint fails the same way, after huggingface_hub's ~25 s of retries; the offline
    # test below checks that message without the wait)
    with pytest.raises(hub.HubError, match="cannot be reached"):
        hub.push_presets("org/presets", ["tiny-wan-teacache"], endpoint=dead)


def test_cli_push_dry_run_push_and_pull(fake_hub, tmp_path, capsys):
    main(["presets", "push", "org/cli", "-p", "tiny-wan-magcache", "--dry-run", str(tmp_path / "staged")])
    assert sorted(p.name for p in (tmp_path / "staged").rglob("*") if p.is_file()) == [
        "README.md", "tiny-wan-magcache-ratios.json", "tiny-wan-magcache.json"]
    assert fake_hub.requests == []
    main(["presets", "push", "org/cli", "-p", "tiny-wan-magcache", "-p", "tiny-wan-teacache",
          "--endpoint", fake_hub.url])
    assert "pushed tiny-wan-magcache, tiny-wan-teacache to org/cli" in capsys.readouterr().out
    main(["presets", "pull", "org/cli", "--endpoint", fake_hub.url, "--cache-dir", str(tmp_path / "cache"),
          "--out", str(tmp_path / "pulled")])
    out = capsys.readouterr().out
    assert "hub:org/cli/tiny-wan-teacache" in out and "teacache" in out
    copied = json.loads((tmp_path / "pulled" / "tiny-wan-magcache.json").read_text())
    assert copied["config"]["ratios_path"] == "calibration/tiny-wan-magcache-ratios.json"
    # a pulled copy is a valid local preset file
    from dynaccel.core.api import resolve_preset

    assert resolve_preset(str(tmp_path / "pulled" / "tiny-wan-magcache.json")).config["threshold"] == \
        get_registry().presets["tiny-wan-magcache"].config["threshold"]


OFFLINE_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import dynaccel, dynaccel.zoo
    from diffusers import WanPipeline
    from dynaccel.core.cli import main
    from dynaccel.hf_integration.hub import HubError
    import huggingface_hub.constants as c
    assert c.HF_HUB_OFFLINE

    pipe = WanPipeline.from_pretrained(dynaccel.zoo.path("tiny-wan"))
    pipe.set_progress_bar_config(disable=True)
    call = dict(dynaccel.zoo.generation_defaults("tiny-wan"), num_inference_steps=8, output_type="pt")
    def gen():
        return pipe("a red circle moving left fast", generator=torch.Generator().manual_seed(0), **call).frames
    plain = gen()
    out = {}
    for ref in ("tiny-wan-magcache", "hub:org/presets/tiny-wan-magcache"):
        handle = pipe.enable_accel(preset=ref)
        out[ref] = (gen(), handle.stats["computed"], handle.stats["passes"])
        pipe.disable_accel()
    local, remote = out.values()
    assert torch.equal(local[0], remote[0]) and local[1:] == remote[1:], (local[1:], remote[1:])
    assert remote[1] < remote[2]
    assert torch.equal(gen(), plain)
    try:
        pipe.enable_accel(preset="hub:org/presets/not-pulled")
    except HubError as exc:
        print("ERROR:", exc)
    assert pipe.accel_stats == {}
    main(["presets", "pull", "org/presets", "--json"])
    print("OK", remote[1], remote[2])
""")


@pytest.mark.slow  # subprocesses or a real run: out of the inner loop; CI runs it
def test_offline_use_from_the_huggingface_hub_cache(fake_hub, tmp_path):
    cache = tmp_path / "hf-cache"
    hub.push_presets("org/presets", ["tiny-wan-magcache", "tiny-wan-teacache"], endpoint=fake_hub.url)
    hub.pull_presets("org/presets", endpoint=fake_hub.url, cache_dir=cache)
    assert (cache / "models--org--presets" / "refs" / "main").is_file()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": dead,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR: hub:org/presets/not-pulled: not-pulled.json: not in the local huggingface_hub cache" in proc.stdout
    pulled = json.loads(proc.stdout[proc.stdout.index("["):proc.stdout.rindex("]") + 1])
    assert [p["name"] for p in pulled] == ["tiny-wan-magcache", "tiny-wan-teacache"]
    assert proc.stdout.strip().splitlines()[-1].startswith("OK")


def test_the_token_is_sent_and_a_refusal_is_a_clear_error():
    with FakeHub(token="hf_secret") as server:
        with pytest.raises(hub.HubError, match="create org/private: the Hub answered .*401"):
            hub.push_presets("org/private", ["tiny-wan-teacache"], endpoint=server.url, token=False)
        assert "org/private" not in server.repos
        hub.push_presets("org/private", ["tiny-wan-teacache"], endpoint=server.url, token="hf_secret", private=True)
        assert server.repos["org/private"]["private"] is True
        assert "tiny-wan-teacache.json" in server.repos["org/private"]["files"]


def test_presets_list_is_the_default(capsys):
    main(["presets", "--json"])
    default = json.loads(capsys.readouterr().out)
    main(["presets", "list", "--json"])
    assert json.loads(capsys.readouterr().out) == default
    assert {p["name"] for p in default} >= {"tiny-wan-teacache", "teacache-flux"}


def test_staging_into_a_folder_whose_parent_is_missing_is_refused(tmp_path, capsys):
    target = tmp_path / "nonexistent" / "staged"
    with pytest.raises(SystemExit) as exc:
        main(["presets", "push", "org/cli", "-p", "tiny-wan-magcache", "--dry-run", str(target)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"folder {str(target.parent)!r} does not exist" in err and not target.parent.exists()


def test_a_learned_predictor_travels_with_its_preset_and_is_checked_on_pull(fake_hub, tmp_path):
    hub.push_presets("org/learned", ["tiny-wan-learned_cache"], endpoint=fake_hub.url)
    files = fake_hub.repos["org/learned"]["files"]
    side = "calibration/tiny-wan-learned_cache-predictor.safetensors"
    assert sorted(files) == ["README.md", side, "tiny-wan-learned_cache.json"]
    local = get_registry().presets["tiny-wan-learned_cache"]
    assert files[side] == Path(local.config["predictor_path"]).read_bytes()
    pulled = hub.load_hub_preset("hub:org/learned/tiny-wan-learned_cache", endpoint=fake_hub.url,
                                 cache_dir=tmp_path / "c1")
    assert Path(pulled.config["predictor_path"]).read_bytes() == files[side]
    # a repo whose predictor is not one (a pickle under the safetensors name) is refused on pull, naming the option
    doc = json.loads(files["tiny-wan-learned_cache.json"])
    fake_hub.repos["org/evil"] = {"sha": "2" * 40, "private": False, "files": {
        "tiny-wan-learned_cache.json": json.dumps(doc).encode(), side: b"\x80\x04\x95\x1d\x00cos\nsystem\n"}}
    with pytest.raises(PresetError, match="config.predictor_path.*not a readable safetensors file"):
        hub.load_hub_preset("hub:org/evil/tiny-wan-learned_cache", endpoint=fake_hub.url, cache_dir=tmp_path / "c2")
