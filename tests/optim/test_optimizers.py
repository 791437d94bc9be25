"""SGD / Adam / AdamW against hand-computed updates, parameter groups, name-keyed state,
state_dict round trips (resuming gives identical steps), dtypes and clip_grad_norm_."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minidl
import minidl.nn as nn
from minidl.optim import SGD, Adam, AdamW, clip_grad_norm_


def _param(values) -> nn.Parameter:
    return nn.Parameter(np.asarray(values, dtype=np.float32))


def _run(opt_cls, grads, p0, **kw) -> np.ndarray:
    p = _param(p0)
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = minidl.tensor(np.asarray(g, np.float32))
        opt.step()
    assert p.dtype == np.float32
    return p.detach().numpy()


def test_sgd_momentum_by_hand() -> None:
    # p=1, g=1 every step, lr=0.1, momentum 0.9: buffers 1, 1.9, 2.71
    got = _run(SGD, [[1.0]] * 3, [1.0], lr=0.1, momentum=0.9)
    assert got[0] == pytest.approx(1 - 0.1 * (1 + 1.9 + 2.71), rel=1e-6)
    # Nesterov: steps use g + 0.9 * buf = 1.9, 2.71, 3.439
    got = _run(SGD, [[1.0]] * 3, [1.0], lr=0.1, momentum=0.9, nesterov=True)
    assert got[0] == pytest.approx(1 - 0.1 * (1.9 + 2.71 + 3.439), rel=1e-6)
    # plain SGD with weight decay 0.5: p <- p - 0.1 * (1 + 0.5 p)
    p = 1.0
    for _ in range(3):
        p = p - 0.1 * (1 + 0.5 * p)
    assert _run(SGD, [[1.0]] * 3, [1.0], lr=0.1, weight_decay=0.5)[0] == pytest.approx(p)


def _sgd_ref(p, grads, lr, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False):
    p = np.array(p, np.float64)
    buf = None
    for g in grads:
        g = np.array(g, np.float64) + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def _adam_ref(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False,
              amsgrad=False, return_state=False):
    p = np.array(p, np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    vmax = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = np.array(g, np.float64)
        if decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        vv = vmax if amsgrad else v
        mhat, vhat = m / (1 - b1 ** t), vv / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return (p, dict(exp_avg=m, exp_avg_sq=v, max_exp_avg_sq=vmax)) if return_state else p


GRADS = [[0.5, -1.0, 2.0], [0.1, 0.3, -2.5], [-0.7, 0.2, 1.0]]
P0 = [1.0, -2.0, 0.5]


@pytest.mark.parametrize("kw", [
    dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.8, dampening=0.3),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), dict(lr=0.1, weight_decay=0.1),
])
def test_sgd_three_steps(kw) -> None:
    ref = _sgd_ref(P0, GRADS, kw["lr"], kw.get("momentum", 0.0), kw.get("dampening", 0.0),
                   kw.get("weight_decay", 0.0), kw.get("nesterov", False))
    np.testing.assert_allclose(_run(SGD, GRADS, P0, **kw), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls,kw,ref_kw", [
    (Adam, dict(lr=0.01), {}),
    (Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1), dict(b1=0.8, b2=0.99, wd=0.1)),
    (Adam, dict(lr=0.01, amsgrad=True), dict(amsgrad=True)),
    (AdamW, dict(lr=0.01), dict(wd=0.01, decoupled=True)),
    (AdamW, dict(lr=0.1, weight_decay=0.5, eps=1e-3), dict(wd=0.5, decoupled=True, eps=1e-3)),
])
def test_adam_three_steps(cls, kw, ref_kw) -> None:
    ref = _adam_ref(P0, GRADS, kw["lr"], **ref_kw)
    np.testing.assert_allclose(_run(cls, GRADS, P0, **kw), ref, rtol=1e-5, atol=1e-7)


# Large gradients, then small ones, then a large one: the second moment v falls at most
# steps, so AMSGrad's running maximum differs from v. (With GRADS above v grows at every
# step, the maximum equals v and AMSGrad cannot be told from Adam.)
GRADS_FALLING = [[3.0, -2.0, 1.0, 0.5], [0.1, 0.2, -0.1, 2.0], [-0.05, 0.1, 0.02, 0.1],
                 [0.02, -0.01, 0.05, -0.05], [1.0, 0.05, -0.02, 0.01], [0.01, -0.02, 0.5, 0.02]]
P0_FALLING = [1.0, -2.0, 0.5, 0.0]


def _steps64(opt, p, grads) -> None:
    for g in grads:
        p.grad = minidl.tensor(np.asarray(g, np.float64))
        opt.step()


@pytest.mark.parametrize("cls,kw,ref_kw", [
    (Adam, dict(lr=0.01, amsgrad=True), {}),
    (Adam, dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.05, amsgrad=True),
     dict(b2=0.9, wd=0.05)),
    (AdamW, dict(lr=0.02, betas=(0.8, 0.95), weight_decay=0.1, amsgrad=True),
     dict(b1=0.8, b2=0.95, wd=0.1, decoupled=True)),
])
def test_amsgrad_uses_the_running_maximum(cls, kw, ref_kw) -> None:
    # float64, so that even b2 = 0.999's small AMSGrad effect is far above the tolerance
    want, st = _adam_ref(P0_FALLING, GRADS_FALLING, kw["lr"], amsgrad=True, return_state=True,
                         **ref_kw)
    adam = _adam_ref(P0_FALLING, GRADS_FALLING, kw["lr"], **ref_kw)
    assert (st["max_exp_avg_sq"] > st["exp_avg_sq"] * (1 + 1e-6)).any()  # the max matters
    assert np.abs(want - adam).max() > 1e-6 * np.abs(want).max()  # 1e6 x the tolerance
    p = nn.Parameter(np.asarray(P0_FALLING, np.float64))
    opt = cls([p], **kw)
    _steps64(opt, p, GRADS_FALLING)
    np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-14)
    for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_allclose(opt.state["0"][k], st[k], rtol=1e-12, atol=1e-16, err_msg=k)


@pytest.mark.parametrize("cls,kw,ref_kw", [
    (Adam, dict(lr=0.01, betas=(0.9, 0.9), amsgrad=True), dict(b2=0.9)),
    (AdamW, dict(lr=0.02, weight_decay=0.1, amsgrad=True), dict(wd=0.1, decoupled=True)),
])
def test_amsgrad_resume_matches_an_independent_run(cls, kw, ref_kw) -> None:
    """Three steps, state_dict, a fresh parameter and optimizer, three more steps: equal to
    the NumPy reference run straight through (not to minidl's own uninterrupted run, which
    a shared bug would match)."""
    p = nn.Parameter(np.asarray(P0_FALLING, np.float64))
    opt = cls([("w", p)], **kw)
    _steps64(opt, p, GRADS_FALLING[:3])
    sd = opt.state_dict()
    q = nn.Parameter(p.detach().numpy().copy())
    opt2 = cls([("w", q)], **kw)
    opt2.load_state_dict(sd)
    _steps64(opt2, q, GRADS_FALLING[3:])
    want, st = _adam_ref(P0_FALLING, GRADS_FALLING, kw["lr"], amsgrad=True, return_state=True,
                         **ref_kw)
    np.testing.assert_allclose(q.detach().numpy(), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(opt2.state["w"]["max_exp_avg_sq"], st["max_exp_avg_sq"],
                               rtol=1e-12, atol=1e-16)
    assert opt2.state["w"]["step"] == len(GRADS_FALLING)


def test_param_groups_distinct_lr() -> None:
    a, b = _param([1.0]), _param([1.0])
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad = minidl.tensor([1.0])
    b.grad = minidl.tensor([1.0])
    opt.step()
    assert a.item() == pytest.approx(0.9) and b.item() == pytest.approx(0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert [g["param_names"] for g in opt.param_groups] == [["0"], ["1"]]


def test_named_state_keys_and_dtypes() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = Adam(model.named_parameters(), lr=1e-2, amsgrad=True)
    x = minidl.randn(5, 3)
    for _ in range(2):
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()
    assert sorted(opt.state) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for p in model.parameters():
        assert p.dtype == np.float32 and p.grad.dtype == np.float32
    for st in opt.state.values():
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert st[k].dtype == np.float32, k
    sgd = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    sgd.step()
    assert all(st["momentum_buffer"].dtype == np.float32 for st in sgd.state.values())


def test_grads_are_never_modified_in_place() -> None:
    # Autograd may hand the same gradient array to several leaves (a + b).
    a, b = _param([1.0, 2.0]), _param([3.0, 4.0])
    (a + b).sum().backward()
    ga = a.grad.numpy().copy()
    opt = SGD([a, b], lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step()
    opt.step()
    np.testing.assert_array_equal(a.grad.numpy(), ga)
    clip_grad_norm_([a, b], 0.1)
    np.testing.assert_array_equal(ga, [1.0, 1.0])


def _train(model, opt, steps, seed=5):
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        x = minidl.tensor(rng.standard_normal((8, 3)).astype(np.float32))
        y = minidl.tensor(rng.integers(0, 2, 8))
        opt.zero_grad()
        loss = nn.functional.softmax_cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: Adam(ps, lr=0.01, amsgrad=True),
    lambda ps: AdamW(ps, lr=0.01),
])
def test_resume_mid_training_gives_identical_steps(make) -> None:
    def fresh():
        minidl.manual_seed(11)
        return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))

    ref_model = fresh()
    ref_opt = make(ref_model.named_parameters())
    _train(ref_model, ref_opt, 3)
    model_sd = {k: v.numpy().copy() for k, v in ref_model.state_dict().items()}
    opt_sd = ref_opt.state_dict()
    ref_losses = _train(ref_model, ref_opt, 3, seed=9)

    model = fresh()  # a new process would rebuild everything from scratch
    model.load_state_dict(model_sd)
    opt = make(model.named_parameters())
    opt.load_state_dict(opt_sd)
    assert _train(model, opt, 3, seed=9) == ref_losses
    for p, q in zip(model.parameters(), ref_model.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())


def test_state_dict_is_a_plain_snapshot() -> None:
    p = _param([1.0, 2.0])
    opt = Adam({"w": p}.items(), lr=0.1)
    p.grad = minidl.tensor([1.0, 1.0])
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == ["w"]
    assert sd["state"]["w"]["step"] == 1
    m = sd["state"]["w"]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"]["w"]["exp_avg"], m)  # not aliased
    assert isinstance(sd["state"]["w"]["exp_avg"], np.ndarray)


def test_load_state_dict_errors() -> None:
    a = _param([1.0])
    opt = SGD([("a", a)], lr=0.1, momentum=0.9)
    other = SGD([("b", _param([1.0]))], lr=0.1).state_dict()
    with pytest.raises(ValueError, match=r"parameter names of group 0 differ \(missing from "
                                         r"state dict: \['a'\]; unexpected: \['b'\]"):
        opt.load_state_dict(other)
    bad = {"state": {"a": {"momentum_buffer": np.zeros(3, np.float32)}},
           "param_groups": opt.state_dict()["param_groups"]}
    with pytest.raises(ValueError, match=r"state 'momentum_buffer' of 'a' has shape \(3,\)"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="2 parameter groups, optimizer has 1"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": []}, {"params": []}]})


def test_constructor_errors() -> None:
    p = _param([1.0])
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="appears in more than one group"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="nesterov momentum needs momentum > 0"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"Adam: betas must be in \[0, 1\)"):
        Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        SGD([p], lr=-1.0)


def test_clip_grad_norm() -> None:
    a, b = _param([0.0, 0.0]), _param([0.0])
    a.grad = minidl.tensor([3.0, 0.0])
    b.grad = minidl.tensor([4.0])
    total = clip_grad_norm_([a, b], 1.0)
    assert total == pytest.approx(5.0)
    new = math.sqrt(sum(float((p.grad.numpy() ** 2).sum()) for p in (a, b)))
    assert new == pytest.approx(1.0, rel=1e-5)
    assert a.grad.dtype == np.float32
    assert clip_grad_norm_([a, b], 10.0) == pytest.approx(1.0, rel=1e-5)  # no change
    assert clip_grad_norm_([a, b], 0.5, norm_type=math.inf) == pytest.approx(0.8, rel=1e-5)


@pytest.mark.parametrize("size", [3, 70_000])  # the serial and the parallel Adam kernel
def test_adam_fused_kernel_matches_formula(size) -> None:
    from minidl.kernels.elementwise import adam_update_

    rng = np.random.default_rng(size)
    p, g = rng.standard_normal(size), rng.standard_normal(size)
    m, v = rng.standard_normal(size), rng.random(size)
    ref_m, ref_v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    ref_p = p - 0.5 * ref_m / (np.sqrt(ref_v) / 0.3 + 1e-8)
    assert adam_update_(p, g, m, v, 0.9, 0.999, 0.5, 0.3, 1e-8)
    np.testing.assert_allclose(m, ref_m, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(v, ref_v, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p, ref_p, rtol=1e-12, atol=1e-14)
