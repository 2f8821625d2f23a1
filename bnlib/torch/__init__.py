"""Batch normalization in PyTorch, written from tensor operations, equal to ``torch.nn``."""
from .autograd import BatchNormFunction
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .functional import batch_norm
from .fold import fold_all_bn, fold_bn
from .groupnorm import GroupNorm, group_norm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, instance_norm
from .layernorm import LayerNorm, RMSNorm, layer_norm, rms_norm
from .precise import batch_norm_layers, recompute_bn_stats
from .renorm import BatchRenorm1d, BatchRenorm2d, batch_renorm, renorm_correction
from .sync import SyncBatchNorm, sync_batch_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormFunction", "batch_norm",
           "batch_norm_layers", "recompute_bn_stats", "fold_bn", "fold_all_bn", "GroupNorm", "group_norm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "instance_norm", "LayerNorm", "RMSNorm",
           "layer_norm", "rms_norm", "BatchRenorm1d", "BatchRenorm2d", "batch_renorm",
           "renorm_correction", "SyncBatchNorm", "sync_batch_norm"]
