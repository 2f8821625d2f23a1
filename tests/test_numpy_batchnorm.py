"""bnlib.numpy against torch.nn.functional (float64), finite differences, and itself."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlib.numpy import (
    BatchNorm,
    batch_norm_backward,
    batch_norm_backward_staged,
    batch_norm_forward,
    numerical_gradient,
    relative_error,
)

SHAPES = [(7, 3), (4, 3, 5), (3, 2, 4, 5), (2, 3, 2, 3, 4)]


def torch_reference(x, gamma, beta, dy, eps=1e-5):
    """Output and gradients of F.batch_norm in training mode, by autograd."""
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    y = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_equal_torch(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    dy = rng.normal(size=shape)
    y, cache = batch_norm_forward(x, gamma, beta)
    y_ref, dx_ref, dg_ref, db_ref = torch_reference(x, gamma, beta, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for backward in (batch_norm_backward, batch_norm_backward_staged):
        dx, dgamma, dbeta = backward(dy, cache)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dgamma, dg_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dbeta, db_ref, rtol=1e-12, atol=1e-12)


def test_output_has_zero_mean_unit_biased_variance_per_channel():
    rng = np.random.default_rng(1)
    x = rng.exponential(size=(16, 3, 4, 4))
    y, _ = batch_norm_forward(x, None, None, eps=0.0)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-14)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_equals_finite_differences(shape):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape)
    gamma, beta, dy = rng.normal(size=shape[1]), rng.normal(size=shape[1]), rng.normal(size=shape)
    _, cache = batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    assert (
        relative_error(
            dx, numerical_gradient(lambda v: batch_norm_forward(v, gamma, beta)[0], x, dy)
        )
        < 1e-8
    )
    assert (
        relative_error(
            dgamma,
            numerical_gradient(lambda g: batch_norm_forward(x, g, beta)[0], gamma.copy(), dy),
        )
        < 1e-8
    )
    assert (
        relative_error(
            dbeta,
            numerical_gradient(lambda b: batch_norm_forward(x, gamma, b)[0], beta.copy(), dy),
        )
        < 1e-8
    )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 6),
    c=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 2**32 - 1),
    loc=st.floats(-100, 100),
    scale=st.floats(1e-2, 1e2),
)
def test_staged_equals_compact_backward(n, c, spatial, seed, loc, scale):
    rng = np.random.default_rng(seed)
    shape = (n, c, *spatial)
    x = rng.normal(loc, scale, size=shape)
    gamma, beta, dy = rng.normal(size=c), rng.normal(size=c), rng.normal(size=shape)
    _, cache = batch_norm_forward(x, gamma, beta)
    for a, b in zip(batch_norm_backward(dy, cache), batch_norm_backward_staged(dy, cache)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(dy).max())


def test_gamma_none_means_scale_one():
    rng = np.random.default_rng(3)
    x, dy = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    y0, c0 = batch_norm_forward(x, None, None)
    y1, c1 = batch_norm_forward(x, np.ones(2), np.zeros(2))
    np.testing.assert_array_equal(y0, y1)
    for a, b in zip(batch_norm_backward(dy, c0), batch_norm_backward(dy, c1)):
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)


def test_two_pass_variance_survives_a_large_offset_in_float32():
    # float32 data 1e4 + N(0, 1): E[x^2] - E[x]^2 loses every digit (it can go negative).
    rng = np.random.default_rng(4)
    x = (1e4 + rng.normal(size=(4096, 8))).astype(np.float32)
    one_pass = (x * x).mean(axis=0) - x.mean(axis=0) ** 2
    assert np.max(np.abs(one_pass - 1.0)) > 0.5  # the naive formula really fails here
    _, cache = batch_norm_forward(x, None, None)
    exact = x.astype(np.float64).var(axis=0)
    np.testing.assert_allclose(cache.var, exact, rtol=1e-3)
    assert cache.var.dtype == np.float32


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4])
@pytest.mark.parametrize("shape", [(4096, 64), (16, 8, 6, 6)])
def test_teaching_forward_float32_as_accurate_as_the_fast_path_and_torch(offset, shape):
    """Output and gradients of float32 input ``offset + N(0, 1)``, against float64 of the same
    input: the teaching forward accumulates its means in float64 and rounds ``x - mu`` once,
    so it is within a few roundings of the fast path (before: 0.024 at 1e4, 4096 x 64) and
    no worse than torch's float32 kernel."""
    from bnlib.numpy import batch_norm_forward_fast

    rng = np.random.default_rng(6)
    x = (offset + rng.normal(size=shape)).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    gamma = (1 + 0.1 * rng.normal(size=shape[1])).astype(np.float32)
    beta = (0.1 * rng.normal(size=shape[1])).astype(np.float32)
    y64, c64 = batch_norm_forward(
        x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64)
    )
    y, cache = batch_norm_forward(x, gamma, beta)
    y_fast, _ = batch_norm_forward_fast(x, gamma, beta)
    y_torch = F.batch_norm(
        torch.from_numpy(x),
        None,
        None,
        torch.from_numpy(gamma),
        torch.from_numpy(beta),
        training=True,
    ).numpy()
    err = {
        name: np.abs(v - y64).max()
        for name, v in (("teaching", y), ("fast", y_fast), ("torch", y_torch))
    }
    assert err["teaching"] <= max(4 * min(err["fast"], err["torch"]), 1e-6), err
    grads, grads64 = (
        batch_norm_backward(dy, cache),
        batch_norm_backward(dy.astype(np.float64), c64),
    )
    for g, g64 in zip(grads, grads64):
        assert g.dtype == np.float32
        rel = np.abs(g - g64).max() / np.abs(g64).max()
        assert rel <= max(4e-4 * offset / 1e4, 1e-5), rel  # x - mu keeps float32 accuracy


def test_float32_forward_close_to_float64():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 4, 3, 3))
    y64, _ = batch_norm_forward(x, None, None)
    y32, _ = batch_norm_forward(x.astype(np.float32), None, None)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=2e-6)


@pytest.mark.parametrize("momentum", [0.1, None, 1.0])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 3, 4, 5)])
def test_layer_equals_torch_module_over_training_then_eval(momentum, affine, shape):
    rng = np.random.default_rng(6)
    ours = BatchNorm(3, momentum=momentum, affine=affine)
    torch_cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}
    ref = torch_cls[len(shape)](3, momentum=momentum, affine=affine).double()
    if affine:
        ours.weight, ours.bias = rng.normal(size=3), rng.normal(size=3)
        with torch.no_grad():
            ref.weight.copy_(torch.tensor(ours.weight))
            ref.bias.copy_(torch.tensor(ours.bias))
    for _ in range(5):
        x, dy = rng.normal(1.0, 2.0, size=shape), rng.normal(size=shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        if affine:
            np.testing.assert_allclose(ours.grad_weight, ref.weight.grad.numpy(), rtol=1e-10)
            np.testing.assert_allclose(ours.grad_bias, ref.bias.grad.numpy(), rtol=1e-10)
            ref.zero_grad()
    np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=1e-12)
    assert ours.num_batches_tracked == int(ref.num_batches_tracked) == 5
    ours.eval(), ref.eval()
    x = rng.normal(size=(1,) + shape[1:])  # batch of one is fine in evaluation
    np.testing.assert_allclose(
        ours(x), ref(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12
    )


def test_layer_without_running_stats_uses_batch_stats_in_eval():
    rng = np.random.default_rng(7)
    ours, ref = (
        BatchNorm(2, track_running_stats=False),
        torch.nn.BatchNorm1d(2, track_running_stats=False).double(),
    )
    assert ours.running_mean is None and ours.num_batches_tracked is None
    ours.eval(), ref.eval()
    x = rng.normal(size=(5, 2))
    np.testing.assert_allclose(ours(x), ref(torch.tensor(x)).detach().numpy(), rtol=1e-12)


def test_layer_backward_needs_a_training_forward():
    bn = BatchNorm(2).eval()
    bn(np.ones((3, 2)))
    with pytest.raises(ValueError, match="preceding forward"):
        bn.backward(np.ones((3, 2)))


def test_numerical_gradient_refuses_float32():
    with pytest.raises(ValueError, match="float64"):
        numerical_gradient(lambda v: v, np.ones(2, np.float32), np.ones(2, np.float32))
