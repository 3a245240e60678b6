"""Control frequency reached with synchronous and asynchronous execution, over a range of control rates.

The gain of the asynchronous executor depends on how long an inference takes next to a chunk's execution: a
synchronous chunk of k steps takes k / hz + latency, an asynchronous one k / hz when the next chunk arrives in
time, so the best ratio is 1 + latency * hz / k. This script measures both on the robot tasks in real time
(CameraClock: rendering is free) for each rate and prints the table and the expected best ratio from the measured
latency; ``--out`` writes JSON and a plot.

    python scripts/vla_async_sweep.py --model tiny-pi0 --rates 40,80,120,160,200 --episodes 2 --out docs/results/cpu-vla-async
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import numpy as np
import torch


def main(argv=None) -> int:
    from dynaccel.hf_integration import bench_vla as bv
    from dynaccel.hf_integration.async_chunks import ProcessPolicy
    from dynaccel.zoo import realtime
    from dynaccel.zoo import robot_tasks as rt

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-pi0")
    ap.add_argument("--rates", default="40,80,120,160,200")
    ap.add_argument("--episodes", type=int, default=2, help="held-out episodes per task and rate")
    ap.add_argument("--chunk-threshold", type=float, default=0.5)
    ap.add_argument("--setting", default="full", help="a bench row of strategies (no async part)")
    ap.add_argument("--out", default=None, help="folder for sweep.json and sweep.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    folder = str(bv.resolve_policy(args.model))
    spec = bv.parse_row(args.setting)
    settings = [(s.strategy, dict(s.config)) for s in spec.settings]
    local = bv.build_policy_run(folder, settings)
    seeds = rt.heldout_seeds(args.episodes)
    rows = []
    with rt.RobotSim() as sim, ProcessPolicy(functools.partial(bv.build_policy_run, folder, settings)) as remote:
        for hz in rates:
            out = {"control_hz": hz}
            for mode in ("sync", "async"):
                res = []
                for name in rt.TASK_NAMES:
                    for seed in seeds:
                        ex = None if mode == "sync" else {"chunk_threshold": args.chunk_threshold}
                        res.append(realtime.run_episode(local, sim, name, seed, hz, executor=ex, worker_policy=remote))
                steps = sum(r["steps"] for r in res)
                seconds = sum(r["seconds"] for r in res)
                out[mode] = {"reached_hz": steps / seconds, "success": float(np.mean([r["success"] for r in res])),
                             "latency_ms": 1000 * statistics.median(s for r in res for s in r["policy_seconds"]),
                             "waits": sum(r["waits"] for r in res), "inferences": sum(r["inferences"] for r in res),
                             "episodes": len(res)}
            k = 8
            out["ratio"] = out["async"]["reached_hz"] / out["sync"]["reached_hz"]
            out["best_ratio"] = 1 + out["sync"]["latency_ms"] / 1000 * hz / k
            rows.append(out)
            print(f"{hz:6.0f} Hz: sync {out['sync']['reached_hz']:6.1f} Hz ({100 * out['sync']['success']:.0f}% "
                  f"success), async {out['async']['reached_hz']:6.1f} Hz ({100 * out['async']['success']:.0f}%), "
                  f"ratio {out['ratio']:.2f}x (best possible {out['best_ratio']:.2f}x; latency "
                  f"{out['sync']['latency_ms']:.1f} ms sync, {out['async']['latency_ms']:.1f} ms in the process)",
                  flush=True)
    from dynaccel.hf_integration.bench import machine

    meta = {"model": args.model, "setting": args.setting, "episodes_per_task": args.episodes,
            "chunk_threshold": args.chunk_threshold, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "sweep.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(rates, [r["sync"]["reached_hz"] for r in rows], marker="o", label="synchronous")
        ax.plot(rates, [r["async"]["reached_hz"] for r in rows], marker="s", label="asynchronous (policy process)")
        ax.plot(rates, rates, color="grey", linestyle=":", label="the control rate")
        ax.set_xlabel("control rate (Hz)")
        ax.set_ylabel("control frequency reached (Hz)")
        ax.set_title(f"{args.model}, {args.setting}: {args.episodes} held-out episodes per task and rate", fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "sweep.png"), dpi=120)
        print(f"wrote {args.out}/sweep.json and sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
