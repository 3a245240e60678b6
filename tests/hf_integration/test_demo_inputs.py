"""The demo as a running app: every API input is checked against the ranges the page offers (gradio_client, the
way API users drive it), a bad one is a clear error and one log line; the media folder goes on SIGTERM too; the
demo uses bench's public names only."""

import ast
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stub_strategy import wait_for_http

pytest.importorskip("gradio")

from dynaccel.hf_integration import demo  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    app = demo.build_app("tiny-wan", warmup=False)
    app.queue(default_concurrency_limit=2)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


@pytest.mark.parametrize("seed,steps,fragment", [
    pytest.param(0, 0, "option 'steps': got 0 (below the minimum); accepted: int with 2 <= steps <= 100", id="steps-0"),
    pytest.param(0, -3, "option 'steps': got -3 (below the minimum)", id="steps-negative"),
    pytest.param(0, 5000, "option 'steps': got 5000 (above the maximum); accepted: int with 2 <= steps <= 100", id="steps-huge"),
    pytest.param(0, 2.5, "option 'steps': got 2.5 (type float)", id="steps-fraction"),
    pytest.param(-1, 4, "option 'seed': got -1 (below the minimum); accepted: int with 0 <= seed <= 4294967295", id="seed-negative"),
])
def test_api_refuses_out_of_range_inputs_with_a_clear_error_and_one_log_line(client, caplog, capfd, seed, steps, fragment):
    caplog.set_level(logging.WARNING, logger="dynaccel.demo")
    with pytest.raises(Exception) as err:
        client.predict("tiny-wan", "a red circle", seed, steps, "teacache", "{}", api_name="/compare")
    assert fragment in str(err.value)
    refused = [r for r in caplog.records if r.name == "dynaccel.demo"]
    assert len(refused) == 1 and fragment in refused[0].getMessage() and "\n" not in refused[0].getMessage()
    assert "Traceback" not in capfd.readouterr().err


def test_api_refuses_a_model_that_is_no_name(client):
    with pytest.raises(Exception, match="model '': accepted: a zoo model name or the path of a local"):
        client.predict("", "x", 0, 4, "teacache", "{}", api_name="/compare")


def test_api_refuses_an_option_outside_the_schema_and_a_long_sweep(client):
    with pytest.raises(Exception, match=r"option 'threshold': got 9\.0 \(above the maximum\)"):
        client.predict("tiny-wan", "x", 0, 4, "teacache", json.dumps({"threshold": 9.0}), api_name="/compare")
    with pytest.raises(Exception, match="accepted: 1 to 12 comma-separated numbers"):
        client.predict("tiny-wan", "x", 0, 4, "teacache", ", ".join(["0.1"] * 13), api_name="/sweep")


def test_api_accepts_the_edges_of_the_ranges(client):
    out = client.predict("tiny-wan", "a red circle", 4294967295, 2, "teacache", "{}", api_name="/compare")
    assert out["steps"] == 2 and out["seed"] == 4294967295 and out["computed"].endswith("/4")


def test_page_controls_offer_the_same_ranges_as_the_checks():
    app = demo.build_app("tiny-wan", warmup=False)
    by_id = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    steps, seed = demo.RequestInputs.field_spec("steps"), demo.RequestInputs.field_spec("seed")
    assert (by_id["steps"].minimum, by_id["steps"].maximum) == (steps.min, steps.max)
    assert (by_id["seed"].minimum, by_id["seed"].maximum) == (seed.min, seed.max)


def test_a_slider_offers_one_step_inside_an_exclusive_bound():
    import gradio as gr

    from dynaccel.core.config import FieldSpec

    spec = FieldSpec("keep_ratio", "float", 0.5, "share kept", 0.0, 1.0, 0.05, min_exclusive=True)
    slider = demo._control(gr, "x", spec)
    assert (slider.minimum, slider.maximum, slider.step) == (0.05, 1.0, 0.05)


def test_the_demo_uses_no_private_bench_helper():
    tree = ast.parse((REPO / "hf_integration" / "demo.py").read_text())
    private = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                      and n.value.id == "bench" and n.attr.startswith("_")})
    assert private == []


@pytest.mark.slow  # subprocesses or a real run: out of the inner loop; CI runs it
def test_the_media_folder_goes_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dynaccel.core.cli", "demo", "--port", str(port), "--threads",
                                 "1", "--no-warmup"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", proc, log)
        folders = list(tmp_path.glob("dynaccel-demo-*"))
        assert len(folders) == 1 and folders[0].is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM  # ended as by the default action
        assert not folders[0].exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_sigterm_handler_hands_over_and_is_restored(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        folder = tmp_path / "media"
        folder.mkdir()
        demo.remove_on_sigterm(folder)
        assert signal.getsignal(signal.SIGTERM) is not previous
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert not folder.exists() and seen == [signal.SIGTERM]
        restore = demo.remove_on_sigterm(tmp_path / "other")
        restore()
        assert signal.getsignal(signal.SIGTERM) is not None and signal.getsignal(signal.SIGTERM).__name__ == "<lambda>"
    finally:
        signal.signal(signal.SIGTERM, previous)
