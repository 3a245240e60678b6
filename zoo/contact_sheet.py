"""Contact sheets of zoo samples, generated through the stock pipelines after ``from_pretrained``.

    python -m dynaccel.zoo.contact_sheet --out docs/tiny-wan-samples.png
    python -m dynaccel.zoo.contact_sheet --model tiny-flux --out docs/tiny-flux-samples.png
    python -m dynaccel.zoo.contact_sheet --model tiny-pi0 --out docs/tiny-pi0-rollouts.png
    python -m dynaccel.zoo.contact_sheet --model expert --out docs/robot-tasks.png

tiny-wan: one row per prompt: the prompt (and what ``synthetic.analyse_clip`` reads from the sample) as a label,
then a few frames of the generated clip. tiny-flux: one row per prompt, one column per seed, with what
``synthetic_images.analyse_image`` reads from each sample. tiny-pi0: one row per held-out episode (two per task),
frames evenly spaced over the closed-loop rollout, labelled with the task, the seed and the outcome. Upscaled with
nearest-neighbour.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

DEFAULT_PROMPTS = [
    "a red circle moving left fast",
    "a green square moving right fast",
    "a blue triangle moving up fast",
    "a yellow circle moving down fast",
    "a red square moving up slow",
    "a green triangle moving down slow",
    "a blue circle moving right slow",
    "a yellow square moving left slow",
]


def generate(prompts, seed: int = 0, folder: str | None = None, **overrides) -> np.ndarray:
    """Samples (n, T, H, W, 3) in [0, 1] from the zoo's tiny-wan at its default settings."""
    import torch
    from diffusers import WanPipeline

    import dynaccel.zoo as zoo

    pipe = WanPipeline.from_pretrained(folder or zoo.path("tiny-wan"))
    pipe.set_progress_bar_config(disable=True)
    kw = zoo.generation_defaults("tiny-wan")
    kw.update(overrides)
    out = pipe(list(prompts), generator=torch.Generator().manual_seed(seed), output_type="np", **kw)
    return np.asarray(out.frames)


FLUX_PROMPTS = [
    "a large red circle on the left",
    "a small green square on the right",
    "a large blue triangle on the top",
    "a small yellow circle on the bottom",
    "a small red triangle on the top",
    "a large green circle on the bottom",
    "a small blue square on the left",
    "a large yellow triangle on the right",
]


def generate_images(prompts, seeds=(0, 1, 2, 3), folder: str | None = None, **overrides) -> np.ndarray:
    """Samples (n_prompts, n_seeds, H, W, 3) in [0, 1] from the zoo's tiny-flux at its default settings."""
    import torch
    from diffusers import FluxPipeline

    import dynaccel.zoo as zoo

    pipe = FluxPipeline.from_pretrained(folder or zoo.path("tiny-flux"))
    pipe.set_progress_bar_config(disable=True)
    kw = zoo.generation_defaults("tiny-flux")
    kw.update(overrides)
    cols = []
    for seed in seeds:
        out = pipe(list(prompts), generator=torch.Generator().manual_seed(seed), output_type="np", **kw)
        cols.append(np.asarray(out.images))
    return np.stack(cols, axis=1)


def contact_sheet(clips: np.ndarray, labels, frames=(0, 4, 8, 12, 16), scale: int = 4, titles=None):
    """PIL image: per row a text label and the chosen frames of one clip (column titles: ``titles`` or frames)."""
    from PIL import Image, ImageDraw, ImageFont

    n, T, H, W, _ = clips.shape
    frames = [f for f in frames if f < T]
    label_w, pad = 300, 4
    cell_w, cell_h = W * scale, H * scale
    sheet = Image.new("RGB", (label_w + len(frames) * (cell_w + pad), n * (cell_h + pad) + pad + 16), (255,) * 3)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, f in enumerate(frames):
        title = titles[j] if titles else f"frame {f}"
        draw.text((label_w + j * (cell_w + pad) + 2, 2), title, fill=(0, 0, 0), font=font)
    for i in range(n):
        y = 16 + pad + i * (cell_h + pad)
        for k, line in enumerate(str(labels[i]).split("\n")):
            draw.text((4, y + 4 + 14 * k), line, fill=(0, 0, 0), font=font)
        for j, f in enumerate(frames):
            img = Image.fromarray((np.clip(clips[i, f], 0, 1) * 255).round().astype(np.uint8))
            sheet.paste(img.resize((cell_w, cell_h), Image.NEAREST), (label_w + j * (cell_w + pad), y))
    return sheet


def robot_rollouts(folder: str | None = None, episodes_per_task: int = 2, columns: int = 6, policy=None,
                   first_seed: int = 0):
    """(clips (n, columns, 64, 64, 3) in [0, 1], labels): closed-loop rollouts on held-out episodes (the
    ``first_seed``-th held-out seed on), ``columns`` frames evenly spaced from the first to the last step.

    ``policy``: a chunking policy (``policy(observation)`` -> (k, 4) actions), ``"expert"`` for the scripted
    expert, or None for tiny-pi0 (loaded from ``folder``, the zoo's by default)."""
    import dynaccel.zoo as zoo
    from dynaccel.zoo import robot_tasks as rt

    if policy is None:
        from dynaccel.zoo.train_tiny_pi0 import Pi0Policy

        policy = Pi0Policy.from_pretrained(folder or zoo.path("tiny-pi0"))
    elif policy == "expert":
        policy = rt.expert_policy
    clips, labels = [], []
    with rt.RobotSim() as sim:
        for name in rt.TASK_NAMES:
            for seed in rt.heldout_seeds(episodes_per_task, first_seed):
                obs = sim.reset(name, seed, render=True)
                frames, success, done, steps = [obs.frame], False, False, 0
                while not done and steps < rt.task(name).max_steps:
                    for action in policy(obs):
                        obs, success, done = sim.step(action, render=True)
                        frames.append(obs.frame)
                        steps += 1
                        if done or steps >= rt.task(name).max_steps:
                            break
                pick = np.linspace(0, len(frames) - 1, columns).round().astype(int)
                clips.append(np.stack([frames[i] for i in pick]).astype(np.float32) / 255.0)
                outcome = f"success in {steps} steps" if success else f"failed ({steps} steps)"
                labels.append(f"{name}, held-out seed {seed}\n{rt.instructions()[name]!r}\n{outcome}")
    return np.stack(clips), labels


def main(argv=None):
    import torch

    from dynaccel.zoo import synthetic, synthetic_images

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-wan", choices=["tiny-wan", "tiny-flux", "tiny-pi0", "expert"],
                    help="expert: the robot tasks' scripted expert, one held-out episode per task")
    ap.add_argument("--out", default=None, help="PNG to write (default: docs/<model>-samples.png)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folder", default=None, help="pipeline folder (default: the zoo's model)")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(__file__), "..", "docs", f"{args.model}-samples.png")
    torch.set_num_threads(2)
    if args.model == "expert":
        out = args.out or os.path.join(os.path.dirname(__file__), "..", "docs", "robot-tasks.png")
        clips, labels = robot_rollouts(policy="expert", episodes_per_task=1, columns=7, first_seed=3)
        sheet = contact_sheet(clips, labels, frames=range(clips.shape[1]), scale=2,
                              titles=["start"] + [f"{k}/{clips.shape[1] - 1}" for k in range(1, clips.shape[1])])
    elif args.model == "tiny-pi0":
        out = args.out or os.path.join(os.path.dirname(__file__), "..", "docs", "tiny-pi0-rollouts.png")
        clips, labels = robot_rollouts(args.folder)
        sheet = contact_sheet(clips, labels, frames=range(clips.shape[1]), scale=2,
                              titles=["start"] + [f"{k}/{clips.shape[1] - 1}" for k in range(1, clips.shape[1])])
    elif args.model == "tiny-flux":
        seeds = [args.seed + k for k in range(4)]
        images = generate_images(FLUX_PROMPTS, seeds=seeds, folder=args.folder)
        labels = []
        for p, row in zip(FLUX_PROMPTS, images):
            reads = [synthetic_images.analyse_image(img) for img in row]
            hits = sum(si_ok(r, synthetic_images.parse_prompt(p)) for r in reads)
            labels.append(f"{p}\nall three read right: {hits}/{len(reads)}")
        sheet = contact_sheet(images, labels, frames=range(len(seeds)), scale=3,
                              titles=[f"seed {s}" for s in seeds])
    else:
        clips = generate(DEFAULT_PROMPTS, seed=args.seed, folder=args.folder)
        labels = []
        for p, c in zip(DEFAULT_PROMPTS, clips):
            a = synthetic.analyse_clip(c)
            labels.append(f"{p}\nread: {a['colour']}, {a['direction']}")
        sheet = contact_sheet(clips, labels)
    sheet.save(out)
    print(f"wrote {os.path.abspath(out)}")


def si_ok(read: dict, wanted: dict) -> bool:
    """Colour, position and size all read as prompted."""
    return all(read[k] == wanted[k] for k in ("colour", "position", "size"))


if __name__ == "__main__":
    main()
