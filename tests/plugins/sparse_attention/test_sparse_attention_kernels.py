import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton or the kernels are imported: Triton kernels run on the CPU
# (the GPU tests below compile for the GPU: `TRITON_INTERPRET=0 pytest -m gpu` on a CUDA machine)

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
        (dict(block_size=24), r"block_size=24; accepted: a power of two >= 8"),
        (dict(block_size=4), r"block_size=4; accepted: a power of two >= 8"),
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
    if kwargs.get("block_size") == 4:
        mask = torch.ones(1, 1, 10, 10, dtype=torch.bool)
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


# ---- remainder="pooled": refused key blocks enter the softmax through their mean key and value


def _pooled_by_hand(q, k, v, mask, bs, kv_len):
    """The pooled remainder written out row by row (float64): exact keys of the allowed blocks, plus per refused
    block with n valid tokens one key mean(k) with logit q.mean(k)*scale + log(n) and value mean(v)."""
    b, h, sq, d = q.shape
    sk = k.shape[2]
    out = torch.zeros(b, h, sq, d, dtype=torch.float64)
    for bi in range(b):
        limit = int(kv_len[bi]) if kv_len is not None else sk
        for hi in range(h):
            m = mask[min(bi, mask.shape[0] - 1), min(hi, mask.shape[1] - 1)]
            for i in range(sq):
                logits, values = [], []
                for kb in range(m.shape[1]):
                    toks = [t for t in range(kb * bs, min(sk, (kb + 1) * bs)) if t < limit]
                    if not toks:
                        continue
                    kk, vv = k[bi, hi, toks].double(), v[bi, hi, toks].double()
                    qq = q[bi, hi, i].double()
                    if m[i // bs, kb]:
                        logits += (kk @ qq / d**0.5).tolist()
                        values += list(vv)
                    else:
                        logits.append(float(kk.mean(0) @ qq / d**0.5 + torch.log(torch.tensor(len(toks))).double()))
                        values.append(vv.mean(0))
                if logits:
                    p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                    out[bi, hi, i] = (p[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("shape", [(1, 2, 50, 50, 32, 16), (2, 1, 37, 45, 16, 16)], ids=_id)
def test_pooled_reference_matches_the_definition_written_out(shape):
    q, k, v = _inputs(shape, torch.float32, "pooled-def")
    mask = _mask(shape, 0.4, _seed("pooled-def-mask", shape))
    kv_len = torch.tensor([shape[3] - 5] + [shape[3]] * (shape[0] - 1))  # a partly padded last block
    got = kernels.block_sparse_attention_reference(q, k, v, mask, shape[5], kv_len=kv_len, remainder="pooled")
    torch.testing.assert_close(got.double(), _pooled_by_hand(q, k, v, mask, shape[5], kv_len), rtol=1e-5, atol=1e-5)


POOLED_CASES = [pytest.param(s, dt, id=f"{_id(s)}-{n}") for s in SHAPES for n, dt in DTYPES.items()]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(("shape", "dtype"), POOLED_CASES)
def test_pooled_remainder_matches_the_reference(backend, shape, dtype):
    if backend == "triton":
        pytest.importorskip("triton")
    q, k, v = _inputs(shape, dtype, "pooled")
    mask = _mask(shape, 0.35, _seed("pooled-mask", shape, dtype))
    mask[0, 0, 0] = False  # a query block with no exact key block: only pooled keys
    kv_len = torch.tensor([shape[3] - 3] + [shape[3]] * (shape[0] - 1))
    got = kernels.block_sparse_attention(q, k, v, mask, shape[5], kv_len=kv_len, backend=backend, remainder="pooled")
    ref = kernels.block_sparse_attention_reference(q, k, v, mask, shape[5], kv_len=kv_len, remainder="pooled")
    dropped = kernels.block_sparse_attention_reference(q, k, v, mask, shape[5], kv_len=kv_len)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), ref.float(), **ATTN_TOL[dtype])
    assert torch.count_nonzero(got[0, 0, : shape[5]]) > 0  # the empty row is filled by the pooled keys
    assert (ref.float() - dropped.float()).abs().max() > 0.1  # and the pooled path is not the dropping one


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_pooled_remainder_with_nothing_refused_is_dense_attention(backend):
    shape = (1, 2, 45, 45, 64, 16)
    q, k, v = _inputs(shape, torch.float32, "pooled-full")
    full = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    got = kernels.block_sparse_attention(q, k, v, full, 16, backend=backend, remainder="pooled")
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, dense, **ATTN_TOL[torch.float32])
    drop = kernels.block_sparse_attention(q, k, v, full, 16, backend=backend)
    assert torch.equal(got, drop)


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_pooled_keys_are_exact_when_a_block_repeats_one_key(backend):
    # every token of a block has the same key: n exp(q.k) v_mean is then exactly that block's contribution, so any
    # mask with the pooled remainder gives dense attention
    shape = (1, 2, 64, 64, 32, 16)
    q, _, v = _inputs(shape, torch.float32, "pooled-const")
    k = random_tensor((1, 2, 4, 32), torch.float32, 5).repeat_interleave(16, dim=2)
    mask = _mask(shape, 0.3, 9)
    got = kernels.block_sparse_attention(q, k, v, mask, 16, backend=backend, remainder="pooled")
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, dense, **ATTN_TOL[torch.float32])
    assert not torch.allclose(kernels.block_sparse_attention(q, k, v, mask, 16, backend=backend), dense, atol=1e-3)


def test_pooled_key_blocks_ignore_padding():
    k = torch.arange(40, dtype=torch.float32).reshape(1, 1, 40, 1).expand(2, 1, 40, 1)
    kp, vp, logn = kernels.pooled_key_blocks(k, k, 16, torch.tensor([40, 20]))
    assert logn[0].exp().round().tolist() == [16, 16, 8] and logn[1].exp().round().tolist()[:2] == [16, 4]
    assert logn[1, 2] == float("-inf")  # nothing valid in the last block of sample 1
    assert kp[0, 0, :, 0].tolist() == [7.5, 23.5, 35.5] and kp[1, 0, 1, 0] == 17.5 and torch.equal(kp, vp)


def test_unknown_remainder_is_refused_with_what_is_accepted():
    q = torch.randn(1, 1, 32, 16)
    with pytest.raises(ValueError, match=r"remainder='mean'; accepted: 'drop', 'pooled'"):
        kernels.block_sparse_attention(q, q, q, torch.ones(1, 1, 2, 2, dtype=torch.bool), 16, remainder="mean")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles for the GPU: TRITON_INTERPRET=0")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_gpu_kernel_matches_reference(dtype):
    q, k, v = (t.cuda() for t in _inputs((1, 4, 2000, 2000, 128, 64), dtype, "gpu"))
    mask = _mask((1, 4, 2000, 2000, 128, 64), 0.2, 3).cuda()
    got = kernels.block_sparse_attention(q, k, v, mask, 64)
    ref = kernels.block_sparse_attention_reference(q, k, v, mask, 64)
    torch.testing.assert_close(got.float(), ref.float(), **ATTN_TOL[dtype])


# ---- 8-token blocks (tiny models: a finer selection): the torch path and the reference; Triton needs >= 16

SHAPES_8 = [(1, 2, 50, 50, 32, 8), (2, 1, 37, 45, 16, 8), (1, 4, 328, 328, 32, 8)]  # the last: tiny-wan's size
CASES_8 = [
    pytest.param(s, dt, rem, id=f"{_id(s)}-{n}-{rem}") for s in SHAPES_8 for n, dt in DTYPES.items()
    for rem in kernels.REMAINDERS
]


@pytest.mark.parametrize(("shape", "dtype", "remainder"), CASES_8)
def test_block_8_torch_path_matches_reference(shape, dtype, remainder):
    q, k, v = _inputs(shape, dtype, "blk8")
    mask = _mask(shape, 0.4, _seed("blk8-mask", shape, dtype))
    mask[0, 0, 1] = False  # a query block with no exact key block
    kv_len = torch.tensor([shape[3] - 3] + [shape[3]] * (shape[0] - 1))  # a partly padded last block
    got = kernels.block_sparse_attention(q, k, v, mask, 8, kv_len=kv_len, backend="auto", remainder=remainder)
    ref = kernels.block_sparse_attention_reference(q, k, v, mask, 8, kv_len=kv_len, remainder=remainder)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), ref.float(), **ATTN_TOL[dtype])
    rows = got[0, 0, 8:16]
    assert (torch.count_nonzero(rows) == 0) == (remainder == "drop")  # dropped: zeros; pooled: the pooled keys


def test_block_8_masks_act_on_8_token_blocks():
    # query block 0 (rows 0-7) may see key block 1 only (keys 8-15): plain attention over those 8 keys
    q, k, v = _inputs((1, 1, 32, 32, 16, 8), torch.float32, "blk8-one")
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, 1] = True
    mask[0, 0, 1:] = True
    want = torch.nn.functional.scaled_dot_product_attention(q[:, :, :8], k[:, :, 8:16], v[:, :, 8:16])
    for fn in (kernels.block_sparse_attention_torch, kernels.block_sparse_attention_reference):
        out = fn(q, k, v, mask, 8)
        torch.testing.assert_close(out[:, :, :8], want, **ATTN_TOL[torch.float32])
        torch.testing.assert_close(out[:, :, 8:], torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, :, 8:],
                                   **ATTN_TOL[torch.float32])


def test_block_8_pooled_reference_matches_the_definition_written_out():
    shape = (1, 2, 30, 37, 16, 8)
    q, k, v = _inputs(shape, torch.float32, "blk8-def")
    mask = _mask(shape, 0.4, 5)
    kv_len = torch.tensor([33])
    got = kernels.block_sparse_attention_reference(q, k, v, mask, 8, kv_len=kv_len, remainder="pooled")
    torch.testing.assert_close(got.double(), _pooled_by_hand(q, k, v, mask, 8, kv_len), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remainder", kernels.REMAINDERS)
def test_block_8_full_mask_is_dense_attention(remainder):
    q, k, v = _inputs((1, 2, 45, 45, 32, 8), torch.float32, "blk8-full")
    full = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    got = kernels.block_sparse_attention(q, k, v, full, 8, remainder=remainder)
    torch.testing.assert_close(got, torch.nn.functional.scaled_dot_product_attention(q, k, v), **ATTN_TOL[torch.float32])


@pytest.mark.usefixtures("needs_triton")
def test_block_8_triton_is_refused_and_auto_falls_back_to_the_torch_path(monkeypatch):
    from dynaccel.core.errors import KernelBackendError
    from dynaccel.kernels import dispatch as dispatch_mod

    q, k, v = _inputs((1, 2, 40, 40, 32, 8), torch.float32, "blk8-auto")
    mask = _mask((1, 2, 40, 40, 32, 8), 0.5, 3)
    with pytest.raises(KernelBackendError, match=r"block_size=8 with backend 'triton'.*power of two >= 16"):
        kernels.block_sparse_attention(q, k, v, mask, 8, backend="triton")
    # pretend the tensors could run Triton (as on CUDA): 'auto' still takes the torch path for 8-token blocks
    monkeypatch.setattr(dispatch_mod, "_why_not_triton", lambda tensors, allow_interpreter: None)
    called = []
    real = kernels.block_sparse_attention_triton
    monkeypatch.setattr(kernels, "block_sparse_attention_triton", lambda *a, **kw: called.append(1) or real(*a, **kw))
    got = kernels.block_sparse_attention(q, k, v, mask, 8)
    assert not called and torch.equal(got, kernels.block_sparse_attention_torch(q, k, v, mask, 8))
    mask16 = _mask((1, 2, 40, 40, 32, 16), 0.5, 3)
    kernels.block_sparse_attention(q, k, v, mask16, 16)
    assert called  # 16-token blocks do go to Triton
    monkeypatch.setenv("DYNACCEL_KERNEL_BACKEND", "triton")  # an explicit choice through the environment: refused
    with pytest.raises(KernelBackendError, match=r"block_size=8"):
        kernels.block_sparse_attention(q, k, v, mask, 8)
