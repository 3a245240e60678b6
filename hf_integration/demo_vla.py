"""The demo's robot tab: one rollout of a policy with full compute and one with a strategy, as two videos with their
numbers (success, steps, median policy latency per inference, speedup, jerk).

Both rollouts start from the same held-out episode (task and seed) and the policy's noise is seeded from it, so
the only difference is the strategy. Every control step is rendered for the video (the policy itself sees one
frame per inference, as in the bench).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import ConfigError

DEFAULT_POLICY = "tiny-pi0"
_POLICIES: dict[str, Any] = {}
_LOCK = threading.Lock()  # one policy model is shared: one rollout pair at a time


@dataclass
class Rollout:
    label: str
    success: bool
    steps: int
    latencies: list[float]
    frames: list[np.ndarray] = field(repr=False)
    actions: np.ndarray = field(repr=False)

    @property
    def latency_ms(self) -> float:
        return 1000 * statistics.median(self.latencies) if self.latencies else float("nan")


def available() -> str | None:
    """None when the robot tab can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("metaworld") is None:
        return "the robot tasks need Meta-World: pip install 'dynaccel[vla]'"
    from ..zoo import robot_tasks as rt

    if not rt.osmesa_available():
        return "headless rendering needs OSMesa: apt-get install -y libosmesa6"
    return None


def get_policy(model: str):
    from ..zoo import train_tiny_pi0 as tp
    from . import bench_vla as bv

    if model not in _POLICIES:
        _POLICIES[model] = tp.Pi0Policy.from_pretrained(str(bv.resolve_policy(model)))
    return _POLICIES[model]


def check_request(task: Any, seed: Any) -> tuple[str, int]:
    from ..zoo import robot_tasks as rt

    names = rt.TASK_NAMES
    if task not in names:
        raise ConfigError(f"task {task!r}; accepted: {', '.join(names)}")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ConfigError(f"seed {seed!r}; accepted: an integer >= {rt.HELDOUT_START} (a held-out episode)") from None
    try:
        rt.check_seed(seed, "heldout")
    except ValueError as exc:
        raise ConfigError(f"seed: {exc}; the demo runs held-out episodes") from None
    return task, seed


def rollout(policy, sim, task: str, seed: int, label: str, reset: Callable[[], None]) -> Rollout:
    """One closed-loop episode with every step rendered."""
    from ..zoo import robot_tasks as rt

    limit = rt.task(task).max_steps
    obs = sim.reset(task, seed, render=True)
    frames, actions, latencies = [obs.frame], [], []
    success = done = False
    reset()
    while not done and len(actions) < limit:
        t0 = time.perf_counter()
        chunk = np.asarray(policy(obs), np.float32).reshape(-1, rt.ACTION_DIM)
        latencies.append(time.perf_counter() - t0)
        for a in chunk:
            obs, success, done = sim.step(a, render=True)
            frames.append(obs.frame)
            actions.append(np.clip(a, -1, 1))
            if done or len(actions) >= limit:
                break
    return Rollout(label, bool(success), len(actions), latencies, frames, np.asarray(actions, np.float32))


def compare(model: str, task: str, seed: int, setting: str, progress: Callable[[float, str], None] | None = None):
    """(full compute rollout, accelerated rollout, the row's label) for one held-out episode."""
    import dynaccel
    from ..zoo import robot_tasks as rt
    from . import bench_vla as bv

    task, seed = check_request(task, seed)
    spec = bv.parse_row(setting or "full")
    if spec.executor is not None:
        raise ConfigError("the robot tab compares strategies on the policy; the async executor is measured by "
                          "dynaccel bench (its real-time loop)")
    progress = progress or (lambda f, d: None)
    with _LOCK:
        policy = get_policy(model)
        dynaccel.disable_accel(policy.model)
        with rt.RobotSim() as sim:
            progress(0.05, "full compute")
            base = rollout(policy, sim, task, seed, "full compute", lambda: None)
            handles = bv._enable(policy.model, spec)
            try:
                progress(0.5, spec.label)
                fast = rollout(policy, sim, task, seed, spec.label, lambda: [h.reset() for h in handles])
            finally:
                dynaccel.disable_accel(policy.model)
    progress(1.0, "done")
    return base, fast


def write_video(r: Rollout, folder: Path, stem: str, scale: int = 4) -> Path:
    """The rollout's frames as an animated GIF (upscaled), with a green or red border on the last frame."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in r.frames]
    last = np.asarray(frames[-1]).copy()
    color = (40, 180, 60) if r.success else (200, 40, 40)
    last[:4], last[-4:], last[:, :4], last[:, -4:] = color, color, color, color
    frames[-1] = Image.fromarray(last)
    path = folder / f"{stem}.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return path


def results_markdown(base: Rollout, fast: Rollout, task: str, seed: int) -> str:
    from . import bench_vla as bv

    def row(r: Rollout) -> str:
        speed = base.latency_ms / r.latency_ms if r.latency_ms > 0 else float("nan")
        return (f"| {r.label} | {'yes' if r.success else 'no'} | {r.steps} | {len(r.latencies)} | "
                f"{r.latency_ms:.2f} | {speed:.2f}x | {bv.jerk(r.actions):.4f} |")

    return "\n".join([
        f"**{task}**, held-out seed {seed}: one episode each (success rates over many episodes: `dynaccel bench "
        "--model tiny-pi0`).",
        "",
        "| setting | success | steps | inferences | median latency (ms) | speedup | jerk |",
        "|---|---|---|---|---|---|---|",
        row(base), row(fast)])


def metrics(base: Rollout, fast: Rollout) -> dict[str, Any]:
    from . import bench_vla as bv

    return {r.label: {"success": r.success, "steps": r.steps, "inferences": len(r.latencies),
                      "latency_ms": round(r.latency_ms, 3), "jerk": round(bv.jerk(r.actions), 5)}
            for r in (base, fast)}
