"""The exercise graders of bnlib.checks: the reference passes, common mistakes fail."""

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from bnlib.checks import check_eval_affine, check_fuse_linear_bn


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


def _scale_shift(bn, eps=True):
    scale = 1.0 / torch.sqrt(bn.running_var + (bn.eps if eps else 0.0))
    if bn.weight is not None:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale
    return scale, shift if bn.bias is None else shift + bn.bias


def test_eval_affine_passes_the_map_and_fails_the_usual_mistakes():
    ok = check_eval_affine(_scale_shift)
    assert ok.passed and ok.evidence.startswith("PASSED")
    # an independent route: the affine map read off the layer itself
    probe = lambda bn: (
        bn(torch.ones(1, 4, dtype=torch.float64))[0]
        - bn(torch.zeros(1, 4, dtype=torch.float64))[0],
        bn(torch.zeros(1, 4, dtype=torch.float64))[0],
    )
    assert check_eval_affine(lambda bn: tuple(t.detach() for t in probe(bn))).passed
    mistakes = {
        "no eps": lambda bn: _scale_shift(bn, eps=False),
        "std instead of 1/std": lambda bn: (1 / _scale_shift(bn)[0], _scale_shift(bn)[1]),
        "shift without beta": lambda bn: (
            _scale_shift(bn)[0],
            -bn.running_mean * _scale_shift(bn)[0],
        ),
        "switches to training": lambda bn: (bn.train(), _scale_shift(bn))[1],
        "wrong shape": lambda bn: (_scale_shift(bn)[0][:, None], _scale_shift(bn)[1][:, None]),
        "raises": lambda bn: (_ for _ in ()).throw(RuntimeError("boom")),
    }
    for name, fn in mistakes.items():
        result = check_eval_affine(fn)
        assert not result.passed and result.evidence.startswith("FAILED"), name
    assert "changed the module" in check_eval_affine(mistakes["switches to training"]).evidence
    assert "raised RuntimeError" in check_eval_affine(mistakes["raises"]).evidence
