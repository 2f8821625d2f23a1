"""Santurkar et al.'s experiments (bnlib.experiments.landscape): the noisy BN layer against
torch.nn.BatchNorm1d, the landscape measurements against autograd and a Taylor expansion."""

import numpy as np
import pytest
import torch
from torch import nn

from bnlib.experiments import load_digits_split, mlp, train
from bnlib.experiments.landscape import (
    Landscape,
    LandscapeRecorder,
    NoisyBatchNorm1d,
    PercentileTrace,
    compare_landscapes,
    compare_noisy_bn,
    gradient_landscape,
    noisy_mlp,
)

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


# One thread for tiny tensors: the shared fixture of tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_noisy_bn_is_torch_batch_norm_then_the_drawn_affine_map():
    torch.manual_seed(0)
    x = torch.randn(32, 6, dtype=torch.float64) * 3 + 1
    noisy = NoisyBatchNorm1d(6, scale_noise=0.4, shift_noise=2.0, dtype=torch.float64)
    ref = nn.BatchNorm1d(6, dtype=torch.float64)
    y = noisy(x)
    torch.testing.assert_close(y, ref(x) * noisy.last_scale + noisy.last_shift, **TIGHT)
    # The running statistics are those of plain BN: the noise comes after.
    torch.testing.assert_close(noisy.running_var, ref.running_var, **TIGHT)
    assert set(noisy.state_dict()) == set(ref.state_dict())
    # Each channel's batch mean is the drawn shift; its std is the drawn scale.
    torch.testing.assert_close(y.mean(dim=0), noisy.last_shift, rtol=0, atol=1e-12)
    var = x.var(dim=0, unbiased=False)
    torch.testing.assert_close(
        y.std(dim=0, unbiased=False),
        noisy.last_scale * torch.sqrt(var / (var + noisy.eps)),
        **TIGHT,
    )


def test_noisy_bn_moves_the_distribution_at_every_step():
    torch.manual_seed(0)
    noisy = NoisyBatchNorm1d(8, scale_noise=0.5, shift_noise=1.0)
    x = torch.randn(64, 8)
    means = []
    for _ in range(5):
        y = noisy(x)  # the same input every step
        means.append(y.mean(dim=0))
    steps = torch.stack(means).diff(dim=0).abs()  # (4, 8) step-to-step change of each mean
    assert bool((steps > 1e-3).all())


def test_noisy_bn_draws_are_centred_on_identity_and_in_range():
    torch.manual_seed(0)
    a, d = 0.5, 1.0
    noisy = NoisyBatchNorm1d(20_000, scale_noise=a, shift_noise=d)
    noisy(torch.randn(4, 20_000))
    s, b = noisy.last_scale, noisy.last_shift
    assert 1 - a <= float(s.min()) and float(s.max()) <= 1 + a
    assert -d <= float(b.min()) and float(b.max()) <= d
    # Uniform(1 - a, 1 + a): mean 1, variance a^2 / 3; Uniform(-d, d): mean 0, variance d^2 / 3.
    # Standard errors are below 0.003 and 0.005 with 20,000 draws.
    assert abs(float(s.mean()) - 1) < 0.015 and abs(float(b.mean())) < 0.025
    assert float(s.var()) == pytest.approx(a * a / 3, rel=0.05)
    assert float(b.var()) == pytest.approx(d * d / 3, rel=0.05)


def test_noisy_bn_in_eval_mode_is_plain_batch_norm_and_is_seeded():
    torch.manual_seed(0)
    x = torch.randn(16, 4, 10, dtype=torch.float64)
    noisy = NoisyBatchNorm1d(4, dtype=torch.float64)
    ref = nn.BatchNorm1d(4, dtype=torch.float64)
    for _ in range(3):
        y = noisy(x)
        ref(x)
    # (N, C, L): one draw per channel, shared over N and L.
    torch.testing.assert_close(y.mean(dim=(0, 2)), noisy.last_shift, rtol=0, atol=1e-12)
    noisy.eval(), ref.eval()
    torch.testing.assert_close(noisy(x), ref(x), **TIGHT)
    torch.manual_seed(5)
    first = NoisyBatchNorm1d(4).train()(x.float())
    torch.manual_seed(5)
    assert torch.equal(first, NoisyBatchNorm1d(4).train()(x.float()))


def test_noisy_bn_rejects_bad_arguments_and_input():
    with pytest.raises(ValueError, match="scale_noise"):
        NoisyBatchNorm1d(3, scale_noise=1.0)
    with pytest.raises(ValueError, match="shift_noise"):
        NoisyBatchNorm1d(3, shift_noise=-0.1)
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        NoisyBatchNorm1d(3)(torch.randn(2, 3, 4, 4))


def test_noisy_mlp_starts_from_the_batch_norm_mlp():
    torch.manual_seed(3)
    plain = mlp(norm="batch", depth=2)
    torch.manual_seed(3)
    noisy = noisy_mlp(depth=2, scale_noise=0.2, shift_noise=0.3)
    assert sum(isinstance(m, NoisyBatchNorm1d) for m in noisy) == 2
    assert noisy[1].scale_noise == 0.2 and noisy[1].shift_noise == 0.3
    a, b = plain.state_dict(), noisy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_percentile_trace_records_training_forwards_only():
    layer = nn.Linear(1, 2)
    trace = PercentileTrace(layer, unit=1, q=(0, 100))
    x = torch.linspace(-1, 1, 11).unsqueeze(1)
    out = layer(x)[:, 1].detach()
    layer.eval()
    layer(x)
    layer.train()
    trace.remove()
    layer(x)
    assert len(trace.values) == 1
    np.testing.assert_allclose(trace.values[0], [float(out.min()), float(out.max())], rtol=1e-6)


def test_gradient_landscape_agrees_with_autograd_and_taylor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    etas = [1e-7, 0.1, 0.5]
    loss, g, losses, distances = gradient_landscape(model, x, y, etas)
    # The model and its running statistics are untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Reference: move a fresh copy's parameters by hand and ask autograd.
    params = list(model.parameters())
    ref_g = torch.cat(
        [
            p.reshape(-1)
            for p in torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)
        ]
    )
    torch.testing.assert_close(g, ref_g, **TIGHT)
    for eta, loss_k, dist_k in zip(etas, losses, distances):
        moved = [
            p.detach() - eta * gp
            for p, gp in zip(
                params, torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)
            )
        ]
        out = torch.func.functional_call(
            model,
            dict(
                zip([n for n, _ in model.named_parameters()], [m.requires_grad_() for m in moved])
            ),
            (x,),
        )
        ref_loss = nn.functional.cross_entropy(out, y)
        ref_gk = torch.cat([q.reshape(-1) for q in torch.autograd.grad(ref_loss, moved)])
        assert loss_k == pytest.approx(float(ref_loss.detach()), rel=1e-12)
        assert dist_k == pytest.approx(float(torch.linalg.vector_norm(ref_g - ref_gk)), rel=1e-9)
    # First order: L(w - eta g) - L(w) = -eta |g|^2 + O(eta^2).
    slope = (losses[0] - loss) / etas[0]
    assert slope == pytest.approx(-float(g @ g), rel=1e-4)
    assert distances[0] < 1e-5 < distances[2]
    with pytest.raises(ValueError, match="positive step sizes"):
        gradient_landscape(model, x, y, [0.1, 0.0])


def test_landscape_summaries_follow_their_definitions():
    land = Landscape(
        steps=np.array([1, 2]),
        step_sizes=np.array([0.5, 2.0]),
        loss=np.array([1.0, 1.0]),
        losses=np.array([[0.8, 1.5], [0.9, 0.95]]),
        grad_norm=np.array([2.0, 4.0]),
        distances=np.array([[1.0, 3.0], [0.4, 0.2]]),
        history=None,
    )
    np.testing.assert_allclose(land.loss_range, [0.7, 0.1])
    np.testing.assert_allclose(land.predictiveness, [3.0, 0.4])
    np.testing.assert_allclose(land.beta_smoothness, [max(1 / 1, 3 / 4), max(0.4 / 2, 0.2 / 8)])


def test_recorder_is_seeded_leaves_training_alone_and_starts_a_trace_per_run():
    split = load_digits_split()
    recorder = LandscapeRecorder(split, (0.1, 0.4), measure_every=10, seed=3)
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        histories.append(
            train(
                mlp(norm="batch", activation="relu"),
                split,
                steps=20,
                lr=0.1,
                eval_every=10,
                on_step=recorder,
            )
        )
    a, b = recorder.landscapes()
    assert a.steps.tolist() == [10, 20] and a.losses.shape == a.distances.shape == (2, 2)
    # The second trace draws its batches from seed 4, so the same run measures differently.
    assert not np.array_equal(a.losses, b.losses)
    again = LandscapeRecorder(split, (0.1, 0.4), measure_every=10, seed=3)
    torch.manual_seed(0)
    train(
        mlp(norm="batch", activation="relu"), split, steps=20, lr=0.1, eval_every=10, on_step=again
    )
    for name in ("loss", "losses", "grad_norm", "distances"):
        np.testing.assert_array_equal(getattr(a, name), getattr(again.landscapes()[0], name))
    # The range is max - min over the loss at the weights and at every probed step.
    every = np.column_stack([a.loss, a.losses])
    np.testing.assert_array_equal(a.loss_range, every.max(axis=1) - every.min(axis=1))
    assert (a.loss_range > 0).all() and (a.distances > 0).all() and (a.beta_smoothness > 0).all()
    torch.manual_seed(0)
    plain = train(mlp(norm="batch", activation="relu"), split, steps=20, lr=0.1, eval_every=10)
    assert plain.val_accuracy == histories[0].val_accuracy
    assert plain.train_loss[1:] == histories[0].train_loss[1:]  # [0] is NaN: no step yet
    assert plain.test_accuracy == histories[0].test_accuracy
    with pytest.raises(ValueError, match="measure_every"):
        LandscapeRecorder(split, (0.1,), measure_every=0)


def test_compare_landscapes_uses_each_arms_rate_and_pairs_seeds():
    split = load_digits_split()
    builders = {
        n: (lambda n=n: mlp(norm=n, activation="relu", depth=1)) for n in ("none", "batch")
    }
    comp = compare_landscapes(
        split,
        builders,
        {"none": 0.05, "batch": 0.2},
        steps=20,
        seeds=(0, 1),
        step_multiples=(0.5, 2.0),
        measure_every=10,
        eval_every=10,
    )
    assert comp.results.lrs == {"none": 0.05, "batch": 0.2}
    np.testing.assert_allclose(comp.landscapes["batch"][0].step_sizes, [0.1, 0.4])
    np.testing.assert_allclose(comp.landscapes["none"][1].step_sizes, [0.025, 0.1])
    assert len(comp.landscapes["none"]) == 2
    means = comp.phase_means("none", "loss_range", 1, 20)
    assert means.shape == (2,)
    ratio = comp.ratio("none", "batch", "loss_range", 1, 20)
    expected = means / comp.phase_means("batch", "loss_range", 1, 20)
    np.testing.assert_allclose(ratio.values, expected)
    assert ratio.low <= ratio.mean <= ratio.high
    with pytest.raises(ValueError, match="no measurement"):
        comp.phase_means("none", "loss_range", 21, 30)


def test_compare_noisy_bn_chooses_each_rate_inside_its_slice_and_traces_noisier_inputs():
    split = load_digits_split()
    result = compare_noisy_bn(
        split,
        seeds=(0, 1),
        steps=40,
        shift_noise=1.0,
        eval_every=20,
        start=0.1,
        activation="relu",
        depth=2,
        early_step=20,
    )
    res = result.results
    # early_step: the same runs stopped at step 20, read on test. Reference: each run
    # trained afresh for 20 steps with train() and evaluated on test.
    assert result.early.lrs == res.lrs and result.early.seeds == res.seeds
    builders = {
        "none": lambda: mlp(norm="none", activation="relu", depth=2),
        "batch": lambda: mlp(norm="batch", activation="relu", depth=2),
        "noisy": lambda: noisy_mlp(0.5, 1.0, activation="relu", depth=2),
    }
    for arm, build in builders.items():
        for seed, short, long in zip(res.seeds, result.early.histories[arm], res.histories[arm]):
            assert short.steps == [0, 20]
            assert short.val_accuracy == long.val_accuracy[:2]
            torch.manual_seed(seed)
            fresh = train(
                build(),
                split,
                20,
                batch_size=60,
                lr=res.lrs[arm],
                seed=seed,
                eval_every=20,
                train_accuracy=False,
            )
            assert short.test_accuracy == fresh.test_accuracy
    assert set(res.lrs) == {"none", "batch", "noisy"}
    for arm, choice in res.choices.items():
        assert choice.grid[0] < res.lrs[arm] < choice.grid[-1]
        assert [h.steps for h in res.histories[arm]] == [[0, 20, 40]] * 2
        assert all(isinstance(h.test_accuracy, float) for h in res.histories[arm])
    assert result.percentiles["batch"].shape == result.percentiles["noisy"].shape == (40, 3)

    def jitter(p):  # mean step-to-step change of the median the next layer sees
        return np.abs(np.diff(p[:, 1])).mean()

    assert jitter(result.percentiles["noisy"]) > 2 * jitter(result.percentiles["batch"])


def test_compare_noisy_bn_refuses_an_early_step_off_the_evaluations():
    for bad in (0, 40, 10, 45):  # 0 and the last step are not early; 10 and 45 not evaluated
        with pytest.raises(ValueError, match="early_step"):
            compare_noisy_bn(load_digits_split(), steps=40, eval_every=20, early_step=bad)


def test_compare_noisy_bn_refuses_an_early_run_that_is_not_the_start_of_the_long_one(
    monkeypatch,
):
    import bnlib.experiments.landscape as landscape

    real_run = landscape.run

    def run_one_step_off(arms, split, steps, seeds, lr):  # a short run that went elsewhere
        results = real_run(arms, split, steps, seeds, lr=lr)
        results.histories["noisy"][1].val_accuracy[-1] += 0.01
        return results

    monkeypatch.setattr(landscape, "run", run_one_step_off)
    with pytest.raises(RuntimeError, match="arm 'noisy', seed 1.*not the start"):
        compare_noisy_bn(
            load_digits_split(),
            seeds=(0, 1),
            steps=40,
            eval_every=20,
            start=0.1,
            activation="relu",
            depth=2,
            early_step=20,
        )
