"""Test set-up: Triton's CPU interpreter for the kernel tests (must be set before any kernel module is imported),
one CPU thread (2-core machines), and a fresh plugin registry around tests that change plugins."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def fresh_registry(monkeypatch):
    """Rebuild the plugin registry for one test and restore the default one afterwards."""
    from dynaccel.core import registry

    yield registry
    for var in ("DYNACCEL_PLUGINS", "DYNACCEL_BLOCK_PLUGINS", "DYNACCEL_NO_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    registry.reload()
