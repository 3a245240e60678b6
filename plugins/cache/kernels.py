"""Hot-path kernels of the cache strategies: the public functions and their dispatch.

- :func:`l1_sums` / :func:`rel_l1`: the relative L1 change between two activations. TeaCache, FBCache and
  EasyCache compare it against their threshold to decide whether a step can be skipped, so it runs once per
  denoising step on a full hidden state and must not force a host sync.
- :func:`residual_add`: ``base + residual`` in float32, cast back to ``base.dtype``: the fused apply of a cached
  residual when a step is skipped.

Every public function takes ``backend="auto" | "triton" | "torch"`` (see :mod:`dynaccel.kernels.dispatch`).
The pure-torch references are in :mod:`.kernels_reference`, the Triton kernels in :mod:`.kernels_triton`.
Triton is optional: without it this module still imports and every call runs the reference.
"""

import torch

from ...core.errors import KernelBackendError
from ...kernels.dispatch import dispatch
from .kernels_reference import l1_sums_reference, residual_add_reference

try:
    import triton
except Exception:  # ImportError, or a broken install: the references still work
    triton = None

if triton is not None:
    from .kernels_triton import _kernel, _l1_sums_kernel, _l1_sums_triton, _residual_add_kernel, _residual_add_triton
else:

    def _unavailable(name: str):
        def launch(*args, **kwargs):
            raise KernelBackendError(f"{name}: the 'triton' backend needs triton, which does not import here")

        return launch

    _l1_sums_triton, _residual_add_triton = _unavailable("l1_sums"), _unavailable("residual_add")

__all__ = [
    "l1_sums",
    "l1_sums_reference",
    "rel_l1",
    "residual_add",
    "residual_add_reference",
]


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}; they must be equal")
    if a.device != b.device:
        raise ValueError(f"{name}: devices differ: {a.device} vs {b.device}; they must be equal")


def l1_sums(a: torch.Tensor, b: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Per batch row (dim 0): ``[sum|a - b|, sum|b|]`` over all other elements, as a (B, 2) float32 tensor.

    Accumulates in float32 whatever the input dtype. The two sums behind :func:`rel_l1`, which the cache
    strategies use to decide whether a step can be skipped. On Triton the partial sums meet through float32
    atomics, so the last bits can differ from run to run.
    """
    _check_pair("l1_sums", a, b)
    if a.dim() < 1:
        raise ValueError("l1_sums: inputs need at least one dimension (dim 0 is the batch); got a scalar")
    return dispatch(_l1_sums_triton, l1_sums_reference, a, b, backend=backend)


def rel_l1(a: torch.Tensor, b: torch.Tensor, *, eps: float = 1e-12, backend: str = "auto") -> torch.Tensor:
    """Relative L1 change of ``a`` against ``b`` per batch row: ``sum|a - b| / max(sum|b|, eps)``, (B,) float32.

    The skip signal of TeaCache, FBCache and EasyCache. Returns a tensor on the inputs' device (no ``.item()``,
    no host sync), so the caller decides when to read it. ``eps`` keeps an all-zero ``b`` from dividing by zero.
    """
    sums = l1_sums(a, b, backend=backend)
    return sums[:, 0] / sums[:, 1].clamp_min(eps)


def residual_add(base: torch.Tensor, residual: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``base + residual`` computed in float32 and cast to ``base.dtype``.

    Applies a cached residual when a step is skipped, in one pass over memory. ``residual`` has ``base``'s shape
    and is float32 or ``base.dtype``.
    """
    _check_pair("residual_add", base, residual)
    return dispatch(_residual_add_triton, residual_add_reference, base, residual, backend=backend)
