"""The unbiased-variance convention against a direct computation and torch.nn, and the
train/eval scale of the normalized values for both conventions."""

import pytest
import torch

from bnlib.experiments.bessel import UnbiasedBatchNorm1d, convention_mlp, normalized_scale


def test_unbiased_layer_normalizes_with_the_unbiased_variance_and_updates_like_torch():
    torch.manual_seed(0)
    ours, ref = (
        UnbiasedBatchNorm1d(3, dtype=torch.float64),
        torch.nn.BatchNorm1d(3, dtype=torch.float64),
    )
    for _ in range(5):
        x = torch.randn(6, 3, dtype=torch.float64) * 3 + 1
        y = ours(x)
        ref(x)
        expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=True) + 1e-5)
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-12, atol=1e-12)
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=1e-12, atol=1e-12)
    ours.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ours(torch.randn(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected 2D input"):
        ours(torch.randn(2, 3, 4, dtype=torch.float64))


def test_gradients_of_the_unbiased_layer_match_autograd_and_finite_differences():
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    layer = UnbiasedBatchNorm1d(2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))


@pytest.mark.parametrize("m", [2, 4, 16])
def test_training_mean_square_is_one_for_torch_and_m_minus_1_over_m_for_makemore(m):
    torch.manual_seed(0)
    x = torch.randn(64 * m, 5, dtype=torch.float64) * 2 + 3
    for convention, expected in (("biased (torch.nn)", 1.0), ("unbiased (makemore)", (m - 1) / m)):
        net = convention_mlp(convention, in_features=5, depth=1).double()
        net[1].eps = 1e-12  # the identities hold for eps -> 0
        scale = normalized_scale(net, x, batch_size=m)
        assert abs(scale.train[0] - expected) < 1e-6, (convention, scale)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        normalized_scale(net, x, batch_size=1)


def test_convention_mlp_swaps_every_batch_norm_layer():
    net = convention_mlp("unbiased (makemore)", depth=3)
    kinds = [type(layer).__name__ for layer in net]
    assert kinds.count("UnbiasedBatchNorm1d") == 3 and "BatchNorm1d" not in kinds
    with pytest.raises(ValueError, match="expected convention"):
        convention_mlp("population")
