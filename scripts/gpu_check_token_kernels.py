"""Check and time the token-pruning kernel on a CUDA GPU: query_rows_attention (Triton) against its torch reference.

    python scripts/gpu_check_token_kernels.py

Prints, per shape and dtype, the largest difference to the reference and the median time of each backend
(CUDA events, after a warm-up). Shapes are decoder-sized: LLaVA-1.5-7B (32 heads x 128, 576 image tokens plus a
prompt), Qwen2-VL-7B (28 query / 4 key heads), a long-context row (32k keys).
"""

from __future__ import annotations

import statistics

import torch

from dynaccel.kernels.testing import assert_close_for, random_tensor
from dynaccel.plugins.token_pruning.kernels import query_rows_attention

SHAPES = [  # B, H, Hkv, R, N, D
    (1, 32, 32, 1, 700, 128),
    (1, 28, 4, 1, 1400, 128),
    (4, 32, 8, 1, 4096, 128),
    (1, 32, 8, 1, 32768, 128),
    (1, 32, 8, 4, 131072, 128),  # four rows over 128k keys
]


def timed(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    print(f"{'shape':32s} {'dtype':9s} {'max diff':>9s} {'triton ms':>10s} {'torch ms':>9s} {'speedup':>8s}")
    failures = 0
    for shape in SHAPES:
        b, h, hkv, r, n, d = shape
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            q = random_tensor((b, h, r, d), dtype, 1, "cuda")
            k = random_tensor((b, hkv, n, d), dtype, 2, "cuda")
            bias = torch.zeros(b, r, n, device="cuda")
            bias[:, :, : n // 10] = float("-inf")
            try:
                got = query_rows_attention(q, k, bias, backend="triton")
                want = query_rows_attention(q, k, bias, backend="torch")
                assert_close_for(dtype, got, want, msg=str(shape))
            except Exception as exc:  # one failing shape is reported; the others still run
                failures += 1
                print(f"{str(shape):32s} {str(dtype)[6:]:9s} FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            t_tr = timed(lambda: query_rows_attention(q, k, bias, backend="triton"))
            t_ref = timed(lambda: query_rows_attention(q, k, bias, backend="torch"))
            print(f"{str(shape):32s} {str(dtype)[6:]:9s} {float((got - want).abs().max()):9.2e} {t_tr:10.4f} {t_ref:9.4f} {t_ref / t_tr:7.2f}x")
    print(f"{failures} failing case(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
