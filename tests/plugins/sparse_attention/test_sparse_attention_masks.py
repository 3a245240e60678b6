"""Each mask has the structure and density it is meant to have."""

import pytest
import torch

from dynaccel.plugins.sparse_attention import masks


def _block_coords(plan, grid, unit):
    """Per video block: the (single) coordinate in ``unit`` its tokens share; fails if a block spans several."""
    c = masks.raster_coords(grid)[plan.order] // torch.tensor(unit)
    blocks = c.reshape(-1, plan.block_size, 3)
    assert (blocks == blocks[:, :1]).all(), "a block mixes tokens of several tiles"
    return blocks[:, 0]


def test_tile_order_is_a_permutation_and_keeps_tiles_contiguous():
    grid, tile = (4, 8, 8), (2, 4, 4)
    order = masks.tile_order(grid, tile)
    assert sorted(order.tolist()) == list(range(256))
    plan = masks.sliding_tile_mask(grid, tile, (0, 0, 0), 32)
    _block_coords(plan, grid, tile)  # 32-token blocks = one 2x4x4 tile each


@pytest.mark.parametrize("radius", [(0, 0, 0), (0, 1, 0), (1, 1, 1), (1, 0, 1)], ids=lambda r: "R" + "x".join(map(str, r)))
@pytest.mark.parametrize(
    ("tile", "block"), [((1, 4, 4), 16), ((1, 2, 4), 8), ((2, 2, 2), 8)], ids=["T1x4x4-B16", "T1x2x4-B8", "T2x2x2-B8"]
)
def test_sliding_tile_window_and_density(radius, tile, block):
    grid = (4, 12, 8)  # e.g. 4 x 3 x 2 tiles of 16 tokens, or 4 x 6 x 2 / 2 x 6 x 4 tiles of 8
    plan = masks.sliding_tile_mask(grid, tile, radius, block)
    assert plan.block_mask.shape == (1, 384 // block, 384 // block)
    t = _block_coords(plan, grid, tile)
    expected = ((t[:, None, :] - t[None, :, :]).abs() <= torch.tensor(radius)).all(-1)
    assert torch.equal(plan.block_mask[0], expected)
    # density from the window sizes, clipped at the edges, dimension by dimension
    n = tuple(g // u for g, u in zip(grid, tile))
    per_dim = [sum(min(i + r, m - 1) - max(i - r, 0) + 1 for i in range(m)) / m**2 for m, r in zip(n, radius)]
    assert plan.density == pytest.approx(per_dim[0] * per_dim[1] * per_dim[2])


def test_sliding_tile_large_radius_is_full_and_text_is_always_attended():
    plan = masks.sliding_tile_mask((3, 8, 8), (1, 4, 4), (1000, 1000, 1000), 16)
    assert plan.block_mask.all()
    with_text = masks.sliding_tile_mask((3, 8, 8), (1, 4, 4), (0, 0, 0), 16, num_text=20)
    nv_blocks = 192 // 16
    assert with_text.block_mask.shape == (1, nv_blocks, -(-(192 + 20) // 16))
    assert with_text.block_mask[0, :, nv_blocks:].all()  # text key blocks
    assert not with_text.block_mask[0, :, :nv_blocks].all()


def test_sliding_tile_ragged_grid_still_covers_every_token_once():
    plan = masks.sliding_tile_mask((3, 7, 9), (1, 4, 4), (0, 1, 1), 16)
    assert sorted(plan.order.tolist()) == list(range(3 * 7 * 9))
    assert plan.block_mask.diagonal(dim1=-2, dim2=-1).all()  # every block attends itself


def _radial_terms(plan, grid, tile):
    """Frame distance and spatial tile gap between every pair of blocks, and the block mask (batch 0)."""
    c = _block_coords(plan, grid, tile)
    d = (c[:, None, 0] - c[None, :, 0]).abs()
    gap = (c[:, None, 1:] - c[None, :, 1:]).abs().amax(-1)
    return d, gap, plan.block_mask[0]


def test_radial_window_shrinks_with_frame_distance():
    grid = (9, 8, 8)  # one frame = 2 x 2 tiles of 4 x 4 = 4 blocks of 16
    plan = masks.radial_mask(grid, (4, 4), window=1, dense_frames=1, block_size=16)
    d, gap, m = _radial_terms(plan, grid, (1, 4, 4))
    assert m[d <= 1].all()  # dense band
    assert torch.equal(m[d >= 2], (gap == 0)[d >= 2])  # 1 >> floor(log2 d) = 0: only the same position
    frac = [m[d == k].float().mean().item() for k in range(9)]
    assert all(a >= b for a, b in zip(frac, frac[1:])) and frac[0] == 1.0 and frac[8] == 0.25


def test_radial_wider_window_halves_by_octave():
    grid = (9, 16, 16)  # 4 x 4 tiles per frame
    plan = masks.radial_mask(grid, (4, 4), window=2, dense_frames=0, block_size=16)
    d, gap, m = _radial_terms(plan, grid, (1, 4, 4))
    assert m[d == 0].all()
    assert torch.equal(m[d == 1], (gap <= 2)[d == 1])
    assert torch.equal(m[(d >= 2) & (d <= 3)], (gap <= 1)[(d >= 2) & (d <= 3)])
    assert torch.equal(m[d >= 4], (gap == 0)[d >= 4])


def test_radial_at_block_8_keeps_the_same_position_at_long_distance():
    grid = (9, 8, 8)  # one frame = 4 x 2 tiles of 2 x 4 = 8 blocks of 8
    plan = masks.radial_mask(grid, (2, 4), window=1, dense_frames=1, block_size=8)
    d, gap, m = _radial_terms(plan, grid, (1, 2, 4))
    assert m.shape == (72, 72) and m[d <= 1].all()
    assert torch.equal(m[d >= 2], (gap == 0)[d >= 2])
    assert m[d == 8].float().mean().item() == pytest.approx(1 / 8)


def test_radial_dense_frames_cover_everything():
    assert masks.radial_mask((5, 8, 8), (4, 4), 0, 4, 16).block_mask.all()


def test_svg_spatial_mask_is_block_diagonal_by_frame():
    grid = (4, 8, 8)  # 64 tokens per frame = 4 blocks
    plan = masks.spatial_head_mask(grid, 0, 16)
    frame = torch.arange(16) // 4
    assert torch.equal(plan.block_mask[0], frame[:, None] == frame[None, :])
    assert plan.density == pytest.approx(1 / 4)
    assert masks.spatial_head_mask(grid, 1000, 16).block_mask.all()


def test_svg_masks_at_block_8():
    grid = (4, 4, 4)  # 16 tokens per frame = 2 blocks of 8; spatial-major: one block = 2 positions x 4 frames
    spatial = masks.spatial_head_mask(grid, 0, 8)
    frame = torch.arange(8) // 2
    assert torch.equal(spatial.block_mask[0], frame[:, None] == frame[None, :]) and spatial.density == 0.25
    temporal = masks.temporal_head_mask(grid, 0, 8)
    c = masks.raster_coords(grid)[temporal.order].reshape(8, 8, 3)
    for blk in c:
        assert len({(int(h), int(w)) for _, h, w in blk}) == 2 and sorted(set(blk[:, 0].tolist())) == [0, 1, 2, 3]
    assert torch.equal(temporal.block_mask[0], torch.eye(8, dtype=torch.bool))


def test_svg_temporal_mask_groups_all_frames_of_a_position():
    grid = (4, 4, 4)
    plan = masks.temporal_head_mask(grid, 0, 16)
    c = masks.raster_coords(grid)[plan.order].reshape(4, 16, 3)  # 4 blocks of 16 tokens
    for blk in c:
        pos = {(int(h), int(w)) for _, h, w in blk}
        assert len(pos) == 4 and sorted(set(blk[:, 0].tolist())) == [0, 1, 2, 3]  # 4 positions x all 4 frames
    assert torch.equal(plan.block_mask[0], torch.eye(4, dtype=torch.bool))


def test_topk_keeps_budget_plus_always():
    scores = torch.tensor([[[0.1, 0.9, 0.5, 0.3]]])
    always = torch.tensor([[[True, False, False, False]]])
    m = masks.topk_block_mask(scores, torch.tensor([[2]]), always)
    assert m.tolist() == [[[True, True, False, False]]]
    assert masks.blocks_for_density(0.01, 10) == 1 and masks.blocks_for_density(0.25, 10) == 3


def test_bad_grid_is_refused():
    with pytest.raises(ValueError, match=r"token grid \(0, 4, 4\); accepted: three positive sizes"):
        masks.tile_order((0, 4, 4), (1, 2, 2))
