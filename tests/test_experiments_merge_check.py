"""Chapter 7c's exercise grader (bnlib.experiments.merge_check): passes Chan et al.'s merge,
fails each plausible mistake (also the exact but cancelling route through sums of squares)
with a message that says what is wrong."""

import pytest
import torch

import bnlib.torch as bt
from bnlib.experiments.merge_check import check_merge_moments, label_sorted_batches
from bnlib.torch._stats import merge_moments

pytestmark = pytest.mark.usefixtures("one_thread")


def chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n


def test_references_pass():
    for fn in (chan, merge_moments):
        result = check_merge_moments(fn)
        assert result.passed and result.value < 1e-9, result.evidence
        assert "matches" in result.evidence and len(result.evidence) <= 79


def test_label_sorted_batches_give_recompute_bn_stats_the_pooled_statistics():
    model, batches = label_sorted_batches()
    assert sum(len(b) for b in batches) == 1006 and len(batches[-1]) == 2
    with torch.no_grad():
        h = torch.cat([model[0](b) for b in batches])
    bt.recompute_bn_stats(model, batches)
    torch.testing.assert_close(model[1].running_mean, h.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, h.var(0), rtol=1e-12, atol=0.0)
    # sorted batches: the average of per-batch variances is far from the pooled one
    per_batch = torch.stack([b.var(0) for b in h.split(4)[:-1]]).mean(0)
    assert (per_batch / h.var(0)).median() < 0.9


def test_common_mistakes_fail():
    def no_delta_term(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
        n = n_a + n_b
        return n, (n_a * mean_a + n_b * mean_b) / n, m2_a + m2_b

    def swapped_weight(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
        n, _, m2 = chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
        return n, mean_a + (mean_b - mean_a) * n_a / n, m2

    def average_of_batches(n_a, mean_a, m2_a, n_b, mean_b, m2_b):  # update_bn's view
        return n_a + n_b, (mean_a + mean_b) / 2, m2_a + m2_b

    def sums_of_squares(n_a, mean_a, m2_a, n_b, mean_b, m2_b):  # exact, but cancels
        n = n_a + n_b
        s1 = n_a * mean_a + n_b * mean_b
        s2 = m2_a + n_a * mean_a**2 + m2_b + n_b * mean_b**2
        return n, s1 / n, s2 - s1**2 / n

    for fn in (no_delta_term, swapped_weight, average_of_batches):
        result = check_merge_moments(fn)
        assert not result.passed and "differs" in result.evidence, fn.__name__
    result = check_merge_moments(sums_of_squares)
    assert not result.passed and "mean 1e5" in result.evidence
    assert "delta" in result.evidence

    def wrong_shape(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
        return n_a + n_b, mean_a

    assert "shape" in check_merge_moments(wrong_shape).evidence

    def crashes(*args):
        raise RuntimeError("not written yet")

    assert "raised RuntimeError" in check_merge_moments(crashes).evidence
