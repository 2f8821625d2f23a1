"""Training-mode-at-inference accuracy and the companion dependence of training mode."""

import copy

import pytest
import torch

import bnlib.torch as bt
from bnlib.experiments import accuracy, load_digits_split, mlp, train
from bnlib.experiments.inference import batch_stat_accuracy, probe_spread
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
    x, y = split.x_test[:n], split.y_test[:n]
    acc = batch_stat_accuracy(model, x, y, batch_size=8)
    # By hand: chunks of 8 and 9 (the 17th sample joins the second chunk), each normalized
    # by its own statistics, on a copy in training mode.
    probe = copy.deepcopy(model).train()
    with torch.no_grad():
        correct = sum(
            int((probe(xb).argmax(1) == yb).sum()) for xb, yb in ((x[:8], y[:8]), (x[8:], y[8:]))
        )
    assert acc == correct / n
    # A chunk of one alone would make batch norm refuse (more than one value per channel).
    with pytest.raises(ValueError):
        copy.deepcopy(model).train()(x[16:])
    with pytest.raises(ValueError, match="batch_size >= 2"):
        batch_stat_accuracy(model, split.x_test, split.y_test, batch_size=1)


def test_probe_spread_is_zero_in_eval_mode_and_not_in_train_mode():
    torch.manual_seed(0)
    layer = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    pool = torch.randn(500, 3, dtype=torch.float64) * 2 + 1
    for _ in range(20):
        layer(pool[torch.randint(0, 500, (32,))])
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    train_std, eval_std = probe_spread(
        layer, pool, companions=15, draws=50, generator=torch.Generator().manual_seed(0)
    )
    assert eval_std < 1e-12 and train_std > 0.05
    for k, v in layer.state_dict().items():  # probed on a copy
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="companions >= 1"):
        probe_spread(layer, pool, companions=0)
