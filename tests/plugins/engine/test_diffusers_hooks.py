"""What the engines rely on in diffusers' hooks API (see docs/engine.md): fails loudly when diffusers changes it."""

import dataclasses

import torch
from tiny_models import tiny_wan_transformer

from dynaccel.plugins.engine import diffusers_hooks
from dynaccel.plugins.engine.base import hook_name


class _Counting:
    def __init__(self):
        self.calls = 0
        self.contexts = []

    def model_forward(self, orig, ctx, args, kwargs):
        self.calls += 1
        self.contexts.append(ctx)
        return orig(*args, **kwargs)

    def finish_run(self):
        pass


def _call(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    enc = torch.randn(1, 8, model.config.text_dim, generator=g)
    return model(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=enc, return_dict=False)[0]


def test_removing_the_first_of_two_hooks_keeps_the_second_running():
    model = tiny_wan_transformer()
    plain = _call(model)
    a, b = _Counting(), _Counting()
    na, nb = hook_name("test", "a"), hook_name("test", "b")
    diffusers_hooks.add_hook(model, diffusers_hooks.run_hook(a), na)
    diffusers_hooks.add_hook(model, diffusers_hooks.run_hook(b), nb)
    _call(model)
    assert (a.calls, b.calls) == (1, 1)
    diffusers_hooks.remove_hook(model, na)  # a hook followed by another with a new_forward
    assert torch.equal(_call(model), plain)
    assert (a.calls, b.calls) == (1, 2)
    diffusers_hooks.remove_hook(model, nb)
    diffusers_hooks.remove_hook(model, nb)  # idempotent
    assert torch.equal(_call(model), plain) and b.calls == 2 and not model._diffusers_hook.hooks


def test_the_cache_context_reaches_the_run_hook_with_its_fields():
    model = tiny_wan_transformer()
    eng = _Counting()
    name = hook_name("test", "ctx")
    diffusers_hooks.add_hook(model, diffusers_hooks.run_hook(eng), name)
    _call(model)  # no context: a bare call
    with model.cache_context("uncond", step_index=3, num_inference_steps=9):
        _call(model)
    diffusers_hooks.remove_hook(model, name)
    assert eng.contexts[0] is None
    assert diffusers_hooks.context_fields(eng.contexts[1]) == ("uncond", 3, 9, None)
    fields = {f.name for f in dataclasses.fields(type(eng.contexts[1]))}
    assert {"name", "step_index", "num_inference_steps", "timestep"} <= fields
