"""The learning-rate sweep (bnlib.experiments.lr_sweep): divergence flag, the usable rule and
its grader, stable range, and a short sweep whose cells equal independent training runs."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bnlib.experiments import History, load_digits_split, mlp, train  # noqa: E402
from bnlib.experiments.lr_sweep import (  # noqa: E402
    SweepResult,
    check_usable,
    is_diverged,
    is_usable,
    lr_sweep,
    stable_range,
)
from bnlib.plotting import plot_lr_sweep  # noqa: E402

SPLIT = load_digits_split()


def test_is_diverged_flags_non_finite_and_worse_than_uniform_losses():
    uniform = math.log(10)
    assert is_diverged(History(train_loss=[2.3, 1.1 * uniform + 1e-6]))
    assert not is_diverged(History(train_loss=[2.3, 1.1 * uniform - 1e-6]))  # stuck, not diverged
    assert is_diverged(History(train_loss=[2.3, float("inf")]))
    assert is_diverged(History(train_loss=[2.3], diverged=True))
    assert is_diverged(History(train_loss=[1.0, 1.5]), num_classes=2, tolerance=0.5)


def _runs(losses, accuracies, diverged=(False, False, False)):
    return [
        History(train_loss=[float("nan"), loss], val_accuracy=[0.1, acc], diverged=d)
        for loss, acc, d in zip(losses, accuracies, diverged)
    ]


def test_is_usable_needs_no_diverged_seed_and_the_seed_mean_on_target():
    uniform = math.log(10)
    assert is_usable(_runs([0.3, 0.3, 0.3], [0.95, 0.9, 0.86]), 0.9)  # mean 0.903
    assert not is_usable(_runs([0.3, 0.3, 0.3], [0.95, 0.88, 0.86]), 0.9)  # mean 0.897
    stuck = 1.1 * uniform - 1e-6  # stuck near a uniform guess: not diverged
    assert is_usable(_runs([0.3, 0.3, stuck], [0.99, 0.99, 0.1]), 0.6)
    wrong = 1.1 * uniform + 1e-6
    assert not is_usable(_runs([0.3, 0.3, wrong], [0.99, 0.99, 0.99]), 0.5)
    stopped = _runs([0.3, 0.3, 0.3], [0.99, 0.99, 0.99], (False, False, True))
    assert not is_usable(stopped, 0.5)  # the loss became non-finite and training stopped
    with pytest.raises(ValueError, match="at least one run"):
        is_usable([], 0.5)


def _wrong_rules():
    """Plausible wrong implementations of the rule; the grader must fail each one."""
    uniform = math.log(10)

    def accuracy_only(runs, target):
        return np.mean([h.val_accuracy[-1] for h in runs]) >= target

    def no_margin(runs, target):
        if any(h.diverged or not h.train_loss[-1] <= uniform for h in runs):
            return False
        return accuracy_only(runs, target)

    def ignores_stopped(runs, target):
        if any(not h.train_loss[-1] <= 1.1 * uniform for h in runs):
            return False
        return accuracy_only(runs, target)

    def best_accuracy(runs, target):
        if any(is_diverged(h) for h in runs):
            return False
        return np.mean([max(h.val_accuracy) for h in runs]) >= target

    def every_seed(runs, target):
        return not any(map(is_diverged, runs)) and min(h.val_accuracy[-1] for h in runs) >= target

    def any_nan(runs, target):  # step 0's loss is NaN in every run
        if any(h.diverged or not np.isfinite(h.train_loss).all() for h in runs):
            return False
        return accuracy_only(runs, target)

    def crashes(runs, target):
        raise KeyError("val")

    return [accuracy_only, no_margin, ignores_stopped, best_accuracy, every_seed, any_nan, crashes]


def test_check_usable_passes_the_rule_and_fails_each_wrong_one():
    assert check_usable(is_usable).passed
    assert check_usable(is_usable).value == 0

    def written_out(runs, target):  # the chapter's solution, independent of bnlib
        def diverged(h):
            last = h.train_loss[-1]
            return h.diverged or not math.isfinite(last) or last > 1.1 * math.log(10)

        return (
            not any(map(diverged, runs)) and np.mean([h.val_accuracy[-1] for h in runs]) >= target
        )

    assert check_usable(written_out).passed
    for rule in _wrong_rules():
        result = check_usable(rule)
        assert not result.passed, rule.__name__
        assert result.evidence.startswith("FAILED"), rule.__name__
        assert result.value >= 1, rule.__name__
    assert "raised KeyError" in check_usable(_wrong_rules()[-1]).evidence


def test_stable_range_is_the_longest_contiguous_stretch():
    lrs = np.array([0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    assert stable_range(lrs, np.array([1, 0, 1, 1, 1, 0], bool)) == (1.0, 100.0)
    assert stable_range(lrs, np.array([1, 1, 0, 1, 1, 0], bool)) == (0.01, 0.1)  # tie: lower
    assert stable_range(lrs, np.array([0, 0, 0, 0, 0, 1], bool)) == (1000.0, 1000.0)
    assert stable_range(lrs, np.zeros(6, bool)) is None


def test_usable_needs_the_seed_mean_on_target_and_no_seed_diverged():
    acc = np.array([[0.95, 0.86], [0.95, 0.84], [0.95, 0.95]])  # means 0.905, 0.895, 0.95
    div = np.array([[False, False], [False, False], [True, False]])
    result = SweepResult(
        np.array([0.1, 1.0, 10.0]),
        (0, 1),
        10,
        {"batch": acc},
        {"batch": np.zeros((3, 2))},
        {"batch": div},
    )
    assert result.stable("batch").tolist() == [True, True, False]
    assert result.usable("batch", 0.9).tolist() == [True, False, False]
    assert result.usable_range("batch", 0.9) == (0.1, 0.1)
    assert result.usable_range("batch", 0.99) is None


def test_short_sweep_cells_equal_independent_runs_and_flag_divergence():
    result = lr_sweep([300.0, 0.3], seeds=(0, 1), steps=60, eval_every=20, split=SPLIT)
    np.testing.assert_array_equal(result.lrs, [0.3, 300.0])  # sorted
    assert result.final_test_accuracy["batch"].shape == (2, 2)
    # Reference: the same cell trained directly.
    torch.manual_seed(1)
    h = train(mlp(norm="batch"), SPLIT, steps=60, lr=0.3, seed=1, eval_every=20)
    assert result.final_test_accuracy["batch"][0, 1] == h.test_accuracy
    assert result.final_train_loss["batch"][0, 1] == h.train_loss[-1]
    assert result.diverged["none"][1].all() and result.diverged["batch"][1].all()
    assert not result.diverged["batch"][0].any() and not result.diverged["none"][0].any()
    assert (result.final_test_accuracy["batch"][0] > 0.8).all()
    # with the sigmoid initialization (Xavier, gain 4) the plain network learns at lr 0.3 too
    assert (result.final_test_accuracy["none"][0] > 0.6).all()
    with pytest.raises(ValueError, match="positive"):
        lr_sweep([0.0, 1.0], steps=1, split=SPLIT)


def test_plot_lr_sweep_marks_each_diverged_run():
    acc = np.array([[0.9, 0.92], [0.1, 0.3]])
    div = np.array([[False, False], [True, False]])
    result = SweepResult(
        np.array([0.1, 10.0]),
        (0, 1),
        10,
        {"batch": acc},
        {"batch": np.zeros((2, 2))},
        {"batch": div},
    )
    fig, ax = plt.subplots()
    plot_lr_sweep(result, ax, norms=("batch",), target=0.9)
    assert ax.get_xscale() == "log"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.91, 0.2])
    (crosses,) = ax.collections[1:]  # [0] is the seed band
    np.testing.assert_array_equal(crosses.get_offsets(), [[10.0, 0.1]])
    plt.close(fig)


def test_sweep_append_reads_the_new_rate_like_sweep_from_choice():
    from bnlib.experiments.lr_sweep import sweep_append

    table = {
        "lrs": np.array([0.1, 1.0]),
        "accuracy": np.array([[0.9, 0.92], [0.95, 0.97]]),
        "diverged": np.zeros((2, 2), dtype=bool),
        "usable": np.array([True, True]),
    }
    ok = History(train_loss=[2.3, 0.4], val_accuracy=[0.1, 0.93])
    poor = History(train_loss=[2.3, 1.9], val_accuracy=[0.1, 0.6])
    bad = History(train_loss=[2.3, float("nan")], val_accuracy=[0.1, 0.1])
    grown = sweep_append(table, 3.0, [ok, poor], 0.9)
    assert grown["lrs"].tolist() == [0.1, 1.0, 3.0]
    assert grown["accuracy"][-1].tolist() == [0.93, 0.6]
    assert grown["usable"].tolist() == [True, True, False]  # mean 0.765 < 0.9
    assert sweep_append(table, 3.0, [ok, ok], 0.9)["usable"][-1]
    assert sweep_append(table, 3.0, [ok, bad], 0.5)["diverged"][-1].tolist() == [False, True]
    assert not sweep_append(table, 3.0, [ok, bad], 0.5)["usable"][-1]  # a seed diverged
    assert table["lrs"].tolist() == [0.1, 1.0]  # the input is left alone
    with pytest.raises(ValueError, match="above"):
        sweep_append(table, 1.0, [ok, ok], 0.9)
    with pytest.raises(ValueError, match="one per seed"):
        sweep_append(table, 3.0, [ok], 0.9)
