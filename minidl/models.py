"""Ready-made CNNs for the examples: the seed tutorial net, a small ResNet with batch norm
and airbench's fast CIFAR-10 net.

All take NCHW images and return logits. ``seed_cnn`` is the Keras CIFAR-10 tutorial's
network; ``resnet9`` is the ResNet-9 layout popularized by fast CIFAR-10 training
(DAWNBench): three stages with max-pooling and two residual blocks, with a width knob so
it fits a CPU budget. ``airbench94`` is the network of Keller Jordan's airbench94 recipe
(94% on CIFAR-10 in a few GPU-seconds): a frozen patch-whitening conv and three
conv-pool-BN-GELU groups; ``airbench94_param_groups`` gives its optimizer groups.
For differentially private training: ``dp_cnn`` (GroupNorm, tanh), and ``scatter_linear``
and ``scatter_cnn``, small trainable heads on fixed wavelet scattering features.
``MODELS`` names them all and ``build_model(name, **kwargs)`` builds one by name, which is
how ``minidl.predict`` rebuilds the network a checkpoint describes.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from minidl import nn
from minidl.autograd import Tensor
from minidl.nn import init


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


def dp_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 32,
           image_size: int = 32) -> nn.Sequential:
    """A small CNN for differentially private training (``minidl.privacy``): three
    Conv(3x3, same) -> GroupNorm -> Tanh -> MaxPool 2 blocks of ``width``, ``2 * width``,
    ``2 * width`` channels, then one Linear layer.

    Why this shape: DP-SGD adds noise of the same size to every parameter, so a small net
    (67 K parameters at width 32) loses less signal to it; batch norm cannot be used (it
    mixes examples), GroupNorm takes its place; tanh's bounded activations keep gradients,
    hence clipping, well behaved (Papernot et al. 2021, "tempered sigmoids"). For 3x32x32
    input: (32,32,32) -> (32,16,16) -> (64,8,8) -> (64,4,4) -> 1024 -> 10.

    >>> sum(p.size for p in dp_cnn().parameters())
    66890
    """
    if image_size % 8:
        raise ValueError(f"dp_cnn: image_size must be a multiple of 8 (three 2x2 poolings), "
                         f"got {image_size}")
    chans = (width, 2 * width, 2 * width)
    layers: list[nn.Module] = []
    cin = in_channels
    for c in chans:
        layers += [nn.Conv2d(cin, c, 3, padding=1), nn.GroupNorm(min(16, c), c), nn.Tanh(),
                   nn.MaxPool2d(2)]
        cin = c
    s = image_size // 8
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(chans[-1] * s * s, num_classes))


def _scatter_front(in_channels: int, image_size: int, J: int, L: int, groups: int,
                   features: bool) -> tuple[list[tuple[str, nn.Module]], int, int]:
    """The fixed front of the scattering models: ``Scattering2D`` (left out when the input
    is already its output) and a parameter-free GroupNorm over its channels. Returns the
    named layers, the channels and the side of the feature maps."""
    scattering = nn.Scattering2D(J=J, L=L)
    channels, side = scattering.out_channels(in_channels), image_size // 2 ** J
    if groups < 1 or channels % groups:
        raise ValueError(f"scattering model: groups must divide the {channels} scattering "
                         f"channels, got {groups}")
    layers = [] if features else [("scattering", scattering)]
    # Scattering coefficients differ in scale by orders of magnitude between orders;
    # normalizing each group of related maps per example puts them on one scale without
    # looking at other examples (so it costs no privacy, unlike data-set statistics).
    layers.append(("norm", nn.GroupNorm(groups, channels, affine=False)))
    return layers, channels, side


def scatter_linear(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                   J: int = 2, L: int = 8, groups: int = 27,
                   features: bool = False) -> nn.Sequential:
    """A linear classifier on wavelet scattering features (Tramer & Boneh 2021's
    "ScatterNet + linear"): ``Scattering2D(J, L)`` -> ``GroupNorm(groups, affine=False)``
    -> ``Linear``. The only trainable layer is the last, which is what makes it strong
    under DP-SGD: all the noise goes into 155 K weights that see fixed, good features.
    For 3x32x32 input: (243, 8, 8) -> 15552 -> 10.

    ``features=True`` leaves out the transform, for inputs that are its output already
    (computed once for a data set, as ``examples/cifar10_dp.py`` does); the parameter
    names are the same either way, so a model trained on features loads into one that
    takes images.

    >>> sum(p.size for p in scatter_linear().parameters())
    155530
    """
    layers, channels, side = _scatter_front(in_channels, image_size, J, L, groups, features)
    layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(channels * side * side,
                                                            num_classes))]
    return nn.Sequential(OrderedDict(layers))


def scatter_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                J: int = 2, L: int = 8, groups: int = 27, width: int = 64,
                features: bool = False) -> nn.Sequential:
    """A small CNN on wavelet scattering features (Tramer & Boneh 2021's "ScatterNet +
    CNN"): the front of ``scatter_linear``, then Conv(3x3) -> Tanh -> MaxPool 2 ->
    Conv(3x3) -> Tanh -> Linear. For 3x32x32 input: (243, 8, 8) -> (64, 4, 4) -> 1024 ->
    10. ``features`` as in ``scatter_linear``.

    >>> sum(p.size for p in scatter_cnn().parameters())
    187210
    """
    layers, channels, side = _scatter_front(in_channels, image_size, J, L, groups, features)
    if side % 2:
        raise ValueError(f"scatter_cnn: image_size / 2**J must be even (one 2x2 pooling), "
                         f"got {side}")
    layers += [("conv1", nn.Conv2d(channels, width, 3, padding=1)), ("act1", nn.Tanh()),
               ("pool", nn.MaxPool2d(2)),
               ("conv2", nn.Conv2d(width, width, 3, padding=1)), ("act2", nn.Tanh()),
               ("flatten", nn.Flatten()),
               ("fc", nn.Linear(width * (side // 2) ** 2, num_classes))]
    return nn.Sequential(OrderedDict(layers))


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


def _airbench_conv(cin: int, cout: int, kernel_size: int = 3, padding: Any = "same",
                   bias: bool = False) -> nn.Conv2d:
    # airbench's Conv: PyTorch's default init, then a zero bias and identity (dirac) filters
    # in the first C_in output channels, so that at step 0 each conv passes its input on.
    conv = nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=bias)
    if conv.bias is not None:
        init.zeros_(conv.bias)
    init.dirac_(Tensor(conv.weight.data[:cin]))  # a Tensor over a view: fills in place
    return conv


def _frozen_scale_batch_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    # The scale stays 1 (not trained): the following conv can absorb any scale; the shift
    # is trained.
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


def _conv_group(cin: int, cout: int, momentum: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv1", _airbench_conv(cin, cout)), ("pool", nn.MaxPool2d(2)),
        ("norm1", _frozen_scale_batch_norm(cout, momentum)), ("act1", nn.GELU()),
        ("conv2", _airbench_conv(cout, cout)),
        ("norm2", _frozen_scale_batch_norm(cout, momentum)), ("act2", nn.GELU()),
    ]))


def airbench94(num_classes: int = 10, widths: Sequence[int] = (64, 256, 256),
               batchnorm_momentum: float = 0.4, scaling_factor: float = 1 / 9
               ) -> nn.Sequential:
    """The airbench94 CIFAR-10 network (KellerJordan/cifar10-airbench, ``legacy/``).

    ``whiten`` (Conv 3->24, 2x2, no padding, bias; weight frozen) -> GELU -> three groups
    ``group1..3`` of ``conv1`` (3x3 'same', no bias) -> ``pool`` (MaxPool 2) -> ``norm1``
    -> GELU -> ``conv2`` -> ``norm2`` -> GELU, then MaxPool 3 -> Flatten -> ``head``
    (Linear, no bias) -> ``scale`` (logits times ``scaling_factor``).

    Shapes for 3x32x32 input and widths (a, b, c): (24,31,31) -> (a,15,15) -> (b,7,7) ->
    (c,3,3) -> (c,1,1) -> c -> classes. Square inputs of 25 to 48 pixels all end in that
    1x1 map before ``head``; others fail there with a ``Linear`` shape error.

    * Every batch norm has ``eps=1e-12`` and a frozen scale: ``weight`` stays 1
      (``requires_grad=False``), ``bias`` is trained. ``batchnorm_momentum`` is in
      PyTorch's convention (weight of the new batch; airbench writes 0.6 for ``1 - 0.4``).
    * Each 3x3 conv starts from the default init with identity filters (``nn.init.dirac_``)
      in its first C_in output channels.
    * ``whiten.weight`` is frozen and meant to be set from data with
      ``nn.init.patch_whitening_(model.whiten.weight, train_images)`` (airbench uses 5000
      normalized training images); until then it holds the default init. Its bias starts at
      0 and is trained (airbench trains it for the first 3 epochs only: set
      ``model.whiten.bias.requires_grad = False`` afterwards).

    Parameters are ``Optimizer``-ready through ``airbench94_param_groups`` (frozen ones are
    left out; an optimizer refuses them). The model is a ``Sequential``, so each
    ``conv1 -> pool`` pair runs as one fused conv + max-pool op.

    Args:
        num_classes: outputs of ``head``.
        widths: output channels of the three groups.
        batchnorm_momentum: in [0, 1], the running statistics' weight of each new batch.
        scaling_factor: multiplies the logits (1/9 tempers early training).

    >>> import minidl
    >>> model = airbench94(widths=(8, 16, 16))
    >>> model(minidl.zeros(2, 3, 32, 32)).shape, model.num_parameters(trainable_only=True)
    ((2, 10), 10632)
    >>> model.whiten.weight.requires_grad, model.group1.norm1.weight.requires_grad
    (False, False)
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"airbench94: num_classes must be >= 1, got {num_classes}")
    ws = tuple(widths)
    if len(ws) != 3 or not all(isinstance(w, int) and w >= 1 for w in ws):
        raise ValueError(f"airbench94: widths must be three positive ints (the channels of "
                         f"the three conv groups), got {widths!r}")
    if not 0.0 <= float(batchnorm_momentum) <= 1.0:
        raise ValueError(f"airbench94: batchnorm_momentum must be in [0, 1] (PyTorch's "
                         f"convention), got {batchnorm_momentum}")
    if not math.isfinite(float(scaling_factor)):
        raise ValueError(f"airbench94: scaling_factor must be finite, got {scaling_factor}")
    in_channels, kernel = 3, 2
    whiten_width = 2 * in_channels * kernel * kernel
    whiten = _airbench_conv(in_channels, whiten_width, kernel, padding=0, bias=True)
    whiten.weight.requires_grad_(False)
    m = float(batchnorm_momentum)
    return nn.Sequential(OrderedDict([
        ("whiten", whiten), ("act", nn.GELU()),
        ("group1", _conv_group(whiten_width, ws[0], m)),
        ("group2", _conv_group(ws[0], ws[1], m)),
        ("group3", _conv_group(ws[1], ws[2], m)),
        ("pool", nn.MaxPool2d(3)), ("flatten", nn.Flatten()),
        ("head", nn.Linear(ws[2], num_classes, bias=False)),
        ("scale", Scale(scaling_factor)),
    ]))


def airbench94_param_groups(model: nn.Module, lr: float, weight_decay: float,
                            bias_scaler: float = 64.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups in airbench's style: batch-norm parameters get
    ``bias_scaler`` times the learning rate, the rest ``lr``.

    The weight-decay *step* (``lr * weight_decay`` in ``SGD``, whose decay is added to the
    gradient) is the same in both groups: the batch-norm group gets ``weight_decay /
    bias_scaler``. Parameters with ``requires_grad=False`` (the frozen whitening weight and
    batch-norm scales of ``airbench94``) are left out, and so is a group with no
    parameters. Works for any model: batch-norm parameters are found by module type
    (``BatchNorm1d``/``BatchNorm2d``), not by name. Parameters come as ``(name, param)``
    pairs, so optimizer state is keyed by name.

    Args:
        model: the model.
        lr: learning rate of the other parameters (>= 0).
        weight_decay: their weight decay (>= 0).
        bias_scaler: learning-rate multiplier of the batch-norm parameters (> 0).

    Returns:
        ``[{"params": [...], "lr": lr * bias_scaler, "weight_decay": weight_decay /
        bias_scaler}, {"params": [...], "lr": lr, "weight_decay": weight_decay}]``.

    >>> import minidl
    >>> groups = airbench94_param_groups(airbench94(widths=(8, 8, 8)), 0.01, 0.5)
    >>> [(len(g["params"]), g["lr"], g["weight_decay"]) for g in groups]
    [(6, 0.64, 0.0078125), (8, 0.01, 0.5)]
    >>> opt = minidl.optim.SGD(groups, momentum=0.85, nesterov=True)
    """
    op = "airbench94_param_groups"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}: model must be an nn.Module, got {type(model).__name__}")
    lr, weight_decay, bias_scaler = float(lr), float(weight_decay), float(bias_scaler)
    if not lr >= 0:
        raise ValueError(f"{op}: lr must be >= 0, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"{op}: weight_decay must be >= 0, got {weight_decay}")
    if not bias_scaler > 0:
        raise ValueError(f"{op}: bias_scaler must be > 0, got {bias_scaler}")
    norm_ids = {id(p) for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
                for p in m.parameters()}
    norm, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (norm if id(p) in norm_ids else other).append((name, p))
    if not norm and not other:
        raise ValueError(f"{op}: {type(model).__name__} has no parameter that requires grad")
    groups = [{"params": norm, "lr": lr * bias_scaler,
               "weight_decay": weight_decay / bias_scaler},
              {"params": other, "lr": lr, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed_cnn": seed_cnn,
    "dp_cnn": dp_cnn,
    "scatter_linear": scatter_linear,
    "scatter_cnn": scatter_cnn,
    "resnet9": resnet9,
    "airbench94": airbench94,
}
"""The bundled architectures by name, as a checkpoint's prediction metadata names them
(``{"model": {"name": "resnet9", "kwargs": {"width": 32}}}``): a name picks a builder
here and never imports or runs anything else, so a checkpoint cannot bring its own code."""


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the bundled architecture ``name`` (a key of ``MODELS``) with ``kwargs``.

    Raises:
        ValueError: an unknown name, or arguments the builder does not take (both listed).

    >>> import minidl
    >>> model = build_model("resnet9", num_classes=3, width=4)
    >>> model(minidl.zeros(1, 3, 32, 32)).shape
    (1, 3)
    """
    builder = MODELS.get(name) if isinstance(name, str) else None
    if builder is None:
        raise ValueError(f"build_model: unknown architecture {name!r}; minidl.models has "
                         f"{', '.join(sorted(MODELS))}")
    params = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"build_model: {name} takes no argument(s) {', '.join(unknown)} "
                         f"(it takes {', '.join(params)})")
    return builder(**kwargs)
