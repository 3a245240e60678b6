"""Distillation family: methods that turn a teacher pipeline into a few-step student (``dynaccel distill``).

- ``reflow``: Rectified Flow's straight paths from the teacher's noise to its output;
- ``perflow``: Piecewise Rectified Flow, one straight window per student step.

The training loop, the teacher's trajectories and the student folder are the surface's
(:mod:`dynaccel.hf_integration.distill`); a method only turns trajectories into training pairs.
"""

from ...core.hookspecs import hookimpl
from .flow import Perflow, Reflow

DISTILLERS = (Perflow, Reflow)


@hookimpl
def register_distillers(register):
    for cls in DISTILLERS:
        register(cls)
