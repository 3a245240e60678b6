"""Train the zoo's ``tiny-pi0``: a stock transformers ``PI0ForConditionalGeneration`` (a tiny PaliGemma that reads
the frame and the instruction, plus a tiny Gemma action expert that denoises an action chunk by flow matching),
trained by behaviour cloning on the scripted expert's episodes of :mod:`dynaccel.zoo.robot_tasks`.

    python -m dynaccel.zoo.train_tiny_pi0 --out zoo/tiny-pi0 --threads 1                    # the full run
    python -m dynaccel.zoo.train_tiny_pi0 --out /tmp/pi0 --fit-seeds 2 --steps 20 --eval-episodes 1   # a smoke run

Model (:data:`ARCH`): SigLIP tower (64x64 frames, 8 px patches: 64 image tokens), Gemma LM and Gemma action
expert, chunk 8 actions of 4 (dx, dy, dz, grip), proprio padded to 8 state values, 10 denoising steps. The
tokenizer is word-level (the ``tokenizers`` library) over the four instructions, built here and saved beside the
weights (``tokenizer.json``), so ``PI0ForConditionalGeneration.from_pretrained(folder)`` and
:meth:`TinyPi0Processor.from_pretrained` load offline. Prompt: 64 ``<image>`` tokens, then ``<bos>`` and the
instruction, right-padded to :data:`TEXT_LEN`. Normalisation: the proprio is standardised with the training set's
mean and std (``norm_stats.json``); actions are already in [-1, 1] and are learnt as they are (the model's chunk is
clipped to [-1, 1]).

Data: ``robot_tasks.generate_dataset`` on fit seeds only (cached under ``--data``; the generation time is stated
separately in ``training_info.json``). Training: the stock flow-matching loss of ``PI0ForConditionalGeneration``
(its own Beta-distributed time and Gaussian noise, drawn from torch's global generator seeded here), reduced per
element and masked past an episode's end; AdamW, warm-up then cosine decay over ``--steps``; batches drawn from a
seeded generator; deterministic algorithms on; so the weights follow from the seed, the data and the step count.
``--max-minutes`` stops early (then the step reached is recorded); ``--eval-every`` runs a short held-out
closed-loop evaluation during training. :func:`evaluate` scores a saved folder on held-out seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Sequence

import numpy as np
import torch

from . import robot_tasks as rt

CHUNK = 8
STATE_DIM = 8  # PI0's max_state_dim: the 4 proprio values, zero-padded
IMAGE_SIZE, PATCH = rt.FRAME_SIZE, 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
TEXT_LEN = 8  # <bos> + the longest instruction (6 words) + room
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
IMAGE_TOKEN = "<image>"
NORM_FILE = "norm_stats.json"
DEFAULT_STEPS = 14000
DEFAULT_FIT_SEEDS = 250
#: model size: widths and depths of the vision tower, the PaliGemma LM and the action expert
ARCH = dict(width=128, intermediate=256, vision_layers=2, text_layers=2, expert_layers=2, heads=4, kv_heads=1,
            head_dim=32, denoise_steps=10)


def vocabulary() -> list[str]:
    """Special tokens, the instructions' words in order of first use, and ``<image>`` last (image_token_index)."""
    words = list(SPECIALS)
    for instruction in rt.instructions().values():
        for w in instruction.split():
            if w not in words:
                words.append(w)
    return words + [IMAGE_TOKEN]


def build_tokenizer(vocab: Sequence[str]):
    """A word-level ``PreTrainedTokenizerFast`` over ``vocab`` (whitespace split, unknown words -> ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=IMAGE_TOKENS + TEXT_LEN)


def build_config(vocab_size: int, **arch):
    from transformers import PI0Config

    a = {**ARCH, **arch}
    gemma = dict(model_type="gemma", vocab_size=vocab_size, hidden_size=a["width"],
                 intermediate_size=a["intermediate"], num_attention_heads=a["heads"],
                 num_key_value_heads=a["kv_heads"], head_dim=a["head_dim"])
    vision = dict(model_type="siglip_vision_model", hidden_size=a["width"], intermediate_size=a["intermediate"],
                  num_hidden_layers=a["vision_layers"], num_attention_heads=a["heads"], image_size=IMAGE_SIZE,
                  patch_size=PATCH, projection_dim=a["width"])
    vlm = dict(model_type="paligemma", vocab_size=vocab_size, image_token_index=vocab_size - 1,
               projection_dim=a["width"], hidden_size=a["width"],
               text_config={**gemma, "num_hidden_layers": a["text_layers"]}, vision_config=vision)
    return PI0Config(vlm_config=vlm, dit_config={**gemma, "num_hidden_layers": a["expert_layers"]},
                     chunk_size=CHUNK, max_state_dim=STATE_DIM, max_action_dim=rt.ACTION_DIM,
                     num_inference_steps=a["denoise_steps"], loss_reduction="none")


def build_model(vocab_size: int, **arch):
    from transformers import PI0ForConditionalGeneration

    return PI0ForConditionalGeneration(build_config(vocab_size, **arch))


class TinyPi0Processor:
    """Observations of :mod:`robot_tasks` -> PI0 inputs, and the model's chunks -> actions.

    ``__call__(observations)`` takes one :class:`~dynaccel.zoo.robot_tasks.RobotObservation` or a list (each with
    a frame) and returns ``input_ids``, ``attention_mask``, ``pixel_values`` (B, 1, 3, 64, 64) in [-1, 1],
    ``pixel_attention_mask`` (B, 1) and ``state`` (B, 8) (standardised proprio, zero-padded).
    ``actions(chunk)`` maps the model's (B, chunk, 4) or (chunk, 4) output to actions clipped to [-1, 1].
    """

    def __init__(self, tokenizer, state_mean: Sequence[float], state_std: Sequence[float]):
        self.tokenizer = tokenizer
        self.state_mean = np.asarray(state_mean, np.float32)
        self.state_std = np.asarray(state_std, np.float32)
        if self.state_mean.shape != (rt.PROPRIO_DIM,) or self.state_std.shape != (rt.PROPRIO_DIM,):
            raise ValueError(f"state statistics must have {rt.PROPRIO_DIM} values each")
        if not np.all(self.state_std > 0):
            raise ValueError(f"state std must be positive, got {self.state_std}")

    @classmethod
    def from_pretrained(cls, folder: str) -> "TinyPi0Processor":
        from transformers import PreTrainedTokenizerFast

        with open(os.path.join(folder, NORM_FILE)) as f:
            stats = json.load(f)
        return cls(PreTrainedTokenizerFast.from_pretrained(folder), stats["state_mean"], stats["state_std"])

    def save_pretrained(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        with open(os.path.join(folder, NORM_FILE), "w") as f:
            json.dump({"state_mean": self.state_mean.tolist(), "state_std": self.state_std.tolist(),
                       "actions": "not normalised: expert actions are in [-1, 1]; chunks are clipped to it"}, f,
                      indent=1)

    def text_ids(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``<image>`` x 64, ``<bos>``, the instruction's words, right padding to TEXT_LEN: ids and mask."""
        tok = self.tokenizer
        image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        ids = torch.full((len(instructions), IMAGE_TOKENS + TEXT_LEN), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(instructions):
            words = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
            if len(words) > TEXT_LEN:
                raise ValueError(f"instruction {text!r} is longer than {TEXT_LEN - 1} words")
            row = [image_id] * IMAGE_TOKENS + words
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    def state(self, proprio: np.ndarray) -> torch.Tensor:
        proprio = np.asarray(proprio, np.float32).reshape(-1, rt.PROPRIO_DIM)
        out = np.zeros((len(proprio), STATE_DIM), np.float32)
        out[:, : rt.PROPRIO_DIM] = (proprio - self.state_mean) / self.state_std
        return torch.from_numpy(out)

    @staticmethod
    def pixels(frames: np.ndarray) -> torch.Tensor:
        """(B, 64, 64, 3) uint8 -> (B, 1, 3, 64, 64) float in [-1, 1] (one camera)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) uint8, got {frames.shape} "
                             f"{frames.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x[:, None]

    def batch(self, frames: np.ndarray, proprio: np.ndarray, instructions: Sequence[str]) -> dict:
        ids, mask = self.text_ids(instructions)
        pixels = self.pixels(frames)
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
                "pixel_attention_mask": torch.ones(pixels.shape[:2], dtype=torch.bool), "state": self.state(proprio)}

    def __call__(self, observations) -> dict:
        if isinstance(observations, rt.RobotObservation):
            observations = [observations]
        if any(o.frame is None for o in observations):
            raise ValueError("the observation has no frame: render it (rollout(..., render=True))")
        return self.batch(np.stack([o.frame for o in observations]), np.stack([o.proprio for o in observations]),
                          [o.instruction for o in observations])

    @staticmethod
    def actions(chunk) -> np.ndarray:
        a = chunk.detach().float().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        if a.shape[-1] != rt.ACTION_DIM:
            raise ValueError(f"a chunk ends in {rt.ACTION_DIM} action values, got shape {a.shape}")
        return np.clip(a, -1.0, 1.0).astype(np.float32)


class Pi0Policy:
    """A chunking policy for :func:`robot_tasks.rollout`: ``policy(observation)`` -> (chunk, 4) actions.

    The denoising noise comes from a generator seeded with ``seed``, and reset per episode from the episode's
    seed, so a rollout is reproducible.
    """

    def __init__(self, model, processor: TinyPi0Processor, seed: int = 0, num_steps: int | None = None):
        self.model, self.processor, self.num_steps = model, processor, num_steps
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def from_pretrained(cls, folder: str, **kw) -> "Pi0Policy":
        from transformers import PI0ForConditionalGeneration

        model = PI0ForConditionalGeneration.from_pretrained(folder).eval()
        return cls(model, TinyPi0Processor.from_pretrained(folder), **kw)

    @torch.no_grad()
    def __call__(self, observation: rt.RobotObservation) -> np.ndarray:
        if observation.step == 0:  # a new episode: its noise follows from the policy's and the episode's seeds
            self.generator.manual_seed(self.seed * 1_000_003 + observation.seed)
        inputs = self.processor(observation)
        cfg = self.model.config
        noise = torch.randn((1, cfg.chunk_size, cfg.max_action_dim), generator=self.generator)
        chunk = self.model.sample_actions(noise=noise, num_steps=self.num_steps, **inputs)
        return self.processor.actions(chunk[0])


def evaluate(model_folder, tasks: Sequence[str] = rt.TASK_NAMES, heldout_seeds: Sequence[int] | None = None,
             episodes: int = 10, sim: rt.RobotSim | None = None, progress: bool = False) -> dict:
    """Closed-loop success per task on held-out seeds (the first ``episodes`` held-out seeds unless given).

    ``model_folder``: a saved folder or a :class:`Pi0Policy`. Returns ``{task: {"success_rate", "episodes",
    "successes", "mean_steps"}, "mean": ...}``.
    """
    policy = model_folder if isinstance(model_folder, Pi0Policy) else Pi0Policy.from_pretrained(model_folder)
    seeds = list(rt.heldout_seeds(episodes) if heldout_seeds is None else heldout_seeds)
    for s in seeds:
        rt.check_seed(s, "heldout")
    own = sim is None
    sim = sim or rt.RobotSim()
    out: dict = {}
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks) * len(seeds), desc="held-out episodes", unit="ep", disable=not progress)
        for name in tasks:
            results = []
            for s in seeds:
                results.append(rt.rollout(policy, name, s, sim=sim))
                bar.update(1)
            out[name] = {"success_rate": sum(r.success for r in results) / max(1, len(results)),
                         "episodes": len(results), "successes": [r.seed for r in results if r.success],
                         "mean_steps": float(np.mean([r.steps for r in results])) if results else 0.0}
        bar.close()
    finally:
        if own:
            sim.close()
    out["mean"] = float(np.mean([out[t]["success_rate"] for t in tasks])) if tasks else 0.0
    return out


def default_data_dir(fit_seeds: int) -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "dynaccel", "robot-tasks", f"pi0-fit{fit_seeds}-chunk{CHUNK}")


def load_data(data_dir: str, seeds: Sequence[int], tasks: Sequence[str] = rt.TASK_NAMES,
              max_steps: int | None = None, progress: bool = True) -> tuple[dict, dict]:
    """The expert dataset for ``seeds`` (fit seeds), generated into ``data_dir`` when missing; (arrays, manifest)."""
    rt.generate_dataset(data_dir, tasks, seeds, chunk=CHUNK, progress=progress, max_steps=max_steps)
    arrays, manifest = rt.load_dataset(data_dir)
    return arrays, manifest


def state_stats(proprio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = proprio.mean(0).astype(np.float32)
    std = np.maximum(proprio.std(0), 1e-3).astype(np.float32)
    return mean, std


def train(arrays: dict, manifest: dict, steps: int = DEFAULT_STEPS, batch_size: int = 64, lr: float = 1e-3,
          seed: int = 0, stop_after: int | None = None, max_minutes: float | None = None, log=print,
          progress: bool = False, eval_every: int = 0, eval_episodes: int = 2, arch: dict | None = None):
    """The training loop; returns ``(model, processor, info, losses)``. The weights depend only on the data and the
    arguments (``stop_after`` ends early on the same schedule, for tests), unless ``max_minutes`` cuts it short."""
    torch.manual_seed(seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(arrays, manifest, steps, batch_size, lr, seed, stop_after, max_minutes, log, progress,
                      eval_every, eval_episodes, arch)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(arrays, manifest, steps, batch_size, lr, seed, stop_after, max_minutes, log, progress, eval_every,
           eval_episodes, arch):
    vocab = vocabulary()
    tokenizer = build_tokenizer(vocab)
    mean, std = state_stats(arrays["proprio"])
    processor = TinyPi0Processor(tokenizer, mean, std)
    model = build_model(len(vocab), **(arch or {}))
    instructions = manifest["key"]["instructions"]
    ids_all, mask_all = processor.text_ids(instructions)  # one row per task
    frames, proprio = arrays["frames"], arrays["proprio"]
    task_index = torch.from_numpy(arrays["task_index"].astype(np.int64))
    actions = torch.from_numpy(arrays["actions"].astype(np.float32))
    action_mask = torch.from_numpy(arrays["action_mask"]).float()
    state_all = processor.state(proprio)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    n = len(task_index)
    warmup = max(1, steps // 20)
    total = steps if stop_after is None else min(steps, stop_after)
    start, losses, evals = time.time(), [], []
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="tiny-pi0", unit="step", disable=not progress)
    stopped = None
    for step in range(total):
        if max_minutes is not None and (time.time() - start) / 60 > max_minutes:
            stopped = step
            break
        step_lr = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = step_lr
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        ti = task_index[idx]
        pixels = processor.pixels(frames[idx.numpy()])
        model.train()
        out = model(state=state_all[idx], actions=actions[idx], input_ids=ids_all[ti], attention_mask=mask_all[ti],
                    pixel_values=pixels, pixel_attention_mask=torch.ones(pixels.shape[:2], dtype=torch.bool))
        m = action_mask[idx][..., None]
        loss = (out.loss * m).sum() / (m.sum() * out.loss.shape[-1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % 100 == 0 or step == 0:
            log(f"step {step + 1} loss {np.mean(losses[-100:]):.4f} lr {step_lr:.2e} "
                f"{(time.time() - start) / 60:.1f} min")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < total:
            model.eval()
            r = evaluate(Pi0Policy(model, processor, seed=seed), heldout_seeds=rt.heldout_seeds(eval_episodes))
            evals.append({"step": step + 1, "minutes": round((time.time() - start) / 60, 2),
                          **{k: (v["success_rate"] if isinstance(v, dict) else v) for k, v in r.items()}})
            log(f"held-out success at step {step + 1}: {evals[-1]}")
    bar.close()
    model.eval()
    done = stopped if stopped is not None else total
    info = {"steps": done, "scheduled_steps": steps, "stopped_by_time_budget": stopped is not None,
            "seed": seed, "batch": batch_size, "lr": lr, "minutes": round((time.time() - start) / 60, 2),
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
            "loss_every_100_steps": [round(float(np.mean(losses[i:i + 100])), 4)
                                     for i in range(0, len(losses), 100)],
            "evaluations": evals, "arch": {**ARCH, **(arch or {})}}
    return model, processor, info, losses


def versions() -> dict:
    from importlib.metadata import version

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for pkg in ("transformers", "tokenizers", "metaworld", "mujoco"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # pragma: no cover
            out[pkg] = None
    return out


def save(model, processor, folder: str, info: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    with open(os.path.join(folder, "training_info.json"), "w") as f:
        json.dump(info, f, indent=1)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", help="dataset cache folder (default: ~/.cache/dynaccel/robot-tasks/...)")
    ap.add_argument("--fit-seeds", type=int, default=DEFAULT_FIT_SEEDS, help="fit seeds per task")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=None, help="training time budget (data excluded)")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="end after this many steps of the --steps schedule (reproduces a run the budget cut short)")
    ap.add_argument("--eval-every", type=int, default=0, help="held-out closed-loop evaluation every N steps")
    ap.add_argument("--eval-episodes", type=int, default=10, help="held-out episodes per task at the end")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = rt.fit_seeds(args.fit_seeds)
    data_dir = args.data or default_data_dir(args.fit_seeds)
    t0 = time.time()
    arrays, manifest = load_data(data_dir, seeds)
    data_seconds = time.time() - t0
    print(f"data: {manifest['samples']} samples, {manifest['episodes']} episodes in {data_dir} "
          f"(generated in {manifest['seconds']} s; loaded in {data_seconds:.1f} s)", flush=True)
    model, processor, info, _ = train(arrays, manifest, args.steps, args.batch, args.lr, args.seed,
                                      stop_after=args.stop_after, max_minutes=args.max_minutes,
                                      log=lambda m: print(m, flush=True),
                                      progress=True, eval_every=args.eval_every,
                                      eval_episodes=max(1, args.eval_episodes // 5))
    info.update({"command": "python -m dynaccel.zoo.train_tiny_pi0 " + " ".join(sys.argv[1:] if argv is None else argv),
                 "data_dir": data_dir, "threads": args.threads, "fit_seeds_per_task": args.fit_seeds,
                 "data_seeds": [seeds[0], seeds[-1]], "data_samples": manifest["samples"],
                 "data_generation_seconds": manifest["seconds"], "data_machine": manifest.get("machine"),
                 "versions": versions(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"})
    save(model, processor, args.out, info)
    t1 = time.time()
    result = evaluate(args.out, episodes=args.eval_episodes, progress=True)
    info["heldout"] = result
    info["heldout_seeds"] = [rt.HELDOUT_START, rt.HELDOUT_START + args.eval_episodes - 1]
    info["eval_seconds"] = round(time.time() - t1, 1)
    with open(os.path.join(args.out, "training_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps({"heldout": result, "steps": info["steps"], "minutes": info["minutes"]}, indent=1), flush=True)


if __name__ == "__main__":
    main()
