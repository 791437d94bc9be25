"""2-D convolution as an autograd op, on top of the array kernels in ``minidl.kernels.conv``.

Shapes (PyTorch's): input ``x (N, C, H, W)``, weight ``w (OC, C/groups, KH, KW)``, bias
``b (OC,)``, output ``y (N, OC, OH, OW)`` with
``OH = floor((H + PH_top + PH_bottom - DH*(KH-1) - 1) / SH) + 1`` (likewise OW).

Forward is im2col + one GEMM. Backward needs two products:

* ``gx``: a *transposed* convolution of ``gy`` with ``w`` (GEMM, then col2im);
* ``gw``: ``gy`` (as rows) times ``im2col(x)``; ``gb``: ``gy`` summed over N, OH, OW.

In an ordinary backward pass all three come from one kernel call that shares the
reshaped ``gy``. Under ``create_graph=True`` backward is instead written with the two
differentiable ops ``Conv2dGradInputFunction`` and ``Conv2dGradWeightFunction``, whose
own backwards are convolutions again, so conv2d has second derivatives too.
"""

from __future__ import annotations

from typing import Any

from minidl import _deprecated
from minidl.autograd import Function, Tensor, is_grad_enabled
from minidl.functional.math import lower
from minidl.kernels import conv as K

# Forward keeps its im2col matrix for the weight gradient when it is at most this big, so
# backward need not rebuild it (one im2col pass saved per layer and step). The matrix is
# KH*KW times the input, so big layers rebuild it instead of holding it for a whole step.
KEEP_COLS_MAX_BYTES = 32 * 2**20


def keep_cols(fn: Function, g: K.ConvGeometry, itemsize: int) -> bool:
    """Whether forward should keep its im2col matrix: the weight needs a gradient and the
    matrix (N*OH*OW, KH*KW*C) is at most ``KEEP_COLS_MAX_BYTES``."""
    return (fn.needs_input_grad[1:2] == (True,)
            and g.n * g.oh * g.ow * g.kh * g.kw * g.c * itemsize <= KEEP_COLS_MAX_BYTES)


class Conv2dFunction(Function):
    """``y = conv2d(x, w) + b`` (then ReLU if ``relu``): x (N, C, H, W), w (OC, C/groups,
    KH, KW), b (OC,), y (N, OC, OH, OW); options ``args = (stride, padding, dilation, groups)``.

    Backward: ``gx = conv_transpose(gy, w)`` (N, C, H, W), ``gw = rows(gy)^T @ im2col(x)``
    (OC, C/groups, KH, KW), ``gb = gy.sum((0, 2, 3))`` (OC,); with ``relu``, gy is first
    masked by ``y > 0``.
    """

    relu = False

    def forward(self, x: Any, w: Any, b: Any = None) -> Any:
        self.cols = None
        keep = keep_cols(self, K.conv2d_geometry(x.shape, w.shape, *self.args), x.itemsize)
        out = K.conv2d_forward(x, w, b, *self.args, relu=self.relu, return_cols=keep)
        if keep:
            out, self.cols = out
        return out

    def _release(self) -> None:
        # the im2col matrix lives as long as the other saved values: a retained graph
        # keeps it for the next backward
        super()._release()
        self.cols = None

    def backward(self, gy: Tensor) -> tuple:
        x, w = self.inputs[:2]
        need = self.needs_input_grad
        has_bias = len(self.inputs) == 3
        y = self.output().data if self.relu else None
        if not is_grad_enabled():  # plain backward: one fused kernel call
            gx, gw, gb = K.conv2d_backward(
                x.data, w.data, gy.data, *self.args, cols=self.cols, relu_output=y,
                need_input_grad=need[0], need_weight_grad=need[1],
                need_bias_grad=has_bias and need[2])
            grads = tuple(None if g is None else Tensor._make(g, False) for g in (gx, gw, gb))
        else:  # create_graph: differentiable pieces
            if y is not None:
                gy = gy * Tensor._make((y > 0).astype(gy.dtype), False)
            grads = differentiable_grads(x, w, gy, self.args, need, has_bias)
        return grads if has_bias else grads[:2]


def differentiable_grads(x: Tensor, w: Tensor, gy: Tensor, args: tuple,
                         need: tuple[bool, ...], has_bias: bool) -> tuple:
    """(gx, gw, gb) of a conv from its output gradient ``gy`` (already ReLU-masked), built
    from differentiable ops so that ``create_graph=True`` gives second derivatives."""
    gx = Conv2dGradInputFunction.apply(gy, w, x_shape=x.shape, args=args) if need[0] else None
    gw = Conv2dGradWeightFunction.apply(x, gy, w_shape=w.shape, args=args) if need[1] else None
    gb = gy.sum(axis=(0, 2, 3)) if has_bias and need[2] else None
    return gx, gw, gb


def checked_inputs(op: str, x: Any, weight: Any, bias: Any, activation: Any) -> tuple:
    """Lower to float16 inside autocast, check types and ``activation``; return
    ``(x, weight, bias)`` for a conv-like op named ``op`` in errors."""
    x, weight, bias = lower(x, weight, bias)  # float16 GEMM inside autocast
    for name, t in (("input", x), ("weight", weight), ("bias", bias)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if activation not in (None, "relu"):
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    return x, weight, bias


class Conv2dGradInputFunction(Function):
    """``gx = conv_transpose(gy, w)`` as a differentiable op (inputs gy, w).

    Shapes: gy (N, OC, OH, OW), w (OC, C/groups, KH, KW), gx of ``x_shape`` (N, C, H, W).
    Backward: ``d_gy = conv2d(ggx, w)``, ``d_w = Conv2dGradWeightFunction(ggx, gy)``.
    """

    def forward(self, gy: Any, w: Any) -> Any:
        return K.conv2d_grad_input(gy, w, self.x_shape, *self.args)

    def backward(self, ggx: Tensor) -> tuple:
        gy, w = self.inputs
        d_gy = Conv2dFunction.apply(ggx, w, args=self.args) if self.needs_input_grad[0] else None
        d_w = Conv2dGradWeightFunction.apply(ggx, gy, w_shape=w.shape, args=self.args) \
            if self.needs_input_grad[1] else None
        return d_gy, d_w


class Conv2dGradWeightFunction(Function):
    """``gw = rows(gy)^T @ im2col(x)`` as a differentiable op (inputs x, gy).

    Shapes: x (N, C, H, W), gy (N, OC, OH, OW), gw of ``w_shape`` (OC, C/groups, KH, KW).
    Backward: ``d_x = Conv2dGradInputFunction(gy, ggw)``, ``d_gy = conv2d(x, ggw)``.
    """

    def forward(self, x: Any, gy: Any) -> Any:
        return K.conv2d_grad_weight(x, gy, self.w_shape, *self.args)

    def backward(self, ggw: Tensor) -> tuple:
        x, gy = self.inputs
        d_x = Conv2dGradInputFunction.apply(gy, ggw, x_shape=x.shape, args=self.args) \
            if self.needs_input_grad[0] else None
        d_gy = Conv2dFunction.apply(x, ggw, args=self.args) if self.needs_input_grad[1] else None
        return d_x, d_gy


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    activation: str | None = None,
) -> Tensor:
    """2-D convolution (cross-correlation, as in every framework), NCHW.

    Args:
        x: ``(N, C, H, W)``.
        weight: ``(OC, C // groups, KH, KW)``.
        bias: ``(OC,)`` or None.
        stride: int or ``(SH, SW)``, each >= 1.
        padding: int, ``(PH, PW)``, ``(top, bottom, left, right)``, ``"valid"`` (0) or
            ``"same"`` (output size = input size; stride must be 1).
        dilation: int or ``(DH, DW)``.
        groups: split channels into this many independent convolutions.
        activation: ``None`` or ``"relu"``: apply ReLU in the same pass that adds the bias
            (Keras' ``Conv2D(..., activation="relu")``); equal to ``relu(conv2d(...))`` but
            one pass over the output cheaper forward and backward.

    Returns:
        ``(N, OC, OH, OW)``. Its memory is channels-last (NHWC order), which is what the
        GEMM writes; the shape and values are ordinary NCHW.

    >>> import minidl
    >>> x = minidl.ones(2, 3, 8, 8); w = minidl.ones(4, 3, 3, 3)
    >>> conv2d(x, w, padding="same").shape
    (2, 4, 8, 8)
    """
    x, weight, bias = checked_inputs("conv2d", x, weight, bias, activation)
    args = (stride, padding, dilation, groups)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return Conv2dFunction.apply(*tensors, args=args, relu=activation == "relu")


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
