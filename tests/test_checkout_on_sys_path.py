"""Running Python from a checkout (repo root on sys.path) must not shadow other distributions' packages."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what transformers sees of the Hugging Face `kernels` distribution (a dependency of transformers 5.25), and where
# `import kernels` leads
_PROBE = (
    "import importlib.util as iu, transformers.utils.import_utils as u, diffusers.loaders; "
    "spec = iu.find_spec('kernels'); "
    "print(u.is_kernels_available(), spec.origin if spec else None)"
)


def _probe(cwd: Path) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    available, origin = out.stdout.strip().splitlines()[-1].split(" ", 1)
    return available, origin


@pytest.mark.slow  # subprocesses or a real run: out of the inner loop; CI runs it
def test_transformers_imports_with_the_repo_root_as_working_directory(tmp_path):
    # our kernels/ folder is a namespace package without __init__.py: it must never pass for the `kernels`
    # distribution, whether that is installed (then the installed one wins) or not (then it is not found)
    from_checkout = _probe(ROOT)
    elsewhere = _probe(tmp_path)
    assert from_checkout == elsewhere
    assert not from_checkout[1].startswith(str(ROOT / "kernels"))


def test_dynaccel_kernels_is_importable_as_a_subpackage():
    import dynaccel.kernels.dispatch as dispatch

    assert dispatch.resolve_backend("torch", ()) == "torch"
