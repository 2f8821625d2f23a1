"""LayerNorm, GroupNorm, InstanceNorm1d/2d and RMSNorm of bnlib.torch against torch.nn (2.13):
constructor signatures, state_dict keys, repr, forward and gradients in float64; and the NumPy
LayerNorm/GroupNorm forward/backward against torch and finite differences."""

import inspect
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import bnlib.torch as bt
from _reference import assert_steps_match
from conftest import TOL as TOLERANCES, make_pair
from bnlib.numpy import numerical_gradient
from bnlib.numpy.norms import (
    group_norm_backward,
    group_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)

TOL = TOLERANCES["f64"]
F64 = torch.float64

# (class name, constructor args, kwargs, input shape)
CASES = [
    ("LayerNorm", (5,), {}, (4, 5)),
    ("LayerNorm", ((3, 4),), {}, (2, 6, 3, 4)),
    ("LayerNorm", ([4],), {"bias": False}, (3, 2, 4)),
    ("LayerNorm", (4,), {"elementwise_affine": False, "eps": 1e-3}, (6, 4)),
    ("GroupNorm", (2, 6), {}, (4, 6, 5)),
    ("GroupNorm", (3, 6), {"eps": 1e-3}, (2, 6, 3, 4)),
    ("GroupNorm", (1, 4), {"affine": False}, (3, 4, 2, 2, 2)),
    ("GroupNorm", (4, 4), {"bias": False}, (3, 4)),
    ("InstanceNorm1d", (3,), {}, (4, 3, 7)),
    ("InstanceNorm1d", (3,), {"affine": True}, (3, 7)),
    ("InstanceNorm1d", (3,), {"affine": True, "track_running_stats": True}, (4, 3, 7)),
    ("InstanceNorm2d", (3,), {"affine": True, "bias": False}, (2, 3, 4, 5)),
    ("InstanceNorm2d", (3,), {"track_running_stats": True, "momentum": None}, (2, 3, 4, 5)),
    ("InstanceNorm2d", (3,), {"affine": True, "track_running_stats": True}, (3, 4, 5)),
    ("RMSNorm", (5,), {}, (4, 5)),
    ("RMSNorm", ((3, 4),), {"eps": 1e-6}, (2, 3, 4)),
    ("RMSNorm", (4,), {"elementwise_affine": False}, (3, 4)),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize(
    "name", ["LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "RMSNorm"]
)
def test_constructor_signature_matches_torch(name):
    ours = inspect.signature(getattr(bt, name).__init__).parameters
    ref = inspect.signature(getattr(nn, name).__init__).parameters
    assert list(ours) == list(ref)
    for p in ref:
        assert ours[p].default == ref[p].default, p
        assert ours[p].kind == ref[p].kind, p


@pytest.mark.parametrize("name,args,kwargs,shape", CASES, ids=IDS)
def test_state_dict_and_repr_match_torch(name, args, kwargs, shape):
    ours, ref = make_pair(name, *args, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert repr(ours) == repr(ref)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)  # a torch checkpoint loads strictly into ours
    buffer.seek(0)
    ours.load_state_dict(torch.load(buffer), strict=True)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name,args,kwargs,shape", CASES, ids=IDS)
def test_forward_gradients_and_buffers_match_torch(name, args, kwargs, shape, training):
    ours, ref = make_pair(name, *args, **kwargs)
    ours.train(training)
    ref.train(training)
    # several steps, so running statistics (if any) evolve
    assert_steps_match(ours, ref, shape, TOL, steps=3, seed=1, scale=3, shift=1)


@pytest.mark.parametrize("name,args,kwargs,shape", CASES, ids=IDS)
def test_gradcheck(name, args, kwargs, shape):
    ours, _ = make_pair(name, *args, **kwargs)
    ours.eval()  # eval, so running buffers do not move between gradcheck's evaluations
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(ours, (x.requires_grad_(),), eps=1e-6, atol=1e-7)


def test_group_norm_extremes_are_layer_and_instance_norm():
    x = torch.randn(3, 4, 5, 6, dtype=F64)
    one_group = bt.GroupNorm(1, 4, affine=False)(x)
    torch.testing.assert_close(
        one_group, bt.LayerNorm((4, 5, 6), elementwise_affine=False)(x), **TOL
    )
    per_channel = bt.GroupNorm(4, 4, affine=False)(x)
    torch.testing.assert_close(per_channel, bt.InstanceNorm2d(4)(x), **TOL)


def test_layer_norm_is_batch_independent_and_rms_norm_is_not_centred():
    x = torch.randn(8, 5, dtype=F64)
    ln = bt.LayerNorm(5, dtype=F64)
    torch.testing.assert_close(ln(x)[:3], ln(x[:3]), **TOL)  # one sample does not see others
    rms = bt.RMSNorm(5, elementwise_affine=False)(x + 10.0)
    assert (rms.mean(dim=1) > 0.9).all()  # the shift survives: no centring
    torch.testing.assert_close(
        rms.square().mean(dim=1), torch.ones(8, dtype=F64), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(
    "make,shape,match",
    [
        (
            lambda: bt.LayerNorm(4),
            (2, 5),
            r"Given normalized_shape=\[4\], expected input with "
            r"shape \[\*, 4\], but got input of size\[2, 5\]",
        ),
        (lambda: bt.LayerNorm((3, 4)), (4,), r"expected input with shape \[\*, 3, 4\]"),
        (lambda: bt.RMSNorm(4), (2, 3), r"Given normalized_shape=\[4\]"),
        (lambda: bt.GroupNorm(2, 4), (2, 6, 3), r"expected input with 4 channels \(got 6"),
        (lambda: bt.GroupNorm(2, 4), (4,), r"Expected at least 2 dimensions for input tensor"),
        (lambda: bt.InstanceNorm1d(3), (2, 3, 4, 5), r"expected 2D or 3D input \(got 4D input\)"),
        (lambda: bt.InstanceNorm2d(3), (3, 4), r"expected 3D or 4D input \(got 2D input\)"),
        (
            lambda: bt.InstanceNorm1d(3, affine=True),
            (2, 4, 5),
            r"expected input's size at dim=1 to match num_features \(3\), but got: 4",
        ),
        (lambda: bt.InstanceNorm1d(3), (2, 3, 1), r"Expected more than 1 spatial element"),
    ],
)
def test_bad_input_raises_value_error(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make()(torch.randn(shape))


def test_group_count_must_divide_channels():
    with pytest.raises(
        ValueError,
        match=r"num_channels \(6\) must be divisible by "
        r"num_groups \(4\)",
    ):
        bt.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        nn.GroupNorm(4, 6)  # the same error in torch
    with pytest.raises(
        ValueError,
        match=r"divisible by num_groups, but got input of "
        r"shape \[2, 6, 3\] and num_groups=4",
    ):
        bt.group_norm(torch.randn(2, 6, 3), 4)


def test_instance_norm_without_affine_warns_on_channel_mismatch_like_torch():
    x = torch.randn(2, 4, 5)
    with pytest.warns(UserWarning, match="does not match num_features"):
        ours = bt.InstanceNorm1d(3)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(ours, nn.InstanceNorm1d(3)(x))


# --- NumPy LayerNorm and GroupNorm: against torch and against finite differences -----------

NP_CASES = [  # (kind, input shape, layer-norm normalized_ndim or group count, affine)
    ("layer", (4, 6), 1, True),
    ("layer", (2, 3, 4, 5), 2, True),
    ("layer", (5, 3), 1, False),
    ("group", (4, 6, 5), 3, True),
    ("group", (2, 4, 3, 3), 2, True),
    ("group", (3, 6), 6, False),
    ("group", (2, 4, 2, 2, 2), 1, True),
]


def np_forward(kind, x, arg, gamma, beta):
    if kind == "layer":
        return layer_norm_forward(x, gamma, beta, normalized_ndim=arg)
    return group_norm_forward(x, arg, gamma, beta)


def np_backward(kind, dy, cache):
    return (layer_norm_backward if kind == "layer" else group_norm_backward)(dy, cache)


def np_params(kind, shape, arg, affine, rng):
    if not affine:
        return None, None
    pshape = shape[len(shape) - arg :] if kind == "layer" else (shape[1],)
    return rng.normal(size=pshape), rng.normal(size=pshape)


@pytest.mark.parametrize("kind,shape,arg,affine", NP_CASES)
def test_numpy_norms_equal_torch(kind, shape, arg, affine):
    rng = np.random.default_rng(0)
    x, dy = rng.normal(2.0, 3.0, size=shape), rng.normal(size=shape)
    gamma, beta = np_params(kind, shape, arg, affine, rng)
    y, cache = np_forward(kind, x, arg, gamma, beta)
    dx, dgamma, dbeta = np_backward(kind, dy, cache)
    t = lambda a: None if a is None else torch.tensor(a, requires_grad=True)
    xt, gt, bt_ = t(x), t(gamma), t(beta)
    if kind == "layer":
        yt = torch.nn.functional.layer_norm(xt, shape[len(shape) - arg :], gt, bt_, 1e-5)
    else:
        yt = torch.nn.functional.group_norm(xt, arg, gt, bt_, 1e-5)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-9)
    if affine:
        np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(dbeta, bt_.grad.numpy(), rtol=1e-9, atol=1e-9)
    else:
        assert dgamma is None and dbeta is None


@pytest.mark.parametrize("kind,shape,arg,affine", NP_CASES)
def test_numpy_norms_equal_finite_differences(kind, shape, arg, affine):
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = np_params(kind, shape, arg, affine, rng)
    _, cache = np_forward(kind, x, arg, gamma, beta)
    dx, dgamma, dbeta = np_backward(kind, dy, cache)
    num_dx = numerical_gradient(lambda v: np_forward(kind, v, arg, gamma, beta)[0], x, dy)
    np.testing.assert_allclose(dx, num_dx, rtol=1e-6, atol=1e-8)
    if affine:
        num_dg = numerical_gradient(lambda g: np_forward(kind, x, arg, g, beta)[0], gamma, dy)
        num_db = numerical_gradient(lambda b: np_forward(kind, x, arg, gamma, b)[0], beta, dy)
        np.testing.assert_allclose(dgamma, num_dg, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(dbeta, num_db, rtol=1e-6, atol=1e-8)


def test_numpy_norms_bad_input():
    with pytest.raises(
        ValueError,
        match=r"num_channels \(6\) must be divisible by "
        r"num_groups \(4\)",
    ):
        group_norm_forward(np.ones((2, 6, 3)), 4)
    with pytest.raises(ValueError, match=r"expected gamma of shape \(4,\)"):
        group_norm_forward(np.ones((2, 4, 3)), 2, gamma=np.ones(3))
    with pytest.raises(ValueError, match=r"Given normalized_shape=\[5\], expected gamma"):
        layer_norm_forward(np.ones((2, 5)), gamma=np.ones(4))
    with pytest.raises(ValueError, match=r"expected 1 <= normalized_ndim <= 2"):
        layer_norm_forward(np.ones((2, 5)), normalized_ndim=3)
