"""One copy of dynaccel per test process, whatever the checkout's folder is called."""

import shutil
import subprocess
import sys
from pathlib import Path

import dynaccel

ROOT = Path(__file__).resolve().parents[1]


def test_no_second_copy_of_the_package_is_loaded():
    # the repo root is the package: pytest once imported it a second time under the folder's name (two registries,
    # two _ACTIVE maps, two import hooks); only `dynaccel` may map to the root's __init__.py
    # (the checkout under test, and the one `import dynaccel` resolves to: the same unless run from a copy)
    inits = {(ROOT / "__init__.py").resolve(), Path(dynaccel.__file__).resolve()}
    names = sorted(
        name for name, mod in list(sys.modules.items())
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() in inits
    )
    assert names == ["dynaccel"]
    registries = sorted(n for n, m in list(sys.modules.items()) if n.endswith("core.registry") and m is not None)
    assert registries == ["dynaccel.core.registry"]


def test_suite_collects_in_a_folder_whose_name_is_no_identifier(tmp_path):
    # a ZIP download unpacks as dynaccel-main; the suite must run from there too
    copy = tmp_path / "dynaccel-main"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "zoo"))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/core/test_config.py",
         "tests/test_one_copy.py::test_no_second_copy_of_the_package_is_loaded"],
        cwd=copy, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "error" not in out.stdout.splitlines()[-1]
