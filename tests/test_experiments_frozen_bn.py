"""FrozenBN and the running-statistics error metric of chapter 4."""

import torch
from torch import nn

import bnlib.torch as bt
from bnlib.experiments import mlp
from bnlib.experiments.frozen_bn import FrozenStatsBatchNorm, freeze_batch_norm_stats
from bnlib.experiments.stats_error import running_stats_error
from bnlib.torch.precise import batch_norm_layers


def test_frozen_stats_batch_norm_never_updates_and_still_learns():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 3), nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()), bt.BatchNorm1d(3)
    )
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
