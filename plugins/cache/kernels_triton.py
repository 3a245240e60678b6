"""Triton kernels of the cache strategies (see :mod:`.kernels` for the public functions and the dispatch).

Imports without Triton (the kernels are then not defined and the launchers raise :class:`KernelBackendError`).
The launch settings are module constants here, so ``scripts/gpu_check_cache_kernels.py --sweep`` can try others.
"""

import contextlib
import functools
from typing import Any, Callable

import torch

from ...core.errors import KernelBackendError
from ...kernels.dispatch import interpreter_enabled

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: the references still work
    triton = None
    tl = None

# Launch settings (module constants so scripts/gpu_check_cache_kernels.py --sweep can try others).
_L1_BLOCK = 2048  # elements one l1_sums program loads per loop iteration
_L1_WARPS = 8
_L1_PROGRAMS_PER_SM = 8  # l1_sums programs launched per streaming multiprocessor, all rows together
_ADD_BLOCK = 1024  # elements per residual_add program
_ADD_WARPS = 4
_INTERPRETER_CHUNKS_PER_ROW = 4  # on Triton's CPU interpreter: few programs, but still several atomics per row


if triton is not None:
    # Plain functions, turned into Triton kernels by _kernel() at their first launch rather than by a
    # decorator at import: triton.jit picks the CPU interpreter or the GPU compiler from TRITON_INTERPRET when
    # it runs, so deciding at launch keeps the interpreter usable even when this module was imported first.

    def _l1_sums_kernel(a_ptr, b_ptr, out_ptr, n_per_row, iters, BLOCK: tl.constexpr):
        # Program (row, chunk) reduces `iters` consecutive blocks of one row, then adds its two partial sums
        # into out[row] with atomics.
        row = tl.program_id(0)
        chunk = tl.program_id(1)
        row_start = row.to(tl.int64) * n_per_row
        chunk_start = chunk.to(tl.int64) * iters * BLOCK
        lanes = tl.arange(0, BLOCK)
        acc_diff = tl.zeros([BLOCK], dtype=tl.float32)
        acc_ref = tl.zeros([BLOCK], dtype=tl.float32)
        for it in range(0, iters):
            offs = chunk_start + it * BLOCK + lanes
            mask = offs < n_per_row
            x = tl.load(a_ptr + row_start + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(b_ptr + row_start + offs, mask=mask, other=0.0).to(tl.float32)
            acc_diff += tl.abs(x - y)
            acc_ref += tl.abs(y)
        tl.atomic_add(out_ptr + row * 2, tl.sum(acc_diff, axis=0))
        tl.atomic_add(out_ptr + row * 2 + 1, tl.sum(acc_ref, axis=0))

    def _residual_add_kernel(base_ptr, res_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (x + r).to(out_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def _jit(fn: Callable[..., Any], interpret: bool) -> Any:
    return triton.jit(fn)  # interpret is part of the cache key only: triton.jit reads the environment itself


def _kernel(fn: Callable[..., Any]) -> Any:
    return _jit(fn, interpreter_enabled())


def _require_triton(name: str) -> None:
    if triton is None:  # dispatch() never routes here then; a direct call gets a clear error
        raise KernelBackendError(f"{name}: the 'triton' backend needs triton, which does not import here")


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device_ctx(t: torch.Tensor) -> Any:
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _l1_sums_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _require_triton("l1_sums")
    batch = a.shape[0]
    a2 = a.reshape(batch, -1).contiguous()
    b2 = b.reshape(batch, -1).contiguous()
    n = a2.shape[1]
    out = torch.zeros((batch, 2), dtype=torch.float32, device=a.device)
    if batch == 0 or n == 0:
        return out
    blocks = triton.cdiv(n, _L1_BLOCK)
    if a.device.type == "cuda":
        # enough programs to fill the GPU a few times over, never more than a row has blocks
        index = a.device.index if a.device.index is not None else torch.cuda.current_device()
        wanted = max(1, triton.cdiv(_L1_PROGRAMS_PER_SM * _sm_count(index), batch))
    else:
        wanted = _INTERPRETER_CHUNKS_PER_ROW
    chunks = min(blocks, wanted, 65535)  # grid axis 1 is limited to 65535
    iters = triton.cdiv(blocks, chunks)
    chunks = triton.cdiv(blocks, iters)
    with _device_ctx(a):
        _kernel(_l1_sums_kernel)[(batch, chunks)](a2, b2, out, n, iters, BLOCK=_L1_BLOCK, num_warps=_L1_WARPS)
    return out


def _residual_add_triton(base: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    _require_triton("residual_add")
    x = base.contiguous()
    r = residual.contiguous()
    out = torch.empty(base.shape, dtype=base.dtype, device=base.device)
    n = x.numel()
    if n == 0:
        return out
    with _device_ctx(base):
        grid = (triton.cdiv(n, _ADD_BLOCK),)
        _kernel(_residual_add_kernel)[grid](x, r, out, n, BLOCK=_ADD_BLOCK, num_warps=_ADD_WARPS)
    return out
