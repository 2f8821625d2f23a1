"""Training-mode-at-inference accuracy and the running-statistics gap, on short runs."""
import pytest
import torch

import bnlib.torch as bt
from bnlib.experiments import accuracy, load_digits_split, mlp, train
from bnlib.experiments.inference import batch_stat_accuracy
from bnlib.torch.precise import batch_norm_layers


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    split = load_digits_split()
    model = mlp(norm="batch")
    train(model, split, steps=150, lr=0.5, eval_every=150)
    return model, split


def test_bn_layers_finds_bnlib_and_torch_layers():
    model = torch.nn.Sequential(bt.BatchNorm1d(3), torch.nn.BatchNorm1d(3), torch.nn.ReLU())
    assert len(batch_norm_layers(model)) == 2


def test_batch_stats_on_a_large_shuffled_batch_are_close_to_eval(trained):
    model, split = trained
    before = model.state_dict()
    eval_acc = accuracy(model, split.x_test, split.y_test)
    full = batch_stat_accuracy(model, split.x_test, split.y_test, batch_size=len(split.y_test))
    assert abs(full - eval_acc) < 0.05
    for k, v in model.state_dict().items():  # the probe is a copy: nothing changed
        assert torch.equal(v, before[k]), k


def test_sorted_small_batches_hurt_batch_statistics(trained):
    model, split = trained
    shuffled = batch_stat_accuracy(model, split.x_test, split.y_test, batch_size=64)
    sorted_ = batch_stat_accuracy(model, split.x_test, split.y_test, 64, sort_by_label=True)
    assert sorted_ < shuffled - 0.2


def test_trailing_single_sample_is_folded_and_batch_of_one_refused(trained):
    model, split = trained
    n = 2 * 8 + 1
    acc = batch_stat_accuracy(model, split.x_test[:n], split.y_test[:n], batch_size=8)
    assert 0.0 <= acc <= 1.0 and acc * n == round(acc * n)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        batch_stat_accuracy(model, split.x_test, split.y_test, batch_size=1)


def test_ema_vs_precise_lags_only_with_small_momentum():
    from bnlib.experiments.inference import ema_vs_precise
    split = load_digits_split()
    results = {}
    for momentum in (1.0, 0.001):
        torch.manual_seed(0)
        results[momentum] = ema_vs_precise(mlp(norm="batch"), split, [20, 40],
                                           momentum=momentum, lr=0.5)
    fast, slow = results[1.0], results[0.001]
    assert fast.steps == slow.steps == [20, 40]
    # training does not depend on momentum, so the precise statistics are identical
    assert fast.precise_accuracy == slow.precise_accuracy
    # momentum 0.001 leaves the running statistics near their initial values: chance level
    assert max(slow.ema_accuracy) < 0.3 < min(slow.precise_accuracy)
