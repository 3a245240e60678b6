"""Robot-task episodes in real time: the simulator advances one control step every ``1 / control_hz`` seconds.

The bridge between :mod:`dynaccel.zoo.robot_tasks` and the asynchronous chunk executor's loop
(:func:`dynaccel.hf_integration.async_chunks.run_realtime`): :class:`SimEnv` gives the loop ``observe()`` (renders
the frame the policy sees, only when the executor asks for one) and ``step(action)``. :func:`run_episode` runs one
episode synchronously (the robot stands still while the policy thinks) or with the executor (the next chunk is
computed in a worker thread while the current one executes) and returns what the VLA bench reports.

    from dynaccel.zoo import realtime, robot_tasks as rt
    from dynaccel.zoo.train_tiny_pi0 import Pi0Policy
    policy = Pi0Policy.from_pretrained(dynaccel.zoo.path("tiny-pi0"))
    with rt.RobotSim() as sim:
        sync = realtime.run_episode(policy, sim, "push", rt.HELDOUT_START, control_hz=100)
        fast = realtime.run_episode(policy, sim, "push", rt.HELDOUT_START, control_hz=100,
                                    executor={"chunk_threshold": 0.5})
    print(sync["control_hz"], fast["control_hz"])
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

import numpy as np

from ..hf_integration.async_chunks import RealClock
from . import robot_tasks as rt


class CameraClock(RealClock):
    """Wall time with the simulated camera's rendering taken off: a robot's camera captures in parallel with
    control, while MuJoCo's OSMesa renders a frame on the CPU in about 10 ms (longer than a control period at
    100 Hz), so the frames are free on this clock, in the synchronous baseline and in the executor alike."""

    def __init__(self):
        self.paused = 0.0

    def now(self) -> float:
        return super().now() - self.paused


class SimEnv:
    """One episode of a :class:`~dynaccel.zoo.robot_tasks.RobotSim` in the loop's protocol."""

    def __init__(self, sim: "rt.RobotSim", task_name: str, seed: int, clock: CameraClock | None = None):
        self.sim = sim
        self.clock = clock
        self.limit = rt.task(task_name).max_steps
        self.observation = sim.reset(task_name, seed, render=False)
        self.steps = 0
        self.success = False

    def observe(self) -> "rt.RobotObservation":
        t0 = time.perf_counter()
        frame = self.sim.render()
        if self.clock is not None:
            self.clock.paused += time.perf_counter() - t0
        return dataclasses.replace(self.observation, frame=frame)

    def step(self, action) -> tuple[bool, bool]:
        self.observation, success, done = self.sim.step(np.asarray(action, np.float64)[: rt.ACTION_DIM])
        self.steps += 1
        self.success = self.success or success
        return success, done or self.steps >= self.limit


class _Timed:
    """The policy, with the wall time of every call recorded (calls may come from the executor's worker)."""

    def __init__(self, policy: Callable):
        self.policy = policy
        self.seconds: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, observation):
        t0 = time.perf_counter()
        out = self.policy(observation)
        with self._lock:
            self.seconds.append(time.perf_counter() - t0)
        return out


def run_episode(policy: Callable, sim: "rt.RobotSim", task_name: str, seed: int, control_hz: float,
                executor: dict[str, Any] | None = None, worker_policy: Callable | None = None) -> dict[str, Any]:
    """One episode at ``control_hz`` in real time. ``executor``: options of
    :class:`~dynaccel.hf_integration.async_chunks.AsyncChunkExecutor` (``chunk_threshold``, ``aggregate``,
    ``blend``, ``skip_similar`` on the proprio), or None for synchronous execution. ``worker_policy``: what the
    executor calls instead of ``policy`` (e.g. a :class:`~dynaccel.hf_integration.async_chunks.ProcessPolicy`
    running the same policy in its own process).

    Time is :class:`CameraClock` time (wall time less the frames' rendering). Returns ``success``, ``steps``,
    ``seconds`` (waits included), ``control_hz`` (steps / seconds),
    ``actions`` (executed, clipped), ``policy_seconds`` (each inference), ``inferences``, ``waits``."""
    from ..hf_integration.async_chunks import AsyncChunkExecutor, run_realtime

    clock = CameraClock()
    env = SimEnv(sim, task_name, seed, clock)
    timed = _Timed(policy)
    if executor is None:
        result = run_realtime(timed, env, control_hz=control_hz, max_steps=env.limit, synchronous=True,
                              clock=clock)
    else:
        options = dict(executor)
        if float(options.get("skip_similar", 0.0) or 0.0) > 0:
            options.setdefault("similarity_key", lambda o: o.proprio)
        if worker_policy is not None:
            timed = _Timed(worker_policy)
        with AsyncChunkExecutor(timed, clock=clock, **options) as ex:
            result = run_realtime(ex, env, control_hz=control_hz, max_steps=env.limit)
    return {"success": bool(env.success), "steps": int(result.steps), "seconds": float(result.seconds),
            "control_hz": float(result.control_hz_reached), "actions": np.clip(result.actions, -1.0, 1.0),
            "policy_seconds": list(timed.seconds), "inferences": int(result.inferences), "waits": int(result.waits)}
