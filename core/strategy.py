"""Strategy and Handle: the contract every acceleration method implements.

A :class:`Strategy` is one method (``teacache``, ``fastv``...). ``apply(target, config, adapter, run_probe)``
installs it on a torch module and returns a :class:`Handle`, which removes exactly what was installed
(``remove()``), clears per-generation state (``reset()``) and carries ``stats``.
Strategies never name model classes: everything architecture-specific comes from the adapter.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar, Iterator

from .config import StrategyConfig

# ``run_probe()`` tells a strategy where the caller's generation stands: it returns ``(run_token, num_steps)``.
# A new ``run_token`` object (compared with ``is``) means a new generation started. Pipelines provide one built
# from their scheduler; bare models have none and call ``handle.reset(num_steps=...)`` themselves.
RunProbe = Callable[[], "tuple[object | None, int | None]"]


class Strategy:
    """Base class of strategies. Subclasses set the class attributes and implement :meth:`apply`."""

    name: ClassVar[str]
    family: ClassVar[str]
    Config: ClassVar[type[StrategyConfig]]
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    #: whether :meth:`apply` needs a model adapter (False: works on any model of its kind)
    needs_adapter: ClassVar[bool] = True
    #: adapter capabilities this strategy uses (checked before apply; see ModelAdapter.capabilities)
    needs_capabilities: ClassVar[frozenset[str]] = frozenset()
    #: other sets of capabilities it also runs with, each on its own (the token strategies on a VLM's decoder
    #: layers, or on a robot policy's prefix through :data:`~dynaccel.core.adapters.FLOW_POLICY`)
    alternative_capabilities: ClassVar[tuple[frozenset[str], ...]] = ()
    #: families this strategy refuses to share a model with (besides its own, which is replaced)
    conflicts_with: ClassVar[frozenset[str]] = frozenset()
    #: whether ``dynaccel bench`` runs it in its default rows on a diffusers pipeline; None: by family (the bench
    #: measures step caching: every strategy of family ``cache`` is run, a third party's too)
    bench_default: ClassVar[bool | None] = None
    #: the option calibration fits from the recorded decision signal (see :meth:`Handle.record_signals`): a
    #: polynomial from the signal's change to the change of what is reused (TeaCache: ``"coefficients"``); None:
    #: nothing to fit
    fitted_option: ClassVar[str | None] = None
    #: which ComfyUI runner drives this strategy: ``"cache"`` (the diffusion-model and block wrappers around the
    #: cache engine) or ``"sparse_attention"`` (the attention override around the sparse-attention engine); None:
    #: no ComfyUI node. The ComfyUI pack builds its node list from this (and from the capabilities its model
    #: adapters answer), so a family gains nodes by declaring it on its Strategy base class
    comfyui_runner: ClassVar[str | None] = None

    @classmethod
    def accepts(cls, capabilities: frozenset[str]) -> bool:
        """Whether an adapter answering ``capabilities`` gives this strategy everything it needs."""
        return cls.needs_capabilities <= capabilities or any(alt <= capabilities for alt in cls.alternative_capabilities)

    @classmethod
    def signal_recording_config(cls) -> dict[str, Any]:
        """The options to run with while recording the decision signal for :attr:`fitted_option`: every pass
        computed, the signal taken as it is (e.g. TeaCache: threshold 0, the identity polynomial)."""
        return {}

    def apply(self, target: Any, config: StrategyConfig, adapter: Any, run_probe: RunProbe | None) -> "Handle":
        raise NotImplementedError

    def pipeline_warnings(self, pipe: Any, config: StrategyConfig) -> list[str]:
        """Reasons this strategy may work poorly with this pipeline (shown as warnings; nothing is refused)."""
        return []

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "family": cls.family,
            "summary": cls.summary,
            "paper": cls.paper,
            "needs_adapter": cls.needs_adapter,
            "fields": [f.to_dict() for f in cls.Config.fields_info()],
        }


class Handle:
    """What :meth:`Strategy.apply` returns. Subclasses implement ``_remove``, ``_reset`` and ``stats``."""

    def __init__(self, strategy: str, family: str, target: Any, config: StrategyConfig):
        self.strategy = strategy
        self.family = family
        self.target = target
        self.config = config
        self._active = True

    @property
    def active(self) -> bool:
        return self._active

    def remove(self) -> None:
        """Uninstall everything apply installed. Idempotent."""
        if self._active:
            self._remove()
            self._active = False

    def reset(self, num_steps: int | None = None) -> None:
        """Start a new generation: clear cached tensors and counters (``num_steps`` when known)."""
        self._reset(num_steps)

    @property
    def stats(self) -> dict[str, Any]:
        """Statistics of the last (or current) generation."""
        return {}

    def summary(self) -> str:
        """One line saying what the strategy did in the last generation."""
        return f"{self.strategy}: {self.stats}"

    @contextlib.contextmanager
    def record_signals(self) -> Iterator[list]:
        """Record the strategy's decision signal while the block runs; the list it yields holds, once the block
        has exited, one ``(kind, branch, step, value)`` per measurement: ``kind`` ``"in"`` for the signal the
        strategy decides on (TeaCache: the relative change of block 0's modulated input), ``"out"`` for the change
        of what it would reuse (the block stack's residual). Strategies without a signal record nothing."""
        yield []

    def _remove(self) -> None:
        raise NotImplementedError

    def _reset(self, num_steps: int | None) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"<{type(self).__name__} {self.strategy} ({state}) {self.config}>"
