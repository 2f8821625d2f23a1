"""recompute_bn_stats against torch.optim.swa_utils.update_bn and against pooled statistics
computed directly from the activations each layer sees."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

import bnlib.torch as bt
from bnlib.torch.precise import recompute_bn_stats

TOL = dict(rtol=1e-10, atol=1e-12)


def make_model(bn1d=nn.BatchNorm1d, bn2d=nn.BatchNorm2d, seed=0):
    """Conv -> BN2d -> ReLU -> Flatten -> Linear -> BN1d, float64, with non-trivial affine."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        bn2d(3, momentum=0.3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        bn1d(5),
    ).double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, (bn1d, bn2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def make_batches(sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64) * 2 + 1 for n in sizes]


bn_layers = bt.batch_norm_layers


def assert_same_buffers(a, b, **tol):
    for bn_a, bn_b in zip(bn_layers(a), bn_layers(b), strict=True):
        torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean, **tol)
        torch.testing.assert_close(bn_a.running_var, bn_b.running_var, **tol)
        assert int(bn_a.num_batches_tracked) == int(bn_b.num_batches_tracked)


@pytest.mark.parametrize("bnlib_layers", [False, True])
def test_batch_average_equals_update_bn(bnlib_layers):
    sizes = [7, 4, 9, 4]  # unequal sizes: update_bn weights every batch equally
    ref = make_model()
    ours = make_model(bt.BatchNorm1d, bt.BatchNorm2d) if bnlib_layers else copy.deepcopy(ref)
    ours.load_state_dict(ref.state_dict())
    update_bn(make_batches(sizes), ref)
    recompute_bn_stats(ours, make_batches(sizes), population=False)
    assert_same_buffers(ours, ref, **TOL)


def captured_inputs(model, batches):
    """The input of every BN layer for every batch, in training mode, by forward hooks."""
    seen = {bn: [] for bn in bn_layers(model)}
    hooks = [
        bn.register_forward_pre_hook(lambda m, args: seen[m].append(args[0].detach()))
        for bn in seen
    ]
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("sizes", [[7, 4, 9, 4], [2, 2, 2, 2, 2, 2], [16]])
def test_population_statistics_equal_pooled_activations(sizes):
    model = make_model()
    probe = copy.deepcopy(model)  # the running stats do not change what train mode computes
    seen = captured_inputs(probe, make_batches(sizes))
    recompute_bn_stats(model, make_batches(sizes))
    for bn, (_, inputs) in zip(bn_layers(model), seen.items(), strict=True):
        x = torch.cat(inputs).transpose(0, 1).reshape(bn.num_features, -1)  # (C, n)
        torch.testing.assert_close(bn.running_mean, x.mean(dim=1), **TOL)
        torch.testing.assert_close(bn.running_var, x.var(dim=1, unbiased=True), **TOL)
        assert int(bn.num_batches_tracked) == len(sizes)


def test_overlap_with_update_bn():
    # One batch: pooled and averaged statistics coincide. Equal batch sizes: the means do.
    ref, ours = make_model(), make_model()
    update_bn(make_batches([12]), ref)
    recompute_bn_stats(ours, make_batches([12]))
    assert_same_buffers(ours, ref, **TOL)
    ref, ours = make_model(), make_model()
    update_bn(make_batches([3, 3, 3, 3]), ref)
    recompute_bn_stats(ours, make_batches([3, 3, 3, 3]))
    for a, b in zip(bn_layers(ours), bn_layers(ref)):
        torch.testing.assert_close(a.running_mean, b.running_mean, **TOL)


def test_population_variance_is_law_of_total_variance():
    # Equal batches of size m, B batches: pooled biased variance = mean of the biased batch
    # variances + variance of the batch means (the part an average of batch variances misses).
    m, num_batches = 3, 5
    ours, ref = make_model(), make_model()
    recompute_bn_stats(ours, make_batches([m] * num_batches))
    update_bn(make_batches([m] * num_batches), ref)
    seen = captured_inputs(make_model(), make_batches([m] * num_batches))
    for a, b, inputs in zip(bn_layers(ours), bn_layers(ref), seen.values()):
        per = [x.transpose(0, 1).reshape(a.num_features, -1) for x in inputs]  # B x (C, n_b)
        n_b, n = per[0].shape[1], per[0].shape[1] * num_batches
        means = torch.stack([p.mean(dim=1) for p in per])  # (B, C)
        within = b.running_var * (n_b - 1) / n_b  # mean of biased batch variances
        between = means.var(dim=0, unbiased=False)
        torch.testing.assert_close(a.running_var * (n - 1) / n, within + between, **TOL)


def test_weights_momenta_and_modes_are_restored():
    model = make_model(bt.BatchNorm1d, bt.BatchNorm2d)
    model.eval()
    model[0].train()  # a mixed state must come back as it was
    params = {k: v.clone() for k, v in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    recompute_bn_stats(model, [(x, torch.zeros(len(x))) for x in make_batches([5, 6])])
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    assert [m.training for m in model.modules()] == modes
    assert model[1].momentum == 0.3 and model[5].momentum == 0.1
    assert all(p.grad is None for p in model.parameters())


def test_skips_layers_without_running_stats_and_models_without_bn():
    model = nn.Sequential(nn.Linear(3, 4), bt.BatchNorm1d(4, track_running_stats=False)).double()
    recompute_bn_stats(model, [torch.randn(5, 3, dtype=torch.float64)])
    assert model[1].running_mean is None
    plain = nn.Linear(3, 2)
    before = plain.weight.clone()
    recompute_bn_stats(plain, [torch.randn(5, 3)])
    assert torch.equal(plain.weight, before)


def test_recomputed_statistics_make_eval_match_train_on_the_population():
    # One BN layer on the raw input: after recomputing over batches that together are the
    # whole data, eval mode on the whole data equals train mode on it (up to Bessel's factor).
    x = torch.randn(40, 3, dtype=torch.float64) * 3 + 2
    bn = bt.BatchNorm1d(3, dtype=torch.float64)
    recompute_bn_stats(bn, list(x.split(8)))
    n = len(x)
    bn.running_var.mul_((n - 1) / n)  # biased, as training mode normalizes
    train_out = bt.BatchNorm1d(3, dtype=torch.float64).train()(x)
    torch.testing.assert_close(bn.eval()(x), train_out, **TOL)


def test_batch_renorm_layers_are_recomputed_as_batch_norm():
    renorm = make_model(bt.BatchRenorm1d, bt.BatchRenorm2d)
    plain = make_model(bt.BatchNorm1d, bt.BatchNorm2d)
    plain.load_state_dict(renorm.state_dict())
    recompute_bn_stats(renorm, make_batches([6, 5]))
    recompute_bn_stats(plain, make_batches([6, 5]))
    for a, b in zip(renorm.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a[1], b[1], **TOL, msg=a[0])
    assert (renorm[1].r_max, renorm[1].d_max) == (3.0, 5.0)  # restored
