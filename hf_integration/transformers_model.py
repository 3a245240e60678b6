"""``model.enable_accel(...)``, ``model.disable_accel()`` and ``model.accel_stats`` on every transformers model.

Added to ``PreTrainedModel`` (new attributes only; nothing of transformers is replaced) as soon as both dynaccel and
``transformers.modeling_utils`` are imported, whichever comes first, so that ``import dynaccel`` never imports
transformers. A model that never enables anything runs exactly the code it ran before.

Example::

    import dynaccel
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.enable_accel("fastv", layer=2, keep_ratio=0.5)
    out = model.generate(**inputs, max_new_tokens=20)
    print(model.accel_stats["fastv"]["prefill_token_layers"])
    model.disable_accel()
"""

from __future__ import annotations

from .diffusers_pipeline import attach, install_on

_TARGET_MODULE = "transformers.modeling_utils"

__all__ = ["attach", "install"]


def install() -> None:
    """Attach now if transformers' modeling_utils is imported, else as soon as it is."""
    install_on(_TARGET_MODULE, "PreTrainedModel")
