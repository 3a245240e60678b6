"""A strategy that changes nothing, for tests of the surfaces that list or drive any registered strategy."""

from __future__ import annotations

import dynaccel
from dynaccel import Handle, Strategy


class StubHandle(Handle):
    def _remove(self):
        pass

    def _reset(self, num_steps):
        pass

    @property
    def stats(self):
        return {"passes": 1, "computed": 1}


def stub_plugin(name: str, family: str, config: type) -> object:
    """A plugin registering strategy ``name`` (of ``family``, options ``config``) whose apply installs nothing."""

    class Stub(Strategy):
        """Test strategy (no paper): changes nothing."""

        needs_adapter = False
        summary = "changes nothing"

        def apply(self, target, cfg, adapter, run_probe):
            return StubHandle(self.name, self.family, target, cfg)

    Stub.name, Stub.family, Stub.Config = name, family, config

    class Plugin:
        @dynaccel.hookimpl
        def register_strategies(self, register):
            register(Stub)

    return Plugin()


def wait_for_http(url: str, proc, log, timeout: float = 180) -> None:
    """Wait until ``url`` answers 200; fail with the end of ``log`` when ``proc`` exits or time runs out."""
    import time
    import urllib.request

    import pytest

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
