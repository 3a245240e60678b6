"""ComfyUI node pack: every cache and sparse-attention strategy as a MODEL -> MODEL node, run through ComfyUI's
ModelPatcher.

The repo root is the pack (``git clone`` into ``ComfyUI/custom_nodes/``): its ``__init__.py`` re-exports
:func:`comfy_entrypoint`, which ComfyUI calls to get the V3 extension. For a pip install, put this one line in a
file ``ComfyUI/custom_nodes/dynaccel_nodes.py``::

    from dynaccel.comfy_nodes import comfy_entrypoint  # noqa: F401

Importing this package never imports ComfyUI: ``nodes.py`` (which needs ``comfy_api``) is imported only when
ComfyUI calls :func:`comfy_entrypoint`; ``runner.py`` imports ``comfy.*`` only inside the functions nodes call.
"""

from __future__ import annotations


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the dynaccel extension (its node list is generated from the registry)."""
    from .nodes import comfy_entrypoint as entrypoint

    return await entrypoint()


__all__ = ["comfy_entrypoint"]
