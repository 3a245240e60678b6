"""Train the zoo's ``tiny-vlm``: a small LlavaForConditionalGeneration that answers checkable questions about
procedurally generated images (the reference model for the token strategies' accuracy numbers).

    python -m dynaccel.zoo.train_tiny_vlm --out zoo/tiny-vlm --threads 1      # the committed run (800 steps)
    python -m dynaccel.zoo.train_tiny_vlm --out /tmp/tiny-vlm --steps 20 --heldout 20   # a smoke run

Data (fixed seeds, no network): 112x112 images with 1 to 4 shapes (circle, square, triangle; red, green, blue,
yellow) on a dark background, at most one circle; questions whose answer is one word:

- "how many shapes are there" -> one / two / three / four
- "what colour is the circle" -> red / green / blue / yellow (images with a circle)
- "where is the circle" -> left / right (which half holds its centre)

Model, sized for the token strategies' performance bar: 196 image tokens (112 px / 8 px patches), and an LLM that
dominates the prefill over the vision tower. A CLIP vision tower (3 layers, width 64; the projector reads layer 2,
Llava's default of the second-to-last) and a Llama LM (10 layers, width 192, 4 heads / 2 KV heads), Llava's
2-layer projector, a word-level vocabulary (``vocab.json``) over the questions and answers plus ``<image>``.
Evaluation prompt: ``<bos> <image> x 196 question ? answer:``, answer: one word. A training sequence asks every
question its image has, in random order (``... q1 answer: a1 q2 answer: a2 <eos>``): the first has exactly the
evaluation prompt's form, the others add supervision for a few text tokens; the loss covers the answers and
``<eos>`` only. AdamW (lr 5e-4; 2e-3 stalled at chance level and went unstable on a smoke run), 5 % warm-up,
cosine decay, batch 16, a fixed number of steps (``--steps``, default 800), so the weights follow from the seed
and the step count, not from the clock. A fixed held-out set (seed 10000, different from training's) is scored
with greedy ``generate()`` (exact match of the answer word); overall and per-question accuracy go into
``training_info.json`` beside the weights.
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
SIZE, PATCH = 112, 8
IMAGE_TOKENS = (SIZE // PATCH) ** 2
DEFAULT_STEPS = 800
RADIUS, MARGIN, APART = (8, 12), 16, 31  # shape radius range, distance from the border, city-block distance apart
#: model size (see the module docstring for why: enough image tokens and an LLM that dominates the prefill)
ARCH = dict(vision_width=64, vision_layers=3, vision_heads=2, text_width=192, text_layers=10, text_heads=4,
            text_kv_heads=2)


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
            cx, cy = rng.randint(MARGIN, SIZE - 1 - MARGIN), rng.randint(MARGIN, SIZE - 1 - MARGIN)
            if all(abs(cx - px) + abs(cy - py) > APART for px, py in placed):
                break
        placed.append((cx, cy))
        name = rng.choice(list(COLOURS))
        r = rng.randint(*RADIUS)
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


def build(vocab: list[str], **arch):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    a = {**ARCH, **arch}
    ids = {w: i for i, w in enumerate(vocab)}
    vision = CLIPVisionConfig(hidden_size=a["vision_width"], intermediate_size=2 * a["vision_width"],
                              num_hidden_layers=a["vision_layers"], num_attention_heads=a["vision_heads"],
                              image_size=SIZE, patch_size=PATCH, projection_dim=a["vision_width"])
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=a["text_width"], intermediate_size=2 * a["text_width"],
                       num_hidden_layers=a["text_layers"], num_attention_heads=a["text_heads"],
                       num_key_value_heads=a["text_kv_heads"], max_position_embeddings=512,
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


def training_sequence(rng: random.Random, vocab_ids: dict) -> tuple[torch.Tensor, list[int], list[int]]:
    """One image with every question it has, in random order: ``<bos> <image>... q1 answer: a1 q2 answer: a2 ...
    <eos>``; the first question has exactly the evaluation prompt's form, the later ones add supervision for the
    price of a few text tokens. Returns the image, the ids and the positions whose next token is a target."""
    img, facts = draw(rng)
    kinds = [k for k in QUESTIONS if k in facts]
    rng.shuffle(kinds)
    seq, targets = [vocab_ids["<bos>"]] + [vocab_ids["<image>"]] * IMAGE_TOKENS, []
    for kind in kinds:
        seq += [vocab_ids[w] for w in QUESTIONS[kind].split()] + [vocab_ids["answer:"]]
        targets.append(len(seq))
        seq.append(vocab_ids[facts[kind]])
    targets.append(len(seq))
    seq.append(vocab_ids["<eos>"])
    return img, seq, targets


def batch(rng: random.Random, vocab_ids: dict, size: int):
    imgs, seqs, targets = [], [], []
    for _ in range(size):
        img, seq, tgt = training_sequence(rng, vocab_ids)
        imgs.append(img)
        seqs.append(seq)
        targets.append(tgt)
    width = max(len(s) for s in seqs)
    ids = torch.full((size, width), vocab_ids["<pad>"], dtype=torch.long)
    labels = torch.full((size, width), -100, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.long)
    for i, (s, tgt) in enumerate(zip(seqs, targets)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, tgt] = torch.tensor([s[t] for t in tgt])
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.stack(imgs), "labels": labels}


def heldout(n: int = 300, seed: int = 10_000) -> list[tuple[torch.Tensor, str, str]]:
    rng = random.Random(seed)
    return [sample(rng) for _ in range(n)]


@torch.no_grad()
def answers(model, vocab: list[str], items, batch_size: int = 50) -> list[str]:
    """The first generated word for each ``(image, question, answer)`` item, greedy, batched with left padding."""
    vocab_ids = {w: i for i, w in enumerate(vocab)}
    model.eval()
    out_words = []
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
        out_words += [vocab[int(t)] for t in out[:, -1]]
    return out_words


def question_kind(question: str) -> str:
    return next(k for k, q in QUESTIONS.items() if q == question)


def accuracy(model, vocab: list[str], items, batch_size: int = 50) -> dict[str, float]:
    """Exact match of the first generated word with the answer over ``items``: ``{"overall": ..., per kind}``."""
    words = answers(model, vocab, items, batch_size)
    result = {"overall": sum(w == a for w, (_, _, a) in zip(words, items)) / len(items)}
    for kind in QUESTIONS:
        hits = [w == a for w, (_, q, a) in zip(words, items) if question_kind(q) == kind]
        if hits:
            result[kind] = sum(hits) / len(hits)
    return result


def train(steps: int = DEFAULT_STEPS, batch_size: int = 16, lr: float = 5e-4, seed: int = 0,
          stop_after: int | None = None, log=print):
    """The training loop: returns (model, vocabulary, losses). ``stop_after`` ends early on the same schedule
    (for tests); the weights depend only on the arguments."""
    torch.manual_seed(seed)
    vocab = vocabulary()
    vocab_ids = {w: i for i, w in enumerate(vocab)}
    model = build(vocab)
    model.generation_config.pad_token_id = vocab_ids["<pad>"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    warmup = max(1, steps // 20)
    start, losses = time.time(), []
    for step in range(steps if stop_after is None else min(steps, stop_after)):
        step_lr = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = step_lr
        model.train()
        loss = model(**batch(rng, vocab_ids, batch_size)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 25 == 0 or step == 0:
            log(f"step {step + 1} loss {sum(losses[-25:]) / len(losses[-25:]):.4f} lr {step_lr:.2e} "
                f"{(time.time() - start) / 60:.1f} min")
    return model, vocab, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps (the weights follow from the seed and this)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout", type=int, default=300, help="held-out items scored at the end")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    model, vocab, losses = train(args.steps, args.batch, args.lr, args.seed, log=lambda m: print(m, flush=True))
    minutes = (time.time() - start) / 60
    acc = accuracy(model, vocab, heldout(args.heldout))
    print(f"held-out accuracy {acc} after {args.steps} steps, {minutes:.1f} min", flush=True)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    with open(os.path.join(args.out, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(args.out, "training_info.json"), "w") as f:
        json.dump({"steps": args.steps, "minutes": round(minutes, 1), "batch": args.batch, "lr": args.lr,
                   "threads": args.threads, "seed": args.seed, "heldout_accuracy": acc["overall"],
                   "heldout_accuracy_per_question": {k: v for k, v in acc.items() if k != "overall"},
                   "heldout_items": args.heldout, "heldout_seed": 10_000,
                   "final_loss": sum(losses[-25:]) / max(1, len(losses[-25:])),
                   "loss_every_25_steps": [round(sum(losses[i:i + 25]) / len(losses[i:i + 25]), 4)
                                           for i in range(0, len(losses), 25)]}, f, indent=2)


if __name__ == "__main__":
    main()
