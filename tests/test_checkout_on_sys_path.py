"""Running Python from a checkout (repo root on sys.path) must not shadow other distributions' packages."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_transformers_imports_with_the_repo_root_as_working_directory():
    # transformers probes for the Hugging Face `kernels` distribution by import name; our kernels/ folder must not
    # pass for it (it is a namespace package without __init__.py)
    code = "import transformers.utils.import_utils as u, diffusers.loaders; print(u.is_kernels_available())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("False")


def test_dynaccel_kernels_is_importable_as_a_subpackage():
    import dynaccel.kernels.dispatch as dispatch

    assert dispatch.resolve_backend("torch", ()) == "torch"
