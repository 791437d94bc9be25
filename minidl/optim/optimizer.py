"""The ``Optimizer`` base class: parameter groups, per-parameter state keyed by *name*, and
``state_dict``/``load_state_dict``; plus ``clip_grad_norm_``.

Parameter names come from ``model.named_parameters()`` (``"fc.weight"``) or, for a plain list
of parameters, from their position (``"0"``, ``"1"``, ...). Keying state by name rather than
by ``id(param)`` is what lets a checkpoint restore an optimizer into a fresh process, onto
fresh parameter objects, possibly on another device.

Updates run on the raw arrays (``param.data``) outside autograd, in the parameter's dtype:
every hyperparameter enters as a Python float, which NumPy 2 treats as "weak", so float32
parameters and state stay float32. Gradient arrays are never written to: autograd may hand
the same array (or a read-only broadcast view) to several parameters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Tensor


def _is_named_pair(item: Any) -> bool:
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], Tensor))


class Optimizer:
    """Base class: holds ``param_groups`` and per-parameter ``state``; subclasses implement
    ``step``.

    Args:
        params: an iterable of parameters, of ``(name, parameter)`` pairs (such as
            ``model.named_parameters()``), or of dicts ``{"params": ..., "lr": ...}`` that
            override the defaults per group.
        defaults: the hyperparameters of every group that does not override them.

    Each group is a dict with ``"params"`` (the Parameter objects), ``"param_names"`` and
    its hyperparameters; ``state[name]`` is a dict of arrays and numbers.

    >>> import minidl, minidl.nn
    >>> class PlainSGD(Optimizer):
    ...     def __init__(self, params, lr=0.1):
    ...         super().__init__(params, dict(lr=lr))
    ...     def step(self):
    ...         for group in self.param_groups:
    ...             for p in group["params"]:
    ...                 if p.grad is not None:
    ...                     p.data -= group["lr"] * p.grad.data
    >>> p = minidl.nn.Parameter(minidl.tensor([1.0]))
    >>> opt = PlainSGD([p], lr=0.5); p.grad = minidl.tensor([1.0]); opt.step(); p.tolist()
    [0.5]
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[str, dict[str, Any]] = {}
        self._count = 0
        items = list(params)
        if not items:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (e.g. a smaller lr)."""
        name = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{name}: a parameter group must be a dict with a 'params' key, "
                            f"got {type(group).__name__}")
        raw = group["params"]
        raw = [raw] if isinstance(raw, Tensor) else list(raw)
        params, names = [], []
        for item in raw:
            if _is_named_pair(item):
                pname, p = item
            elif isinstance(item, Tensor):
                pname, p = str(self._count), item
            else:
                raise TypeError(f"{name}: parameters must be Tensors or (name, Tensor) pairs, "
                                f"got {type(item).__name__}")
            self._count += 1
            if not p.requires_grad:
                raise ValueError(f"{name}: parameter {pname!r} does not require grad")
            if not p.is_leaf:
                raise ValueError(f"{name}: parameter {pname!r} is not a leaf tensor")
            params.append(p)
            names.append(pname)
        known = {id(p) for g in self.param_groups for p in g["params"]}
        known_names = {n for g in self.param_groups for n in g["param_names"]}
        for p, pname in zip(params, names):
            if id(p) in known or pname in known_names:
                raise ValueError(f"{name}: parameter {pname!r} appears in more than one group "
                                 "(or twice in one)")
            known.add(id(p))
            known_names.add(pname)
        new = {k: v for k, v in self.defaults.items()}
        new.update({k: v for k, v in group.items() if k not in ("params", "param_names")})
        for k, v in new.items():
            if v is _REQUIRED:
                raise ValueError(f"{name}: parameter group is missing the required "
                                 f"hyperparameter {k!r}")
        new["params"], new["param_names"] = params, names
        self._check_group(new)
        self.param_groups.append(new)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters (subclasses raise ValueError naming them)."""
        if group.get("lr", 0.0) < 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {group['lr']}")

    def _named(self) -> Iterable[tuple[dict[str, Any], str, Tensor]]:
        for g in self.param_groups:
            for name, p in zip(g["param_names"], g["params"]):
                yield g, name, p

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients of every parameter (``set_to_none=False`` fills zeros)."""
        for _, _, p in self._named():
            p.grad = None if set_to_none or p.grad is None else Tensor._make(
                p.xp.zeros_like(p.data), False)

    def step(self) -> None:  # pragma: no cover - abstract
        """Update every parameter that has a ``.grad`` in place (one optimisation step).

        Parameters whose ``.grad`` is None are skipped. Subclasses implement the update rule.
        """
        raise NotImplementedError(f"{type(self).__name__}.step is not implemented")

    def _state_for(self, name: str, p: Tensor) -> dict[str, Any]:
        """The state of parameter ``name``, its arrays moved to ``p``'s device if the model
        was moved since they were created (``model.to(device)`` after some steps)."""
        st = self.state.setdefault(name, {})
        if st:
            dev = p.device
            for k, v in st.items():
                if hasattr(v, "shape") and backend.device_of(v) != dev:
                    st[k] = backend.to_device(v, dev)
        return st

    @staticmethod
    def _grad(p: Tensor, name: str, opt: str) -> Any:
        g = p.grad.data
        if g.shape != p.data.shape:
            raise RuntimeError(f"{opt}: gradient of {name!r} has shape {g.shape}, parameter has "
                               f"{p.shape}")
        return g if g.dtype == p.data.dtype else g.astype(p.data.dtype)

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the optimizer as plain data: ``{"state": {name: {key: NumPy array or
        number}}, "param_groups": [{hyperparameters..., "params": [names]}]}``.

        Arrays are copied to the CPU, so the snapshot never changes as training goes on.
        """
        state = {}
        for name, st in self.state.items():
            state[name] = {k: (np.array(backend.to_numpy(v)) if hasattr(v, "shape") else v)
                           for k, v in st.items()}
        groups = []
        for g in self.param_groups:
            d = {k: copy.deepcopy(v) for k, v in g.items() if k not in ("params", "param_names")}
            d["params"] = list(g["param_names"])
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a ``state_dict()``: hyperparameters per group and per-parameter state, the
        arrays put on each parameter's current device in its dtype.

        Raises:
            ValueError: if the groups or parameter names do not match this optimizer's.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError(f"{name}.load_state_dict: expected a dict with keys 'state' and "
                             "'param_groups' (from Optimizer.state_dict())")
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: state dict has {len(saved)} parameter "
                             f"groups, optimizer has {len(self.param_groups)}")
        for i, (sg, g) in enumerate(zip(saved, self.param_groups)):
            if list(sg["params"]) != list(g["param_names"]):
                miss = sorted(set(g["param_names"]) - set(sg["params"]))
                extra = sorted(set(sg["params"]) - set(g["param_names"]))
                raise ValueError(f"{name}.load_state_dict: parameter names of group {i} differ "
                                 f"(missing from state dict: {miss}; unexpected: {extra}; or "
                                 "a different order)")
        params = {n: p for _, n, p in self._named()}
        new_state: dict[str, dict[str, Any]] = {}
        for pname, st in state_dict["state"].items():
            if pname not in params:
                raise ValueError(f"{name}.load_state_dict: state for unknown parameter "
                                 f"{pname!r}")
            p = params[pname]
            entry = {}
            for k, v in st.items():
                if hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"{name}.load_state_dict: state {k!r} of {pname!r} has "
                                         f"shape {tuple(v.shape)}, parameter has {p.shape}")
                    arr = backend.to_device(backend.to_numpy(v), p.device)
                    entry[k] = p.xp.array(arr, dtype=p.dtype if arr.dtype.kind == "f"
                                          else arr.dtype, copy=True)
                elif hasattr(v, "shape"):  # a 0-d array: back to a Python number
                    entry[k] = backend.to_numpy(v).item()
                else:
                    entry[k] = v
            new_state[pname] = entry
        for sg, g in zip(saved, self.param_groups):
            for k, v in sg.items():
                if k != "params":
                    g[k] = tuple(v) if isinstance(v, list) and k == "betas" else copy.deepcopy(v)
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k not in ("params", "param_names"):
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                    norm_type: float = 2.0) -> float:
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    The norm is taken over all gradients as if concatenated into one vector. Gradients are
    replaced by scaled copies (never scaled in place: autograd may share gradient arrays).

    Returns:
        The total norm before clipping, as a Python float.

    >>> import minidl, minidl.nn, minidl.optim
    >>> p = minidl.nn.Parameter(minidl.zeros(2))
    >>> p.grad = minidl.tensor([3.0, 4.0])
    >>> clip_grad_norm_([p], 1.0), [round(v, 3) for v in p.grad.tolist()]
    (5.0, [0.6, 0.8])
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        total = max(float(abs(p.grad.data).max()) for p in params)
    else:
        acc = 0.0
        for p in params:
            g = p.grad.data
            acc += float((abs(g) ** norm_type).sum(dtype=np.float64))
        total = acc ** (1.0 / norm_type)
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            p.grad = Tensor._make(p.grad.data * coef, False)
    return total
