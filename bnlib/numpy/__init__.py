"""Batch normalization in NumPy: the functional core, a layer, and a gradient checker."""
from .batchnorm import (BatchNormCache, batch_norm_backward, batch_norm_backward_staged,
                        batch_norm_forward)
from .gradcheck import numerical_gradient, relative_error
from .layer import BatchNorm
from .norms import (group_norm_backward, group_norm_forward, layer_norm_backward,
                    layer_norm_forward)

__all__ = [
    "BatchNorm",
    "BatchNormCache",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "batch_norm_forward",
    "group_norm_backward",
    "group_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "numerical_gradient",
    "relative_error",
]
