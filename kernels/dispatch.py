"""Choose between a Triton kernel and its pure-torch reference.

- ``backend="auto"`` (default): Triton when the tensors are on CUDA and Triton imports; otherwise the reference.
  Falls back quietly.
- ``backend="triton"``: Triton or a :class:`KernelBackendError` saying why it cannot run. CPU tensors run on
  Triton's interpreter when ``TRITON_INTERPRET=1`` was set before the kernel module was imported (the tests do).
- ``backend="torch"``: always the reference.

The environment variable ``DYNACCEL_KERNEL_BACKEND`` sets the default for ``auto`` calls (``auto``, ``triton``
or ``torch``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Literal

import torch

from ..core.errors import KernelBackendError

Backend = Literal["auto", "triton", "torch"]
_BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_available() -> bool:
    return _triton_import_error() is None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _why_not_triton(tensors: tuple[torch.Tensor, ...], allow_interpreter: bool) -> str | None:
    err = _triton_import_error()
    if err is not None:
        return f"triton does not import ({err})"
    if allow_interpreter and interpreter_enabled():
        return None
    off = [t.device.type for t in tensors if t.device.type != "cuda"]
    if off:
        return f"tensors are on {off[0]!r}, not CUDA (set TRITON_INTERPRET=1 to run Triton on the CPU interpreter)"
    return None


def resolve_backend(backend: str, tensors: tuple[torch.Tensor, ...]) -> str:
    """Return "triton" or "torch" for these tensors, or raise when an explicit choice cannot run."""
    if backend == "auto":
        backend = os.environ.get("DYNACCEL_KERNEL_BACKEND", "auto") or "auto"
    if backend not in _BACKENDS:
        raise KernelBackendError(f"unknown kernel backend {backend!r}; accepted: {', '.join(_BACKENDS)}")
    if backend == "torch":
        return "torch"
    why = _why_not_triton(tensors, allow_interpreter=backend == "triton")
    if backend == "triton":
        if why is not None:
            raise KernelBackendError(f"kernel backend 'triton' requested but it cannot run: {why}")
        return "triton"
    return "torch" if why is not None else "triton"


def dispatch(
    triton_fn: Callable[..., Any],
    torch_fn: Callable[..., Any],
    *tensors: torch.Tensor,
    backend: str = "auto",
    **kwargs: Any,
) -> Any:
    """Call ``triton_fn(*tensors, **kwargs)`` or ``torch_fn(...)`` according to :func:`resolve_backend`."""
    chosen = resolve_backend(backend, tensors)
    fn = triton_fn if chosen == "triton" else torch_fn
    return fn(*tensors, **kwargs)
