"""Batch normalization in PyTorch, written from tensor operations, equal to ``torch.nn``."""
from .autograd import BatchNormFunction
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .functional import batch_norm
from .precise import recompute_bn_stats

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormFunction", "batch_norm",
           "recompute_bn_stats"]
