"""Two distillation methods for flow-matching teachers: ``reflow`` and ``perflow``.

Both fine-tune the teacher's own denoiser, guidance baked in, on trajectories the teacher sampled with classifier-free
guidance (:mod:`dynaccel.core.distiller` for the conventions). Why these two (docs/distill.md has the long form):
they need only the teacher's ODE solutions, no discriminator, no second network trained alongside (DMD2's fake
score) and no EMA target network (consistency distillation); on a 2-core CPU, where every teacher pass counts, both
reuse one set of teacher trajectories for every training step.

- ``reflow``: Rectified Flow (Liu, Gong, Liu, "Flow Straight and Fast", arXiv 2209.03003; InstaFlow, arXiv
  2309.06380, applies it to text-to-image). The student learns the straight path from the teacher's noise to the
  teacher's output: ``x = (1 - s) * out + s * noise``, target ``noise - out``. A straight flow is integrated exactly
  by one Euler step, so few steps lose little once the coupling is straight.
- ``perflow``: Piecewise Rectified Flow (Yan et al., "PeRFlow", arXiv 2405.07510): the same straightening, window
  by window. The student's N steps cut the trajectory into N windows; inside window k the target is the teacher's
  secant velocity ``(x_{k+1} - x_k) / (s_{k+1} - s_k)`` on the line between the window's ends, so the student's
  Euler step from ``x_k`` lands on the teacher's ``x_{k+1}``. Closer to the teacher than one global line (each
  window is straighter than the whole), and N is fixed at training time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.config import option
from ...core.distiller import Distiller, DistillerConfig


@dataclass(frozen=True)
class ReflowConfig(DistillerConfig):
    grid_share: float = option(0.5, doc="share of training pairs at the student's own noise levels (the rest at "
                                        "noise levels drawn uniformly from (0, 1])", min=0.0, max=1.0, step=0.05)


@dataclass(frozen=True)
class PerflowConfig(DistillerConfig):
    grid_share: float = option(0.5, doc="share of training pairs at a window's start, where the student evaluates "
                                        "(the rest uniformly inside the window)", min=0.0, max=1.0, step=0.05)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def _check(states: torch.Tensor, sigmas: torch.Tensor) -> int:
    if states.ndim < 3 or sigmas.ndim != 1 or states.shape[1] != sigmas.shape[0] or sigmas.shape[0] < 2:
        raise ValueError(f"states must be (B, N + 1, ...) with N + 1 = len(sigmas) >= 2; got states "
                         f"{tuple(states.shape)} and sigmas {tuple(sigmas.shape)}")
    return sigmas.shape[0] - 1


class StraightPaths(Distiller):
    """Pairs on straight segments between two states of each trajectory: a subclass picks, per pair, the segment's
    ends (indices ``a`` < ``b`` into the N + 1 states), the noise level ``s`` on it and the fraction ``f`` of the way
    from ``a`` to ``b`` (``s = sigma_a + f * (sigma_b - sigma_a)``); the pair is the point ``x_a + f * (x_b - x_a)``
    at ``s`` and the segment's secant velocity ``(x_b - x_a) / (sigma_b - sigma_a)``."""

    def segments(self, n: int, b: int, sigmas: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def pairs(self, states, sigmas, generator):
        n = _check(states, sigmas)
        sig = sigmas.float()
        a, b, s, f = self.segments(n, states.shape[0], sig, generator)
        rows = torch.arange(states.shape[0])
        xa, xb = states[rows, a], states[rows, b]
        velocity = (xb - xa) / _expand(sig[b] - sig[a], xa).to(xa.dtype)
        x = xa + _expand(f, xa).to(xa.dtype) * (xb - xa)
        return x, s.to(states.dtype), velocity


class Reflow(StraightPaths):
    """Rectified Flow (arXiv 2209.03003): the straight line from the teacher's noise to its output."""

    name = "reflow"
    summary = "straight paths from the teacher's noise to its output (one global line per sample)"
    paper = "Rectified Flow, arXiv 2209.03003 (reflow); InstaFlow, arXiv 2309.06380"
    Config = ReflowConfig

    def segments(self, n, b, sigmas, generator):
        on_grid = torch.rand(b, generator=generator) < self.config.grid_share
        k = torch.randint(0, n, (b,), generator=generator)
        uniform = 1.0 - torch.rand(b, generator=generator)  # (0, 1]
        s = torch.where(on_grid, sigmas[k], uniform)
        return torch.zeros(b, dtype=torch.long), torch.full((b,), n), s, 1.0 - s  # noise (sigma 1) to output (0)


class Perflow(StraightPaths):
    """Piecewise Rectified Flow (arXiv 2405.07510): the teacher's secant velocity over each of the student's steps."""

    name = "perflow"
    summary = "piecewise straight paths: the student's Euler step lands on the teacher's state (one window per step)"
    paper = "PeRFlow, arXiv 2405.07510 (piecewise rectified flow)"
    Config = PerflowConfig

    def segments(self, n, b, sigmas, generator):
        k = torch.randint(0, n, (b,), generator=generator)
        at_start = torch.rand(b, generator=generator) < self.config.grid_share
        u = torch.where(at_start, torch.zeros(b), torch.rand(b, generator=generator))
        return k, k + 1, sigmas[k] + u * (sigmas[k + 1] - sigmas[k]), u  # window k: the student's step k
