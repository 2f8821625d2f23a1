"""The fast NumPy path against the teaching version, torch.nn.functional.batch_norm with
autograd, and float64 references; its out= buffers, its accuracy far from zero, and its errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlib.numpy import (
    batch_norm_backward,
    batch_norm_backward_fast,
    batch_norm_forward,
    batch_norm_forward_fast,
    batch_stats_fast,
)
from bnlib.numpy.fast import DEFAULT_BLOCK_BYTES, _Blocks, block_layout

SHAPES = [(7, 3), (64, 5), (4, 3, 5), (3, 2, 4, 5), (8, 3, 6, 6), (2, 3, 2, 3, 4)]
# 64 bytes forces runs of channels and runs of positions; 4 KiB groups whole samples.
BLOCKS = [64, 4096, DEFAULT_BLOCK_BYTES]
TOL64 = dict(rtol=1e-12, atol=1e-12)


def make(shape, dtype, seed=0, loc=2.0, scale=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, scale, size=shape).astype(dtype)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    dy = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, dy


def torch_reference(x, gamma, beta, dy, eps=1e-5):
    """Output and gradients of F.batch_norm in training mode, by autograd, in x's dtype."""
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, dtype=xt.dtype, requires_grad=True)
    bt = torch.tensor(beta, dtype=xt.dtype, requires_grad=True)
    y = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    y.backward(torch.tensor(dy))
    return [t.detach().numpy() for t in (y, xt.grad, gt.grad, bt.grad)]


def fast(x, gamma, beta, dy, block_bytes=DEFAULT_BLOCK_BYTES):
    y, cache = batch_norm_forward_fast(x, gamma, beta, block_bytes=block_bytes)
    return [y, *batch_norm_backward_fast(dy, cache)]


def teaching64(x, gamma, beta, dy):
    y, cache = batch_norm_forward(x.astype(np.float64), gamma, beta)
    return [y, *batch_norm_backward(dy.astype(np.float64), cache)]


def assert_close32(ours, ref):
    """float32 against a float64 reference: 1e-5 of the reference's largest magnitude."""
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_equals_teaching_version_and_torch(shape, block_bytes):
    x, gamma, beta, dy = make(shape, np.float64)
    ours = fast(x, gamma, beta, dy, block_bytes)
    for ref in (teaching64(x, gamma, beta, dy), torch_reference(x, gamma, beta, dy)):
        for name, a, r in zip(("y", "dx", "dgamma", "dbeta"), ours, ref):
            np.testing.assert_allclose(a, r, **TOL64, err_msg=name)


@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_equals_float64_reference_and_torch_float32(shape, block_bytes):
    x, gamma, beta, dy = make(shape, np.float32)
    ours = fast(x, gamma, beta, dy, block_bytes)
    assert all(a.dtype == np.float32 for a in ours)
    for a, r in zip(ours, teaching64(x, gamma, beta, dy)):
        assert_close32(a, r)
    for a, r in zip(ours, torch_reference(x, gamma, beta, dy)):
        assert_close32(a, r)


@pytest.mark.parametrize("shape", [(64, 1024), (16, 64, 28, 28), (64, 128, 7, 7)])
def test_float32_at_benchmark_like_sizes_with_default_blocks(shape):
    x, gamma, beta, dy = make(shape, np.float32, loc=0.5, scale=1.0)
    for a, r in zip(fast(x, gamma, beta, dy), torch_reference(x, gamma, beta, dy)):
        assert_close32(a, r)


@pytest.mark.parametrize("shape", [(9, 4), (3, 4, 5, 5)])
def test_without_affine_parameters(shape):
    x, _, _, dy = make(shape, np.float64, seed=3)
    for a, r in zip(fast(x, None, None, dy, 64), teaching64(x, None, None, dy)):
        np.testing.assert_allclose(a, r, **TOL64)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 9),
    c=st.integers(1, 5),
    spatial=st.lists(st.integers(1, 6), max_size=2),
    block_bytes=st.sampled_from([8, 40, 200, 4096]),
    seed=st.integers(0, 2**16),
)
def test_any_shape_and_block_size_equals_the_teaching_version(n, c, spatial, block_bytes, seed):
    x, gamma, beta, dy = make((n, c, *spatial), np.float64, seed=seed)
    for a, r in zip(fast(x, gamma, beta, dy, block_bytes), teaching64(x, gamma, beta, dy)):
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "shape3", [(4096, 1024, 1), (64, 64, 3136), (256, 128, 196), (2, 3, 100_000), (5, 7, 3)]
)
def test_blocks_fit_the_target_are_contiguous_and_cover_every_element_once(shape3):
    N, C, L = shape3
    nb, cb, lb = block_layout(shape3, 4, 4096)
    assert nb * cb * lb * 4 <= 4096
    assert (nb == 1 or (cb, lb) == (C, L)) and (cb == 1 or lb == L)  # contiguous blocks
    small = tuple(min(s, 40) for s in shape3)  # the same cutting rules on a countable array
    index = np.arange(np.prod(small), dtype=np.float32).reshape(small)  # value = flat position
    blocks = _Blocks(index, 64)
    seen = np.zeros(index.size, dtype=int)
    for c, run in blocks.runs():
        for k, start, stop, shape in run:
            assert 0 <= k < blocks.num_groups
            span = index.reshape(-1)[start:stop].reshape(shape)  # what the passes read
            n0, l0 = np.unravel_index(int(span.flat[0]), small)[::2]
            np.testing.assert_array_equal(
                span, index[n0 : n0 + shape[0], c, l0 : l0 + shape[2]]
            )  # the block it claims
            seen[start:stop] += 1
    assert (seen == 1).all()


def test_out_buffers_are_reused_not_reallocated():
    x, gamma, beta, dy = make((16, 4, 5, 5), np.float32)
    y_buf, dx_buf = np.empty_like(x), np.empty_like(x)
    for seed in (1, 2):  # the same buffers serve two different batches
        x, gamma, beta, dy = make((16, 4, 5, 5), np.float32, seed=seed)
        y, cache = batch_norm_forward_fast(x, gamma, beta, out=y_buf)
        dx, dgamma, dbeta = batch_norm_backward_fast(dy, cache, out=dx_buf)
        assert y is y_buf and dx is dx_buf
        ref = torch_reference(x, gamma, beta, dy)
        assert_close32(y_buf, ref[0])
        assert_close32(dx_buf, ref[1])


def test_non_contiguous_input_gives_the_same_result():
    x, gamma, beta, dy = make((5, 6, 4, 4), np.float64)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values
    assert not xt.flags.c_contiguous
    for a, r in zip(fast(xt, gamma, beta, dy), fast(x, gamma, beta, dy)):
        np.testing.assert_array_equal(a, r)


def test_float32_far_from_zero_keeps_its_variance_and_output():
    """1e4 + N(0, 1) in float32: the shifted two-pass statistics and the centred output pass
    stay within a few float32 ulps of a float64 reference on the same values; the one-pass
    formula E[x^2] - E[x]^2 in float32 (what the test would catch) is off by far more."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((512, 4, 8, 8))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    var_ref = x64.var(axis=(0, 2, 3))
    mean, var = batch_stats_fast(x)
    np.testing.assert_allclose(var, var_ref, rtol=1e-6)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-12)
    one_pass = (x * x).mean(axis=(0, 2, 3)) - x.mean(axis=(0, 2, 3)) ** 2
    assert np.abs(one_pass / var_ref - 1).max() > 0.1  # what the test guards against
    y, cache = batch_norm_forward_fast(x, None, None)
    assert not cache.folded  # |mu| / sigma = 1e4: the mean is subtracted, not folded
    ref = teaching64(x, None, None, dy)
    for a, r in zip([y, *batch_norm_backward_fast(dy, cache)], ref):
        assert_close32(a, r)
    np.testing.assert_allclose(y, ref[0], atol=2e-6)  # about 16 float32 ulps of 1


def test_sorted_data_with_an_unrepresentative_pilot_block():
    """The shift comes from the first block; sorting puts the smallest values there, the
    worst case for the shift. The Cauchy-Schwarz bound keeps the variance accurate."""
    rng = np.random.default_rng(1)
    x = np.sort(1e3 + rng.standard_normal((4096, 3)), axis=0).astype(np.float32)
    _, var = batch_stats_fast(x, block_bytes=256)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-5)


@pytest.mark.parametrize(
    "x,gamma,message",
    [
        (np.ones((4, 3), dtype=np.int64), None, "floating-point input"),
        (np.ones((4, 3), dtype=np.float16), None, "float32 or float64 input"),
        (np.ones(3), None, r"expected 2D or higher input of shape \(N, C, ...\) \(got 1D input\)"),
        (np.ones((4, 2)), np.ones(3), "expected input with 3 channels"),
        (np.ones((0, 3)), None, "non-empty input"),
        (np.ones((1, 3, 1, 1)), None, "Expected more than 1 value per channel when training"),
    ],
)
def test_bad_input_raises_value_error(x, gamma, message):
    with pytest.raises(ValueError, match=message):
        batch_norm_forward_fast(x, gamma, None)


def test_bad_beta_and_bad_out_buffers_raise_value_error():
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="expected input with 2 channels to match beta"):
        batch_norm_forward_fast(x, None, np.zeros(2))
    for out, message in [
        (np.empty((4, 2), np.float32), r"expected out of shape \(4, 3\)"),
        (np.empty((4, 3), np.float64), "dtype float32"),
        (np.empty((3, 4), np.float32).T, "C-contiguous"),
        (x, "must not share memory"),
    ]:
        with pytest.raises(ValueError, match=message):
            batch_norm_forward_fast(x, None, None, out=out)


def test_backward_checks_dy_and_its_out_buffer():
    x, gamma, beta, dy = make((6, 3), np.float64)
    _, cache = batch_norm_forward_fast(x, gamma, beta)
    with pytest.raises(ValueError, match=r"expected dy of shape \(6, 3\)"):
        batch_norm_backward_fast(dy[:5], cache)
    with pytest.raises(ValueError, match="must not share memory with dy"):
        batch_norm_backward_fast(dy, cache, out=dy)
    with pytest.raises(ValueError, match="must not share memory with the input"):
        batch_norm_backward_fast(dy, cache, out=cache.x)


def test_nan_stays_in_its_own_channel_as_in_torch():
    x = np.random.default_rng(4).standard_normal((6, 3, 4))
    x[2, 1, 3] = np.nan
    y, cache = batch_norm_forward_fast(x, None, None, block_bytes=64)
    y_ref = F.batch_norm(torch.tensor(x), None, None, training=True).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))  # all of channel 1, nothing else
    assert np.isnan(y[:, 1]).all() and not np.isnan(y[:, [0, 2]]).any()
    np.testing.assert_allclose(y[:, [0, 2]], y_ref[:, [0, 2]], **TOL64)
    dx, _, _ = batch_norm_backward_fast(np.ones_like(x), cache)
    assert np.isnan(dx[:, 1]).all() and not np.isnan(dx[:, [0, 2]]).any()
