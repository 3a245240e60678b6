"""Quick probe of sparse-attention settings on tiny-wan: PSNR and SSIM against dense (the bench's definitions, from
``hf_integration.bench``), attention blocks computed and work, PSNR per generation; no timing. The dense outputs of
each prompt set are cached in the output folder. Used for the session-5 probes in
docs/results/tiny-wan-sparse-bench-30/tuning-log.md (the measurements of record are ``dynaccel bench`` runs).

    python scripts/tiny_wan_sparse_probe.py tune "pasa:block_size=8,remainder=pooled,tile_frames=2,tile_height=2,tile_width=2,density=0.4,max_density=0.4,gain=0.0,dense_steps=4"

Sets: ``tune`` (the four default prompts, seed 0) and the held-out sets ``h1``, ``h2``, ``h3`` of docs/benchmarks.md.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import dynaccel
import dynaccel.zoo
from dynaccel.hf_integration import bench as B

SETS = {
    "tune": (dynaccel.zoo.default_prompts("tiny-wan"), [0]),
    "h1": (["a green triangle moving right fast", "a yellow square moving down slow", "a blue circle moving left slow",
            "a red triangle moving up fast"], [1, 2]),
    "h2": (["a red square moving left slow", "a blue triangle moving down fast", "a yellow triangle moving left slow",
            "a green circle moving up fast"], [3, 4]),
    "h3": (["a blue square moving right fast", "a green square moving down slow", "a red circle moving up slow",
            "a yellow triangle moving right fast"], [5, 6]),
}
OUT = Path("bench-out/probe")


def main(name, settings):
    torch.set_num_threads(1)
    prompts, seeds = SETS[name]
    path = Path(dynaccel.zoo.path("tiny-wan"))
    pipe = B.load_pipeline(path)
    call = B.generation_defaults("tiny-wan", path)
    jobs = [(p, s) for p in prompts for s in seeds]

    def gen(p, s):
        return B._frames(pipe(prompt=p, generator=torch.Generator().manual_seed(s), output_type="pt", **call))

    OUT.mkdir(parents=True, exist_ok=True)
    cache = OUT / f"dense-{name}.safetensors"  # the dense outputs, reused by later probes (tensors only, no pickle)
    if cache.exists():
        stored = load_file(cache)
        base = [stored[str(i)] for i in range(len(jobs))]
    else:
        base = [gen(p, s) for p, s in jobs]
        save_file({str(i): t.contiguous() for i, t in enumerate(base)}, cache)
    for text in settings:
        st = B.parse_setting(text)
        t0 = time.perf_counter()
        h = pipe.enable_accel(st.strategy, **st.config)
        try:
            outs = [gen(p, s) for p, s in jobs]
            stats = h.stats
        finally:
            pipe.disable_accel()
        mse = torch.cat([((o - b) ** 2).flatten(-3).mean(-1).flatten() for o, b in zip(outs, base)])
        ss = torch.cat([B.ssim(o, b).flatten() for o, b in zip(outs, base)])
        row = dict(
            set=name, setting=text, computed=statistics.mean(stats["density_per_run"][-len(jobs):]),
            work=statistics.mean(stats["work_per_run"][-len(jobs):]), psnr=B._psnr_of(float(mse.mean())),
            psnr_min=B._psnr_of(float(mse.max())), ssim=float(ss.mean()),
            gen_psnr=[round(B._psnr_of(float(((o - b) ** 2).mean())), 2) for o, b in zip(outs, base)],
        )
        print(f"{name:5s} {row['computed']:6.1%} work {row['work']:6.1%} psnr {row['psnr']:6.2f} min "
              f"{row['psnr_min']:6.2f} ssim {row['ssim']:.4f} {time.perf_counter() - t0:5.0f}s  {text}\n"
              f"      per generation: {row['gen_psnr']}", flush=True)
        with open(OUT / "probes.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
