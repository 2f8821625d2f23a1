"""The exercise graders of bnlib.checks: the reference passes, common mistakes fail."""

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from bnlib.checks import check_fuse_linear_bn


def _by_hand(linear, norm, rows=True):
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    fused = nn.Linear(linear.in_features, linear.out_features).double()
    with torch.no_grad():
        if rows:
            fused.weight.copy_(linear.weight * scale[:, None])
        else:  # the common mistake: scale the columns (inputs), not the rows (outputs)
            fused.weight.copy_(
                linear.weight * scale[: linear.in_features][None, :]
                if linear.in_features <= len(scale)
                else linear.weight
            )
        fused.bias.copy_((linear.bias - norm.running_mean) * scale + norm.bias)
    return fused


def test_reference_and_a_correct_fusion_pass():
    assert check_fuse_linear_bn(fuse_linear_bn_eval).passed
    result = check_fuse_linear_bn(_by_hand)
    assert result.passed and result.value < 1e-12


def test_mistakes_fail_with_evidence():
    cols = check_fuse_linear_bn(lambda l, n: _by_hand(l, n, rows=False))
    assert not cols.passed and cols.value > 1e-3 and "differs" in cols.evidence

    def no_eps(linear, norm):
        fused = _by_hand(linear, norm)
        scale = norm.weight / torch.sqrt(norm.running_var)
        with torch.no_grad():
            fused.weight.copy_(linear.weight * scale[:, None])
        return fused

    assert not check_fuse_linear_bn(no_eps).passed

    def in_place(linear, norm):
        with torch.no_grad():
            linear.weight.mul_(2.0)
        return fuse_linear_bn_eval(linear, norm)

    assert "changed the input modules" in check_fuse_linear_bn(in_place).evidence
    assert "expected an nn.Linear" in check_fuse_linear_bn(lambda l, n: n).evidence

    def broken(linear, norm):
        raise NotImplementedError("write me")

    assert check_fuse_linear_bn(broken).evidence.startswith("raised NotImplementedError")
