"""Regenerate the PyTorch reference fixtures that ``test_torch_fixtures.py`` compares with.

CI has no PyTorch, yet some properties are only checked against it: AMSGrad trajectories,
tight (float64) batch-norm / layer-norm / cross-entropy gradients, running statistics over
several batches, ``padding="same"`` with even kernels, ceil-mode pooling windows that start
in the padding, and the fused conv -> ReLU -> max-pool block. So PyTorch is run once, here,
and its answers are committed as small ``.npz`` files next to this script; the tests load
them with NumPy alone. This script uses NumPy and PyTorch only, never minidl: the numbers
are an independent oracle.

Every input comes from a seeded NumPy generator and every computation is float64 on the
CPU, so a rerun gives the same numbers (``test_fixtures_current.py`` regenerates them in
memory where torch is installed and checks the committed files still match).

Run from the repository root, with torch installed (``pip install torch==2.13.0``)::

    python tests/oracle/make_fixtures.py

Layout of a file: keys ``<case>/<field>``; ``<case>/config`` is a JSON string (a 0-d
unicode array, so ``np.load(..., allow_pickle=False)`` reads it).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ("optim", "norm", "loss", "conv_pool")

Arrays = dict[str, np.ndarray]


def _put(out: Arrays, case: str, config: dict[str, Any] | None = None, **arrays: Any) -> None:
    if config is not None:
        out[f"{case}/config"] = np.array(json.dumps(config, sort_keys=True))
    for k, v in arrays.items():
        a = np.asarray(v)
        out[f"{case}/{k}"] = a.astype(np.float64) if a.dtype.kind == "f" else a


def _np(t: Any) -> np.ndarray:
    return t.detach().numpy().copy()


# ---------------------------------------------------------------------------- optimizers

# Gradient magnitudes that shrink, grow again and shrink: the second moment ``v`` falls at
# several steps, so AMSGrad's running maximum differs from ``v`` (with steadily growing
# gradients the two coincide and AMSGrad cannot be told from Adam).
_SCALES = (3.0, 2.0, 0.3, 0.1, 0.05, 1.5, 0.08, 0.02)

OPTIM_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "adam_amsgrad": ("Adam", dict(lr=0.05, betas=(0.9, 0.999), eps=1e-8, amsgrad=True)),
    "adam_amsgrad_b2low_wd": ("Adam", dict(lr=0.02, betas=(0.8, 0.9), eps=1e-6,
                                           weight_decay=0.05, amsgrad=True)),
    "adamw_amsgrad": ("AdamW", dict(lr=0.03, betas=(0.85, 0.95), eps=1e-7, weight_decay=0.1,
                                    amsgrad=True)),
    "adam": ("Adam", dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)),
    "adamw": ("AdamW", dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.2)),
    "sgd_nesterov_wd": ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "sgd_dampening": ("SGD", dict(lr=0.05, momentum=0.7, dampening=0.3, weight_decay=0.05)),
}
OPTIM_SHAPES = {"w": (2, 3), "b": (3,)}


def optim_fixtures() -> Arrays:
    import torch

    out: Arrays = {}
    for i, (case, (cls, kw)) in enumerate(sorted(OPTIM_CASES.items())):
        rng = np.random.default_rng(100 + i)
        p0 = {k: rng.standard_normal(s) for k, s in OPTIM_SHAPES.items()}
        grads = {k: np.stack([rng.standard_normal(s) * sc for sc in _SCALES])
                 for k, s in OPTIM_SHAPES.items()}
        params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in p0.items()}
        opt = getattr(torch.optim, cls)(list(params.values()), **kw)
        traj: dict[str, list[np.ndarray]] = {k: [] for k in params}
        for t in range(len(_SCALES)):
            for k, p in params.items():
                p.grad = torch.tensor(grads[k][t])
            opt.step()
            for k, p in params.items():
                traj[k].append(_np(p))
        fields: dict[str, Any] = {}
        for k, p in params.items():
            fields[f"p0_{k}"] = p0[k]
            fields[f"grads_{k}"] = grads[k]
            fields[f"traj_{k}"] = np.stack(traj[k])  # parameters after steps 1..T
            st = opt.state[p]
            if "exp_avg_sq" in st:
                fields[f"exp_avg_{k}"] = _np(st["exp_avg"])
                fields[f"exp_avg_sq_{k}"] = _np(st["exp_avg_sq"])
            if "max_exp_avg_sq" in st:
                fields[f"max_exp_avg_sq_{k}"] = _np(st["max_exp_avg_sq"])
        _put(out, case, dict(cls=cls, kw=kw), **fields)
    return out


# ------------------------------------------------------------------------ normalization

BN_CASES = [  # shape, affine, training
    ((7, 3), True, True), ((4, 3, 5), False, True), ((3, 4, 3, 2), True, True),
    ((6, 2, 3), False, False), ((2, 3, 2, 2), True, False), ((5, 4, 2, 3), False, True),
    ((2, 2), True, True),  # m = 2: the unbiased factor m / (m - 1) is 2
]
LN_CASES = [((4, 6), (6,)), ((2, 3, 4), (3, 4)), ((3, 5, 2), (2,))]


def norm_fixtures() -> Arrays:
    import torch

    TF = torch.nn.functional
    out: Arrays = {}
    for i, (shape, affine, training) in enumerate(BN_CASES):
        rng = np.random.default_rng(200 + i)
        c = shape[1]
        momentum = float(rng.uniform(0.05, 0.5))
        x = rng.standard_normal(shape) * 2 + 0.5
        gy = rng.standard_normal(shape)
        w, b = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
        rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2, c)
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        trm, trv = torch.tensor(rm0), torch.tensor(rv0)
        ty = TF.batch_norm(tx, trm, trv, tw if affine else None, tb if affine else None,
                           training, momentum, 1e-5)
        ty.backward(torch.tensor(gy))
        fields = dict(x=x, gy=gy, w=w, b=b, rm0=rm0, rv0=rv0, y=_np(ty), rm=_np(trm),
                      rv=_np(trv), gx=_np(tx.grad))
        if affine:
            fields.update(gw=_np(tw.grad), gb=_np(tb.grad))
        _put(out, f"bn{i}", dict(affine=affine, training=training, momentum=momentum,
                                 eps=1e-5), **fields)

    # Modules over several batches: running statistics after every batch, then eval.
    for case, cls, shape, momentum in (("bn2d_module", "BatchNorm2d", (5, 4, 3, 3), 0.3),
                                       ("bn1d_cumulative", "BatchNorm1d", (6, 3), None)):
        rng = np.random.default_rng(300 + len(case))
        c = shape[1]
        mod = getattr(torch.nn, cls)(c, momentum=momentum).double()
        with torch.no_grad():
            mod.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, c)))
            mod.bias.copy_(torch.tensor(rng.standard_normal(c)))
        xs = np.stack([rng.standard_normal(shape) * (1 + k) + k for k in range(3)])
        rms, rvs, ys = [], [], []
        for x in xs:
            ys.append(_np(mod(torch.tensor(x))))
            rms.append(_np(mod.running_mean))
            rvs.append(_np(mod.running_var))
        mod.eval()
        x_eval = rng.standard_normal(shape)
        _put(out, case, dict(cls=cls, momentum=momentum),
             w=_np(mod.weight), b=_np(mod.bias), xs=xs, ys=np.stack(ys),
             running_mean=np.stack(rms), running_var=np.stack(rvs),
             num_batches_tracked=np.array(int(mod.num_batches_tracked)),
             x_eval=x_eval, y_eval=_np(mod(torch.tensor(x_eval))))

    for i, (shape, ns) in enumerate(LN_CASES):
        rng = np.random.default_rng(400 + i)
        x, gy = rng.standard_normal(shape) * 1.5 + 0.3, rng.standard_normal(shape)
        w, b = rng.standard_normal(ns), rng.standard_normal(ns)
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        ty = TF.layer_norm(tx, ns, tw, tb, 1e-5)
        ty.backward(torch.tensor(gy))
        _put(out, f"ln{i}", dict(normalized_shape=list(ns), eps=1e-5), x=x, gy=gy, w=w, b=b,
             y=_np(ty), gx=_np(tx.grad), gw=_np(tw.grad), gb=_np(tb.grad))
    return out


# --------------------------------------------------------------------------------- loss

def loss_fixtures() -> Arrays:
    import torch

    TF = torch.nn.functional
    out: Arrays = {}
    i = 0
    for target in ("labels", "probs"):
        for reduction in ("mean", "sum", "none"):
            for smoothing in (0.0, 0.15):
                rng = np.random.default_rng(500 + i)
                x = rng.standard_normal((6, 5)) * 3
                if target == "labels":
                    y = rng.integers(0, 5, 6)
                    ty = torch.tensor(y)
                else:
                    y = np.abs(rng.standard_normal((6, 5)))
                    y /= y.sum(axis=1, keepdims=True)
                    ty = torch.tensor(y)
                tx = torch.tensor(x, requires_grad=True)
                tl = TF.cross_entropy(tx, ty, reduction=reduction, label_smoothing=smoothing)
                gl = rng.standard_normal(tl.shape)
                tl.backward(torch.tensor(gl))
                _put(out, f"ce{i}", dict(target=target, reduction=reduction,
                                         smoothing=smoothing),
                     x=x, y=y, gl=gl, loss=_np(tl), gx=_np(tx.grad))
                i += 1
    return out


# ---------------------------------------------------------------------- conv and pooling

# padding="same" with even (and dilated) kernels: the extra row/column goes bottom/right.
SAME_CASES = [((2, 4), 1), ((4, 2), 1), ((2, 2), (3, 1)), ((3, 4), (1, 2))]
# (kernel, stride, padding, dilation): with ceil_mode some windows start inside the input
# and run off it, and some would start in the right padding (PyTorch drops those).
POOL_CASES = [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 2), (2, 2), (1, 1), (1, 1)),
              ((3, 2), (3, 2), (1, 0), (1, 1)), ((2, 3), (2, 3), (0, 1), (2, 1)),
              ((3, 3), (4, 4), (1, 1), (1, 1))]


def conv_pool_fixtures() -> Arrays:
    import torch

    TF = torch.nn.functional
    out: Arrays = {}
    for i, (k, d) in enumerate(SAME_CASES):
        rng = np.random.default_rng(600 + i)
        x = rng.standard_normal((1, 2, 5, 6))
        w = rng.standard_normal((3, 2, *k))
        b = rng.standard_normal(3)
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        with warnings.catch_warnings():  # "may require a zero-padded copy": it may
            warnings.simplefilter("ignore", UserWarning)
            ty = TF.conv2d(tx, tw, tb, padding="same", dilation=d)
        gy = rng.standard_normal(ty.shape)
        ty.backward(torch.tensor(gy))
        _put(out, f"same{i}", dict(dilation=d), x=x, w=w, b=b, gy=gy, y=_np(ty),
             gx=_np(tx.grad), gw=_np(tw.grad), gb=_np(tb.grad))

    for i, (k, s, p, d) in enumerate(POOL_CASES):
        rng = np.random.default_rng(700 + i)
        x = rng.standard_normal((1, 2, 7, 8))
        fields: dict[str, Any] = dict(x=x)
        for ceil in (False, True):
            tag = "ceil" if ceil else "floor"
            tx = torch.tensor(x, requires_grad=True)
            ty, ti = TF.max_pool2d(tx, k, s, p, d, ceil, return_indices=True)
            gy = rng.standard_normal(ty.shape)
            ty.backward(torch.tensor(gy))
            fields.update({f"max_{tag}_y": _np(ty), f"max_{tag}_ind": ti.numpy().copy(),
                           f"max_{tag}_gy": gy, f"max_{tag}_gx": _np(tx.grad)})
            if d == (1, 1):
                for include in (False, True):
                    atag = f"avg_{tag}_{'incl' if include else 'excl'}"
                    tx = torch.tensor(x, requires_grad=True)
                    ty = TF.avg_pool2d(tx, k, s, p, ceil, include)
                    gy = rng.standard_normal(ty.shape)
                    ty.backward(torch.tensor(gy))
                    fields.update({f"{atag}_y": _np(ty), f"{atag}_gy": gy,
                                   f"{atag}_gx": _np(tx.grad)})
        _put(out, f"pool{i}", dict(kernel=k, stride=s, padding=p, dilation=d), **fields)

    # The fused block nn.Sequential builds: conv (+bias) -> ReLU -> 2x2 max-pool. A bias
    # shifted negative makes the ReLU zero about half the conv outputs before pooling.
    for i, (c, oc, hw) in enumerate([(3, 4, 8), (2, 5, 9)]):
        rng = np.random.default_rng(800 + i)
        x = rng.standard_normal((2, c, hw, hw))
        w = rng.standard_normal((oc, c, 3, 3)) * 0.5
        b = rng.standard_normal(oc) - 1.0
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        ty = TF.max_pool2d(TF.relu(TF.conv2d(tx, tw, tb)), 2)
        gy = rng.standard_normal(ty.shape)
        ty.backward(torch.tensor(gy))
        _put(out, f"conv_relu_pool{i}", None, x=x, w=w, b=b, gy=gy, y=_np(ty),
             gx=_np(tx.grad), gw=_np(tw.grad), gb=_np(tb.grad))
    return out


BUILDERS = {"optim": optim_fixtures, "norm": norm_fixtures, "loss": loss_fixtures,
            "conv_pool": conv_pool_fixtures}


def build() -> dict[str, Arrays]:
    """Every fixture file's arrays, keyed by file stem (needs torch)."""
    return {name: BUILDERS[name]() for name in FILES}


def path(name: str) -> str:
    return os.path.join(HERE, f"{name}.npz")


def main() -> None:
    for name, arrays in build().items():
        np.savez_compressed(path(name), **arrays)
        print(f"{path(name)}: {len(arrays)} arrays, {os.path.getsize(path(name))} bytes")


if __name__ == "__main__":
    main()
