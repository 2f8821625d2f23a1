"""Rule 2 of chapter 4: in training mode a prediction depends on the batch, in eval it does
not; forgetting model.eval() is measured without touching the caller's model."""

import torch

from bnlib.experiments import mlp
from bnlib.experiments.eval_mode import companion_effect, train_mode_accuracy


def test_prediction_depends_on_companions_in_train_mode_only():
    torch.manual_seed(0)
    model = mlp(norm="batch")
    pool = torch.rand(50, 64, generator=torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    effect = companion_effect(model, pool[0], pool[1:], num_batches=10)
    assert effect.train_probs.shape == effect.eval_probs.shape == (10, 10)
    assert float(effect.train_probs.std(dim=0).max()) > 1e-3
    torch.testing.assert_close(
        effect.eval_probs, effect.eval_probs[:1].expand(10, -1), rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(
        effect.eval_probs[0], torch.softmax(model.eval()(pool[:1]), dim=1)[0].detach()
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_train_mode_accuracy_uses_batch_statistics_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = mlp(norm="batch", depth=1)
    x, y = torch.randn(21, 64), torch.randint(0, 10, (21,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # Reference: the same shuffle, each batch through a training-mode copy by hand.
    order = torch.randperm(21, generator=torch.Generator().manual_seed(3))
    import copy

    net = copy.deepcopy(model).train()
    correct = 0
    for idx in order.split(8):
        correct += int((net(x[idx]).argmax(1) == y[idx]).sum())
    assert train_mode_accuracy(model, x, y, batch_size=8, seed=3) == correct / 21
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # A trailing batch of one is classified beside a companion, not refused.
    assert 0 <= train_mode_accuracy(model, x, y, batch_size=10, seed=3) <= 1
