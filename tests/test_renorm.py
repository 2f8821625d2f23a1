"""Batch Renormalization (Ioffe, 2017): its defining properties, checked against torch.nn."""

import pytest
import torch
from torch import nn

import bnlib.torch as bt
from _reference import assert_steps_match
from bnlib.torch.renorm import renorm_correction

TOL = dict(rtol=1e-10, atol=1e-10)
F64 = torch.float64
PAIRS = [
    (bt.BatchRenorm1d, nn.BatchNorm1d, (16, 3)),
    (bt.BatchRenorm1d, nn.BatchNorm1d, (4, 3, 5)),
    (bt.BatchRenorm2d, nn.BatchNorm2d, (4, 3, 5, 6)),
]


def make_pair(cls, ref_cls, **kwargs):
    ours, ref = cls(3, dtype=F64, **kwargs), ref_cls(3, dtype=F64)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("cls,ref_cls,shape", PAIRS)
def test_r_max_1_d_max_0_is_plain_batch_norm_in_training(cls, ref_cls, shape):
    ours, ref = make_pair(cls, ref_cls, r_max=1.0, d_max=0.0)
    x = assert_steps_match(ours, ref, shape, TOL, steps=4, scale=2, shift=3)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x.detach()), ref(x.detach()), **TOL)


@pytest.mark.parametrize("cls,ref_cls,shape", PAIRS)
def test_unclipped_training_output_equals_inference_output(cls, ref_cls, shape):
    # With r and d unclipped, (x - mu_B) / sigma_B * r + d = (x - mu) / sigma: training mode
    # computes the inference function of the running (population) statistics.
    ours, _ = make_pair(cls, ref_cls, r_max=100.0, d_max=100.0)
    g = torch.Generator().manual_seed(1)
    population = torch.randn((256,) + shape[1:], generator=g, dtype=F64) * 2 + 3
    bt.recompute_bn_stats(ours, [population])
    x = torch.randn(shape, generator=g, dtype=F64) * 2 + 3
    expected = ours.eval()(x)  # before the training step moves the running statistics
    torch.testing.assert_close(ours.train()(x), expected, **TOL)
    plain = bt.BatchNorm1d(3, dtype=F64) if x.dim() < 4 else bt.BatchNorm2d(3, dtype=F64)
    plain.load_state_dict(ours.state_dict())
    assert (plain.train()(x) - expected).abs().max() > 1e-3  # plain BN differs in training


def test_r_and_d_are_constants_in_backprop():
    # The input gradient is r times batch norm's gradient (per channel), and d has none.
    ours, ref = make_pair(bt.BatchRenorm1d, nn.BatchNorm1d, r_max=2.0, d_max=0.5)
    with torch.no_grad():
        ours.running_mean.copy_(torch.tensor([0.0, 3.0, 10.0]))  # the last d gets clipped
        ours.running_var.copy_(torch.tensor([4.0, 1.0, 0.01]))  # the last r gets clipped
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(32, 3, generator=g, dtype=F64) * 2 + 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    mean, var = x.detach().mean(0), x.detach().var(0, unbiased=False)
    r, d = renorm_correction(
        mean, torch.sqrt(var + ours.eps), ours.running_mean, ours.running_var, ours.eps, 2.0, 0.5
    )
    assert r[2] == 2.0 and d[2] == -0.5  # the clipping is exercised
    dy = torch.randn(32, 3, generator=g, dtype=F64)
    ours(x).backward(dy)
    ref(x_ref).backward(dy * r)  # scaling dy by r scales BN's input gradient by r
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)
    # The output is r * x_hat_BN + d, scaled and shifted.
    x_hat = (x.detach() - mean) / torch.sqrt(var + ours.eps)
    ours2, _ = make_pair(bt.BatchRenorm1d, nn.BatchNorm1d, r_max=2.0, d_max=0.5)
    ours2.load_state_dict(
        {
            **ours.state_dict(),
            "running_mean": torch.tensor([0.0, 3.0, 10.0]),
            "running_var": torch.tensor([4.0, 1.0, 0.01]),
        }
    )
    torch.testing.assert_close(
        ours2(x.detach()), (x_hat * r + d) * ours.weight.detach() + ours.bias.detach(), **TOL
    )


def test_running_statistics_update_as_batch_norm_and_momentum_none():
    ours, ref = make_pair(bt.BatchRenorm2d, nn.BatchNorm2d, momentum=None)
    ref.momentum = None
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(4, 3, 2, 2, generator=g, dtype=F64)
        ours(x), ref(x)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for name, buf in ours.named_buffers():
        torch.testing.assert_close(buf, ref.get_buffer(name), **TOL)


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs track_running_stats=True"):
        bt.BatchRenorm1d(3, track_running_stats=False)
    with pytest.raises(ValueError, match=r"expected r_max >= 1 and d_max >= 0"):
        bt.BatchRenorm1d(3, r_max=0.5)
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        bt.BatchRenorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bt.BatchRenorm1d(3)(torch.randn(1, 3))
