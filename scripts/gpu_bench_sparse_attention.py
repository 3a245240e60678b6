"""GPU benchmark and check of the block-sparse attention kernel (plugins/sparse_attention/kernels.py).

In one run:
1. correctness on the GPU: the Triton kernel against the float32 dense masked reference (float16, bfloat16,
   float32; head dims 64 and 128; lengths that are not multiples of the block size; a text-padding key length),
   with the refused key blocks dropped and pooled (``remainder="pooled"``);
2. speed: the Triton kernel against dense ``scaled_dot_product_attention`` and against FlexAttention
   (``torch.compile``d, with a ``BlockMask`` built from the same block indices) at sequence lengths 8k-64k and
   block densities 5%-50% (every query block keeps the same number of key blocks, its own always among them);
   the kernel's output is also compared with FlexAttention's at every point; the pooled remainder is timed too.

Prints a table and writes JSON. Timing: CUDA events, warm-up first, median of ``--repeats``.

    python scripts/gpu_bench_sparse_attention.py --out sparse-attn-gpu.json
    python scripts/gpu_bench_sparse_attention.py --quick          # 8k and 32k, 10% and 50% only (run this first:
                                                                  # FlexAttention compiles once per length and block)
    python scripts/gpu_bench_sparse_attention.py --device cpu    # the CPU (torch) path vs dense SDPA, 1 thread

Performance bar (issue 5): at 10% density and >= 32k tokens, >= 5x faster than dense SDPA and not slower than
FlexAttention with the same mask.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from dynaccel.kernels.testing import ATTENTION_TOLERANCES  # noqa: E402
from dynaccel.plugins.sparse_attention import kernels, kernels_triton  # noqa: E402
from dynaccel.plugins.sparse_attention.masks import blocks_for_density, topk_block_mask  # noqa: E402

ATTN_TOL = {dt: (t["rtol"], t["atol"]) for dt, t in ATTENTION_TOLERANCES.items()}


def random_block_mask(b, h, nq, nk, density, seed, device):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scores = torch.rand(b, h, nq, nk, generator=gen)
    keep = torch.full((b, h, nq), blocks_for_density(density, nk))
    always = torch.zeros(b, h, nq, nk, dtype=torch.bool)
    n = min(nq, nk)
    always[..., torch.arange(n), torch.arange(n)] = True
    return topk_block_mask(scores, keep, always).to(device)


def timed(fn, repeats, device):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def check_correctness(device, backend):
    cases = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for d in (64, 128):
            sizes = ((1000, 64), (4097, 128), (3000, 64)) if device == "cuda" else ((300, 64), (517, 128))
            for s, bs in sizes:
                gen = torch.Generator(device="cpu").manual_seed(s + d)
                q, k, v = (torch.randn(2, 4, s, d, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
                nb = -(-s // bs)
                mask = random_block_mask(2, 4, nb, nb, 0.3, s, device)
                mask[0, 0, 0] = False
                kv_len = torch.tensor([s - 77, s], device=device)
                for rem in kernels.REMAINDERS:
                    case = {"dtype": str(dtype), "head_dim": d, "seq": s, "block": bs, "remainder": rem}
                    try:
                        got = kernels.block_sparse_attention(
                            q, k, v, mask, bs, kv_len=kv_len, backend=backend, remainder=rem
                        )
                        ref = kernels.block_sparse_attention_reference(q, k, v, mask, bs, kv_len=kv_len, remainder=rem)
                    except Exception as exc:  # a compile or launch failure is a result too: record it, go on
                        case.update(max_abs_err=None, ok=False, error=_why(exc))
                        cases.append(case)
                        print(f"  check {str(dtype):15s} D={d:3d} S={s:5d} block={bs:3d} {rem:6s}: ERROR {case['error']}")
                        continue
                    err = (got.float() - ref.float()).abs().max().item()
                    rtol, atol = ATTN_TOL[dtype]
                    ok = torch.allclose(got.float(), ref.float(), rtol=rtol, atol=atol)
                    case.update(max_abs_err=err, ok=ok)
                    cases.append(case)
                    print(f"  check {str(dtype):15s} D={d:3d} S={s:5d} block={bs:3d} {rem:6s}: max|err| {err:.2e} "
                          f"{'ok' if ok else 'FAIL'}")
    return cases


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def write_json(path: Path, doc: dict) -> None:
    """Write atomically (temporary file, then rename): called after every row, so a run stopped by a time limit
    keeps what it measured."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def flex_runner(q, k, v, mask, bs):
    """A compiled FlexAttention call with the same block mask, or (None, why)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
    except Exception as exc:  # pragma: no cover - old torch
        return None, f"FlexAttention unavailable: {exc}"
    prepared = kernels.block_index(mask)
    idx, cnt = prepared.indices, prepared.counts

    try:
        # Listed blocks are "full" (no mask_mod inside them, like our kernel) and unlisted ones are skipped: that is
        # the block structure in the compiled kernel. (Eager, uncompiled flex_attention would ignore the block lists
        # and evaluate the default all-true mask_mod; a mask_mod closing over `mask` would make it exact there but
        # forces a recompilation for every mask.) Every row compares our output with FlexAttention's.
        block_mask = BlockMask.from_kv_blocks(
            torch.zeros_like(cnt), idx, full_kv_num_blocks=cnt, full_kv_indices=idx, BLOCK_SIZE=bs,
            seq_lengths=(q.shape[2], k.shape[2]),
        )
        # one compilation per sequence length and block size (the index tensors are (nQ, nK) whatever the density);
        # lift dynamo's recompile limit so that the later lengths are compiled too instead of falling back to eager
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
        compiled = torch.compile(flex_attention, dynamic=False)
        # FlexAttention's kernel tiles are 128 x 128 unless told otherwise; a 64-token mask needs 64-row tiles
        opts = {"BLOCK_M": bs, "BLOCK_N": bs} if bs < 128 else None
        fn = functools.partial(compiled, kernel_options=opts) if opts else compiled
        fn(q, k, v, block_mask=block_mask)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return (lambda: fn(q, k, v, block_mask=block_mask)), None


def time_row(args, q, k, v, s, density, bs, dense_ms, device, backend, gpu):
    """One timed setting: our kernel (dropped and pooled remainder), the index preparation, FlexAttention."""
    nb = -(-s // bs)
    mask = random_block_mask(1, args.heads, nb, nb, density, s + bs, device)
    real_density = mask.float().mean().item()
    # the mask is prepared once (index lists), as FlexAttention's BlockMask is; its cost is reported apart
    prepared = kernels.block_index(mask)
    index_ms = timed(lambda: kernels.block_index(mask), args.repeats, device)
    ours = lambda: kernels.block_sparse_attention(q, k, v, prepared, bs, backend=backend)  # noqa: E731
    ours_ms = timed(ours, args.repeats, device)
    pooled_ms = timed(
        lambda: kernels.block_sparse_attention(q, k, v, prepared, bs, backend=backend, remainder="pooled"),
        args.repeats, device,
    )
    flex, why = flex_runner(q, k, v, mask, bs) if gpu else (None, "not timed on the CPU (needs compile)")
    flex_ms = timed(flex, args.repeats, device) if flex else None
    diff = (ours().float() - flex().float()).abs().max().item() if flex else None
    row = {
        "seq": s, "density": real_density, "block": bs, "dense_ms": dense_ms, "ours_ms": ours_ms,
        "index_prep_ms": index_ms, "pooled_ms": pooled_ms,
        "flex_ms": flex_ms, "flex_note": why, "speedup_vs_dense": dense_ms / ours_ms,
        "speedup_vs_flex": (flex_ms / ours_ms) if flex_ms else None, "max_abs_diff_vs_flex": diff,
    }
    fx = f"{flex_ms:8.3f}" if flex_ms else f"{'-':>8}"
    vf = f"{row['speedup_vs_flex']:7.2f}x" if flex_ms else f"{'-':>8}"
    df = f"{diff:14.2e}" if diff is not None else f"{'-':>14}"
    print(f"{s:6d} {real_density:7.3f} {bs:5d} {dense_ms:9.3f} {ours_ms:8.3f} {pooled_ms:8.3f} {index_ms:8.3f} {fx} "
          f"{row['speedup_vs_dense']:7.2f}x {vf} {df}")
    if why and flex is None and device == "cuda":
        print(f"         flex: {why}")
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--seqs", default=None, help="default: 8192,16384,32768,65536 (cuda), 2048,4096,8192 (cpu)")
    ap.add_argument("--densities", default="0.05,0.1,0.2,0.5")
    ap.add_argument("--heads", type=int, default=None, help="default: 12 (cuda; Wan2.1-1.3B has 12 x 128), 2 (cpu)")
    ap.add_argument("--head-dim", type=int, default=None, help="default: 128 (cuda), 64 (cpu)")
    ap.add_argument("--blocks", default=None, help="kernel block sizes to time; default: 64,128 (cuda), 64 (cpu)")
    ap.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                    help="default: bfloat16 (cuda), float32 (cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="8k and 32k tokens, densities 10%% and 50%%")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--out", default="sparse-attn-bench.json")
    ap.add_argument("--warps", type=int, default=None, help="override the kernel's warps per program (tuning)")
    ap.add_argument("--stages", type=int, default=None, help="override the kernel's pipeline stages (tuning)")
    args = ap.parse_args(argv)
    if args.warps:
        kernels_triton._warps = lambda block, block_d: args.warps
    if args.stages:
        kernels_triton._stages = lambda block, block_d, elem: args.stages

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device; use --device cpu for a smoke test")
    backend = "triton" if device == "cuda" else "torch"
    gpu = device == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    args.seqs = args.seqs or ("8192,16384,32768,65536" if gpu else "2048,4096,8192")
    args.heads = args.heads or (12 if gpu else 2)
    args.head_dim = args.head_dim or (128 if gpu else 64)
    args.blocks = args.blocks or ("64,128" if gpu else "64")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    seqs = [int(x) for x in args.seqs.split(",")]
    densities = [float(x) for x in args.densities.split(",")]
    if args.quick:
        seqs, densities = seqs[:1] + [x for x in seqs if x >= 32768][:1], [0.1, 0.5]
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "triton": getattr(kernels.triton, "__version__", None),
        "dtype": args.dtype,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "batch": 1,
        "repeats": args.repeats,
        "threads": torch.get_num_threads() if not gpu else None,
        "warps_override": args.warps,
        "stages_override": args.stages,
    }
    print(f"block-sparse attention on {meta['device']} (torch {meta['torch']}, triton {meta['triton']})")
    out_path = Path(args.out)
    doc = {"meta": meta, "checks": [], "rows": [], "bar": None}
    checks = [] if args.skip_check else check_correctness(device, backend)
    doc["checks"] = checks
    write_json(out_path, doc)

    rows = doc["rows"]
    header = (f"{'seq':>6} {'density':>7} {'block':>5} {'dense ms':>9} {'ours ms':>8} {'pooled':>8} {'prep ms':>8} "
              f"{'flex ms':>8} "
              f"{'vs dense':>8} {'vs flex':>8} {'max|ours-flex|':>14}")
    print("\n" + header + "\n" + "-" * len(header))
    for s in seqs:
        q, k, v = (torch.randn(1, args.heads, s, args.head_dim, device=device, dtype=dtype) for _ in range(3))
        dense_ms = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), args.repeats, device)
        for density in densities:
            for bs in [int(x) for x in args.blocks.split(",")]:
                try:
                    row = time_row(args, q, k, v, s, density, bs, dense_ms, device, backend, gpu)
                except Exception as exc:  # e.g. out of memory at 64k: record, go on with the next setting
                    row = {"seq": s, "density": density, "block": bs, "dense_ms": dense_ms, "error": _why(exc)}
                    print(f"{s:6d} {density:7.3f} {bs:5d} ERROR {row['error']}")
                rows.append(row)
                write_json(out_path, doc)
        del q, k, v

    bar = [r for r in rows if "error" not in r and r["seq"] >= 32768 and abs(r["density"] - 0.1) < 0.02]

    verdict = None
    if bar:
        best = max(bar, key=lambda r: r["speedup_vs_dense"])
        verdict = {
            "row": best,
            "meets_5x_vs_dense": best["speedup_vs_dense"] >= 5.0,
            "not_slower_than_flex": best["speedup_vs_flex"] is not None and best["speedup_vs_flex"] >= 1.0,
        }
        print(f"\nperformance bar (10% density, >= 32k tokens), best row: {best['speedup_vs_dense']:.2f}x vs dense, "
              f"{best['speedup_vs_flex'] if best['speedup_vs_flex'] is None else round(best['speedup_vs_flex'], 2)}x vs flex")
    failed = [c for c in checks if not c["ok"]]
    print(f"correctness: {len(checks) - len(failed)}/{len(checks)} checks passed")
    doc["bar"] = verdict
    write_json(out_path, doc)
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
