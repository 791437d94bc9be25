"""minidl: a small deep-learning framework on NumPy (CPU) and CuPy (GPU), built to learn from.

>>> import minidl
>>> x = minidl.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> (x * x).sum().backward()
>>> x.grad
tensor([2., 4., 6.])
"""

from minidl import amp, data, distributed, functional, models, nn, optim, privacy, train
from minidl.autograd import (
    Function,
    Tensor,
    enable_grad,
    from_dlpack,
    is_grad_enabled,
    no_grad,
    ones,
    rand,
    randn,
    set_grad_enabled,
    tensor,
    zeros,
)
from minidl.backend import Device, cuda_is_available
from minidl.gradcheck import gradcheck, gradgradcheck
from minidl.inference import predict
from minidl.random import manual_seed
from minidl.serialization import load, save

# The engine cannot import the ops above it: bind Tensor's operators and methods (x + y,
# x.sum(), x.to(device), ...) to minidl.functional here, once.
functional.setup_tensor()

__version__ = "0.1.0"

__all__ = [
    "Device", "Function", "amp", "Tensor", "cuda_is_available", "data", "distributed",
    "enable_grad", "from_dlpack", "functional", "models", "privacy", "train",
    "gradcheck", "gradgradcheck", "is_grad_enabled", "load", "manual_seed", "nn", "no_grad",
    "ones", "optim", "predict", "rand", "randn", "save", "set_grad_enabled", "tensor",
    "zeros",
]
