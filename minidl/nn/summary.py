"""``summary(model, input_shape)``: a Keras-style table of a model's layers.

It runs one dummy forward pass (zeros of ``input_shape``) under ``no_grad`` in eval
mode, with a forward hook on every leaf module to record the output shape, then restores the
modules' training flags and removes the hooks: the model, its running statistics and the
random generator are left exactly as they were.

It needs of a model only what every ``Module`` has (``modules()``, hooks, ``train()``), so it
imports ``Module`` for type hints alone and sits below ``nn/module.py``, which offers it as
the ``Module.summary`` method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from minidl import backend
from minidl.autograd import Tensor, no_grad

if TYPE_CHECKING:  # type hints only: module.py imports this file
    from minidl.nn.module import Module


def _shape_of(out: Any) -> str:
    if isinstance(out, Tensor):
        return str((None,) + out.shape[1:])
    if isinstance(out, (tuple, list)):
        return "[" + ", ".join(_shape_of(o) for o in out) + "]"
    return type(out).__name__


def summary(model: Module, input_shape: tuple[int | None, ...], dtype: Any = None,
            device: Any = None, print_fn: Any = print) -> str | None:
    """Print a table of layer name/type, output shape and parameter count, or return it
    with ``print_fn=None``. (Printing returns None, as Keras' ``summary`` does, so that a
    REPL does not echo the table a second time as a quoted string.)

    Args:
        model: the module to describe.
        input_shape: the full input shape **including** the batch axis, e.g.
            ``(1, 3, 32, 32)``; the batch size may be given as ``None`` (Keras style, run
            with 1). Output shapes show the batch axis as ``None``.
        dtype: of the dummy input; defaults to the model's first parameter's dtype.
        device: of the dummy input; defaults to the model's first parameter's device.
        print_fn: called with the table; ``None``: return the table instead.

    Rows are the leaf modules in the order they ran (plus any container that owns
    parameters directly); a layer with a fused activation (``Conv2d(...,
    activation="relu")``, ``BatchNorm2d(..., activation="relu")``) shows it beside its
    type, e.g. ``0 (Conv2d + relu)``. Totals count parameters; trainable ones have
    ``requires_grad=True``. Buffers (running statistics) are counted on their own line.

    >>> import minidl
    >>> nn = minidl.nn
    >>> text = nn.summary(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), (2, 4), print_fn=None)
    >>> "Total params: 40" in text
    True
    """
    shape = tuple(input_shape)
    if not shape or any(s is not None and (not isinstance(s, int) or s < 1) for s in shape) \
            or None in shape[1:]:
        raise ValueError(f"summary: input_shape must be a full shape with the batch axis first, "
                         f"e.g. (1, 3, 32, 32) or (None, 3, 32, 32); got {input_shape!r}")
    shape = (1 if shape[0] is None else shape[0],) + shape[1:]
    params = list(model.parameters())
    if dtype is None:
        dtype = params[0].dtype if params else np.float32
    if device is None:
        device = params[0].device if params else "cpu"
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    names = {id(m): n for n, m in model.named_modules()}

    def record(mod: Module, _inputs: tuple, out: Any) -> None:
        own = mod.num_parameters() if not any(True for _ in mod.children()) else sum(
            p.size for p in mod.parameters(recurse=False))
        kind = type(mod).__name__
        if getattr(mod, "activation", None):
            kind += f" + {mod.activation}"
        rows.append((names.get(id(mod), "?") or type(mod).__name__, kind, _shape_of(out), own))

    for mod in model.modules():
        leaf = not any(True for _ in mod.children())
        if leaf or any(True for _ in mod.parameters(recurse=False)):
            hooks.append(mod.register_forward_hook(record))
    flags = [(m, m.training) for m in model.modules()]
    x = Tensor(backend.to_device(np.zeros(shape, dtype=dtype), device))
    try:
        model.eval()
        with no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in flags:
            object.__setattr__(m, "training", flag)

    total = sum(p.size for p in params)
    trainable = sum(p.size for p in params if p.requires_grad)
    n_buffers = sum(b.size for b in model.buffers())
    w1 = max([len("Layer (type)")] + [len(f"{n} ({t})") for n, t, _, _ in rows]) + 3
    w2 = max([len("Output Shape")] + [len(s) for _, _, s, _ in rows]) + 3
    w3 = max(len("Param #"), len(f"{total:,}")) + 1
    width = w1 + w2 + w3
    lines = [f'Model: "{type(model).__name__}"', "_" * width,
             f"{'Layer (type)':<{w1}}{'Output Shape':<{w2}}{'Param #':>{w3}}", "=" * width]
    for n, t, s, c in rows:
        lines.append(f"{n + ' (' + t + ')':<{w1}}{s:<{w2}}{c:>{w3},}")
    lines += ["=" * width,
              f"Total params: {total:,}",
              f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}"]
    if n_buffers:
        lines.append(f"Buffer elements (running statistics): {n_buffers:,}")
    lines.append(f"Output shape: {_shape_of(out)}")
    lines.append("_" * width)
    text = "\n".join(lines)
    if print_fn is None:
        return text
    print_fn(text)
    return None
