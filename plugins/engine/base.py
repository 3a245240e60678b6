"""The handle protocol every engine follows, install-or-roll-back and hook naming, written once.

Engine (one per model a strategy is applied to)::

    engine.install()                # put the hooks / processors in place
    engine.uninstall()              # take out exactly what install put in (safe on a partial install)
    engine.reset(num_steps=None)    # end the current generation; the next call starts a new one
    engine.stats() -> dict          # counters of the last (or current) generation
    engine.summary() -> str         # one line saying what the strategy did

Runners that drive the model passes themselves (the ComfyUI nodes) also use::

    engine.start_run(num_steps, log=False)   # a new generation starts with the next pass; no log line at its end
    engine.in_pass                           # True while a model pass is in progress
    engine.finish_run()                      # the generation ended (stats stay readable)

Handle (what ``Strategy.apply`` returns, see :class:`~dynaccel.core.strategy.Handle`): ``remove()``, ``reset()``,
the ``stats`` property and ``summary()``. :class:`EngineHandle` maps them onto an engine, so that every family's
handle has the same names and behaviour.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any, Iterator

from ...core.strategy import Handle

logger = logging.getLogger("dynaccel")

_serial = itertools.count(1)


def hook_name(family: str, kind: str) -> str:
    """A hook name unique in this process: ``dynaccel.<family>.<kind>#<n>``.

    Each engine names its hooks with its own serial number, so two engines on one module never share a name: one
    cannot remove the other's hooks, and diffusers' ``HookRegistry`` never sees a duplicate.
    """
    return f"dynaccel.{family}.{kind}#{next(_serial)}"


class Engine:
    """Base of the engines (cache, sparse attention, tokens). Subclasses implement the five methods."""

    strategy: str = ""
    #: whether finishing a generation logs :meth:`summary` (``start_run(log=False)`` turns it off)
    log_summary: bool = True

    def install(self) -> None:
        raise NotImplementedError

    def uninstall(self) -> None:
        raise NotImplementedError

    def reset(self, num_steps: int | None = None) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def summary(self) -> str:
        return f"{self.strategy}: {self.stats()}"

    def start_run(self, num_steps: int | None = None, log: bool = True) -> None:
        """For runners that drive passes themselves: a new generation (of ``num_steps`` steps when known) starts
        with the next pass; ``log=False``: finishing it writes no log line (the runner writes its own)."""
        self.log_summary = log
        self.reset(num_steps)

    def finish_run(self) -> None:
        """The generation ended (engines whose runs need closing override this)."""

    @property
    def in_pass(self) -> bool:
        """True while a model pass is in progress (engines that track passes override this)."""
        return False

    @contextlib.contextmanager
    def record_signals(self) -> Iterator[list]:
        """Record the strategy's decision signal of every pass while the block runs (see
        :meth:`dynaccel.core.strategy.Handle.record_signals`). Engines whose policies record nothing yield []."""
        yield []


def install_or_roll_back(engine: Engine) -> None:
    """``engine.install()``; when it fails part-way, ``engine.uninstall()`` takes out what was put in and the
    error is raised as it was (an error of the clean-up itself is logged, never hides the first one)."""
    try:
        engine.install()
    except BaseException:
        try:
            engine.uninstall()
        except Exception:  # pragma: no cover - an uninstall that fails too: keep the original error
            logger.exception("dynaccel: rolling back a failed install failed too")
        raise


class EngineHandle(Handle):
    """The handle of one engine on one model: ``remove`` -> ``uninstall``, ``reset`` -> ``reset``, ``stats`` ->
    ``stats()``, ``summary`` -> ``summary()``."""

    def __init__(self, strategy: str, family: str, target: Any, config: Any, engine: Engine):
        super().__init__(strategy, family, target, config)
        self.engine = engine

    def _remove(self) -> None:
        self.engine.uninstall()

    def _reset(self, num_steps: int | None) -> None:
        self.engine.reset(num_steps)

    @property
    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def summary(self) -> str:
        return self.engine.summary()

    @contextlib.contextmanager
    def record_signals(self) -> Iterator[list]:
        """See :meth:`dynaccel.core.strategy.Handle.record_signals`; the engine does the recording."""
        with self.engine.record_signals() as records:
            yield records


def apply_engine(
    strategy: Any, target: Any, config: Any, engine: Engine, handle_cls: type[EngineHandle] = EngineHandle
) -> EngineHandle:
    """Install ``engine`` (rolled back on failure) and return its handle: the end of every family's ``apply``."""
    install_or_roll_back(engine)
    return handle_cls(strategy.name, strategy.family, target, config, engine)
