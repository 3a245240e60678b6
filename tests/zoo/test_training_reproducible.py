"""The zoo's training scripts are deterministic in their seed: the same steps give bit-identical weights (the
premise of "the scripts reproduce the committed weights"), and another seed gives other weights."""

import pytest
import torch

pytest.importorskip("diffusers")

from dynaccel.zoo import train_tiny_flux, train_tiny_wan  # noqa: E402

pytestmark = pytest.mark.slow  # out of the inner loop (pytest -m 'not slow'); CI runs it


def _quiet(msg, force=False):
    pass


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("script", [train_tiny_wan, train_tiny_flux], ids=["tiny-wan", "tiny-flux"])
def test_vae_training_is_bit_reproducible(script):
    torch.set_num_threads(1)
    kw = dict(steps=50, max_minutes=None, log=_quiet, stop_after=2) if script is train_tiny_flux else \
        dict(steps=2, max_minutes=None, log=_quiet)
    if script is train_tiny_flux:
        kw["batch"] = 4
    a, info_a = script.train_vae(seed=3, **kw)
    b, info_b = script.train_vae(seed=3, **kw)
    c, _ = script.train_vae(seed=4, **kw)
    assert info_a["steps"] == 2 and info_a["final_loss"] == info_b["final_loss"]
    assert _same(a, b) and not _same(a, c)


def test_flux_transformer_training_is_bit_reproducible():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(8, 4, 8, 8, generator=g)
    embeds, pooled = torch.randn(3, 8, 32, generator=g), torch.randn(3, 32, generator=g)
    empty, empty_pooled = torch.randn(1, 8, 32, generator=g), torch.randn(1, 32, generator=g)
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    args = (latents, ids, embeds, pooled, empty, empty_pooled)
    kw = dict(steps=40, max_minutes=None, log=_quiet, batch=4, stop_after=2)
    a, _ = train_tiny_flux.train_transformer(*args, seed=1, **kw)
    b, _ = train_tiny_flux.train_transformer(*args, seed=1, **kw)
    c, _ = train_tiny_flux.train_transformer(*args, seed=2, **kw)
    assert _same(a, b) and not _same(a, c)


def test_tiny_vlm_training_is_bit_reproducible():
    pytest.importorskip("transformers")
    from dynaccel.zoo import train_tiny_vlm

    torch.set_num_threads(1)
    kw = dict(steps=800, batch_size=2, stop_after=2, log=_quiet)
    a, _, la = train_tiny_vlm.train(seed=3, **kw)
    b, _, lb = train_tiny_vlm.train(seed=3, **kw)
    c, _, _ = train_tiny_vlm.train(seed=4, **kw)
    assert la == lb and len(la) == 2
    assert _same(a, b) and not _same(a, c)
