"""Built-in plugin ``dynaccel.hf``: what the Hugging Face surfaces add to the registry.

- the CLI commands ``bench``, ``calibrate``, ``demo``, ``quickstart`` and ``presets push|pull``
  (:mod:`dynaccel.hf_integration.commands`), through ``register_commands`` as a third party's would;
- Hub preset references ``hub:ORG/REPO/NAME[@REVISION]`` (``resolve_preset``);
- which zoo model a local folder holds (``identify_model``), for the preset target check.

Everything heavy (click commands, huggingface_hub, the zoo) is imported when a hook is called, not on import.
"""

from __future__ import annotations

from pathlib import Path

from ..core.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from . import commands

    commands.register(cli)


@hookimpl
def resolve_preset(reference):
    if not reference.startswith("hub:"):
        return None
    from . import hub

    return hub.load_hub_preset(reference)


@hookimpl
def identify_model(path):
    from .. import zoo

    here = Path(path).resolve()
    return next((name for name in zoo.available() if here == Path(zoo.path(name)).resolve()), None)
