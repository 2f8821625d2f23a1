"""Rule 3 of chapter 4: the two placements as networks and as protocol arms."""

import pytest
import torch

from bnlib.experiments import load_digits_split, run
from bnlib.experiments.bn_placement import mlp_with_placement, placement_arms


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


def test_after_placement_is_initialized_for_relu():
    torch.manual_seed(0)
    w = mlp_with_placement("after", hidden=400)[
        3
    ].weight.detach()  # Kaiming normal: var 2 / fan_in
    assert float(w.var()) == pytest.approx(2 / 400, rel=0.05)
    assert float(mlp_with_placement("after")[3].bias.abs().max()) == 0.0
    default = mlp_with_placement("after", hidden=400, init="default")[3].weight.detach()
    assert float(default.var()) == pytest.approx(1 / (3 * 400), rel=0.05)


def test_placement_arms_are_seeded():
    split = load_digits_split()
    a = run(placement_arms(eval_every=20, depth=1), split, 20, seeds=(0, 1), lr=0.1)
    b = run(placement_arms(eval_every=20, depth=1), split, 20, seeds=(0, 1), lr=0.1)
    assert set(a.histories) == {"before", "after"} and a.histories["after"][0].steps == [0, 20]
    assert a.values("before", "test_accuracy") == b.values("before", "test_accuracy")
    assert min(a.values("after", "test_accuracy")) > 0.3


def test_placement_arms_build_in_the_split_dtype():
    from bnlib.experiments.precision import double_split

    split = double_split(load_digits_split())
    for arm in placement_arms(split=split):
        assert {p.dtype for p in arm.build().parameters()} == {torch.float64}
    assert next(placement_arms()[0].build().parameters()).dtype == torch.float32
