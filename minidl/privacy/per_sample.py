"""Per-sample gradients, their norms and their clipped sum, from one ordinary backward pass.

A batch's weight gradient is a sum over its examples. For a convolution, in im2col form,

    gw = G^T A = sum_i G_i^T A_i        A_i: (L, K) example i's im2col rows,
                                         G_i: (L, OC) its output gradient (L = OH*OW)

so example ``i``'s own gradient is ``G_i^T A_i`` (OC, K): one small product per example,
from two arrays the batch's forward and backward pass already hold. A ``Linear`` layer is
the same with ``L`` = the positions of a sequence (1 for a plain (B, features) input). The
affine parameters of ``GroupNorm`` and ``LayerNorm`` are elementwise (``gamma_i =
sum(g_i * xhat_i)``), so their per-example gradients are sums over positions.

DP-SGD only needs two things from these: every example's total gradient norm (to clip it)
and the sum of the clipped gradients. Neither needs the per-example gradients themselves:

* norm ("ghost" norm, Goodfellow 2015; Li et al. 2022): ``||G_i^T A_i||_F^2 =
  sum((A_i A_i^T) * (G_i G_i^T))``, two (L, L) Gram matrices: ``L^2 (K + OC)`` multiply-adds
  instead of the ``L K OC`` of the gradient. Cheaper when the maps are small (L = 8*8 = 64
  positions, K = 576, OC = 128: 2.9 M against 4.7 M) and far dearer on big ones (L = 1024:
  62 M against 0.9 M for a 3->32 first layer), so each layer takes the cheaper path, and
  ``PerSampleGradients.paths`` says which ran;
* clipped sum: ``sum_i c_i G_i^T A_i = (c * G)^T A``, the ordinary weight-gradient GEMM with
  each example's rows of ``G`` scaled by its clip factor ``c_i``.

Layers with parameters but no rule here raise a ``ValueError`` naming the layer when the
model is attached; batch norm is refused with its replacement (``nn.GroupNorm``), since its
statistics mix the examples of a batch, so no example has a gradient of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Tensor, is_grad_enabled
from minidl.kernels import conv as KC
from minidl.kernels.im2col import im2col
from minidl.nn.conv import Conv2d
from minidl.nn.layers import Linear
from minidl.nn.module import Module
from minidl.nn.norm import GroupNorm, LayerNorm, _BatchNorm

# Per-sample work is done in chunks of this many bytes of per-example temporaries, so that a
# large physical batch never materialises all its (L, L) Gram matrices at once. (The
# per-sample path keeps its (B, OC, K) gradients for the clipped sum: the size of B copies
# of the weight, 38 MB for the DP CNN's largest conv at B = 256.)
CHUNK_BYTES = 64 * 2**20


@dataclass
class _Outer:
    """A weight whose per-example gradient is ``G_i^T A_i`` (per group): ``a`` (B, L, GK),
    ``g`` (B, L, OC) (already multiplied by the loss-reduction scale), ``groups``;
    ``grads`` (B, OC, K/G) once the per-sample path has materialised them."""

    param: Tensor
    a: Any
    g: Any
    groups: int = 1
    grads: Any = None


@dataclass
class _Direct:
    """A parameter with materialised per-example gradients ``grads`` (B, *param.shape)."""

    param: Tensor
    grads: Any


def _own_params(m: Module) -> list[tuple[str, Tensor]]:
    return [(k, p) for k, p in m._parameters.items() if p is not None and p.requires_grad]


def _relu_mask(m: Module, y: Any, g: Any) -> Any:
    # a layer with a fused ReLU reports its output after the ReLU; its weights see g * (y > 0)
    return g * (y > 0) if getattr(m, "activation", None) == "relu" else g


def _linear_terms(m: Linear, x: Any, y: Any, g: Any) -> list:
    g = _relu_mask(m, y, g)
    b = x.shape[0]
    a, g = x.reshape(b, -1, x.shape[-1]), g.reshape(b, -1, g.shape[-1])
    terms: list = [_Outer(m.weight, a, g)]
    if m.bias is not None and m.bias.requires_grad:
        terms.append(_Direct(m.bias, g.sum(axis=1)))
    return terms


def _conv_terms(m: Conv2d, x: Any, y: Any, g: Any) -> list:
    g = _relu_mask(m, y, g)
    geo = KC.conv2d_geometry(x.shape, m.weight.shape, m.stride, m.padding, m.dilation,
                             m.groups)
    b, length = x.shape[0], geo.oh * geo.ow
    cols = im2col(x, (geo.kh, geo.kw), (geo.sh, geo.sw), geo.pad, (geo.dh, geo.dw), geo.groups)
    a = cols.reshape(b, length, -1)
    g = g.transpose(0, 2, 3, 1).reshape(b, length, geo.oc)
    terms: list = [_Outer(m.weight, a, g, geo.groups)]
    if m.bias is not None and m.bias.requires_grad:
        terms.append(_Direct(m.bias, g.sum(axis=1)))
    return terms


def _affine_terms(m: Module, y: Any, g: Any, reduce_axes: tuple, xhat: Any) -> list:
    """Per-example gradients of a normalization's ``weight`` (``sum(g * xhat)``) and
    ``bias`` (``sum(g)``), sums over ``reduce_axes`` (the positions); ``xhat()`` rebuilds
    the normalized input from ``x``.

    When the layer has a bias and no weight near zero (every ``|weight|`` at least 1e-3 of
    the largest, so that dividing by it amplifies no rounding error much),
    ``xhat = (y - bias) / weight`` turns the weight's sum into ``(sum(g * y) - bias *
    sum(g)) / weight``: one pass over ``g * y`` instead of re-running the normalization
    (sums accumulated in float64)."""
    xp = backend.get_array_module(g)
    gb = g.sum(axis=reduce_axes, dtype=np.float64)
    terms = []
    if m.weight is not None and m.weight.requires_grad:
        w = m.weight.data
        a = xp.abs(w)
        if m.bias is not None and float(a.min()) >= 1e-3 * float(a.max()) > 0:
            gw = ((g * y).sum(axis=reduce_axes, dtype=np.float64) - m.bias.data * gb) / w
        else:
            gw = (g * xhat()).sum(axis=reduce_axes, dtype=np.float64)
        terms.append(_Direct(m.weight, gw.astype(g.dtype)))
    if m.bias is not None and m.bias.requires_grad:
        terms.append(_Direct(m.bias, gb.astype(g.dtype)))
    return terms


def _normalized(x: Any, axes: tuple, eps: float) -> Any:
    xc = x - x.mean(axis=axes, keepdims=True)
    return xc / backend.get_array_module(x).sqrt((xc * xc).mean(axis=axes, keepdims=True)
                                                 + eps)


def _group_norm_terms(m: GroupNorm, x: Any, y: Any, g: Any) -> list:
    def xhat() -> Any:
        return _normalized(x.reshape(x.shape[0], m.num_groups, -1), (2,), m.eps) \
            .reshape(x.shape)
    return _affine_terms(m, y, g, tuple(range(2, x.ndim)), xhat)


def _layer_norm_terms(m: LayerNorm, x: Any, y: Any, g: Any) -> list:
    k = len(m.normalized_shape)
    return _affine_terms(m, y, g, tuple(range(1, x.ndim - k)),
                         lambda: _normalized(x, tuple(range(x.ndim - k, x.ndim)), m.eps))


# The layers with a per-sample rule: the map from a layer's input x, output y and output
# gradient g (all arrays, batch first) to its parameters' per-example terms.
RULES = {Linear: _linear_terms, Conv2d: _conv_terms, GroupNorm: _group_norm_terms,
         LayerNorm: _layer_norm_terms}


def _rule(m: Module) -> Any:
    return next((RULES[c] for c in type(m).__mro__ if c in RULES), None)


def check_model(model: Module) -> None:
    """Raise ``ValueError`` naming the first layer whose trainable parameters have no
    per-sample rule (batch norm: use ``nn.GroupNorm``), or ``TypeError`` for a non-Module.

    >>> from minidl import nn
    >>> check_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8)))
    >>> check_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    Traceback (most recent call last):
    ...
    ValueError: privacy: layer '1' (BatchNorm2d) is batch norm, ... nn.LayerNorm
    """
    if not isinstance(model, Module):
        raise TypeError(f"privacy: expected an nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        params = _own_params(m)
        where = f"layer '{name or type(m).__name__}' ({type(m).__name__})"
        # batch norm is refused even when frozen: in training mode its batch statistics
        # still mix the examples, so one example moves the others' gradients
        if isinstance(m, _BatchNorm):
            raise ValueError(
                f"privacy: {where} is batch norm, whose statistics mix the examples of a "
                "batch, so no example has a gradient of its own; replace it with "
                "nn.GroupNorm (e.g. nn.GroupNorm(min(32, C), C)) or nn.LayerNorm")
        if params and _rule(m) is None:
            names = ", ".join(k for k, _ in params)
            supported = ", ".join(c.__name__ for c in RULES)
            raise ValueError(
                f"privacy: {where} has trainable parameters ({names}) but no per-sample "
                f"gradient rule; supported layers: {supported}. Freeze them "
                "(requires_grad_(False)) or build the model from supported layers")


def _outer_norms_sq(t: _Outer, path: str) -> tuple[Any, Any]:
    """Per-example squared norms (B,) of ``G_i^T A_i`` and, on the per-sample path, the
    per-example gradients (B, OC, GK) (None on the ghost path)."""
    xp = backend.get_array_module(t.a)
    b, length, kk = t.a.shape
    oc, gr = t.g.shape[2], t.groups
    ko, oo = kk // gr, oc // gr
    out = xp.zeros(b, dtype=np.float64)
    grads = None if path == "ghost" else xp.empty((b, oc, ko), dtype=t.g.dtype)
    per_example = (2 * length * length if path == "ghost" else oc * ko) * t.a.itemsize
    step = max(1, CHUNK_BYTES // per_example)
    for s in range(0, b, step):
        e = slice(s, s + step)
        for j in range(gr):
            a = t.a[e, :, j * ko:(j + 1) * ko]
            g = t.g[e, :, j * oo:(j + 1) * oo]
            if path == "ghost":
                ga = a @ a.transpose(0, 2, 1)                     # (b, L, L)
                gg = g @ g.transpose(0, 2, 1)
                out[e] += (ga * gg).sum(axis=(1, 2), dtype=np.float64)
            else:
                gw = g.transpose(0, 2, 1) @ a                      # (b, OC/G, K/G)
                grads[e, j * oo:(j + 1) * oo] = gw
                out[e] += (gw * gw).sum(axis=(1, 2), dtype=np.float64)
    return out, grads


def choose_path(length: int, k: int, oc: int, groups: int = 1) -> str:
    """``"ghost"`` when the two (L, L) Gram matrices cost fewer multiply-adds than the
    per-example gradient (``L (K + OC) < K OC``, per group), else ``"per-sample"``.

    >>> choose_path(64, 576, 128), choose_path(1024, 27, 32), choose_path(1, 2304, 128)
    ('ghost', 'per-sample', 'ghost')
    """
    k, oc = k // groups, oc // groups
    return "ghost" if length * (k + oc) < k * oc else "per-sample"


class PerSampleGradients:
    """Per-example gradient norms and clipped gradient sums for a model's parameters.

    Attaching registers a forward hook on every layer with trainable parameters (each must
    have a rule: ``check_model``). While gradients are enabled, each hooked call records
    the layer's input and keeps its output for the output gradient the next backward pass
    leaves there (``retain_grad``). ``norms()`` and ``clipped_sum()`` then read these
    records; ``clear()`` drops them (``DPOptimizer.step`` does).

    ``loss_reduction`` says how the loss combined its examples: ``"mean"`` (the default of
    minidl's losses: each output gradient is then ``1/B`` of the example's own, and is
    multiplied back by the call's batch size ``B``) or ``"sum"``.

    Attributes:
        paths (dict): layer name -> ``"ghost"`` or ``"per-sample"``, how each weight's
            norms were computed in the last ``norms()`` (biases and norm-layer affine
            parameters are always per-sample: their per-example gradients are tiny).

    >>> import minidl
    >>> from minidl import nn
    >>> model = nn.Sequential(nn.Linear(3, 2))
    >>> ps = PerSampleGradients(model, loss_reduction="sum")
    >>> x = minidl.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    >>> model(x).sum().backward()
    >>> [round(float(v), 4) for v in ps.norms()]     # sqrt(|x_i|^2 * 2 + 2) (bias)
    [2.0, 3.1623]
    """

    def __init__(self, model: Module, loss_reduction: str = "mean") -> None:
        check_model(model)
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"PerSampleGradients: loss_reduction must be 'mean' or 'sum', "
                             f"got {loss_reduction!r}")
        self.model, self.loss_reduction = model, loss_reduction
        self.layers = {m: name or type(m).__name__ for name, m in model.named_modules()
                       if _own_params(m)}
        self.params = [p for m in self.layers for _, p in _own_params(m)]
        self.paths: dict[str, str] = {}
        self._records: list[tuple[Module, Any, Tensor]] = []
        self._terms: list | None = None
        self._scale = 1.0
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: Module, inputs: tuple, output: Any) -> None:
        if not is_grad_enabled() or not isinstance(output, Tensor) or not output.requires_grad \
                or output.shape[0] == 0:  # an empty batch has no examples to record
            return
        output.retain_grad()
        self._records.append((module, inputs[0].data, output))
        self._terms = None

    def detach(self) -> None:
        """Remove the hooks (the model trains normally again)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def clear(self) -> None:
        """Forget the recorded inputs and outputs (after a step, or a forward pass that
        will not be differentiated)."""
        self._records = []
        self._terms = None

    @property
    def batch_size(self) -> int:
        """Examples in the recorded batch (0 before any recorded backward)."""
        terms = self._collect()
        if not terms:
            return 0
        t = terms[0][1]
        return int(t.a.shape[0] if isinstance(t, _Outer) else t.grads.shape[0])

    def _collect(self) -> list:
        """The per-parameter terms of the recorded calls that a backward pass reached; the
        calls of one layer (a layer used twice) are joined along the position axis L."""
        if self._terms is not None:
            return self._terms
        by_param: dict[int, list] = {}
        for m, x, out in self._records:
            if out.grad is None:  # a forward pass that was never differentiated
                continue
            g = out.grad.data
            for t in _rule(m)(m, x, out.data, g):
                by_param.setdefault(id(t.param), []).append((m, t))
        sizes = {t.a.shape[0] if isinstance(t, _Outer) else t.grads.shape[0]
                 for items in by_param.values() for _, t in items}
        if len(sizes) > 1:
            raise ValueError(f"PerSampleGradients: the recorded layer calls saw different "
                             f"batch sizes {sorted(sizes)}; run one forward and one backward "
                             "per step (call clear() after a forward pass you do not use)")
        terms = []
        for items in by_param.values():
            first = items[0][1]
            if isinstance(first, _Outer):
                xp = backend.get_array_module(first.a)
                t = _Outer(first.param, xp.concatenate([t.a for _, t in items], axis=1),
                           xp.concatenate([t.g for _, t in items], axis=1), first.groups)
            else:
                t = _Direct(first.param, sum(t.grads for _, t in items))
            terms.append((items[0][0], t))
        # A mean loss leaves 1/B of each example's own gradient in the output gradients:
        # every per-example quantity below is linear in them, so multiply by B at the end.
        self._scale = float(sizes.pop()) if sizes and self.loss_reduction == "mean" else 1.0
        self._terms = terms
        return terms

    def norms(self) -> Any:
        """Each example's gradient norm over all parameters, shape (B,), float64; the
        weights' paths go to ``self.paths``."""
        terms = self._collect()
        if not terms:
            raise RuntimeError("PerSampleGradients.norms: no recorded forward and backward "
                               "pass (run the model on a batch with gradients enabled, then "
                               "backward)")
        total = 0
        self.paths = {}
        for m, t in terms:
            if isinstance(t, _Outer):
                b, length, kk = t.a.shape
                path = choose_path(length, kk, t.g.shape[2], t.groups)
                sq, t.grads = _outer_norms_sq(t, path)
                self.paths[self.layers[m]] = path
            else:
                sq = (t.grads.reshape(t.grads.shape[0], -1).astype(np.float64) ** 2).sum(1)
            total = total + sq
        return backend.get_array_module(total).sqrt(total) * self._scale

    def per_sample_grads(self) -> dict[int, Any]:
        """Materialised per-example gradients, ``{id(param): (B, *param.shape)}``: for tests
        and for learning; DP training never needs them all at once."""
        out = {}
        for _, t in self._collect():
            if isinstance(t, _Outer):
                _, grads = _outer_norms_sq(t, "per-sample")
                out[id(t.param)] = _to_param_layout(grads, t.param.shape) * self._scale
            else:
                out[id(t.param)] = t.grads * self._scale
        return out

    def clipped_sum(self, scale: Any) -> dict[int, Any]:
        """``sum_i scale[i] * grad_i`` for every parameter, ``{id(param): array}``; ``scale``
        (B,) is each example's clip factor ``min(1, C / norm_i)``."""
        out = {}
        terms = self._collect()
        scale = scale * self._scale
        for _, t in terms:
            w = t.param
            c = scale.astype(w.data.dtype)
            if isinstance(t, _Outer) and t.grads is not None:
                gw = (c[:, None, None] * t.grads).sum(axis=0)        # (OC, K/G)
            elif isinstance(t, _Outer):
                b, length, kk = t.a.shape
                oc, gr = t.g.shape[2], t.groups
                a = t.a.reshape(b * length, kk)
                g = (t.g * c[:, None, None]).reshape(b * length, oc)
                ko, oo = kk // gr, oc // gr
                gw = backend.get_array_module(a).concatenate(
                    [g[:, j * oo:(j + 1) * oo].T @ a[:, j * ko:(j + 1) * ko]
                     for j in range(gr)], axis=0)
            else:
                out[id(w)] = (c.reshape(-1, *([1] * w.ndim)) * t.grads).sum(axis=0)
                continue
            out[id(w)] = _to_param_layout(gw[None], w.shape)[0]
        return out


def _to_param_layout(grads: Any, shape: tuple) -> Any:
    """(B, OC, K) -> (B, *shape); a conv's K runs in im2col's (kh, kw, cg) order."""
    b = grads.shape[0]
    if len(shape) == 4:
        oc, cg, kh, kw = shape
        return grads.reshape(b, oc, kh, kw, cg).transpose(0, 1, 4, 2, 3).reshape(b, *shape)
    return grads.reshape(b, *shape)
