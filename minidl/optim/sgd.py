"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight
decay, following PyTorch's update exactly:

    g = grad + weight_decay * p
    b = g                                    (first step)
    b = momentum * b + (1 - dampening) * g   (later steps)
    g = g + momentum * b   if nesterov   else   b
    p = p - lr * g
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from minidl.optim.optimizer import Optimizer


class SGD(Optimizer):
    """SGD, optionally with (Nesterov) momentum and weight decay.

    Args:
        params: parameters, ``model.named_parameters()``, or group dicts.
        lr: learning rate.
        momentum: momentum factor (0 disables the buffer).
        dampening: dampening of the gradient added to the momentum buffer.
        weight_decay: L2 penalty coefficient (added to the gradient).
        nesterov: use Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).

    >>> import minidl, minidl.nn, minidl.optim
    >>> p = minidl.nn.Parameter(minidl.tensor([1.0]))
    >>> opt = SGD([p], lr=0.1)
    >>> p.grad = minidl.tensor([2.0]); opt.step(); p.tolist()
    [0.800000011920929]
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        if group["momentum"] < 0:
            raise ValueError(f"SGD: momentum must be >= 0, got {group['momentum']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for group, name, p in self._named():
            if p.grad is None:
                continue
            lr, mom, wd = float(group["lr"]), float(group["momentum"]), float(
                group["weight_decay"])
            g = self._grad(p, name, "SGD")
            if wd:
                g = g + wd * p.data
            if mom:
                st = self._state_for(name, p)
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = g.copy()
                else:
                    buf *= mom
                    buf += (1.0 - float(group["dampening"])) * g
                g = g + mom * buf if group["nesterov"] else buf
            p.data -= lr * g
