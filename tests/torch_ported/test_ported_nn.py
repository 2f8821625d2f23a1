"""Normalization tests of torch 2.13's test/test_nn.py (TestNNDeviceType, CPU), run on
``torch.nn`` and on ``bnlib.torch``: the same inputs and assertions; the two *_numeric
tests use smaller shapes than torch's ([256, 256, 144] would take seconds per run on CI's 2
cores) with the same reference and tolerance.

Not ported: _test_InstanceNorm_general / _test_LayerNorm_general / _test_GroupNorm_general
(long helpers; their cases are covered by test_ported_modules and tests/fuzz.py), and all
CUDA-only tests (cuDNN, half on CUDA).
"""

import numpy as np
import pytest
import torch
from torch import nn

F64 = torch.float64


def test_batchnorm_raises_error_if_less_than_one_value_per_channel(impl):
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError):
        impl.nn.BatchNorm1d(10)(x)


@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_batchnorm_raises_error_if_running_stat_is_not_same_size_as_input(impl, which):
    input = torch.rand(2, 10)
    other = torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            if which == "running_mean":
                impl.F.batch_norm(input, torch.rand(size), other)
            else:
                impl.F.batch_norm(input, other, torch.rand(size))


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_batchnorm_raises_error_if_param_is_not_same_size_as_input(impl, which):
    input = torch.rand(2, 10)
    running_mean, running_var = torch.rand(10), torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            impl.F.batch_norm(
                input, running_mean, running_var, **{which: nn.Parameter(torch.rand(size))}
            )


def test_instancenorm_raises_error_if_less_than_one_value_per_channel(impl):
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError):
        impl.nn.InstanceNorm1d(10)(x)


def test_instancenorm_raises_error_for_single_spatial_element_during_training(impl):
    for i, name in enumerate(["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]):
        norm = getattr(impl.nn, name, None)
        assert norm is not None, f"{impl.name} has no {name}"
        m = norm(3, track_running_stats=True)
        input = torch.randn(10, 3, *[1 for _ in range(i + 1)])
        with pytest.raises(ValueError):
            m(input)
        m.eval()  # a single spatial element is fine in eval
        m(input)


def test_GroupNorm_raises_error_if_one_value_per_group(impl):
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError):
        impl.nn.GroupNorm(10, 10)(x)


def _test_module_empty_input(module, inp, check_size=True):
    """test_nn's helper: an empty input gives an empty output and zero gradients."""
    inp.requires_grad_(True)
    out = module(inp)
    out.backward(torch.rand_like(out))
    if check_size:
        assert out.size() == inp.size()
    for p in module.parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, torch.zeros_like(p.grad))
    torch.testing.assert_close(inp.grad, torch.zeros_like(inp))


def test_GroupNorm_empty(impl):
    _test_module_empty_input(impl.nn.GroupNorm(2, 4), torch.randn(0, 4, 2, 2))


@pytest.mark.parametrize(
    "name,shape",
    [("BatchNorm1d", (0, 5, 9)), ("BatchNorm2d", (0, 5, 2, 2)), ("BatchNorm3d", (0, 5, 2, 2, 2))],
)
def test_BatchNorm_empty(impl, name, shape):
    """test_nn's test_batchnorm_empty pattern (_test_module_empty_input on BatchNorm)."""
    _test_module_empty_input(getattr(impl.nn, name)(5), torch.randn(shape))


def test_LayerNorm_numeric(impl):
    def layer_norm_ref(X, gamma, beta, normalized_shape, eps):
        feature_size = np.prod(normalized_shape)
        X_view = X.view(-1, feature_size)
        mean = X_view.mean(dim=-1, keepdim=True)
        var = X_view.var(dim=-1, unbiased=False, keepdim=True)
        Y = (X_view - mean) / torch.sqrt(var + eps)
        Y = Y * gamma.view(-1) + beta.view(-1)
        return Y.view(*X.size())

    torch.manual_seed(0)
    normalized_shape = [32, 32, 18]  # torch: [256, 256, 144]
    layer_norm = impl.nn.LayerNorm(normalized_shape).float()
    X = torch.rand(2, *normalized_shape, dtype=torch.float32)
    Y = layer_norm(X)
    Y_ref = layer_norm_ref(
        X, layer_norm.weight.data, layer_norm.bias.data, normalized_shape, layer_norm.eps
    )
    torch.testing.assert_close(Y, Y_ref, rtol=0, atol=1e-5)


def test_GroupNorm_numeric(impl):
    def group_norm_ref(X, gamma, beta, groups, channels, eps):
        batch_size = X.size()[0]
        X_view = X.view(batch_size, groups, -1)
        mean = X_view.mean(dim=-1, keepdim=True)
        var = X_view.var(dim=-1, unbiased=False, keepdim=True)
        Y = ((X_view - mean) / torch.sqrt(var + eps)).view(batch_size, channels, -1)
        Y = Y * gamma.view(channels, 1) + beta.view(channels, 1)
        return Y.view(*X.size())

    torch.manual_seed(0)
    groups, channels = 2, 8
    group_norm = impl.nn.GroupNorm(groups, channels).float()
    X = torch.rand(1, channels, 32, 32, 9, dtype=torch.float32)  # torch: 256, 256, 72
    Y = group_norm(X)
    Y_ref = group_norm_ref(
        X, group_norm.weight.data, group_norm.bias.data, groups, channels, group_norm.eps
    )
    torch.testing.assert_close(Y, Y_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batchnorm_nonaffine_half_input_keeps_input_type(impl, dtype):
    """test_batchnorm_nonaffine_cuda_half_input, on the CPU (torch 2.13 supports it there):
    float32 running statistics, output in the input's dtype, train and eval."""
    input = torch.randn(16, 3, 24, 24, dtype=dtype)
    m = impl.nn.BatchNorm2d(3, affine=False).float()
    assert m(input).dtype == dtype
    m.eval()
    assert m(input).dtype == dtype
