"""An example dynaccel plugin: ``every_n``, a fixed-interval step cache (copy it as a template).

How it plugs in:

- dynaccel finds this module through the entry point ``[project.entry-points.dynaccel] example = "dynaccel_example"``
  (pyproject.toml) and calls its ``register_strategies`` hook.
- ``EveryN`` is a :class:`~dynaccel.plugins.cache.CacheStrategy`: a ``Config`` (the options, declared once with
  ``option(...)``) and a ``Policy`` (when to skip). dynaccel's cache engine runs the policy: it hooks the model
  through diffusers' hook API (never by rebinding ``forward``; ``disable_accel`` restores the plain model exactly),
  keeps state per generation and per CFG branch, always computes the first and the last step (``compute_last``) and
  the steps outside ``start``/``end``, and lets the second CFG branch follow the first one's decision (``cfg_sync``).
- Because it is a policy-based cache strategy, every surface offers it with no edit in dynaccel: the Python API
  (``pipe.enable_accel("every_n", n=2)``), ``dynaccel strategies`` and ``dynaccel bench``'s default rows, the ComfyUI
  node ``dynaccel EveryN`` (driven by the same engine inside ComfyUI) and the Gradio demo's controls.
"""

from __future__ import annotations

from dataclasses import dataclass

import dynaccel
from dynaccel import option
from dynaccel.plugins.cache import CacheConfig, CachePolicy, CacheStrategy, Pass


@dataclass(frozen=True)
class EveryNConfig(CacheConfig):
    quality_knob = "n"  # what `dynaccel calibrate` searches and the demo sweeps (a plain class attribute)

    # every cache config has a threshold; this strategy measures nothing, so it is pinned to 0 and says so
    threshold: float = option(
        0.0, doc="unused by every_n (n alone decides which steps are computed); fixed at 0", min=0.0, max=0.0, step=0.01
    )
    n: int = option(2, doc="compute one step in n and reuse the last computed output in between (1: every step)",
                    min=1, max=10)


class EveryNPolicy(CachePolicy):
    """Skip the whole transformer call at steps that are not a multiple of ``n``; reuse the branch's last output."""

    level = "model"  # decide per transformer call; no model adapter needed

    def begin(self, p: Pass, x) -> None:
        cached = p.branch.data.get("input_shape") == x.shape  # p.branch.data: this generation's, this CFG branch's
        p.skip = cached and not p.forced and p.step % self.config.n != 0

    def model_computed(self, p: Pass, x, out) -> None:
        p.branch.data["input_shape"], p.branch.data["output"] = x.shape, out

    def model_skip_output(self, p: Pass, x):
        return p.branch.data["output"]


class EveryN(CacheStrategy):
    """Compute every n-th step and reuse the last computed output in between (fixed interval, no criterion).

    Example::

        pipe.enable_accel("every_n", n=2)
    """

    name = "every_n"
    Config = EveryNConfig
    Policy = EveryNPolicy
    summary = "example plugin: compute one step in n, reuse the last computed output in between"
    paper = "fixed-interval reuse, as in FORA (arXiv 2407.01425)"
    needs_adapter = False
    needs_capabilities = frozenset()


@dynaccel.hookimpl
def register_strategies(register):
    register(EveryN)
