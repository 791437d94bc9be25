"""Optional oracle tests: batch_norm, layer_norm, cross-entropy with label smoothing and the
SGD / Adam / AdamW updates compared with PyTorch on random configurations (float64).

Skipped when torch is not installed; minidl never depends on it. The same properties run
in every CI run against stored PyTorch results: see ``tests/oracle/``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (optional oracle tests)")

import minidl  # noqa: E402
import minidl.nn as nn  # noqa: E402
from minidl.functional.norm import batch_norm, layer_norm  # noqa: E402
from minidl.optim import SGD, Adam, AdamW  # noqa: E402


def _t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def _m(a, grad=False):
    return minidl.tensor(np.asarray(a, np.float64), requires_grad=grad)


@pytest.mark.parametrize("seed", range(6))
def test_batch_norm_vs_torch(seed) -> None:
    rng = np.random.default_rng(seed)
    shape = [(7, 3), (4, 3, 5), (3, 4, 3, 2)][seed % 3]
    c = shape[1]
    affine, training = bool(seed % 2), seed not in (3, 4)
    momentum = float(rng.uniform(0.05, 0.5))
    x = rng.standard_normal(shape) * 2 + 0.5
    gy = rng.standard_normal(shape)
    w, b = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2, c)

    tx, tw, tb = _t(x, True), _t(w, True), _t(b, True)
    trm, trv = _t(rm0), _t(rv0)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw if affine else None,
                                        tb if affine else None, training, momentum, 1e-5)
    ty.backward(_t(gy))
    mx, mw, mb = _m(x, True), _m(w, True), _m(b, True)
    mrm, mrv = _m(rm0), _m(rv0)
    my = batch_norm(mx, mrm, mrv, mw if affine else None, mb if affine else None,
                    training=training, momentum=momentum, eps=1e-5)
    my.backward(_m(gy))
    np.testing.assert_allclose(my.detach().numpy(), ty.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(mrm.numpy(), trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(mrv.numpy(), trv.numpy(), rtol=1e-12)
    np.testing.assert_allclose(mx.grad.numpy(), tx.grad.numpy(), rtol=1e-8, atol=1e-10)
    if affine:
        np.testing.assert_allclose(mw.grad.numpy(), tw.grad.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(mb.grad.numpy(), tb.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_batchnorm_module_vs_torch_over_batches() -> None:
    rng = np.random.default_rng(3)
    ours, ref = nn.BatchNorm2d(4, momentum=0.3).double(), torch.nn.BatchNorm2d(4, momentum=0.3)
    ref.double()
    for _ in range(3):
        x = rng.standard_normal((5, 4, 3, 3))
        ours(_m(x))
        ref(_t(x))
    np.testing.assert_allclose(ours.running_mean.numpy(), ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var.numpy(), ref.running_var.numpy(), rtol=1e-12)
    assert int(ours.num_batches_tracked.item()) == int(ref.num_batches_tracked)
    ours.eval(), ref.eval()
    x = rng.standard_normal((2, 4, 3, 3))
    np.testing.assert_allclose(ours(_m(x)).detach().numpy(), ref(_t(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_layer_norm_vs_torch(seed) -> None:
    rng = np.random.default_rng(seed)
    shape, ns = [((4, 6), (6,)), ((2, 3, 4), (3, 4)), ((3, 5, 2), (2,))][seed]
    x, gy = rng.standard_normal(shape), rng.standard_normal(shape)
    w, b = rng.standard_normal(ns), rng.standard_normal(ns)
    tx, tw, tb = _t(x, True), _t(w, True), _t(b, True)
    ty = torch.nn.functional.layer_norm(tx, ns, tw, tb, 1e-5)
    ty.backward(_t(gy))
    mx, mw, mb = _m(x, True), _m(w, True), _m(b, True)
    my = layer_norm(mx, ns, mw, mb, 1e-5)
    my.backward(_m(gy))
    np.testing.assert_allclose(my.detach().numpy(), ty.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    for m, t in ((mx, tx), (mw, tw), (mb, tb)):
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("smoothing,reduction", [(0.0, "mean"), (0.1, "mean"), (0.3, "sum"),
                                                 (0.2, "none")])
def test_cross_entropy_label_smoothing_vs_torch(smoothing, reduction) -> None:
    rng = np.random.default_rng(int(smoothing * 10))
    x, y = rng.standard_normal((6, 5)) * 3, rng.integers(0, 5, 6)
    tx = _t(x, True)
    tl = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(
        tx, torch.tensor(y))
    mx = _m(x, True)
    ml = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(
        mx, minidl.tensor(y))
    gy = rng.standard_normal(tl.shape)
    tl.backward(_t(gy))
    ml.backward(_m(gy))
    np.testing.assert_allclose(ml.detach().numpy(), tl.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(mx.grad.numpy(), tx.grad.numpy(), rtol=1e-8, atol=1e-12)


def _configs():
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        mom = float(rng.uniform(0.5, 0.95))
        out.append((SGD, torch.optim.SGD, dict(
            lr=float(rng.uniform(0.01, 0.2)), momentum=mom if i else 0.0,
            dampening=0.0 if i % 2 else float(rng.uniform(0, 0.5)) * (i > 0),
            nesterov=bool(i % 2), weight_decay=float(rng.uniform(0, 0.1)))))
    for i in range(3):
        kw = dict(lr=float(rng.uniform(1e-3, 0.1)),
                  betas=(float(rng.uniform(0.8, 0.95)), float(rng.uniform(0.9, 0.9999))),
                  eps=float(10 ** rng.uniform(-8, -3)), weight_decay=float(rng.uniform(0, 0.1)),
                  amsgrad=bool(i % 2))
        out.append((Adam, torch.optim.Adam, kw))
        out.append((AdamW, torch.optim.AdamW, kw))
    return out


@pytest.mark.parametrize("ours,theirs,kw", _configs())
def test_optimizer_steps_vs_torch(ours, theirs, kw) -> None:
    rng = np.random.default_rng(7)
    p0 = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    mp = [nn.Parameter(a.copy()) for a in p0]
    tp = [torch.nn.Parameter(_t(a)) for a in p0]
    mo, to = ours(mp, **kw), theirs(tp, **kw)
    # shrinking gradients make the second moment fall, so AMSGrad's maximum matters
    for scale in (3.0, 0.2, 0.05, 1.0, 0.02, 0.01):
        grads = [rng.standard_normal(a.shape) * scale for a in p0]
        for m, t, g in zip(mp, tp, grads):
            m.grad, t.grad = _m(g), _t(g)
        mo.step()
        to.step()
    for m, t in zip(mp, tp):
        np.testing.assert_allclose(m.detach().numpy(), t.detach().numpy(), rtol=1e-10,
                                   atol=1e-12)
    if kw.get("amsgrad"):
        for i, t in enumerate(tp):
            st = to.state[t]
            assert (st["max_exp_avg_sq"] > st["exp_avg_sq"]).any()
            np.testing.assert_allclose(mo.state[str(i)]["max_exp_avg_sq"],
                                       st["max_exp_avg_sq"].numpy(), rtol=1e-12)
