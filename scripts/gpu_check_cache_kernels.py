#!/usr/bin/env python
"""GPU check of the cache kernels (needs a CUDA GPU and Triton): correctness, then speed against torch.

1. Compares ``l1_sums``, ``rel_l1`` and ``residual_add`` on Triton with their torch references in float32,
   bfloat16 and float16, from tiny odd sizes up to B=2 x 16M elements, non-contiguous inputs included.
2. Times Triton against the reference (warm-up, L2 flushed before each repeat, CUDA events, median of 20)
   and prints a markdown table with the device name.

    python scripts/gpu_check_cache_kernels.py            # check + timings
    python scripts/gpu_check_cache_kernels.py --sweep    # also try other launch settings (for tuning)

Exit status: 0 all checks passed, 1 a check failed, 2 nothing was run (no CUDA GPU or no Triton).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable

import torch

from dynaccel.kernels.testing import TOLERANCES, random_tensor
from dynaccel.plugins.cache import kernels
from dynaccel.plugins.cache import kernels_triton as kt  # the launch settings live beside the Triton kernels

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
CHECK_SHAPES = [(1, 7), (3, 1000), (4, 4099), (2, 5, 33, 17), (8, 77, 3072), (2, 1_000_003), (2, 4096, 2048)]
TIME_SHAPES = [(2, 256, 2048), (2, 4096, 2048)]  # 1M and 16M elements
REPEATS = 20
WARMUP = 3


def _check(name: str, dtype: torch.dtype, label: str, got, want, failures: list[str]) -> str:
    tol = TOLERANCES[dtype]
    got32, want32 = got.float(), want.float()
    err = (got32 - want32).abs()
    bound = tol["atol"] + tol["rtol"] * want32.abs()
    ok = got.dtype == want.dtype and got.shape == want.shape and bool((err <= bound).all())
    exact = torch.equal(got, want)
    rel = (err / want32.abs().clamp_min(1e-30)).max().item()
    if not ok:
        failures.append(f"{name} {dtype_name(dtype)} {label}: max abs err {err.max().item():.3g}")
    return (f"| {name} | {dtype_name(dtype)} | {label} | {err.max().item():.3g} | {rel:.3g} "
            f"| {'yes' if exact else 'no'} | {'ok' if ok else 'FAIL'} |")


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def check_all() -> list[str]:
    failures: list[str] = []
    print("## Correctness: Triton vs torch reference\n")
    print("| op | dtype | shape | max abs err | max rel err | bit-exact | result |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    seed = 0
    for shape in CHECK_SHAPES:
        for dtype in DTYPES.values():
            for layout in ("contiguous", "transposed"):
                if layout == "transposed" and len(shape) < 3:
                    continue
                seed += 3

                def make(s, dt=dtype, sd=0):
                    if layout == "contiguous":
                        return random_tensor(s, dt, sd, device="cuda")
                    t = random_tensor((*s[:-2], s[-1], s[-2]), dt, sd, device="cuda").transpose(-1, -2)
                    assert not t.is_contiguous()
                    return t

                b = make(shape, sd=seed)
                a = (b.float() + 0.05 * make(shape, torch.float32, seed + 1)).to(dtype)
                label = "x".join(map(str, shape)) + (" (transposed view)" if layout == "transposed" else "")
                rows = [
                    _check("l1_sums", dtype, label, kernels.l1_sums(a, b, backend="triton"),
                           kernels.l1_sums_reference(a, b), failures),
                    _check("rel_l1", dtype, label, kernels.rel_l1(a, b, backend="triton"),
                           kernels.rel_l1(a, b, backend="torch"), failures),
                ]
                for res_dtype in dict.fromkeys((dtype, torch.float32)):
                    res = make(shape, res_dtype, seed + 2)
                    rows.append(_check(f"residual_add (res {dtype_name(res_dtype)})", dtype, label,
                                       kernels.residual_add(b, res, backend="triton"),
                                       kernels.residual_add_reference(b, res), failures))
                print("\n".join(rows))
                del a, b
    same = random_tensor((2, 4099), torch.bfloat16, 7, device="cuda")
    if not torch.equal(kernels.rel_l1(same, same, backend="triton"), torch.zeros(2, device="cuda")):
        failures.append("rel_l1 of identical inputs is not 0")
    zero = torch.zeros(2, 4099, device="cuda")
    if not torch.equal(kernels.rel_l1(zero, zero, backend="triton"), torch.zeros(2, device="cuda")):
        failures.append("rel_l1 of zeros is not 0")
    out = kernels.rel_l1(same, same)
    if out.device.type != "cuda" or out.dtype != torch.float32:
        failures.append(f"rel_l1 returned {out.dtype} on {out.device}, not float32 on CUDA")
    return failures


_flush_buf: torch.Tensor | None = None


def time_ms(fn: Callable[[], object]) -> float:
    """Median GPU time of fn over REPEATS runs, each after an L2 flush, in milliseconds."""
    global _flush_buf
    if _flush_buf is None:
        _flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        _flush_buf.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_all() -> None:
    print("\n## Timings (median of %d, L2 flushed; speed-up = torch ms / triton ms)\n" % REPEATS)
    print("| op | dtype | numel | triton ms | torch ms | speed-up | triton GB/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shape in TIME_SHAPES:
        for dtype in DTYPES.values():
            a = random_tensor(shape, dtype, 1, device="cuda")
            b = random_tensor(shape, dtype, 2, device="cuda")
            res = random_tensor(shape, torch.float32, 3, device="cuda")
            n, es = a.numel(), a.element_size()
            cases = [
                ("l1_sums", lambda bk: kernels.l1_sums(a, b, backend=bk), 2 * n * es),
                ("rel_l1", lambda bk: kernels.rel_l1(a, b, backend=bk), 2 * n * es),
                ("residual_add (res f32)", lambda bk: kernels.residual_add(a, res, backend=bk), n * (2 * es + 4)),
                ("residual_add (res same)", lambda bk: kernels.residual_add(a, b, backend=bk), 3 * n * es),
            ]
            for op, fn, nbytes in cases:
                t_tri = time_ms(lambda: fn("triton"))
                t_ref = time_ms(lambda: fn("torch"))
                print(f"| {op} | {dtype_name(dtype)} | {n:,} | {t_tri:.4f} | {t_ref:.4f} | {t_ref / t_tri:.2f}x "
                      f"| {nbytes / t_tri / 1e6:.0f} |")
            del a, b, res


def sweep() -> None:
    """Time l1_sums and residual_add under other launch settings, on 16M elements."""
    print("\n## Launch-setting sweep (triton ms, 2x4096x2048)\n")
    print("| op | dtype | BLOCK | warps | programs/SM | ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    saved = (kt._L1_BLOCK, kt._L1_WARPS, kt._L1_PROGRAMS_PER_SM, kt._ADD_BLOCK,
             kt._ADD_WARPS)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            a = random_tensor(TIME_SHAPES[-1], dtype, 1, device="cuda")
            b = random_tensor(TIME_SHAPES[-1], dtype, 2, device="cuda")
            for block in (1024, 2048, 4096):
                for warps in (4, 8):
                    for per_sm in (2, 4, 8, 16):
                        kt._L1_BLOCK, kt._L1_WARPS, kt._L1_PROGRAMS_PER_SM = block, warps, per_sm
                        ms = time_ms(lambda: kernels.l1_sums(a, b, backend="triton"))
                        print(f"| l1_sums | {dtype_name(dtype)} | {block} | {warps} | {per_sm} | {ms:.4f} |")
                    kt._ADD_BLOCK, kt._ADD_WARPS = block, warps
                    ms = time_ms(lambda: kernels.residual_add(a, b, backend="triton"))
                    print(f"| residual_add | {dtype_name(dtype)} | {block} | {warps} | - | {ms:.4f} |")
            del a, b
    finally:
        (kt._L1_BLOCK, kt._L1_WARPS, kt._L1_PROGRAMS_PER_SM, kt._ADD_BLOCK,
         kt._ADD_WARPS) = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time other launch settings")
    parser.add_argument("--skip-timings", action="store_true", help="correctness checks only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_cache_kernels: needs a CUDA GPU, and torch.cuda.is_available() is False here; "
              "nothing was checked.", file=sys.stderr)
        return 2
    if kernels.triton is None:
        print("gpu_check_cache_kernels: triton does not import here; nothing was checked.", file=sys.stderr)
        return 2
    import triton

    props = torch.cuda.get_device_properties(0)
    print(f"# Cache kernels on {torch.cuda.get_device_name(0)} ({props.multi_processor_count} SMs), "
          f"torch {torch.__version__}, triton {triton.__version__}\n")
    failures = check_all()
    if not args.skip_timings:
        time_all()
    if args.sweep:
        sweep()
    if failures:
        print(f"\nFAILED {len(failures)} check(s):\n  " + "\n  ".join(failures))
        return 1
    print("\nAll checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
