"""Export a model to an ONNX file: ``minidl.onnx.export(model, example_input, path)``.

The exporter walks the module tree rather than tracing the autograd graph. Each supported
module type has an *export rule* that emits that layer's ONNX nodes and its weights (as
float32 initializers named like the ``state_dict`` entries); containers (``Sequential``,
``models.Residual``) recurse into their children. Why not a trace: the graph minidl records
is made of fused ops (``Sequential`` runs Conv2d -> ReLU -> MaxPool2d as one
``Conv2dMaxPool2d`` node, batch norm and conv carry a fused ReLU), and of whatever a
training-mode forward did; the module tree says what each layer *means*, so every layer
becomes its plain ONNX ops (``Conv``, ``Relu``, ``MaxPool``, ...) in evaluation semantics.
The example input runs through each layer once on the side, only to know the shapes.

The model is exported in eval mode (dropout off, batch norm on its running statistics) and
each module's mode is restored afterwards. The graph has one float32 input ``"input"`` with
a dynamic batch axis ``N`` and one output ``"output"``; opset 17, IR version 8, so that
runtimes from 2022 on load it. It is checked with ``onnx.checker.check_model`` (full check,
shape inference included) and written atomically (``minidl._fileio.atomic_write``): on any
error an existing file at ``path`` is left as it was.

A module with no rule raises a ``TypeError`` that names its path in the model, its type and
the supported types. Rules are looked up by exact type (a subclass may change
``forward``); ``register`` adds one for a type of your own. Forward hooks are neither run
nor exported.

Example (needs ``pip install "minidl[onnx]"``; ``docs/interop.md`` runs it)::

    import minidl
    from minidl.models import seed_cnn
    from minidl.onnx import export

    export(seed_cnn(), minidl.zeros(1, 3, 32, 32), "seed_cnn.onnx")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from minidl import nn
from minidl._fileio import atomic_write
from minidl.autograd import Tensor, no_grad, tensor
from minidl.backend import to_numpy
from minidl.kernels.conv import conv2d_geometry
from minidl.models import Residual, Scale

OPSET = 17
"""The ONNX opset the exported files use (every op here has its current form in 17)."""
IR_VERSION = 8
"""The ONNX IR version of the exported files (the one that came with opset 17)."""

_INSTALL_HINT = 'minidl.onnx needs the onnx package: pip install "minidl[onnx]"'


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return onnx


@dataclass
class Value:
    """A value of the graph being built: its ONNX name and minidl's own result for the
    example input at this point (which gives its shape).

    ``batched`` says whether axis 0 is still the batch axis (a ``Flatten`` from axis 0
    merges it into others), hence whether the output's axis 0 is the dynamic ``N``.
    """

    name: str
    example: Tensor
    batched: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)


Rule = Callable[["ExportContext", Any, str, Value], Value]
"""``rule(ctx, module, path, x) -> y``: emit the nodes of ``module`` (at ``path`` in the
model) applied to ``x`` through ``ctx`` and return the result."""

_RULES: dict[type, Rule] = {}


def register(cls: type) -> Callable[[Rule], Rule]:
    """Decorator: make ``rule`` the export rule of modules of exactly type ``cls``.

    A rule emits nodes with ``ctx.node``, weights with ``ctx.weight``, recurses into a child
    with ``ctx.module`` and returns ``ctx.leaf(module, x, name)`` (or a ``Value`` it built):

    >>> from minidl import nn
    >>> class Double(nn.Module):
    ...     def forward(self, x):
    ...         return x * 2.0
    >>> @register(Double)
    ... def _double(ctx, m, path, x):
    ...     two = ctx.constant(f"{path}.two", np.float32(2.0))
    ...     return ctx.leaf(m, x, ctx.node("Mul", [x.name, two], path))
    >>> Double in supported()
    True
    >>> _ = _RULES.pop(Double)  # (the doctest's rule leaves the registry again)
    """
    if not isinstance(cls, type):
        raise TypeError(f"register: expected a class, got {type(cls).__name__}")

    def add(rule: Rule) -> Rule:
        _RULES[cls] = rule
        return rule

    return add


def supported() -> list[type]:
    """The module types that ``export`` has a rule for, sorted by name."""
    return sorted(_RULES, key=lambda c: c.__name__)


def _display(path: str) -> str:
    return path or "<model>"


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class ExportContext:
    """Collects the nodes and initializers of the graph under construction."""

    def __init__(self) -> None:
        self.onnx = _onnx()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._weights: dict[tuple[int, str], tuple[Any, str]] = {}  # keeps t alive: ids stay
        self._count = 0

    def fresh(self, base: str) -> str:
        """A value name not used yet, ``base`` itself if free."""
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def fail(self, path: str, module: Any, reason: str) -> ValueError:
        """The error for a layer this exporter cannot express (raise it)."""
        return ValueError(f"minidl.onnx.export: layer '{_display(path)}' "
                          f"({type(module).__name__}): {reason}")

    def constant(self, name: str, array: Any, dtype: Any = None) -> str:
        """Add ``array`` as an initializer (of ``dtype`` if given); return its name."""
        arr = np.ascontiguousarray(to_numpy(array), dtype=dtype)
        name = self.fresh(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def weight(self, name: str, t: Any, transform: str = "",
               fn: Callable[[np.ndarray], np.ndarray] | None = None) -> str:
        """A float32 initializer holding tensor ``t`` (optionally ``fn(t)``, keyed by
        ``transform``); a tensor shared by two layers is stored once."""
        key = (id(t), transform)
        if key not in self._weights:
            arr = to_numpy(t.data if isinstance(t, Tensor) else t)
            self._weights[key] = (t, self.constant(name, fn(arr) if fn else arr, np.float32))
        return self._weights[key][1]

    def node(self, op: str, inputs: list[str], path: str, **attrs: Any) -> str:
        """Append node ``op`` of the layer at ``path``; return its (single) output name."""
        self._count += 1
        base = f"{path or 'model'}/{op}"
        out = self.fresh(base)
        self.nodes.append(self.onnx.helper.make_node(
            op, inputs, [out], name=f"{base}_{self._count}", **attrs))
        return out

    def leaf(self, module: Any, x: Value, name: str, batched: bool | None = None) -> Value:
        """The ``Value`` named ``name`` that ``module`` makes of ``x`` (its example is the
        module's own forward on ``x``'s example, hooks not run)."""
        return Value(name, module.forward(x.example), x.batched if batched is None else batched)

    def module(self, m: Any, path: str, x: Value) -> Value:
        """Emit module ``m`` at ``path`` applied to ``x``: the walk's one step."""
        rule = _RULES.get(type(m))
        if rule is None:
            names = ", ".join(c.__name__ for c in supported())
            raise TypeError(
                f"minidl.onnx.export: no export rule for layer '{_display(path)}' of type "
                f"{type(m).__module__}.{type(m).__qualname__}. Supported (exact types): "
                f"{names}. A subclass or a module of your own needs a rule: "
                f"minidl.onnx.register({type(m).__name__})")
        return rule(self, m, path, x)


# --------------------------------------------------------------------------- containers


@register(nn.Sequential)
def _sequential(ctx: ExportContext, m: nn.Sequential, path: str, x: Value) -> Value:
    # Each layer on its own: the fusion Sequential does at run time is an implementation
    # detail with the same result.
    for name, child in m.named_children():
        x = ctx.module(child, _child(path, name), x)
    return x


@register(Residual)
def _residual(ctx: ExportContext, m: Residual, path: str, x: Value) -> Value:
    y = ctx.module(m.block, _child(path, "block"), x)
    if y.shape != x.shape:
        raise ctx.fail(path, m, f"the block maps shape {x.shape} to {y.shape}; the shortcut "
                                "needs them equal")
    return Value(ctx.node("Add", [x.name, y.name], path), x.example + y.example, x.batched)


def _passthrough(ctx: ExportContext, m: Any, path: str, x: Value) -> Value:
    return ctx.leaf(m, x, x.name)  # no node: Identity, and Dropout in eval mode


register(nn.Identity)(_passthrough)
register(nn.Dropout)(_passthrough)


# --------------------------------------------------------------------------- layers


def _relu_if(ctx: ExportContext, activation: str | None, path: str, name: str) -> str:
    return ctx.node("Relu", [name], path) if activation == "relu" else name


@register(nn.Conv2d)
def _conv2d(ctx: ExportContext, m: nn.Conv2d, path: str, x: Value) -> Value:
    m.check_input(x.example)
    g = conv2d_geometry(x.shape, m.weight.shape, m.stride, m.padding, m.dilation, m.groups)
    pt, pb, pl, pr = g.pad
    inputs = [x.name, ctx.weight(_child(path, "weight"), m.weight)]
    if m.bias is not None:
        inputs.append(ctx.weight(_child(path, "bias"), m.bias))
    y = ctx.node("Conv", inputs, path, kernel_shape=[g.kh, g.kw], strides=[g.sh, g.sw],
                 dilations=[g.dh, g.dw], pads=[pt, pl, pb, pr], group=g.groups)
    return ctx.leaf(m, x, _relu_if(ctx, m.activation, path, y))


@register(nn.MaxPool2d)
def _max_pool2d(ctx: ExportContext, m: nn.MaxPool2d, path: str, x: Value) -> Value:
    ph, pw = m.padding
    y = ctx.node("MaxPool", [x.name], path, kernel_shape=list(m.kernel_size),
                 strides=list(m.stride), pads=[ph, pw, ph, pw])
    return ctx.leaf(m, x, y)


@register(nn.AvgPool2d)
def _avg_pool2d(ctx: ExportContext, m: nn.AvgPool2d, path: str, x: Value) -> Value:
    ph, pw = m.padding  # minidl counts the zero padding in the mean, as PyTorch does
    y = ctx.node("AveragePool", [x.name], path, kernel_shape=list(m.kernel_size),
                 strides=list(m.stride), pads=[ph, pw, ph, pw], count_include_pad=1)
    return ctx.leaf(m, x, y)


@register(nn.AdaptiveAvgPool2d)
def _adaptive_avg_pool2d(ctx: ExportContext, m: nn.AdaptiveAvgPool2d, path: str,
                         x: Value) -> Value:
    if x.example.ndim != 4:
        raise ctx.fail(path, m, f"expected a 4-D (N, C, H, W) input, got shape {x.shape}")
    (h, w), (oh, ow) = x.shape[2:], m.output_size
    if (oh, ow) == (1, 1):
        return ctx.leaf(m, x, ctx.node("GlobalAveragePool", [x.name], path))
    if h % oh or w % ow:
        raise ctx.fail(path, m, f"ONNX has no adaptive pooling; only output sizes that divide "
                                f"the input ({h}x{w}) export (as AveragePool), got "
                                f"{m.output_size}")
    kernel = [h // oh, w // ow]
    return ctx.leaf(m, x, ctx.node("AveragePool", [x.name], path, kernel_shape=kernel,
                                   strides=kernel))


def _channel_shape(x: Value) -> list[int]:
    # (C, 1, ..., 1): a per-channel vector that broadcasts against (N, C, *spatial)
    return [x.shape[1]] + [1] * (len(x.shape) - 2)


@register(nn.BatchNorm1d)
@register(nn.BatchNorm2d)
def _batch_norm(ctx: ExportContext, m: Any, path: str, x: Value) -> Value:
    c = m.num_features
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    scale = ctx.weight(_child(path, "weight"), m.weight) if m.affine else \
        ctx.constant(_child(path, "weight"), ones)
    shift = ctx.weight(_child(path, "bias"), m.bias) if m.affine else \
        ctx.constant(_child(path, "bias"), zeros)
    if m.track_running_stats:  # eval mode: the running statistics
        y = ctx.node("BatchNormalization",
                     [x.name, scale, shift, ctx.weight(_child(path, "running_mean"),
                                                       m.running_mean),
                      ctx.weight(_child(path, "running_var"), m.running_var)],
                     path, epsilon=m.eps)
    else:  # no running statistics: the batch's own, even in eval mode
        axes = [0] + list(range(2, len(x.shape)))
        mean = ctx.node("ReduceMean", [x.name], path, axes=axes, keepdims=1)
        xc = ctx.node("Sub", [x.name, mean], path)
        var = ctx.node("ReduceMean", [ctx.node("Mul", [xc, xc], path)], path, axes=axes,
                       keepdims=1)
        eps = ctx.constant(_child(path, "eps"), np.float32(m.eps))
        std = ctx.node("Sqrt", [ctx.node("Add", [var, eps], path)], path)
        shape = _channel_shape(x)
        y = ctx.node("Div", [xc, std], path)
        y = ctx.node("Mul", [y, ctx.weight(_child(path, "weight"), m.weight if m.affine
                                           else ones, "c", lambda a: a.reshape(shape))], path)
        y = ctx.node("Add", [y, ctx.weight(_child(path, "bias"), m.bias if m.affine
                                           else zeros, "c", lambda a: a.reshape(shape))], path)
    return ctx.leaf(m, x, _relu_if(ctx, m.activation, path, y))


@register(nn.GroupNorm)
def _group_norm(ctx: ExportContext, m: nn.GroupNorm, path: str, x: Value) -> Value:
    # ONNX's GroupNormalization came in opset 18 with per-group scales (per-channel only
    # from opset 21), so: (N, C, *) -> (N, G, -1), InstanceNormalization of the G "channels"
    # (the statistics of each (n, g)), back to x's shape, then the per-channel affine.
    if len(x.shape) < 2 or x.shape[1] != m.num_channels:
        raise ctx.fail(path, m, f"expected (N, {m.num_channels}, *) input, got {x.shape}")
    g = m.num_groups
    grouped = ctx.node("Reshape", [x.name, ctx.constant(_child(path, "groups_shape"),
                                                         [0, g, -1], np.int64)], path)
    one, zero = np.ones(g, np.float32), np.zeros(g, np.float32)
    y = ctx.node("InstanceNormalization",
                 [grouped, ctx.constant(_child(path, "unit_scale"), one),
                  ctx.constant(_child(path, "zero_shift"), zero)], path, epsilon=m.eps)
    y = ctx.node("Reshape", [y, ctx.node("Shape", [x.name], path)], path)
    if m.affine:
        shape = _channel_shape(x)
        y = ctx.node("Mul", [y, ctx.weight(_child(path, "weight"), m.weight, "c",
                                           lambda a: a.reshape(shape))], path)
        y = ctx.node("Add", [y, ctx.weight(_child(path, "bias"), m.bias, "c",
                                           lambda a: a.reshape(shape))], path)
    return ctx.leaf(m, x, y)


@register(nn.LayerNorm)
def _layer_norm(ctx: ExportContext, m: nn.LayerNorm, path: str, x: Value) -> Value:
    k, shape = len(m.normalized_shape), m.normalized_shape
    if x.shape[len(x.shape) - k:] != shape or len(x.shape) < k:
        raise ctx.fail(path, m, f"input shape {x.shape} does not end with normalized_shape "
                                f"{shape}")
    if m.elementwise_affine:
        scale = ctx.weight(_child(path, "weight"), m.weight)
        shift = ctx.weight(_child(path, "bias"), m.bias)
    else:
        scale = ctx.constant(_child(path, "weight"), np.ones(shape, np.float32))
        shift = ctx.constant(_child(path, "bias"), np.zeros(shape, np.float32))
    y = ctx.node("LayerNormalization", [x.name, scale, shift], path, axis=-k, epsilon=m.eps)
    return ctx.leaf(m, x, y)


@register(nn.Linear)
def _linear(ctx: ExportContext, m: nn.Linear, path: str, x: Value) -> Value:
    if len(x.shape) == 2:  # the usual case: one Gemm, weight as stored
        inputs = [x.name, ctx.weight(_child(path, "weight"), m.weight)]
        if m.bias is not None:
            inputs.append(ctx.weight(_child(path, "bias"), m.bias))
        return ctx.leaf(m, x, ctx.node("Gemm", inputs, path, transB=1))
    if len(x.shape) < 2:
        raise ctx.fail(path, m, f"expected an input with a batch axis, got shape {x.shape}")
    wt = ctx.weight(_child(path, "weight_t"), m.weight, "T", lambda a: a.T)
    y = ctx.node("MatMul", [x.name, wt], path)
    if m.bias is not None:
        y = ctx.node("Add", [y, ctx.weight(_child(path, "bias"), m.bias)], path)
    return ctx.leaf(m, x, y)


@register(nn.Flatten)
def _flatten(ctx: ExportContext, m: nn.Flatten, path: str, x: Value) -> Value:
    rank = len(x.shape)
    s, e = m.start_dim % rank, m.end_dim % rank
    if s == 1 and e == rank - 1:
        return ctx.leaf(m, x, ctx.node("Flatten", [x.name], path, axis=1))
    out = ctx.leaf(m, x, x.name)
    if s >= e:
        return out
    # Reshape: batch axis copied (0), the rest static; from axis 0 the first axis is -1.
    target = [0 if s > 0 else -1] + list(out.shape[1:])
    out.name = ctx.node("Reshape", [x.name, ctx.constant(_child(path, "shape"), target,
                                                         np.int64)], path)
    out.batched = x.batched and s > 0
    return out


@register(Scale)
def _scale(ctx: ExportContext, m: Scale, path: str, x: Value) -> Value:
    factor = ctx.constant(_child(path, "factor"), np.float32(m.factor))
    return ctx.leaf(m, x, ctx.node("Mul", [x.name, factor], path))


def _elementwise(op: str, **attrs: Any) -> Rule:
    def rule(ctx: ExportContext, m: Any, path: str, x: Value) -> Value:
        return ctx.leaf(m, x, ctx.node(op, [x.name], path, **attrs))
    return rule


register(nn.ReLU)(_elementwise("Relu"))
register(nn.Sigmoid)(_elementwise("Sigmoid"))
register(nn.Tanh)(_elementwise("Tanh"))


@register(nn.LeakyReLU)
def _leaky_relu(ctx: ExportContext, m: nn.LeakyReLU, path: str, x: Value) -> Value:
    return ctx.leaf(m, x, ctx.node("LeakyRelu", [x.name], path, alpha=m.negative_slope))


@register(nn.GELU)
def _gelu(ctx: ExportContext, m: nn.GELU, path: str, x: Value) -> Value:
    # minidl's GELU is the exact one, x * Phi(x) = x * (1 + erf(x / sqrt 2)) / 2 (ONNX's
    # Gelu op needs opset 20).
    rsqrt2 = ctx.constant(_child(path, "inv_sqrt2"), np.float32(1.0 / math.sqrt(2.0)))
    one = ctx.constant(_child(path, "one"), np.float32(1.0))
    half = ctx.constant(_child(path, "half"), np.float32(0.5))
    erf = ctx.node("Erf", [ctx.node("Mul", [x.name, rsqrt2], path)], path)
    cdf = ctx.node("Mul", [ctx.node("Add", [erf, one], path), half], path)
    return ctx.leaf(m, x, ctx.node("Mul", [x.name, cdf], path))


@register(nn.Softmax)
def _softmax(ctx: ExportContext, m: nn.Softmax, path: str, x: Value) -> Value:
    axis = -1 if m.dim is None else int(m.dim)
    return ctx.leaf(m, x, ctx.node("Softmax", [x.name], path, axis=axis))


# --------------------------------------------------------------------------- export


def _producer_version() -> str:
    try:
        from importlib.metadata import version
        return version("minidl")
    except Exception:  # not installed as a distribution (a source checkout on the path)
        return ""


def export(model: nn.Module, example_input: Any, path: str | os.PathLike, *,
           input_name: str = "input", output_name: str = "output",
           dynamic_batch: bool = True) -> Any:
    """Write ``model`` as an ONNX file (opset 17) at ``path``; return the ``ModelProto``.

    Args:
        model: a module built from the supported layers (``supported()`` lists them:
            minidl.nn's layers, ``Sequential``, and ``models.Residual``/``models.Scale``).
        example_input: a Tensor or array of the shape the model takes, batch axis first
            (an array goes to the device and dtype of the model's parameters); it runs
            through the layers once (in eval mode) to fix the shapes.
        path: the file to write (atomically; its folder is created if needed).
        input_name: the graph's input name.
        output_name: the graph's output name.
        dynamic_batch: axis 0 of the input and output is the symbolic ``N`` (any batch
            size); ``False`` fixes it to the example's.

    Raises:
        TypeError: a module has no export rule (the message names its path and type).
        ValueError: a layer is configured in a way ONNX cannot express.
        ImportError: the onnx package is missing (``pip install "minidl[onnx]"``).
    """
    onnx = _onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"minidl.onnx.export: model must be an nn.Module, got "
                        f"{type(model).__name__}")
    if isinstance(example_input, Tensor):
        x = example_input
    else:  # an array: on the model's device, in its dtype
        first = next(iter(model.parameters()), None)
        x = tensor(example_input) if first is None else \
            tensor(example_input, dtype=first.dtype, device=first.device)
    if x.ndim < 1 or x.dtype.kind != "f":
        raise ValueError(f"minidl.onnx.export: example_input must be a floating-point array "
                         f"with a batch axis first, got dtype {x.dtype} shape {x.shape}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            ctx = ExportContext()
            ctx.fresh(input_name)
            y = ctx.module(model, "", Value(input_name, x.detach()))
    finally:
        for m, training in modes:
            object.__setattr__(m, "training", training)
    if y.name == input_name:  # a model of pass-through layers only
        y.name = ctx.node("Identity", [input_name], "")
    if output_name != y.name:  # rename the result to output_name, wherever it appears
        if output_name in ctx._names:
            raise ValueError(f"minidl.onnx.export: output_name {output_name!r} is already "
                             "the name of another value of the graph; pick another")
        for node in ctx.nodes:
            for names in (node.input, node.output):
                for i, name in enumerate(names):
                    if name == y.name:
                        names[i] = output_name
    helper = onnx.helper
    batch = "N" if dynamic_batch else x.shape[0]
    out_dims: list[Any] = list(y.shape)
    if out_dims:
        out_dims[0] = (batch if y.batched else None) if dynamic_batch else out_dims[0]
    graph = helper.make_graph(
        ctx.nodes, type(model).__name__,
        [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT,
                                       [batch, *x.shape[1:]])],
        [helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, out_dims)],
        initializer=ctx.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="minidl",
                              producer_version=_producer_version())
    onnx.checker.check_model(proto, full_check=True)
    with atomic_write(path, "wb") as f:
        f.write(proto.SerializeToString())
    return proto
