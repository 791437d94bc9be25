"""``DistributedDataParallel``: one model per rank, kept identical by averaging gradients.

Why it works: the loss of a batch of ``B = W * b`` images is the mean of ``W`` per-rank
losses over ``b`` images each, ``L = (1/W) sum_r L_r``, so its gradient is the mean of the
per-rank gradients, ``dL/dw = (1/W) sum_r dL_r/dw``. If every rank starts from the same
weights (broadcast from rank 0 here) and applies the same averaged gradient with the same
optimizer, the weights stay identical on every rank, step after step, and equal those of
one process training on the whole batch ``B``.

The averaging is one ``allreduce`` (a sum over ranks) per *bucket*: the gradients are copied
into a few flat buffers of about ``bucket_cap_mb`` each (PyTorch DDP's default is 25 MB,
Horovod calls it tensor fusion), because one message per parameter would pay the network
latency dozens of times per step. It runs after ``backward`` and before the optimizer step
(``Trainer`` calls ``allreduce_gradients``; a hand-written loop calls it itself).

Buffers (batch-norm running statistics) are updated by each rank from its own images and
drift apart; ``sync_buffers`` averages them (integer buffers such as
``num_batches_tracked`` are taken from rank 0), and ``Trainer`` calls it before evaluating
and before writing a checkpoint. ``SyncBatchNorm`` computes the batch statistics over all
ranks instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidl.autograd import Tensor
from minidl.distributed.comm import Communicator, get_world
from minidl.nn import Module

_MB = 1 << 20


def _signature(module: Module) -> list[tuple[str, str, tuple[int, ...], str]]:
    """(kind, name, shape, dtype) of every parameter and buffer, in registration order."""
    sig = [("parameter", n, tuple(p.shape), str(p.dtype)) for n, p in module.named_parameters()]
    sig += [("buffer", n, tuple(b.shape), str(b.dtype)) for n, b in module.named_buffers()]
    return sig


def check_same_model(module: Module, world: Communicator) -> None:
    """Raise on every rank if any rank's model differs from rank 0's in the names, shapes
    or dtypes of its parameters and buffers; the message names the first difference.

    All ranks take part (one ``allgather``) and reach the same verdict, so a mismatch
    fails the whole job at start-up instead of hanging it at the first gradient allreduce.
    """
    sigs = world.allgather_object(_signature(module))
    ref = sigs[0]
    for rank, sig in enumerate(sigs[1:], 1):
        if sig == ref:
            continue
        for k in range(max(len(ref), len(sig))):
            a = ref[k] if k < len(ref) else None
            b = sig[k] if k < len(sig) else None
            if a != b:
                def show(e: Any) -> str:
                    return "nothing" if e is None else f"{e[0]} {e[1]!r} {e[2]} {e[3]}"
                raise ValueError(
                    f"DistributedDataParallel: the model on rank {rank} differs from rank 0's "
                    f"at entry {k}: rank 0 has {show(a)}, rank {rank} has {show(b)}; every "
                    "rank must build the same architecture")


class _Bucket:
    """Parameters whose gradients travel together in one flat buffer of one dtype."""

    def __init__(self, params: list[Any]) -> None:
        self.params = params
        self.sizes = [int(p.size) for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        first = params[0]
        self.buffer = first.xp.empty(int(self.offsets[-1]), dtype=first.dtype)


class DistributedDataParallel(Module):
    """Wrap a model for data-parallel training: same weights on every rank, averaged
    gradients.

    At construction the ranks check that their models agree (names, shapes, dtypes) and
    take rank 0's parameters and buffers. ``forward`` is the wrapped model's.
    ``state_dict``/``load_state_dict`` are the wrapped model's too (no ``module.`` prefix),
    so a checkpoint of a distributed run loads into a plain model and back.

    Args:
        module: the model (already on its device).
        world: the communicator (default ``get_world()``).
        bucket_cap_mb: the size of one gradient message, in MiB.

    Attributes:
        module (Module): the wrapped model.
        world (Communicator): the communicator.

    In a world of one process (no ``init_process_group``), every method is a no-op:

    >>> import minidl
    >>> from minidl import nn
    >>> model = DistributedDataParallel(nn.Linear(3, 2))
    >>> loss = model(minidl.ones(4, 3)).sum(); loss.backward()
    >>> model.allreduce_gradients(); model.module.weight.grad.shape
    (2, 3)
    """

    def __init__(self, module: Module, world: Communicator | None = None,
                 bucket_cap_mb: float = 25.0) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got "
                            f"{type(module).__name__}")
        if isinstance(module, DistributedDataParallel):
            raise TypeError("DistributedDataParallel: the model is already wrapped")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got "
                             f"{bucket_cap_mb!r}")
        self.module = module
        self.world = world or get_world()
        self.bucket_cap_mb = float(bucket_cap_mb)
        self._buckets: list[_Bucket] | None = None
        if self.world.size > 1:
            check_same_model(module, self.world)
            for t in list(module.parameters()) + list(module.buffers()):
                self.world.broadcast_(_contiguous(t), root=0)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def state_dict(self) -> Any:
        """The wrapped model's ``state_dict`` (after ``sync_buffers``, so it is the same on
        every rank)."""
        self.sync_buffers()
        return self.module.state_dict()

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> Any:
        """Load into the wrapped model (keys without a ``module.`` prefix)."""
        return self.module.load_state_dict(state_dict, strict=strict)

    def summary(self, input_shape: tuple[int | None, ...], **kwargs: Any) -> str | None:
        return self.module.summary(input_shape, **kwargs)

    def _make_buckets(self) -> list[_Bucket]:
        """Group the trainable parameters, in order, into buckets of one dtype and at most
        ``bucket_cap_mb`` (a parameter larger than that gets a bucket of its own)."""
        cap = self.bucket_cap_mb * _MB
        buckets: list[_Bucket] = []
        group: list[Any] = []
        nbytes = 0
        for p in self.module.parameters():
            if not p.requires_grad:
                continue
            if group and (p.dtype != group[0].dtype or nbytes + p.data.nbytes > cap):
                buckets.append(_Bucket(group))
                group, nbytes = [], 0
            group.append(p)
            nbytes += p.data.nbytes
        if group:
            buckets.append(_Bucket(group))
        return buckets

    def allreduce_gradients(self) -> None:
        """Replace every trainable parameter's ``.grad`` by its mean over the ranks.

        Call after ``backward`` and before the optimizer step (and before any gradient
        clipping, so that every rank clips the same gradient). A parameter without a
        gradient on this rank counts as a zero gradient, so every rank sends the same
        buckets. A no-op in a world of one.
        """
        if self.world.size == 1:
            return
        if self._buckets is None:
            self._buckets = self._make_buckets()
        scale = 1.0 / self.world.size
        for bucket in self._buckets:
            flat, off = bucket.buffer, bucket.offsets
            for k, p in enumerate(bucket.params):
                if p.grad is None:
                    flat[off[k]:off[k + 1]] = 0
                else:
                    flat[off[k]:off[k + 1]] = p.grad.data.reshape(-1)
            self.world.allreduce_(flat)
            mean = flat * flat.dtype.type(scale)  # a new array: the views below own it
            for k, p in enumerate(bucket.params):
                p.grad = Tensor._make(mean[off[k]:off[k + 1]].reshape(p.shape), False)

    def sync_buffers(self) -> None:
        """Make the buffers equal on every rank: floating ones (batch-norm running mean
        and variance) averaged, integer ones (``num_batches_tracked``) taken from rank 0."""
        if self.world.size == 1:
            return
        scale = 1.0 / self.world.size
        for b in self.module.buffers():
            data = _contiguous(b)
            if np.dtype(data.dtype).kind == "f":
                self.world.allreduce_(data)
                data *= data.dtype.type(scale)
            else:
                self.world.broadcast_(data, root=0)

    def extra_repr(self) -> str:
        return f"world={self.world!r}, bucket_cap_mb={self.bucket_cap_mb}"


def _contiguous(t: Tensor) -> Any:
    """``t.data`` as a C-contiguous array that *is* the tensor's storage (made so if
    needed), so collectives can work on it in place."""
    if not t.data.flags.c_contiguous:
        t.data = t.xp.ascontiguousarray(t.data)
    return t.data
