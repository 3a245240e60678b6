"""SeaCache: the spectral filter, the latent grid and noise level the adapters give it, and the same decisions as
diffusers' own SeaCache on the zoo's tiny-wan."""

import math

import pytest
import torch

from dynaccel.core.registry import get_registry
from dynaccel.hf_integration import bench
from dynaccel.plugins.cache.seacache import sea_filter


def _energy_share(x, keep_low: bool):
    spec = torch.fft.fftn(x, dim=(2, 3)).abs() ** 2
    freq = torch.fft.fftfreq(x.shape[-1]).abs()
    low = (freq[:, None] < 0.2) & (freq[None, :] < 0.2)
    return float(spec[..., low].sum() / spec.sum()) if keep_low else float(spec[..., ~low].sum() / spec.sum())


def test_the_filter_keeps_low_frequencies_more_the_noisier_the_sample():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 16, 16)
    out_noisy, out_clean = sea_filter(x, 0.9, 3.0), sea_filter(x, 0.1, 3.0)
    assert out_noisy.shape == x.shape and out_noisy.dtype == torch.float32
    # at sigma 0.9 most of the high-frequency content is noise: the filter keeps far less of it than at sigma 0.1
    assert _energy_share(out_noisy, keep_low=False) < _energy_share(out_clean, keep_low=False) < \
        _energy_share(x, keep_low=False)
    video = torch.randn(2, 4, 3, 8, 8)  # (B, C, T, H, W): filtered over frames, rows and columns
    assert sea_filter(video, 0.5, 3.0).shape == video.shape


def _adapter(model):
    return get_registry().adapter_for(model, get_registry().strategy("seacache"))


def test_flux_tokens_go_back_on_their_grid_and_sigma_is_read_from_the_timestep():
    from diffusers import FluxPipeline
    from tiny_models import tiny_flux_transformer

    adapter = _adapter(tiny_flux_transformer())
    latents = torch.randn(2, 4, 8, 6)  # (B, C, H, W) before FluxPipeline packs 2x2 patches into tokens
    tokens = FluxPipeline._pack_latents(latents, 2, 4, 8, 6)
    ids = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
    grid = adapter.latent_grid((), {"hidden_states": tokens, "img_ids": ids})
    assert grid.shape == (2, 16, 4, 3)  # channels x the 2x2 patch, on the 4 x 3 token grid
    assert torch.equal(grid.permute(0, 2, 3, 1).reshape(2, 12, 16), tokens)
    # a token count that is not one full grid: no grid (the strategy then compares the raw input)
    assert adapter.latent_grid((), {"hidden_states": tokens[:, :10], "img_ids": ids[:10]}) is None
    assert adapter.noise_level((), {"timestep": torch.tensor([0.25, 0.25])}) == 0.25


def test_wan_gives_its_5d_latent_and_sigma_from_the_timestep():
    from tiny_models import tiny_wan_transformer

    adapter = _adapter(tiny_wan_transformer())
    x = torch.randn(1, 4, 2, 4, 4)
    assert adapter.latent_grid((x,), {}) is x
    assert adapter.noise_level((x, torch.tensor([750.0])), {}) == 0.75
    assert adapter.noise_level((), {"timestep": torch.tensor([2000.0])}) is None  # not a flow-matching sigma


@pytest.mark.parametrize("threshold", [0.25, 0.4])
def test_same_decisions_and_output_as_diffusers_seacache_on_the_zoo_wan(threshold):
    # the method as diffusers 0.42.1 ships it (SeaCacheConfig defaults: linear forecast, at most 2 in a row, first
    # and last step computed) and ours at the matching settings: same passes computed, same output
    path = bench.resolve_model("tiny-wan")
    pipe = bench.load_pipeline(path)
    call = bench.generation_defaults("tiny-wan", path)
    settings = [bench.parse_setting(f"seacache:threshold={threshold}"),
                bench.parse_setting(f"diffusers:seacache:threshold={threshold}")]
    rows = bench.run_bench(pipe, settings, ["a green triangle moving right fast"], [0], call, repeats=1,
                           progress=False)
    ours, theirs = rows[1:]
    assert ours.computed == theirs.computed and float(ours.computed.split("/")[0]) < 60
    assert math.isfinite(ours.psnr_db) and abs(ours.psnr_db - theirs.psnr_db) < 0.05
