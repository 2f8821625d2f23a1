"""Float64 experiments (bnlib.experiments.precision): the same data in float64, models
built in the split's dtype, and a float64 run that equals itself across thread counts."""

import dataclasses

import pytest
import torch

from bnlib.experiments import load_digits_split, mlp, train
from bnlib.experiments.precision import cast_like, double_split


def test_double_split_keeps_values_and_labels():
    split = load_digits_split()
    d = double_split(split)
    for name in ("x_train", "x_val", "x_test"):
        assert getattr(d, name).dtype == torch.float64
        assert torch.equal(getattr(d, name), getattr(split, name).double())
    assert torch.equal(d.y_train, split.y_train) and torch.equal(d.y_test, split.y_test)
    no_val = dataclasses.replace(split, x_val=None, y_val=None)
    assert double_split(no_val).x_val is None


def test_cast_like_builds_in_the_split_dtype_and_refuses_integers():
    split = double_split(load_digits_split())
    model = cast_like(lambda: mlp(depth=1, norm="batch"), split)()
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(
        b.dtype == torch.float64 for n, b in model.named_buffers() if "num_batches" not in n
    )
    bad = dataclasses.replace(split, x_train=split.y_train)
    with pytest.raises(ValueError, match="floating-point"):
        cast_like(lambda: mlp(depth=1), bad)


def test_float64_run_does_not_depend_on_the_thread_count():
    split = double_split(load_digits_split())
    losses = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            net = cast_like(lambda: mlp(norm="batch", activation="relu", depth=2), split)()
            h = train(net, split, steps=100, batch_size=60, lr=1.0, eval_every=100)
            losses.append((h.train_loss[-1], h.test_accuracy))
    finally:
        torch.set_num_threads(before)
    assert losses[0][1] == losses[1][1]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-12)
