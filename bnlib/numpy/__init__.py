"""Batch normalization in NumPy: the functional core, a layer, and a gradient checker."""
from .batchnorm import (BatchNormCache, batch_norm_backward, batch_norm_backward_staged,
                        batch_norm_forward)
from .fast import (FastBatchNormCache, batch_norm_backward_fast, batch_norm_forward_fast,
                   batch_stats_fast)
from .gradcheck import numerical_gradient, relative_error
from .layer import BatchNorm
from .norms import (group_norm_backward, group_norm_forward, layer_norm_backward,
                    layer_norm_forward)

__all__ = [
    "BatchNorm",
    "BatchNormCache",
    "FastBatchNormCache",
    "batch_norm_backward",
    "batch_norm_backward_fast",
    "batch_norm_backward_staged",
    "batch_norm_forward",
    "batch_norm_forward_fast",
    "batch_stats_fast",
    "group_norm_backward",
    "group_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "numerical_gradient",
    "relative_error",
]
