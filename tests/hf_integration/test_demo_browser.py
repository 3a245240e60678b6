"""End to end: ``dynaccel demo`` runs as a command; headless Chromium (Debian's, driven by Playwright) picks a strategy,
generates, and sees both outputs and the speedup; two API clients at once get their own results.

Needs /usr/bin/chromium (``.ci/run`` installs Debian's package). Set ``DYNACCEL_SCREENSHOTS=docs`` to write the
screenshots shown in the README (``docs/demo-compare.png``, ``docs/demo-sweep.png``).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from stub_strategy import wait_for_http

pytestmark = pytest.mark.slow  # a real browser and server: out of the inner loop; CI runs it
pytest.importorskip("gradio")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium package", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``dynaccel demo`` in its own process, as a user starts it."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dynaccel.core.cli", "demo", "--port", str(port),
                                 "--threads", "1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, proc, log)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_command_serves_on_loopback_only(server):
    url, log = server
    text = log.read_text()
    assert f"dynaccel demo: {url.rstrip('/')} (this machine only; no public link)" in text
    assert "gradio.live" not in text


def test_browser_picks_a_strategy_generates_and_sees_both_outputs(server, tmp_path):
    url, _ = server
    requests: list[str] = []
    shots = os.environ.get("DYNACCEL_SCREENSHOTS")
    with playwright.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path, prefix="profile-"), executable_path=CHROMIUM, headless=True,
            args=BROWSER_ARGS, viewport={"width": 1280, "height": 1000})
        try:
            page = ctx.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="networkidle", timeout=60000)
            page.get_by_label("teacache", exact=True).check()
            threshold = page.locator("#opt-teacache-threshold input[type=number]")
            threshold.fill("0.4")
            threshold.press("Enter")
            steps = page.locator("#steps input[type=number]")
            steps.fill("8")
            steps.press("Enter")
            page.locator("#generate").click()
            page.wait_for_selector("#results :text('speedup:')", timeout=180000)
            page.wait_for_selector("#baseline img", timeout=30000)
            page.wait_for_selector("#accelerated img", timeout=30000)
            results = page.locator("#results").inner_text()
            for side in ("#baseline img", "#accelerated img"):
                src = page.locator(side).get_attribute("src")
                assert src and src.split("?")[0].endswith(".gif"), src
                ok = page.evaluate("(s) => { const i = document.querySelector(s); return i.complete && "
                                   "i.naturalWidth > 0 }", side)
                assert ok, f"{side} did not load"
            page.screenshot(path=str(tmp_path / "demo-compare.png"), full_page=True)

            page.get_by_role("tab", name="Sweep").click()
            page.locator("#sweep-values textarea, #sweep-values input").first.fill("0.1, 0.4")
            page.locator("#sweep-run").click()
            page.wait_for_selector("#sweep-table :text('teacache:threshold=0.4')", timeout=180000)
            page.wait_for_selector("#sweep-plot img, #sweep-plot svg, #sweep-plot canvas", timeout=30000)
            page.screenshot(path=str(tmp_path / "demo-sweep.png"), full_page=True)
        finally:
            ctx.close()
    assert "speedup:" in results and "latency" in results and "transformer passes computed" in results
    computed = next(line for line in results.splitlines() if line.startswith("transformer passes computed"))
    done, total = map(int, computed.split()[-1].split("/"))
    assert total == 16 and done < total  # teacache skipped some of the 8 steps x 2 CFG branches
    outside = sorted({u for u in requests if not u.startswith((url, "data:", "blob:"))})
    assert outside == [], f"the page reached outside 127.0.0.1: {outside[:10]}"
    assert (tmp_path / "demo-compare.png").stat().st_size > 10000
    if shots:
        for name in ("demo-compare.png", "demo-sweep.png"):
            shutil.copyfile(tmp_path / name, Path(shots) / name)


def test_two_api_clients_at_once_get_their_own_results(server):
    from gradio_client import Client

    from dynaccel.hf_integration import demo

    url, _ = server
    jobs = {"a": ("tiny-wan", "a red circle moving right fast", 0, 4, "teacache", {"threshold": 0.5}),
            "b": ("tiny-wan", "a yellow circle moving down slow", 1, 4, "fbcache", {"threshold": 0.3})}
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def session(key):
        try:
            client = Client(url, verbose=False)
            model, prompt, seed, steps, strategy, options = jobs[key]
            barrier.wait()
            results[key] = client.predict(model, prompt, seed, steps, strategy, json.dumps(options),
                                          api_name="/compare")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=session, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    # each equals what that session alone gets (computed here, in this process, from the same zoo model)
    model = demo.get_model("tiny-wan")
    for key, (_, prompt, seed, steps, strategy, options) in jobs.items():
        alone = demo.compare(model, prompt, seed, steps, strategy, options, warmup=False)
        got = results[key]
        assert (got["strategy"], got["prompt"], got["computed"]) == (strategy, prompt, alone.computed)
        assert got["psnr_db"] == alone.metrics()["psnr_db"]
        media = demo.write_media(alone.accelerated, Path(tempfile.mkdtemp()), strategy)
        assert Path(got["accelerated_file"]).read_bytes() == media.read_bytes()
    assert results["a"]["accelerated_file"] != results["b"]["accelerated_file"]


def test_bad_api_input_is_a_clear_error(server):
    from gradio_client import Client

    url, _ = server
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=r"option 'threshold': got 9.0 \(above the maximum\)"):
        client.predict("tiny-wan", "x", 0, 4, "teacache", json.dumps({"threshold": 9.0}), api_name="/compare")
    with pytest.raises(Exception, match="not a zoo model"):
        client.predict("/no/such/folder", "x", 0, 4, "teacache", "{}", api_name="/compare")
