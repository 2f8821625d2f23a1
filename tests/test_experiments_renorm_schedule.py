"""Batch Renorm training aids (bnlib.experiments.renorm_schedule): the swap keeps the model
and starts as torch.nn's batch norm; the schedule follows its formula inside train()."""

import pytest
import torch
from torch import nn

import bnlib.torch as bt
from bnlib.experiments import load_digits_split, mlp, train
from bnlib.experiments.renorm_schedule import RenormSchedule, with_batch_renorm


def test_swap_keeps_parameters_and_starts_as_torch_batch_norm():
    torch.manual_seed(0)
    net = mlp(depth=2, norm="batch", activation="relu").double()
    ref = mlp(depth=2, norm="batch", activation="relu").double()
    ref.load_state_dict(net.state_dict())
    ref_nn = nn.Sequential(
        *[
            nn.BatchNorm1d(m.num_features).double() if isinstance(m, bt.BatchNorm1d) else m
            for m in ref
        ]
    )
    ref_nn.load_state_dict(net.state_dict())
    with_batch_renorm(net)
    assert sum(isinstance(m, bt.BatchRenorm1d) for m in net) == 2
    x = torch.randn(16, 64, dtype=torch.float64)
    torch.testing.assert_close(net(x), ref_nn(x), rtol=1e-12, atol=1e-12)  # r = 1, d = 0
    torch.testing.assert_close(net[1].running_var, ref_nn[1].running_var, rtol=1e-12, atol=1e-12)


def test_swap_handles_2d_and_refuses_models_without_batch_norm():
    net = with_batch_renorm(nn.Sequential(nn.Conv2d(1, 3, 3), bt.BatchNorm2d(3)), 2.0, 1.0)
    assert isinstance(net[1], bt.BatchRenorm2d) and (net[1].r_max, net[1].d_max) == (2.0, 1.0)
    with pytest.raises(ValueError, match="found none"):
        with_batch_renorm(nn.Sequential(nn.Linear(2, 2)))


def test_schedule_bounds_follow_the_formula():
    s = RenormSchedule(steps=200, r_max=3.0, d_max=5.0, warmup=0.1, ramp_end=0.5)
    assert s.bounds(0) == (1.0, 0.0) and s.bounds(20) == (1.0, 0.0)
    assert s.bounds(60) == pytest.approx((2.0, 2.5))  # half-way up the ramp
    assert s.bounds(100) == (3.0, 5.0) and s.bounds(200) == (3.0, 5.0)
    for bad in (
        {"steps": 0},
        {"steps": 10, "r_max": 0.5},
        {"steps": 10, "d_max": -1},
        {"steps": 10, "warmup": 0.6, "ramp_end": 0.5},
    ):
        with pytest.raises(ValueError, match="expected"):
            RenormSchedule(**bad)


def test_schedule_inside_train_sets_the_bounds_each_step():
    torch.set_num_threads(1)
    split = load_digits_split()
    torch.manual_seed(0)
    net = with_batch_renorm(mlp(depth=1, norm="batch", activation="relu"))
    schedule = RenormSchedule(steps=20)
    seen = []

    def on_step(step, model):
        schedule(step, model)
        seen.append((model[1].r_max, model[1].d_max))

    train(net, split, steps=20, batch_size=8, lr=0.01, eval_every=20, on_step=on_step)
    assert seen[0] == (1.0, 0.0) and seen[-1] == (3.0, 5.0)
    assert seen[5] == pytest.approx(schedule.bounds(6))
