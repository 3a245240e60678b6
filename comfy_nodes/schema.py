"""Strategy Config schema -> ComfyUI node inputs, without ComfyUI.

Each config field (declared once with ``option(default, doc, min, max, step, choices)``) becomes one node input:
a float, int or bool widget with the field's default, range, step and doc as tooltip; a combo for fields with
choices; a string otherwise. :func:`node_inputs` gives these as plain :class:`InputSpec` values (tested without
ComfyUI); ``nodes.py`` turns them into ``comfy_api`` inputs. :func:`config_from_inputs` maps the values a node
receives back to a validated Config, so ComfyUI's own range checks and ours agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.config import StrategyConfig

#: steps used when a field declares none (ComfyUI widgets need one)
DEFAULT_STEP = {"int": 1, "float": 0.001}


@dataclass(frozen=True)
class InputSpec:
    """One node input: ``kind`` is ``float``, ``int``, ``bool``, ``combo`` or ``string``."""

    name: str
    kind: str
    default: Any
    tooltip: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[Any, ...] | None = None


def node_inputs(config_cls: type[StrategyConfig]) -> list[InputSpec]:
    """The node inputs of a strategy's Config, in declaration order."""
    out = []
    for f in config_cls.fields_info():
        tooltip = f"{f.doc} (accepted: {f.accepted()})"
        if f.choices:
            out.append(InputSpec(f.name, "combo", f.default, tooltip, options=tuple(f.choices)))
        elif f.type in ("float", "int"):
            step = f.step if f.step is not None else DEFAULT_STEP[f.type]
            cast = float if f.type == "float" else int
            out.append(
                InputSpec(
                    f.name,
                    f.type,
                    cast(f.default),
                    tooltip,
                    min=None if f.min is None else cast(f.min),
                    max=None if f.max is None else cast(f.max),
                    step=cast(step),
                )
            )
        elif f.type == "bool":
            out.append(InputSpec(f.name, "bool", bool(f.default), tooltip))
        else:
            out.append(InputSpec(f.name, "string", str(f.default), tooltip))
    return out


def config_from_inputs(strategy: str, config_cls: type[StrategyConfig], values: dict[str, Any]) -> StrategyConfig:
    """A validated Config from a node's input values (only the Config's fields are read; ConfigError if invalid)."""
    names = [f.name for f in config_cls.fields_info()]
    kwargs = {n: values[n] for n in names if n in values}
    for f in config_cls.fields_info():  # ComfyUI sends whole floats as ints sometimes (e.g. "threshold": 0)
        if f.type == "float" and isinstance(kwargs.get(f.name), int) and not isinstance(kwargs[f.name], bool):
            kwargs[f.name] = float(kwargs[f.name])
    return config_cls.from_kwargs(strategy, **kwargs)
