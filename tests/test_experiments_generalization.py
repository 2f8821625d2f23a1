"""Experiment 6 and the CNN comparison: the gap measurement against a direct computation,
seeded and reproducible runs, and BatchNorm2d training the small CNN faster on the digits."""
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlib.experiments import load_digits_split, small_cnn, train
from bnlib.experiments.generalization import measure_gap, mean_std, run_cnn_seeds, stack


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Small convolutions run faster on one thread, and the result is then thread-count stable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split():
    return load_digits_split(images=True)


@pytest.fixture(scope="module")
def short_runs(split):
    return run_cnn_seeds(split, seeds=(0, 1), steps=100, eval_every=50)


def test_measure_gap_equals_a_direct_eval_mode_computation(split):
    torch.manual_seed(0)
    model = small_cnn("batch", channels=4)
    train(model, split, steps=20, eval_every=20)
    model.train()
    gap = measure_gap(model, split)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits_train, logits_test = model(split.x_train), model(split.x_test)
    acc_train = (logits_train.argmax(1) == split.y_train).double().mean().item()
    acc_test = (logits_test.argmax(1) == split.y_test).double().mean().item()
    assert gap.train_accuracy == pytest.approx(acc_train, abs=1e-12)
    assert gap.test_accuracy == pytest.approx(acc_test, abs=1e-12)
    assert gap.train_loss == pytest.approx(F.cross_entropy(logits_train, split.y_train).item(), rel=1e-6)
    assert gap.test_loss == pytest.approx(F.cross_entropy(logits_test, split.y_test).item(), rel=1e-6)
    assert gap.accuracy_gap == pytest.approx(acc_train - acc_test, abs=1e-12)
    assert gap.loss_gap == pytest.approx(gap.test_loss - gap.train_loss, abs=1e-12)


def test_runs_are_seeded_and_reproducible(split, short_runs):
    assert sorted(short_runs) == ["batch", "none"]
    a, b = short_runs["batch"]
    assert (a.seed, b.seed) == (0, 1) and a.history.steps == [0, 50, 100]
    assert a.history.test_accuracy != b.history.test_accuracy  # seeds differ
    again = run_cnn_seeds(split, norms=("batch",), seeds=(0,), steps=100, eval_every=50)
    assert again["batch"][0].history.test_accuracy == a.history.test_accuracy
    assert again["batch"][0].gap == a.gap
    # the final evaluation of the history and the gap are the same eval-mode numbers
    assert a.gap.test_accuracy == a.history.test_accuracy[-1]
    assert a.gap.train_accuracy == a.history.train_accuracy[-1]


def test_batch_norm_cnn_learns_faster_than_the_plain_cnn(short_runs):
    # Short budget, same seeds and learning rate: BN well above chance, and above the plain net.
    for bn, plain in zip(short_runs["batch"], short_runs["none"]):
        assert bn.history.test_accuracy[-1] > 0.6
        assert bn.history.test_accuracy[-1] > plain.history.test_accuracy[-1] + 0.1
        assert bn.history.test_accuracy[0] < 0.2  # chance level before training


def test_stack_shapes_and_checks(short_runs):
    steps, values = stack(short_runs["batch"])
    assert steps.tolist() == [0, 50, 100] and values.shape == (2, 3)
    assert values[1].tolist() == short_runs["batch"][1].history.test_accuracy
    assert stack(short_runs["none"], "train_accuracy")[1].shape == (2, 3)
    with pytest.raises(ValueError, match="metric"):
        stack(short_runs["batch"], "test_loss")
    other = run_cnn_seeds(load_digits_split(images=True), norms=("none",), seeds=(0,),
                          steps=10, eval_every=5)["none"]
    with pytest.raises(ValueError, match="same steps"):
        stack([short_runs["none"][0], *other])


def test_run_cnn_seeds_rejects_bad_input():
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        run_cnn_seeds(load_digits_split(), steps=1)
    with pytest.raises(ValueError, match="at least one seed"):
        run_cnn_seeds(load_digits_split(images=True), seeds=(), steps=1)


def test_mean_std_is_the_sample_standard_deviation():
    values = [0.91, 0.95, 0.97, 0.88]
    mean, std = mean_std(values)
    assert mean == pytest.approx(statistics.fmean(values), abs=1e-15)
    assert std == pytest.approx(statistics.stdev(values), abs=1e-15)
    assert mean_std([0.5]) == (0.5, 0.0)
    assert np.isfinite(mean_std(np.array([1.0, 2.0]))[1])
