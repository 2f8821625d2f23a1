"""Folding batch norm into Conv/Linear, against torch.nn.utils.fusion and the unfolded model."""

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import bnlib.torch as bt
from bnlib.experiments.models import mlp, small_cnn
from bnlib.torch import fold_all_bn, fold_bn
from bnlib.torch.precise import is_batch_norm

TOL = dict(rtol=1e-12, atol=1e-12)
F64 = torch.float64
LAYERS = [
    (lambda: nn.Linear(4, 3), nn.BatchNorm1d, (5, 4)),
    (lambda: nn.Linear(4, 3, bias=False), bt.BatchNorm1d, (5, 4)),
    (lambda: nn.Conv1d(2, 3, 3), nn.BatchNorm1d, (5, 2, 7)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1, bias=False), bt.BatchNorm2d, (5, 2, 6, 6)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, groups=1), nn.BatchNorm2d, (5, 2, 7, 7)),
    (lambda: nn.Conv3d(2, 3, 2), bt.BatchNorm3d, (5, 2, 4, 4, 4)),
]


def trained_bn(bn_cls, affine=True):
    """A BN layer with non-trivial running statistics and affine parameters."""
    bn = bn_cls(3, affine=affine, dtype=F64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3, generator=g, dtype=F64))
        bn.running_var.copy_(torch.rand(3, generator=g, dtype=F64) + 0.1)
        if affine:
            bn.weight.copy_(torch.randn(3, generator=g, dtype=F64))
            bn.bias.copy_(torch.randn(3, generator=g, dtype=F64))
    return bn.eval()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("make_layer,bn_cls,shape", LAYERS)
def test_fold_bn_equals_bn_of_layer_and_torch_fusion(make_layer, bn_cls, shape, affine):
    torch.manual_seed(0)
    layer, bn = make_layer().double().eval(), trained_bn(bn_cls, affine)
    folded = fold_bn(layer, bn)
    x = torch.randn(shape, dtype=F64)
    torch.testing.assert_close(folded(x), bn(layer(x)), **TOL)
    assert type(folded) is type(layer) and folded is not layer
    if isinstance(layer, nn.Linear) and not affine:
        return  # torch's fuse_linear_bn_eval fails on BN without weight (None * Tensor)
    ref_bn = trained_bn(getattr(nn, bn_cls.__name__), affine)  # torch's fusion wants torch BN
    fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
    ref = fuse(layer, ref_bn)
    torch.testing.assert_close(folded.weight, ref.weight, **TOL)
    torch.testing.assert_close(folded.bias, ref.bias, **TOL)


def test_fold_bn_refuses_bad_input():
    layer, bn = nn.Linear(4, 3), nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="only valid in evaluation mode"):
        fold_bn(layer, bn)
    with pytest.raises(ValueError, match="only valid in evaluation mode"):
        fold_bn(layer.eval(), bn.train())
    with pytest.raises(ValueError, match="with running statistics"):
        fold_bn(layer.eval(), nn.BatchNorm1d(3, track_running_stats=False).eval())
    with pytest.raises(
        ValueError,
        match="with 3 features to match the layer's output "
        r"channels \(got 5\)",
    ):
        fold_bn(layer.eval(), nn.BatchNorm1d(5).eval())
    with pytest.raises(ValueError, match="expected nn.Linear or nn.Conv1d/2d/3d"):
        fold_bn(nn.ReLU(), nn.BatchNorm1d(3).eval())
    with pytest.raises(ValueError, match="expected a batch-norm layer"):
        fold_bn(layer.eval(), nn.LayerNorm(3).eval())


def train_a_little(model, shape, steps=3):
    """A few training steps so running statistics and affine parameters are non-trivial."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(shape, generator=g, dtype=F64) + 0.5
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize(
    "model,shape",
    [
        (lambda: small_cnn(norm="batch", channels=4), (16, 1, 8, 8)),
        (lambda: mlp(in_features=6, hidden=5, depth=3, norm="batch"), (16, 6)),
        (
            lambda: nn.Sequential(
                nn.Conv2d(1, 3, 3),
                nn.BatchNorm2d(3),
                nn.ReLU(),
                nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)),  # nested
                nn.BatchNorm2d(3),  # after a Sequential: not folded
                nn.Flatten(),
            ),
            (16, 1, 6, 6),
        ),
    ],
)
def test_fold_all_bn_equals_original_in_eval(model, shape):
    torch.manual_seed(0)
    original = train_a_little(model().double(), shape)
    folded = fold_all_bn(original)
    x = torch.randn(shape, dtype=F64)
    torch.testing.assert_close(folded(x), original(x), **TOL)
    bns = lambda m: [x for x in m.modules() if is_batch_norm(x)]
    expected_left = 1 if isinstance(original[-1], nn.Flatten) else 0
    assert len(bns(folded)) == expected_left and len(bns(original)) > expected_left
    assert any(isinstance(m, nn.Identity) for m in folded.modules())


def test_fold_all_bn_refuses_training_mode_and_leaves_the_original_alone():
    model = small_cnn(norm="batch", channels=4)
    with pytest.raises(ValueError, match="call model.eval"):
        fold_all_bn(model)
    model.eval()
    fold_all_bn(model)
    assert sum(is_batch_norm(m) for m in model.modules()) == 3
