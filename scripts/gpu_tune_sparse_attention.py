"""Sweep the block-sparse attention kernel's launch settings (warps per program, pipeline stages) on a CUDA GPU.

At the performance bar's point (10% block density, 32k and 64k tokens, 12 heads x 128, bfloat16) and at 50%, for
block sizes 64 and 128, times every (warps, stages) pair that fits in shared memory, prints a table with dense SDPA
for reference, and writes the fastest pair per block size to ``--best`` as a line of
``gpu_bench_sparse_attention.py`` options (``--warps W --stages S``, chosen for block 128 at 10% density).

    python scripts/gpu_tune_sparse_attention.py --best best-config.txt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from dynaccel.plugins.sparse_attention import kernels, kernels_triton

sys.path.insert(0, str(Path(__file__).parent))
from gpu_bench_sparse_attention import flex_runner, random_block_mask, timed  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="32768,65536")
    ap.add_argument("--densities", default="0.1,0.5")
    ap.add_argument("--blocks", default="128,64")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--best", default="best-config.txt")
    ap.add_argument("--out", default="sparse-attn-tune.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    heads, dim, dtype = 12, 128, torch.bfloat16
    default_warps, default_stages = kernels_triton._warps, kernels_triton._stages
    rows = []
    print(f"{'seq':>6} {'dens':>5} {'block':>5} {'warps':>5} {'stages':>6} {'ms':>8} {'dense ms':>9} {'vs dense':>8}")
    for s in [int(x) for x in args.seqs.split(",")]:
        q, k, v = (torch.randn(1, heads, s, dim, device="cuda", dtype=dtype) for _ in range(3))
        dense_ms = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), args.repeats, "cuda")
        for density in [float(x) for x in args.densities.split(",")]:
            for bs in [int(x) for x in args.blocks.split(",")]:
                nb = -(-s // bs)
                mask = random_block_mask(1, heads, nb, nb, density, s + bs, "cuda")
                prepared = kernels.block_index(mask)
                flex, why = flex_runner(q, k, v, mask, bs)
                flex_ms = timed(flex, args.repeats, "cuda") if flex else None
                print(f"{s:6d} {density:5.2f} {bs:5d} flex {flex_ms if flex_ms is None else round(flex_ms, 3)} {why or ''}")
                rows.append({"seq": s, "density": density, "block": bs, "flex_ms": flex_ms, "flex_note": why})
                ref = None
                for warps in (4, 8):
                    for stages in (1, 2, 3, 4):
                        if 2 * bs * dim * 2 * stages > 200 * 1024:
                            continue
                        kernels_triton._warps = lambda b, d, w=warps: w
                        kernels_triton._stages = lambda b, d, e, st=stages: st
                        fn = lambda: kernels.block_sparse_attention(q, k, v, prepared, bs, backend="triton")  # noqa: E731
                        try:
                            out = fn()
                            if ref is None:
                                ref = out
                            diff = (out.float() - ref.float()).abs().max().item()
                            ms = timed(fn, args.repeats, "cuda")
                        except Exception as exc:  # out of resources for this pair: record and go on
                            print(f"{s:6d} {density:5.2f} {bs:5d} {warps:5d} {stages:6d} ERROR {type(exc).__name__}")
                            continue
                        rows.append({"seq": s, "density": density, "block": bs, "warps": warps, "stages": stages,
                                     "ms": ms, "dense_ms": dense_ms, "max_diff_vs_first": diff})
                        print(f"{s:6d} {density:5.2f} {bs:5d} {warps:5d} {stages:6d} {ms:8.3f} {dense_ms:9.3f} "
                              f"{dense_ms / ms:7.2f}x")
        del q, k, v
    kernels_triton._warps, kernels_triton._stages = default_warps, default_stages
    best = {}
    for bs in {r["block"] for r in rows if "ms" in r}:
        # rank pairs by their summed time over the lengths at 10% density (the bar's point)
        tot = {}
        for r in rows:
            if r["block"] == bs and abs(r["density"] - 0.1) < 1e-6 and "ms" in r:
                tot.setdefault((r["warps"], r["stages"]), []).append(r["ms"])
        if tot:
            (w, st), times = min(tot.items(), key=lambda kv: statistics.fmean(kv[1]))
            best[bs] = {"warps": w, "stages": st}
    print("best per block size (10% density):", best)
    Path(args.out).write_text(json.dumps({"rows": rows, "best": {str(k): v for k, v in best.items()}}, indent=1))
    if 128 in best:
        Path(args.best).write_text(f"--warps {best[128]['warps']} --stages {best[128]['stages']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
