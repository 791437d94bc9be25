"""``SyncBatchNorm``: batch norm whose batch statistics are taken over every rank's images.

Plain batch norm in data-parallel training normalizes each rank's ``b`` images with their
own mean and variance, so a ``W``-rank run is not the same computation as one process with
``B = W * b`` images (and at small ``b`` the statistics get noisy). Synchronized batch norm
sums over all ranks instead. For channel ``c`` over the ``M = sum_r M_r`` values of all ranks
(``M_r = b * H * W`` on rank ``r``):

    forward : mean = allreduce(sum x) / M,  var = allreduce(sum (x - mean)^2) / M
    backward: S1 = allreduce(sum gy),       S2 = allreduce(sum gy * xhat)
              gx = weight * inv_std / M * (M * gy - S1 - xhat * S2)

Each allreduce carries ``C`` numbers (two passes for the variance, which is exact where
``E[x^2] - mean^2`` would cancel catastrophically in float32). The weight and bias gradients
stay per rank, ``sum gy * xhat`` and ``sum gy`` over the rank's own values, because
``DistributedDataParallel`` averages them like every other gradient. Why ``gx`` uses the
global sums: rank ``r``'s input moves the shared statistics, and so every rank's loss, and
the global sums are exactly those contributions. In eval mode (running statistics) and in a
world of one, it is plain ``BatchNorm2d``/``BatchNorm1d``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Function, Tensor, is_grad_enabled
from minidl.distributed.comm import Communicator, get_world
from minidl.functional.activation import relu
from minidl.nn import Module
from minidl.nn.norm import _BatchNorm


class SyncBatchNormFunction(Function):
    """Batch norm over the values of all ranks; inputs ``x (N, C, ...)`` and, when affine,
    ``weight (C,)``, ``bias (C,)``.

    Options: ``world``, ``running_mean``/``running_var`` (raw arrays or None, updated in
    place with the global statistics), ``momentum``, ``eps``.
    """

    def forward(self, x: Any, weight: Any = None, bias: Any = None) -> Any:
        xp = backend.get_array_module(x)
        c = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))
        pshape = (1, c) + (1,) * (x.ndim - 2)
        # One message: the per-channel sums and this rank's count.
        first = xp.empty(c + 1, dtype=np.float64)
        first[:c] = x.sum(axis=axes, dtype=np.float64)
        first[c] = x.size // c
        self.world.allreduce_(first)
        m = float(first[c])
        mean64 = first[:c] / m
        centered = x - mean64.astype(x.dtype).reshape(pshape)
        var64 = (centered * centered).sum(axis=axes, dtype=np.float64)
        self.world.allreduce_(var64)
        var64 /= m
        if self.running_mean is not None:
            mom = self.momentum
            rm, rv = self.running_mean, self.running_var
            rm[...] = rm * (1.0 - mom) + mean64.astype(rm.dtype) * mom
            rv[...] = rv * (1.0 - mom) + (var64 * (m / max(m - 1.0, 1.0))).astype(rv.dtype) * mom
        inv_std = (1.0 / xp.sqrt(var64 + self.eps)).astype(x.dtype).reshape(pshape)
        xhat = centered * inv_std
        self.save_for_backward(xhat, inv_std, m, axes, pshape)
        if weight is None:
            return xhat
        return xhat * weight.reshape(pshape) + bias.reshape(pshape)

    def backward(self, gy: Tensor) -> Any:
        if is_grad_enabled():
            raise RuntimeError("SyncBatchNorm: double backward (create_graph=True) is not "
                               "supported")
        xhat, inv_std, m, axes, pshape = self.saved
        g = gy.data
        xp = backend.get_array_module(g)
        c = g.shape[1]
        sums = xp.empty(2 * c, dtype=np.float64)
        sums[:c] = g.sum(axis=axes, dtype=np.float64)
        sums[c:] = (g * xhat).sum(axis=axes, dtype=np.float64)
        local = sums.copy()  # this rank's weight and bias gradients
        self.world.allreduce_(sums)
        affine = len(self.inputs) == 3
        w = self.inputs[1].data.reshape(pshape) if affine else 1.0
        s1 = sums[:c].astype(g.dtype).reshape(pshape)
        s2 = sums[c:].astype(g.dtype).reshape(pshape)
        gx = (g * g.dtype.type(m) - s1 - xhat * s2) * (w * inv_std * g.dtype.type(1.0 / m))
        gx_t = Tensor._make(gx, False)
        if not affine:
            return gx_t
        dtype = self.inputs[1].dtype
        return (gx_t, Tensor._make(local[c:].astype(dtype), False),
                Tensor._make(local[:c].astype(dtype), False))


class SyncBatchNorm(_BatchNorm):
    """Batch norm with batch statistics over all ranks (``(N, C)``, ``(N, C, L)`` or
    ``(N, C, H, W)`` inputs); plain batch norm in eval mode and in a world of one.

    Build it directly or convert a model's batch-norm layers with
    ``SyncBatchNorm.convert_sync_batchnorm(model)``.

    Args:
        num_features: the channels ``C``.
        eps: added to the variance.
        momentum: weight of each batch in the running statistics (None: cumulative mean).
        affine: learn a per-channel scale and shift.
        track_running_stats: keep running statistics for eval mode.
        activation: None or ``"relu"`` (applied after the normalization).
        dtype: of the parameters and buffers.
        world: the communicator (default ``get_world()`` at each forward).

    >>> import minidl
    >>> bn = SyncBatchNorm(3)
    >>> bn(minidl.randn(4, 3, 2, 2)).shape
    (4, 3, 2, 2)
    """

    _ndims = (2, 3, 4)
    _layout = "(N, C), (N, C, L) or (N, C, H, W)"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 activation: str | None = None, dtype: Any = np.float32,
                 world: Communicator | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         activation, dtype)
        self.world = world

    def forward(self, x: Tensor) -> Tensor:
        world = self.world or get_world()
        if not self.training or world.size == 1:
            return super().forward(x)
        if not isinstance(x, Tensor):
            raise TypeError(f"SyncBatchNorm: expected a Tensor input, got {type(x).__name__}")
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: expected a {self._layout} input with "
                             f"{self.num_features} channels, got shape {x.shape}")
        momentum = 0.0 if self.momentum is None else self.momentum
        running = self.track_running_stats
        if running:
            self.num_batches_tracked.data += 1
            if self.momentum is None:
                momentum = 1.0 / int(self.num_batches_tracked.data)
        inputs = (x,) if self.weight is None else (x, self.weight, self.bias)
        out = SyncBatchNormFunction.apply(
            *inputs, world=world, momentum=momentum, eps=self.eps,
            running_mean=self.running_mean.data if running else None,
            running_var=self.running_var.data if running else None)
        return relu(out) if self.activation == "relu" else out

    @classmethod
    def convert_sync_batchnorm(cls, module: Module,
                               world: Communicator | None = None) -> Module:
        """Replace every ``BatchNorm1d``/``BatchNorm2d`` in ``module`` by a
        ``SyncBatchNorm`` holding the same parameters and buffers; returns the module (the
        converted copy when ``module`` itself is a batch norm)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, module.activation, world=world)
            for name in ("weight", "bias"):
                setattr(new, name, getattr(module, name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, name, getattr(module, name))
            new.train(module.training)
            return new
        for name, child in list(module.named_children()):
            converted = cls.convert_sync_batchnorm(child, world)
            if converted is not child:
                setattr(module, name, converted)
        return module
