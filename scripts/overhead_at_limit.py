"""Overhead at the limit: what a cache strategy costs besides the work it skips, timed inside the transformer only
(no text encoder, no VAE, no scheduler).

For each cache strategy of the registry, on a zoo model (default tiny-wan, its default call, one thread):

- **off** (threshold 0, nothing skipped): transformer time of plain compute / transformer time with the strategy
  enabled. 1.0 means the off setting costs nothing.
- **preset** (the model's built-in preset): the transformer speedup divided by the work ratio (passes total /
  passes computed; block calls for the per-block strategies). 1.0 means every skipped pass saved exactly its share
  of the time and the decisions cost nothing; below 1, the per-pass bookkeeping (signals, residual copies, hooks)
  ate into the saving. The work ratio counts block calls (FBCache runs block 0 on the passes it skips), so the
  patch embedding and output projection, which always run, also count against it.

Transformer time is the sum, over the generation, of the wall time of every call of the transformer (forward
pre-hook to forward hook, so it includes dynaccel's own hooks and decisions). Median of ``--repeats`` rounds, the
plain and accelerated runs interleaved round by round so the machine's drift hits both.

    python scripts/overhead_at_limit.py --model tiny-wan --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dynaccel
from dynaccel.core.registry import get_registry
from dynaccel.hf_integration import bench


class TransformerTimer:
    def __init__(self, module: torch.nn.Module):
        self.total = 0.0
        self._start = 0.0
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._start = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._start

    def remove(self):
        for h in self._handles:
            h.remove()


def transformer_seconds(pipe, prompt: str, call: dict) -> float:
    timer = TransformerTimer(pipe.transformer)
    try:
        pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="latent", **call)
    finally:
        timer.remove()
    return timer.total


def work_ratio(handle) -> float:
    """Block calls of full compute / block calls run (a First-Block-Cache-style skip still runs block 0)."""
    stats = handle.stats
    if "blocks_computed" in stats:
        total = stats["blocks_computed"] + stats["blocks_reused"]
        return total / max(1, stats["blocks_computed"])
    engine = handle.engine if hasattr(handle, "engine") else next(iter(handle.parts.values())).engine
    blocks = len(engine.specs) or 1
    run_on_skip = 1 if getattr(engine.policy, "anchor", None) == "block0" and engine.policy.level == "blocks" else 0
    return stats["passes"] * blocks / max(1, stats["computed"] * blocks + stats["skipped"] * run_on_skip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-wan")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = bench.resolve_model(args.model)
    pipe = bench.load_pipeline(path)
    call = bench.generation_defaults(args.model, path)
    prompt = bench.default_prompts(args.model)[2]
    reg = get_registry()
    strategies = [n for n, c in reg.strategies.items() if c.family == "cache"]
    transformer_seconds(pipe, prompt, call)  # warm-up
    print(f"{args.model}, prompt {prompt!r}, {call.get('num_inference_steps')} steps, 1 thread, median of "
          f"{args.repeats}; {bench.machine()}")
    print(f"{'strategy':16s} {'off: plain/with':>16s} {'preset: speedup':>16s} {'work ratio':>11s} {'overhead ratio':>15s}")
    for name in strategies:
        off, fast, ratio = [], [], None
        preset = f"{args.model}-{name}" if f"{args.model}-{name}" in reg.presets else None
        for _ in range(args.repeats):
            plain = transformer_seconds(pipe, prompt, call)
            if name not in ("magcache", "smoothcache"):  # calibrated strategies record every pass at threshold 0
                pipe.enable_accel(name, threshold=0.0)
                off.append(plain / transformer_seconds(pipe, prompt, call))
                pipe.disable_accel(name)
            if preset:
                handle = pipe.enable_accel(preset=preset)
                accelerated = transformer_seconds(pipe, prompt, call)
                ratio = work_ratio(handle)
                pipe.disable_accel(name)
                fast.append(plain / accelerated)
        off_s = f"{statistics.median(off):.3f}" if off else "(records)"
        if fast:
            sp = statistics.median(fast)
            print(f"{name:16s} {off_s:>16s} {sp:>15.2f}x {ratio:>10.2f}x {sp / ratio:>15.3f}")
        else:
            print(f"{name:16s} {off_s:>16s} {'-':>16s}")


if __name__ == "__main__":
    main()
