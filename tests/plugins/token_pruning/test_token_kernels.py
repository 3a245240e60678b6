"""query_rows_attention: the Triton kernel (on Triton's CPU interpreter) against the torch reference, and the
reference against a plain softmax over the full attention map."""

import pytest
import torch

from dynaccel.kernels.testing import assert_close_for, random_tensor
from dynaccel.plugins.token_pruning.kernels import query_rows_attention, query_rows_attention_reference

triton = pytest.importorskip("triton")

SHAPES = [  # B, H, Hkv, R, N, D
    (1, 4, 4, 1, 37, 16),
    (2, 6, 2, 1, 300, 24),  # grouped-query attention, odd head size, several key blocks
    (3, 8, 1, 2, 129, 64),  # multi-query, two rows
]


def _inputs(shape, dtype, seed, masked=True):
    b, h, hkv, r, n, d = shape
    q = random_tensor((b, h, r, d), dtype, seed)
    k = random_tensor((b, hkv, n, d), dtype, seed + 1)
    bias = None
    if masked:
        bias = torch.zeros(b, r, n)
        bias[0, :, : n // 3] = float("-inf")  # left padding of sample 0
        bias[-1, :, -1] = -2.5  # a soft (float) mask value
    return q, k, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-KV{}-R{}-N{}-D{}".format(*s))
def test_triton_matches_reference(shape, dtype):
    q, k, bias = _inputs(shape, dtype, seed=sum(shape))
    got = query_rows_attention(q, k, bias, backend="triton")
    want = query_rows_attention(q, k, bias, backend="torch")
    assert got.dtype == torch.float32 and got.shape == (shape[0], shape[3], shape[4])
    assert_close_for(dtype, got, want)
    torch.testing.assert_close(got.sum(-1), torch.ones(shape[0], shape[3]), rtol=1e-4, atol=1e-4)
    if bias is not None:
        assert float(got[0, :, : shape[4] // 3].abs().max()) == 0.0  # masked keys get nothing


def test_non_contiguous_keys_and_no_mask():
    q, k, _ = _inputs((2, 4, 2, 1, 50, 32), torch.float32, seed=7, masked=False)
    k_t = k.transpose(1, 2).contiguous().transpose(1, 2)  # a (B, N, Hkv, D) cache seen as (B, Hkv, N, D)
    assert not k_t.is_contiguous()
    assert_close_for(torch.float32, query_rows_attention(q, k_t, backend="triton"), query_rows_attention(q, k, backend="torch"))


def test_reference_is_the_head_average_of_the_full_softmax():
    q, k, bias = _inputs((2, 4, 2, 1, 20, 8), torch.float32, seed=3)
    full = torch.softmax(torch.einsum("bhrd,bhnd->bhrn", q, k.repeat_interleave(2, dim=1)) * 8**-0.5 + bias[:, None], dim=-1)
    torch.testing.assert_close(query_rows_attention_reference(q, k, bias, 8**-0.5), full.mean(1))


def test_shape_errors_name_the_shapes():
    q = torch.zeros(1, 3, 1, 8)
    with pytest.raises(ValueError, match=r"k \(1, 2, 5, 8\) does not fit q \(1, 3, 1, 8\)"):
        query_rows_attention(q, torch.zeros(1, 2, 5, 8))
    with pytest.raises(ValueError, match=r"bias must be \(B, R, N\) = \(1, 1, 5\)"):
        query_rows_attention(q, torch.zeros(1, 3, 5, 8), torch.zeros(1, 5))


def test_long_rows_match_the_reference():
    # 2500 keys (twenty loop blocks of 128): sample 0 has its first 1100 keys
    # masked (left padding), sample 1 has every key masked (its row must be zeros, not NaN)
    b, h, hkv, r, n, d = 2, 4, 2, 1, 2500, 32
    q = random_tensor((b, h, r, d), torch.float32, 3)
    k = random_tensor((b, hkv, n, d), torch.float32, 4)
    bias = torch.zeros(b, r, n)
    bias[0, :, :1100] = float("-inf")
    bias[1] = float("-inf")
    got = query_rows_attention(q, k, bias, backend="triton")
    want = query_rows_attention(q, k, bias, backend="torch")
    assert_close_for(torch.float32, got, want)
    assert float(got[0, :, :1100].abs().max()) == 0.0 and torch.isfinite(got).all()
    torch.testing.assert_close(got[0].sum(-1), torch.ones(r), rtol=1e-4, atol=1e-4)
    assert float(got[1].abs().max()) == 0.0
    # no bias at all, a length that is not a multiple of the loop block either
    q2, k2 = random_tensor((1, 2, 2, 16), torch.bfloat16, 5), random_tensor((1, 1, 3001, 16), torch.bfloat16, 6)
    assert_close_for(torch.bfloat16, query_rows_attention(q2, k2, backend="triton"),
                     query_rows_attention(q2, k2, backend="torch"))
