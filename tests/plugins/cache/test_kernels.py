import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton or the kernels are imported: Triton kernels run on the CPU

import importlib.util  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dynaccel.core.errors import KernelBackendError  # noqa: E402
from dynaccel.kernels.dispatch import resolve_backend  # noqa: E402
from dynaccel.kernels.testing import assert_close_for, random_tensor  # noqa: E402
from dynaccel.plugins.cache import kernels  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

# (shape, layout): "c" contiguous, "t" a transposed view of the last two dims (non-contiguous)
SHAPES = [
    ((1, 7), "c"),
    ((3, 1000), "c"),
    ((2, 5, 33, 17), "c"),
    ((4, 4099), "c"),  # several programs (atomics) per row and a masked tail
    ((2, 20000), "c"),  # more blocks than programs per row: each program loops, the last over masked blocks
    ((3, 1000), "t"),
    ((2, 5, 33, 17), "t"),
]


def _shape_id(shape, layout):
    dims = f"N{shape[1]}" if len(shape) == 2 else "x".join(map(str, shape[1:]))
    return f"B{shape[0]}-{dims}" + ("-T" if layout == "t" else "")


CASES = [
    pytest.param(shape, layout, dtype, id=f"{_shape_id(shape, layout)}-{name}")
    for shape, layout in SHAPES
    for name, dtype in DTYPES.items()
]


def _seed(*parts):
    # a different, reproducible seed for every case and every tensor in it
    return zlib.crc32("/".join(map(str, parts)).encode())


def _make(shape, layout, dtype, seed):
    if layout == "c":
        return random_tensor(shape, dtype, seed)
    swapped = (*shape[:-2], shape[-1], shape[-2])
    t = random_tensor(swapped, dtype, seed).transpose(-1, -2)
    assert t.shape == shape and not t.is_contiguous()
    return t


@pytest.fixture
def needs_triton():
    pytest.importorskip("triton")


def _skip_without_triton(backend):
    if backend == "triton":
        pytest.importorskip("triton")


@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv("DYNACCEL_KERNEL_BACKEND", raising=False)


# ------------------------------------------------------------------------------------------- Triton vs torch


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize(("shape", "layout", "dtype"), CASES)
def test_l1_sums_triton_matches_reference(shape, layout, dtype):
    a = _make(shape, layout, dtype, _seed("l1", shape, layout, dtype, "a"))
    b = _make(shape, layout, dtype, _seed("l1", shape, layout, dtype, "b"))
    got = kernels.l1_sums(a, b, backend="triton")
    assert got.dtype == torch.float32 and got.shape == (shape[0], 2)
    assert_close_for(dtype, got, kernels.l1_sums_reference(a, b))


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize(("shape", "layout", "dtype"), CASES)
def test_rel_l1_triton_matches_reference_on_small_changes(shape, layout, dtype):
    # the regime the cache strategies see: consecutive steps that differ by a few percent
    b = _make(shape, layout, dtype, _seed("rel", shape, layout, dtype, "b"))
    noise = _make(shape, layout, torch.float32, _seed("rel", shape, layout, dtype, "noise"))
    a = (b.float() + 0.03 * noise).to(dtype)
    got = kernels.rel_l1(a, b, backend="triton")
    want = kernels.rel_l1(a, b, backend="torch")
    assert got.dtype == torch.float32 and got.shape == (shape[0],)
    assert_close_for(dtype, got, want)
    assert (got > 0).all() and (got < 0.2).all()


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("residual_dtype", ["same", "f32"])
@pytest.mark.parametrize(("shape", "layout", "dtype"), CASES)
def test_residual_add_triton_matches_reference(shape, layout, dtype, residual_dtype):
    rdt = dtype if residual_dtype == "same" else torch.float32
    base = _make(shape, layout, dtype, _seed("add", shape, layout, dtype, residual_dtype, "base"))
    res = _make(shape, layout, rdt, _seed("add", shape, layout, dtype, residual_dtype, "res"))
    got = kernels.residual_add(base, res, backend="triton")
    want = kernels.residual_add_reference(base, res)
    assert got.dtype == base.dtype and got.shape == base.shape and got.device == base.device
    assert_close_for(dtype, got, want)


@pytest.mark.usefixtures("needs_triton")
def test_triton_handles_empty_rows():
    a = torch.empty(2, 0)
    assert torch.equal(kernels.l1_sums(a, a, backend="triton"), torch.zeros(2, 2))
    assert torch.equal(kernels.rel_l1(a, a, backend="triton"), torch.zeros(2))
    assert kernels.residual_add(a, a, backend="triton").shape == (2, 0)


# --------------------------------------------------------------------------------------------------- rel_l1


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_rel_l1_identical_inputs_is_zero(backend, dtype):
    _skip_without_triton(backend)
    a = random_tensor((3, 513), dtype, _seed("same", backend, dtype))
    assert torch.equal(kernels.rel_l1(a, a.clone(), backend=backend), torch.zeros(3))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_rel_l1_zero_reference_is_finite(backend):
    _skip_without_triton(backend)
    a = random_tensor((2, 300), torch.float32, _seed("zero-b", backend))
    zero = torch.zeros_like(a)
    out = kernels.rel_l1(a, zero, backend=backend)
    assert torch.isfinite(out).all() and (out > 0).all()
    both_zero = kernels.rel_l1(zero, zero, backend=backend)
    assert torch.equal(both_zero, torch.zeros(2))  # 0 / eps, not NaN


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
@pytest.mark.usefixtures("no_backend_env")
def test_rel_l1_returns_float32_tensor_on_input_device(backend):
    _skip_without_triton(backend)
    a = random_tensor((2, 64), torch.bfloat16, _seed("device", backend))
    out = kernels.rel_l1(a, a * 0.5, backend=backend)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.device == a.device and out.shape == (2,)


@pytest.mark.usefixtures("no_backend_env")
def test_rel_l1_needs_no_host_sync():
    # meta tensors hold no data: any .item() / .tolist() / bool() on the way would raise
    a = torch.empty(3, 4, 5, device="meta", dtype=torch.bfloat16)
    out = kernels.rel_l1(a, a)
    assert out.device.type == "meta" and out.shape == (3,) and out.dtype == torch.float32


# ----------------------------------------------------------------------------------------- backend choice


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.usefixtures("no_backend_env")
def test_torch_and_auto_on_cpu_are_the_reference_exactly(backend, dtype):
    a = _make((2, 5, 33, 17), "t", dtype, _seed("exact", backend, dtype, "a"))
    b = _make((2, 5, 33, 17), "t", dtype, _seed("exact", backend, dtype, "b"))
    sums = kernels.l1_sums_reference(a, b)
    assert torch.equal(kernels.l1_sums(a, b, backend=backend), sums)
    assert torch.equal(kernels.rel_l1(a, b, backend=backend), sums[:, 0] / sums[:, 1].clamp_min(1e-12))
    assert torch.equal(kernels.residual_add(a, b, backend=backend), kernels.residual_add_reference(a, b))


@pytest.mark.parametrize("call", ["l1_sums", "rel_l1", "residual_add"])
def test_unknown_backend_is_refused(call):
    a = torch.ones(2, 3)
    with pytest.raises(KernelBackendError) as info:
        getattr(kernels, call)(a, a, backend="bogus")
    msg = str(info.value)
    assert "'bogus'" in msg and all(name in msg for name in ("auto", "triton", "torch"))


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(KernelBackendError, match="triton"):
        resolve_backend("triton", (torch.ones(2, 3),))


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        kernels.l1_sums(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="shapes differ"):
        kernels.residual_add(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="at least one dimension"):
        kernels.l1_sums(torch.tensor(1.0), torch.tensor(2.0))


@pytest.mark.usefixtures("needs_triton")
def test_kernels_follow_triton_interpret_at_launch(monkeypatch):
    # compiled at first launch, not at import: the interpreter works whatever was imported first
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(kernels._kernel(kernels._l1_sums_kernel), InterpretedFunction)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not isinstance(kernels._kernel(kernels._l1_sums_kernel), InterpretedFunction)


def test_module_imports_and_runs_without_triton(monkeypatch):
    # a fresh copy of the module, loaded while `import triton` fails
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("dynaccel.plugins.cache._kernels_no_triton", kernels.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.triton is None
    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    assert torch.equal(mod.l1_sums(a, b, backend="torch"), torch.tensor([[3.0, 0.0], [3.0, 0.0]]))
    with pytest.raises(KernelBackendError, match="triton"):
        mod._l1_sums_triton(a, b)
