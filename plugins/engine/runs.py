"""Run tracking, written once for every family: which generation a model call belongs to, its step, its CFG branch.

A :class:`RunTracker` is told of every model call (``observe``) with what the caller knows about it: the CFG
branch (the diffusers cache-context name ``cond`` / ``uncond`` / ``cond_uncond``, a ComfyUI branch, or
``"default"``), the step index when the caller knows it, the step count, and the timestep. It answers with the
:class:`Run` (one generation), the branch's state in it and the call's step.

The rule for a new generation (the same for cache, sparse attention and every later family):

1. there is no run yet, the last one finished (diffusers resets stateful hooks at the end of every pipeline call),
   or ``reset()`` was called;
2. the run probe (the pipeline's scheduler) hands out a new token: ``set_timesteps`` ran again;
3. the caller gives step indices and this branch is at step 0 again after it ran;
4. the caller gives no step index, and this branch's timestep goes *up* (denoising only lowers it).

The step of a call: the index the caller gives; else it advances when the branch's timestep changes (all calls of
one step share it); else every call of the branch is a step. Each branch counts its own steps, so two-pass CFG
(cond, then uncond at the same step) and batched CFG give the same step numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from ...core.strategy import RunProbe


@dataclass
class BranchRun:
    """One CFG branch within one generation. Families subclass it for their counters; ``data`` holds their tensors."""

    name: str
    calls: int = 0
    step: int = -1
    timestep: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


B = TypeVar("B", bound=BranchRun)


@dataclass
class Run(Generic[B]):
    """One generation: its probe token, its step count (None: unknown) and its branches."""

    token: object | None
    num_steps: int | None
    branches: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    #: the branch class of this run (a family's subclass of BranchRun)
    branch_cls: type = field(default=BranchRun, repr=False)

    def branch(self, name: str) -> B:
        if name not in self.branches:
            self.branches[name] = self.branch_cls(name)
        return self.branches[name]

    @property
    def steps(self) -> int:
        """Steps seen so far (the largest over the branches)."""
        return max((b.step + 1 for b in self.branches.values()), default=0)


@dataclass
class Call:
    """What :meth:`RunTracker.observe` says of one model call."""

    run: Run
    branch: BranchRun
    step: int
    new_run: bool
    new_step: bool


R = TypeVar("R", bound=Run)


class RunTracker(Generic[R]):
    """Follows generations, steps and CFG branches of one model (see the module docstring for the rules).

    ``make_run(token, num_steps)`` builds a family's :class:`Run`; ``on_start(run)`` / ``on_finish(run)`` are told
    when a generation starts and ends (a finished run keeps its counters for stats until the next one starts).
    """

    def __init__(
        self,
        probe: RunProbe | None,
        make_run: Callable[[object | None, int | None], R] | None = None,
        on_start: Callable[[R], None] | None = None,
        on_finish: Callable[[R], None] | None = None,
    ):
        self.probe = probe
        self.make_run = make_run or (lambda token, n: Run(token, n))
        self.on_start = on_start
        self.on_finish = on_finish
        self.run: R | None = None
        #: the step count of runs whose caller does not say it (bare models: ``handle.reset(num_steps=N)``)
        self.manual_steps: int | None = None

    def start(self, num_steps: int | None = None) -> None:
        """End the current generation; the next call starts a new one (of ``num_steps`` steps when given)."""
        self.finish()
        self.manual_steps = num_steps
        self.run = None

    def finish(self) -> None:
        """End the current generation (idempotent); its counters stay readable."""
        run = self.run
        if run is not None and not run.finished:
            run.finished = True
            if self.on_finish is not None:
                self.on_finish(run)

    def observe(
        self,
        branch: str = "default",
        *,
        step: int | None = None,
        num_steps: int | None = None,
        timestep: float | None = None,
    ) -> Call:
        token, n = self.probe() if self.probe is not None else (None, None)
        if num_steps:
            n = int(num_steps)
        if n is None:
            n = self.manual_steps
        run = self.run
        new = run is None or run.finished
        if not new and token is not None and token is not run.token:
            new = True
        if not new:
            b = run.branches.get(branch)
            if b is not None and b.calls > 0:
                if step is not None:
                    new = step == 0
                elif timestep is not None and b.timestep is not None:
                    new = timestep > b.timestep
        if new:
            self.finish()
            run = self.make_run(token, n)
            self.run = run
            if self.on_start is not None:
                self.on_start(run)
        b = run.branch(branch)
        if step is not None:
            new_step = b.calls == 0 or step != b.step
            s = int(step)
        elif timestep is not None:
            new_step = b.calls == 0 or timestep != b.timestep
            s = b.step + 1 if new_step else b.step
        else:
            new_step, s = True, b.calls
        b.calls += 1
        b.step = s
        if timestep is not None:
            b.timestep = timestep
        return Call(run, b, s, new, new_step)
