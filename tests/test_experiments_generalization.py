"""Chapter 5's CNN comparison: the gap measurement against a direct computation, the
matched-fit recorder against a hand-computed loss, the protocol arms seeded and
reproducible, and BatchNorm2d learning faster on the digits at one short budget."""

import pytest
import torch
import torch.nn.functional as F

from bnlib.experiments import load_digits_split, small_cnn, train
from bnlib.experiments.generalization import MatchedFit, cnn_arm, measure_gap, stack
from bnlib.experiments.protocol import run


# One thread for tiny tensors: the shared fixture of tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split():
    return load_digits_split(images=True)


@pytest.fixture(scope="module")
def short_runs(split):
    return run([cnn_arm("none"), cnn_arm("batch")], split, steps=100, seeds=(0, 1), lr=0.1)


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
    assert gap.train_loss == pytest.approx(
        F.cross_entropy(logits_train, split.y_train).item(), rel=1e-6
    )
    assert gap.test_loss == pytest.approx(
        F.cross_entropy(logits_test, split.y_test).item(), rel=1e-6
    )
    assert gap.accuracy_gap == pytest.approx(acc_train - acc_test, abs=1e-12)
    assert gap.loss_gap == pytest.approx(gap.test_loss - gap.train_loss, abs=1e-12)


def test_matched_fit_records_the_first_check_below_the_threshold(split):
    # Record the eval-mode training loss at every check by hand and compare.
    losses = {}

    def probe(step, model):
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                losses[step] = F.cross_entropy(model(split.x_train), split.y_train).item()
            model.train()

    def run(on_step, seed=0):
        torch.manual_seed(seed)
        return train(
            small_cnn("batch", channels=4),
            split,
            steps=60,
            lr=0.3,
            momentum=0.9,
            on_step=on_step,
            eval_every=60,
        )

    run(probe)
    threshold = sorted(losses.values())[len(losses) // 2]  # reached half-way or so
    expected = min(s for s, v in losses.items() if v <= threshold)
    fit = MatchedFit(split, threshold=threshold, check_every=5, final_step=60)
    for seed in (0, 0):  # the same run twice: one record per run, identical
        history = run(fit, seed)
    first, second = fit.reached()
    assert len(fit.final) == 2 and fit.final[0] == fit.final[1]
    assert fit.final[0].test_accuracy == history.test_accuracy  # the same final model
    assert fit.final[0].train_accuracy == history.train_accuracy[-1]
    assert fit.final[0].train_loss == pytest.approx(losses[60], rel=1e-6)
    assert first.step == expected == second.step
    assert first.gap == second.gap
    assert first.gap.train_loss == pytest.approx(losses[expected], rel=1e-6)
    assert first.gap.train_loss <= threshold


def test_matched_fit_reports_runs_that_never_reach_the_threshold(split):
    fit = MatchedFit(split, threshold=1e-6, check_every=5)
    torch.manual_seed(0)
    train(small_cnn("none", channels=4), split, steps=10, on_step=fit, eval_every=10)
    assert fit.records == [None]
    with pytest.raises(ValueError, match="never reached a training loss"):
        fit.reached()
    with pytest.raises(ValueError, match="threshold > 0"):
        MatchedFit(split, threshold=0.0)
    with pytest.raises(RuntimeError, match="step 1"):
        MatchedFit(split)(5, small_cnn(channels=4))


def test_arms_are_seeded_and_reproducible(split, short_runs):
    a, b = short_runs.histories["batch"]
    assert a.steps == [0, 25, 50, 75, 100]
    assert a.val_accuracy != b.val_accuracy  # seeds differ
    again = run([cnn_arm("batch")], split, steps=100, seeds=(0, 1), lr=0.1)
    assert again.histories["batch"][0].val_accuracy == a.val_accuracy
    assert again.histories["batch"][0].test_accuracy == a.test_accuracy
    # Kaiming-normal initialization (fan-in) for the first convolution, not PyTorch's default
    torch.manual_seed(0)
    conv = cnn_arm("none").build()[0]
    assert conv.weight.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.15)
    torch.manual_seed(0)
    default = cnn_arm("none", init="default").build()[0]
    assert default.weight.std().item() < 0.25


def test_both_cnns_learn_within_a_short_budget(short_runs):
    # 100 steps at learning rate 0.1 from chance level (ln 10 = 2.30 nats), read from the
    # mini-batch training loss of the last 25 steps: evaluation with the running averages
    # can lag behind weights that move fast (BN, seed 0: validation accuracy 0.79 at step
    # 75 and 0.57 at step 100, at a training loss of 0.31 nats).
    for bn, plain in zip(short_runs.histories["batch"], short_runs.histories["none"]):
        assert max(bn.val_accuracy[0], plain.val_accuracy[0]) < 0.2
        assert bn.train_loss[-1] < 0.5 and max(bn.val_accuracy) > 0.7
        assert plain.train_loss[-1] < 2.0
        assert bn.train_loss[-1] < plain.train_loss[-1]  # BN faster at this budget


def test_stack_shapes_and_checks(split, short_runs):
    steps, values = stack(short_runs.histories["batch"])
    assert steps.tolist() == [0, 25, 50, 75, 100] and values.shape == (2, 5)
    assert values[1].tolist() == short_runs.histories["batch"][1].val_accuracy
    assert stack(short_runs.histories["none"], "train_accuracy")[1].shape == (2, 5)
    with pytest.raises(ValueError, match="metric"):
        stack(short_runs.histories["batch"], "test_accuracy")
    other = run([cnn_arm("none", eval_every=5)], split, steps=10, seeds=(0, 1), lr=0.1)
    with pytest.raises(ValueError, match="same steps"):
        stack([short_runs.histories["none"][0], *other.histories["none"]])


def test_precise_eval_evaluates_with_recomputed_statistics_and_leaves_training_alone(split):
    import copy

    from bnlib.experiments.generalization import PreciseEval
    from bnlib.experiments.train import accuracy
    from bnlib.torch import recompute_bn_stats

    def fit(on_step):
        torch.manual_seed(3)
        model = small_cnn("batch", channels=4)
        h = train(
            model,
            split,
            30,
            lr=1.0,
            momentum=0.9,
            eval_every=10,
            on_step=on_step,
            train_accuracy=False,
        )
        return h, model

    snapshots = {}

    def snapshot(step, model):  # what the evaluation at this step should see
        if step % 10 == 0:
            precise = copy.deepcopy(model)
            recompute_bn_stats(precise, split.x_train.split(60))
            snapshots[step] = (
                accuracy(precise, split.x_val, split.y_val),
                accuracy(model, split.x_val, split.y_val),
            )

    plain_h, plain_model = fit(snapshot)
    precise = PreciseEval(split, steps=30, eval_every=10)
    h, model = fit(precise)
    # training and the running averages it keeps are those of a run without PreciseEval
    # (the last step's recomputed statistics aside: restore happens at the next step)
    for p, q in zip(plain_model.parameters(), model.parameters()):
        assert torch.equal(p, q)
    # the evaluations used precise statistics; ema_val has what the averages gave
    assert h.val_accuracy[1:] == [snapshots[s][0] for s in (10, 20, 30)]
    assert precise.ema_val[0] == [snapshots[s][1] for s in (10, 20, 30)]
    assert plain_h.val_accuracy[1:] == precise.ema_val[0]
    assert len(precise.ema_test) == 1
    with pytest.raises(ValueError, match="eval_every"):
        PreciseEval(split, steps=10, eval_every=0)
