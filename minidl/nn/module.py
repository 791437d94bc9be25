"""``Module`` and ``Parameter``: the containers that hold a model's state.

A ``Module`` registers what is assigned to it: a ``Parameter`` becomes a parameter, a
``Module`` a submodule, and ``register_buffer`` declares non-trainable state (running
statistics). Everything is kept in insertion-ordered dicts, so ``named_parameters()`` walks
the model in a deterministic registration order: optimizer state, ``state_dict`` keys and
checkpoints all rely on that order and on the dotted names (``"features.0.weight"``).

Moving a module (``to(device)``, ``double()``) swaps the arrays *inside* the existing
``Parameter`` objects, so an optimizer built before the move keeps working.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from minidl import backend
from minidl.autograd import Tensor
from minidl.backend import Device
from minidl.nn.summary import summary


class Parameter(Tensor):
    """A tensor that a ``Module`` registers as trainable state (``requires_grad=True``).

    >>> import minidl
    >>> p = minidl.nn.Parameter(minidl.zeros(2))
    >>> p.requires_grad, p.is_leaf
    (True, True)
    """

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class _IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class _HookHandle:
    """Returned by ``register_forward_hook``; ``remove()`` unregisters the hook."""

    def __init__(self, hooks: dict, key: int) -> None:
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


_hook_counter = [0]


class Module:
    """Base class of every layer and model.

    Subclasses set parameters and submodules as attributes in ``__init__`` and implement
    ``forward``; calling the module runs ``forward`` (and any forward hooks).

    >>> import minidl
    >>> class Net(minidl.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = minidl.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         return self.fc(x)
    >>> [name for name, _ in Net().named_parameters()]
    ['fc.weight', 'fc.bias']
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    # -- registration ----------
    def _check_init(self, what: str) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: cannot assign {what} before "
                                 "Module.__init__() is called (call super().__init__() first)")

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if isinstance(value, Parameter):
            self._check_init("parameters")
            self._forget(name, keep="_parameters")
            d["_parameters"][name] = value
        elif isinstance(value, Module):
            self._check_init("submodules")
            self._forget(name, keep="_modules")
            d["_modules"][name] = value
        elif "_buffers" in d and name in d["_buffers"]:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{type(self).__name__}: buffer {name!r} must be a Tensor or "
                                f"None, got {type(value).__name__}")
            d["_buffers"][name] = value
        elif "_parameters" in d and name in d["_parameters"]:
            if value is not None:  # e.g. a plain Tensor: keep the parameter, as PyTorch does
                raise TypeError(f"cannot assign {type(value).__name__!r} as parameter {name!r} "
                                "(nn.Parameter or None expected)")
            d["_parameters"][name] = None
        elif "_modules" in d and name in d["_modules"] and value is not None:
            raise TypeError(f"cannot assign {type(value).__name__!r} as child module {name!r} "
                            "(nn.Module or None expected)")
        else:
            if "_parameters" in d:
                self._forget(name)
            object.__setattr__(self, name, value)

    def _forget(self, name: str, keep: str = "") -> None:
        # Drop ``name`` from every store but ``keep``: re-assigning there replaces the value
        # in place, so a replaced layer keeps its position (Sequential order, state_dict).
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store != keep:
                d[store].pop(name, None)
        d["_non_persistent"].discard(name)
        d.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if name in d[store]:
                del d[store][name]
                d["_non_persistent"].discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or a ``None`` placeholder, e.g. a disabled bias)."""
        self._check_init("parameters")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"{type(self).__name__}.register_parameter: {name!r} must be a "
                            f"Parameter or None, got {type(param).__name__}")
        self._forget(name, keep="_parameters")
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register non-trainable state saved in ``state_dict`` (unless ``persistent=False``)
        and moved by ``to()``."""
        self._check_init("buffers")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"{type(self).__name__}.register_buffer: {name!r} must be a Tensor "
                            f"or None, got {type(tensor).__name__}")
        self._forget(name, keep="_buffers")
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register ``module`` as a child called ``name``."""
        self._check_init("submodules")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module, got "
                            f"{type(module).__name__}")
        self._forget(name, keep="_modules")
        self._modules[name] = module

    # -- traversal ----------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield ``(name, module)`` for this module and every descendant, depth-first, each
        once."""
        seen: set[int] = set()
        stack: list[tuple[str, Module]] = [(prefix, self)]
        while stack:  # iterative pre-order walk; children pushed in reverse to keep order
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            kids = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items()
                    if m is not None]
            stack.extend(reversed(kids))

    def modules(self) -> Iterator[Module]:
        """This module and all its descendants."""
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Direct submodules with their names."""
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[Module]:
        """Direct submodules."""
        for _, m in self.named_children():
            yield m

    def _named_members(self, store: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Any]]:
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mname, mod in mods:
            for k, v in getattr(mod, store).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mname}.{k}" if mname else k), v

    def named_parameters(self, prefix: str = "", recurse: bool = True
                         ) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(dotted_name, parameter)`` in registration order (shared ones once)."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Yield the parameters in registration order."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True
                      ) -> Iterator[tuple[str, Tensor]]:
        """Yield ``(dotted_name, buffer)`` in registration order."""
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        """Yield the buffers in registration order."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call ``fn`` on every submodule (children first) and on self; return self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- modes ----------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active, batch norm uses batch statistics) recursively."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Set evaluation mode recursively; same as ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze every parameter."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (``set_to_none=False`` fills zeros instead)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = Tensor._make(p.xp.zeros_like(p.data), False)

    # -- device and dtype ----------
    def to(self, device: str | Device | None = None, dtype: Any = None) -> Module:
        """Move parameters and buffers to ``device`` and/or cast floating ones to ``dtype``,
        in place (the same ``Parameter`` objects keep existing); return self.

        >>> import minidl
        >>> m = minidl.nn.Linear(2, 2)
        >>> w = m.weight
        >>> m.to("cpu").weight is w
        True
        """
        dev = None if device is None else Device(device)
        dt = None if dtype is None else np.dtype(dtype)
        if dt is not None and dt.kind != "f":
            raise TypeError(f"Module.to: dtype must be floating point, got {dt}")

        def convert(a: Any) -> Any:
            if dev is not None:
                a = backend.to_device(a, dev)
            if dt is not None and a.dtype.kind == "f" and a.dtype != dt:
                a = a.astype(dt)
            return a

        for p in self.parameters():
            p.data = convert(p.data)
            if p.grad is not None:
                p.grad = Tensor._make(convert(p.grad.data), False)
        for b in self.buffers():
            b.data = convert(b.data)
        return self

    def cpu(self) -> Module:
        """Move parameters and buffers to the host, in place; returns self (``to("cpu")``)."""
        return self.to("cpu")

    def cuda(self, index: int = 0) -> Module:
        """Move parameters and buffers to GPU ``index`` in place (needs CuPy); returns self."""
        return self.to(f"cuda:{index}")

    def float(self) -> Module:
        """Cast floating parameters and buffers to float32."""
        return self.to(dtype=np.float32)

    def double(self) -> Module:
        """Cast floating parameters and buffers to float64 (for gradient checks)."""
        return self.to(dtype=np.float64)

    # -- state dict ----------
    def _state_items(self) -> Iterator[tuple[str, Tensor]]:
        for mname, mod in self.named_modules():
            for k, v in mod._parameters.items():
                if v is not None:
                    yield (f"{mname}.{k}" if mname else k), v
            for k, v in mod._buffers.items():
                if v is not None and k not in mod._non_persistent:
                    yield (f"{mname}.{k}" if mname else k), v

    def state_dict(self) -> OrderedDict[str, Tensor]:
        """Parameters and persistent buffers by dotted name, as detached tensors that share
        memory with the model (as in PyTorch: copy them to keep a snapshot).

        >>> import minidl
        >>> list(minidl.nn.BatchNorm1d(3).state_dict())
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
        """
        return OrderedDict((k, v.detach()) for k, v in self._state_items())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True
                        ) -> _IncompatibleKeys:
        """Copy values (tensors or NumPy/CuPy arrays) into the parameters and buffers.

        Values are cast to each parameter's dtype and copied to its *current* device, so
        loading never moves the model. Shapes must match exactly; with ``strict`` the keys
        must match too.

        Returns:
            ``(missing_keys, unexpected_keys)``.

        Raises:
            KeyError: with ``strict``, when keys are missing or unexpected (both listed).
            ValueError: when a value's shape differs from the model's.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            lines = [f"load_state_dict: state dict does not match {type(self).__name__}"]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
            lines.append("  (a checkpoint from another architecture? pass strict=False to "
                         "load the matching keys only)")
            raise KeyError("\n".join(lines))
        arrays = {}
        for k, t in own.items():  # check everything before changing anything
            if k not in state_dict:
                continue
            v = state_dict[k]
            v = v.data if isinstance(v, Tensor) else v
            if not hasattr(v, "shape"):
                v = np.asarray(v)
            if tuple(v.shape) != t.shape:
                raise ValueError(f"load_state_dict: size mismatch for {k}: checkpoint has shape "
                                 f"{tuple(v.shape)}, model has shape {t.shape}")
            arrays[k] = v
        for k, v in arrays.items():
            t = own[k]
            t.data[...] = backend.to_device(v, t.device).astype(t.dtype, copy=False)
        return _IncompatibleKeys(missing, unexpected)

    # -- hooks and calls ----------
    def register_forward_hook(self, hook: Callable[[Module, tuple, Any], Any]) -> _HookHandle:
        """Call ``hook(module, inputs, output)`` after every forward; a non-None return
        replaces the output. Returns a handle with ``remove()``."""
        _hook_counter[0] += 1
        self._forward_hooks[_hook_counter[0]] = hook
        return _HookHandle(self._forward_hooks, _hook_counter[0])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the module's output; subclasses implement it. Call the module
        (``module(x)``) rather than ``forward`` so that forward hooks run."""
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            res = hook(self, args, out)
            if res is not None:
                out = res
        return out

    def summary(self, input_shape: tuple[int | None, ...], **kwargs: Any) -> str | None:
        """Print a Keras-style table of layers for an input of ``input_shape`` (batch axis
        included, e.g. ``(1, 3, 32, 32)``), or return it with ``print_fn=None``; see
        ``minidl.nn.summary``."""
        return summary(self, input_shape, **kwargs)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Total number of parameter elements."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- repr ----------
    def extra_repr(self) -> str:
        """The text inside the parentheses of this module's repr line."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        kids = [f"({k}): " + _indent(repr(m)) for k, m in self._modules.items() if m is not None]
        if not kids:
            return f"{type(self).__name__}({extra})"
        lines = ([extra] if extra else []) + kids
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")
