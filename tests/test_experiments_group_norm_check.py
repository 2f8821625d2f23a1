"""Chapter 7b's exercise grader (bnlib.experiments.group_norm_check): passes torch's and
bnlib's group norm, fails each plausible mistake with a message that says what is wrong."""

import pytest
import torch
from torch import nn

import bnlib.torch as bt
from bnlib.experiments.group_norm_check import CASES, check_group_norm

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(x, num_groups, eps):
    return nn.functional.group_norm(x, num_groups, eps=eps)


def by_hand(x, num_groups, eps):
    n = x.shape[0]
    g = x.reshape(n, num_groups, -1)
    mean = g.mean(dim=-1, keepdim=True)
    var = g.var(dim=-1, unbiased=False, keepdim=True)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)


def test_references_pass():
    for fn in (
        reference,
        by_hand,
        lambda x, g, eps: bt.GroupNorm(g, x.shape[1], eps=eps, affine=False)(x),
    ):
        result = check_group_norm(fn)
        assert result.passed and result.value < 1e-10, result.evidence
        assert "matches" in result.evidence and len(result.evidence) <= 79


def test_cases_cover_layer_and_instance_norm():
    assert any(g == 1 for _, g, _ in CASES) and any(g == s[1] for s, g, _ in CASES)
    assert any(len(s) == 2 for s, _, _ in CASES) and any(s[0] == 1 for s, _, _ in CASES)


def test_common_mistakes_fail():
    def unbiased(x, num_groups, eps):
        g = x.reshape(x.shape[0], num_groups, -1)
        out = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, keepdim=True) + eps)
        return out.reshape(x.shape)

    def interleaved(x, num_groups, eps):  # groups of every G-th channel
        n, c = x.shape[:2]
        g = x.reshape(n, c // num_groups, num_groups, -1).transpose(1, 2)
        g = g.reshape(n, num_groups, -1)
        mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
        out = ((g - mean) / torch.sqrt(var + eps)).reshape(n, num_groups, c // num_groups, -1)
        return out.transpose(1, 2).reshape(x.shape)

    def eps_outside(x, num_groups, eps):
        g = x.reshape(x.shape[0], num_groups, -1)
        std = g.var(-1, unbiased=False, keepdim=True).sqrt()
        return ((g - g.mean(-1, keepdim=True)) / (std + eps)).reshape(x.shape)

    def pools_batch(x, num_groups, eps):  # statistics over the samples too
        g = x.reshape(x.shape[0], num_groups, -1).transpose(0, 1).reshape(num_groups, -1)
        mean = g.mean(-1).view(1, -1, 1)
        var = g.var(-1, unbiased=False).view(1, -1, 1)
        return ((x.reshape(x.shape[0], num_groups, -1) - mean) / torch.sqrt(var + eps)).reshape(
            x.shape
        )

    for fn in (unbiased, interleaved, eps_outside, pools_batch):
        result = check_group_norm(fn)
        assert not result.passed and "differs" in result.evidence, fn.__name__

    def no_reshape_back(x, num_groups, eps):
        g = x.reshape(x.shape[0], num_groups, -1)
        var = g.var(-1, unbiased=False, keepdim=True)
        return (g - g.mean(-1, keepdim=True)) / torch.sqrt(var + eps)

    assert "shape" in check_group_norm(no_reshape_back).evidence

    def in_place(x, num_groups, eps):
        y = by_hand(x, num_groups, eps)
        x.copy_(y)
        return y

    assert "in place" in check_group_norm(in_place).evidence

    def crashes(*args):
        raise RuntimeError("not written yet")

    assert "raised RuntimeError" in check_group_norm(crashes).evidence
