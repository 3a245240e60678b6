"""What every token strategy shares: config checks that need the model, the handle; the engine is
:mod:`dynaccel.plugins.engine.tokens`."""

from __future__ import annotations

from typing import Any

from ...core.adapters import DECODER_LAYERS, FLOW_POLICY
from ...core.errors import ConfigError, UnsupportedModelError
from ...core.strategy import Handle, Strategy
from ..engine.base import EngineHandle, apply_engine
from ..engine.tokens import Policy, TokenEngine, check_attention


def check_layer(strategy: str, name: str, value: int, low: int, high: int, num_layers: int) -> None:
    if not low <= value <= high:
        raise ConfigError(
            f"option {name!r}: got {value!r} (the model has {num_layers} decoder layers); "
            f"accepted for {strategy!r} on this model: int with {low} <= {name} <= {high}"
        )


def check_transformers(strategy: str) -> None:
    """The engine uses transformers 5's cache layers and attention/mask interfaces."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        raise UnsupportedModelError(
            f"strategy {strategy!r} needs transformers >= 5.0 (cache layers, AttentionMaskInterface); "
            f"installed: {transformers.__version__}; pip install 'dynaccel[transformers]'"
        )


class TokenHandle(EngineHandle):
    """Handle of a token strategy on one model (the shared engine handle)."""


class TokenStrategy(Strategy):
    """Base of the token strategies: subclasses build a :class:`Policy` from the config and the model."""

    needs_capabilities = frozenset({DECODER_LAYERS})
    #: the prefix of the VLA family's robot policies must not be pruned twice (vla_cache, prefix_prune)
    conflicts_with = frozenset({"token_pruning", "early_exit", "vla"})

    def make_policy(self, adapter: Any, config: Any, num_layers: int) -> Policy:
        raise NotImplementedError

    def policy_engine(self, model: Any, adapter: Any, config: Any) -> Any:
        """The engine that runs this strategy on a robot policy's prefix (strategies that declare
        ``alternative_capabilities = (frozenset({FLOW_POLICY}),)``; see :mod:`dynaccel.plugins.vla.prefix_tokens`)."""
        raise NotImplementedError

    def apply(self, target: Any, config: Any, adapter: Any, run_probe: Any) -> Handle:
        check_transformers(self.name)
        if DECODER_LAYERS not in adapter.capabilities and FLOW_POLICY in adapter.capabilities:
            from ..vla.engine import PolicyHandle

            engine = self.policy_engine(target, adapter, config)  # raises on bad input, before anything is installed
            return apply_engine(self, target, config, engine, PolicyHandle)
        num_layers = len(adapter.decoder_layers())
        policy = self.make_policy(adapter, config, num_layers)  # raises on bad input, before anything is installed
        if policy.needs_scores or policy.needs_attention:
            check_attention(self.name, adapter.text_config())
        if policy.vision_modules(adapter):
            check_attention(self.name, adapter.vision_config())
        return apply_engine(self, target, config, TokenEngine(adapter, policy, self.name), TokenHandle)
