"""Rule 4 of chapter 4: scale invariance against theory, weight decay as hooks against
torch.optim.SGD's weight_decay, and the effective learning rate it raises."""

import pytest
import torch
from torch import nn

from bnlib.experiments import load_digits_split, mlp
from bnlib.experiments.weight_decay import (
    add_weight_decay,
    decay_arms,
    decayed_parameters,
    scale_invariance,
    train_weight_decay,
)


def test_scale_invariance_matches_theory():
    for r in scale_invariance(scales=(0.5, 2.0, 10.0), eps=1e-12):
        assert r.output_difference < 1e-10
        assert r.grad_norm_ratio == pytest.approx(1 / r.scale, rel=1e-9)
        assert r.max_cosine < 1e-10
    # eps breaks the invariance a little, and more for small weights.
    small, large = scale_invariance(scales=(0.1, 10.0), eps=1e-2)
    assert large.output_difference < small.output_difference and small.output_difference > 1e-4


def test_weight_decay_hooks_equal_sgd_weight_decay():
    # Reference: torch.optim.SGD(weight_decay=λ) on exactly the decayed parameters.
    torch.manual_seed(0)
    ours = mlp(depth=1, norm="batch").double()
    ref = mlp(depth=1, norm="batch").double()
    ref.load_state_dict(ours.state_dict())
    add_weight_decay(ours, "weights", 0.1)
    decayed = {id(p) for p in decayed_parameters(ref, "weights")}
    groups = [
        {"params": [p for p in ref.parameters() if id(p) in decayed], "weight_decay": 0.1},
        {"params": [p for p in ref.parameters() if id(p) not in decayed]},
    ]
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.3)
    opt_ref = torch.optim.SGD(groups, lr=0.3)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 64, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (8,), generator=g)
        for net, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
    with pytest.raises(ValueError, match="decay_on"):
        decayed_parameters(ours, "gamma")


def test_weight_decay_before_batch_norm_raises_the_effective_learning_rate():
    split = load_digits_split()
    runs = {}
    for d in ("none", "weights", "all"):
        torch.manual_seed(0)
        runs[d] = train_weight_decay(
            mlp(activation="relu", norm="batch"),
            split,
            d,
            steps=100,
            record_every=20,
            eval_every=100,
        )
    none, weights, all_ = runs["none"], runs["weights"], runs["all"]
    assert none.steps == [0, 20, 40, 60, 80, 100]
    # Without decay the norm can only grow: the gradient is orthogonal to each row.
    assert all(b >= a - 1e-6 for a, b in zip(none.weight_norm, none.weight_norm[1:]))
    assert weights.weight_norm[-1] < 0.97 * weights.weight_norm[0]
    assert weights.effective_lr[-1] > 1.05 * weights.effective_lr[0] > none.effective_lr[-1]
    # Decay on gamma shrinks gamma; decay on weights only leaves it to the gradient.
    assert all_.gamma_norm[-1] < 0.97 < weights.gamma_norm[-1]


def test_decay_arms_decay_what_they_say():
    arms = {a.name: a for a in decay_arms(weight_decay=0.5)}
    torch.manual_seed(0)
    net = arms["all"].build()
    net(torch.randn(4, 64)).sum().mul(0).backward()  # zero loss gradient: only the decay
    for p in net.parameters():
        torch.testing.assert_close(p.grad, 0.5 * p.detach())
    torch.manual_seed(0)
    net = arms["weights"].build()
    net(torch.randn(4, 64)).sum().mul(0).backward()
    assert float(net[1].weight.grad.abs().max()) == 0.0  # gamma not decayed
    assert float(net[0].weight.grad.abs().max()) > 0.0


def test_decay_arms_build_in_the_split_dtype_and_keep_their_decay():
    from bnlib.experiments.precision import double_split

    split = double_split(load_digits_split())
    net = {a.name: a for a in decay_arms(weight_decay=0.5, split=split)}["weights"].build()
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    net(split.x_train[:4]).sum().mul(0).backward()
    torch.testing.assert_close(net[0].weight.grad, 0.5 * net[0].weight.detach())
