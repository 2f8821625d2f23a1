"""Per-layer statistics of deep MLPs (bnlib.experiments.depth_stats), checked against autograd
and against what batch normalization guarantees by construction."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlib.experiments import load_digits_split, mlp
from bnlib.experiments.depth_stats import (
    LayerStats,
    derivative_ratio,
    depth_stats,
    init_normal_,
    layer_stats,
    residual_mlp,
    saturated_fraction,
)

SPLIT = load_digits_split()
FUNCTIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_derivative_ratio_equals_autograd_over_its_maximum(activation):
    z = torch.linspace(-6, 6, 101, dtype=torch.float64)
    z = z[z != 0].requires_grad_()  # relu has no derivative at 0
    (grad,) = torch.autograd.grad(FUNCTIONS[activation](z).sum(), z)
    peak = {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0}[activation]
    torch.testing.assert_close(
        derivative_ratio(z.detach(), activation), grad / peak, rtol=1e-12, atol=1e-12
    )


def test_saturated_fraction_uses_the_derivative_threshold():
    # tanh: 1 - tanh(z)^2 < 0.02 exactly when |z| > atanh(sqrt(0.98)) = 2.6467...
    edge = math.atanh(math.sqrt(0.98))
    z = torch.tensor([0.0, edge - 0.01, edge + 0.01, -(edge + 0.01)], dtype=torch.float64)
    assert saturated_fraction(z, "tanh") == 0.5
    # sigmoid: 4 s (1 - s) < 0.02 exactly when |z| > 2 * atanh(sqrt(0.98)) (since s' = tanh' / 4 at z / 2)
    assert saturated_fraction(2 * z, "sigmoid") == 0.5
    assert saturated_fraction(torch.tensor([-1.0, 1.0]), "relu") == 0.5
    with pytest.raises(ValueError, match="activation"):
        saturated_fraction(z, "gelu")
    with pytest.raises(ValueError, match="threshold"):
        saturated_fraction(z, "tanh", threshold=1.5)


def test_init_normal_has_the_asked_scale_and_zero_bias():
    torch.manual_seed(0)
    layer = init_normal_(nn.Linear(2500, 400), gain=3.0)
    assert abs(float(layer.weight.detach().std()) / (3.0 / 50.0) - 1) < 0.01
    assert abs(float(layer.weight.detach().mean())) < 1e-3 and not layer.bias.detach().any()
    with pytest.raises(ValueError, match="gain"):
        init_normal_(layer, gain=0.0)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_layer_stats_match_a_plain_backward_and_leave_the_model_untouched(norm):
    torch.manual_seed(0)
    model = mlp(depth=4, activation="tanh", norm=norm).double()
    x, y = SPLIT.x_train[:200].double(), SPLIT.y_train[:200]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = layer_stats(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    F.cross_entropy(model(x), y).backward()  # the reference: autograd's ordinary backward
    hidden = [m for m in model if isinstance(m, nn.Linear)][:-1]
    expected = np.array([float(m.weight.grad.norm()) for m in hidden])
    np.testing.assert_allclose(stats.weight_grad_norm, expected, rtol=1e-12)
    assert stats.depth == 4 and stats.pre_activation[0].shape == (200, 100)
    for z, a in zip(stats.pre_activation, stats.post_activation):
        torch.testing.assert_close(a, torch.tanh(z), rtol=0, atol=0)


def test_bn_net_sigmoid_inputs_are_torch_batch_norm_of_the_linear_outputs():
    torch.manual_seed(0)
    model = mlp(depth=10, norm="batch")  # gamma = 1, beta = 0 at initialization
    x = SPLIT.x_train[:300]
    stats = layer_stats(model, x, SPLIT.y_train[:300])
    linears = [m for m in model if isinstance(m, nn.Linear)][:-1]
    inputs = [x] + stats.post_activation[:-1]
    for z, a_prev, linear in zip(stats.pre_activation, inputs, linears):
        reference = F.batch_norm(linear(a_prev).detach(), None, None, training=True, eps=1e-5)
        torch.testing.assert_close(z, reference, rtol=1e-5, atol=1e-5)
        assert float(z.mean(dim=0).abs().max()) < 1e-5


def test_depth_makes_sigmoid_gradients_vanish_and_bn_keeps_them_level():
    for seed in (0, 1):
        plain = depth_stats(norm="none", seed=seed)
        bn = depth_stats(norm="batch", seed=seed)
        assert plain.gradient_ratio < 1e-4, plain.weight_grad_norm
        assert np.all(
            np.diff(plain.weight_grad_norm) > 0
        )  # smaller at every step towards the input
        assert 0.3 < bn.gradient_ratio < 3, bn.weight_grad_norm


def test_large_init_saturates_tanh_units_unless_bn_rescales_them():
    plain = depth_stats("tanh", "none", init_gain=3.0)
    bn = depth_stats("tanh", "batch", init_gain=3.0)
    careful = depth_stats("tanh", "none", init_gain=1.0)
    assert plain.saturated_fraction()[1:].min() > 0.15
    assert bn.saturated_fraction().max() < 0.05
    assert careful.saturated_fraction().max() < 0.05


def test_depth_stats_are_seeded_and_training_changes_them():
    a, b = depth_stats(seed=3, depth=3), depth_stats(seed=3, depth=3)
    np.testing.assert_array_equal(a.weight_grad_norm, b.weight_grad_norm)
    c = depth_stats(seed=4, depth=3)
    assert not np.array_equal(a.weight_grad_norm, c.weight_grad_norm)
    trained = depth_stats(seed=3, depth=3, steps=20, lr=1.0)
    assert not np.array_equal(a.weight_grad_norm, trained.weight_grad_norm)


def test_layer_stats_rejects_models_it_cannot_read():
    x, y = SPLIT.x_train[:10], SPLIT.y_train[:10]
    with pytest.raises(ValueError, match="sigmoid, tanh or relu"):
        layer_stats(nn.Sequential(nn.Linear(64, 10)), x, y)
    mixed = nn.Sequential(
        nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10)
    )
    with pytest.raises(ValueError, match="one kind of nonlinearity"):
        layer_stats(mixed, x, y)


def test_residual_mlp_adds_the_identity_around_each_later_layer():
    torch.manual_seed(0)
    net = residual_mlp(depth=3, activation="tanh", norm="none").double()
    x = SPLIT.x_train[:5].double()
    h = torch.tanh(net[0](x))  # layer 1: (N, 100)
    for block in net[2:4]:
        h = h + torch.tanh(block.linear(h))  # (N, 100)
    torch.testing.assert_close(net(x), net[4](h), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="activation"):
        residual_mlp(activation="gelu")


def test_deep_bn_net_gradients_explode_without_shortcuts_and_not_with_them():
    plain = depth_stats("relu", "batch", depth=30, num_samples=250)
    residual = depth_stats("relu", "batch", depth=30, num_samples=250, residual=True)
    assert plain.depth == residual.depth == 30
    assert plain.gradient_ratio > 30, plain.gradient_ratio  # Yang et al. (2019)
    assert residual.gradient_ratio < min(15.0, plain.gradient_ratio / 10)


def test_post_activation_std_measures_dependence_on_the_input_only():
    constant_per_unit = torch.arange(5.0).repeat(8, 1)  # (8, 5): units differ, samples do not
    varying = torch.tensor([[0.0, 1.0], [2.0, 5.0]])  # per-unit stds sqrt(2) and sqrt(8)
    stats = LayerStats(
        "tanh", [constant_per_unit, varying], [constant_per_unit, varying], np.ones(2)
    )
    np.testing.assert_allclose(
        stats.post_activation_std(), [0.0, (2**0.5 + 8**0.5) / 2], rtol=1e-6
    )


def test_centred_sigmoid_is_sigmoid_minus_half_and_removes_the_offset_shrinkage():
    from bnlib.experiments.depth_stats import CentredSigmoid

    z = torch.linspace(-8, 8, 33, dtype=torch.float64)
    torch.testing.assert_close(CentredSigmoid()(z), torch.sigmoid(z) - 0.5, rtol=0, atol=0)
    torch.testing.assert_close(CentredSigmoid()(z), torch.tanh(z / 2) / 2)
    centred = depth_stats("centred_sigmoid", "none", init="auto", split=SPLIT)
    plain = depth_stats("sigmoid", "none", init="auto", split=SPLIT)
    # same initialization draw (same seed), only the nonlinearity's offset differs
    assert centred.activation == "sigmoid"
    for z_c, a_c in zip(centred.pre_activation, centred.post_activation):
        torch.testing.assert_close(a_c, torch.sigmoid(z_c) - 0.5, rtol=0, atol=0)
    torch.testing.assert_close(
        centred.pre_activation[0], plain.pre_activation[0], rtol=0, atol=0
    )  # layer 1 sees the same input
    # Glorot & Bengio: the sigmoid's mean 0.5 is what shrinks the gradient with depth
    assert plain.gradient_ratio < 0.05 and 0.5 < centred.gradient_ratio < 2


def test_geometric_interval_is_the_t_interval_of_the_logs():
    from scipy import stats

    from bnlib.experiments.depth_stats import geometric_interval

    values = np.array([3530.0, 5250.0, 5430.0])
    logs = np.log(values)
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    g = geometric_interval(values)
    assert math.isclose(g.mean, math.exp(logs.mean()), rel_tol=1e-12)
    assert math.isclose(g.low, math.exp(logs.mean() - half), rel_tol=1e-9)
    assert math.isclose(g.high, math.exp(logs.mean() + half), rel_tol=1e-9)
    with pytest.raises(ValueError):
        geometric_interval([1.0, -2.0, 3.0])
