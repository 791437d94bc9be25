"""minidl against PyTorch's answers stored in ``tests/oracle/*.npz``; runs without torch.

The fixtures come from ``make_fixtures.py`` (NumPy + PyTorch, no minidl): optimizer
trajectories (AMSGrad with a second moment that falls, so its maximum matters), batch norm
/ layer norm / cross-entropy values and float64 gradients, running statistics over several
batches, ``padding="same"`` with even kernels, ceil-mode pooling, and conv -> ReLU ->
max-pool, fused and not. ``test_fixtures_current.py`` checks, where torch is installed,
that the committed files are what the script makes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minidl
import minidl.functional as F
import minidl.nn as nn
from minidl import kernels, optim

HERE = os.path.dirname(os.path.abspath(__file__))

# float64 throughout: values to 1e-10, gradients to 1e-8 (they pass through more ops).
VAL = dict(rtol=1e-10, atol=1e-12)
GRAD = dict(rtol=1e-8, atol=1e-10)
STAT = dict(rtol=1e-12, atol=1e-14)


def _load(name: str) -> dict[str, dict]:
    with np.load(os.path.join(HERE, f"{name}.npz"), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    cases: dict[str, dict] = {}
    for key, v in arrays.items():
        case, field = key.split("/", 1)
        cases.setdefault(case, {})[field] = json.loads(str(v)) if field == "config" else v
    return cases


OPTIM, NORM, LOSS, CONV_POOL = (_load(n) for n in ("optim", "norm", "loss", "conv_pool"))


def _cases(table: dict, prefix: str) -> list[str]:
    return sorted(k for k in table if k.startswith(prefix))


def _m(a, grad: bool = False) -> minidl.Tensor:
    t = minidl.tensor(np.array(a, dtype=np.float64), requires_grad=grad)
    assert t.dtype == np.float64
    return t


def _close(got, want, tol, what: str) -> None:
    got = got.detach().numpy() if isinstance(got, minidl.Tensor) else np.asarray(got)
    np.testing.assert_allclose(got, want, err_msg=what, **tol)


@pytest.fixture(params=["numba", "numpy"])
def kernel_backend(request):
    """Both CPU kernel paths (compiled loops and generic array code)."""
    old = kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend(old)


# ---------------------------------------------------------------------------- optimizers

def _optimizer(case: dict, params: list) -> optim.Optimizer:
    cfg = case["config"]
    kw = dict(cfg["kw"])
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return getattr(optim, cfg["cls"])(params, **kw)


def _params(values: dict) -> list:
    return [(k, nn.Parameter(np.array(values[k], dtype=np.float64))) for k in ("w", "b")]


def _steps(opt, params, case, steps) -> None:
    """Run ``steps`` (indices into the stored gradient sequence), checking each result."""
    for t in steps:
        for k, p in params:
            p.grad = _m(case[f"grads_{k}"][t])
        opt.step()
        for k, p in params:
            _close(p, case[f"traj_{k}"][t], VAL, f"{k} after step {t + 1}")


@pytest.mark.parametrize("name", sorted(OPTIM))
def test_optimizer_trajectory_matches_torch(name) -> None:
    case = OPTIM[name]
    params = _params({k: case[f"p0_{k}"] for k in ("w", "b")})
    opt = _optimizer(case, params)
    _steps(opt, params, case, range(len(case["grads_w"])))
    for k, _ in params:
        for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if f"{field}_{k}" in case:
                _close(opt.state[k][field], case[f"{field}_{k}"], VAL, f"{field} of {k}")
        assert all(p.dtype == np.float64 for _, p in params)


@pytest.mark.parametrize("name", sorted(OPTIM))
def test_optimizer_resumed_from_state_dict_matches_torch(name) -> None:
    """Four steps, a state_dict, fresh parameters and optimizer, four more steps: checked
    against PyTorch's uninterrupted run, not against minidl's own."""
    case = OPTIM[name]
    params = _params({k: case[f"p0_{k}"] for k in ("w", "b")})
    opt = _optimizer(case, params)
    _steps(opt, params, case, range(4))
    sd = opt.state_dict()
    fresh = _params({k: p.detach().numpy().copy() for k, p in params})
    opt2 = _optimizer(case, fresh)
    opt2.load_state_dict(sd)
    _steps(opt2, fresh, case, range(4, len(case["grads_w"])))


@pytest.mark.parametrize("name", [k for k in sorted(OPTIM)
                                  if OPTIM[k]["config"]["kw"].get("amsgrad")])
def test_amsgrad_fixtures_tell_the_maximum_from_the_moment(name) -> None:
    """The stored gradients make the second moment fall, so an AMSGrad without its
    running maximum (plain Adam) ends elsewhere: the fixtures can tell them apart."""
    case = OPTIM[name]
    for k in ("w", "b"):
        gap = case[f"max_exp_avg_sq_{k}"] - case[f"exp_avg_sq_{k}"]
        assert (gap >= 0).all() and gap.max() > 1e-6 * case[f"exp_avg_sq_{k}"].max()
    plain = dict(case, config=dict(case["config"], kw=dict(case["config"]["kw"],
                                                           amsgrad=False)))
    params = _params({k: case[f"p0_{k}"] for k in ("w", "b")})
    with pytest.raises(AssertionError):
        _steps(_optimizer(plain, params), params, case, range(len(case["grads_w"])))


# ------------------------------------------------------------------------ normalization

@pytest.mark.parametrize("name", [k for k in sorted(NORM) if k[:2] == "bn" and k[2:].isdigit()])
def test_batch_norm_matches_torch(name, kernel_backend) -> None:
    case = NORM[name]
    cfg = case["config"]
    x, w, b = _m(case["x"], True), _m(case["w"], True), _m(case["b"], True)
    rm, rv = _m(case["rm0"]), _m(case["rv0"])
    affine = cfg["affine"]
    y = F.batch_norm(x, rm, rv, w if affine else None, b if affine else None,
                     training=cfg["training"], momentum=cfg["momentum"], eps=cfg["eps"])
    y.backward(_m(case["gy"]))
    _close(y, case["y"], VAL, "output")
    _close(rm, case["rm"], STAT, "running_mean")
    _close(rv, case["rv"], STAT, "running_var")
    _close(x.grad, case["gx"], GRAD, "input gradient")
    if affine:
        _close(w.grad, case["gw"], GRAD, "weight gradient")
        _close(b.grad, case["gb"], GRAD, "bias gradient")


@pytest.mark.parametrize("name", ["bn2d_module", "bn1d_cumulative"])
def test_batchnorm_module_running_stats_over_batches_match_torch(name) -> None:
    case = NORM[name]
    cfg = case["config"]
    mod = getattr(nn, cfg["cls"])(case["w"].shape[0], momentum=cfg["momentum"]).double()
    mod.weight.data[...] = case["w"]
    mod.bias.data[...] = case["b"]
    for i, x in enumerate(case["xs"]):
        _close(mod(_m(x)), case["ys"][i], VAL, f"train output of batch {i}")
        _close(mod.running_mean, case["running_mean"][i], STAT, f"running_mean, batch {i}")
        _close(mod.running_var, case["running_var"][i], STAT, f"running_var, batch {i}")
    assert int(mod.num_batches_tracked.item()) == int(case["num_batches_tracked"]) == 3
    mod.eval()
    _close(mod(_m(case["x_eval"])), case["y_eval"], VAL, "eval output")


@pytest.mark.parametrize("name", _cases(NORM, "ln"))
def test_layer_norm_matches_torch(name) -> None:
    case = NORM[name]
    cfg = case["config"]
    x, w, b = _m(case["x"], True), _m(case["w"], True), _m(case["b"], True)
    y = F.layer_norm(x, tuple(cfg["normalized_shape"]), w, b, cfg["eps"])
    y.backward(_m(case["gy"]))
    _close(y, case["y"], VAL, "output")
    for t, k in ((x, "gx"), (w, "gw"), (b, "gb")):
        _close(t.grad, case[k], GRAD, k)


# --------------------------------------------------------------------------------- loss

@pytest.mark.parametrize("name", sorted(LOSS))
def test_cross_entropy_matches_torch(name) -> None:
    case = LOSS[name]
    cfg = case["config"]
    x = _m(case["x"], True)
    y = case["y"] if cfg["target"] == "labels" else _m(case["y"])
    loss = F.softmax_cross_entropy(x, y, reduction=cfg["reduction"],
                                   label_smoothing=cfg["smoothing"])
    loss.backward(_m(case["gl"]))
    _close(loss, case["loss"], VAL, "loss")
    _close(x.grad, case["gx"], GRAD, "logits gradient")
    if cfg["target"] == "labels":  # the module is the same function
        module = nn.CrossEntropyLoss(reduction=cfg["reduction"],
                                     label_smoothing=cfg["smoothing"])
        _close(module(_m(case["x"]), minidl.tensor(case["y"])), case["loss"], VAL, "module")


# ---------------------------------------------------------------------- conv and pooling

@pytest.mark.parametrize("name", _cases(CONV_POOL, "same"))
def test_conv2d_same_padding_with_even_kernels_matches_torch(name, kernel_backend) -> None:
    case = CONV_POOL[name]
    x, w, b = _m(case["x"], True), _m(case["w"], True), _m(case["b"], True)
    d = case["config"]["dilation"]
    y = F.conv2d(x, w, b, padding="same", dilation=tuple(d) if isinstance(d, list) else d)
    assert y.shape == x.shape[:1] + (w.shape[0],) + x.shape[2:]
    _close(y, case["y"], VAL, "output")
    y.backward(_m(case["gy"]))
    for t, k in ((x, "gx"), (w, "gw"), (b, "gb")):
        _close(t.grad, case[k], GRAD, k)


@pytest.mark.parametrize("name", _cases(CONV_POOL, "pool"))
@pytest.mark.parametrize("ceil", [False, True])
def test_pooling_matches_torch(name, ceil, kernel_backend) -> None:
    case = CONV_POOL[name]
    cfg = case["config"]
    k, s, p, d = (tuple(cfg[f]) for f in ("kernel", "stride", "padding", "dilation"))
    tag = "ceil" if ceil else "floor"
    x = _m(case["x"], True)
    y = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil)
    _close(y, case[f"max_{tag}_y"], VAL, "max_pool2d output")
    y.backward(_m(case[f"max_{tag}_gy"]))
    _close(x.grad, case[f"max_{tag}_gx"], GRAD, "max_pool2d gradient")
    _, ind = kernels.max_pool2d_forward(case["x"], k, s, p, d, ceil)
    np.testing.assert_array_equal(ind, case[f"max_{tag}_ind"])
    for include in (False, True):
        atag = f"avg_{tag}_{'incl' if include else 'excl'}"
        if f"{atag}_y" not in case:
            continue
        x = _m(case["x"], True)
        y = F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=include)
        _close(y, case[f"{atag}_y"], VAL, f"{atag} output")
        y.backward(_m(case[f"{atag}_gy"]))
        _close(x.grad, case[f"{atag}_gx"], GRAD, f"{atag} gradient")


def _conv_relu_pool_nets(case: dict) -> dict[str, nn.Module]:
    oc, c = case["w"].shape[:2]
    nets = {"fused_activation": nn.Sequential(nn.Conv2d(c, oc, 3, activation="relu"),
                                              nn.MaxPool2d(2)),
            "fused_relu_layer": nn.Sequential(nn.Conv2d(c, oc, 3), nn.ReLU(),
                                              nn.MaxPool2d(2))}
    for net in nets.values():
        net.double()
        net[0].load_state_dict({"weight": case["w"], "bias": case["b"]})
    return nets


@pytest.mark.parametrize("fusion", [True, False])
@pytest.mark.parametrize("name", _cases(CONV_POOL, "conv_relu_pool"))
def test_conv_relu_max_pool_fused_and_unfused_match_torch(name, fusion, kernel_backend) -> None:
    case = CONV_POOL[name]
    old = nn.set_fusion(fusion)
    try:
        for label, net in _conv_relu_pool_nets(case).items():
            x = _m(case["x"], True)
            y = net(x)
            _close(y, case["y"], VAL, f"{label} output")
            y.backward(_m(case["gy"]))
            _close(x.grad, case["gx"], GRAD, f"{label} input gradient")
            _close(net[0].weight.grad, case["gw"], GRAD, f"{label} weight gradient")
            _close(net[0].bias.grad, case["gb"], GRAD, f"{label} bias gradient")
    finally:
        nn.set_fusion(old)


@pytest.mark.parametrize("name", _cases(CONV_POOL, "conv_relu_pool"))
def test_functional_conv2d_max_pool2d_matches_torch(name, kernel_backend) -> None:
    case = CONV_POOL[name]
    x, w, b = _m(case["x"], True), _m(case["w"], True), _m(case["b"], True)
    y = F.conv2d_max_pool2d(x, w, b, activation="relu", pool_size=2)
    _close(y, case["y"], VAL, "conv2d_max_pool2d output")
    y.backward(_m(case["gy"]))
    for t, k in ((x, "gx"), (w, "gw"), (b, "gb")):
        _close(t.grad, case[k], GRAD, k)
