"""The experiment infrastructure: data, models and the training loop, on short runs."""
import pytest
import torch

from bnlib.experiments import accuracy, batches, load_digits_split, make_norm, mlp, small_cnn, train


def test_digits_split_is_seeded_disjoint_and_complete():
    a, b = load_digits_split(seed=0), load_digits_split(seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert len(a.x_train) + len(a.x_test) == 1797 and a.num_features == 64
    assert a.x_train.dtype == torch.float32 and 0 <= a.x_train.min() and a.x_train.max() <= 1
    c = load_digits_split(seed=1)
    assert not torch.equal(a.y_test, c.y_test)
    images = load_digits_split(images=True)
    assert images.x_train.shape[1:] == (1, 8, 8)
    std = load_digits_split(scale="standard")
    assert abs(float(std.x_train.mean())) < 1e-3
    with pytest.raises(ValueError, match="scale"):
        load_digits_split(scale="minmax")


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
    assert h.test_accuracy[-1] > 0.5 > h.test_accuracy[0]
    assert runs[0].test_accuracy == runs[1].test_accuracy
    assert h.steps_to(0.5) in (30, 60) and h.steps_to(1.01) is None


def test_divergence_is_detected():
    torch.manual_seed(0)
    model = mlp(activation="relu", depth=3)
    h = train(model, load_digits_split(), steps=50, lr=1e4, eval_every=10)
    assert h.diverged and h.final_test_accuracy == 0.0


def test_accuracy_in_eval_mode_does_not_depend_on_chunking():
    torch.manual_seed(0)
    split = load_digits_split()
    model = mlp(norm="batch")
    train(model, split, steps=20, eval_every=20)
    assert model.training
    full = accuracy(model, split.x_test, split.y_test)
    assert accuracy(model, split.x_test, split.y_test, batch_size=1) == full
    assert model.training
