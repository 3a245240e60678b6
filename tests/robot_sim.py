"""Shared by the tests that drive the robot tasks' simulator (tests/zoo): skip with the reason when Meta-World or
Debian's libosmesa6 is missing, except under CI (``CI`` set), where .ci/run installs both and a missing one fails."""

import importlib.util
import os

import pytest


def require_simulator() -> None:
    from dynaccel.zoo import robot_tasks as rt

    missing = None
    if importlib.util.find_spec("metaworld") is None:
        missing = "Meta-World is not installed (pip install -c constraints.txt -e '.[vla]')"
    elif os.environ.get("MUJOCO_GL") == "osmesa" and not rt.osmesa_available():
        missing = "OSMesa is missing for headless rendering (apt-get install -y libosmesa6)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; .ci/run installs it", pytrace=False)
        pytest.skip(missing)
