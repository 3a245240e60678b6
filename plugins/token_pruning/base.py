"""What every token strategy shares: config checks that need the model, the engine, the handle."""

from __future__ import annotations

from typing import Any

from ...core.adapters import DECODER_LAYERS
from ...core.errors import ConfigError, UnsupportedModelError
from ...core.strategy import Handle, Strategy
from .engine import Policy, TokenEngine, check_attention


def check_keep_ratio(value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"option 'keep_ratio': got {value!r} (outside the range); accepted: float with 0 < keep_ratio <= 1")


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


class TokenHandle(Handle):
    def __init__(self, strategy: str, family: str, target: Any, config: Any, engine: TokenEngine):
        super().__init__(strategy, family, target, config)
        self.engine = engine

    def _remove(self) -> None:
        self.engine.remove()

    def _reset(self, num_steps: int | None) -> None:
        self.engine.reset_stats()
        self.engine.policy.reset()

    @property
    def stats(self) -> dict[str, Any]:
        s = dict(self.engine.stats)
        s.update(getattr(self.engine.policy, "stats", {}))
        return s

    def summary(self) -> str:
        s = self.stats
        parts = [f"{self.strategy}:"]
        if s["prefill_token_layers_full"]:
            parts.append(
                f"prefill computed {s['prefill_token_layers']}/{s['prefill_token_layers_full']} token-layers "
                f"({s['prefill_tokens']} tokens x {s['layers']} layers)"
            )
        if s["decode_token_layers_full"]:
            parts.append(f"decode {s['decode_token_layers']}/{s['decode_token_layers_full']} token-layers over {s['decode_steps']} steps")
        if s["kv_entries_full"]:
            parts.append(f"KV cache {s['kv_entries']}/{s['kv_entries_full']} entries")
        return " ".join(parts)


class TokenStrategy(Strategy):
    """Base of the token strategies: subclasses build a :class:`Policy` from the config and the model."""

    needs_capabilities = frozenset({DECODER_LAYERS})
    conflicts_with = frozenset({"token_pruning", "early_exit"})

    def make_policy(self, adapter: Any, config: Any, num_layers: int) -> Policy:
        raise NotImplementedError

    def apply(self, target: Any, config: Any, adapter: Any, run_probe: Any) -> Handle:
        check_transformers(self.name)
        num_layers = len(adapter.decoder_layers())
        policy = self.make_policy(adapter, config, num_layers)  # raises on bad input, before anything is installed
        if policy.needs_scores or policy.needs_attention:
            check_attention(self.name, adapter.text_config())
        if policy.vision_modules(adapter):
            check_attention(self.name, adapter.vision_config())
        engine = TokenEngine(adapter, policy)
        engine.install()
        return TokenHandle(self.name, self.family, target, config, engine)
