"""The experiment protocol (bnlib.experiments.protocol): intervals against scipy and hand
computation, the learning-rate choice and its edge rule, the runner's determinism and its
single use of the test set, the steps-to-target resolution rule."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from bnlib.experiments import (
    LR_GRID,
    Arm,
    EdgeOfGridError,
    History,
    ResolutionError,
    choose_lr,
    init_for_activation,
    interval,
    load_digits_split,
    mlp,
    ratio_interval,
    run,
    seeds_needed,
    small_cnn,
    steps_to_target,
)
import importlib

from bnlib.experiments import protocol

train_mod = importlib.import_module("bnlib.experiments.train")

SPLIT = load_digits_split()


def test_lr_grid_is_half_decades_from_1e_3_to_10():
    assert len(LR_GRID) == 9
    np.testing.assert_allclose(
        LR_GRID, [1e-3, 10**-2.5, 1e-2, 10**-1.5, 0.1, 10**-0.5, 1.0, 10**0.5, 10.0], rtol=1e-12
    )


def test_interval_matches_scipy_and_hand_computation():
    values = [0.91, 0.93, 0.95, 0.90, 0.96]
    iv = interval(values)
    low, high = stats.t.interval(0.95, df=4, loc=np.mean(values), scale=stats.sem(values))
    assert iv.n == 5 and iv.values == tuple(values)
    assert iv.mean == pytest.approx(0.93, abs=1e-12)
    assert (iv.low, iv.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    # By hand, three values 1, 2, 3: s = 1, t_{0.975, 2} = 4.302653, half-width 4.302653/sqrt(3)
    hand = interval([1.0, 2.0, 3.0])
    assert hand.high - hand.mean == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    assert interval([1.0, 2.0, 3.0], level=0.9).half_width < hand.half_width


def test_interval_digits_follow_the_half_width():
    assert interval([0.91, 0.93, 0.95]).digits() == 2  # half-width 0.05
    assert interval([2.1, 2.6, 3.1]).digits() == 0  # half-width 1.24
    assert interval([2.5, 2.6, 2.7]).digits() == 1  # half-width 0.25
    assert interval([150, 150, 150]).digits() == 0  # no spread, integer
    assert interval([0.5, 0.5]).digits() == 1
    assert str(interval([0.91, 0.93, 0.95])) == "0.93 (95% CI 0.88-0.98)"
    assert interval([0.91, 0.93, 0.95]).format(scale=100) == "93 (95% CI 88-98)"
    assert interval([0.91, 0.93, 0.95]).format(3) == "0.930 (95% CI 0.880-0.980)"


def test_interval_refuses_too_few_or_non_finite_values():
    with pytest.raises(ValueError, match="at least 2"):
        interval([0.9])
    with pytest.raises(ValueError, match="finite"):
        interval([0.9, math.inf])


def test_overlap_and_ratio_interval():
    a, b = interval([1.0, 1.1, 1.2]), interval([1.15, 1.3, 1.4])
    assert a.overlaps(b) and b.overlaps(a)
    assert not interval([1.0, 1.01, 1.02]).overlaps(interval([2.0, 2.01, 2.02]))
    r = ratio_interval([300.0, 320.0, 280.0], [100.0, 110.0, 100.0])
    logs = np.log(np.array([3.0, 320 / 110, 2.8]))
    lo, hi = stats.t.interval(0.95, 2, loc=logs.mean(), scale=stats.sem(logs))
    assert r.mean == pytest.approx(math.exp(logs.mean()), rel=1e-12)
    assert (r.low, r.high) == (pytest.approx(math.exp(lo)), pytest.approx(math.exp(hi)))
    with pytest.raises(ValueError, match="positive"):
        ratio_interval([1.0, 0.0], [1.0, 1.0])


def test_seeds_needed():
    assert seeds_needed(0.06, 0.02) == 5  # exactly 3x: within
    assert seeds_needed(0.0601, 0.02) == 3
    assert seeds_needed(-0.01, 0.02) == 5


def test_steps_to_target_refuses_a_coarse_resolution():
    h = History(steps=[0, 50, 100, 150], val_accuracy=[0.1, 0.5, 0.92, 0.95], eval_every=50)
    with pytest.raises(ResolutionError, match="at most 5"):
        steps_to_target(h, 0.9)  # 50 > 5% of 100
    fine = History(
        steps=list(range(0, 201, 5)), val_accuracy=[i / 40 for i in range(41)], eval_every=5
    )
    assert steps_to_target(fine, 0.9) == 180  # first step with accuracy >= 0.9: 36 * 5
    assert steps_to_target(fine, 1.01) is None
    with pytest.raises(ResolutionError):
        steps_to_target(fine, 0.0)  # reached at step 0


def test_init_for_activation_gains():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(500, 300), nn.Sigmoid(), nn.Linear(300, 300), nn.Sigmoid(), nn.Linear(300, 10)
    )
    init_for_activation(net, "sigmoid")
    with torch.no_grad():
        assert float(net[0].weight.std()) == pytest.approx(4 * math.sqrt(2 / 800), rel=0.02)
        assert float(net[2].weight.std()) == pytest.approx(4 * math.sqrt(2 / 600), rel=0.02)
        assert float(net[4].weight.std()) == pytest.approx(math.sqrt(2 / 310), rel=0.05)
        assert all(float(m.bias.abs().max()) == 0 for m in net if isinstance(m, nn.Linear))
    init_for_activation(net, "tanh")
    assert float(net[0].weight.detach().std()) == pytest.approx(
        5 / 3 * math.sqrt(2 / 800), rel=0.02
    )
    init_for_activation(net, "relu")
    assert float(net[0].weight.detach().std()) == pytest.approx(math.sqrt(2 / 500), rel=0.02)
    with pytest.raises(ValueError, match="activation"):
        init_for_activation(net, "gelu")


def test_model_builders_init_auto_and_default():
    torch.manual_seed(0)
    auto = mlp(hidden=400, activation="sigmoid")
    torch.manual_seed(0)
    default = mlp(hidden=400, activation="sigmoid", init="default")
    w_auto, w_default = auto[0].weight.detach(), default[0].weight.detach()
    assert float(w_auto.std()) == pytest.approx(4 * math.sqrt(2 / 464), rel=0.03)
    # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 * 64)
    assert float(w_default.std()) == pytest.approx(1 / math.sqrt(3 * 64), rel=0.03)
    bn = mlp(norm="batch")
    assert (
        float(bn[1].weight.detach().min()) == 1.0 and float(bn[1].bias.detach().abs().max()) == 0
    )
    conv = small_cnn(channels=32)[0].weight.detach()
    assert float(conv.std()) == pytest.approx(math.sqrt(2 / 9), rel=0.1)
    with pytest.raises(ValueError, match="init"):
        mlp(init="xavier")


def _toy_arm(peak: float) -> Arm:
    """An arm whose final validation accuracy is 1 - |log10(lr) - log10(peak)| / 10, faked
    through a monkeypatched metric (see the test): the choice logic alone is tested."""
    return Arm(f"toy{peak}", lambda: nn.Linear(1, 1), train_kwargs={"eval_every": 1})


def test_choose_lr_picks_the_interior_optimum_and_refuses_an_edge(monkeypatch):
    current = {}

    def fake_fit(self, split, steps, lr, seed, test=True):
        peak = float(self.name[3:])
        acc = 1 - abs(math.log10(lr) - math.log10(peak)) / 10 + 0.001 * seed
        h = History(
            steps=[0, steps],
            train_loss=[math.nan, 1.0],
            train_accuracy=[0.1, acc],
            val_accuracy=[0.1, acc],
            eval_every=1,
        )
        current.setdefault(self.name, []).append(lr)
        return h, nn.Linear(1, 1)

    monkeypatch.setattr(Arm, "fit", fake_fit)
    choice = choose_lr(_toy_arm(0.1), SPLIT, steps=10)
    assert choice.lr == pytest.approx(0.1) and set(choice.scores) == set(LR_GRID)
    assert choice.scores[0.1].mean == pytest.approx(1.001)
    assert current["toy0.1"] == [lr for lr in LR_GRID for _ in range(3)]
    for edge in (10.0, 1e-3, 100.0):
        with pytest.raises(EdgeOfGridError, match="grid"):
            choose_lr(_toy_arm(edge), SPLIT, steps=10)
    # a sub-range whose top is the optimum is refused too
    with pytest.raises(EdgeOfGridError, match="highest"):
        choose_lr(_toy_arm(0.1), SPLIT, steps=10, grid=LR_GRID[2:5])


def test_choose_lr_minimizes_steps_and_skips_diverged_rates(monkeypatch):
    def fake_fit(self, split, steps, lr, seed, test=True):
        reach = {0.01: 400, 0.1: 100, 1.0: None}[lr]
        curve = [1.0 if reach is not None and s >= reach else 0.5 for s in range(0, 501, 5)]
        h = History(
            steps=list(range(0, 501, 5)),
            val_accuracy=curve,
            eval_every=5,
            train_loss=[1.0] * 101,
            train_accuracy=curve,
        )
        return h, nn.Linear(1, 1)

    monkeypatch.setattr(Arm, "fit", fake_fit)
    c = choose_lr(_toy_arm(1), SPLIT, 500, grid=(0.01, 0.1, 1.0), metric="steps_to:0.9")
    assert c.lr == 0.1 and c.scores[1.0] is None and c.scores[0.1].mean == 100


def _arms(eval_every=5):
    return [
        Arm(
            n, lambda n=n: mlp(norm=n, depth=2, hidden=32), train_kwargs={"eval_every": eval_every}
        )
        for n in ("none", "batch")
    ]


def test_runner_is_deterministic_and_touches_test_once(monkeypatch):
    calls = []
    real = train_mod.accuracy

    def counting(model, x, y, batch_size=None):
        if x is SPLIT.x_test:
            calls.append(1)
        return real(model, x, y, batch_size)

    monkeypatch.setattr(train_mod, "accuracy", counting)
    monkeypatch.setattr(protocol, "accuracy", counting)
    a = run(
        _arms(),
        SPLIT,
        steps=30,
        seeds=(0, 1, 2),
        lr={"none": 0.3, "batch": None},
        grid=LR_GRID[2:],
    )
    # one test evaluation per reported run (2 arms x 3 seeds), none for the 21 choice runs
    assert len(calls) == 6
    b = run(
        _arms(),
        SPLIT,
        steps=30,
        seeds=(0, 1, 2),
        lr={"none": 0.3, "batch": None},
        grid=LR_GRID[2:],
    )
    for name in ("none", "batch"):
        assert [h.val_accuracy for h in a.histories[name]] == [
            h.val_accuracy for h in b.histories[name]
        ]
        assert [h.test_accuracy for h in a.histories[name]] == [
            h.test_accuracy for h in b.histories[name]
        ]
        assert all(isinstance(h.test_accuracy, float) for h in a.histories[name])
    assert a.lrs["none"] == 0.3 and LR_GRID[2] < a.lrs["batch"] < LR_GRID[-1]
    assert "batch" in a.choices and "none" not in a.choices
    # the reported runs at the chosen rate are the choice's runs at that rate
    assert a.histories["batch"] is a.choices["batch"].histories[a.lrs["batch"]]


def test_results_summary_and_compare():
    r = run(_arms(eval_every=1), SPLIT, steps=60, seeds=(0, 1, 2), lr=0.5)
    s = r.summary("test_accuracy")
    for name in ("none", "batch"):
        vals = [h.test_accuracy for h in r.histories[name]]
        assert s[name].values == tuple(vals) and s[name].mean == pytest.approx(np.mean(vals))
    c = r.compare("batch", "none", "final_val_accuracy")
    assert c.verdict in ("a higher", "b higher", "no measurable difference")
    assert (c.verdict == "no measurable difference") == c.a_interval.overlaps(c.b_interval)
    np.testing.assert_allclose(
        c.ratio.values,
        np.divide(r.values("batch", "final_val_accuracy"), r.values("none", "final_val_accuracy")),
    )
    steps = r.compare("none", "batch", "steps_to:0.6")
    assert steps.ratio is not None and steps.a_interval.n == 3
    np.testing.assert_array_equal(
        steps.a_interval.values, [h.steps_to(0.6) for h in r.histories["none"]]
    )
    with pytest.raises(ValueError, match="never reached"):
        r.summary("steps_to:1.01")
    with pytest.raises(ValueError, match="metric"):
        r.summary("accuracy")


def test_run_checks_its_arguments():
    with pytest.raises(ValueError, match="distinct"):
        run(_arms() + _arms(), SPLIT, 5, lr=0.1)
    with pytest.raises(ValueError, match="seeds"):
        run(_arms(), SPLIT, 5, seeds=(0,), lr=0.1)
    with pytest.raises(ValueError, match="no entry"):
        run(_arms(), SPLIT, 5, lr={"none": 0.1})
    with pytest.raises(ValueError, match="runner sets"):
        Arm("x", mlp, train_kwargs={"lr": 0.1})


def test_interval_text_uses_to_and_clips_to_the_range():
    iv = interval([0.80, 0.97, 0.98])
    assert iv.text(scale=100) == f"92 (95% CI {100 * iv.low:.0f} to {100 * iv.high:.0f})"
    assert iv.text(scale=100, bounds=(0, 100)).endswith(" to 100, clipped)")
    assert (
        interval([0.91, 0.93, 0.95]).text(scale=100, bounds=(0, 100)) == "93 (95% CI 88 to 98)"
    )  # inside the range: not clipped
    assert interval([-0.1, 0.2, 0.3]).text() == "0.1 (95% CI -0.4 to 0.7)"
    assert interval([-0.1, 0.2, 0.3]).text(bounds=(0, 1)) == "0.1 (95% CI 0.0 to 0.7, clipped)"
    with pytest.raises(ValueError, match="bounds"):
        iv.text(bounds=(1, 0))
    assert str(iv) == iv.format()  # the default format is unchanged


def test_choose_lr_tie_lower_bound_prefers_the_rate_that_works_on_every_seed(monkeypatch):
    # 0.316: best mean, but seed 2 fails; 0.1: slightly lower mean, tight; both overlap.
    table = {
        1e-3: [0.5, 0.5, 0.5],
        10**-2.5: [0.6, 0.6, 0.6],
        0.01: [0.7, 0.71, 0.7],
        10**-1.5: [0.8, 0.81, 0.8],
        0.1: [0.95, 0.96, 0.95],
        10**-0.5: [0.99, 0.99, 0.89],
        1.0: [0.9, 0.5, 0.9],
        10**0.5: [0.3, 0.3, 0.3],
        10.0: [0.1, 0.1, 0.1],
    }

    def fake_fit(self, split, steps, lr, seed, test=True):
        acc = next(v for k, v in table.items() if math.isclose(k, lr))[seed]
        h = History(
            steps=[0, steps],
            train_loss=[math.nan, 1.0],
            train_accuracy=[0.1, acc],
            val_accuracy=[0.1, acc],
            eval_every=1,
        )
        return h, nn.Linear(1, 1)

    monkeypatch.setattr(Arm, "fit", fake_fit)
    by_mean = choose_lr(_toy_arm(1), SPLIT, steps=10)
    assert by_mean.lr == pytest.approx(10**-0.5)
    by_bound = choose_lr(_toy_arm(1), SPLIT, steps=10, tie="lower_bound")
    assert by_bound.lr == pytest.approx(0.1)
    assert by_bound.scores[0.1].overlaps(by_bound.scores[10**-0.5])
    # a rate that does not overlap the best is never chosen, however tight
    table[10**-1.5] = [0.80, 0.80, 0.80]
    assert choose_lr(_toy_arm(1), SPLIT, steps=10, tie="lower_bound").lr == pytest.approx(0.1)
    # the chosen rate must lie inside the grid too
    with pytest.raises(EdgeOfGridError):
        choose_lr(_toy_arm(1), SPLIT, steps=10, grid=LR_GRID[4:7], tie="lower_bound")
    with pytest.raises(ValueError, match="tie"):
        choose_lr(_toy_arm(1), SPLIT, steps=10, tie="median")
