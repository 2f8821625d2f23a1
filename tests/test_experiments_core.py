"""The experiment infrastructure: data, models and the training loop, on short runs."""

import pytest
import torch

from bnlib.experiments import (
    accuracy,
    batches,
    load_digits_split,
    make_norm,
    mlp,
    small_cnn,
    train,
)


def test_digits_split_is_seeded_disjoint_and_complete():
    a, b = load_digits_split(seed=0), load_digits_split(seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797 and a.num_features == 64
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (1006, 252, 539)
    c = load_digits_split(seed=1)
    assert not torch.equal(a.y_test, c.y_test)
    images = load_digits_split(images=True)
    assert images.x_train.shape[1:] == (1, 8, 8) and images.x_val.shape[1:] == (1, 8, 8)
    unit = load_digits_split(scale="unit")
    assert unit.x_train.dtype == torch.float32
    assert 0 <= unit.x_train.min() and unit.x_train.max() <= 1
    with pytest.raises(ValueError, match="scale"):
        load_digits_split(scale="minmax")
    assert load_digits_split(val_fraction=0).x_val is None


def test_standardization_uses_training_statistics_only():
    unit, std = load_digits_split(scale="unit"), load_digits_split()
    x = unit.x_train.double()
    mean, sd = x.mean(0), x.std(0, unbiased=False)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    torch.testing.assert_close(std.x_train.double(), (x - mean) / sd, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        std.x_val.double(), (unit.x_val.double() - mean) / sd, atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        std.x_test.double(), (unit.x_test.double() - mean) / sd, atol=1e-5, rtol=1e-4
    )
    # on the training part each varying pixel has mean 0 and std 1; validation does not
    assert float(std.x_train.mean(0).abs().max()) < 1e-5
    assert float(std.x_val.mean(0).abs().max()) > 1e-2
    # the three parts are disjoint: no validation row is a training or test row
    rows = lambda t: {tuple(r) for r in t.tolist()}  # noqa: E731
    val = rows(unit.x_val)
    assert len(val & rows(unit.x_train)) < 5 and len(val & rows(unit.x_test)) < 5


def test_batches_have_fixed_size_and_cover_an_epoch():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    stream = batches(x, y, 3, torch.Generator().manual_seed(0))
    seen = torch.cat([next(stream)[1] for _ in range(3)])
    assert len(seen) == 9 and len(set(seen.tolist())) == 9
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(x, y, 11, torch.Generator()))


def test_models_have_the_norm_asked_for():
    assert sum(isinstance(m, torch.nn.Linear) and m.bias is None for m in mlp(norm="batch")) == 3
    assert all(m.bias is not None for m in mlp(norm="none") if isinstance(m, torch.nn.Linear))
    assert type(make_norm("batch", 4, spatial=True)).__name__ == "BatchNorm2d"
    assert make_norm("none", 4) is None
    assert small_cnn("group")(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="norm"):
        make_norm("weird", 4)


def test_short_training_run_learns_and_is_reproducible():
    split = load_digits_split()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = mlp(norm="batch")
        runs.append(train(model, split, steps=60, lr=0.5, eval_every=30))
    h = runs[0]
    assert h.steps == [0, 30, 60] and not h.diverged
    assert h.val_accuracy[-1] > 0.5 > h.val_accuracy[0]
    assert isinstance(h.test_accuracy, float) and h.test_accuracy > 0.5
    assert runs[0].val_accuracy == runs[1].val_accuracy
    assert runs[0].test_accuracy == runs[1].test_accuracy
    assert h.steps_to(0.5) in (30, 60) and h.steps_to(1.01) is None
    assert h.steps_to(0.5, "train_accuracy") in (30, 60)


def test_divergence_is_detected():
    torch.manual_seed(0)
    model = mlp(activation="relu", depth=3)
    h = train(model, load_digits_split(), steps=50, lr=1e4, eval_every=10)
    assert h.diverged and h.final_test_accuracy == 0.0 and h.final_val_accuracy == 0.0


def test_train_can_leave_test_untouched_and_use_adam():
    torch.manual_seed(0)
    h = train(mlp(), load_digits_split(), steps=10, eval_every=5, test=False)
    assert h.test_accuracy is None
    with pytest.raises(ValueError, match="test"):
        h.final_test_accuracy
    torch.manual_seed(0)
    adam = train(mlp(), load_digits_split(), steps=30, lr=0.01, eval_every=30, optimizer="adam")
    assert adam.val_accuracy[-1] > 0.5
    with pytest.raises(ValueError, match="optimizer"):
        train(mlp(), load_digits_split(), steps=1, optimizer="lbfgs")


def test_accuracy_in_eval_mode_does_not_depend_on_chunking():
    torch.manual_seed(0)
    split = load_digits_split()
    model = mlp(norm="batch")
    train(model, split, steps=20, eval_every=20)
    assert model.training
    full = accuracy(model, split.x_test, split.y_test)
    assert accuracy(model, split.x_test, split.y_test, batch_size=1) == full
    assert model.training
