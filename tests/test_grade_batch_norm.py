"""The chapter 2 and 3 graders accept correct functions and reject plausible wrong ones."""

import numpy as np

from bnlib.grade_batch_norm import check_backward, check_forward
from bnlib.numpy import batch_norm_forward


def _axes(x):
    return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)


def test_forward_grader_accepts_bnlib_and_rejects_the_unbiased_variance_and_wrong_axes():
    assert check_forward(lambda x, g, b, eps: batch_norm_forward(x, g, b, eps)[0]).passed

    def unbiased(x, g, b, eps):
        axes, shape = _axes(x)
        mu, var = x.mean(axis=axes), x.var(axis=axes, ddof=1)
        return (x - mu.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * g.reshape(
            shape
        ) + b.reshape(shape)

    def per_activation(x, g, b, eps):  # statistics over N only, also for images
        _, shape = _axes(x)
        y = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
        return y * g.reshape(shape) + b.reshape(shape)

    for wrong in (unbiased, per_activation):
        result = check_forward(wrong)
        assert not result.passed and "FAILED" in result.evidence
    assert not check_forward(lambda x, g, b, eps: x[:1]).passed  # wrong shape


def test_backward_grader_accepts_the_compact_form_and_rejects_a_missing_term():
    def compact(dy, x_hat, gamma, inv_std, drop=None):
        axes, shape = _axes(dy)
        m = dy.size // dy.shape[1]
        g = dy * gamma.reshape(shape)
        terms = {
            "mean": g.sum(axis=axes).reshape(shape),
            "var": x_hat * (g * x_hat).sum(axis=axes).reshape(shape),
        }
        if drop:
            terms[drop] = 0.0
        return inv_std.reshape(shape) / m * (m * g - terms["mean"] - terms["var"])

    assert check_backward(compact).passed
    for drop in ("mean", "var"):
        result = check_backward(lambda *a, drop=drop: compact(*a, drop=drop))
        assert not result.passed and "relative error" in result.evidence
