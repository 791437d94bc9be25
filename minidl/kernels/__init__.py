"""Hot loops that NumPy alone makes slow: im2col/col2im, convolution, pooling.

Array-level functions only (no autograd): they take and return NumPy or CuPy arrays with
PyTorch's NCHW shapes. NumPy arrays run numba-compiled parallel kernels by default;
``set_backend("numpy")`` (or ``MINIDL_KERNELS=numpy``) switches them to the generic array
code that CuPy arrays always use, so both paths stay tested. Conv and pool outputs are
channels-last in memory (see ``minidl.kernels.conv``).
"""

from minidl.kernels._common import clear_scratch, get_backend, is_channels_last, set_backend
from minidl.kernels.conv import (
    ConvGeometry,
    conv2d_backward,
    conv2d_forward,
    conv2d_geometry,
    conv2d_grad_input,
    conv2d_grad_weight,
)
from minidl.kernels.im2col import col2im, im2col
from minidl.kernels.pool import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)

__all__ = [
    "ConvGeometry",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "clear_scratch",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_geometry",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "get_backend",
    "im2col",
    "is_channels_last",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "set_backend",
]
