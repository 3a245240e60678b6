"""The sparse-attention side of the ComfyUI pack, without ComfyUI: which strategies get nodes, the Wan adapter's token
grid, the layout of ComfyUI's attention calls, and the runner's routing of attention calls (a model shaped like
ComfyUI's WanModel: blocks through replace patches, each calling the attention function for its self-attention first
and its cross-attention second). The real ComfyUI runs are in test_comfyui_integration.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_wan_transformer

import dynaccel
from dynaccel.comfy_nodes import runner
from dynaccel.comfy_nodes.adapters import ComfyWanAdapter, attention_call, attention_output
from dynaccel.comfy_nodes.attention_runner import SparseAttentionAccelerator
from dynaccel.comfy_nodes.presets import RUNNERS, comfy_strategies, runnable
from dynaccel.core.registry import get_registry
from dynaccel.plugins.sparse_attention.sliding_tile import SlidingTile

SPARSE = {"sliding_tile", "radial", "svg", "pasa"}
CACHE = {"teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer",
         "seacache"}


def test_nodes_come_from_the_strategies_that_declare_a_comfyui_runner():
    names = {s.name for s in comfy_strategies()}
    assert names >= SPARSE | CACHE
    reg = get_registry()
    for name in set(reg.strategies) - names:  # token pruning, early exit...: no runner declared
        assert getattr(reg.strategies[name], "comfyui_runner", None) not in RUNNERS, name
    for name in names:
        assert reg.strategies[name].comfyui_runner in RUNNERS

    class Undeclared(SlidingTile):
        comfyui_runner = None

    class NoAdapterAnswers(SlidingTile):  # a capability no ComfyUI adapter answers
        needs_capabilities = frozenset({"no_such_capability"})

    assert runnable(SlidingTile) and not runnable(Undeclared) and not runnable(NoAdapterAnswers)


# ---- a model shaped like ComfyUI's WanModel (class name and module as ComfyUI's, so the adapter matches it) --------

HEADS, DIM, LAYERS, TEXT = 2, 8, 3, 5


class WanModel(torch.nn.Module):
    """Latent (B, 16, T, H, W) -> 2x2 patches -> LAYERS blocks of [self-attention, cross-attention] -> unpatchify."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch_size = (1, 2, 2)
        self.ref_conv = None
        self.embed = torch.nn.Linear(16 * 4, HEADS * DIM)
        self.out = torch.nn.Linear(HEADS * DIM, 16 * 4)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict({"self_attn": torch.nn.Linear(HEADS * DIM, 3 * HEADS * DIM),
                                 "cross_attn": torch.nn.Linear(HEADS * DIM, HEADS * DIM)}) for _ in range(LAYERS)
        )

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}):
        b, c, t, h, w = x.shape
        tok = x.unflatten(3, (h // 2, 2)).unflatten(5, (w // 2, 2)).permute(0, 2, 3, 5, 1, 4, 6).flatten(4).flatten(1, 3)
        hs = self.embed(tok)
        attn = transformer_options["attention"]
        patches = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, blk in enumerate(self.blocks):
            def block(args, blk=blk):
                q, k, v = blk["self_attn"](args["img"]).chunk(3, dim=-1)
                y = args["img"] + attn(q, k, v, heads=HEADS, transformer_options=transformer_options)
                cq = blk["cross_attn"](y)
                return {"img": y + attn(cq, context, context, heads=HEADS, transformer_options=transformer_options)}

            patch = patches.get(("double_block", i))
            hs = patch({"img": hs}, {"original_block": block})["img"] if patch else block({"img": hs})["img"]
        out = self.out(hs).unflatten(1, (t, h // 2, w // 2)).unflatten(4, (c, 2, 2))
        return out.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, t, h, w)


WanModel.__module__ = "comfy.ldm.wan.model"


def _attention_function(override, log):
    """ComfyUI's ``wrap_attn``: the override, when set, gets the plain attention function and the call."""

    def plain(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
        log.append(k.shape[1])
        qh, kh, vh = (t.unflatten(2, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).flatten(2)

    def wrapped(q, k, v, heads, **kwargs):
        if override is not None:
            return override(plain, q, k, v, heads=heads, **kwargs)
        return plain(q, k, v, heads=heads, **kwargs)

    return wrapped


def _sample(model, acc, log, steps=6, batch=1):
    """Drive the model as ComfyUI's sampler does: OUTER_SAMPLE around the run, DIFFUSION_MODEL around each call, the
    block replace patches and the attention override in transformer_options; Euler on flow-matching sigmas."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 3, 16, 16, generator=g)  # token grid (3, 8, 8)
    ctx = torch.randn(batch, TEXT, HEADS * DIM, generator=g)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    patches = {("double_block", i): (lambda i: lambda a, e: acc.block_call(i, a, e))(i) for i in range(LAYERS)}
    opts = {"attention": _attention_function(acc.attention if acc else None, log),
            "patches_replace": {"dit": patches} if acc else {}}

    def run(*_):
        y = x
        for i in range(steps):
            o = dict(opts, sigmas=sigmas[i:i + 1], cond_or_uncond=[0])
            args = (y, sigmas[i:i + 1] * 1000, ctx, None, None, o)
            v = acc.diffusion_model_call(model, *args) if acc else model(*args)
            y = y + (sigmas[i + 1] - sigmas[i]) * v
        return y

    with torch.no_grad():
        return acc.sample(run, None, None, None, sigmas) if acc else run()


def _accelerator(name, model=None, **options):
    model = WanModel() if model is None else model
    return runner.make_accelerator(SimpleNamespace(model=SimpleNamespace(diffusion_model=model)), name, options)


def test_make_accelerator_gives_the_sparse_runner_on_wan_and_refuses_other_models():
    acc = _accelerator("sliding_tile", block_size=16)
    assert isinstance(acc, SparseAttentionAccelerator) and isinstance(acc.adapter, ComfyWanAdapter)
    wan = tiny_wan_transformer(num_layers=2)  # a diffusers model: no ComfyUI adapter
    with pytest.raises(dynaccel.UnsupportedModelError,
                       match=r"sliding_tile: this model \(diffusers\..*WanTransformer3DModel\) is not supported; "
                             r"supported ComfyUI models: ComfyUI WanModel \(Wan 2.1, Wan 2.2\)\. Remove this node"):
        runner.make_accelerator(SimpleNamespace(model=SimpleNamespace(diffusion_model=wan)), "sliding_tile", {})
    with pytest.raises(dynaccel.ConfigError, match="option 'density'"):
        _accelerator("pasa", density=2.0)
    assert not wan._forward_hooks and not wan._forward_pre_hooks


def test_wan_token_grid_after_patching():
    adapter = ComfyWanAdapter(WanModel())
    x = torch.zeros(1, 16, 3, 16, 16)
    assert adapter.token_grid((x, None, None), {}) == (3, 8, 8)
    assert adapter.token_grid((torch.zeros(1, 16, 2, 15, 17), None, None), {}) == (2, 8, 9)  # padded to the patch
    assert adapter.token_grid((x, None, None, None, torch.zeros(1, 16, 2, 16, 16)), {}) == (5, 8, 8)  # time_dim_concat
    adapter.model.ref_conv = torch.nn.Identity()
    assert adapter.token_grid((x, None, None), {"reference_latent": torch.zeros(1, 16, 16, 16)}) == (4, 8, 8)
    assert adapter.self_attention_blocks() == [("double_block", i) for i in range(LAYERS)]
    assert adapter.self_attention_text == 0


def test_attention_call_layouts():
    q, k, v = (torch.randn(2, 10, 3 * 4) for _ in range(3))
    got = attention_call((q, k, v), {"heads": 3})
    assert all(torch.equal(a, b.unflatten(2, (3, 4))) for a, b in zip(got, (q, k, v)))
    assert torch.equal(attention_output(got[0], (q, k, v), {"heads": 3}), q)
    assert torch.equal(attention_call((q, k, v, 3), {})[1], k.unflatten(2, (3, 4)))  # heads given positionally
    qh = q.unflatten(2, (3, 4)).transpose(1, 2)  # (B, heads, N, dim) with skip_reshape
    got = attention_call((qh, qh, qh), {"heads": 3, "skip_reshape": True, "skip_output_reshape": True})
    assert torch.equal(got[0], q.unflatten(2, (3, 4)))
    assert torch.equal(attention_output(got[0], (qh,), {"skip_output_reshape": True}), qh)
    assert attention_call((q, k[:, :4], v[:, :4]), {"heads": 3}) is None  # cross-attention: other key length
    assert attention_call((q, k, v), {"heads": 3, "mask": torch.ones(10, 10)}) is None


def test_dense_settings_are_bit_identical_and_only_self_attention_goes_sparse():
    model = WanModel()
    plain_log: list[int] = []
    plain = _sample(model, None, plain_log)
    assert plain_log.count(192) == 6 * LAYERS and plain_log.count(TEXT) == 6 * LAYERS

    for options in ({"dense_steps": 6}, {"radius_frames": 1000, "radius_height": 1000, "radius_width": 1000}):
        log: list[int] = []
        acc = _accelerator("sliding_tile", model, block_size=16, **options)
        assert torch.equal(_sample(model, acc, log), plain) and log == plain_log
        assert acc.last_stats["sparse_calls"] == 0 and acc.last_stats["dense_calls"] == 6 * LAYERS

    log = []
    acc = _accelerator("sliding_tile", model, block_size=16, radius_frames=0, dense_steps=2)
    out = _sample(model, acc, log)
    stats = acc.last_stats
    # the self-attention calls of the 4 sparse steps went to the engine; cross-attention always ran the function
    assert (stats["sparse_calls"], stats["dense_calls"], stats["steps"]) == (4 * LAYERS, 2 * LAYERS, 6)
    assert log.count(TEXT) == 6 * LAYERS and log.count(192) == 2 * LAYERS
    assert stats["density_per_step"] == {0: 1.0, 1: 1.0, 2: 1 / 3, 3: 1 / 3, 4: 1 / 3, 5: 1 / 3}
    assert 0 < float((out - plain).norm() / plain.norm()) < 0.5
    assert stats["summary"] == "sliding_tile: 12/18 attention calls sparse, mean density 0.56 over 6 steps"
    assert acc.engine is None and acc.layer is None  # the run's state is dropped at its end


def test_calls_not_taken_go_to_the_override_that_was_there_before():
    model = WanModel()
    seen: list[int] = []

    def previous(func, *args, **kwargs):
        seen.append(args[1].shape[1])
        return func(*args, **kwargs)

    acc = _accelerator("sliding_tile", model, block_size=16, radius_frames=0, dense_steps=2)
    acc.previous_override = previous
    _sample(model, acc, [])
    assert seen.count(TEXT) == 6 * LAYERS and seen.count(192) == 2 * LAYERS  # cross-attention and dense steps
    # outside a sampling run the override and the block patches pass everything through
    log: list[int] = []
    fn = _attention_function(acc.attention, log)
    q = torch.randn(1, 192, HEADS * DIM)
    assert torch.equal(fn(q, q, q, heads=HEADS), _attention_function(None, [])(q, q, q, heads=HEADS))
    assert log == [192]
