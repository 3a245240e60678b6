"""Train the zoo's ``tiny-vlm``: a small LlavaForConditionalGeneration that answers checkable questions about
procedurally generated images (the reference model for the token strategies' accuracy numbers).

    python -m dynaccel.zoo.train_tiny_vlm --out zoo/tiny-vlm --minutes 55      # the full run (not yet done)
    python -m dynaccel.zoo.train_tiny_vlm --out /tmp/tiny-vlm --steps 20      # a smoke run

Data (fixed seeds, no network): 64x64 images with 1 to 4 shapes (circle, square, triangle; red, green, blue,
yellow) on a dark background, at most one circle, and one question per sample whose answer is one word:

- "how many shapes are there" -> one / two / three / four
- "what colour is the circle" -> red / green / blue / yellow (images with a circle)
- "where is the circle" -> left / right (which half holds its centre)

Model: a CLIP vision tower (64x64, 8x8 patches -> 64 image tokens + CLS, 4 layers, width 128) and a Llama LM
(4 layers, width 192, 4 heads / 2 KV heads), Llava's 2-layer projector, a word-level tokenizer over the question
and answer vocabulary plus ``<image>``. Prompt: ``<bos> <image> x 64 question ? answer:``, target: the answer word
and ``<eos>``; the loss covers the target only. AdamW, warm-up and cosine decay, as many steps as ``--minutes``
allow on this 2-core CPU. A fixed held-out set (different seeds) is scored with greedy ``generate()`` (exact match
of the answer word); the accuracy goes into ``training_info.json`` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("one", "two", "three", "four")
QUESTIONS = {
    "count": "how many shapes are there ?",
    "colour": "what colour is the circle ?",
    "where": "where is the circle ?",
}
SIZE, PATCH = 64, 8
IMAGE_TOKENS = (SIZE // PATCH) ** 2


def vocabulary() -> list[str]:
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "<image>", "answer:"]
    for q in QUESTIONS.values():
        words += q.split()
    words += list(COLOURS) + list(NUMBERS) + ["left", "right"]
    seen, out = set(), []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def draw(rng: random.Random) -> tuple[torch.Tensor, dict]:
    """One image (3, 64, 64) in [-1, 1] and its facts."""
    img = torch.full((3, SIZE, SIZE), 0.08)
    img += 0.04 * torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
    n = rng.randint(1, 4)
    has_circle = rng.random() < 0.75
    kinds = (["circle"] if has_circle else []) + [rng.choice(("square", "triangle")) for _ in range(n - has_circle)]
    rng.shuffle(kinds)
    facts = {"count": NUMBERS[n - 1]}
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    placed: list[tuple[int, int]] = []
    for kind in kinds:
        for _ in range(50):  # keep shapes apart so they can be counted
            cx, cy = rng.randint(9, SIZE - 10), rng.randint(9, SIZE - 10)
            if all(abs(cx - px) + abs(cy - py) > 18 for px, py in placed):
                break
        placed.append((cx, cy))
        name = rng.choice(list(COLOURS))
        r = rng.randint(5, 8)
        if kind == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            facts["colour"], facts["where"] = name, "left" if cx < SIZE // 2 else "right"
        elif kind == "square":
            mask = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
        else:
            mask = (yy - cy <= r) & (yy - cy >= -r) & ((xx - cx).abs() <= (yy - cy + r) // 2)
        colour = torch.tensor(COLOURS[name], dtype=torch.float32)[:, None] / 255.0
        img[:, mask] = colour.expand(3, int(mask.sum()))
    return img * 2 - 1, facts


def sample(rng: random.Random) -> tuple[torch.Tensor, str, str]:
    img, facts = draw(rng)
    kind = rng.choice([k for k in QUESTIONS if k in facts])
    return img, QUESTIONS[kind], facts[kind]


def build(vocab: list[str]):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    ids = {w: i for i, w in enumerate(vocab)}
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                              image_size=SIZE, patch_size=PATCH, projection_dim=128)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=192, intermediate_size=384, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                       tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                      vision_feature_select_strategy="default", vision_feature_layer=-2, attn_implementation="sdpa")
    return LlavaForConditionalGeneration(cfg)


def encode(vocab_ids: dict, question: str, answer: str | None) -> tuple[list[int], int]:
    prompt = [vocab_ids["<bos>"]] + [vocab_ids["<image>"]] * IMAGE_TOKENS
    prompt += [vocab_ids.get(w, vocab_ids["<unk>"]) for w in question.split()] + [vocab_ids["answer:"]]
    if answer is None:
        return prompt, len(prompt)
    return prompt + [vocab_ids[answer], vocab_ids["<eos>"]], len(prompt)


def batch(rng: random.Random, vocab_ids: dict, size: int):
    imgs, seqs, starts = [], [], []
    for _ in range(size):
        img, q, a = sample(rng)
        seq, start = encode(vocab_ids, q, a)
        imgs.append(img)
        seqs.append(seq)
        starts.append(start)
    width = max(len(s) for s in seqs)
    ids = torch.full((size, width), vocab_ids["<pad>"], dtype=torch.long)
    labels = torch.full((size, width), -100, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, st: len(s)] = torch.tensor(s[st:])
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.stack(imgs), "labels": labels}


def heldout(n: int = 300, seed: int = 10_000) -> list[tuple[torch.Tensor, str, str]]:
    rng = random.Random(seed)
    return [sample(rng) for _ in range(n)]


@torch.no_grad()
def accuracy(model, vocab: list[str], items, batch_size: int = 50) -> float:
    """Exact match of the first generated word with the answer, greedy, over ``items``."""
    vocab_ids = {w: i for i, w in enumerate(vocab)}
    model.eval()
    right = 0
    for k in range(0, len(items), batch_size):
        chunk = items[k: k + batch_size]
        prompts = [encode(vocab_ids, q, None)[0] for _, q, _ in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), width), vocab_ids["<pad>"], dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=torch.stack([c[0] for c in chunk]),
                             max_new_tokens=1, do_sample=False)
        right += sum(vocab[int(t)] == a for t, (_, _, a) in zip(out[:, -1], chunk))
    return right / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=55.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: the time budget decides)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocab = vocabulary()
    vocab_ids = {w: i for i, w in enumerate(vocab)}
    model = build(vocab)
    model.generation_config.pad_token_id = vocab_ids["<pad>"]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    budget = args.minutes * 60
    est_steps = args.steps or 2000  # for the schedule; the clock may stop earlier
    warmup = max(1, est_steps // 20)
    start, step, losses = time.time(), 0, []
    while True:
        elapsed = time.time() - start
        if (args.steps and step >= args.steps) or (not args.steps and elapsed > budget):
            break
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / est_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        loss = model(**batch(rng, vocab_ids, args.batch)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 25 == 0 or step == 1:
            print(f"step {step} loss {sum(losses[-25:]) / len(losses[-25:]):.4f} lr {lr:.2e} {elapsed / 60:.1f} min", flush=True)
    minutes = (time.time() - start) / 60
    acc = accuracy(model, vocab, heldout())
    print(f"held-out accuracy {acc:.3f} after {step} steps, {minutes:.1f} min")
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    with open(os.path.join(args.out, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(args.out, "training_info.json"), "w") as f:
        json.dump({"steps": step, "minutes": round(minutes, 1), "batch": args.batch, "lr": args.lr,
                   "threads": args.threads, "seed": args.seed, "heldout_accuracy": acc, "heldout_items": 300,
                   "final_loss": sum(losses[-25:]) / max(1, len(losses[-25:]))}, f, indent=2)


if __name__ == "__main__":
    main()
