"""The diffusers model adapters on tiny transformers built from config (random weights, one CPU thread).

For Wan, FLUX, HunyuanVideo (T2V and the I2V ``token_replace`` blocks), CogVideoX and LTX-Video:

- the registry picks the right adapter;
- ``modulated_input`` computed from block 0's call arguments equals the TeaCache signal as the model itself produces
  it, captured independently by hooks: the hidden input block 0's first attention receives (FLUX,
  HunyuanVideo, LTX-Video), or the timestep embedding the published coefficients were fit on (Wan, CogVideoX);
- every cache strategy, with threshold 0, is bit-identical to the plain model over a short denoising loop; with a
  high threshold it skips block attention; after ``disable_accel`` the model is bit-identical again;
- ``teacache_profile`` names the published coefficient sets for the real models' configs (built on the meta device,
  so nothing is allocated) and ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from tiny_models import (
    TEXT_DIM,
    cogvideox_inputs,
    hunyuan_inputs,
    ltx_inputs,
    tiny_cogvideox_transformer,
    tiny_flux_transformer,
    tiny_hunyuan_transformer,
    tiny_ltx_transformer,
    tiny_wan_transformer,
)

import dynaccel
from dynaccel.core.adapters import BlockSpec
from dynaccel.core.registry import get_registry
from dynaccel.plugins.adapters.diffusers_models import (
    CogVideoXAdapter,
    FluxAdapter,
    HunyuanVideoAdapter,
    LTXVideoAdapter,
    WanAdapter,
)

torch.set_num_threads(1)

STEPS = 6
STRATEGIES = ("teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer", "seacache")
CALIBRATED = {"magcache", "smoothcache"}  # the first run calibrates in full
#: thresholds at which every tiny model skips (all within each strategy's Config range)
HIGH = {"teacache": 1.0, "fbcache": 1.0, "easycache": 0.5, "magcache": 1.0, "adacache": 1.0, "bwcache": 1.0,
        "smoothcache": 1.0, "taylorseer": 1.0, "seacache": 1.0}


def _reused(stats):
    """Passes skipped, or block calls reused for the per-block strategies."""
    return stats["skipped"] + stats.get("blocks_reused", 0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def wan_inputs(batch: int = 2, seed: int = 0) -> dict:
    return dict(
        hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=_gen(seed)),
        timestep=torch.full((batch,), 999.0),
        encoder_hidden_states=torch.randn(batch, 8, TEXT_DIM, generator=_gen(seed + 1)),
    )


def flux_inputs(batch: int = 2, seed: int = 0) -> dict:
    h = w = 4
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    return dict(
        hidden_states=torch.randn(batch, h * w, 16, generator=_gen(seed)),
        encoder_hidden_states=torch.randn(batch, 8, TEXT_DIM, generator=_gen(seed + 1)),
        pooled_projections=torch.randn(batch, TEXT_DIM, generator=_gen(seed + 2)),
        timestep=torch.full((batch,), 0.999),
        img_ids=img_ids.reshape(-1, 3),
        txt_ids=torch.zeros(8, 3),
    )


@dataclass(frozen=True)
class Arch:
    build: Callable[[], torch.nn.Module]
    inputs: Callable[..., dict]
    adapter: type
    #: the ``timestep`` input for a scheduler timestep t in [0, 1000], as the pipeline passes it
    timestep: Callable[[torch.Tensor, int], torch.Tensor]
    #: which tensor ``modulated_input`` must equal: "attn" (block 0's attention hidden input), "temb" (the
    #: timestep embedding, captured from the named model submodule's output)
    signal: str
    signal_module: str = ""


def _float_t(t, batch):
    return t.expand(batch).clone()


ARCHS = {
    "wan": Arch(tiny_wan_transformer, wan_inputs, WanAdapter, _float_t, "temb", "condition_embedder"),
    "flux": Arch(tiny_flux_transformer, flux_inputs, FluxAdapter, lambda t, b: (t / 1000).expand(b).clone(), "attn"),
    "hunyuan": Arch(tiny_hunyuan_transformer, hunyuan_inputs, HunyuanVideoAdapter, _float_t, "attn"),
    "hunyuan_i2v": Arch(
        lambda: tiny_hunyuan_transformer(image_condition_type="token_replace"),
        hunyuan_inputs, HunyuanVideoAdapter, _float_t, "attn",
    ),
    "cogvideox": Arch(
        tiny_cogvideox_transformer, cogvideox_inputs, CogVideoXAdapter,
        lambda t, b: t.round().long().expand(b).clone(), "temb", "time_embedding",
    ),
    "ltx": Arch(tiny_ltx_transformer, ltx_inputs, LTXVideoAdapter, _float_t, "attn"),
}
STRATEGY_ARCHS = ("wan", "flux", "hunyuan", "cogvideox", "ltx")
STRATEGY_CASES = [(a, s) for a in STRATEGY_ARCHS for s in STRATEGIES] + [("hunyuan_i2v", "teacache")]


def _attentions(block: torch.nn.Module) -> list[torch.nn.Module]:
    """The block's attention modules (attn / attn1 / attn2): a skipped block reaches none of them."""
    return [m for name, m in block.named_children() if name in ("attn", "attn1", "attn2")]


def _output(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0]


def _denoise(model, arch: Arch, inputs: dict) -> list[torch.Tensor]:
    """A bare-model denoising loop over decreasing timesteps: x <- x - 0.1 * model(x, t)."""
    x = inputs["hidden_states"]
    outs = []
    for t in torch.linspace(999.0, 100.0, STEPS):
        out = _output(model, **{**inputs, "hidden_states": x, "timestep": arch.timestep(t, x.shape[0])})
        outs.append(out)
        x = x - 0.1 * out
    return outs


class AttentionCounter:
    def __init__(self, model, arch: Arch):
        self.count = 0
        blocks = [spec.module for spec in arch.adapter(model).blocks()]
        self._hooks = [a.register_forward_pre_hook(self._hit) for b in blocks for a in _attentions(b)]
        assert self._hooks

    def _hit(self, *_):
        self.count += 1

    def remove(self):
        for h in self._hooks:
            h.remove()


def _counted(model, arch: Arch, fn):
    counter = AttentionCounter(model, arch)
    try:
        result = fn()
    finally:
        counter.remove()
    return result, counter.count


def _assert_identical(outs, ref):
    assert len(outs) == len(ref)
    for i, (a, b) in enumerate(zip(outs, ref)):
        assert torch.equal(a, b), f"step {i}: max |diff| {(a - b).abs().max().item()}"


# ---- adapters ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ARCHS))
def test_registry_finds_the_adapter(name):
    arch = ARCHS[name]
    model = arch.build()
    adapter = get_registry().find_adapter(model)
    assert type(adapter) is arch.adapter
    assert adapter.model is model


@pytest.mark.parametrize("name", list(ARCHS))
def test_blocks_are_listed_in_execution_order_and_unpack_like_the_model(name):
    """Every block's actual output, unpacked by its spec, is the next block's input (and ``pack`` rebuilds it)."""
    arch = ARCHS[name]
    model = arch.build()
    specs = arch.adapter(model).blocks()
    calls = []
    hooks = [
        s.module.register_forward_hook(
            lambda m, args, kwargs, out, i=i: calls.append((i, args, kwargs, out)), with_kwargs=True
        )
        for i, s in enumerate(specs)
    ]
    try:
        _output(model, **arch.inputs())
    finally:
        for h in hooks:
            h.remove()
    assert [c[0] for c in calls] == list(range(len(specs)))
    for (i, args, kwargs, out), (_, nargs, nkwargs, _) in zip(calls, calls[1:]):
        hs, enc = specs[i].outputs(out)
        nhs, nenc = specs[i + 1].inputs(nargs, nkwargs)
        assert nhs is hs
        if specs[i].encoder_hidden_states_index is not None:
            assert nenc is enc
        packed = specs[i].pack(hs, enc)
        if isinstance(out, torch.Tensor):
            assert packed is hs
        else:
            assert len(packed) == len(out) and all(p is o for p, o in zip(packed, out))


@pytest.mark.parametrize("name", list(ARCHS))
def test_modulated_input_is_what_block0_computes(name):
    arch = ARCHS[name]
    model = arch.build()
    adapter = arch.adapter(model)
    adapter.attach()
    block0 = adapter.blocks()[0].module
    seen: dict = {}

    def block_call(_m, args, kwargs):
        seen["block_args"], seen["block_kwargs"] = args, kwargs

    def attn_call(_m, args, kwargs):
        seen.setdefault("attn", kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    hooks = [block0.register_forward_pre_hook(block_call, with_kwargs=True)]
    hooks.append(_attentions(block0)[0].register_forward_pre_hook(attn_call, with_kwargs=True))
    if arch.signal == "temb":
        def temb_out(_m, _args, out):
            seen["temb"] = out[0] if isinstance(out, tuple) else out

        hooks.append(model.get_submodule(arch.signal_module).register_forward_hook(temb_out))
    try:
        _output(model, **arch.inputs())
        got = adapter.modulated_input(seen["block_args"], seen["block_kwargs"])
    finally:
        for h in hooks:
            h.remove()
        adapter.detach()
    expected = seen[arch.signal]
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    if arch.signal == "attn":  # the attention's hidden input holds the latent tokens only, no text tokens
        hs = BlockSpec(block0).get_arg("hidden_states", seen["block_args"], seen["block_kwargs"])
        assert expected.shape == hs.shape


def test_wan_retention_signal_is_block0_timestep_projection():
    arch = ARCHS["wan"]
    model = arch.build()
    adapter = arch.adapter(model)
    block0 = model.blocks[0]
    seen = {}
    hook = block0.register_forward_pre_hook(lambda _m, a, k: seen.update(args=a, kwargs=k), with_kwargs=True)
    try:
        _output(model, **arch.inputs())
    finally:
        hook.remove()
    temb = BlockSpec(block0).get_arg("temb", seen["args"], seen["kwargs"])
    assert adapter.modulated_input(seen["args"], seen["kwargs"], mode="retention") is temb


# ---- TeaCache profiles ------------------------------------------------------------------------------------------

_COG = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, flip_sin_to_cos=True, freq_shift=0,
    in_channels=16, max_text_seq_length=226, norm_elementwise_affine=True, norm_eps=1e-5, out_channels=16,
    patch_size=2, sample_frames=49, sample_height=60, sample_width=90, spatial_interpolation_scale=1.875,
    temporal_compression_ratio=4, temporal_interpolation_scale=1.0, text_embed_dim=4096, time_embed_dim=512,
    timestep_activation_fn="silu",
)
#: the transformer configs of the published checkpoints (THUDM/..., transformer/config.json)
COG_CONFIGS = {
    "cogvideox-2b": dict(_COG, num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False),
    "cogvideox-5b": dict(_COG, num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
    "cogvideox-5b-i2v": dict(
        _COG, num_attention_heads=48, num_layers=42, in_channels=32, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True,
    ),
    "cogvideox1.5-5b": dict(
        _COG, num_attention_heads=48, num_layers=42, patch_size_t=2, sample_frames=81, sample_height=300,
        sample_width=300, patch_bias=False, use_rotary_positional_embeddings=True,
    ),
    "cogvideox1.5-5b-i2v": dict(
        _COG, num_attention_heads=48, num_layers=42, patch_size_t=2, in_channels=32, ofs_embed_dim=512,
        sample_frames=81, sample_height=300, sample_width=300, patch_bias=False,
        use_rotary_positional_embeddings=True,
    ),
}
COG_PROFILES = {
    "cogvideox-2b": "cogvideox-2b",
    "cogvideox-5b": "cogvideox-5b",
    "cogvideox-5b-i2v": "cogvideox-5b",  # TeaCache publishes the 5b coefficients for 5b-I2V too
    "cogvideox1.5-5b": "cogvideox1.5-5b",
    "cogvideox1.5-5b-i2v": "cogvideox1.5-i2v",
}


@pytest.mark.parametrize("checkpoint", list(COG_CONFIGS))
def test_cogvideox_profile_from_the_real_config(checkpoint):
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**COG_CONFIGS[checkpoint])
    assert CogVideoXAdapter(model).teacache_profile() == COG_PROFILES[checkpoint]


@pytest.mark.parametrize(
    "model_id, profile",
    [
        ("THUDM/CogVideoX-2b", "cogvideox-2b"),
        ("THUDM/CogVideoX-5b", "cogvideox-5b"),
        ("THUDM/CogVideoX-5b-I2V", "cogvideox-5b"),
        ("THUDM/CogVideoX1.5-5B", "cogvideox1.5-5b"),
        ("THUDM/CogVideoX1.5-5B-I2V", "cogvideox1.5-i2v"),
        ("", None),  # a custom config matches no published set: TeaCache falls back to the identity polynomial
    ],
)
def test_cogvideox_profile_from_the_model_id(model_id, profile):
    model = tiny_cogvideox_transformer()
    if model_id:
        model.register_to_config(_name_or_path=model_id)
    assert CogVideoXAdapter(model).teacache_profile() == profile


def test_hunyuanvideo_and_ltx_profiles():
    from diffusers import HunyuanVideoTransformer3DModel, LTXVideoTransformer3DModel

    with torch.device("meta"):  # the published configs' defaults
        hunyuan = HunyuanVideoTransformer3DModel()
        ltx = LTXVideoTransformer3DModel()
    assert HunyuanVideoAdapter(hunyuan).teacache_profile() == "hunyuanvideo"
    assert LTXVideoAdapter(ltx).teacache_profile() == "ltx-video"
    tiny = tiny_hunyuan_transformer()
    tiny.register_to_config(_name_or_path="hunyuanvideo-community/HunyuanVideo")
    assert HunyuanVideoAdapter(tiny).teacache_profile() == "hunyuanvideo"
    tiny = tiny_ltx_transformer()
    tiny.register_to_config(_name_or_path="Lightricks/LTX-Video")
    assert LTXVideoAdapter(tiny).teacache_profile() == "ltx-video"


# ---- the cache strategies through the adapters --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, strategy",
    STRATEGY_CASES,
    ids=[f"{a}-{s}" for a, s in STRATEGY_CASES],
)
def test_strategy_on_the_bare_model(name, strategy):
    arch = ARCHS[name]
    model = arch.build()
    inputs = arch.inputs(batch=2)
    plain, plain_count = _counted(model, arch, lambda: _denoise(model, arch, inputs))

    # threshold 0: never skips, bit-identical
    handle = dynaccel.enable_accel(model, strategy, threshold=0.0)
    try:
        for _ in range(2 if strategy in CALIBRATED else 1):  # calibration run, then a decided run
            handle.reset(num_steps=STEPS)
            _assert_identical(_denoise(model, arch, inputs), plain)
        assert _reused(handle.stats) == 0
    finally:
        dynaccel.disable_accel(model)

    # a high threshold: fewer block attentions, finite outputs
    handle = dynaccel.enable_accel(model, strategy, threshold=HIGH[strategy])
    try:
        if strategy in CALIBRATED:
            handle.reset(num_steps=STEPS)
            _denoise(model, arch, inputs)  # calibrates
            assert _reused(handle.stats) == 0
        handle.reset(num_steps=STEPS)
        outs, count = _counted(model, arch, lambda: _denoise(model, arch, inputs))
        stats = handle.stats
    finally:
        assert dynaccel.disable_accel(model) == [strategy]
    assert _reused(stats) > 0, stats
    assert count < plain_count
    assert all(o.isfinite().all() for o in outs)
    assert all(o.shape == p.shape for o, p in zip(outs, plain))

    # removed: bit-identical again
    _assert_identical(_denoise(model, arch, inputs), plain)


def test_hunyuanvideo_i2v_falls_back_to_identity_coefficients():
    # the published HunyuanVideo coefficients were fit on text-to-video
    model = tiny_hunyuan_transformer(image_condition_type="token_replace")
    assert HunyuanVideoAdapter(model).teacache_profile() is None
