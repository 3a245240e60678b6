"""The diffusers path and the ComfyUI path on one shared tiny Wan 2.1 model: the same sparse-attention decisions.

Run with ComfyUI's Python (ComfyUI's folder and this repo, as ``dynaccel``, on sys.path; diffusers installed there);
prints one JSON line. Used by
``test_comfyui_integration.py::test_sparse_attention_makes_the_same_decisions_on_the_diffusers_and_comfyui_paths``.

The tiny diffusers ``WanTransformer3DModel`` of ``same_decisions_check.py`` (its weights renamed to ComfyUI's layout
and loaded with ``comfy.sd.load_diffusion_model``) runs every sparse-attention strategy, at a dense and a sparse
setting, through ComfyUI's sampler with the dynaccel node's ``accelerate`` and through diffusers with
``enable_accel``, on the same sigmas, noise and text features (Euler, cfg 1). Reported per case: both paths' stats
(sparse and dense calls, mean density, density per step, SVG's spatial-head share, PASA's budget per step) and
outputs (against each path's plain model, and against each other).
"""

from __future__ import annotations

import json
import sys

import torch

from same_decisions_check import side_by_side

STEPS = 6
SEED = 3
TILE = {"tile_frames": 1, "tile_height": 4, "tile_width": 4, "block_size": 16, "backend": "torch"}
CASES = [
    ("sliding_tile", "dense", TILE | {"dense_steps": STEPS}),
    ("sliding_tile", "sparse", TILE | {"radius_frames": 0, "radius_height": 1, "radius_width": 1, "dense_steps": 1}),
    ("radial", "dense", {"tile_height": 4, "tile_width": 4, "block_size": 16, "dense_frames": 1000}),
    ("radial", "sparse", {"tile_height": 4, "tile_width": 4, "block_size": 16, "dense_frames": 0, "window": 0}),
    ("svg", "dense", {"block_size": 16, "frame_window": 1000}),
    ("svg", "sparse", {"block_size": 16, "frame_window": 0, "position_window": 16, "dense_steps": 1}),
    ("pasa", "dense", TILE | {"density": 1.0, "max_density": 1.0}),
    ("pasa", "sparse", TILE | {"density": 0.4, "max_density": 0.7, "gain": 1.0}),
]
KEYS = ("sparse_calls", "dense_calls", "mean_density", "density_per_step", "spatial_head_share", "budget_per_step")


def main() -> None:
    import dynaccel

    # token grid (3, 8, 8): 192 video tokens
    comfy_run, diffusers_run = side_by_side((1, 16, 3, 16, 16), STEPS, SEED)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    plain_c, _ = comfy_run()
    plain_d, _ = diffusers_run()
    report = {"dynaccel_file": dynaccel.__file__, "plain_rel_diff": rel(plain_c, plain_d), "cases": []}
    for strategy, setting, options in CASES:
        out_c, stats_c = comfy_run(strategy, options)
        out_d, stats_d = diffusers_run(strategy, options)
        report["cases"].append({
            "strategy": strategy,
            "setting": setting,
            "comfy": {k: stats_c.get(k) for k in KEYS if k in stats_c},
            "diffusers": {k: stats_d.get(k) for k in KEYS if k in stats_d},
            "comfy_identical_to_plain": bool(torch.equal(out_c, plain_c)),
            "comfy_vs_plain": rel(out_c, plain_c),
            "diffusers_vs_plain": rel(out_d, plain_d),
            "comfy_vs_diffusers": rel(out_c, out_d),
        })
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    sys.exit(main())
