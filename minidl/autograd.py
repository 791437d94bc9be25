"""The autograd engine: ``Tensor``, ``Function``, the define-by-run graph and its backward walk.

A ``Tensor`` wraps a NumPy or CuPy array. When an op runs on tensors that require grad (and
grad mode is on), it records a ``Function`` node that remembers its inputs; the graph is
built as the program runs ("define-by-run"). ``Tensor.backward()`` then visits the recorded
functions in *reverse topological order*: a function's ``backward`` may run only once the
gradients from *all* its consumers have been summed, which is exactly what a topological
order guarantees (a plain depth-first recursion would visit a shared node too early, and
hit Python's recursion limit on deep graphs; the walk here is iterative).

Each ``Function.backward`` is written with differentiable tensor ops, so running the
backward pass with ``create_graph=True`` records a graph of the gradient computation itself,
which gives higher-order gradients for free.

This module is the bottom of the package: it imports only ``backend`` and ``random``, never
the ops. ``Tensor``'s operators and op methods (``+``, ``x.sum()``, ``x.to(...)``, ...) are
the functions of ``minidl.functional``, attached once by ``minidl.functional.setup_tensor``,
which the package's ``__init__`` calls (DeZero's ``setup_variable``). The two per-thread
modes every op consults, grad mode and autocast, live here beside each other.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from minidl import backend
from minidl.backend import Device
from minidl.random import default_generator

_DEFAULT_FLOAT = np.float32

# ----------------------------------------------------------------------------------------
# grad mode


class _GradMode(threading.local):
    """Per-thread grad mode, as in PyTorch: a ``no_grad()`` block in one thread (say a
    background evaluation) must not switch off recording in another."""

    enabled = True  # the class attribute is every thread's default


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    """Return True when ops record the graph (the default).

    >>> import minidl
    >>> with minidl.no_grad():
    ...     minidl.is_grad_enabled()
    False
    >>> minidl.is_grad_enabled()
    True
    """
    return _grad_mode.enabled


class set_grad_enabled(contextlib.ContextDecorator):
    """Context manager and decorator that turns graph recording on or off.

    >>> import minidl
    >>> x = minidl.tensor([1.0], requires_grad=True)
    >>> with minidl.set_grad_enabled(False):
    ...     y = x * 2
    >>> y.requires_grad
    False
    """

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self._prev: list[bool] = []

    def __enter__(self) -> None:
        self._prev.append(_grad_mode.enabled)
        _grad_mode.enabled = self.mode

    def __exit__(self, *exc: object) -> None:
        _grad_mode.enabled = self._prev.pop()

    def _recreate_cm(self) -> set_grad_enabled:
        # As a decorator, each call gets its own saved-mode stack: one shared by calls in
        # several threads would hand one thread's mode back to another.
        cm = copy.copy(self)
        cm._prev = []
        return cm


class no_grad(set_grad_enabled):
    """Disable graph recording, e.g. for inference; usable as ``with`` or as a decorator.

    >>> import minidl
    >>> x = minidl.tensor([1.0, 2.0], requires_grad=True)
    >>> with minidl.no_grad():
    ...     y = x * 2
    >>> y.requires_grad
    False
    """

    def __init__(self) -> None:
        super().__init__(False)


class enable_grad(set_grad_enabled):
    """Re-enable graph recording inside a ``no_grad`` block.

    >>> import minidl
    >>> x = minidl.tensor([1.0], requires_grad=True)
    >>> with minidl.no_grad():
    ...     with minidl.enable_grad():
    ...         y = x * 2
    >>> y.requires_grad
    True
    """

    def __init__(self) -> None:
        super().__init__(True)


# ----------------------------------------------------------------------------------------
# autocast mode (the policy that reads it, ``lower``/``upper``, sits beside ``cast`` in
# minidl.functional.math; the public context manager is ``minidl.amp.autocast``)


class _AutocastMode(threading.local):
    """Per-thread autocast dtype, as in PyTorch: an ``autocast`` block in one thread leaves
    the ops of the others in full precision."""

    dtype: np.dtype | None = None  # the class attribute is every thread's default


_autocast_mode = _AutocastMode()


def autocast_dtype() -> np.dtype | None:
    """The low-precision dtype of the active ``minidl.amp.autocast`` block, or None.

    >>> import minidl
    >>> with minidl.amp.autocast("float16"):
    ...     minidl.autograd.autocast_dtype()
    dtype('float16')
    >>> minidl.autograd.autocast_dtype() is None
    True
    """
    return _autocast_mode.dtype


def _set_autocast_dtype(dtype: np.dtype | None) -> np.dtype | None:
    """Set this thread's autocast dtype and return the previous one (for amp.autocast)."""
    prev, _autocast_mode.dtype = _autocast_mode.dtype, dtype
    return prev


# ----------------------------------------------------------------------------------------
# Function


class Function:
    """One differentiable operation: a node of the graph.

    Subclasses implement:

    * ``forward(self, *arrays)``: raw NumPy/CuPy arrays in, an array (or a tuple of arrays)
      out. Keep only what backward needs (``self.save_for_backward`` or attributes).
    * ``backward(self, *grad_outputs)``: one gradient ``Tensor`` per output (``None`` is
      replaced by zeros), returns one gradient ``Tensor`` (or ``None``) per input, written
      with differentiable ops so that double backward works.

    ``self.needs_input_grad[i]`` says whether input ``i`` wants a gradient, so backward can
    skip work. Call an op with ``MyFunction.apply(*tensors, **options)``.

    Args:
        **options: non-tensor arguments of the op (axis, stride, ...), stored as attributes.

    Attributes:
        inputs (tuple[Tensor, ...] | None): the input tensors, kept while the node is
            recorded; None once backward has released it.
        needs_input_grad (tuple[bool, ...]): per input, whether it requires a gradient.

    >>> import minidl
    >>> class Square(minidl.Function):
    ...     def forward(self, x):
    ...         self.save_for_backward(x)
    ...         return x * x
    ...     def backward(self, gy):
    ...         (x,) = self.saved
    ...         return gy * 2 * minidl.Tensor(x)
    >>> x = minidl.tensor([3.0], requires_grad=True)
    >>> y = Square.apply(x); y.backward(); y, x.grad
    (tensor([9.], grad_fn=<SquareBackward>), tensor([6.]))
    """

    inputs: tuple[Tensor, ...] | None
    needs_input_grad: tuple[bool, ...]

    def __init__(self, **options: Any) -> None:
        for k, v in options.items():
            setattr(self, k, v)
        self._saved: tuple | None = ()
        self._outputs: list[weakref.ref] = []
        self.inputs = None

    @classmethod
    def apply(cls, *inputs: Tensor, **options: Any) -> Any:
        """Run the op on tensors and, in grad mode, record it in the graph."""
        return cls(**options)._run(inputs)

    @property
    def name(self) -> str:
        """The op's name, shown in error messages and as ``grad_fn=<{name}Backward>``.

        minidl's own Functions are classes named ``<Op>Function`` (``Conv2dFunction``
        beside the ``nn.Conv2d`` layer), so that grep and tracebacks never confuse an op
        with a layer; the suffix is left out here: ``Conv2dFunction`` is named ``Conv2d``.
        """
        name = type(self).__name__
        if name.endswith("Function") and name != "Function":
            return name[: -len("Function")]
        return name

    def _run(self, inputs: Sequence[Tensor]) -> Any:
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TypeError(f"{self.name}: expected Tensor inputs, got {type(t).__name__}")
        # NumPy arrays all live on the CPU: only compare devices when another array type
        # (CuPy) is involved, which keeps this check off the hot path of CPU training.
        if len(inputs) > 1 and not all(type(t.data) is np.ndarray for t in inputs):
            dev = inputs[0].device
            for t in inputs[1:]:
                if t.device != dev:
                    raise RuntimeError(
                        f"{self.name}: inputs are on different devices ({dev} and {t.device}); "
                        "move them with .to(device) first"
                    )
        record = _grad_mode.enabled and any(t.requires_grad for t in inputs)
        self.needs_input_grad = tuple(record and t.requires_grad for t in inputs)
        out = self.forward(*[t.data for t in inputs])
        single = not isinstance(out, tuple)
        # NumPy reductions to a scalar return np.generic, not a 0-d array: keep .data an array
        outs = tuple(np.asarray(o) if isinstance(o, np.generic) else o
                     for o in ((out,) if single else out))
        tensors = tuple(Tensor._make(o, record and _is_float(o.dtype)) for o in outs)
        if record:
            self.inputs = tuple(inputs)
            self._outputs = [weakref.ref(t) for t in tensors]
            if not single:  # to give a freed, unused output a zero gradient in backward
                self._out_meta = [(o.shape, o.dtype) for o in outs]
            for t in tensors:
                if t.requires_grad:
                    t._ctx = self
        else:
            self._saved = None
        return tensors[0] if single else tensors

    def forward(self, *arrays: Any) -> Any:  # pragma: no cover - abstract
        """Compute the op on raw arrays (one per input tensor, in order).

        Args:
            *arrays: the inputs' NumPy/CuPy arrays.

        Returns:
            An array, or a tuple of arrays for an op with several outputs.
        """
        raise NotImplementedError(f"{self.name}.forward is not implemented")

    def backward(self, *grad_outputs: Tensor) -> Any:  # pragma: no cover - abstract
        """Map the gradients of the outputs to the gradients of the inputs.

        Args:
            *grad_outputs: one Tensor per output, shaped like that output.

        Returns:
            One gradient Tensor (shaped like that input) or None per input; a single value
            for a one-input op. Written with differentiable ops so double backward works.
        """
        raise NotImplementedError(f"{self.name} is not differentiable")

    def save_for_backward(self, *values: Any) -> None:
        """Keep arrays or tensors for backward; freed after backward unless the graph is
        retained."""
        self._saved = values

    @property
    def saved(self) -> tuple:
        """The values given to ``save_for_backward``; raises once they have been freed."""
        if self._saved is None:
            raise RuntimeError(
                f"{self.name}: trying to backward through the graph a second time, but its "
                "saved values were freed; pass retain_graph=True to the first backward()"
            )
        return self._saved

    def output(self, i: int = 0) -> Tensor:
        """The i-th output tensor (held weakly so the graph has no reference cycles)."""
        t = self._outputs[i]()
        if t is None:
            raise RuntimeError(f"{self.name}: output {i} was freed before backward")
        return t

    def _release(self) -> None:
        self._saved = None
        self.inputs = None


# ----------------------------------------------------------------------------------------
# Tensor


def _is_float(dtype: Any) -> bool:
    return np.dtype(dtype).kind in "fc"


class Tensor:
    """An n-dimensional array that can record the ops applied to it and backpropagate.

    The operators (``+ - * / ** @``, comparisons, ``x[i]``) and the methods ``exp``,
    ``log``, ``sum``, ``mean``, ``max``, ``reshape``, ``permute``, ``transpose``, ... are the
    ops of ``minidl.functional``, bound to ``Tensor`` by ``minidl.functional.setup_tensor``
    when ``minidl`` is imported; so are ``to``, ``astype`` and the properties ``T`` (all
    axes reversed) and ``mT`` (the last two axes swapped).

    Args:
        data: a NumPy or CuPy array (use ``minidl.tensor`` to build from lists/scalars).
        requires_grad: record ops on this tensor so that ``backward`` fills ``.grad``.
        name: optional label, for debugging.

    Attributes:
        data (numpy.ndarray | cupy.ndarray): the wrapped array, any shape.
        grad (Tensor | None): the accumulated gradient, same shape as ``data``; None until
            a backward pass reaches this tensor (leaves, or after ``retain_grad()``).
        name (str | None): the optional label.

    >>> import minidl
    >>> x = minidl.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    tensor([2., 4., 6.])
    """

    __slots__ = ("data", "grad", "_requires_grad", "_ctx", "_retain_grad", "name",
                 "__weakref__")
    # Make NumPy defer to Tensor's reflected operators (ndarray * Tensor -> Tensor.__rmul__).
    __array_ufunc__ = None

    def __init__(self, data: Any, requires_grad: bool = False, name: str | None = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        xp = backend.get_array_module(data)
        if not isinstance(data, xp.ndarray):
            data = xp.asarray(data)
            if data.dtype == np.float64:
                data = data.astype(_DEFAULT_FLOAT)
        self.data = data
        self.grad: Tensor | None = None
        self._ctx: Function | None = None
        self._retain_grad = False
        self._requires_grad = False
        self.name = name
        if requires_grad:
            self.requires_grad = True

    @classmethod
    def _make(cls, data: Any, requires_grad: bool) -> Tensor:
        # Fast path for op outputs: no conversions or checks.
        t = cls.__new__(cls)
        t.data = data
        t.grad = None
        t._ctx = None
        t._retain_grad = False
        t._requires_grad = requires_grad
        t.name = None
        return t

    # -- basic properties ---------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        """Whether ops on this tensor are recorded; settable on leaves (float dtypes only).

        >>> import minidl
        >>> x = minidl.tensor([1.0]); x.requires_grad = True; (x * 2).requires_grad
        True
        """
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if value and not _is_float(self.data.dtype):
            raise TypeError(
                f"requires_grad: only floating-point tensors can require gradients, "
                f"got dtype {self.data.dtype}"
            )
        if not value and self._ctx is not None:
            raise RuntimeError(
                "requires_grad: cannot turn off gradients of a non-leaf tensor; use .detach()"
            )
        self._requires_grad = bool(value)

    def requires_grad_(self, value: bool = True) -> Tensor:
        """Set ``requires_grad`` in place and return self."""
        self.requires_grad = value
        return self

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded op (parameters, inputs)."""
        return self._ctx is None

    @property
    def grad_fn(self) -> Function | None:
        """The Function that produced this tensor (None for leaves)."""
        return self._ctx

    @property
    def shape(self) -> tuple[int, ...]:
        """The dimensions, a tuple of ints: ``tensor([[1, 2, 3]]).shape == (1, 3)``."""
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        """The number of dimensions, ``len(shape)``."""
        return self.data.ndim

    @property
    def size(self) -> int:
        """The number of elements, the product of ``shape`` (a property, as in NumPy)."""
        return int(self.data.size)

    def numel(self) -> int:
        """The number of elements, the product of ``shape`` (a method, as in PyTorch).

        >>> import minidl
        >>> x = minidl.zeros(2, 3); x.numel(), x.size, x.ndim
        (6, 6, 2)
        """
        return int(self.data.size)

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype of the data (float32 by default for floats)."""
        return self.data.dtype

    @property
    def device(self) -> Device:
        """The ``Device`` holding the data: ``cpu`` or ``cuda:i``."""
        return backend.device_of(self.data)

    @property
    def xp(self) -> Any:
        """The array module (numpy or cupy) holding this tensor."""
        return backend.get_array_module(self.data)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __repr__(self) -> str:
        body = np.array2string(backend.to_numpy(self.data), separator=", ", prefix="tensor(")
        extras = []
        if self.dtype != _DEFAULT_FLOAT and self.dtype != np.int64 and self.dtype != np.bool_:
            extras.append(f"dtype={self.dtype}")
        if self.device.type != "cpu":
            extras.append(f"device='{self.device}'")
        if self._ctx is not None:
            extras.append(f"grad_fn=<{self._ctx.name}Backward>")  # PyTorch's spelling
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extras) + ")"

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        if self.size != 1:
            raise RuntimeError(
                f"bool(): the truth value of a tensor with {self.size} elements is ambiguous"
            )
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if _is_float(self.dtype) or self.size != 1:
            raise TypeError("only integer tensors of a single element can be used as an index")
        return int(self.item())

    # -- conversion -----------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """Return the data as a NumPy array (copied from the GPU if needed).

        Raises if the tensor requires grad, as PyTorch does, so that nobody edits a graph
        input behind autograd's back; call ``.detach().numpy()``.
        """
        if self.requires_grad:
            raise RuntimeError(
                "numpy(): can't call numpy() on a tensor that requires grad; "
                "use tensor.detach().numpy()"
            )
        return backend.to_numpy(self.data)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(tensor)``: the data as a NumPy array (a view, not a copy, on the CPU).

        Refused, as ``numpy()`` is, for a tensor that requires grad (``.detach()`` first) and
        for a CUDA tensor (NumPy cannot see GPU memory: ``.cpu()`` or ``.numpy()`` copies).

        >>> import numpy as np, minidl
        >>> np.asarray(minidl.tensor([1.0, 2.0]))
        array([1., 2.], dtype=float32)
        """
        if self.requires_grad:
            raise RuntimeError("np.asarray(tensor): the tensor requires grad; use "
                               "np.asarray(tensor.detach())")
        if type(self.data) is not np.ndarray:
            raise TypeError(f"np.asarray(tensor): the tensor is on {self.device}; copy it to "
                            "the host first with tensor.numpy() or tensor.cpu()")
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        return self.data if dtype is None else self.data.astype(dtype, copy=False)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        """Export the data through DLPack, without a copy (``torch.from_dlpack(t)``,
        ``np.from_dlpack(t)``, ``cupy.from_dlpack(t)``). Refused for a tensor that requires
        grad, as PyTorch does: the consumer could write into it behind autograd's back."""
        if self.requires_grad:
            raise RuntimeError("__dlpack__: can't export a tensor that requires grad; use "
                               "tensor.detach()")
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        """The DLPack ``(device_type, device_id)`` of the data: ``(1, 0)`` on the CPU."""
        return self.data.__dlpack_device__()

    def item(self) -> Any:
        """Return the single element as a Python number."""
        if self.size != 1:
            raise ValueError(f"item(): tensor has {self.size} elements, expected exactly one")
        return backend.to_numpy(self.data).reshape(()).item()

    def tolist(self) -> Any:
        """The data as (nested) Python lists of numbers, copied to the host.

        >>> import minidl
        >>> minidl.tensor([[1, 2], [3, 4]]).tolist()
        [[1, 2], [3, 4]]
        """
        return backend.to_numpy(self.data).tolist()

    def detach(self) -> Tensor:
        """A new leaf tensor sharing the data, cut from the graph."""
        return Tensor._make(self.data, False)

    def cpu(self) -> Tensor:
        """``self.to("cpu")``: this tensor on the host (self if already there)."""
        return self.to("cpu")

    def cuda(self, index: int = 0) -> Tensor:
        """``self.to(f"cuda:{index}")``: this tensor on GPU ``index`` (needs CuPy)."""
        return self.to(f"cuda:{index}")

    def float(self) -> Tensor:
        """Cast to float32 (``astype(np.float32)``); differentiable.

        >>> import minidl
        >>> minidl.tensor([1, 2]).float()
        tensor([1., 2.])
        """
        return self.astype(np.float32)

    def double(self) -> Tensor:
        """Cast to float64 (``astype(np.float64)``); differentiable."""
        return self.astype(np.float64)

    # -- autograd -------------------------------------------------------------------------
    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad(): tensor does not require grad")
        self._retain_grad = True

    def zero_grad(self) -> None:
        """Drop the accumulated gradient (``.grad = None``)."""
        self.grad = None

    def backward(
        self,
        grad: Tensor | Any | None = None,
        retain_graph: bool | None = None,
        create_graph: bool = False,
    ) -> None:
        """Backpropagate from this tensor, accumulating into ``.grad`` of the leaves.

        Args:
            grad: upstream gradient, same shape as self; may be omitted for one element.
            retain_graph: keep saved values so backward can run again on this graph;
                defaults to ``create_graph`` (the recorded gradients still need the graph).
            create_graph: record the backward pass itself, for higher-order gradients.
        """
        keep = create_graph if retain_graph is None else retain_graph
        _run_backward([self], [grad], keep, create_graph, _IntoGrad(create_graph))

    # -- in-place assignment (the operators are bound by minidl.functional.setup_tensor) --
    def __setitem__(self, index: Any, value: Any) -> None:
        if self.requires_grad or self._ctx is not None:
            raise RuntimeError(
                "__setitem__: in-place assignment into a tensor that is part of the graph "
                "would corrupt gradients; detach() it or build a new tensor with where()"
            )
        self.data[index] = value.data if isinstance(value, Tensor) else value


def _toposort(roots: Sequence[Function]) -> list[Function]:
    """Functions reachable from ``roots``, each after all functions that consume its outputs.

    Iterative post-order depth-first search (no recursion, so deep graphs are fine);
    reversing the post-order gives consumers before producers.
    """
    order: list[Function] = []
    visited: set[int] = set()
    stack: list[tuple[Function, bool]] = [(r, False) for r in roots]
    while stack:
        fn, done = stack.pop()
        if done:
            order.append(fn)
            continue
        if id(fn) in visited:
            continue
        visited.add(id(fn))
        if fn.inputs is None:
            raise RuntimeError(
                f"{fn.name}: trying to backward through the graph a second time (its buffers "
                "were freed); pass retain_graph=True to the first backward()"
            )
        stack.append((fn, True))
        for t in fn.inputs:
            if t._ctx is not None and id(t._ctx) not in visited:
                stack.append((t._ctx, False))
    order.reverse()
    return order


def _root_grad(root: Tensor, grad: Any) -> Tensor:
    if not isinstance(root, Tensor):
        raise TypeError(f"backward(): expected a Tensor, got {type(root).__name__}")
    if not root.requires_grad:
        raise RuntimeError(
            "backward(): tensor does not require grad and has no grad_fn; did you create it "
            "under no_grad() or forget requires_grad=True?"
        )
    if grad is None:
        if root.size != 1:
            raise RuntimeError(
                f"backward(): grad can be implicitly created only for a single-element "
                f"tensor, but this one has shape {root.shape}; pass grad=..."
            )
        return Tensor._make(root.xp.ones(root.data.shape, dtype=root.dtype), False)
    if not isinstance(grad, Tensor):
        grad = Tensor._make(root.xp.asarray(grad, dtype=root.dtype), False)
    if grad.shape != root.shape:
        raise ValueError(
            f"backward(): grad has shape {grad.shape} but the tensor has shape {root.shape}"
        )
    if grad.dtype != root.dtype:
        raise TypeError(f"backward(): grad dtype {grad.dtype} != tensor dtype {root.dtype}")
    return grad


def _accumulate(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b


class _IntoGrad:
    """Where ``Tensor.backward`` puts gradients: summed into ``.grad`` of every leaf (and of
    non-leaf tensors that called ``retain_grad()``)."""

    def __init__(self, create_graph: bool) -> None:
        self.create_graph = create_graph

    def wants(self, x: Tensor) -> bool:
        return x._ctx is None

    def put(self, x: Tensor, g: Tensor) -> None:
        if not self.create_graph:
            # .grad must own writable memory: a gradient may be a read-only broadcast view
            # (sum's backward) or the very array handed to another input (add's backward).
            g = Tensor._make(g.data.copy(), False) if x.grad is None else g.detach()
        x.grad = _accumulate(x.grad, g)

    def total(self, x: Tensor, g: Tensor) -> None:
        """The complete gradient of the non-leaf ``x``, just before its creator runs."""
        if x._retain_grad:
            x.grad = _accumulate(x.grad, g if self.create_graph else g.detach())


class _Capture:
    """Where ``autograd.grad`` puts gradients: returned for the requested tensors only;
    no ``.grad`` is touched."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.wanted = {id(t) for t in tensors}
        self.grads: dict[int, Tensor] = {}

    def wants(self, x: Tensor) -> bool:
        return id(x) in self.wanted

    def put(self, x: Tensor, g: Tensor) -> None:
        self.grads[id(x)] = _accumulate(self.grads.get(id(x)), g)

    def total(self, x: Tensor, g: Tensor) -> None:
        pass


class _Pending:
    """Gradients of non-leaf tensors summed so far, waiting for their creator's backward.

    Keyed by ``id``; each entry keeps its tensor alive (and so its id unique) until the
    creator runs, even after the consumer that referenced it released its inputs."""

    def __init__(self) -> None:
        self._grads: dict[int, tuple[Tensor, Tensor]] = {}

    def add(self, x: Tensor, g: Tensor) -> None:
        prev = self._grads.get(id(x))
        self._grads[id(x)] = (x, g if prev is None else prev[1] + g)

    def take(self, x: Tensor | None) -> Tensor | None:
        entry = self._grads.pop(id(x), None) if x is not None else None
        return None if entry is None else entry[1]


def _output_grads(fn: Function, outs: list[Tensor | None], pending: _Pending,
                  sink: _IntoGrad | _Capture) -> list[Tensor] | None:
    """The gradient of each of ``fn``'s outputs (zeros for outputs nothing used), or None
    when no output received one (then ``fn`` has nothing to propagate)."""
    gys: list[Tensor] = []
    any_grad = False
    for k, out in enumerate(outs):
        g = pending.take(out)
        if g is not None:
            any_grad = True
            sink.total(out, g)
        elif out is not None:
            g = Tensor._make(out.xp.zeros(out.data.shape, dtype=out.dtype), False)
        elif len(outs) > 1:  # a freed output of a multi-output op: zero gradient
            shape, dtype = fn._out_meta[k]
            g = Tensor._make(fn.inputs[0].xp.zeros(shape, dtype=dtype), False)
        gys.append(g)
    return gys if any_grad else None


def _input_grads(fn: Function, gys: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Run ``fn.backward`` and pair each input that needs a gradient with it, checked."""
    gxs = fn.backward(*gys)
    if not isinstance(gxs, tuple):
        gxs = (gxs,)
    if len(gxs) != len(fn.inputs):
        raise RuntimeError(
            f"{fn.name}.backward returned {len(gxs)} gradients for {len(fn.inputs)} inputs"
        )
    pairs = []
    for k, (x, gx, need) in enumerate(zip(fn.inputs, gxs, fn.needs_input_grad)):
        if gx is None or not need:
            continue
        if not isinstance(gx, Tensor):
            # A raw array here would be used as a Tensor later, deep in the graph walk.
            raise TypeError(
                f"{fn.name}.backward returned a {type(gx).__module__}.{type(gx).__name__} "
                f"as the gradient of input {k}; return Tensors: wrap an array as "
                "minidl.Tensor(array), or compute the gradient with Tensor ops (then double "
                "backward works too)")
        if gx.shape != x.shape or gx.dtype != x.dtype:
            raise RuntimeError(
                f"{fn.name}.backward returned a gradient of shape {gx.shape} and dtype "
                f"{gx.dtype} for an input of shape {x.shape} and dtype {x.dtype}"
            )
        pairs.append((x, gx))
    return pairs


def _run_backward(
    roots: Sequence[Tensor],
    root_grads: Sequence[Any],
    retain_graph: bool,
    create_graph: bool,
    sink: _IntoGrad | _Capture,
) -> None:
    """Backpropagate from ``roots``, handing every gradient ``sink`` wants to it.

    The textbook reverse-mode algorithm: seed the roots' gradients, then visit the
    Functions consumers-first (a topological order), so that when a Function runs, the
    gradients of its outputs are complete sums; it maps them to its inputs' gradients,
    which are passed on (non-leaf inputs) and/or delivered to the sink.
    """
    pending = _Pending()
    for r, g in zip(roots, root_grads):
        g = _root_grad(r, g)
        if sink.wants(r):  # a root that is itself a leaf (or captured)
            sink.put(r, g)
        pending.add(r, g)
    with set_grad_enabled(create_graph):
        for fn in _toposort([r._ctx for r in roots if r._ctx is not None]):
            # Hold the outputs until fn.backward has run: taking their pending gradients may
            # drop the last reference, and backward may still ask for self.output(i).
            outs = [ref() for ref in fn._outputs]
            gys = _output_grads(fn, outs, pending, sink)
            if gys is not None:
                for x, gx in _input_grads(fn, gys):
                    if sink.wants(x):
                        sink.put(x, gx)
                    if x._ctx is not None:
                        pending.add(x, gx)
            if not retain_graph:
                fn._release()


def backward(
    tensors: Tensor | Sequence[Tensor],
    grad_tensors: Any = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> None:
    """Backpropagate from several tensors at once, accumulating into the leaves' ``.grad``.

    Args:
        tensors: the root tensor(s) to differentiate.
        grad_tensors: one upstream gradient per root (shaped like it); may be omitted for
            roots of one element.
        retain_graph: keep saved values so backward can run again; defaults to
            ``create_graph``.
        create_graph: record the backward pass itself, for higher-order gradients.

    >>> import minidl
    >>> x = minidl.tensor([1.0, 2.0], requires_grad=True)
    >>> minidl.autograd.backward([(x * x).sum(), x.sum()]); x.grad
    tensor([3., 5.])
    """
    tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    grads = [None] * len(tensors) if grad_tensors is None else (
        [grad_tensors] if isinstance(grad_tensors, Tensor) else list(grad_tensors))
    keep = create_graph if retain_graph is None else retain_graph
    _run_backward(tensors, grads, keep, create_graph, _IntoGrad(create_graph))


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Any = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor | None, ...]:
    """Return d(outputs)/d(inputs) without touching any ``.grad`` (like
    ``torch.autograd.grad``).

    >>> import minidl
    >>> x = minidl.tensor([3.0], requires_grad=True)
    >>> (g,) = minidl.autograd.grad(x * x, x, create_graph=True)
    >>> g.tolist(), minidl.autograd.grad(g, x)[0].tolist()
    ([6.0], [2.0])
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    grads = [None] * len(outputs) if grad_outputs is None else (
        [grad_outputs] if isinstance(grad_outputs, Tensor) else list(grad_outputs))
    if len(grads) != len(outputs):
        raise ValueError(f"grad(): {len(grads)} grad_outputs for {len(outputs)} outputs")
    for i, t in enumerate(inputs):
        if not t.requires_grad:
            raise RuntimeError(f"grad(): input {i} does not require grad")
    keep = create_graph if retain_graph is None else retain_graph
    sink = _Capture(inputs)
    _run_backward(outputs, grads, keep, create_graph, sink)
    result = tuple(sink.grads.get(id(t)) for t in inputs)
    if not allow_unused and any(g is None for g in result):
        i = next(i for i, g in enumerate(result) if g is None)
        raise RuntimeError(f"grad(): input {i} was not used to compute the outputs; pass "
                           "allow_unused=True to get None for it")
    return result


# ----------------------------------------------------------------------------------------
# constructors


def from_dlpack(obj: Any) -> Tensor:
    """A tensor sharing memory with ``obj`` through DLPack: a NumPy or CuPy array, a PyTorch
    tensor (CPU or CUDA), a JAX array, or anything else with ``__dlpack__``. No copy is made,
    so writes on either side are seen by the other; the result does not require grad.

    >>> import numpy as np
    >>> a = np.arange(3.0)
    >>> t = from_dlpack(a); a[0] = 7.0; t.tolist()
    [7.0, 1.0, 2.0]
    """
    return Tensor(backend.from_dlpack(obj))


def tensor(
    data: Any,
    dtype: Any = None,
    device: str | Device | None = None,
    requires_grad: bool = False,
) -> Tensor:
    """Build a tensor from a Python number, nested list, NumPy/CuPy array or Tensor.

    Python floats become float32 (the default float type); Python ints become int64. A
    NumPy array keeps its dtype (so a float64 array stays float64 for gradient checks).

    >>> tensor([[1, 2], [3, 4]]).dtype
    dtype('int64')
    >>> tensor([0.5]).dtype
    dtype('float32')
    """
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.get_array_module(data)
    dtype = None if dtype is None else np.dtype(dtype)
    if isinstance(data, (xp.ndarray, np.generic)):
        arr = xp.array(data, dtype=dtype, copy=True)
    else:
        try:
            arr = np.array(data, dtype=dtype)
        except ValueError as exc:
            if "inhomogeneous" not in str(exc):
                raise
            raise ValueError("tensor(): ragged nested sequence; the lists at each nesting "
                             f"level must all have the same length (NumPy: {exc})") from None
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(_DEFAULT_FLOAT)
        elif dtype is None and arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        if arr.dtype == object:
            raise TypeError(f"tensor(): cannot build a tensor from {type(data).__name__}")
    if device is not None:
        arr = backend.to_device(arr, device)
    return Tensor(arr, requires_grad=requires_grad)


def _factory(fill: Callable[..., Any]) -> Callable[..., Tensor]:
    @functools.wraps(fill)
    def make(*shape: Any, dtype: Any = _DEFAULT_FLOAT, device: str | Device = "cpu",
             requires_grad: bool = False) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        dev = Device(device)
        if dev.type == "cpu":
            arr = fill(np, shape, np.dtype(dtype))
        else:  # allocate on the requested GPU, not on CuPy's current one
            with backend.device_scope(dev):
                arr = fill(dev.xp, shape, np.dtype(dtype))
        return Tensor(arr, requires_grad=requires_grad)

    return make


zeros = _factory(lambda xp, shape, dtype: xp.zeros(shape, dtype=dtype))
zeros.__doc__ = """A tensor of zeros: ``zeros(2, 3)`` or ``zeros((2, 3), dtype=..., device=...)``.

>>> zeros(2, 3).shape
(2, 3)
"""
ones = _factory(lambda xp, shape, dtype: xp.ones(shape, dtype=dtype))
ones.__doc__ = """A tensor of ones: ``ones(2, 3)`` or ``ones((2, 3), dtype=..., device=...)``.

>>> ones(2)
tensor([1., 1.])
"""


def randn(*shape: Any, dtype: Any = _DEFAULT_FLOAT, device: str | Device = "cpu",
          requires_grad: bool = False) -> Tensor:
    """Standard-normal samples from minidl's seeded generator (drawn on CPU, then moved).

    >>> randn(2, 3).shape
    (2, 3)
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    a = default_generator().standard_normal(shape).astype(dtype)
    return Tensor(backend.to_device(a, device), requires_grad=requires_grad)


def rand(*shape: Any, dtype: Any = _DEFAULT_FLOAT, device: str | Device = "cpu",
         requires_grad: bool = False) -> Tensor:
    """Uniform [0, 1) samples from minidl's seeded generator.

    >>> rand(4).shape
    (4,)
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    a = default_generator().random(shape).astype(dtype)
    return Tensor(backend.to_device(a, device), requires_grad=requires_grad)


def iter_graph(t: Tensor) -> Iterator[Function]:
    """Yield the recorded Functions behind ``t`` in reverse topological order (debugging).

    >>> import minidl
    >>> x = minidl.tensor([1.0], requires_grad=True)
    >>> [f.name for f in minidl.autograd.iter_graph((x * 2).exp())]
    ['Exp', 'Mul']
    """
    if t._ctx is not None:
        yield from _toposort([t._ctx])
