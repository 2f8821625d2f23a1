"""SyncBatchNorm on CPU: two gloo processes on loopback, each with a share of the batch, must
equal torch.nn.BatchNorm on the whole batch (float64, 1e-10)."""

import pytest
import torch
from torch import nn

import bnlib.torch as bt
from bnlib.experiments.data_parallel import launch, train_data_parallel
from bnlib.torch.sync import SyncBatchNorm, merge_moments

TOL = dict(rtol=1e-10, atol=1e-10)
F64 = torch.float64
C = 3
# (input shape of the whole batch, split of the batch between the two ranks, module kwargs)
CASES = [
    ((8, C), (4, 4), {}),
    ((8, C, 5), (3, 5), {"momentum": None}),  # uneven shares
    ((6, C, 4, 4), (3, 3), {"bias": False}),
    ((2, C), (1, 1), {}),  # one sample per process: fine, the global batch has two
    ((6, C), (2, 4), {"affine": False, "track_running_stats": False}),
]
STEPS = 2


def make_bn(cls, kwargs):
    bn = cls(C, dtype=F64, **kwargs)
    if bn.affine:
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.5, -2.0], dtype=F64))
            if bn.bias is not None:
                bn.bias.copy_(torch.tensor([0.1, -0.3, 2.0], dtype=F64))
    return bn


def data(shape, step):
    g = torch.Generator().manual_seed(10 * step + len(shape))
    x = torch.randn(shape, generator=g, dtype=F64) * 3 + 5
    return x, torch.randn(shape, generator=g, dtype=F64)


def run_bn(bn, shape, rows):
    """STEPS training steps on the rows ``rows`` of each step's batch, then one eval step."""
    record = []
    for step in range(STEPS):
        x, dy = data(shape, step)
        x = x[rows].clone().requires_grad_()
        y = bn(x)
        y.backward(dy[rows])
        record.append(
            {
                "y": y.detach(),
                "dx": x.grad,
                "grads": {n: p.grad.clone() for n, p in bn.named_parameters()},
                "buffers": {n: b.clone() for n, b in bn.named_buffers()},
            }
        )
        bn.zero_grad()
    record.append({"eval": bn.eval()(data(shape, STEPS)[0][rows]).detach()})
    return record


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2), bt.BatchNorm1d(2)
    ).double()


def run_model(model, rows):
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(7), dtype=F64)[rows]
    model(x).square().sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}, model.state_dict()


def worker(rank, world_size):
    results = {}
    for i, (shape, split, kwargs) in enumerate(CASES):
        start = sum(split[:rank])
        results[i] = run_bn(
            make_bn(SyncBatchNorm, kwargs), shape, slice(start, start + split[rank])
        )
    model = SyncBatchNorm.convert_sync_batchnorm(mlp())
    results["model"] = run_model(model, slice(5 * rank, 5 * rank + 5))
    torch.manual_seed(0)
    x, y = torch.randn(40, 4, dtype=F64), torch.arange(40) % 2
    results["trained"] = train_data_parallel(
        SyncBatchNorm.convert_sync_batchnorm(mlp()), x, y, per_process_batch=3, steps=3, lr=0.5
    ).state_dict()
    try:  # torch's own SyncBatchNorm refuses CPU tensors once a group exists
        nn.SyncBatchNorm(C)(torch.randn(4, C))
        results["torch_cpu_error"] = None
    except ValueError as e:
        results["torch_cpu_error"] = str(e)
    return results


@pytest.fixture(scope="module")
def two_ranks():
    return launch(worker, 2)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_two_processes_equal_batch_norm_on_the_whole_batch(two_ranks, case):
    shape, split, kwargs = CASES[case]
    ref = run_bn(
        make_bn(nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d, kwargs), shape, slice(None)
    )
    for step in range(STEPS):
        ranks = [r[case][step] for r in two_ranks]
        torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), ref[step]["y"], **TOL)
        torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), ref[step]["dx"], **TOL)
        for name, grad in ref[step]["grads"].items():  # local sums add up to the global ones
            torch.testing.assert_close(
                ranks[0]["grads"][name] + ranks[1]["grads"][name], grad, **TOL
            )
        for name, buf in ref[step]["buffers"].items():  # identical on both ranks
            for r in ranks:
                torch.testing.assert_close(r["buffers"][name], buf, **TOL)
    eval_out = torch.cat([r[case][STEPS]["eval"] for r in two_ranks])
    if kwargs.get("track_running_stats", True):
        torch.testing.assert_close(eval_out, ref[STEPS]["eval"], **TOL)
    else:  # no buffers: eval uses batch statistics, and like torch does not synchronize
        local = [
            run_bn(make_bn(nn.BatchNorm1d, kwargs), shape, rows)[STEPS]["eval"]
            for rows in (slice(0, split[0]), slice(split[0], None))
        ]
        torch.testing.assert_close(eval_out, torch.cat(local), **TOL)


def test_converted_model_equals_single_process_model(two_ranks):
    ref_grads, ref_state = run_model(mlp(), slice(None))
    (grads0, state0), (grads1, state1) = two_ranks[0]["model"], two_ranks[1]["model"]
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads0[name] + grads1[name], grad, **TOL)
    for state in (state0, state1):
        for name, value in ref_state.items():
            torch.testing.assert_close(state[name], value, **TOL)


def test_data_parallel_training_with_sync_bn_equals_one_process_on_the_global_batch(two_ranks):
    torch.manual_seed(0)
    x, y = torch.randn(40, 4, dtype=F64), torch.arange(40) % 2
    model, generator = mlp(), torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        idx = torch.randperm(40, generator=generator)[:6]  # the global batch of 2 x 3 rows
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    for rank in two_ranks:
        for name, value in model.state_dict().items():
            torch.testing.assert_close(rank["trained"][name], value, **TOL)


def test_torch_sync_batchnorm_refuses_cpu_in_a_process_group(two_ranks):
    assert "expected input tensor to be on GPU" in two_ranks[0]["torch_cpu_error"]


@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"track_running_stats": False}])
def test_without_process_group_falls_back_to_local_batch_norm(kwargs):
    ours, ref = make_bn(SyncBatchNorm, kwargs), make_bn(nn.SyncBatchNorm, kwargs)
    for a, b in zip(run_bn(ours, (6, C, 4), slice(None)), run_bn(ref, (6, C, 4), slice(None))):
        for key in a:
            torch.testing.assert_close(a[key], b[key], **TOL)
    assert list(ours.state_dict()) == list(ref.state_dict()) and repr(ours) == repr(ref)


def test_convert_sync_batchnorm_shares_parameters_and_buffers_like_torch():
    model = mlp().eval()
    ours = SyncBatchNorm.convert_sync_batchnorm(model)
    ref = nn.SyncBatchNorm.convert_sync_batchnorm(mlp().eval())
    assert repr(ours[:4]) == repr(ref[:4])  # torch converts torch.nn's BN only
    assert isinstance(ours[1], SyncBatchNorm) and isinstance(ours[4], SyncBatchNorm)
    assert ours[1].weight is model[1].weight and ours[1].running_var is model[1].running_var
    assert not ours[1].training
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert SyncBatchNorm.convert_sync_batchnorm(ours[1]) is ours[1]  # already synchronized


def test_merge_moments_is_exact_and_stable():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, C, generator=g, dtype=F64) + 1e8  # a large offset breaks E[x^2]-E[x]^2
    b = torch.randn(4, C, generator=g, dtype=F64) + 1e8
    m2 = lambda x: (x - x.mean(0)).square().sum(0)
    n_a, n_b = torch.full((C,), 7.0, dtype=F64), torch.full((C,), 4.0, dtype=F64)
    n, mean, s = merge_moments(n_a, a.mean(0), m2(a), n_b, b.mean(0), m2(b))
    both = torch.cat([a, b])
    torch.testing.assert_close(mean, both.mean(0), rtol=1e-15, atol=0)
    torch.testing.assert_close(s, m2(both), rtol=1e-6, atol=0)
    naive = both.square().sum(0) - 11 * both.mean(0).square()
    assert ((naive - m2(both)).abs() > 1.0).any()  # the naive one-pass formula fails here


def test_bad_input():
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        SyncBatchNorm(C)(torch.randn(5))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        SyncBatchNorm(C)(torch.randn(1, C))
