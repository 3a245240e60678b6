"""The asynchronous chunk executor (``dynaccel.hf_integration.async_chunks``), as a specification.

A toy robot: a point on a line (``PointEnv``), observed as ``{"position", "step"}``. The toy chunking policy returns
``k`` actions ``[velocity, s + j]`` for the observation of step ``s``: the second column numbers the control step
each action was computed for, so the executed sequence shows whether step ``i`` got an action meant for step ``i``
(no gap, no duplicate, no shift). Timing is only asserted under the SimulatedClock; control periods and latencies
are powers of two so the simulated times are exact.
"""

import threading

import numpy as np
import pytest
import torch

from dynaccel.hf_integration.async_chunks import (
    WORKER_THREAD_PREFIX,
    AsyncChunkExecutor,
    RealClock,
    SimulatedClock,
    as_action_chunk,
    run_realtime,
)


class PointEnv:
    def __init__(self, goal=1.0, stop_on_success=False):
        self.x, self.t, self.goal, self.stop_on_success = 0.0, 0, goal, stop_on_success
        self.observed = 0

    def observe(self):
        self.observed += 1
        return {"position": np.array([self.x]), "step": self.t}

    def step(self, action):
        self.x += float(action[0])
        self.t += 1
        success = abs(self.x - self.goal) < 0.05
        return success, success and self.stop_on_success


def numbered_policy(k, speed=0.05, calls=None):
    """``k`` actions toward the goal, each tagged with the step it was computed for."""

    def policy(obs):
        if calls is not None:
            calls.append((obs["step"], threading.current_thread().name))
        v = speed if obs["position"][0] < 1.0 else -speed
        return np.array([[v, obs["step"] + j] for j in range(k)])

    return policy


def counting_policy(k):
    """Chunk n (n = 0, 1, ...) holds the value 10 * (n + 1) in column 0, the step numbers in column 1."""
    n = [0]

    def policy(obs):
        n[0] += 1
        return np.array([[10.0 * n[0], obs["step"] + j] for j in range(k)])

    return policy


def assert_each_step_once_in_order(result):
    tags = result.actions[:, 1]
    np.testing.assert_allclose(tags, np.arange(result.steps), atol=1e-9)


# ----------------------------------------------------------------------------------------- order, determinism


@pytest.mark.parametrize("aggregate", ["weighted_average", "latest", "oldest"])
@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 1.0])
def test_every_step_executes_its_own_action_once_in_order_and_runs_repeat_exactly(aggregate, threshold):
    def run():
        latency = lambda obs: 0.0625 * (1 + obs["step"] % 3)  # 1 to 3 control periods, varying  # noqa: E731
        ex = AsyncChunkExecutor(numbered_policy(8), chunk_threshold=threshold, aggregate=aggregate, blend=0.3,
                                clock=SimulatedClock(), latency=latency)
        return run_realtime(ex, PointEnv(), control_hz=16, max_steps=50)

    first, second = run(), run()
    assert first.steps == 50
    assert_each_step_once_in_order(first)
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.step_times, second.step_times)
    assert first.seconds == second.seconds and first.stats == second.stats
    assert np.all(np.diff(first.step_times) >= 1 / 16)  # one action per control period at most


def test_the_loop_stops_when_the_env_says_done():
    ex = AsyncChunkExecutor(numbered_policy(8, speed=0.25), clock=SimulatedClock(), latency=0.125)
    result = run_realtime(ex, PointEnv(goal=1.0, stop_on_success=True), control_hz=8, max_steps=100)
    assert result.success and result.steps == 4  # 4 x 0.25 reaches the goal
    assert_each_step_once_in_order(result)


# -------------------------------------------------------------------------------------------- speed vs sync


def test_async_never_waits_after_the_first_chunk_and_beats_the_synchronous_baseline_by_the_expected_ratio():
    k, hz, latency, g, n = 8, 8, 0.25, 0.5, 64  # latency = 2 control periods < g * k = 4 periods left in the queue
    period = 1 / hz
    env_async, env_sync = PointEnv(), PointEnv()
    ex = AsyncChunkExecutor(numbered_policy(k), chunk_threshold=g, clock=SimulatedClock(), latency=latency)
    fast = run_realtime(ex, env_async, control_hz=hz, max_steps=n)
    slow = run_realtime(ex, env_sync, control_hz=hz, max_steps=n, synchronous=True)

    # synchronous: per chunk, the policy's latency (robot idle) then k actions
    expected_sync = (n / k) * (latency + k * period)  # 10.0 s
    # asynchronous: only the first chunk is waited for; the later ones arrive while the queue still runs
    expected_async = latency + n * period  # 8.25 s
    assert slow.seconds == pytest.approx(expected_sync) and fast.seconds == pytest.approx(expected_async)
    assert fast.control_hz_reached / slow.control_hz_reached == pytest.approx(expected_sync / expected_async)
    assert fast.control_hz_reached == pytest.approx(n / expected_async)
    assert fast.waits == 1 and fast.wait_seconds == pytest.approx(latency)
    assert slow.waits == n // k and slow.inferences == n // k and slow.wait_seconds == pytest.approx(n / k * latency)
    np.testing.assert_allclose(np.diff(fast.step_times), period)  # no pause after the first chunk
    # a request whenever the queue is down to g*k = 4 actions: steps 0, 4, 8, ..., 60
    assert fast.inferences == fast.stats.chunks_received == 16
    assert env_async.observed == fast.stats.observations == 16  # observed only when sending
    assert_each_step_once_in_order(fast)
    assert_each_step_once_in_order(slow)


def test_a_latency_longer_than_the_queue_makes_the_async_loop_wait():
    # latency = 6 periods > the 4 left when the request goes: the robot waits 2 periods for each chunk after the first
    ex = AsyncChunkExecutor(numbered_policy(8), chunk_threshold=0.5, clock=SimulatedClock(), latency=0.75)
    result = run_realtime(ex, PointEnv(), control_hz=8, max_steps=24)
    assert result.waits > 1 and result.stats.actions_dropped > 0
    assert_each_step_once_in_order(result)


# ----------------------------------------------------------------------------------------------- merging


@pytest.mark.parametrize("aggregate, expected", [
    # chunk 1 (value 10) for steps 0-3; at step 2 (2 left = g*k) chunk 2 (value 20, steps 2-5) is requested and
    # arrives at step 3: step 2 is gone (dropped), step 3 is merged, 4-5 appended; chunk 3 (30, steps 4-7) likewise
    ("weighted_average", [10, 10, 10, 0.75 * 10 + 0.25 * 20, 20, 0.75 * 20 + 0.25 * 30]),
    ("latest", [10, 10, 10, 20, 20, 30]),
    ("oldest", [10, 10, 10, 10, 20, 20]),
])
def test_overlapping_steps_are_merged_as_documented_and_past_steps_dropped(aggregate, expected):
    ex = AsyncChunkExecutor(counting_policy(4), chunk_threshold=0.5, aggregate=aggregate, blend=0.25,
                            clock=SimulatedClock(), latency=1.0)
    result = run_realtime(ex, PointEnv(), control_hz=1, max_steps=6)
    assert result.actions[:, 0].tolist() == expected
    assert_each_step_once_in_order(result)
    assert result.stats.actions_dropped == 2 and result.stats.actions_merged == 2
    assert result.inferences == 3 and result.stats.chunks_received == 3
    assert result.step_times.tolist() == [1, 2, 3, 4, 5, 6]  # waited 1 s for the first chunk only


def test_step_by_step_api_merges_and_returns_none_until_the_first_chunk_arrives():
    clock = SimulatedClock()
    env = PointEnv()
    ex = AsyncChunkExecutor(counting_policy(4), blend=0.5, clock=clock, latency=0.5)
    assert ex.step(env.observe, 0) is None and ex.stats.waits == 1
    assert ex.step(env.observe, 0) is None and ex.stats.waits == 1  # the same wait, counted once
    clock.advance(0.5)
    assert ex.step(env.observe, 0).tolist() == [10, 0]
    assert ex.stats.wait_seconds == 0.5 and ex.pending == 3 and ex.chunk_size == 4
    with pytest.raises(ValueError, match="step 0 was already executed"):
        ex.step(env.observe, 0)
    # skipping ahead drops the skipped steps' actions; 1 left <= g*k = 2: a request goes at step 3
    assert ex.step(env.observe, 3).tolist() == [10, 3]
    assert ex.pending == 0 and ex.stats.chunks_requested == 2


# -------------------------------------------------------------------------------------- near-duplicates


def still_policy(k, calls):
    def policy(obs):
        calls.append(obs["step"])
        return np.array([[0.0, obs["step"] + j] for j in range(k)])  # the point never moves

    return policy


def test_near_duplicate_observations_are_skipped_but_not_when_the_queue_is_empty():
    calls = []
    ex = AsyncChunkExecutor(still_policy(4, calls), chunk_threshold=0.5, skip_similar=0.1,
                            similarity_key="position", clock=SimulatedClock(), latency=1.0)
    result = run_realtime(ex, PointEnv(), control_hz=1, max_steps=6)
    # steps 2 and 3 want a new chunk but see the same position: skipped; at step 4 the queue is empty: it must go
    assert calls == [0, 4]
    assert result.stats.observations_skipped == 2 and result.stats.observations == 4
    assert result.waits == 2  # for the first chunk and for the must-go one
    assert_each_step_once_in_order(result)

    calls.clear()
    plain = AsyncChunkExecutor(still_policy(4, calls), chunk_threshold=0.5, clock=SimulatedClock(), latency=1.0)
    result = run_realtime(plain, PointEnv(), control_hz=1, max_steps=6)
    assert calls == [0, 2, 4] and result.stats.observations_skipped == 0 and result.waits == 1


def test_observations_that_moved_farther_than_the_threshold_are_sent():
    calls = []

    def policy(obs):
        calls.append(obs["step"])
        return np.array([[0.25, obs["step"] + j] for j in range(4)])

    ex = AsyncChunkExecutor(policy, skip_similar=0.1, similarity_key=lambda obs: obs["position"] * 1.0,
                            clock=SimulatedClock(), latency=1.0)
    result = run_realtime(ex, PointEnv(goal=100.0), control_hz=1, max_steps=6)
    assert calls == [0, 2, 4] and result.stats.observations_skipped == 0


def test_similarity_key_missing_from_the_observation_is_named():
    ex = AsyncChunkExecutor(numbered_policy(4), skip_similar=0.1, similarity_key="proprio", clock=SimulatedClock())
    with pytest.raises(ValueError, match="similarity_key='proprio' is not in the observation.*position, step"):
        ex.step(PointEnv().observe, 0)


# ------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("returned, message", [
    (None, r"the policy returned no action chunk \(got None\); a chunking policy must return an array of shape"),
    (np.zeros((0, 2)), r"empty action chunk \(shape \(0, 2\)\)"),
    (np.zeros((2, 3, 4)), r"array of shape \(2, 3, 4\); a chunking policy must return an array of shape \(k >= 1"),
    (np.zeros(()), r"array of shape \(\)"),
    ("left", r"returned str, not numbers"),
    (np.array([[0.1], [np.nan]]), r"non-finite actions \(NaN or inf in 1 of 2 actions\)"),
], ids=["None", "empty", "3-D", "scalar", "str", "NaN"])
@pytest.mark.parametrize("mode", ["simulated", "thread"])
def test_a_policy_returning_no_chunk_raises_saying_what_it_returned(returned, message, mode):
    clock = SimulatedClock() if mode == "simulated" else RealClock()
    with AsyncChunkExecutor(lambda obs: returned, clock=clock) as ex:
        with pytest.raises(ValueError, match=message):
            ex.wait_for_action(PointEnv().observe, 0)


def test_one_dimensional_outputs_are_chunks_of_one_and_torch_tensors_are_accepted():
    assert as_action_chunk(np.array([1.0, 2.0])).shape == (1, 2)
    ex = AsyncChunkExecutor(lambda obs: torch.tensor([[0.5, obs["step"]], [0.5, obs["step"] + 1]]),
                            clock=SimulatedClock(), latency=0.0)
    result = run_realtime(ex, PointEnv(), control_hz=4, max_steps=5)
    assert result.actions.dtype == np.float64
    assert_each_step_once_in_order(result)


def test_a_change_of_action_width_within_an_episode_raises():
    widths = iter([2, 3])
    ex = AsyncChunkExecutor(lambda obs: np.zeros((2, next(widths))), chunk_threshold=1.0, clock=SimulatedClock(),
                            latency=0.0)
    with pytest.raises(ValueError, match="actions of width 3, but earlier chunks had 2"):
        run_realtime(ex, PointEnv(), control_hz=1, max_steps=4)


@pytest.mark.parametrize("options, message", [
    ({"chunk_threshold": 1.5}, r"chunk_threshold=1.5 is out of range; accepted: a number in \[0, 1\]"),
    ({"chunk_threshold": "half"}, r"chunk_threshold='half' is out of range"),
    ({"aggregate": "mean"}, r"unknown aggregate 'mean'; accepted: weighted_average, latest, oldest"),
    ({"blend": -0.1}, r"blend=-0.1 is out of range; accepted: a number in \[0, 1\]"),
    ({"skip_similar": -1}, r"skip_similar=-1 is out of range; accepted: a number >= 0"),
    ({"similarity_key": 3}, r"similarity_key=3 is not accepted; accepted: None, a mapping key"),
    ({"mode": "process"}, r"unknown mode 'process'; accepted: thread, sync"),
    ({"clock": "wall"}, r"clock='wall' is not a clock"),
    ({"latency": 0.1}, r"latency=0.1 only applies with a SimulatedClock"),
    ({"latency": -1.0, "clock": SimulatedClock()}, r"latency=-1.0 is not accepted; accepted: seconds >= 0"),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_bad_options_raise_naming_the_value_and_what_is_accepted(options, message):
    with pytest.raises(ValueError, match=message):
        AsyncChunkExecutor(numbered_policy(4), **options)


def test_bad_loop_arguments_raise():
    ex = AsyncChunkExecutor(numbered_policy(4), clock=SimulatedClock())
    with pytest.raises(ValueError, match=r"control_hz=0 is not accepted; accepted: a frequency > 0"):
        run_realtime(ex, PointEnv(), control_hz=0, max_steps=4)
    with pytest.raises(ValueError, match=r"max_steps=0 is not accepted"):
        run_realtime(ex, PointEnv(), control_hz=4, max_steps=0)
    with pytest.raises(ValueError, match=r"env object has no observe\(\)"):
        run_realtime(ex, object(), control_hz=4, max_steps=4)
    with pytest.raises(ValueError, match="differs from the executor's clock"):
        run_realtime(ex, PointEnv(), control_hz=4, max_steps=4, clock=SimulatedClock())
    with pytest.raises(ValueError, match="step_index=-1 is not accepted"):
        ex.step(PointEnv().observe, -1)


# ------------------------------------------------------------------------------- the worker thread, real time


def test_thread_mode_in_real_time_keeps_the_order_and_runs_the_policy_in_the_worker():
    calls = []
    with AsyncChunkExecutor(numbered_policy(6, calls=calls), mode="thread") as ex:
        result = run_realtime(ex, PointEnv(), control_hz=200, max_steps=30)
    assert result.steps == 30
    assert_each_step_once_in_order(result)
    # close() may cancel a request the worker had not started yet
    assert result.stats.chunks_received <= len(calls) <= result.inferences and len(calls) >= 30 // 6
    assert all(name.startswith(WORKER_THREAD_PREFIX) for _, name in calls)
    assert [step for step, _ in calls] == sorted(step for step, _ in calls)


def test_a_bare_policy_runs_async_in_a_thread_or_as_the_synchronous_baseline():
    for synchronous in (False, True):
        calls = []
        result = run_realtime(numbered_policy(5, calls=calls), PointEnv(), control_hz=200, max_steps=20,
                              synchronous=synchronous)
        assert_each_step_once_in_order(result)
        if synchronous:  # observe, infer, execute the whole chunk: every 5 steps, in the caller's thread
            assert [s for s, _ in calls] == [0, 5, 10, 15] and result.waits == 4
            assert all(name == threading.current_thread().name for _, name in calls)
    assert not any(t.name.startswith(WORKER_THREAD_PREFIX) for t in threading.enumerate())  # closed by the loop


def test_the_queue_keeps_running_while_the_worker_computes_the_next_chunk():
    release = threading.Event()

    def policy(obs):
        if obs["step"] > 0:
            assert release.wait(10), "never released"
        return np.array([[0.0, obs["step"] + j] for j in range(4)])

    def observe_at(i):
        return lambda: {"position": np.zeros(1), "step": i}

    with AsyncChunkExecutor(policy, chunk_threshold=0.5, mode="thread") as ex:
        assert ex.wait_for_action(observe_at(0), 0)[1] == 0
        assert ex.step(observe_at(1), 1)[1] == 1
        assert ex.step(observe_at(2), 2)[1] == 2  # 2 left = g*k: the next request goes; the policy now blocks
        assert ex.stats.chunks_requested == 2
        assert ex.step(observe_at(3), 3)[1] == 3  # served from the queue while the worker is busy
        assert ex.step(observe_at(4), 4) is None and ex.stats.waits == 2  # step 0 waited too
        release.set()
        assert ex.wait_for_action(observe_at(4), 4)[1] == 4
        assert ex.stats.actions_dropped == 2  # the new chunk's steps 2 and 3 were already executed


def test_the_module_docstring_example_runs():
    import doctest

    from dynaccel.hf_integration import async_chunks

    assert doctest.testmod(async_chunks).failed == 0


def _workers():
    return [t for t in threading.enumerate() if t.name.startswith(WORKER_THREAD_PREFIX) and t.is_alive()]


def test_close_stops_the_worker_and_the_executor():
    assert not _workers()
    ex = AsyncChunkExecutor(numbered_policy(4), mode="thread")
    ex.wait_for_action(PointEnv().observe, 0)
    assert len(_workers()) == 1
    ex.close()
    assert not _workers()
    with pytest.raises(RuntimeError, match="closed"):
        ex.step(PointEnv().observe, 1)
    with AsyncChunkExecutor(numbered_policy(4)) as ex:
        ex.wait_for_action(PointEnv().observe, 0)
    assert not _workers()


def test_a_policy_exception_in_the_worker_reaches_the_caller_with_its_message():
    def broken(obs):
        raise RuntimeError("wrist camera unplugged")

    with AsyncChunkExecutor(broken, mode="thread") as ex:
        with pytest.raises(RuntimeError, match="wrist camera unplugged"):
            run_realtime(ex, PointEnv(), control_hz=200, max_steps=5)


def test_reset_starts_a_new_episode():
    ex = AsyncChunkExecutor(numbered_policy(4), clock=SimulatedClock(), latency=0.25)
    env = PointEnv()
    ex.wait_for_action(env.observe, 0)
    ex.step(env.observe, 1)
    ex.reset()
    assert ex.pending == 0 and ex.stats.chunks_requested == 0 and ex.chunk_size is None
    assert ex.wait_for_action(PointEnv().observe, 0).tolist() == [0.05, 0]  # step 0 again, from a new chunk


# ------------------------------------------------------------------------------------------------- the docs


def test_the_docs_example_runs_and_prints_what_the_docs_show(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "vla_async.md").read_text()
    example = text.split("## Example\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    shown = re.search(r"It prints:\n\n```\n(.*?)```", example, re.S).group(1)
    exec(compile(code, "docs/vla_async.md", "exec"), {})
    assert capsys.readouterr().out == shown


# --------------------------------------------------------------------------------------- the process policy's pipe
def scaled_policy(scale, offset=(0.0, 0.0)):
    """A module-level factory for ProcessPolicy: its policy returns a (2, 2) chunk from the observation."""

    def policy(observation):
        x = np.asarray(observation["x"], np.float64)
        return np.stack([x * scale + np.asarray(offset), x * -scale]).astype(np.float32)

    return policy


def test_the_pipe_round_trips_arrays_containers_and_the_packages_dataclasses_without_pickle():
    import io

    from dynaccel.hf_integration import async_chunks as ac
    from dynaccel.zoo import robot_tasks as rt

    obs = rt.RobotObservation(task="push", seed=3, step=7, instruction="push the puck to the goal",
                              proprio=np.arange(4, dtype=np.float32), frame=np.zeros((64, 64, 3), np.uint8),
                              state=np.linspace(0, 1, 39))
    message = {"obs": obs, "pair": (1, "a", None), "nested": [{"k": np.int16(3)}], 5: "int key", "nan": float("nan"),
               "bools": np.array([True, False]), "empty": np.zeros((0, 4), np.float16), "t": torch.ones(2, 3)}
    stream = io.BytesIO()
    ac._send_frame(stream, message)
    assert b"pickle" not in stream.getvalue() and b"\x80\x05" not in stream.getvalue()[:2]
    stream.seek(0)
    back = ac._recv_frame(stream)
    assert isinstance(back["obs"], rt.RobotObservation) and back["obs"].instruction == obs.instruction
    for name in ("proprio", "frame", "state"):
        got, want = getattr(back["obs"], name), getattr(obs, name)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert back["pair"] == (1, "a", None) and back["nested"] == [{"k": 3}] and back[5] == "int key"
    assert np.isnan(back["nan"]) and back["bools"].dtype == bool and back["empty"].shape == (0, 4)
    assert np.array_equal(back["t"], np.ones((2, 3), np.float32))
    with pytest.raises(EOFError):
        ac._recv_frame(io.BytesIO(stream.getvalue()[:-3]))


@pytest.mark.parametrize("value, message", [
    (np.array([object()]), "dtype object"),
    (threading.Lock(), "cannot be sent"),
    (PointEnv(), "PointEnv cannot be sent"),
    (SimulatedClock(), "cannot be sent"),
])
def test_the_pipe_refuses_what_it_cannot_send_and_names_it(value, message):
    import io

    from dynaccel.hf_integration import async_chunks as ac

    with pytest.raises(TypeError, match=message):
        ac._send_frame(io.BytesIO(), {"x": value})


def test_the_pipe_builds_only_the_packages_own_dataclasses():
    import io
    import json

    from dynaccel.hf_integration import async_chunks as ac

    head = json.dumps({"__dataclass__": "subprocess:Popen", "fields": {"args": ["true"]}}).encode()
    frame = len(head).to_bytes(8, "little") + head + (0).to_bytes(4, "little")
    with pytest.raises(ValueError, match="refuses to build subprocess:Popen"):
        ac._recv_frame(io.BytesIO(frame))


def test_a_process_policy_is_named_not_pickled_and_answers_from_its_own_process():
    import functools
    import os

    from dynaccel.hf_integration.async_chunks import ProcessPolicy

    local = scaled_policy(2.0, offset=(1.0, 0.5))
    with ProcessPolicy(functools.partial(scaled_policy, 2.0, offset=(1.0, 0.5))) as remote:
        assert remote.pid != os.getpid()
        x = np.array([0.25, -1.0])
        np.testing.assert_array_equal(remote({"x": x}), local({"x": x}))
        with pytest.raises(RuntimeError, match="the policy process failed: KeyError"):
            remote({"y": x})
        np.testing.assert_array_equal(remote({"x": x}), local({"x": x}))  # still serving after a failure
    with ProcessPolicy(f"{__name__}:make_doubling_policy") as remote:
        np.testing.assert_array_equal(remote({"x": np.ones(2)}), np.full((2, 2), 2.0, np.float32))
    with pytest.raises(ValueError, match="cannot be sent to another process"):
        ProcessPolicy(lambda: local)
    with pytest.raises(ValueError, match="its arguments must be"):
        ProcessPolicy(functools.partial(scaled_policy, threading.Lock()))
    with pytest.raises(ValueError, match="'module:function'"):
        ProcessPolicy("no_colon_here")
    with pytest.raises(RuntimeError, match="could not build the policy: .*ModuleNotFoundError"):
        ProcessPolicy("no_such_module_xyz:factory")


def make_doubling_policy():
    return lambda observation: np.stack([np.asarray(observation["x"]) * 2] * 2).astype(np.float32)
