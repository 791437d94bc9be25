"""Adam and AdamW, following PyTorch's updates. With ``t`` the step count,

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g^2                  (amsgrad: vmax = max(vmax, v), used below)
    p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

``Adam``'s ``weight_decay`` adds ``weight_decay * p`` to the gradient (an L2 penalty, which
Adam then rescales per coordinate); ``AdamW`` decouples it, shrinking the weights directly:
``p = p * (1 - lr * weight_decay)`` before the Adam step (Loshchilov & Hutter).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from minidl.kernels.elementwise import adam_update_
from minidl.optim.optimizer import Optimizer


class Adam(Optimizer):
    """Adam with optional L2 weight decay and AMSGrad.

    Args:
        params: parameters, ``model.named_parameters()``, or group dicts.
        lr: learning rate.
        betas: decay rates ``(b1, b2)`` of the first and second moment estimates.
        eps: added to the denominator for stability.
        weight_decay: L2 penalty coefficient (added to the gradient).
        amsgrad: use the running maximum of the second moment.

    >>> import minidl, minidl.nn, minidl.optim
    >>> p = minidl.nn.Parameter(minidl.tensor([1.0]))
    >>> opt = Adam([p], lr=0.1)
    >>> p.grad = minidl.tensor([5.0]); opt.step(); round(p.item(), 4)
    0.9
    """

    _decoupled = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        name = type(self).__name__
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{name}: betas must be in [0, 1), got {group['betas']}")
        if group["eps"] < 0:
            raise ValueError(f"{name}: eps must be >= 0, got {group['eps']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"{name}: weight_decay must be >= 0, got {group['weight_decay']}")

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        name_ = type(self).__name__
        for group, name, p in self._named():
            if p.grad is None:
                continue
            lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
            b1, b2 = (float(b) for b in group["betas"])
            g = self._grad(p, name, name_)
            xp = p.xp
            st = self._state_for(name, p)
            if not st:
                st["step"] = 0
                st["exp_avg"] = xp.zeros_like(p.data)
                st["exp_avg_sq"] = xp.zeros_like(p.data)
                if group["amsgrad"]:
                    st["max_exp_avg_sq"] = xp.zeros_like(p.data)
            if wd:
                if self._decoupled:
                    p.data *= 1.0 - lr * wd
                else:
                    g = g + wd * p.data
            st["step"] += 1
            t = st["step"]
            m, v = st["exp_avg"], st["exp_avg_sq"]
            bc1 = 1.0 - b1 ** t
            bc2_sqrt = math.sqrt(1.0 - b2 ** t)
            if not group["amsgrad"] and adam_update_(p.data, g, m, v, b1, b2, lr / bc1,
                                                     bc2_sqrt, eps):
                continue  # one fused pass on CPU; the formula below is the general path
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            if group["amsgrad"]:
                vmax = st.setdefault("max_exp_avg_sq", xp.zeros_like(p.data))
                xp.maximum(vmax, v, out=vmax)
                v = vmax
            denom = xp.sqrt(v) / bc2_sqrt + eps
            p.data -= (lr / bc1) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (default ``weight_decay=0.01``, as in PyTorch).

    >>> import minidl, minidl.nn, minidl.optim
    >>> p = minidl.nn.Parameter(minidl.tensor([1.0]))
    >>> opt = AdamW([p], lr=0.1, weight_decay=0.5)
    >>> p.grad = minidl.tensor([5.0]); opt.step(); round(p.item(), 4)
    0.85
    """

    _decoupled = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)
