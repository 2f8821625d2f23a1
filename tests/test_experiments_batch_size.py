"""The batch-size sweep (bnlib.experiments.batch_size) and the widening learning-rate
search it uses (bnlib.experiments.lr_search): the schedule it promises (same samples per
run), every reported run equal to a direct training run at the chosen rate, each chosen
rate strictly inside its slice, and the answer protocol.run gives on the final slice."""

import numpy as np
import pytest
import torch

import bnlib.torch as bt
from bnlib.experiments import accuracy, load_digits_split, mlp, train
from bnlib.experiments.batch_size import (
    SWEEP_NORMS,
    batch_size_sweep,
    scaled_lr,
    steps_for_epochs,
    sweep_model,
)
from bnlib.experiments.lr_search import CachedArm, nearest_grid_index, run_widening
from bnlib.experiments.protocol import LR_GRID, run
from bnlib.experiments.renorm_schedule import RenormSchedule
from bnlib.experiments.weight_std import WSLinear


# One thread for tiny tensors: the shared fixture of tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_scaling_rule_epoch_budget_and_grid_centre():
    assert scaled_lr(32) == 0.1 and scaled_lr(64) == 0.2 and scaled_lr(8, 0.4, 16) == 0.2
    assert steps_for_epochs(1006, 2, 1) == 503 and steps_for_epochs(1006, 32, 1) == 31
    assert steps_for_epochs(1006, 64, 0.01) == 1
    assert LR_GRID[nearest_grid_index(0.00625)] == 0.01
    assert LR_GRID[nearest_grid_index(0.004)] == pytest.approx(10**-2.5)
    with pytest.raises(ValueError, match="batch sizes >= 1"):
        scaled_lr(0)
    with pytest.raises(ValueError, match="epochs > 0"):
        steps_for_epochs(1006, 2, 0)
    with pytest.raises(ValueError, match="positive"):
        nearest_grid_index(0.0)


def test_sweep_models_are_the_named_normalizations():
    kinds = {n: {type(m).__name__ for m in sweep_model(n, depth=1)} for n in SWEEP_NORMS}
    assert "BatchNorm1d" in kinds["batch"] and "BatchRenorm1d" in kinds["renorm"]
    assert "GroupNorm" in kinds["group"] and "Linear" in kinds["group"]
    assert {"GroupNorm", "WSLinear"} <= kinds["group_ws"] and "LayerNorm" in kinds["layer"]
    with pytest.raises(ValueError, match="norm"):
        sweep_model("weight")


def test_cached_arm_trains_once_and_touches_test_only_when_asked():
    split = load_digits_split()
    arm = CachedArm("bn", lambda: mlp(norm="batch", depth=1), train_kwargs={"eval_every": 5})
    h1, m1 = arm.fit(split, 5, 0.1, 0, test=False)
    assert h1.test_accuracy is None
    h2, m2 = arm.fit(split, 5, 0.1, 0)
    assert h2 is h1 and m2 is m1 and h1.test_accuracy == accuracy(m1, split.x_test, split.y_test)
    assert arm.model(split, 5, 0.1, 0) is m1 and len(arm.runs) == 1


def test_run_widening_equals_protocol_run_on_its_final_slice():
    split = load_digits_split()
    kwargs = {"batch_size": 8, "eval_every": 15, "train_accuracy": False}
    build = lambda: mlp(norm="batch", depth=1, activation="relu")
    # Start far above the optimum: the slice must widen downwards.
    wide = run_widening(
        [CachedArm("bn", build, train_kwargs=kwargs)], split, 15, seeds=(0, 1), start=3.0
    )
    grid = wide.choices["bn"].grid
    assert grid[0] < wide.lrs["bn"] < grid[-1] and len(grid) > 3
    assert grid[-1] == pytest.approx(10.0) and grid == LR_GRID[-len(grid) :]
    ref = run([CachedArm("bn", build, train_kwargs=kwargs)], split, 15, seeds=(0, 1), grid=grid)
    assert ref.lrs == wide.lrs
    assert [h.test_accuracy for h in ref.histories["bn"]] == [
        h.test_accuracy for h in wide.histories["bn"]
    ]
    with pytest.raises(TypeError, match="CachedArm"):
        from bnlib.experiments.protocol import Arm

        run_widening([Arm("bn", build)], split, 5, seeds=(0, 1))


def test_sweep_reports_the_runs_at_each_chosen_rate():
    split = load_digits_split()
    sweep = batch_size_sweep(
        split,
        norms=("batch", "renorm", "group_ws"),
        batch_sizes=(4, 16),
        seeds=(0, 1),
        epochs=0.1,
        activation="relu",
        depth=1,
    )
    assert sweep.steps == {4: 25, 16: 6}  # 0.1 pass over 1,006 samples
    for b in sweep.batch_sizes:
        for norm in sweep.norms:
            choice = sweep.results[b].choices[norm]
            assert choice.grid[0] < sweep.lr(norm, b) < choice.grid[-1]
            err = sweep.error(norm, b)
            accs = [h.test_accuracy for h in sweep.results[b].histories[norm]]
            np.testing.assert_allclose(err.values, [1 - a for a in accs])
            assert err.low <= err.mean <= err.high
    # A reported cell is the run train() gives with that seed, rate and schedule.
    lr = sweep.lr("renorm", 4)
    torch.manual_seed(1)
    net = sweep_model("renorm", activation="relu", depth=1)
    direct = train(
        net,
        split,
        steps=25,
        batch_size=4,
        lr=lr,
        seed=1,
        momentum=0.9,
        eval_every=25,
        train_accuracy=False,
        on_step=RenormSchedule(25),
    )
    assert sweep.error("renorm", 4).values[1] == 1 - direct.final_test_accuracy
    kept = sweep.models("renorm", 4)
    assert len(kept) == 2 and kept[1][1].r_max == 3.0 and kept[1][1].d_max == 5.0
    assert isinstance(kept[1][1], bt.BatchRenorm1d)
    assert isinstance(sweep.models("group_ws", 16)[0][0], WSLinear)


def test_sweep_rejects_unknown_names():
    split = load_digits_split()
    with pytest.raises(ValueError, match="norms"):
        batch_size_sweep(split, norms=("batch", "weight"))
    with pytest.raises(ValueError, match="activation"):
        batch_size_sweep(split, activation="swish")


def test_report_seeds_reuse_the_choice_runs_and_add_seeds_at_the_chosen_rate():
    split = load_digits_split()
    kwargs = dict(norms=("batch",), batch_sizes=(16,), epochs=0.2, activation="relu", depth=1)
    chosen = batch_size_sweep(split, seeds=(0, 1), **kwargs)
    wider = batch_size_sweep(split, seeds=(0, 1), report_seeds=(0, 1, 2), **kwargs)
    assert wider.seeds == (0, 1, 2) and wider.lr("batch", 16) == chosen.lr("batch", 16)
    assert wider.results[16].choices["batch"].grid == chosen.results[16].choices["batch"].grid
    assert wider.error("batch", 16).values[:2] == chosen.error("batch", 16).values
    assert wider.error("batch", 16).n == 3 and len(wider.models("batch", 16)) == 3
