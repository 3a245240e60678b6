"""Helpers for testing a Triton kernel against its pure-torch reference (used by tests and GPU check scripts).

``TOLERANCES`` is keyed by the dtype of the kernel's *inputs*: a kernel that reads bfloat16 and writes float32
still gets bfloat16's tolerance, since its reference may round differently on the way in or out.
"""

from __future__ import annotations

from typing import Sequence

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    # float32 sums of a few thousand terms in another order differ by about 1e-6 relative
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    # one bfloat16 ulp is 2**-8 relative (0.4 %); allow rounding to land on either side
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    # one float16 ulp is 2**-11 relative (0.05 %)
    torch.float16: dict(rtol=2e-3, atol=1e-3),
}


#: attention kernels (softmax, then P @ V with P rounded to the input dtype as FlashAttention does), compared with a
#: float32 reference: outputs are weighted averages of O(1) values, so errors are a few ulps of the input dtype
ATTENTION_TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=3e-2, atol=2e-2),
    torch.float16: dict(rtol=4e-3, atol=3e-3),
}


def assert_close_for(dtype: torch.dtype, actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """``torch.testing.assert_close`` with the tolerance of inputs of ``dtype``; dtypes and devices must match."""
    if dtype not in TOLERANCES:
        raise KeyError(f"no tolerance for {dtype}; known: {', '.join(str(d) for d in TOLERANCES)}")
    tol = TOLERANCES[dtype]
    try:
        torch.testing.assert_close(actual, expected, **tol)
    except AssertionError as exc:
        prefix = f"{msg}: " if msg else ""
        raise AssertionError(f"{prefix}kernel and reference differ beyond {dtype} tolerance {tol}\n{exc}") from None


def random_tensor(
    shape: Sequence[int], dtype: torch.dtype, seed: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard-normal values of ``shape`` and ``dtype``, the same for a seed on every device.

    Drawn in float32 on the CPU with its own ``torch.Generator`` (global RNG state untouched), then cast and moved.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)
