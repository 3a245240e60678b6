"""Distillation methods: what turns a teacher's sampling trajectories into training pairs for a few-step student.

A distiller is model-agnostic, like a strategy: it never names a model class. The surface that trains
(``dynaccel distill``, :mod:`dynaccel.hf_integration.distill`) samples the teacher with its own scheduler and
guidance, records the states the trajectory passes through at the **student's** noise levels, and asks the
distiller for training pairs; the student is the teacher's own denoiser, fine-tuned to predict the target velocity
from the state at the given noise level. Flow-matching convention (diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x(sigma) = (1 - sigma) * x0 + sigma * noise``, the model predicts the velocity ``dx/dsigma``, and an Euler step
goes ``x_next = x + (sigma_next - sigma) * v``.

Trajectories handed to :meth:`Distiller.pairs`: ``states`` of shape (B, N + 1, ...) where ``states[:, 0]`` is the
starting noise (sigma 1) and ``states[:, N]`` the teacher's output (sigma 0); ``sigmas`` the N + 1 noise levels of
the student's schedule, decreasing from 1 to 0.

A third party adds a method through the ``register_distillers`` hook::

    @dynaccel.hookimpl
    def register_distillers(register):
        register(MyDistiller)        # a Distiller subclass with name, summary, paper, Config and pairs()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .config import StrategyConfig

if TYPE_CHECKING:  # torch is imported by the methods that run, not by the registry
    import torch


@dataclass(frozen=True)
class DistillerConfig(StrategyConfig):
    """Options of a distillation method (same schema as strategy configs: ranges, docs, validation)."""


class Distiller:
    """Base class of a distillation method; subclasses set the class attributes and implement :meth:`pairs`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[DistillerConfig]] = DistillerConfig

    def __init__(self, config: DistillerConfig | None = None, **options: Any):
        self.config = config if config is not None else self.Config.from_kwargs(self.name, **options)

    def pairs(self, states: "torch.Tensor", sigmas: "torch.Tensor", generator: "torch.Generator"
              ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """Training pairs from teacher trajectories: ``(x, sigma, velocity)`` with ``x`` of shape (B, ...),
        ``sigma`` (B,) the noise level the student sees ``x`` at, and ``velocity`` (B, ...) its target. Random
        choices draw from ``generator`` only (retraining from a seed is bit-identical)."""
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.name, "summary": cls.summary, "paper": cls.paper,
                "config": [f.to_dict() for f in cls.Config.fields_info()]}
