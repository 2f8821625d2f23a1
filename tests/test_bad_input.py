"""Bad input gets a clear ValueError, never silent wrong output (NaN is propagated, as in torch)."""

import numpy as np
import pytest
import torch

import bnlib.torch as bt
from bnlib.numpy import BatchNorm, batch_norm_forward


@pytest.mark.parametrize(
    "cls,shape,expected",
    [
        (bt.BatchNorm1d, (2, 3, 4, 5), "expected 2D or 3D input (got 4D input)"),
        (bt.BatchNorm1d, (3,), "expected 2D or 3D input (got 1D input)"),
        (bt.BatchNorm2d, (2, 3, 4), "expected 4D input (got 3D input)"),
        (bt.BatchNorm3d, (2, 3, 4, 4), "expected 5D input (got 4D input)"),
    ],
)
def test_wrong_number_of_dimensions(cls, shape, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        cls(3)(torch.randn(shape))
    ref_cls = getattr(torch.nn, cls.__name__)
    with pytest.raises(ValueError, match="input"):  # torch raises the same kind of error
        ref_cls(3)(torch.randn(shape))


def test_channel_mismatch_is_an_error_not_a_broadcast():
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        bt.BatchNorm2d(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        bt.BatchNorm1d(3)(torch.randn(4, 1))  # would silently broadcast in naive code
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        BatchNorm(3)(np.ones((4, 1)))
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        batch_norm_forward(np.ones((4, 2)), np.ones(3), np.zeros(3))


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1)])
def test_one_value_per_channel_in_training(shape):
    cls = {2: bt.BatchNorm1d, 3: bt.BatchNorm1d, 4: bt.BatchNorm2d}[len(shape)]
    msg = "Expected more than 1 value per channel when training, got input size"
    with pytest.raises(ValueError, match=msg):
        cls(3)(torch.randn(shape))
    with pytest.raises(ValueError, match=msg):
        BatchNorm(3)(np.ones(shape))
    # evaluation with a batch of one is fine, in torch and here
    out = cls(3).eval()(torch.randn(shape))
    assert out.shape == shape and torch.isfinite(out).all()


def test_one_value_per_channel_is_fine_when_spatial_size_gives_more():
    out = bt.BatchNorm2d(3)(torch.randn(1, 3, 2, 2))  # 4 values per channel
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(0, 3, 2, 2), (2, 3, 0, 2)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_empty_batch_behaves_as_in_torch(shape, momentum):
    # torch.nn returns an empty output, leaves the running statistics alone, still counts
    # the batch in num_batches_tracked, and gives zero weight and bias gradients; so do we
    # (detection heads meet empty batches). The NumPy teaching layer refuses them.
    ours, ref = bt.BatchNorm2d(3, momentum=momentum), torch.nn.BatchNorm2d(3, momentum=momentum)
    x = torch.randn(shape, requires_grad=True)
    for bn in (ours, ref):
        out = bn(x)
        assert out.shape == shape and out.dtype == x.dtype
        out.sum().backward()
        assert torch.equal(bn.weight.grad, torch.zeros(3))
        assert torch.equal(bn.bias.grad, torch.zeros(3))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert int(ours.num_batches_tracked) == 1
    assert ours.eval()(x).shape == shape
    with pytest.raises(ValueError, match="non-empty input"):
        BatchNorm(3)(np.ones((0, 3)))


def test_integer_input_is_refused():
    with pytest.raises(NotImplementedError, match="floating-point input"):
        bt.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="floating-point input"):
        BatchNorm(3)(np.ones((4, 3), dtype=np.int64))
    with pytest.raises(NotImplementedError):  # torch's own error for the same input
        torch.nn.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long))


def test_functional_without_running_stats_in_eval_is_refused():
    with pytest.raises(ValueError, match="training=False"):
        bt.batch_norm(torch.randn(4, 3), None, None, training=False)


def test_nan_propagates_to_its_own_channel_exactly_as_in_torch():
    """A NaN in channel 1 makes all of channel 1 NaN (its mean is NaN) and poisons that
    channel's running statistics; the other channels are untouched. This is torch's
    behaviour and ours: NaN is never hidden, so the failure is visible downstream."""
    x = torch.randn(4, 3, dtype=torch.float64)
    x[0, 1] = float("nan")
    ours, ref = (
        bt.BatchNorm1d(3, dtype=torch.float64),
        torch.nn.BatchNorm1d(3, dtype=torch.float64),
    )
    ya, yb = ours(x), ref(x)
    assert torch.isnan(ya[:, 1]).all() and torch.isfinite(ya[:, [0, 2]]).all()
    torch.testing.assert_close(ya, yb, equal_nan=True)
    assert torch.isnan(ours.running_mean[1]) and torch.isfinite(ours.running_mean[[0, 2]]).all()
    y_np = BatchNorm(3)(x.numpy())
    assert np.isnan(y_np[:, 1]).all() and np.isfinite(y_np[:, [0, 2]]).all()
