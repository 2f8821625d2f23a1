"""Rule 1 of chapter 4: a bias before batch norm is cancelled; LayerNorm is the control."""

import pytest
from torch import nn

import bnlib.torch as bt
from bnlib.experiments.bias_before_bn import bias_before_bn


@pytest.mark.parametrize("norm_cls", [nn.BatchNorm1d, bt.BatchNorm1d])
def test_bias_before_batch_norm_is_cancelled(norm_cls):
    r = bias_before_bn(norm_cls=norm_cls)
    assert r.output_difference < 1e-12 and r.bias_grad_max < 1e-12
    assert r.weight_grad_max > 0.1  # the weight beside it does learn


def test_bias_before_layer_norm_is_not_cancelled():
    # Control: LayerNorm subtracts a mean over features, not over the batch.
    r = bias_before_bn(norm_cls=nn.LayerNorm)
    assert r.output_difference > 1e-3 and r.bias_grad_max > 1e-3
