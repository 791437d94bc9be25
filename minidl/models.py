"""Ready-made CNNs for the examples: the seed tutorial net and a small ResNet with batch norm.

Both take NCHW images and return logits. ``seed_cnn`` is the Keras CIFAR-10 tutorial's
network; ``resnet9`` is the ResNet-9 layout popularized by fast CIFAR-10 training
(DAWNBench): three stages with max-pooling and two residual blocks, with a width knob so
it fits a CPU budget.
"""

from __future__ import annotations

from minidl import nn


def seed_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Sequential:
    """Conv(32,3x3,relu) -> MaxPool 2 -> Conv(64,3x3,relu) -> MaxPool 2 -> Flatten ->
    Dense(128,relu) -> Dense(classes).

    The ReLUs after the convolutions are fused into them (``activation="relu"``, as in the
    Keras original), which saves a pass over each activation map. For 3x32x32 input the
    shapes are: (32,30,30) -> (32,15,15) -> (64,13,13) -> (64,6,6)
    -> 2304 -> 128 -> 10; 315,722 parameters.

    >>> sum(p.size for p in seed_cnn().parameters())
    315722
    """
    s = ((image_size - 2) // 2 - 2) // 2
    if s < 1:
        raise ValueError(f"seed_cnn: image_size must be >= 10 (two 3x3 convolutions and two "
                         f"2x2 poolings leave no pixels otherwise), got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, activation="relu"), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, activation="relu"), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * s * s, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    # BN with a fused ReLU: one pass over the activation map instead of two
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout, activation="relu"))


class Residual(nn.Module):
    """``x + block(x)``: the identity shortcut of a ResNet.

    Args:
        block: a module whose output has the shape of its input.

    >>> import minidl
    >>> r = Residual(nn.Identity()); r(minidl.tensor([1.0, 2.0])).tolist()
    [2.0, 4.0]
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x + self.block(x)


class Scale(nn.Module):
    """Multiply by a constant (ResNet-9 scales its logits by 1/8 to temper early training).

    Args:
        factor: the constant; no parameter is learned.

    >>> import minidl
    >>> Scale(0.5)(minidl.tensor([2.0, 4.0])).tolist()
    [1.0, 2.0]
    """

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def resnet9(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Sequential:
    """ResNet-9 with batch norm; ``width`` is the first stage's channels (64 in the original,
    32 for a CPU budget: about a quarter of the FLOPs).

    Shapes for 3x32x32 input and width w: (w,32,32) -> (2w,16,16) + residual ->
    (4w,8,8) -> (8w,4,4) + residual -> global max pool (8w,) -> classes.

    >>> import minidl
    >>> model = resnet9(width=4)
    >>> sum(p.size for p in model.parameters()), model(minidl.zeros(2, 3, 32, 32)).shape
    (26340, (2, 10))
    """
    w = width
    return nn.Sequential(
        _conv_bn(in_channels, w),
        _conv_bn(w, 2 * w), nn.MaxPool2d(2),
        Residual(nn.Sequential(_conv_bn(2 * w, 2 * w), _conv_bn(2 * w, 2 * w))),
        _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
        _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2),
        Residual(nn.Sequential(_conv_bn(8 * w, 8 * w), _conv_bn(8 * w, 8 * w))),
        nn.MaxPool2d(4), nn.Flatten(),
        nn.Linear(8 * w, num_classes, bias=False), Scale(0.125),
    )
