"""Contact sheet of ``tiny-wan`` samples, generated through the stock ``WanPipeline`` after ``from_pretrained``.

    python -m dynaccel.zoo.contact_sheet --out docs/tiny-wan-samples.png

One row per prompt: the prompt (and what ``synthetic.analyse_clip`` reads from the sample) as a label, then a
few frames of the generated clip, upscaled with nearest-neighbour.
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


def contact_sheet(clips: np.ndarray, labels, frames=(0, 4, 8, 12, 16), scale: int = 4):
    """PIL image: per row a text label and the chosen frames of one clip."""
    from PIL import Image, ImageDraw, ImageFont

    n, T, H, W, _ = clips.shape
    frames = [f for f in frames if f < T]
    label_w, pad = 300, 4
    cell_w, cell_h = W * scale, H * scale
    sheet = Image.new("RGB", (label_w + len(frames) * (cell_w + pad), n * (cell_h + pad) + pad + 16), (255,) * 3)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, f in enumerate(frames):
        draw.text((label_w + j * (cell_w + pad) + 2, 2), f"frame {f}", fill=(0, 0, 0), font=font)
    for i in range(n):
        y = 16 + pad + i * (cell_h + pad)
        for k, line in enumerate(str(labels[i]).split("\n")):
            draw.text((4, y + 4 + 14 * k), line, fill=(0, 0, 0), font=font)
        for j, f in enumerate(frames):
            img = Image.fromarray((np.clip(clips[i, f], 0, 1) * 255).round().astype(np.uint8))
            sheet.paste(img.resize((cell_w, cell_h), Image.NEAREST), (label_w + j * (cell_w + pad), y))
    return sheet


def main(argv=None):
    import torch

    from dynaccel.zoo import synthetic

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "tiny-wan-samples.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folder", default=None, help="pipeline folder (default: the zoo's tiny-wan)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    clips = generate(DEFAULT_PROMPTS, seed=args.seed, folder=args.folder)
    labels = []
    for p, c in zip(DEFAULT_PROMPTS, clips):
        a = synthetic.analyse_clip(c)
        labels.append(f"{p}\nread: {a['colour']}, {a['direction']}")
    contact_sheet(clips, labels).save(args.out)
    print(f"wrote {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
