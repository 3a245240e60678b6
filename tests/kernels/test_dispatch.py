"""Tests of dynaccel.kernels.dispatch alone: which backend runs, and the errors when a choice cannot."""

import importlib
import types

import pytest
import torch

from dynaccel.core.errors import KernelBackendError
from dynaccel.kernels.dispatch import dispatch, resolve_backend, triton_available

# the module itself (the package's attribute `dispatch` is the function of that name)
dispatch_mod = importlib.import_module("dynaccel.kernels.dispatch")

CPU = (torch.ones(2),)
CUDA = (types.SimpleNamespace(device=torch.device("cuda", 0)),)  # resolve_backend only reads .device


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("DYNACCEL_KERNEL_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def with_triton(monkeypatch):
    monkeypatch.setattr(dispatch_mod, "_triton_import_error", lambda: None)


@pytest.fixture
def without_triton(monkeypatch):
    monkeypatch.setattr(dispatch_mod, "_triton_import_error", lambda: "ImportError: No module named 'triton'")


def _fns():
    calls = []

    def triton_fn(*args, **kwargs):
        calls.append(("triton", args, kwargs))
        return "triton"

    def torch_fn(*args, **kwargs):
        calls.append(("torch", args, kwargs))
        return "torch"

    return triton_fn, torch_fn, calls


def test_auto_on_cpu_uses_torch():
    assert resolve_backend("auto", CPU) == "torch"


def test_auto_on_cpu_ignores_the_interpreter(monkeypatch, with_triton):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", CPU) == "torch"  # only an explicit "triton" runs the interpreter


def test_auto_on_cuda_uses_triton_when_it_imports(with_triton):
    assert resolve_backend("auto", CUDA) == "triton"
    assert resolve_backend("auto", CUDA + CPU) == "torch"  # any tensor off CUDA: the reference


def test_auto_on_cuda_without_triton_falls_back_quietly(without_triton):
    assert resolve_backend("auto", CUDA) == "torch"


@pytest.mark.parametrize("tensors", [CPU, CUDA], ids=["cpu", "cuda"])
def test_explicit_torch_always_torch(tensors, with_triton):
    assert resolve_backend("torch", tensors) == "torch"


def test_explicit_triton_on_cpu_without_interpreter_is_refused(with_triton):
    with pytest.raises(KernelBackendError) as info:
        resolve_backend("triton", CPU)
    msg = str(info.value)
    assert "'triton'" in msg and "'cpu'" in msg and "not CUDA" in msg and "TRITON_INTERPRET=1" in msg


def test_explicit_triton_on_cpu_with_interpreter(monkeypatch, with_triton):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", CPU) == "triton"


def test_explicit_triton_without_triton_is_refused(without_triton):
    with pytest.raises(KernelBackendError, match=r"triton does not import \(ImportError"):
        resolve_backend("triton", CUDA)


def test_explicit_triton_on_cuda(with_triton):
    assert resolve_backend("triton", CUDA) == "triton"


def test_real_triton_on_cpu_is_refused_or_missing():
    # whatever is installed here: an explicit choice that cannot run always raises, never falls back
    with pytest.raises(KernelBackendError, match="triton"):
        resolve_backend("triton", CPU)
    assert isinstance(triton_available(), bool)


def test_unknown_backend_names_value_and_accepted():
    with pytest.raises(KernelBackendError) as info:
        resolve_backend("cuda", CPU)
    assert str(info.value) == "unknown kernel backend 'cuda'; accepted: auto, triton, torch"


@pytest.mark.parametrize(("env", "tensors", "expected"), [
    ("torch", CUDA, "torch"),
    ("triton", CUDA, "triton"),
    ("auto", CUDA, "triton"),
    ("", CUDA, "triton"),  # empty means auto
    ("auto", CPU, "torch"),
], ids=["torch-cuda", "triton-cuda", "auto-cuda", "empty-cuda", "auto-cpu"])
def test_env_sets_the_default(monkeypatch, with_triton, env, tensors, expected):
    monkeypatch.setenv("DYNACCEL_KERNEL_BACKEND", env)
    assert resolve_backend("auto", tensors) == expected


def test_env_triton_is_as_strict_as_explicit_triton(monkeypatch, with_triton):
    monkeypatch.setenv("DYNACCEL_KERNEL_BACKEND", "triton")
    with pytest.raises(KernelBackendError, match="not CUDA"):
        resolve_backend("auto", CPU)


def test_env_unknown_value_is_refused(monkeypatch):
    monkeypatch.setenv("DYNACCEL_KERNEL_BACKEND", "fast")
    with pytest.raises(KernelBackendError, match="unknown kernel backend 'fast'"):
        resolve_backend("auto", CPU)


def test_explicit_backend_overrides_env(monkeypatch, with_triton):
    monkeypatch.setenv("DYNACCEL_KERNEL_BACKEND", "triton")
    assert resolve_backend("torch", CPU) == "torch"


def test_dispatch_calls_the_chosen_function_with_args_and_kwargs():
    triton_fn, torch_fn, calls = _fns()
    x = torch.ones(3)
    assert dispatch(triton_fn, torch_fn, x, x, scale=2.0) == "torch"
    (name, args, kwargs), = calls
    assert name == "torch" and args[0] is x and args[1] is x and kwargs == {"scale": 2.0}


def test_dispatch_routes_to_triton(monkeypatch, with_triton):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton_fn, torch_fn, calls = _fns()
    assert dispatch(triton_fn, torch_fn, torch.ones(3), backend="triton") == "triton"
    assert [c[0] for c in calls] == ["triton"]


def test_dispatch_refuses_before_calling_anything():
    triton_fn, torch_fn, calls = _fns()
    with pytest.raises(KernelBackendError):
        dispatch(triton_fn, torch_fn, torch.ones(3), backend="bogus")
    assert calls == []
