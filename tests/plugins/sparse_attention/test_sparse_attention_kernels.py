import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernels are imported: Triton kernels run on the CPU

import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dynaccel.kernels.testing import ATTENTION_TOLERANCES, random_tensor  # noqa: E402
from dynaccel.plugins.sparse_attention import kernels  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# float32: 1e-5 abs; bfloat16: 2e-2; float16: 3e-3 (see kernels/testing.py for why attention needs its own)
ATTN_TOL = ATTENTION_TOLERANCES

# (B, H, Sq, Sk, D, block): odd lengths (masked tails), head dims 64 and 128, small head dims of the tiny models
SHAPES = [
    (1, 2, 50, 50, 64, 16),
    (2, 1, 37, 45, 128, 16),
    (1, 1, 96, 96, 64, 32),
    (2, 2, 33, 70, 32, 16),
]


def _seed(*parts):
    return zlib.crc32("/".join(map(str, parts)).encode())


def _inputs(shape, dtype, tag):
    b, h, sq, sk, d, _ = shape
    q = random_tensor((b, h, sq, d), dtype, _seed(tag, shape, dtype, "q"))
    k = random_tensor((b, h, sk, d), dtype, _seed(tag, shape, dtype, "k"))
    v = random_tensor((b, h, sk, d), dtype, _seed(tag, shape, dtype, "v"))
    return q, k, v


def _mask(shape, density, seed, per_head=True):
    b, h, sq, sk, _, bs = shape
    nq, nk = -(-sq // bs), -(-sk // bs)
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((b, h if per_head else 1, nq, nk), generator=gen) < density


def _id(shape):
    b, h, sq, sk, d, bs = shape
    return f"B{b}-H{h}-Q{sq}-K{sk}-D{d}-blk{bs}"


CASES = [pytest.param(s, dt, id=f"{_id(s)}-{n}") for s in SHAPES for n, dt in DTYPES.items()]


@pytest.fixture
def needs_triton():
    pytest.importorskip("triton")


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize(("shape", "dtype"), CASES)
def test_triton_matches_reference(shape, dtype):
    q, k, v = _inputs(shape, dtype, "tri")
    mask = _mask(shape, 0.4, _seed("mask", shape, dtype))
    mask[0, 0, 0] = False  # one query block with nothing allowed: zeros
    kv_len = torch.tensor([shape[3] - 3] + [shape[3]] * (shape[0] - 1))
    got = kernels.block_sparse_attention(q, k, v, mask, shape[5], kv_len=kv_len, backend="triton")
    ref = kernels.block_sparse_attention_reference(q, k, v, mask, shape[5], kv_len=kv_len)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), ref.float(), **ATTN_TOL[dtype])
    assert torch.count_nonzero(got[0, 0, : shape[5]]) == 0


@pytest.mark.parametrize(("shape", "dtype"), CASES)
def test_torch_path_matches_reference(shape, dtype):
    q, k, v = _inputs(shape, dtype, "torch")
    mask = _mask(shape, 0.3, _seed("mask-t", shape, dtype), per_head=False)
    got = kernels.block_sparse_attention(q, k, v, mask, shape[5], backend="torch")
    ref = kernels.block_sparse_attention_reference(q, k, v, mask, shape[5])
    torch.testing.assert_close(got.float(), ref.float(), **ATTN_TOL[dtype])


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_full_mask_equals_dense_attention(backend, dtype):
    shape = (1, 2, 45, 45, 64, 16)
    q, k, v = _inputs(shape, dtype, "full")
    full = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    got = kernels.block_sparse_attention(q, k, v, full, 16, backend=backend)
    dense = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(dtype)
    torch.testing.assert_close(got.float(), dense.float(), **ATTN_TOL[dtype])


@pytest.mark.usefixtures("needs_triton")
def test_strided_inputs_as_the_processors_pass_them():
    # (B, S, H, D) tensors transposed to (B, H, S, D): non-contiguous, as the engine hands them over
    x = [random_tensor((2, 40, 3, 64), torch.float32, s).transpose(1, 2) for s in (1, 2, 3)]
    assert not x[0].is_contiguous()
    mask = _mask((2, 3, 40, 40, 64, 16), 0.5, 7)
    got = kernels.block_sparse_attention(*x, mask, 16, backend="triton")
    ref = kernels.block_sparse_attention_reference(*x, mask, 16)
    torch.testing.assert_close(got, ref, **ATTN_TOL[torch.float32])


def test_fully_padded_sample_gives_zeros_in_every_path():
    q, k, v = _inputs((2, 1, 20, 20, 32, 16), torch.float32, "pad")
    full = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    kv_len = torch.tensor([0, 20])
    for fn in (kernels.block_sparse_attention_torch, kernels.block_sparse_attention_reference):
        out = fn(q, k, v, full, 16, kv_len=kv_len)
        assert torch.count_nonzero(out[0]) == 0 and torch.count_nonzero(out[1]) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(block_size=24), r"block_size=24; accepted: a power of two >= 16"),
        (dict(block_size=8), r"block_size=8"),
        (dict(mask_shape=(1, 1, 3, 2)), r"block_mask shape \(1, 1, 3, 2\); accepted: \(1 or 1, 2 or 1, 3, 3\)"),
        (dict(mask_dtype=torch.int8), r"block_mask must be a 4-D bool tensor"),
        (dict(k_dtype=torch.float16), r"dtypes torch.float32, torch.float16"),
        (dict(kv_len=torch.tensor([1.0])), r"kv_len must be an integer tensor of shape \(1,\)"),
    ],
    ids=["block-not-pow2", "block-small", "mask-shape", "mask-dtype", "mixed-dtypes", "kv-len-float"],
)
def test_bad_inputs_are_refused_with_the_value_and_what_is_accepted(kwargs, match):
    q = torch.randn(1, 2, 40, 32)
    k = torch.randn(1, 2, 40, 32).to(kwargs.get("k_dtype", torch.float32))
    mask = torch.ones(kwargs.get("mask_shape", (1, 1, 3, 3))).to(kwargs.get("mask_dtype", torch.bool))
    with pytest.raises(ValueError, match=match):
        kernels.block_sparse_attention(
            q, k, k, mask, kwargs.get("block_size", 16), kv_len=kwargs.get("kv_len"), backend="torch"
        )


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_prepared_block_index_gives_the_same_output(backend):
    shape = (2, 2, 40, 40, 64, 16)
    q, k, v = _inputs(shape, torch.float16, "prep")
    mask = _mask(shape, 0.5, 11, per_head=False)
    plain = kernels.block_sparse_attention(q, k, v, mask, 16, backend=backend)
    prepared = kernels.block_sparse_attention(q, k, v, kernels.block_index(mask), 16, backend=backend)
    assert torch.equal(plain, prepared)


def test_indices_are_ascending_and_left_packed():
    m = torch.tensor([[[[True, False, True, False], [False, False, False, False], [False, True, True, True]]]])
    idx, cnt = kernels.block_mask_to_indices(m)
    assert cnt.tolist() == [[[2, 0, 3]]]
    assert idx[0, 0, 0, :2].tolist() == [0, 2] and idx[0, 0, 2, :3].tolist() == [1, 2, 3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_gpu_kernel_matches_reference(dtype):
    q, k, v = (t.cuda() for t in _inputs((1, 4, 2000, 2000, 128, 64), dtype, "gpu"))
    mask = _mask((1, 4, 2000, 2000, 128, 64), 0.2, 3).cuda()
    got = kernels.block_sparse_attention(q, k, v, mask, 64)
    ref = kernels.block_sparse_attention_reference(q, k, v, mask, 64)
    torch.testing.assert_close(got.float(), ref.float(), **ATTN_TOL[dtype])
