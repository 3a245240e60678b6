"""Strategy Config schema -> ComfyUI node inputs, without ComfyUI.

Each config field (declared once with ``option(default, doc, min, max, step, choices)``) becomes one node input:
a float, int or bool widget with the field's default, range, step and doc as tooltip; a combo for fields with
choices; a string otherwise. :func:`node_inputs` gives these as plain :class:`InputSpec` values (tested without
ComfyUI); ``nodes.py`` turns them into ``comfy_api`` inputs. A widget's range is what the schema offers
(:meth:`FieldSpec.offered_range`: one step inside an exclusive bound), so ComfyUI's own range checks and ours agree.
:func:`config_from_inputs` maps the values a node receives back to a validated Config through the schema's one
conversion (:meth:`StrategyConfig.coerce`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.config import StrategyConfig



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
            step = f.control_step()
            cast = float if f.type == "float" else int
            lo, hi = f.offered_range(step)
            out.append(
                InputSpec(
                    f.name,
                    f.type,
                    cast(f.default),
                    tooltip,
                    min=None if lo is None else cast(lo),
                    max=None if hi is None else cast(hi),
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
    names = {f.name for f in config_cls.fields_info()}
    return config_cls.coerce(strategy, {n: v for n, v in values.items() if n in names})
