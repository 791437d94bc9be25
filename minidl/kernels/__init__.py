"""Hot loops that NumPy alone makes slow: im2col/col2im, convolution, pooling.

Array-level functions only (no autograd): they take and return NumPy or CuPy arrays with
PyTorch's NCHW shapes. NumPy arrays run numba-compiled parallel kernels by default;
``set_backend("numpy")`` (or ``MINIDL_KERNELS=numpy``) switches them to the generic array
code that CuPy arrays always use, so both paths stay tested. 3x3 stride-1 convolutions with
16 or more channels run as Winograd F(4x4, 3x3) (``minidl.kernels.winograd``);
``set_conv_algorithm`` (or ``MINIDL_CONV_ALGORITHM``) chooses. Conv and pool outputs are
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
    get_conv_algorithm,
    set_conv_algorithm,
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
    "get_conv_algorithm",
    "im2col",
    "is_channels_last",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "set_backend",
    "set_conv_algorithm",
]
