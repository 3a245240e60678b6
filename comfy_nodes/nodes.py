"""The ComfyUI nodes (V3 API): one per cache strategy, generated from its Config, a preset node and a stats node.

Imported only by :func:`dynaccel.comfy_nodes.comfy_entrypoint`, i.e. inside a running ComfyUI.

- ``dynaccel <Strategy>`` (``Dynaccel_<name>``): MODEL in, MODEL out, placed between the model loader and the
  sampler; one input per Config field with the field's default, min, max, step and doc (as tooltip).
- ``dynaccel Preset`` (``Dynaccel_Preset``): applies a preset by name (the built-in cache presets).
- ``dynaccel Stats`` (``Dynaccel_Stats``): MODEL and the sampler's LATENT in; returns the LATENT and, as a STRING
  shown on the node, the last run's summary line followed by the JSON stats of the recent runs (most recent last).

Bad input fails when the node runs, before any sampling, with the reason (unsupported model, bad option); ComfyUI
shows it on the node, and the workflow can be queued again once it is fixed. Out-of-range numbers are refused by
ComfyUI's own validation against the schema ranges, before anything runs.
"""

from __future__ import annotations

import json
from typing import Any

from comfy_api.latest import ComfyExtension, io, ui

from ..core.api import resolve_preset
from ..core.registry import get_registry
from .runner import accelerate, accelerator_of
from .schema import InputSpec, config_from_inputs, node_inputs

CATEGORY = "dynaccel"


def _comfy_input(spec: InputSpec):
    # optional: a workflow saved before an option existed still validates, and the option takes its default
    common = dict(default=spec.default, tooltip=spec.tooltip, optional=True)
    if spec.kind == "float":
        return io.Float.Input(spec.name, min=spec.min, max=spec.max, step=spec.step, **common)
    if spec.kind == "int":
        return io.Int.Input(spec.name, min=spec.min, max=spec.max, step=spec.step, **common)
    if spec.kind == "bool":
        return io.Boolean.Input(spec.name, **common)
    if spec.kind == "combo":
        return io.Combo.Input(spec.name, options=list(spec.options), **common)
    return io.String.Input(spec.name, **common)


def cache_strategies() -> list[type]:
    """The registered strategies the ComfyUI runner can drive (cache family, policy based), by name."""
    reg = get_registry()
    return [reg.strategies[n] for n in sorted(reg.strategies) if reg.strategies[n].family == "cache" and hasattr(reg.strategies[n], "Policy")]


def strategy_node(strategy_cls: type) -> type[io.ComfyNode]:
    """A V3 node class for one cache strategy, its inputs generated from the strategy's Config."""
    name = strategy_cls.name
    inputs = node_inputs(strategy_cls.Config)

    class StrategyNode(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id=f"Dynaccel_{name}",
                display_name=f"dynaccel {strategy_cls.__name__}",
                category=CATEGORY,
                description=f"{strategy_cls.summary}. {strategy_cls.paper}",
                inputs=[io.Model.Input("model", tooltip="the diffusion model to accelerate")]
                + [_comfy_input(s) for s in inputs],
                outputs=[io.Model.Output(tooltip=f"the model running {name}")],
            )

        @classmethod
        def execute(cls, model, **values: Any) -> io.NodeOutput:
            cfg = config_from_inputs(name, strategy_cls.Config, values)
            patched, _ = accelerate(model, name, cfg.to_dict())
            return io.NodeOutput(patched)

    StrategyNode.__name__ = StrategyNode.__qualname__ = f"Dynaccel_{name}"
    return StrategyNode


def _cache_presets() -> list[str]:
    names = {s.name for s in cache_strategies()}
    return sorted(n for n, p in get_registry().presets.items() if p.strategy in names)


class PresetNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        presets = _cache_presets()
        return io.Schema(
            node_id="Dynaccel_Preset",
            display_name="dynaccel Preset",
            category=CATEGORY,
            description="apply a tuned dynaccel preset (strategy and options, with provenance) by name",
            inputs=[
                io.Model.Input("model", tooltip="the diffusion model to accelerate"),
                io.Combo.Input("preset", options=presets, default=presets[0] if presets else None, tooltip="preset name"),
            ],
            outputs=[io.Model.Output(tooltip="the model running the preset's strategy")],
        )

    @classmethod
    def execute(cls, model, preset: str) -> io.NodeOutput:
        p = resolve_preset(preset)
        patched, _ = accelerate(model, p.strategy, dict(p.config))
        return io.NodeOutput(patched)


class StatsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Dynaccel_Stats",
            display_name="dynaccel Stats",
            category=CATEGORY,
            description="what the dynaccel node on this model did in its last sampling run",
            inputs=[
                io.Model.Input("model", tooltip="the model output of a dynaccel node (the one given to the sampler)"),
                io.Latent.Input("latent", tooltip="the sampler's output (so that this node runs after it)"),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.String.Output(display_name="stats")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, latent) -> io.NodeOutput:
        acc = accelerator_of(model)
        if acc is None:
            text = "no dynaccel node on this model"
        elif acc.last_stats is None:
            text = f"{acc.strategy.name}: no sampling run yet"
        else:
            runs = acc.history[-8:]  # several samplers may share the model: their runs, most recent last
            text = runs[-1]["summary"] + "\n" + json.dumps(runs, default=str)
        return io.NodeOutput(latent, text, ui=ui.PreviewText(text))


class DynaccelExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [strategy_node(s) for s in cache_strategies()] + [PresetNode, StatsNode]


async def comfy_entrypoint() -> DynaccelExtension:
    return DynaccelExtension()
