"""Ioffe & Szegedy (2015) Figure 1 at CPU scale (bnlib.experiments.ioffe): the hook records
exactly the last sigmoid's input, percentiles are right and ordered, runs are seeded."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bnlib.experiments import batches, load_digits_split, mlp  # noqa: E402
from bnlib.experiments import Arm, ResolutionError, run  # noqa: E402
from bnlib.experiments.ioffe import (
    SigmoidInputRecorder,
    pooled_percentiles,  # noqa: E402
    run_ioffe,
    run_ioffe_seeds,
    steps_to_target,
)
from bnlib.plotting import plot_percentiles  # noqa: E402

SPLIT = load_digits_split(scale="unit")  # the paper's setup: raw-pixel scale


def test_pooled_percentiles_equal_numpy_over_each_window_and_are_ordered():
    values = np.random.default_rng(0).normal(size=(40, 60))
    starts, p = pooled_percentiles(values, window=10)
    assert starts.tolist() == [0, 10, 20, 30] and p.shape == (4, 3)
    for k, start in enumerate(starts):
        expected = np.percentile(values[start : start + 10].ravel(), [15, 50, 85])
        np.testing.assert_allclose(p[k], expected, rtol=0, atol=1e-12)
    assert np.all(np.diff(p, axis=1) > 0)
    with pytest.raises(ValueError, match="window"):
        pooled_percentiles(values, window=7)
    with pytest.raises(ValueError, match="expected 2D"):
        pooled_percentiles(values.ravel())


@pytest.mark.parametrize("norm, feeder", [("none", 5), ("batch", 8)])
def test_hook_records_the_last_sigmoid_input_of_each_training_step(norm, feeder):
    run = run_ioffe(norm, seed=0, steps=40, eval_every=20, unit=3, split=SPLIT)
    assert run.sigmoid_input.shape == (40, 60)  # evaluation passes are not recorded
    assert run.history.steps == [0, 20, 40]
    # Reference: rebuild the same initial model and first batch, run up to the last sigmoid.
    torch.manual_seed(0)
    model = mlp(norm=norm, init="default")
    assert isinstance(model[feeder], torch.nn.Sigmoid)
    x, _ = next(batches(SPLIT.x_train, SPLIT.y_train, 60, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        expected = model[:feeder](x)[:, 3].double().numpy()
    np.testing.assert_allclose(run.sigmoid_input[0], expected, rtol=1e-6, atol=1e-6)


def test_bn_sigmoid_input_starts_at_unit_scale_and_plain_one_does_not():
    bn = run_ioffe("batch", steps=10, eval_every=10, split=SPLIT)
    first = bn.sigmoid_input[0]  # gamma = 1, beta = 0: x_hat itself
    assert abs(first.mean()) < 1e-5 and abs(first.std() - 1) < 1e-3
    plain = run_ioffe("none", steps=10, eval_every=10, split=SPLIT)
    assert plain.sigmoid_input[0].std() < 0.5  # PyTorch's default init shrinks the signal


def test_runs_are_seeded():
    a = run_ioffe("batch", seed=1, steps=30, eval_every=10, split=SPLIT)
    b = run_ioffe("batch", seed=1, steps=30, eval_every=10, split=SPLIT)
    np.testing.assert_array_equal(a.sigmoid_input, b.sigmoid_input)
    assert a.history.test_accuracy == b.history.test_accuracy
    c = run_ioffe("batch", seed=2, steps=30, eval_every=10, split=SPLIT)
    assert not np.array_equal(a.sigmoid_input, c.sigmoid_input)


def test_bn_reaches_the_target_in_fewer_steps_at_the_same_learning_rate():
    runs = run_ioffe_seeds(seeds=(0,), steps=200, lr=3.0, eval_every=1, split=SPLIT)
    (bn_steps,) = steps_to_target(runs["batch"], 0.8)
    (plain_steps,) = steps_to_target(runs["none"], 0.8)
    assert bn_steps is not None and bn_steps <= 100
    assert plain_steps is None  # still near chance after 200 steps (default init)
    assert runs["none"][0].history.test_accuracy < 0.5
    assert steps_to_target(runs["batch"], 1.01) == [None]
    coarse = run_ioffe_seeds(
        norms=("batch",), seeds=(0,), steps=100, lr=3.0, eval_every=50, split=SPLIT
    )
    with pytest.raises(ResolutionError):
        steps_to_target(coarse["batch"], 0.8)


def test_recorder_arm_records_what_run_ioffe_records():
    rec = SigmoidInputRecorder("none", "default", unit=3)
    arm = Arm("plain", rec, train_kwargs={"eval_every": 10})
    r = run([arm], SPLIT, steps=20, seeds=(0, 1), lr=0.5)
    for i, seed in enumerate((0, 1)):
        ref = run_ioffe("none", seed=seed, steps=20, lr=0.5, eval_every=10, unit=3, split=SPLIT)
        np.testing.assert_array_equal(rec.values(i), ref.sigmoid_input)
        assert r.histories["plain"][i].val_accuracy == ref.history.val_accuracy


def test_unit_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="unit"):
        run_ioffe(unit=100, steps=1, split=SPLIT)


def test_plot_percentiles_draws_the_median_and_both_outer_lines():
    steps = np.arange(5.0)
    p = np.stack([steps - 1, steps, steps + 1], axis=1)
    fig, ax = plt.subplots()
    line = plot_percentiles(steps, p, ax, label="demo", color="tab:blue")
    np.testing.assert_array_equal(line.get_ydata(), steps)
    assert sorted(l.get_ydata()[0] for l in ax.lines) == [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="shape"):
        plot_percentiles(steps, p[:, :2], ax, label="bad")
    plt.close(fig)
