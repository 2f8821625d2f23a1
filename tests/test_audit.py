"""The audit: the naive module fails every check, torch.nn and bnlib.torch pass every one.

The checks are themselves tested: each one must fail on a module that has exactly one
defect and otherwise behaves like ``torch.nn.BatchNorm1d``, so no check passes vacuously.
"""

import pytest
import torch
from torch import nn

import bnlib.torch as bt
from bnlib.audit import (
    CHECKS,
    DEFECTS,
    CheckResult,
    CorrectedBatchNorm1d,
    NaiveBatchNorm1d,
    check_accepts_3d_input,
    grade,
    check_backward_through_eval_after_training,
    check_normalizes_with_biased_variance,
    check_refuses_4d_input,
    check_refuses_batch_of_one,
    check_stats_carry_no_graph,
    check_stats_follow_to,
    check_stats_in_state_dict,
    count_graph_nodes,
    format_audit,
    run_audit,
    torch_channels_last_grad_bug,
)

CORRECT = {
    "torch.nn.BatchNorm1d": nn.BatchNorm1d,
    "bnlib.torch.BatchNorm1d": bt.BatchNorm1d,
    "bnlib.audit.CorrectedBatchNorm1d": CorrectedBatchNorm1d,
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_naive_module_fails_every_check(check):
    result = check(NaiveBatchNorm1d)
    assert isinstance(result, CheckResult) and result.evidence
    assert not result.passed, result.evidence


@pytest.mark.parametrize("module_cls", CORRECT.values(), ids=list(CORRECT))
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_correct_modules_pass_every_check(check, module_cls):
    result = check(module_cls)
    assert result.passed, result.evidence


def test_naive_module_in_2d_training_matches_its_formula():
    # The naive module is wrong in precise ways, not random: it is torch.nn's output rescaled
    # by sqrt((m - 1) / m) (up to eps), and its running statistics equal torch.nn's.
    x = 1.0 + torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    naive, ref = NaiveBatchNorm1d(4, eps=1e-12).double(), nn.BatchNorm1d(4, eps=1e-12).double()
    # .double() skips the naive module's plain-attribute statistics: convert them by hand.
    naive.running_mean, naive.running_var = naive.running_mean.double(), naive.running_var.double()
    with torch.no_grad():
        y, y_ref = naive(x), ref(x)
    torch.testing.assert_close(y, y_ref * (5 / 6) ** 0.5, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(naive.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(naive.running_var, ref.running_var, rtol=1e-12, atol=1e-12)


def test_graph_kept_by_naive_running_stats_grows_linearly():
    bn = NaiveBatchNorm1d(2).double()
    counts = []
    for _ in range(4):
        bn(torch.randn(5, 2, dtype=torch.float64, requires_grad=True))
        counts.append(count_graph_nodes(bn.running_mean))
    steps = [b - a for a, b in zip(counts, counts[1:])]
    assert counts[0] > 0 and len(set(steps)) == 1 and steps[0] > 0
    x = torch.ones(3, requires_grad=True)
    assert count_graph_nodes(x) == 0 and count_graph_nodes((x * 2).sum()) == 3


class _OneDefect(nn.BatchNorm1d):
    """torch.nn.BatchNorm1d with exactly one defect switched on, to test each check."""

    defect = ""

    def __init__(self, num_features):
        super().__init__(num_features)
        if self.defect == "plain_stats":
            rm, rv = self.running_mean, self.running_var
            del self.running_mean, self.running_var
            self.running_mean, self.running_var = rm.double(), rv.double()

    def forward(self, x):
        if self.defect == "unbiased" and self.training:
            n = x.shape[0]
            return super().forward(x) * ((n - 1) / n) ** 0.5
        if self.defect == "graph":  # torch.nn's math, but running stats not detached
            if self.training:
                mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
                n, m = x.shape[0], self.momentum
                self.running_mean = (1 - m) * self.running_mean + m * mean
                self.running_var = (1 - m) * self.running_var + m * var * n / (n - 1)
            else:
                mean, var = self.running_mean, self.running_var
            return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias
        if self.defect == "no_3d" and x.dim() != 2:
            raise RuntimeError("only 2-D input")
        if self.defect == "accept_4d" and x.dim() == 4:
            return x
        if self.defect == "nan_for_one" and self.training and x.shape[0] == 1:
            return torch.full_like(x, float("nan"))
        return super().forward(x)


def _with(defect):
    return type(f"BN_{defect}", (_OneDefect,), {"defect": defect})


@pytest.mark.parametrize(
    "defect, check",
    [
        ("unbiased", check_normalizes_with_biased_variance),
        ("plain_stats", check_stats_in_state_dict),
        ("plain_stats", check_stats_follow_to),
        ("graph", check_stats_carry_no_graph),
        ("graph", check_backward_through_eval_after_training),
        ("no_3d", check_accepts_3d_input),
        ("accept_4d", check_refuses_4d_input),
        ("nan_for_one", check_refuses_batch_of_one),
    ],
)
def test_each_check_catches_its_single_defect(defect, check):
    assert check(_OneDefect).passed  # no defect switched on: passes
    assert not check(_with(defect)).passed


@pytest.mark.parametrize(
    "length, silent", [(1, "no error, output shape (4, 3, 3)"), (3, "no error, max")]
)
def test_naive_module_is_silently_wrong_when_the_length_is_one_or_c(length, silent):
    # The naive module raises a shape error for most lengths, but at L = 1 and L = C its
    # statistics broadcast along the wrong axis: wrong values or shape, and no error.
    result = check_accepts_3d_input(NaiveBatchNorm1d, lengths=(length,))
    assert not result.passed and silent in result.evidence, result.evidence
    assert "L = 1: no error" in check_accepts_3d_input(NaiveBatchNorm1d).evidence
    for module_cls in CORRECT.values():
        assert check_accepts_3d_input(module_cls, lengths=(length,)).passed


def test_naive_module_returns_a_tensor_for_4d_input_whose_last_size_is_c():
    result = check_refuses_4d_input(NaiveBatchNorm1d, shapes=((2, 3, 4, 3),))
    assert not result.passed
    assert result.evidence == "(2, 3, 4, 3): no error; returned a tensor of shape (2, 3, 4, 3)"
    assert "not a clear ValueError" in check_refuses_4d_input(NaiveBatchNorm1d).evidence


def test_3d_check_catches_a_module_wrong_only_at_length_one():
    # A module right for L > 1 but not for L = 1 passes a probe of L = 5 alone, and fails
    # the default probe.
    class WrongAtOne(nn.BatchNorm1d):
        def forward(self, x):
            y = super().forward(x)
            return y * 2 if x.dim() == 3 and x.shape[2] == 1 else y

    assert check_accepts_3d_input(WrongAtOne, lengths=(5,)).passed
    assert not check_accepts_3d_input(WrongAtOne).passed


def test_torch_bug_input_is_channels_last_with_unusual_strides():
    # The bug's input is stored channels-last; only its size-1 dims' strides are unusual.
    # The same memory with torch's own channels-last strides gets the right gradients.
    assert torch.empty(1, 2, 1, 3).contiguous(memory_format=torch.channels_last).stride() == (
        6,
        1,
        6,
        2,
    )
    answers = torch_channels_last_grad_bug()
    right = answers["contiguous_copy"]
    for key in ("input_grad", "weight_grad", "bias_grad"):
        torch.testing.assert_close(answers["usual_strides"][key], right[key])
    assert not torch.allclose(answers["torch"]["bias_grad"], right["bias_grad"], atol=1e-3)


def test_format_audit_table():
    table = format_audit(
        {"naive": run_audit(NaiveBatchNorm1d), "torch.nn": run_audit(nn.BatchNorm1d)}
    )
    lines = table.splitlines()
    assert lines[0].split() == ["check", "naive", "torch.nn"]
    assert len(lines) == 1 + len(CHECKS)
    assert lines[1].split() == ["normalizes_with_biased_variance", "DIFFERS", "PASS"]
    assert all(line.split()[1:] == ["FAIL", "PASS"] for line in lines[2:])


@pytest.mark.parametrize("shape", [(6, 4), (5, 4, 3)])
def test_corrected_module_equals_torch_nn_over_a_train_eval_sequence(shape):
    # float64 so that the tolerance can be tight; three training steps, then evaluation.
    g = torch.Generator().manual_seed(2)
    ours, ref = CorrectedBatchNorm1d(4).double(), nn.BatchNorm1d(4).double()
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    ref.load_state_dict(ours.state_dict())  # strict: the same keys as torch.nn
    for step in range(4):
        if step == 3:
            ours.eval(), ref.eval()
        x = (3 + 2 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = ours(x), ref(x_ref)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        y.backward(dy), y_ref.backward(dy)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for name, buf in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], buf, rtol=1e-12, atol=1e-12)


def test_grade_prints_a_verdict_and_a_hint_per_failed_check(capsys):
    results = grade(NaiveBatchNorm1d)
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"0 of {len(CHECKS)} checks pass"
    assert sum(line.startswith("FAIL") for line in out) == len(CHECKS)
    assert sum(line.strip().startswith("hint:") for line in out) == len(CHECKS)
    assert max(len(line) for line in out) <= 79  # wrapped for a notebook
    assert [r.name for r in results] == list(DEFECTS)
    grade(CorrectedBatchNorm1d)
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{len(CHECKS)} of {len(CHECKS)} checks pass" and "hint" not in "".join(out)
