"""Asynchronous chunked execution for action-chunking robot policies (the SmolVLA-style async inference idea).

A chunking policy maps one observation to ``k`` actions. Run synchronously, the robot stands still while the policy
thinks, then executes the whole chunk. :class:`AsyncChunkExecutor` computes the next chunk while the current one
executes: when the actions still queued for the current step and later drop to ``chunk_threshold * k`` or fewer, it
takes a new observation and sends it to the policy. A chunk computed from the observation of control step ``s``
holds the actions of steps ``s, s+1, ...``; when it arrives, the actions of steps already executed are dropped and
those overlapping the queue are merged (``aggregate``). An observation whose ``similarity_key`` vector is within
``skip_similar`` (L2) of the last one sent is not sent, unless the queue is empty.

Every action is indexed by its control step, so the executed sequence has no gap and no duplicate: step ``i`` gets
exactly one action, taken from the chunk(s) that cover it.

Time comes from a clock. :class:`RealClock` is wall time and the policy runs in a worker thread (``mode="thread"``)
or inline (``mode="sync"``). With a :class:`SimulatedClock` the policy is called inline, but its chunk only
becomes available ``latency`` simulated seconds later, which makes whole runs deterministic.

    >>> import numpy as np
    >>> from dynaccel.hf_integration.async_chunks import AsyncChunkExecutor, SimulatedClock, run_realtime
    >>> class Line:  # a point on a line; observing "renders" its position
    ...     def __init__(self): self.x = 0.0
    ...     def observe(self): return {"position": np.array([self.x])}
    ...     def step(self, action):
    ...         self.x += float(action[0]); return abs(self.x - 1.0) < 0.05, False
    >>> policy = lambda obs: np.full((10, 1), 0.02)  # 10 actions of +0.02
    >>> ex = AsyncChunkExecutor(policy, clock=SimulatedClock(), latency=0.03)
    >>> result = run_realtime(ex, Line(), control_hz=100, max_steps=50)
    >>> result.steps, round(result.seconds, 2), result.waits
    (50, 0.53, 1)

This module is a surface-level tool: numpy and the standard library only (torch tensors are accepted through
duck typing); it imports no model library and nothing from the zoo.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

AGGREGATES = ("weighted_average", "latest", "oldest")
MODES = ("thread", "sync")
WORKER_THREAD_PREFIX = "dynaccel-async-chunks"


# ----------------------------------------------------------------------------------------------------- clocks


class RealClock:
    """Wall time (``time.perf_counter``); ``sleep``/``sleep_until`` really sleep."""

    simulated = False

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, dt: float) -> None:
        if dt > 0:
            time.sleep(dt)

    def sleep_until(self, t: float) -> None:
        self.sleep(t - self.now())


class SimulatedClock:
    """A clock that only moves when told to: ``sleep(dt)`` (or ``advance``) and ``sleep_until(t)`` return at once
    with the time moved forward. Runs driven by it are deterministic."""

    simulated = True

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, dt: float) -> None:
        if not dt >= 0:
            raise ValueError(f"a clock cannot go back: advance({dt!r}); give a duration >= 0")
        self._now += float(dt)

    sleep = advance

    def sleep_until(self, t: float) -> None:
        if t > self._now:
            self._now = float(t)


# ------------------------------------------------------------------------------------------------------ stats


@dataclass
class AsyncStats:
    """What an executor did since its last ``reset()``."""

    observations: int = 0  # observation_fn() calls
    chunks_requested: int = 0  # policy calls
    chunks_received: int = 0  # chunks merged into the queue
    observations_skipped: int = 0  # near-duplicates not sent
    actions_merged: int = 0  # queued actions combined with a newer chunk's action for the same step
    actions_dropped: int = 0  # actions of a newer chunk for steps already executed
    waits: int = 0  # control steps whose action was not ready when asked for
    wait_seconds: float = 0.0  # clock time spent waiting for those actions
    policy_seconds: float = 0.0  # total policy latency (simulated latency under a SimulatedClock)

    @property
    def mean_policy_latency(self) -> float:
        """Mean seconds per policy call (0.0 before the first chunk arrives)."""
        return self.policy_seconds / self.chunks_received if self.chunks_received else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean_policy_latency": self.mean_policy_latency}


@dataclass
class _Request:
    step: int  # the control step the observation was taken at
    future: concurrent.futures.Future | None = None  # thread mode
    chunk: np.ndarray | None = None  # inline modes
    seconds: float = 0.0  # inline modes: the latency charged for this call
    ready_at: float = 0.0  # inline modes: clock time the chunk becomes available


# --------------------------------------------------------------------------------------------- the executor


def _check_option(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def as_action_chunk(value: Any) -> np.ndarray:
    """A policy's output as a float64 array of shape ``(k, D)``; a 1-D ``(D,)`` output counts as ``k = 1``.

    Raises ``ValueError`` saying what was returned and what is expected."""
    expected = "a chunking policy must return an array of shape (k >= 1, D >= 1)"
    if value is None:
        raise ValueError(f"the policy returned no action chunk (got None); {expected}")
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        chunk = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the policy returned {type(value).__name__}, not numbers ({exc}); {expected}") from None
    if chunk.ndim == 1:
        chunk = chunk[None, :]
    if chunk.ndim != 2:
        raise ValueError(f"the policy returned an array of shape {tuple(chunk.shape)}; {expected}")
    if chunk.shape[0] == 0 or chunk.shape[1] == 0:
        raise ValueError(f"the policy returned an empty action chunk (shape {tuple(chunk.shape)}); {expected}")
    if not np.isfinite(chunk).all():
        bad = int((~np.isfinite(chunk)).any(axis=1).sum())
        raise ValueError(f"the policy returned non-finite actions (NaN or inf in {bad} of {chunk.shape[0]} "
                         f"actions); a robot cannot execute them")
    return chunk


class AsyncChunkExecutor:
    """Runs a chunking ``policy(observation) -> (k, D) actions`` ahead of execution and hands out one action per
    control step.

    Options:
    - ``chunk_threshold`` (g, in [0, 1]): send a new observation when the actions queued for the current step and
      later are ``g * k`` or fewer (k: the size of the latest chunk). 0 sends only when the queue is empty (the
      synchronous baseline); 1 sends whenever no request is in flight.
    - ``aggregate``: how an arriving chunk's action for a step that is still queued combines with it:
      ``"weighted_average"`` (``(1 - blend) * queued + blend * new``), ``"latest"`` (the new one replaces it),
      ``"oldest"`` (the queued one stays; only steps past the queue's end are appended).
    - ``blend`` (in [0, 1]): the weight of the newer chunk in ``"weighted_average"``.
    - ``skip_similar`` (>= 0): an observation whose vector is closer than this (L2) to the last one sent is not
      sent, unless the queue is empty (then it must go). 0 never skips.
    - ``similarity_key``: the vector compared: a callable ``observation -> array``, or a key of a mapping
      observation (e.g. ``"proprio"``); None compares the observation itself (it must then be numeric).
    - ``mode``: ``"thread"`` runs the policy in one worker thread; ``"sync"`` calls it inline (the control loop
      blocks). Under a :class:`SimulatedClock` the policy is always called inline.
    - ``clock``: a :class:`RealClock` (default) or a :class:`SimulatedClock`.
    - ``latency`` (SimulatedClock only): seconds after the call its chunk becomes available: a number, a callable
      ``observation -> seconds``, or None for the measured wall time of the call.

    Loop: ``action = ex.step(observation_fn, i)`` at each control tick (non-blocking; None when no action for step
    ``i`` is ready yet), or ``ex.wait_for_action(observation_fn, i)`` which blocks (or advances the simulated
    clock) until there is one. ``observation_fn()`` is only called when an observation is to be sent.
    Step indices must increase; actions are float64 numpy arrays.
    """

    def __init__(self, policy: Callable[[Any], Any], *, chunk_threshold: float = 0.5,
                 aggregate: str = "weighted_average", blend: float = 0.5, skip_similar: float = 0.0,
                 similarity_key: str | Callable[[Any], Any] | None = None, mode: str = "thread",
                 clock: RealClock | SimulatedClock | None = None,
                 latency: float | Callable[[Any], float] | None = None):
        _check_option(callable(policy), f"policy must be callable (observation -> action chunk), "
                                        f"got {type(policy).__name__}")
        _check_option(_is_number(chunk_threshold) and 0.0 <= chunk_threshold <= 1.0,
                      f"chunk_threshold={chunk_threshold!r} is out of range; accepted: a number in [0, 1]")
        _check_option(aggregate in AGGREGATES,
                      f"unknown aggregate {aggregate!r}; accepted: {', '.join(AGGREGATES)}")
        _check_option(_is_number(blend) and 0.0 <= blend <= 1.0,
                      f"blend={blend!r} is out of range; accepted: a number in [0, 1]")
        _check_option(_is_number(skip_similar) and skip_similar >= 0.0,
                      f"skip_similar={skip_similar!r} is out of range; accepted: a number >= 0 (0 never skips)")
        _check_option(similarity_key is None or isinstance(similarity_key, str) or callable(similarity_key),
                      f"similarity_key={similarity_key!r} is not accepted; accepted: None, a mapping key (str) "
                      f"or a callable observation -> vector")
        _check_option(mode in MODES, f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")
        clock = RealClock() if clock is None else clock
        _check_option(all(callable(getattr(clock, name, None)) for name in ("now", "sleep", "sleep_until")),
                      f"clock={clock!r} is not a clock; accepted: RealClock(), SimulatedClock() or an object "
                      f"with now(), sleep(dt) and sleep_until(t)")
        simulated = bool(getattr(clock, "simulated", False))
        if latency is not None:
            _check_option(simulated, f"latency={latency!r} only applies with a SimulatedClock (a real clock "
                                     f"measures the policy's own latency); pass clock=SimulatedClock()")
            _check_option(callable(latency) or (_is_number(latency) and 0.0 <= latency < math.inf),
                          f"latency={latency!r} is not accepted; accepted: seconds >= 0, a callable "
                          f"observation -> seconds, or None (the measured wall time of the call)")
        self.policy = policy
        self.chunk_threshold = float(chunk_threshold)
        self.aggregate = aggregate
        self.blend = float(blend)
        self.skip_similar = float(skip_similar)
        self.similarity_key = similarity_key
        self.mode = mode
        self.clock = clock
        self.latency = latency
        self._simulated = simulated
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self.reset()

    # ---- episode state

    def reset(self) -> None:
        """Start a new episode: empty the queue, forget the request in flight (its chunk is discarded) and the
        last observation sent, zero the stats. The chunk size and action width are learnt again."""
        self._queue: dict[int, np.ndarray] = {}
        self._inflight: _Request | None = None
        self._last_sent_vector: np.ndarray | None = None
        self._chunk_size: int | None = None
        self._action_dim: int | None = None
        self._last_executed: int | None = None
        self._waiting_step: int | None = None
        self._waiting_since = 0.0
        self.stats = AsyncStats()

    @property
    def pending(self) -> int:
        """Actions queued (for the current step and later)."""
        return len(self._queue)

    @property
    def chunk_size(self) -> int | None:
        """The size of the latest chunk received (None before the first)."""
        return self._chunk_size

    # ---- the control-loop API

    def step(self, observation_fn: Callable[[], Any], step_index: int) -> np.ndarray | None:
        """The action for control step ``step_index``, or None when none is ready yet (the robot must wait).

        Collects a finished chunk, merges it, drops actions of past steps, and sends a new observation (calling
        ``observation_fn()``) when the queue is at or below the threshold and no request is in flight."""
        self._check_open()
        self._check_step(step_index)
        entered = self.clock.now()
        had_action = step_index in self._queue
        self._collect(step_index)
        self._drop_before(step_index)
        pending = len(self._queue)
        wants = pending == 0 or (self._chunk_size is not None
                                 and pending <= self.chunk_threshold * self._chunk_size)
        if self._inflight is None and wants:
            observation = observation_fn()
            self.stats.observations += 1
            vector = self._similarity_vector(observation) if self.skip_similar > 0 else None
            if (pending > 0 and vector is not None and self._last_sent_vector is not None
                    and _distance(vector, self._last_sent_vector) < self.skip_similar):
                self.stats.observations_skipped += 1
            else:
                self._last_sent_vector = vector
                self._submit(observation, step_index)
                self._collect(step_index)  # an inline call with no latency is ready at once
        action = self._queue.pop(step_index, None)
        if action is None:
            if self._waiting_step != step_index:
                self._waiting_step, self._waiting_since = step_index, entered
                self.stats.waits += 1
            return None
        if self._waiting_step == step_index:
            self.stats.wait_seconds += self.clock.now() - self._waiting_since
        elif not had_action and self.clock.now() > entered:  # an inline policy call kept the robot waiting
            self.stats.waits += 1
            self.stats.wait_seconds += self.clock.now() - entered
        self._waiting_step = None
        self._last_executed = step_index
        return action

    def wait_for_action(self, observation_fn: Callable[[], Any], step_index: int) -> np.ndarray:
        """Like :meth:`step`, but blocks until the action for ``step_index`` is available (under a
        SimulatedClock: advances the clock to when the chunk in flight becomes available)."""
        action = self.step(observation_fn, step_index)
        while action is None:
            request = self._inflight
            if request is None:  # cannot happen: an empty queue always sends
                raise RuntimeError(f"no action for step {step_index} and no request in flight")
            if request.future is not None:
                concurrent.futures.wait([request.future])
            else:
                self.clock.sleep_until(request.ready_at)
            action = self.step(observation_fn, step_index)
        return action

    def close(self) -> None:
        """Stop the worker thread (waiting for a policy call in progress). The executor cannot be used after."""
        self._closed = True
        self._inflight = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> AsyncChunkExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- internals

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this AsyncChunkExecutor is closed; create a new one")

    def _check_step(self, step_index: int) -> None:
        if isinstance(step_index, bool) or not isinstance(step_index, (int, np.integer)) or step_index < 0:
            raise ValueError(f"step_index={step_index!r} is not accepted; accepted: an integer >= 0")
        if self._last_executed is not None and step_index <= self._last_executed:
            raise ValueError(f"step {step_index} was already executed (last executed step: "
                             f"{self._last_executed}); step indices must increase")

    def _similarity_vector(self, observation: Any) -> np.ndarray:
        key = self.similarity_key
        if callable(key):
            value = key(observation)
        elif isinstance(key, str):
            if not isinstance(observation, Mapping) or key not in observation:
                keys = f" with keys {', '.join(map(str, observation))}" if isinstance(observation, Mapping) else ""
                raise ValueError(f"similarity_key={key!r} is not in the observation (got "
                                 f"{type(observation).__name__}{keys})")
            value = observation[key]
        else:
            value = observation
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        try:
            return np.asarray(value, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise ValueError(f"skip_similar needs a numeric vector of the observation, got "
                             f"{type(value).__name__}; set similarity_key to a key or a callable that gives one") from None

    def _timed_call(self, observation: Any) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        chunk = as_action_chunk(self.policy(observation))
        return chunk, time.perf_counter() - start

    def _submit(self, observation: Any, step_index: int) -> None:
        self.stats.chunks_requested += 1
        if self.mode == "thread" and not self._simulated:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=WORKER_THREAD_PREFIX)
            self._inflight = _Request(step_index, future=self._pool.submit(self._timed_call, observation))
            return
        chunk, measured = self._timed_call(observation)
        if self._simulated:
            seconds = self.latency(observation) if callable(self.latency) else self.latency
            seconds = measured if seconds is None else seconds
            if not (_is_number(seconds) and 0.0 <= seconds < math.inf):
                raise ValueError(f"latency({type(observation).__name__}) returned {seconds!r}; "
                                 f"accepted: seconds >= 0")
            ready_at = self.clock.now() + float(seconds)
        else:
            seconds, ready_at = measured, self.clock.now()
        self._inflight = _Request(step_index, chunk=chunk, seconds=float(seconds), ready_at=ready_at)

    def _collect(self, current_step: int) -> None:
        request = self._inflight
        if request is None:
            return
        if request.future is not None:
            if not request.future.done():
                return
            self._inflight = None
            chunk, seconds = request.future.result()  # re-raises the policy's exception here
        else:
            if self.clock.now() < request.ready_at:
                return
            self._inflight = None
            chunk, seconds = request.chunk, request.seconds
        if self._action_dim is not None and chunk.shape[1] != self._action_dim:
            raise ValueError(f"the policy returned actions of width {chunk.shape[1]}, but earlier chunks had "
                             f"{self._action_dim}; a chunking policy must keep D fixed within an episode")
        self._action_dim = chunk.shape[1]
        self._chunk_size = chunk.shape[0]
        self.stats.chunks_received += 1
        self.stats.policy_seconds += seconds
        self._merge(chunk, request.step, current_step)

    def _merge(self, chunk: np.ndarray, first_step: int, current_step: int) -> None:
        for offset, action in enumerate(chunk):
            step = first_step + offset
            if step < current_step:
                self.stats.actions_dropped += 1
                continue
            queued = self._queue.get(step)
            if queued is None:
                self._queue[step] = action.copy()
                continue
            self.stats.actions_merged += 1
            if self.aggregate == "latest":
                self._queue[step] = action.copy()
            elif self.aggregate == "weighted_average":
                self._queue[step] = (1.0 - self.blend) * queued + self.blend * action
            # "oldest": the queued action stays

    def _drop_before(self, step_index: int) -> None:
        for step in [s for s in self._queue if s < step_index]:
            del self._queue[step]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and not math.isnan(value)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf  # a differently shaped observation is never a near-duplicate
    return float(np.linalg.norm(a - b))


# ----------------------------------------------------------------------------------------- the control loop


@dataclass
class RealtimeResult:
    """One episode of :func:`run_realtime`. ``control_hz_reached = steps / seconds``, where ``seconds`` is the
    clock time from the loop's start (before the first observation) to the end of the last action's tick,
    waits included."""

    success: bool  # env.step reported success at some step
    steps: int  # actions executed
    seconds: float  # clock seconds (simulated under a SimulatedClock)
    control_hz_reached: float
    inferences: int  # policy calls
    actions: np.ndarray  # (steps, D): the executed actions in order
    step_times: np.ndarray  # (steps,): clock time each action started, relative to the loop's start
    waits: int  # steps whose action was not ready at their tick
    wait_seconds: float
    stats: AsyncStats = field(default_factory=AsyncStats)


def run_realtime(executor_or_policy: AsyncChunkExecutor | Callable[[Any], Any], env: Any, *, control_hz: float,
                 max_steps: int, clock: RealClock | SimulatedClock | None = None,
                 synchronous: bool = False) -> RealtimeResult:
    """Run one episode in real (or simulated) time on ``env`` (``env.observe() -> observation``,
    ``env.step(action) -> (success, done)``; one control step per action).

    Each executed action takes ``1 / control_hz`` seconds: the loop sleeps until the next tick. When no action is
    ready, the robot waits (time passes, no step executes). The episode ends after ``max_steps`` actions or when
    ``env.step`` reports ``done``.

    ``synchronous=True`` runs the baseline: observe, call the policy (the robot idle meanwhile), execute the whole
    chunk, repeat (an executor with ``chunk_threshold=0``, policy inline, same clock and latency). A bare policy
    is wrapped in an executor with the default options (``synchronous=False``) or in that baseline.
    An executor passed in is ``reset()`` first and stays open; one built here is closed."""
    if not (_is_number(control_hz) and 0 < control_hz < math.inf):
        raise ValueError(f"control_hz={control_hz!r} is not accepted; accepted: a frequency > 0 (Hz)")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps={max_steps!r} is not accepted; accepted: an integer >= 1")
    for name in ("observe", "step"):
        if not callable(getattr(env, name, None)):
            raise ValueError(f"env {type(env).__name__} has no {name}(); the loop needs env.observe() -> "
                             f"observation and env.step(action) -> (success, done)")
    if isinstance(executor_or_policy, AsyncChunkExecutor):
        given = executor_or_policy
        if clock is not None and clock is not given.clock:
            raise ValueError("clock= differs from the executor's clock; pass the clock to the executor only")
        if synchronous:
            executor = AsyncChunkExecutor(given.policy, chunk_threshold=0.0, aggregate="latest", mode="sync",
                                          clock=given.clock, latency=given.latency)
        else:
            executor = given
            executor.reset()
    else:
        executor = AsyncChunkExecutor(executor_or_policy, chunk_threshold=0.0 if synchronous else 0.5,
                                      mode="sync" if synchronous else "thread", clock=clock)
    owned = executor is not executor_or_policy
    try:
        return _loop(executor, env, 1.0 / float(control_hz), int(max_steps))
    finally:
        if owned:
            executor.close()


def _loop(executor: AsyncChunkExecutor, env: Any, tick: float, max_steps: int) -> RealtimeResult:
    clock = executor.clock
    start = clock.now()
    actions, times = [], []
    success = False
    for index in range(max_steps):
        action = executor.wait_for_action(env.observe, index)
        began = clock.now()  # the previous tick is over (slept below); later if the robot waited for this action
        times.append(began - start)
        actions.append(action)
        succeeded, done = env.step(action)
        success = success or bool(succeeded)
        next_tick = began + tick
        clock.sleep_until(next_tick)  # the action takes one control period
        if done:
            break
    seconds = clock.now() - start
    stats = dataclasses.replace(executor.stats)
    return RealtimeResult(
        success=success, steps=len(actions), seconds=seconds,
        control_hz_reached=len(actions) / seconds if seconds > 0 else math.inf,
        inferences=stats.chunks_requested, actions=np.stack(actions), step_times=np.asarray(times),
        waits=stats.waits, wait_seconds=stats.wait_seconds, stats=stats)


# ----------------------------------------------------------------------------------------------- process policy


#: The private pipe between a ProcessPolicy and its child carries no pickles: a frame is a JSON header plus raw
#: array buffers. JSON holds None, bools, numbers, strings, lists and dicts with string keys; tagged objects hold
#: the rest: {"__nd__": k, "dtype": ..., "shape": ...} (the k-th buffer, a numpy array of a plain dtype),
#: {"__tuple__": [...]}, {"__dict__": [[key, value], ...]} (other keys) and {"__dataclass__": "module:Qualname",
#: "fields": {...}} (only the package's own dataclasses are rebuilt: an observation of the robot tasks, say).
_PACKAGE = __name__.rsplit(".hf_integration", 1)[0]


def _encode(obj: Any, buffers: list) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return obj if math.isfinite(obj) or isinstance(obj, int) else {"__float__": repr(float(obj))}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), buffers)
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # a torch tensor: sent as an array
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.kind not in "biufc":
            raise TypeError(f"arrays of dtype {obj.dtype} cannot be sent to the policy process; accepted: bool, int, "
                            "uint, float and complex arrays")
        buffers.append(np.ascontiguousarray(obj).tobytes())
        return {"__nd__": len(buffers) - 1, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, buffers) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, buffers) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, buffers) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, buffers), _encode(v, buffers)] for k, v in obj.items()]}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        if not cls.__module__.split(".")[0] == _PACKAGE.split(".")[0] or "<locals>" in cls.__qualname__:
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} cannot be sent to the policy process; accepted: "
                            f"numpy arrays, numbers, strings, lists, tuples, dicts and {_PACKAGE}'s own dataclasses")
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(obj, f.name), buffers) for f in dataclasses.fields(obj)}}
    raise TypeError(f"{type(obj).__name__} cannot be sent to the policy process; accepted: numpy arrays, numbers, "
                    f"strings, lists, tuples, dicts and {_PACKAGE}'s own dataclasses")


def _resolve(spec: str) -> Any:
    """``"module:Qualname"`` -> the object (the module is imported)."""
    import importlib

    module, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _decode(obj: Any, buffers: list) -> Any:
    if isinstance(obj, list):
        return [_decode(v, buffers) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__nd__" in obj:
        return np.frombuffer(buffers[obj["__nd__"]], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if "__tuple__" in obj:
        return tuple(_decode(v, buffers) for v in obj["__tuple__"])
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__dict__" in obj:
        return {_decode(k, buffers): _decode(v, buffers) for k, v in obj["__dict__"]}
    if "__dataclass__" in obj:
        name = obj["__dataclass__"]
        if name.split(".")[0].split(":")[0] != _PACKAGE.split(".")[0]:
            raise ValueError(f"the policy pipe refuses to build {name}: only {_PACKAGE}'s own dataclasses")
        cls = _resolve(name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"the policy pipe refuses to build {name}: not a dataclass")
        return cls(**{k: _decode(v, buffers) for k, v in obj["fields"].items()})
    return {k: _decode(v, buffers) for k, v in obj.items()}


def _send_frame(stream: Any, obj: Any) -> None:
    import json

    buffers: list[bytes] = []
    head = json.dumps(_encode(obj, buffers), allow_nan=False).encode()
    parts = [len(head).to_bytes(8, "little"), head, len(buffers).to_bytes(4, "little")]
    for b in buffers:
        parts += [len(b).to_bytes(8, "little"), b]
    stream.write(b"".join(parts))
    stream.flush()


def _read_exact(stream: Any, size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the policy process closed its pipe")
    return data


def _recv_frame(stream: Any) -> Any:
    import json

    head = json.loads(_read_exact(stream, int.from_bytes(_read_exact(stream, 8), "little")))
    count = int.from_bytes(_read_exact(stream, 4), "little")
    buffers = [_read_exact(stream, int.from_bytes(_read_exact(stream, 8), "little")) for _ in range(count)]
    return _decode(head, buffers)


def _factory_spec(factory: Any) -> dict:
    """What the child needs to build the policy: ``{"call": "module:Qualname", "args": [...], "kwargs": {...}}``."""
    import functools

    args: tuple = ()
    kwargs: dict = {}
    if isinstance(factory, str):
        func_name = factory
        if ":" not in factory:
            raise ValueError(f"factory={factory!r} is not accepted; accepted: 'module:function', a module-level "
                             "function, or functools.partial of one")
    else:
        func = factory
        if isinstance(factory, functools.partial):
            func, args, kwargs = factory.func, factory.args, dict(factory.keywords)
        qualname = getattr(func, "__qualname__", "")
        module = getattr(func, "__module__", None)
        if not callable(func) or not module or not qualname or "<" in qualname or module == "__main__":
            raise ValueError(f"factory={factory!r} cannot be sent to another process; accepted: 'module:function', "
                             "a function defined at the top of an importable module (not __main__, not a lambda), "
                             "or functools.partial of one")
        func_name = f"{module}:{qualname}"
    spec = {"call": func_name, "args": list(args), "kwargs": kwargs}
    try:
        _encode(spec, [])
    except TypeError as exc:
        raise ValueError(f"factory={factory!r} cannot be sent to another process: its arguments must be numbers, "
                         f"strings, lists, tuples, dicts or arrays ({exc})") from exc
    return spec


def _serve_stdio() -> None:
    """The child process of :class:`ProcessPolicy`: read the factory, build the policy, answer observations."""
    import os
    import sys

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # prints of the policy must not corrupt the frames
    try:
        spec = _recv_frame(stdin)
        policy = _resolve(spec["call"])(*spec["args"], **spec["kwargs"])
    except BaseException as exc:  # the parent raises it
        _send_frame(stdout, ("error", f"{type(exc).__name__}: {exc}"))
        return
    _send_frame(stdout, ("ready", os.getpid()))
    while True:
        try:
            message = _recv_frame(stdin)
        except EOFError:
            return
        if message is None:
            return
        try:
            out = policy(message)
            if hasattr(out, "detach"):  # a torch tensor: send an array
                out = out.detach().cpu().numpy()
            _send_frame(stdout, ("ok", out))
        except BaseException as exc:
            _send_frame(stdout, ("error", f"{type(exc).__name__}: {exc}"))


class ProcessPolicy:
    """A chunking policy that runs in its own process: ``ProcessPolicy(factory)(observation)`` sends the
    observation over a pipe to a child Python process that built the policy with ``factory()``, and returns its
    answer.

    Handing it to :class:`AsyncChunkExecutor` gives the process variant of the executor: the worker thread only
    waits on a pipe, so the policy's Python work never competes with the control loop for the interpreter lock (a
    separate policy server, as in lerobot's async inference, without a network). ``factory`` is named, not
    pickled: ``"module:function"``, a function defined at the top of an importable module, or ``functools.partial``
    of one whose arguments are numbers, strings, lists, tuples, dicts or numpy arrays; the child imports the module
    and calls it. Observations and answers travel as JSON plus raw array buffers (no pickle on the pipe): numpy
    arrays, plain values and containers, and the package's own dataclasses (a robot-task observation). The child
    is a fresh interpreter started with this
    process's ``sys.path`` (no ``if __name__ == "__main__"`` guard needed in the caller's script); ``close()`` (or
    ``with``) stops it.

        from functools import partial
        with ProcessPolicy(partial(build_my_policy, "path/to/folder")) as remote, \\
                AsyncChunkExecutor(remote) as executor:
            run_realtime(executor, env, control_hz=50, max_steps=200)
    """

    def __init__(self, factory: Callable[[], Callable[[Any], Any]] | str, start_timeout: float = 300.0):
        import os
        import select
        import subprocess
        import sys
        import threading

        spec = _factory_spec(factory)
        self._lock = threading.Lock()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        package = __name__.rsplit(".hf_integration", 1)[0]
        code = f"import {package}.hf_integration.async_chunks as m; m._serve_stdio()"
        self._process: Any = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, env=env)
        try:
            _send_frame(self._process.stdin, spec)
            ready, _, _ = select.select([self._process.stdout], [], [], start_timeout)
            if not ready:
                raise RuntimeError(f"the policy process did not start within {start_timeout:.0f} s")
            status, detail = _recv_frame(self._process.stdout)
        except BaseException:
            self.close()
            raise
        if status != "ready":
            self.close()
            raise RuntimeError(f"the policy process could not build the policy: {detail}")
        self.pid = detail

    def __call__(self, observation: Any) -> Any:
        if self._process is None:
            raise RuntimeError("this ProcessPolicy is closed")
        with self._lock:
            try:
                _send_frame(self._process.stdin, observation)
                status, out = _recv_frame(self._process.stdout)
            except (EOFError, BrokenPipeError, OSError) as exc:
                raise RuntimeError(f"the policy process ended unexpectedly ({exc})") from exc
        if status != "ok":
            raise RuntimeError(f"the policy process failed: {out}")
        return out

    def close(self) -> None:
        process = getattr(self, "_process", None)
        if process is None:
            return
        self._process = None
        try:
            _send_frame(process.stdin, None)
            process.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            process.wait(timeout=10)
        except Exception:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> "ProcessPolicy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
