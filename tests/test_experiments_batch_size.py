"""The batch-size sweep (bnlib.experiments.batch_size): the schedule it promises (same samples,
linearly scaled rates), seeded runs equal to direct training runs, shapes and errors."""
import numpy as np
import pytest
import torch

from bnlib.experiments import accuracy, load_digits_split, mlp, small_cnn, train
from bnlib.experiments.batch_size import batch_size_sweep, scaled_lr, steps_for_epochs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_linear_scaling_rule_and_epoch_budget():
    assert scaled_lr(32) == 0.1 and scaled_lr(64) == 0.2 and scaled_lr(8, 0.4, 16) == 0.2
    assert steps_for_epochs(1258, 2, 1) == 629 and steps_for_epochs(1258, 64, 1) == 19
    assert steps_for_epochs(1258, 64, 0.01) == 1
    with pytest.raises(ValueError, match="batch sizes >= 1"):
        scaled_lr(0)
    with pytest.raises(ValueError, match="epochs > 0"):
        steps_for_epochs(1258, 2, 0)


def test_sweep_shapes_schedule_and_seeds():
    split = load_digits_split()
    kwargs = dict(norms=("batch", "layer"), batch_sizes=(2, 8), seeds=(0, 1), epochs=0.1,
                  base_lr=0.05, momentum=0.9, activation="relu", depth=2)
    sweep = batch_size_sweep(split, **kwargs)
    assert sweep.test_error.shape == (2, 2, 2) and sweep.error("layer").shape == (2, 2)
    assert ((0 <= sweep.test_error) & (sweep.test_error <= 1)).all()
    assert sweep.steps.tolist() == [62, 15]  # 0.1 epoch of 1,258 samples
    np.testing.assert_allclose(sweep.lr, [0.05 * 2 / 32, 0.05 * 8 / 32])
    # Every cell is the run train() gives with that seed.
    torch.manual_seed(1)
    direct = train(mlp(norm="layer", activation="relu", depth=2), split, steps=15,
                   batch_size=8, lr=0.0125, seed=1, momentum=0.9, eval_every=15)
    assert sweep.error("layer")[1, 1] == 1 - direct.final_test_accuracy
    kept = sweep.models[("layer", 8, 1)]
    assert not kept.training and len(sweep.models) == 8
    assert 1 - accuracy(kept, split.x_test, split.y_test) == sweep.error("layer")[1, 1]
    np.testing.assert_array_equal(batch_size_sweep(split, **kwargs).test_error, sweep.test_error)
    # Different seeds give different runs.
    assert not np.array_equal(sweep.test_error[..., 0], sweep.test_error[..., 1])


def test_sweep_runs_the_cnn_on_images():
    split = load_digits_split(images=True)
    sweep = batch_size_sweep(split, norms=("group",), batch_sizes=(4,), seeds=(0,), epochs=0.02,
                             model="cnn", channels=4)
    torch.manual_seed(0)
    direct = train(small_cnn("group", channels=4), split, steps=6, batch_size=4,
                   lr=scaled_lr(4), seed=0, eval_every=6)
    assert sweep.steps.tolist() == [6]
    assert sweep.test_error[0, 0, 0] == 1 - direct.final_test_accuracy


def test_sweep_rejects_unknown_names():
    split = load_digits_split()
    with pytest.raises(ValueError, match="norms"):
        batch_size_sweep(split, norms=("batch", "weight"))
    with pytest.raises(ValueError, match="model"):
        batch_size_sweep(split, model="resnet")
