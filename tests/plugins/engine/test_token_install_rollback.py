"""A token strategy whose install fails part-way leaves the model exactly as it was (issue 13, defect 2).

The failure is injected after the engine has registered its hooks and pointed the model's attention at the
dynaccel attention function: the shared install-or-roll-back must take every piece out again.
"""

import pytest
import torch

import dynaccel
from dynaccel.plugins.engine import tokens
from tiny_lms import tiny_llava


def _generate(model, inputs):
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


def _our_hooks(model):
    found = []
    for m in model.modules():
        hooks = list(m._forward_pre_hooks.values()) + list(m._forward_hooks.values())
        found += [type(m).__name__ for h in hooks if getattr(h, "__module__", "").startswith("dynaccel")]
    return found


@pytest.mark.parametrize("strategy, options", [
    ("fastv", dict(layer=2, keep_ratio=0.5)),  # text attention swapped
    ("visionzip", dict(keep_ratio=0.25)),  # vision-encoder attention swapped too
])
def test_a_failure_part_way_through_install_leaves_no_hook_and_bit_identical_outputs(monkeypatch, strategy, options):
    model, make = tiny_llava("sdpa")
    inputs = make((20, 17))
    seq, scores = _generate(model, inputs)
    text_cfg, vision_cfg = model.config.get_text_config(), model.config.vision_config
    attn_before = (text_cfg._attn_implementation, vision_cfg._attn_implementation)

    real = tokens.TokenEngine._swap_attention
    swaps = []

    def swap_then_fail(self, config, module):
        fn = real(self, config, module)  # the attention name is changed and hooks are in place when this fails
        swaps.append(config._attn_implementation)
        raise RuntimeError("injected failure while swapping attention")

    monkeypatch.setattr(tokens.TokenEngine, "_swap_attention", swap_then_fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        dynaccel.enable_accel(model, strategy, **options)
    monkeypatch.undo()

    assert swaps and swaps[0].startswith("dynaccel_")  # the failure did happen part-way
    assert _our_hooks(model) == []
    assert (text_cfg._attn_implementation, vision_cfg._attn_implementation) == attn_before
    assert all(tokens.owner_of(m) is None for m in model.modules())
    assert dynaccel.active_handles(model) == {}
    seq2, scores2 = _generate(model, inputs)
    assert torch.equal(seq, seq2) and torch.equal(scores, scores2)
