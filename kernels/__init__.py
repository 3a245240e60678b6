"""Shared Triton infrastructure: backend dispatch and test helpers. Plugin kernels live in their plugin."""

from .dispatch import Backend, dispatch, triton_available

__all__ = ["Backend", "dispatch", "triton_available"]
