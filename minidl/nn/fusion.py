"""Layer fusion inside ``Sequential``: ``Conv2d`` -> (``ReLU``) -> ``MaxPool2d`` as one op.

``Sequential`` knows its layers' order before it runs them, so where a ``Conv2d`` (with or
without ``activation="relu"``), optionally followed by a ``ReLU``, feeds a ``MaxPool2d``,
it runs the three as ``minidl.functional.conv2d_max_pool2d``: the same output and the
same gradients (tested), without keeping the conv output for backward and with about a
quarter of the backward multiply-adds (the module docstring of ``minidl.functional.fused``
says why that is exact). On the seed CNN the training step is 1.3-1.4x faster fused than
unfused (batch 64 and 256, 2 cores; ``benchmarks/train_step.py`` times both in one run).

The fused node replaces three in the autograd graph, so the conv output never exists as a
Tensor. Anything that must see it turns fusion off for that layer: a forward hook on any
of the layers does (so ``summary`` still reports every layer), as does a subclass of those
layers. ``set_fusion(False)`` turns it off everywhere. A conv that can run as Winograd
(``minidl.kernels.winograd``: 3x3, stride 1, 16+ channels) runs alone as Winograd, unfused,
where that measured faster: 24+ channels and Winograd's 4x4 tiles covering at most 1.3x the
outputs the pooling reads (``_winograd`` gives the figures).

>>> import minidl
>>> nn = minidl.nn
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3, activation="relu"), nn.MaxPool2d(2))
>>> x = minidl.randn(2, 3, 8, 8)
>>> fused = net(x)
>>> old = nn.set_fusion(False); unfused = net(x); _ = nn.set_fusion(old)
>>> fused.grad_fn.name, unfused.grad_fn.name
('Conv2dMaxPool2d', 'MaxPool2d')
>>> bool((fused.detach().numpy() == unfused.detach().numpy()).all())
True
"""

from __future__ import annotations

from typing import Any

import minidl.functional as F
from minidl.kernels import conv as K
from minidl.nn.conv import Conv2d, MaxPool2d
from minidl.nn.layers import ReLU
from minidl.nn.module import Module

_enabled = True


def set_fusion(enabled: bool) -> bool:
    """Turn layer fusion in ``Sequential`` on or off (it is on by default); return the
    previous setting. Results are the same either way; off keeps every intermediate
    output in the autograd graph."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def fusion_enabled() -> bool:
    """Whether ``Sequential`` fuses ``Conv2d`` -> (``ReLU``) -> ``MaxPool2d``.

    >>> fusion_enabled()
    True
    """
    return _enabled


def _plain(m: Module, cls: type) -> bool:
    # exactly this class (a subclass may change forward) and nobody watching its output
    return type(m) is cls and not m._forward_hooks


def _winograd(conv: Conv2d, pool: MaxPool2d, x: Any) -> bool:
    # Whether the conv should run alone as Winograd rather than fused with its pooling.
    # Winograd does fewer multiply-adds and needs no scatter, which wins on padded maps of
    # 24+ channels (airbench94 at batch 256: step 583 ms fused, 413 ms unfused). The fused
    # op wins where Winograd's transforms dominate (16 -> 32 channels) or where its 4x4
    # tiles overhang the outputs the pooling reads: the seed CNN's second conv has 13x13
    # outputs, the pooling reads 12x12 and Winograd computes 16x16 (2 threads, conv + pool
    # forward and backward at batch 64: fused 13.5 ms, Winograd 19.2 ms; seed CNN step
    # 20 ms fused, 25 ms with Winograd).
    conv.check_input(x)  # the layer's own errors first, as when it runs alone
    geo = K.conv2d_geometry(x.shape, conv.weight.shape, conv.stride, conv.padding,
                            conv.dilation, conv.groups)
    if not K.winograd_applies(geo, x.data):
        return False
    if K.get_conv_algorithm() == "winograd":
        return True
    read = [(o - k) // s * s + k if o >= k else o  # rows/columns some window reads
            for o, k, s in zip((geo.oh, geo.ow), pool.kernel_size, pool.stride)]
    tiles = [-(-o // 4) * 4 for o in (geo.oh, geo.ow)]
    overhang = (tiles[0] * tiles[1]) / (read[0] * read[1])
    return min(geo.c, geo.oc) >= 24 and overhang <= 1.3


def run(modules: list[Module], x: Any) -> Any:
    """Apply ``modules`` in order to ``x``, fusing where this module's docstring says."""
    i, n = 0, len(modules)
    while i < n:
        m = modules[i]
        if _enabled and _plain(m, Conv2d):
            j, relu = i + 1, m.activation == "relu"
            if not relu and j < n and _plain(modules[j], ReLU):
                j, relu = j + 1, True
            if j < n and _plain(modules[j], MaxPool2d) and not _winograd(m, modules[j], x):
                pool = modules[j]
                x = F.conv2d_max_pool2d(
                    x, m.weight, m.bias, stride=m.stride, padding=m.padding,
                    dilation=m.dilation, groups=m.groups, activation="relu" if relu else None,
                    pool_size=pool.kernel_size, pool_stride=pool.stride,
                    pool_padding=pool.padding)
                i = j + 1
                continue
        x = m(x)
        i += 1
    return x
