"""The running-statistics tracker against torch.nn's own buffers, its bias correction
against a direct computation, and the inference-statistics experiment on short runs."""

import copy

import pytest
import torch

import bnlib.torch as bt
from bnlib.experiments import load_digits_split, mlp
from bnlib.experiments.running_stats import (
    RunningStatsTracker,
    inference_stats_during_training,
    with_statistics,
)


def _batches(n=12, shift=3.0):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 4, 2, generator=g) * 2.0 + shift for _ in range(n)]


@pytest.mark.parametrize("cls", [torch.nn.BatchNorm1d, bt.BatchNorm1d], ids=["torch", "bnlib"])
def test_plain_estimate_equals_the_layers_own_running_statistics(cls):
    for momentum in (0.1, 0.3):
        layer = cls(4, momentum=momentum)
        tracker = RunningStatsTracker(layer, momenta=(momentum, 0.01))
        for xb in _batches():
            layer(xb)
        ((mean, var),) = tracker.statistics(momentum, corrected=False)
        torch.testing.assert_close(mean.float(), layer.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var.float(), layer.running_var, rtol=1e-5, atol=1e-6)


def test_corrected_estimate_is_the_normalized_weighted_average_of_batch_statistics():
    layer = torch.nn.BatchNorm1d(4)
    momentum = 0.05
    tracker = RunningStatsTracker(layer, momenta=(momentum,))
    batches = _batches()
    for xb in batches:
        layer(xb)
    t = len(batches)
    weights = torch.tensor(
        [(1 - momentum) ** (t - k) for k in range(1, t + 1)], dtype=torch.float64
    )
    weights = weights / weights.sum()
    x64 = [b.double().transpose(0, 1).reshape(4, -1) for b in batches]
    mean_ref = sum(w * x.mean(dim=1) for w, x in zip(weights, x64))
    var_ref = sum(w * x.var(dim=1) for w, x in zip(weights, x64))
    ((mean, var),) = tracker.statistics(momentum, corrected=True)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, var_ref, rtol=1e-12, atol=1e-12)
    # the plain estimate is pulled towards torch's initial values (mean 0, variance 1)
    ((plain_mean, _),) = tracker.statistics(momentum, corrected=False)
    assert torch.all(plain_mean < 0.6 * mean)


def test_before_any_step_the_estimates_are_torchs_initial_values_and_copies_are_ignored():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
    tracker = RunningStatsTracker(model, momenta=(0.1,))
    ((mean, var),) = tracker.statistics(0.1, corrected=False)
    assert torch.equal(mean, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(var, torch.ones(4, dtype=torch.float64))
    copy.deepcopy(model).train()(torch.randn(10, 8))  # a copy's pass is not recorded
    model.eval()(torch.randn(10, 8))  # nor an evaluation pass
    assert tracker.updates == [0]
    tracker.remove()
    model.train()(torch.randn(10, 8))
    assert tracker.updates == [0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="momenta in"):
        RunningStatsTracker(torch.nn.BatchNorm1d(2), momenta=(0.0,))
    with pytest.raises(ValueError, match="at least one batch-norm layer"):
        RunningStatsTracker(torch.nn.Linear(2, 2))
    tracker = RunningStatsTracker(torch.nn.BatchNorm1d(2), momenta=(0.1,))
    with pytest.raises(ValueError, match="tracked momenta"):
        tracker.statistics(0.2, corrected=True)
    with pytest.raises(ValueError, match="statistics for 1 layers"):
        with_statistics(torch.nn.BatchNorm1d(2), [])


def test_with_statistics_sets_a_copys_buffers_only():
    layer = torch.nn.BatchNorm1d(2)
    stats = [
        (
            torch.tensor([1.0, 2.0], dtype=torch.float64),
            torch.tensor([3.0, 4.0], dtype=torch.float64),
        )
    ]
    out = with_statistics(layer, stats)
    assert out.running_mean.tolist() == [1.0, 2.0] and out.running_var.tolist() == [3.0, 4.0]
    assert layer.running_mean.tolist() == [0.0, 0.0]


def test_small_momentum_loses_accuracy_to_initialization_bias_and_correction_recovers_it():
    split = load_digits_split()
    torch.manual_seed(0)
    curves = inference_stats_during_training(
        mlp(norm="batch"), split, [20, 40], momenta=(1.0, 0.001), lr=1.0
    )
    acc = curves.accuracy
    assert curves.steps == [20, 40]
    # momentum 1 keeps only the last batch: plain and corrected coincide
    assert acc[("ema", 1.0)] == acc[("corrected", 1.0)]
    # momentum 0.001 leaves the plain average near mean 0 / variance 1: far below the
    # precise statistics at every checkpoint (0.38 against 0.63, 0.47 against 0.87)
    for e, p in zip(acc[("ema", 0.001)], acc[("precise", None)]):
        assert e < p - 0.2
    # the bias-corrected average has no initial value to forget
    for c, p in zip(acc[("corrected", 0.001)], acc[("precise", None)]):
        assert abs(c - p) < 0.1
    with pytest.raises(ValueError, match="checkpoints >= 1"):
        inference_stats_during_training(mlp(norm="batch"), split, [0])
