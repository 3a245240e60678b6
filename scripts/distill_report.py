"""A few-step student against its teacher on held-out prompts: speed, PSNR against the teacher, prompt adherence.

    python scripts/distill_report.py --student zoo/tiny-wan-4step --teacher tiny-wan --seeds 0,1 --out DIR

Rows: the teacher at its default steps (the reference), the teacher at the student's step count with its own
scheduler and with UniPC (what taking fewer steps gives without training), and the student at its own settings
(``dynaccel_generation.json``). Columns: seconds per generation (median of --repeats timed passes after a warm-up,
one torch thread unless --threads), speedup, PSNR and SSIM against the teacher's default-steps output for the same
prompt and seed, and prompt adherence read by the zoo's analysers (``dynaccel.zoo.adherence``: colour and direction
for tiny-wan, colour, position and size for tiny-flux).
Prompts: the student's held-out prompts (``distill_info.json``), never distilled on. Writes ``report.json`` and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main(argv=None):
    from dynaccel import zoo
    from dynaccel.hf_integration import bench as b

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", required=True, help="the student folder (written by dynaccel distill)")
    ap.add_argument("--teacher", default="tiny-wan", help="zoo name or pipeline folder of the teacher")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="folder for report.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    student_dir = Path(args.student)
    info = json.loads((student_dir / "distill_info.json").read_text())
    prompts = info["heldout_prompts"] or info["settings"]["prompts"][:4]
    seeds = [int(s) for s in args.seeds.split(",")]
    teacher_dir = b.resolve_model(args.teacher)
    teacher_call = b.generation_defaults(args.teacher, teacher_dir)
    student_call = json.loads((student_dir / "dynaccel_generation.json").read_text())
    n = int(student_call["num_inference_steps"])

    scorer = zoo.adherence(args.teacher) if args.teacher in zoo.available() else None
    teacher = b.load_pipeline(teacher_dir)
    student = b.load_pipeline(student_dir)
    own = teacher.scheduler
    rows = [("teacher", f"teacher {teacher_call['num_inference_steps']} steps", teacher, teacher_call, "default"),
            ("teacher", f"teacher {n} steps", teacher, {**teacher_call, "num_inference_steps": n}, "default"),
            ("teacher", f"teacher {n} steps unipc", teacher, {**teacher_call, "num_inference_steps": n}, "unipc"),
            ("student", f"student {n} steps ({info['settings']['method']})", student, student_call, "default")]

    def generate(pipe, call, prompt, seed):
        out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="pt", **call)
        return b.frames(out)

    results = []
    reference = {}
    for kind, label, pipe, call, solver in rows:
        pipe.scheduler = b.solver_scheduler(pipe, solver) if solver != "default" else (
            own if pipe is teacher else pipe.scheduler)
        generate(pipe, call, prompts[0], seeds[0])  # warm-up
        times, outs = [], {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for p in prompts:
                for s in seeds:
                    outs[(p, s)] = generate(pipe, call, p, s)
            times.append((time.perf_counter() - t0) / (len(prompts) * len(seeds)))
        if not reference:
            reference = outs
        mse = torch.stack([((outs[k] - reference[k]) ** 2).mean() for k in outs])
        ssim = torch.stack([b.ssim(outs[k], reference[k]).mean() for k in outs])
        hits: dict[str, list[bool]] = {}
        for (p, _), x in outs.items():
            frames = x[0].permute(0, 2, 3, 1).numpy()  # (F, H, W, C)
            for k, ok in (scorer(frames[0] if frames.shape[0] == 1 else frames, p) if scorer else {}).items():
                hits.setdefault(k, []).append(bool(ok))
        results.append({"row": label, "kind": kind, "time_s": statistics.median(times),
                        "psnr_db": b.psnr_of(float(mse.mean())), "ssim": float(ssim.mean()),
                        **{k: sum(v) / len(v) for k, v in hits.items()}})
        pipe.scheduler = own if pipe is teacher else pipe.scheduler
    base = results[0]["time_s"]
    criteria = [k for k in results[0] if k not in ("row", "kind", "time_s", "psnr_db", "ssim")]
    print(f"{'row':<34} {'s/gen':>7} {'speedup':>8} {'PSNR':>7} {'SSIM':>6}" + "".join(f" {k:>9}" for k in criteria))
    for r in results:
        r["speedup"] = base / r["time_s"]
        print(f"{r['row']:<34} {r['time_s']:>7.3f} {r['speedup']:>7.2f}x {r['psnr_db']:>7.2f} {r['ssim']:>6.3f}"
              + "".join(f" {r.get(k, 0):>9.0%}" for k in criteria))
    doc = {"student": str(student_dir), "teacher": args.teacher, "prompts": prompts, "seeds": seeds,
           "threads": args.threads, "repeats": args.repeats, "machine": b.machine(), "rows": results,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "zoo_models": zoo.available()}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.json").write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {Path(args.out) / 'report.json'}")


if __name__ == "__main__":
    main()
