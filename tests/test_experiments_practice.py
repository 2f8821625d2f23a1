"""Evidence behind chapter 4's practical rules: each measurement against theory or torch.nn,
with a control showing the test can fail."""
import pytest
import torch
from torch import nn

import bnlib.torch as bt
from bnlib.experiments import load_digits_split, mlp
from bnlib.experiments.practice import (FrozenStatsBatchNorm, bias_before_bn, companion_effect, compare_placement,
                                        finetune_small_batches, freeze_batch_norm_stats,
                                        mlp_with_placement, running_stats_error,
                                        scale_invariance, train_weight_decay)
from bnlib.torch.precise import batch_norm_layers


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


@pytest.mark.parametrize("norm_cls", [nn.BatchNorm1d, bt.BatchNorm1d])
def test_bias_before_batch_norm_is_cancelled(norm_cls):
    r = bias_before_bn(norm_cls=norm_cls)
    assert r.output_difference < 1e-12 and r.bias_grad_max < 1e-12
    assert r.weight_grad_max > 0.1  # the weight beside it does learn


def test_bias_before_layer_norm_is_not_cancelled():
    # Control: LayerNorm subtracts a mean over features, not over the batch.
    r = bias_before_bn(norm_cls=nn.LayerNorm)
    assert r.output_difference > 1e-3 and r.bias_grad_max > 1e-3


def test_prediction_depends_on_companions_in_train_mode_only():
    torch.manual_seed(0)
    model = mlp(norm="batch")
    pool = torch.rand(50, 64, generator=torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    effect = companion_effect(model, pool[0], pool[1:], num_batches=10)
    assert effect.train_probs.shape == effect.eval_probs.shape == (10, 10)
    assert float(effect.train_probs.std(dim=0).max()) > 1e-3
    torch.testing.assert_close(effect.eval_probs, effect.eval_probs[:1].expand(10, -1),
                               rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(effect.eval_probs[0],
                               torch.softmax(model.eval()(pool[:1]), dim=1)[0].detach())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_placement_networks():
    before, after = mlp_with_placement("before", depth=2), mlp_with_placement("after", depth=2)
    kinds = lambda m: [type(layer).__name__ for layer in m]  # noqa: E731
    assert kinds(before) == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert kinds(after) == ["Linear", "ReLU", "BatchNorm1d"] * 2 + ["Linear"]
    assert before[0].bias is None and after[0].bias is not None
    assert after(torch.randn(4, 64)).shape == (4, 10)
    with pytest.raises(ValueError, match="placement"):
        mlp_with_placement("inside")
    with pytest.raises(ValueError, match="activation"):
        mlp_with_placement("after", activation="gelu")


def test_compare_placement_is_seeded(split):
    a = compare_placement(split, seeds=(0,), steps=20, eval_every=20)
    b = compare_placement(split, seeds=(0,), steps=20, eval_every=20)
    assert set(a) == {"before", "after"} and a["after"][0].steps == [0, 20]
    assert a["before"][0].test_accuracy == b["before"][0].test_accuracy
    assert a["after"][0].test_accuracy[-1] > 0.3


def test_scale_invariance_matches_theory():
    for r in scale_invariance(scales=(0.5, 2.0, 10.0), eps=1e-12):
        assert r.output_difference < 1e-10
        assert r.grad_norm_ratio == pytest.approx(1 / r.scale, rel=1e-9)
        assert r.max_cosine < 1e-10
    # eps breaks the invariance a little, and more for small weights.
    small, large = scale_invariance(scales=(0.1, 10.0), eps=1e-2)
    assert large.output_difference < small.output_difference and small.output_difference > 1e-4


def test_weight_decay_before_batch_norm_raises_the_effective_learning_rate(split):
    runs = {d: train_weight_decay(split, d, steps=100, record_every=20, eval_every=100)
            for d in ("none", "weights", "all")}
    none, weights, all_ = runs["none"], runs["weights"], runs["all"]
    assert none.steps == [0, 20, 40, 60, 80, 100]
    # Without decay the norm can only grow: the gradient is orthogonal to each row.
    assert all(b >= a - 1e-6 for a, b in zip(none.weight_norm, none.weight_norm[1:]))
    assert weights.weight_norm[-1] < 0.97 * weights.weight_norm[0]
    assert weights.effective_lr[-1] > 1.05 * weights.effective_lr[0] > none.effective_lr[-1]
    # Decay on gamma shrinks gamma; decay on weights only leaves it to the gradient.
    assert all_.gamma_norm[-1] < 0.97 < weights.gamma_norm[-1]
    with pytest.raises(ValueError, match="decay_on"):
        train_weight_decay(split, "gamma")


def test_frozen_stats_batch_norm_never_updates_and_still_learns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()),
                          bt.BatchNorm1d(3))
    reference = [m.running_mean.clone() for m in batch_norm_layers(model)]
    freeze_batch_norm_stats(model)
    freeze_batch_norm_stats(model)  # idempotent: no wrapper inside a wrapper
    frozen = [m for m in model.modules() if isinstance(m, FrozenStatsBatchNorm)]
    assert len(frozen) == 2 and not isinstance(frozen[0].bn, FrozenStatsBatchNorm)
    model.train()
    x = torch.randn(2, 4)
    model(x).sum().backward()
    for m, rm in zip(batch_norm_layers(model), reference):
        assert not m.training and int(m.num_batches_tracked) == 0
        assert torch.equal(m.running_mean, rm) and m.weight.grad is not None
    bn = frozen[1].bn
    torch.testing.assert_close(frozen[1](x[:, :3]), bn.eval()(x[:, :3]))


def test_running_stats_error_is_zero_for_population_statistics():
    torch.manual_seed(0)
    model = mlp(depth=1, norm="batch").double()  # one BN: deeper ones see eval-mode inputs
    x = torch.rand(200, 64, dtype=torch.float64)
    for m in batch_norm_layers(model):
        m.momentum = 1.0  # one training pass over all of x stores its exact statistics
    model.train()(x)
    assert running_stats_error(model, x) < 1e-10
    batch_norm_layers(model)[0].running_var.mul_(2)
    assert running_stats_error(model, x) > 0.4
    assert model.training  # mode restored


def test_finetuning_with_batches_of_two(split):
    train_mode, frozen = finetune_small_batches(split, pretrain_steps=150, finetune_steps=50,
                                                eval_every=50)
    assert not train_mode.frozen and frozen.frozen
    assert train_mode.history.test_accuracy[0] == frozen.history.test_accuracy[0] > 0.9
    assert frozen.history.final_test_accuracy > train_mode.history.final_test_accuracy + 0.2
    assert train_mode.stats_error_after > 3 * frozen.stats_error_after
