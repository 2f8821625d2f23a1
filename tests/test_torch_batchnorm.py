"""bnlib.torch against torch.nn (2.13): modules, functional form, autograd Function."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import bnlib.torch as bt
from _reference import assert_steps_match
from bnlib.numpy import batch_norm_backward, batch_norm_forward

PAIRS = {
    1: (bt.BatchNorm1d, torch.nn.BatchNorm1d),
    2: (bt.BatchNorm2d, torch.nn.BatchNorm2d),
    3: (bt.BatchNorm3d, torch.nn.BatchNorm3d),
}
INPUT_SHAPES = {1: [(8, 3), (4, 3, 6)], 2: [(4, 3, 5, 6)], 3: [(2, 3, 3, 4, 5)]}
CASES = [(d, s) for d, shapes in INPUT_SHAPES.items() for s in shapes]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def make_pair(dim, dtype=torch.float64, seed=0, **kwargs):
    ours_cls, ref_cls = PAIRS[dim]
    ours, ref = ours_cls(3, dtype=dtype, **kwargs), ref_cls(3, dtype=dtype, **kwargs)
    if ours.affine:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p, q in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
                if p is None:
                    continue
                p.copy_(torch.randn(3, generator=g, dtype=dtype))
                q.copy_(p)
    return ours, ref


def test_batchnorm2d_equals_torch_over_20_steps_then_eval():
    """The foundation's acceptance check: float64, 1e-10, statistics and gradients."""
    ours, ref = make_pair(2)
    assert_steps_match(ours, ref, (8, 3, 5, 5), TOL[torch.float64], steps=20, scale=2, shift=1)
    assert int(ours.num_batches_tracked) == 20
    ours.eval(), ref.eval()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    ya, yb = ours(x), ref(x2)
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    ya.sum().backward(), yb.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim,shape", CASES)
@pytest.mark.parametrize("momentum", [0.1, None, 1.0])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_modules_equal_torch(dim, shape, momentum, affine, track, dtype):
    ours, ref = make_pair(dim, dtype, momentum=momentum, affine=affine, track_running_stats=track)
    assert_steps_match(ours, ref, shape, TOL[dtype], steps=4, scale=2, shift=1, dtype=dtype)
    ours.eval(), ref.eval()
    x = torch.randn((1,) + shape[1:], dtype=dtype)  # batch of one: fine in evaluation
    if not track:
        x = torch.randn(shape, dtype=dtype)  # no running stats: still batch statistics
    torch.testing.assert_close(ours(x), ref(x), **TOL[dtype])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 5),
    c=st.integers(1, 4),
    length=st.integers(1, 4),
    momentum=st.one_of(st.none(), st.floats(0.0, 1.0)),
    eps=st.floats(1e-8, 1e-1),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_configurations_equal_torch(n, c, length, momentum, eps, seed):
    torch.manual_seed(seed)
    ours = bt.BatchNorm1d(c, eps=eps, momentum=momentum, dtype=torch.float64)
    ref = torch.nn.BatchNorm1d(c, eps=eps, momentum=momentum, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(n, c, length, dtype=torch.float64) * 3
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-10, atol=1e-12)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-10)


def test_affine_without_bias_keyword_equals_torch():
    ours, ref = make_pair(2, bias=False)
    assert ours.bias is None and ref.bias is None
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert_steps_match(ours, ref, (4, 3, 2, 2), TOL[torch.float64], steps=3, scale=2, shift=1)


def test_state_dict_keys_and_round_trip_with_torch():
    ref = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    ours = bt.BatchNorm2d(3, dtype=torch.float64)
    assert (
        list(ours.state_dict())
        == list(ref.state_dict())
        == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    )
    for _ in range(3):
        ref(torch.randn(4, 3, 2, 2, dtype=torch.float64) + 5)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    buffer.seek(0)
    ours.load_state_dict(torch.load(buffer))
    back = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    back.load_state_dict(ours.state_dict())
    for m in (ref, ours, back):
        m.eval()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(back(x), ref(x), rtol=0, atol=0)


def test_old_state_dict_without_num_batches_tracked_loads():
    sd = torch.nn.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1
    ours = bt.BatchNorm1d(3)
    ours.load_state_dict(sd)
    assert int(ours.num_batches_tracked) == 0


def test_buffers_move_with_to_and_repr_matches_torch():
    ours = bt.BatchNorm1d(3, momentum=None).to(torch.float64)
    assert ours.running_mean.dtype == ours.weight.dtype == torch.float64
    assert ours.num_batches_tracked.dtype == torch.long
    assert repr(ours) == repr(torch.nn.BatchNorm1d(3, momentum=None))
    assert [n for n, _ in ours.named_buffers()] == [
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]


def test_running_stats_never_carry_autograd_history():
    bn = bt.BatchNorm1d(3)
    x = torch.randn(4, 3, requires_grad=True)
    bn(x * 2).sum().backward()
    assert bn.running_mean.grad_fn is None and bn.running_var.grad_fn is None
    assert not bn.running_mean.requires_grad


@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0])
def test_functional_equals_torch_functional(momentum):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    w, b = (
        torch.randn(4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    rm_a, rv_a = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    rm_b, rv_b = rm_a.clone(), rv_a.clone()
    for training in (True, False):
        ya = bt.batch_norm(x, rm_a, rv_a, w, b, training, momentum, 1e-3)
        yb = F.batch_norm(x, rm_b, rv_b, w, b, training, momentum, 1e-3)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rm_a, rm_b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(rv_a, rv_b, rtol=1e-12, atol=1e-14)
    ya = bt.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(
        ya, F.batch_norm(x, None, None, training=True), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 5), (3, 3, 2, 4)])
def test_autograd_function_passes_gradcheck_and_equals_torch(shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bt.BatchNormFunction.apply, (x, w, b, 1e-5))
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    grads_ours = torch.autograd.grad(bt.BatchNormFunction.apply(x, w, b, 1e-5), (x, w, b), dy)
    y_ref = F.batch_norm(x, None, None, w, b, training=True)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), dy)
    for a, r in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_module_double_backward_matches_torch():
    # bnlib.torch is built from differentiable ops, so second derivatives work as in torch.
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda v: bt.batch_norm(v, None, None, training=True), (x,)
    )


def test_numpy_and_torch_agree():
    rng = np.random.default_rng(3)
    x, dy = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    y, cache = batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    xt = torch.tensor(x, requires_grad=True)
    wt, bt_ = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    yt = bt.BatchNormFunction.apply(xt, wt, bt_, 1e-5)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    for a, b in ((dx, xt.grad), (dgamma, wt.grad), (dbeta, bt_.grad)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
