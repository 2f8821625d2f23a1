"""``torch.optim.swa_utils.update_bn`` tests of torch 2.13's test/optim/test_swa_utils.py
(TestSWAUtils.test_update_bn_dnn, test_update_bn_cnn, test_bn_update_eval_momentum), run with
``torch.nn``'s and ``bnlib.torch``'s batch norm: the same models, data and assertions
(``assertEqual`` is ``torch.testing.assert_close``'s default tolerance). ``update_bn`` finds
batch norm by ``isinstance(m, torch.nn.modules.batchnorm._BatchNorm)``; a module that is not
one is silently skipped, so these tests fail for a batch norm that is not an instance.

Plus: ``torch.nn.utils.fuse_conv_bn_eval`` (what torch.ao and torch.fx fusion call) accepts
bnlib's ``BatchNorm2d`` and gives the result it gives for torch's. Not ported: the CUDA
branches and the AveragedModel tests (they involve no batch norm arithmetic).
"""

import pytest
import torch
from torch.optim.swa_utils import update_bn
from torch.testing import assert_close


class SWATestDNN(torch.nn.Module):
    def __init__(self, impl, input_features):
        super().__init__()
        self.n_features = 100
        self.fc1 = torch.nn.Linear(input_features, self.n_features)
        self.bn = impl.nn.BatchNorm1d(self.n_features)

    def compute_preactivation(self, x):
        return self.fc1(x)

    def forward(self, x):
        return self.bn(self.fc1(x))


class SWATestCNN(torch.nn.Module):
    def __init__(self, impl, input_channels):
        super().__init__()
        self.n_features = 10
        self.conv1 = torch.nn.Conv2d(input_channels, self.n_features, kernel_size=3, padding=1)
        self.bn = impl.nn.BatchNorm2d(self.n_features, momentum=0.3)

    def compute_preactivation(self, x):
        return self.conv1(x)

    def forward(self, x):
        return self.bn(self.conv1(x))


def _loaders(x):
    y = torch.rand(x.shape[0])
    ds_x = torch.utils.data.TensorDataset(x)
    ds_xy = torch.utils.data.TensorDataset(x, y)
    return (
        torch.utils.data.DataLoader(ds_x, batch_size=5, shuffle=True),
        torch.utils.data.DataLoader(ds_xy, batch_size=5, shuffle=True),
    )


def _test_update_bn(dnn, dl_x, dl_xy):
    preactivation_sum = torch.zeros(dnn.n_features)
    preactivation_squared_sum = torch.zeros(dnn.n_features)
    total_num = 0
    for x in dl_x:
        x = x[0]
        dnn.forward(x)
        preactivations = dnn.compute_preactivation(x)
        if len(preactivations.shape) == 4:
            preactivations = preactivations.transpose(1, 3)
        preactivations = preactivations.contiguous().view(-1, dnn.n_features)
        total_num += preactivations.shape[0]
        preactivation_sum += torch.sum(preactivations, dim=0)
        preactivation_squared_sum += torch.sum(preactivations**2, dim=0)
    preactivation_mean = preactivation_sum / total_num
    preactivation_var = preactivation_squared_sum / total_num
    preactivation_var = preactivation_var - preactivation_mean**2

    update_bn(dl_xy, dnn, device=x.device)
    assert_close(preactivation_mean, dnn.bn.running_mean)
    assert_close(preactivation_var, dnn.bn.running_var, atol=1e-1, rtol=0)

    def _reset_bn(module):
        if issubclass(module.__class__, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean = torch.zeros_like(module.running_mean)
            module.running_var = torch.ones_like(module.running_var)

    # reset batch norm and run update_bn again
    dnn.apply(_reset_bn)
    update_bn(dl_xy, dnn, device=x.device)
    assert_close(preactivation_mean, dnn.bn.running_mean)
    assert_close(preactivation_var, dnn.bn.running_var, atol=1e-1, rtol=0)
    # using the dl_x loader instead of dl_xy
    dnn.apply(_reset_bn)
    update_bn(dl_x, dnn, device=x.device)
    assert_close(preactivation_mean, dnn.bn.running_mean)
    assert_close(preactivation_var, dnn.bn.running_var, atol=1e-1, rtol=0)


def test_update_bn_dnn(impl):
    torch.manual_seed(0)
    objects, input_features = 100, 5
    dl_x, dl_xy = _loaders(torch.rand(objects, input_features))
    dnn = SWATestDNN(impl, input_features=input_features)
    dnn.train()
    _test_update_bn(dnn, dl_x, dl_xy)
    assert dnn.training


def test_update_bn_cnn(impl):
    torch.manual_seed(0)
    objects, input_channels, height, width = 100, 3, 5, 5
    dl_x, dl_xy = _loaders(torch.rand(objects, input_channels, height, width))
    cnn = SWATestCNN(impl, input_channels=input_channels)
    cnn.train()
    _test_update_bn(cnn, dl_x, dl_xy)
    assert cnn.training


def test_bn_update_eval_momentum(impl):
    # check that update_bn preserves eval mode
    torch.manual_seed(0)
    dl_x, _ = _loaders(torch.rand(100, 3, 5, 5))
    cnn = SWATestCNN(impl, input_channels=3)
    cnn.eval()
    update_bn(dl_x, cnn)
    assert not cnn.training
    # check that momentum is preserved
    assert cnn.bn.momentum == 0.3


@pytest.mark.parametrize("bias", [True, False])
def test_fuse_conv_bn_eval_accepts_bnlib(impl, bias):
    """The fused convolution computes conv -> bn in eval mode, and bnlib's batch norm
    fuses to the same convolution as torch's with the same state."""
    from torch.nn.utils import fuse_conv_bn_eval

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, bias=bias).double().eval()
    bn = impl.nn.BatchNorm2d(4, dtype=torch.float64)
    bn.train()
    for _ in range(3):  # give it non-trivial running statistics
        bn(conv(torch.randn(8, 3, 6, 6, dtype=torch.float64) * 3 + 1))
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    bn.eval()
    ref_bn = torch.nn.BatchNorm2d(4, dtype=torch.float64).eval()
    ref_bn.load_state_dict(bn.state_dict())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    fused = fuse_conv_bn_eval(conv, bn)
    ref = fuse_conv_bn_eval(conv, ref_bn)
    with torch.no_grad():
        assert_close(fused(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
        assert_close(fused.weight, ref.weight, rtol=0, atol=0)
        assert_close(fused.bias, ref.bias, rtol=0, atol=0)


def test_bnlib_batch_norms_are_torch_batch_norms():
    """What update_bn, fusion and convert_sync_batchnorm test; instance norm is not batch
    norm (as in torch: InstanceNorm derives from _NormBase only)."""
    import bnlib.torch as bt

    base = torch.nn.modules.batchnorm
    for cls in (bt.BatchNorm1d, bt.BatchNorm2d, bt.BatchNorm3d, bt.SyncBatchNorm):
        assert issubclass(cls, base._BatchNorm), cls
    for cls in (bt.InstanceNorm1d, bt.InstanceNorm2d, bt.InstanceNorm3d):
        assert issubclass(cls, base._NormBase) and not issubclass(cls, base._BatchNorm), cls
