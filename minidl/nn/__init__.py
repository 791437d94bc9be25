"""Neural-network building blocks (``minidl.nn``): ``Module``, ``Parameter``, layers,
containers, losses, initializers (``minidl.nn.init``), ``summary`` and ``LayerStats``
(per-layer activation and gradient statistics, for debugging).

``minidl.nn.functional`` is the very same module object as ``minidl.functional`` (PyTorch's
spelling, ``import minidl.nn.functional as F``), so every op added there appears here too.
"""

import sys

import minidl.functional as functional
from minidl.nn import init
from minidl.nn.container import ModuleList, Sequential
from minidl.nn.conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from minidl.nn.fusion import fusion_enabled, set_fusion
from minidl.nn.layers import (
    GELU,
    Dense,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    ReLU,
    Scattering2D,
    Sigmoid,
    Softmax,
    Tanh,
)
from minidl.nn.loss import CrossEntropyLoss, MSELoss
from minidl.nn.module import Module, Parameter
from minidl.nn.norm import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from minidl.nn.stats import LayerStats
from minidl.nn.summary import summary

# Make ``import minidl.nn.functional`` resolve to minidl.functional itself.
sys.modules[__name__ + ".functional"] = functional

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d",
    "CrossEntropyLoss", "Dense", "Dropout", "Flatten", "GELU", "GroupNorm", "Identity",
    "LayerNorm",
    "LayerStats",
    "LeakyReLU", "Linear", "MSELoss", "MaxPool2d", "Module", "ModuleList", "Parameter", "ReLU",
    "Scattering2D", "Sequential", "Sigmoid", "Softmax", "Tanh", "functional", "fusion_enabled",
    "init", "set_fusion", "summary",
]
