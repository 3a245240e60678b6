"""The ComfyUI nodes (V3 API): one per cache strategy, generated from its Config, a preset node and a stats node.

Imported only by :func:`dynaccel.comfy_nodes.comfy_entrypoint`, i.e. inside a running ComfyUI.

- ``dynaccel <Strategy>`` (``Dynaccel_<name>``): MODEL in, MODEL out, placed between the model loader and the
  sampler; one input per Config field with the field's default, min, max, step and doc (as tooltip).
- ``dynaccel Preset`` (``Dynaccel_Preset``): applies a preset by name: those made for an architecture a ComfyUI
  adapter covers; one made for another architecture than the model's is refused when the node runs.
- MagCache and SmoothCache nodes (calibrated strategies) have a ``keep_calibration`` input: on (the default), the
  calibration their first run makes is kept per model across node re-runs.
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
from ..plugins.cache.calibration import CalibratedPolicy
from .presets import cache_strategies, check_preset, default_preset, offered_presets
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


def _keep_calibration_input():
    return io.Boolean.Input(
        "keep_calibration", default=True, optional=True,
        tooltip="keep the calibration of the first run (every step computed) for this model across re-runs of the "
                "node; off: calibrate again each time the node runs (e.g. after changing the model's weights)",
    )


def _node_id(node_cls) -> str | None:
    hidden = getattr(node_cls, "hidden", None)
    return getattr(hidden, "unique_id", None) if hidden is not None else None


def strategy_node(strategy_cls: type) -> type[io.ComfyNode]:
    """A V3 node class for one cache strategy, its inputs generated from the strategy's Config."""
    name = strategy_cls.name
    inputs = node_inputs(strategy_cls.Config)
    calibrates = issubclass(getattr(strategy_cls, "Policy", object), CalibratedPolicy)

    class StrategyNode(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id=f"Dynaccel_{name}",
                display_name=f"dynaccel {strategy_cls.__name__}",
                category=CATEGORY,
                description=f"{strategy_cls.summary}. {strategy_cls.paper}",
                inputs=[io.Model.Input("model", tooltip="the diffusion model to accelerate")]
                + [_comfy_input(s) for s in inputs] + ([_keep_calibration_input()] if calibrates else []),
                outputs=[io.Model.Output(tooltip=f"the model running {name}")],
                hidden=[io.Hidden.unique_id],
            )

        @classmethod
        def execute(cls, model, keep_calibration: bool = True, **values: Any) -> io.NodeOutput:
            cfg = config_from_inputs(name, strategy_cls.Config, values)
            patched, _ = accelerate(model, name, cfg.to_dict(), keep_calibration=keep_calibration, node_id=_node_id(cls))
            return io.NodeOutput(patched)

    StrategyNode.__name__ = StrategyNode.__qualname__ = f"Dynaccel_{name}"
    return StrategyNode


class PresetNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        presets = offered_presets()
        return io.Schema(
            node_id="Dynaccel_Preset",
            display_name="dynaccel Preset",
            category=CATEGORY,
            description="apply a tuned dynaccel preset (strategy and options, with provenance) by name; a preset made "
                        "for another architecture than the model's is refused",
            inputs=[
                io.Model.Input("model", tooltip="the diffusion model to accelerate"),
                io.Combo.Input("preset", options=presets, default=default_preset(presets),
                               tooltip="preset name (the presets made for models ComfyUI runs; the name tells which)"),
                _keep_calibration_input(),
            ],
            outputs=[io.Model.Output(tooltip="the model running the preset's strategy")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, preset: str, keep_calibration: bool = True) -> io.NodeOutput:
        p = resolve_preset(preset)
        dm = getattr(getattr(model, "model", None), "diffusion_model", None)
        if dm is not None:  # (no diffusion model: the runner says so)
            check_preset(p, dm)
        patched, _ = accelerate(model, p.strategy, dict(p.config), keep_calibration=keep_calibration,
                                node_id=_node_id(cls))
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
            if getattr(acc.policy, "calibration", "") is None:
                text += " (its first run computes every step to calibrate)"
        else:
            runs = acc.history[-8:]  # several samplers may share the model: their runs, most recent last
            text = runs[-1]["summary"] + "\n" + json.dumps(runs, default=str)
        return io.NodeOutput(latent, text, ui=ui.PreviewText(text))


class DynaccelExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [strategy_node(s) for s in cache_strategies()] + [PresetNode, StatsNode]


async def comfy_entrypoint() -> DynaccelExtension:
    return DynaccelExtension()
