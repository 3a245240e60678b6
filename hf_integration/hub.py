"""Tuned presets on the Hugging Face Hub: push, pull, and ``enable_accel(..., preset="hub:ORG/REPO/NAME")``.

A preset repo (a model repo) holds, at its root, one ``NAME.json`` per preset (the same schema-versioned JSON as
the built-in presets), the calibration files some presets refer to under ``calibration/``, and a generated model
card ``README.md`` (YAML metadata + the measured speed and quality of each preset and how they were measured)::

    from dynaccel.hf_integration import hub
    hub.push_presets("my-org/dynaccel-presets", ["tiny-wan-teacache", "my-preset.json"])
    pipe.enable_accel(preset="hub:my-org/dynaccel-presets/tiny-wan-teacache")

Everything goes through huggingface_hub (``create_repo``, ``upload_folder``, ``hf_hub_download``,
``snapshot_download``), so its cache, token (``HF_TOKEN``), endpoint (``HF_ENDPOINT``) and offline mode
(``HF_HUB_OFFLINE=1``: served from the cache) apply. Files from the Hub are data: presets are parsed as JSON and
checked field by field (``dynaccel.core.presets``), calibration files must lie inside the repo, nothing is
unpickled or executed.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from ..core.errors import ConfigError, DynaccelError, PresetError
from ..core.files import FileReadError, read_bounded
from ..core.presets import MAX_FILE_BYTES, NAME_PATTERN, Preset, parse_json
from ..core.registry import check_config

HUB_PREFIX = "hub:"
SIDE_DIR = "calibration"
_REPO_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REF = re.compile(rf"hub:(?P<repo>{_REPO_ID})/(?P<name>{NAME_PATTERN.pattern})(?:@(?P<rev>[A-Za-z0-9._/-]{{1,100}}))?")
_SIDE = re.compile(rf"{SIDE_DIR}/[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}\.(json|safetensors)")
#: side files that are weights (learned_cache's predictor): never parsed here; the strategy's Config loads and checks
#: them (safetensors only, bounded, shapes against the metadata) when the pulled preset is validated
_BINARY_SIDE = ".safetensors"


class HubError(DynaccelError):
    """A Hub operation failed: a bad repo id or reference, a repo or file that is not there, no network."""


def parse_ref(ref: str) -> tuple[str, str, str | None]:
    """``hub:ORG/REPO/NAME[@REVISION]`` -> (repo_id, preset name, revision or None)."""
    m = _REF.fullmatch(ref)
    if not m:
        raise ConfigError(f"preset reference {ref!r} is not hub:ORG/REPO/NAME[@REVISION] (NAME: letters, digits, "
                          "'.', '_', '-'); example: hub:my-org/dynaccel-presets/tiny-wan-teacache")
    return m["repo"], m["name"], m["rev"]


def check_repo_id(repo_id: str) -> str:
    if not re.fullmatch(_REPO_ID, repo_id):
        raise ConfigError(f"repo id {repo_id!r} is not ORG/REPO (letters, digits, '.', '_', '-'); "
                          "example: my-org/dynaccel-presets")
    return repo_id


# ---- reading ------------------------------------------------------------------------------------------------------


def _read_preset(name: str, source: str, fetch: Callable[[str], Path]) -> Preset:
    """Load ``NAME.json`` through ``fetch`` (repo path -> local file) and the calibration files it refers to."""
    path = fetch(f"{name}.json")
    try:
        text = read_bounded(path, MAX_FILE_BYTES)
    except FileReadError as exc:
        raise PresetError(source, None, exc.reason) from None
    preset = Preset.loads(text, source=source)
    label = f"{preset.name!r} ({source})"
    if preset.name != name:
        raise PresetError(label, "name", f"got {preset.name!r} in {name}.json; accepted: {name!r} (the file name)")
    config = dict(preset.config)
    for key, value in preset.config.items():
        if not key.endswith("_path") or not value:
            continue
        if not isinstance(value, str) or not _SIDE.fullmatch(value) or ".." in PurePosixPath(value).parts:
            raise PresetError(label, f"config.{key}", f"got {str(value)[:80]!r}; accepted: a file of the repo under "
                              f"{SIDE_DIR}/ (e.g. {SIDE_DIR}/{name}-calibration.json)")
        side = fetch(value)
        config[key] = str(side)
        if value.endswith(_BINARY_SIDE):
            continue
        try:
            text = read_bounded(side, MAX_FILE_BYTES)
        except FileReadError as exc:
            raise PresetError(label, f"config.{key}", f"{value}: {exc.reason}") from None
        parse_json(text, f"{source}: {value}")  # data only, or a clear error now
    pulled = replace(preset, config=config)
    if any(str(v).endswith(_BINARY_SIDE) for k, v in config.items() if k.endswith("_path")):
        check_config(pulled)  # the strategy loads and checks its weights file now, or a clear error naming it
    return pulled


def _hub_call(what: str, fn: Callable[[], Any]) -> Any:
    """Run a huggingface_hub call; its errors become HubError with the reason (offline, not found, refused)."""
    from huggingface_hub import errors as hf_errors

    try:
        return fn()
    except hf_errors.LocalEntryNotFoundError as exc:
        raise HubError(f"{what}: not in the local huggingface_hub cache and the Hub cannot be reached (offline "
                       f"mode or no network); pull it once with network access. ({exc.__class__.__name__})") from None
    except hf_errors.RepositoryNotFoundError:
        raise HubError(f"{what}: repository not found (or private and no token given)") from None
    except hf_errors.RevisionNotFoundError:
        raise HubError(f"{what}: revision not found") from None
    except hf_errors.EntryNotFoundError:
        raise HubError(f"{what}: no such file in the repository") from None
    except hf_errors.HfHubHTTPError as exc:
        raise HubError(f"{what}: the Hub answered {exc}") from None
    except OSError as exc:  # connection refused, DNS, timeouts
        raise HubError(f"{what}: the Hub cannot be reached: {exc}") from None
    except Exception as exc:  # the HTTP client's own connection errors are not OSErrors
        if type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "httpx2", "httpcore2", "requests"):
            raise HubError(f"{what}: the Hub cannot be reached: {exc}") from None
        raise


def load_hub_preset(ref: str, *, endpoint: str | None = None, token: str | bool | None = None,
                    cache_dir: str | Path | None = None) -> Preset:
    """The preset ``hub:ORG/REPO/NAME[@REVISION]``, downloaded into (or, offline, read from) the huggingface_hub
    cache and validated. Its calibration files come along; their local paths replace the repo paths."""
    from huggingface_hub import hf_hub_download

    repo_id, name, revision = parse_ref(ref)

    def fetch(filename: str) -> Path:
        return Path(_hub_call(f"{ref}: {filename}", lambda: hf_hub_download(
            repo_id, filename, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir)))

    return _read_preset(name, ref, fetch)


def pull_presets(repo_id: str, *, revision: str | None = None, endpoint: str | None = None,
                 token: str | bool | None = None, cache_dir: str | Path | None = None) -> list[Preset]:
    """Download a preset repo into the huggingface_hub cache (``snapshot_download``) and validate every preset in
    it; afterwards ``hub:REPO_ID/NAME`` works offline. Returns the presets (calibration paths made local)."""
    from huggingface_hub import snapshot_download

    check_repo_id(repo_id)
    folder = Path(_hub_call(f"hub:{repo_id}", lambda: snapshot_download(
        repo_id, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir,
        allow_patterns=["*.json", f"{SIDE_DIR}/*.json", "README.md"])))
    names = sorted(p.stem for p in folder.glob("*.json"))
    if not names:
        raise HubError(f"hub:{repo_id}: no presets (no NAME.json at the repository's root)")

    def fetch(filename: str) -> Path:
        path = folder / filename
        if not path.is_file():
            raise HubError(f"hub:{repo_id}: {filename} is not in the repository")
        return path

    return [_read_preset(n, f"hub:{repo_id}/{n}", fetch) for n in names]


# ---- writing ------------------------------------------------------------------------------------------------------


def stage_repo(presets: Iterable[Preset | str | Path], folder: str | Path, repo_id: str = "ORG/REPO") -> list[Preset]:
    """Write what ``push_presets`` uploads into ``folder``: ``NAME.json`` per preset, calibration files under
    ``calibration/``, and the model card ``README.md``. Every preset is validated first; nothing is written when
    one is bad. Returns the presets as written (calibration paths relative to the repo)."""
    from ..core.api import resolve_preset

    resolved = [resolve_preset(p) for p in presets]
    if not resolved:
        raise ConfigError("no presets to push; give at least one preset name or JSON file")
    names = [p.name for p in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"preset name {dupes[0]!r} given twice; each preset of a repo needs its own name")
    copies: list[tuple[Path, str]] = []
    written = []
    for preset in resolved:
        check_config(preset)
        config = dict(preset.config)
        for key, value in preset.config.items():
            if key.endswith("_path") and isinstance(value, str) and value:
                src = Path(value)
                if not src.is_file():
                    raise PresetError(repr(preset.name), f"config.{key}", f"calibration file {value!r} does not "
                                      "exist; run the calibration first (dynaccel calibrate)")
                suffix = _BINARY_SIDE if value.endswith(_BINARY_SIDE) else ".json"
                if suffix == ".json":  # weights were checked by check_config above (the strategy loads them)
                    try:
                        text = read_bounded(src, MAX_FILE_BYTES)
                    except FileReadError as exc:
                        raise PresetError(repr(preset.name), f"config.{key}", exc.reason) from None
                    parse_json(text, repr(value))
                dest = f"{SIDE_DIR}/{preset.name}-{key.removesuffix('_path')}{suffix}"
                copies.append((src, dest))
                config[key] = dest
        written.append(replace(preset, config=config))
    folder = Path(folder)
    if not folder.parent.is_dir():  # the folder itself is created, never a tree of missing parents
        raise ConfigError(f"{str(folder)!r}: folder {str(folder.parent)!r} does not exist; accepted: a folder in an "
                          "existing folder")
    folder.mkdir(exist_ok=True)
    for src, dest in copies:
        (folder / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / dest)
    for preset in written:
        (folder / f"{preset.name}.json").write_text(preset.to_json() + "\n")
    (folder / "README.md").write_text(model_card(written, repo_id))
    return written


def push_presets(repo_id: str, presets: Iterable[Preset | str | Path], *, endpoint: str | None = None,
                 token: str | bool | None = None, private: bool = False, commit_message: str | None = None) -> str:
    """Validate ``presets`` (names, JSON paths or Preset objects), create the model repo ``repo_id`` if needed and
    upload them with a generated model card in one commit. Returns the commit URL."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="dynaccel-push-") as tmp:
        written = stage_repo(presets, tmp, repo_id)
        api = HfApi(endpoint=endpoint, token=token)
        message = commit_message or "dynaccel presets: " + ", ".join(p.name for p in written)

        _hub_call(f"create {repo_id}", lambda: api.create_repo(repo_id, private=private, exist_ok=True))
        info = _hub_call(f"upload to {repo_id}", lambda: api.upload_folder(
            repo_id=repo_id, folder_path=tmp, commit_message=message))
    return str(getattr(info, "commit_url", info))


# ---- the model card -----------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}{suffix}"
    return "-"


def _measured(preset: Preset) -> dict[str, Any]:
    prov = preset.provenance
    m = prov.get("measured") if isinstance(prov.get("measured"), dict) else {}
    return {"speedup": m.get("speedup", m.get("latency_speedup", prov.get("speedup"))), "psnr_db": m.get("psnr_db"),
            "psnr_min_db": m.get("psnr_min_db"), "ssim": m.get("ssim"), "computed": m.get("computed"),
            "success": m.get("heldout_success"), "full_success": m.get("heldout_full_success")}


def _how_measured(preset: Preset) -> str:
    prov = preset.provenance
    if not prov:
        return "No provenance recorded: speed and quality unknown."
    if prov.get("source") == "dynaccel calibrate" and prov.get("min_success") is not None:  # a robot policy
        mach = prov.get("machine") if isinstance(prov.get("machine"), dict) else {}
        m = prov.get("measured") if isinstance(prov.get("measured"), dict) else {}
        return (
            f"Measured by `dynaccel calibrate` on {prov.get('date', '?')}: policy `{prov.get('model', preset.model_id)}` "
            f"in closed loop on the robot tasks, on {mach.get('device', '?')} ({mach.get('cpus', '?')} CPUs, "
            f"{mach.get('threads', '?')} thread(s), torch {mach.get('torch', '?')}). `{prov.get('searched', '?')}` "
            f"chosen as the lowest-latency value whose success on {prov.get('fit_episodes', '?')} fit episodes kept "
            f">= {prov.get('min_success')} of full compute's; judged on {m.get('heldout_episodes', '?')} held-out "
            f"episodes. Speedup: median policy latency per inference against full compute in the same run."
        )
    if prov.get("source") == "dynaccel calibrate":
        mach = prov.get("machine") if isinstance(prov.get("machine"), dict) else {}
        call = prov.get("call") if isinstance(prov.get("call"), dict) else {}
        size = "x".join(str(call[k]) for k in ("num_frames", "height", "width") if k in call)
        return (
            f"Measured by `dynaccel calibrate` on {prov.get('date', '?')}: model `{prov.get('model', preset.model_id)}`, "
            f"{prov.get('steps', '?')} steps ({prov.get('scheduler', '?')}), {size or 'default size'}, "
            f"guidance {call.get('guidance_scale', '?')}, {prov.get('dtype', '?')}, on {mach.get('device', '?')} "
            f"({mach.get('cpus', '?')} CPUs, {mach.get('threads', '?')} thread(s), torch {mach.get('torch', '?')}). "
            f"Speedup: wall time per generation against full compute in the same process (warm-up, then the median "
            f"of repeats). Quality: PSNR over all frames, worst-frame PSNR and mean SSIM of the decoded output "
            f"against full compute with the same prompt and seed; held-out prompts "
            f"{', '.join(map(repr, prov.get('heldout_prompts', []))) or '?'}, seeds {prov.get('seeds', '?')}; "
            f"threshold chosen as the setting that skips the most work with PSNR >= {prov.get('min_psnr_db', '?')} dB."
        )
    parts = [f"Source: {prov.get('source', 'unknown')}."]
    if prov.get("measured_by"):
        parts.append(f"Measured by {prov['measured_by']}" + (f" on {prov['measured_on']}." if prov.get("measured_on") else "."))
    parts.append("dynaccel did not measure these figures.")
    return " ".join(parts)


def model_card(presets: list[Preset], repo_id: str = "ORG/REPO") -> str:
    """README.md for a preset repo: YAML metadata, then per preset its config, measured speed and quality, and how
    they were measured (from the preset's provenance)."""
    from huggingface_hub import ModelCardData

    strategies = sorted({p.strategy for p in presets})
    hub_models = sorted({p.model_id for p in presets if p.model_id and re.fullmatch(_REPO_ID, p.model_id)})
    data = ModelCardData(
        library_name="dynaccel",
        tags=["dynaccel", "diffusion-acceleration", "training-free", *strategies],
        base_model=hub_models or None,
        dynaccel={
            "schema_version": presets[0].schema_version,
            "presets": [{"name": p.name, "strategy": p.strategy, "architecture": p.architecture,
                         "model_id": p.model_id, **{k: v for k, v in _measured(p).items() if v is not None}}
                        for p in presets],
        },
    )
    lines = [
        "---", data.to_yaml(), "---", "",
        "# dynaccel presets", "",
        "Tuned settings for [dynaccel](https://github.com/dynaccel/dynaccel) (training-free inference acceleration "
        "for diffusion transformers, LLMs and robot policies). Each `NAME.json` is a schema-versioned preset; use "
        "one with",
        "",
        "```python",
        "import dynaccel",
        f"pipe.enable_accel(preset=\"hub:{repo_id}/{presets[0].name}\")",
        "```",
        "",
        f"or fetch them all with `dynaccel presets pull {repo_id}`. Presets are plain JSON, validated when loaded.",
        "",
        "| preset | strategy | model | speedup | PSNR (dB) | worst-frame PSNR | SSIM | computed | "
        "success (full compute) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in presets:
        m = _measured(p)
        success = (f"{_fmt(100 * m['success'], 1, '%')} ({_fmt(100 * (m['full_success'] or 0), 1, '%')})"
                   if isinstance(m["success"], (int, float)) else "-")
        lines.append(f"| `{p.name}` | {p.strategy} | {p.model_id or p.architecture or '-'} | "
                     f"{_fmt(m['speedup'], 2, 'x')} | {_fmt(m['psnr_db'])} | {_fmt(m['psnr_min_db'])} | "
                     f"{_fmt(m['ssim'], 4)} | {m['computed'] or '-'} | {success} |")
    lines.append("")
    for p in presets:
        lines += [f"## `{p.name}`", "", p.description or f"{p.strategy} preset.", "",
                  f"- strategy: `{p.strategy}`; architecture: `{p.architecture or 'any'}`; model: "
                  f"`{p.model_id or 'any'}`",
                  f"- options: `{json.dumps(p.config, sort_keys=True)}`", "",
                  f"How measured: {_how_measured(p)}", ""]
    return "\n".join(lines)
