"""Weight standardization (bnlib.experiments.weight_std) against its definition written
with torch.nn.functional, autograd's gradcheck and the invariance it promises."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlib.experiments import mlp, small_cnn
from bnlib.experiments.weight_std import (
    WSConv2d,
    WSLinear,
    standardize_weight,
    with_weight_standardization,
)

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def reference(weight, eps):
    # Qiao et al. (2019), eq. (5)-(6): per output unit, over the fan-in, biased variance.
    flat = weight.reshape(weight.shape[0], -1)  # (C_out, fan_in)
    mean = flat.sum(dim=1, keepdim=True) / flat.shape[1]
    var = ((flat - mean) ** 2).sum(dim=1, keepdim=True) / flat.shape[1]
    return ((flat - mean) / torch.sqrt(var + eps)).reshape(weight.shape)


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 3, 3)])
def test_standardize_weight_matches_its_definition(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    torch.testing.assert_close(standardize_weight(w, eps=1e-5), reference(w, 1e-5), **TIGHT)
    std = standardize_weight(w, eps=0.0).reshape(shape[0], -1)
    torch.testing.assert_close(
        std.mean(dim=1), torch.zeros(shape[0], dtype=torch.float64), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        std.var(dim=1, unbiased=False), torch.ones(shape[0], dtype=torch.float64), **TIGHT
    )


def test_standardize_weight_gradient_passes_gradcheck():
    torch.manual_seed(0)
    w = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: standardize_weight(t, eps=1e-3), (w,))


def test_ws_layers_equal_functional_calls_with_standardized_weights():
    torch.manual_seed(0)
    lin = WSLinear(6, 4, dtype=torch.float64)
    x = torch.randn(8, 6, dtype=torch.float64)
    torch.testing.assert_close(lin(x), F.linear(x, reference(lin.weight, 1e-5), lin.bias), **TIGHT)
    conv = WSConv2d(2, 3, 3, padding=1, dtype=torch.float64)
    img = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(
        conv(img), F.conv2d(img, reference(conv.weight, 1e-5), conv.bias, padding=1), **TIGHT
    )


def test_ws_output_ignores_per_unit_scale_and_shift_of_the_weights():
    torch.manual_seed(0)
    lin = WSLinear(6, 4, bias=False, dtype=torch.float64, eps=0.0)
    x = torch.randn(8, 6, dtype=torch.float64)
    before = lin(x)
    with torch.no_grad():
        scale = torch.tensor([0.5, 2.0, 3.0, 10.0], dtype=torch.float64)[:, None]
        lin.weight.mul_(scale).add_(torch.randn(4, 1, dtype=torch.float64))
    torch.testing.assert_close(lin(x), before, rtol=1e-10, atol=1e-10)


def test_with_weight_standardization_keeps_parameters_and_the_classifier():
    torch.manual_seed(0)
    net = mlp(depth=2, norm="group", activation="relu")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with_weight_standardization(net)
    kinds = [type(m).__name__ for m in net if isinstance(m, nn.Linear)]
    assert kinds == ["WSLinear", "WSLinear", "Linear"]
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    x = torch.randn(5, 64)
    h = F.linear(x, reference(net[0].weight, 1e-5))
    torch.testing.assert_close(net[0](x), h, rtol=1e-5, atol=1e-5)
    cnn = with_weight_standardization(small_cnn(norm="group", channels=4))
    assert sum(isinstance(m, WSConv2d) for m in cnn.modules()) == 3
    assert type(cnn[-1]) is nn.Linear
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2 or more dimensions"):
        standardize_weight(torch.randn(5))
    with pytest.raises(ValueError, match="found none"):
        with_weight_standardization(nn.Sequential(nn.ReLU()))
