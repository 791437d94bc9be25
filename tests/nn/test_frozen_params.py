"""Frozen parameters (``requires_grad=False``) end to end, on the case airbench needs: a
batch norm whose scale stays 1 while its shift trains, and a conv whose weight is fixed.

No layer needs a flag for it (PyTorch has none either): ``bn.weight.requires_grad_(False)``
makes forward unchanged, backward skip the weight, optimizers never see it, and the
checkpoint still carry it. Gradients of everything else are checked in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

import minidl
import minidl.nn as nn
from minidl.gradcheck import gradcheck, gradgradcheck
from minidl.optim import SGD, Adam, AdamW


def _frozen_bn(c: int = 3, dtype=np.float64) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-12, momentum=0.4, dtype=dtype)
    bn.weight.requires_grad_(False)
    return bn


@contextmanager
def _swapped(module: nn.Module, **tensors: minidl.Tensor) -> Iterator[None]:
    """Run ``module`` with other tensors in place of some of its parameters (gradcheck
    perturbs private copies of its inputs, so the module must compute with those)."""
    old = {k: module._parameters[k] for k in tensors}
    module._parameters.update(tensors)
    try:
        yield
    finally:
        module._parameters.update(old)


def _np(t: minidl.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _x(rng, shape=(4, 3, 5, 5), dtype=np.float64) -> minidl.Tensor:
    return minidl.tensor((rng.normal(size=shape) * 2 + 1).astype(dtype), requires_grad=True)


@pytest.mark.parametrize("training", [True, False])
def test_frozen_scale_batch_norm_forward_is_unchanged(rng, training) -> None:
    frozen, plain = _frozen_bn(), nn.BatchNorm2d(3, eps=1e-12, momentum=0.4).double()
    frozen.bias.data[...] = plain.bias.data[...] = [0.5, -1.0, 2.0]
    for bn in (frozen, plain):
        bn.running_mean.data[...] = [0.1, 0.2, 0.3]
        bn.running_var.data[...] = [1.5, 0.5, 2.0]
        bn.train(training)
    x = _x(rng)
    np.testing.assert_array_equal(_np(frozen(x)), _np(plain(x)))
    np.testing.assert_array_equal(frozen.running_var.numpy(), plain.running_var.numpy())
    assert frozen.weight.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("create_graph", [False, True])  # fused fast path / op-by-op path
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frozen_scale_batch_norm_backward_skips_the_weight(rng, create_graph, dtype) -> None:
    frozen, plain = _frozen_bn(dtype=dtype), nn.BatchNorm2d(3, eps=1e-12, dtype=dtype)
    x0 = _np(_x(rng, dtype=dtype))
    u = minidl.tensor(rng.normal(size=x0.shape).astype(dtype))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    grads = []
    for bn in (frozen, plain):
        x = minidl.tensor(x0, requires_grad=True)
        y = bn(x)
        gx, gb = minidl.autograd.grad([y], [x, bn.bias], [u], retain_graph=True,
                                      create_graph=create_graph)
        grads.append((_np(gx), _np(gb)))
        (y * u).sum().backward()
        assert x.grad.dtype == bn.bias.grad.dtype == dtype
        np.testing.assert_allclose(_np(x.grad), grads[-1][0], rtol=tol, atol=tol)
    assert frozen.weight.grad is None and plain.weight.grad is not None
    for got, want in zip(grads[0], grads[1]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("training", [True, False])
def test_frozen_scale_batch_norm_gradcheck(rng, training) -> None:
    bn = _frozen_bn().train(training)
    bn.running_var.data[...] = [1.5, 0.5, 2.0]
    x = _x(rng, (3, 3, 4, 4))
    b = minidl.tensor(rng.normal(size=3), requires_grad=True)

    def f(x, b):
        with _swapped(bn, bias=b):
            return bn(x)

    assert gradcheck(f, [x, b])
    assert gradgradcheck(f, [x, b])
    assert bn.weight.grad is None and bn.weight.tolist() == [1.0, 1.0, 1.0]


def test_frozen_conv_weight_gradcheck_of_bias_and_input(rng) -> None:
    conv = nn.Conv2d(3, 4, 2, bias=True).double()
    conv.weight.requires_grad_(False)
    x = _x(rng, (2, 3, 5, 5))
    b = minidl.tensor(rng.normal(size=4), requires_grad=True)

    def f(x, b):
        with _swapped(conv, bias=b):
            return conv(x)

    assert gradcheck(f, [x, b])
    u = rng.normal(size=(2, 4, 4, 4))
    images = minidl.tensor(_np(x))  # the usual case: input images need no gradient
    (conv(images) * minidl.tensor(u)).sum().backward()
    assert conv.weight.grad is None and images.grad is None
    np.testing.assert_allclose(_np(conv.bias.grad), u.sum(axis=(0, 2, 3)), rtol=1e-12)


def _loss(bn: nn.Module, x: minidl.Tensor, u: np.ndarray) -> minidl.Tensor:
    return (bn(x) * minidl.tensor(u.astype(x.dtype))).sum()


@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1),
    lambda ps: AdamW(ps, lr=0.1, weight_decay=0.1),
], ids=["sgd", "adam", "adamw"])
def test_optimizer_steps_leave_the_frozen_scale_at_one(rng, make_opt) -> None:
    bn = _frozen_bn(dtype=np.float32)
    opt = make_opt([(n, p) for n, p in bn.named_parameters() if p.requires_grad])
    assert [n for g in opt.param_groups for n in g["param_names"]] == ["bias"]
    x = _x(rng, dtype=np.float32)
    u = rng.normal(size=(4, 3, 5, 5))
    for _ in range(3):
        opt.zero_grad()
        _loss(bn, x, u).backward()
        opt.step()
    assert bn.weight.tolist() == [1.0, 1.0, 1.0] and bn.weight.grad is None
    assert np.abs(_np(bn.bias)).min() > 0.01  # the shift did train
    assert bn.bias.dtype == np.float32 and "weight" not in opt.state
    with pytest.raises(ValueError, match=r"parameter 'weight' does not require grad"):
        make_opt(bn.named_parameters())  # a frozen parameter is refused, by name


@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.5),
    lambda ps: AdamW(ps, lr=0.1, weight_decay=0.5),
], ids=["sgd", "adamw"])
def test_freezing_after_the_optimizer_was_built(rng, make_opt) -> None:
    # airbench trains the whitening bias for 3 epochs, then sets requires_grad = False on
    # it while the optimizer still holds it: no gradient, so no step, no decay, no momentum
    bn = nn.BatchNorm2d(3)
    opt = make_opt(bn.named_parameters())
    x, u = _x(rng, dtype=np.float32), rng.normal(size=(4, 3, 5, 5))
    for _ in range(2):
        opt.zero_grad()
        _loss(bn, x, u).backward()
        opt.step()
    bn.bias.requires_grad_(False)
    before = _np(bn.bias).copy()
    for _ in range(2):
        opt.zero_grad()
        _loss(bn, x, u).backward()
        assert bn.bias.grad is None and bn.weight.grad is not None
        opt.step()
    np.testing.assert_array_equal(_np(bn.bias), before)


def test_frozen_flag_survives_state_dict_casts_and_counts() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), _frozen_bn(4, np.float32))
    assert list(model.state_dict()) == ["0.weight", "1.weight", "1.bias", "1.running_mean",
                                        "1.running_var", "1.num_batches_tracked"]
    assert model.num_parameters() == 108 + 8 and model.num_parameters(trainable_only=True) == 112
    other = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), _frozen_bn(4, np.float32))
    sd = model.state_dict()
    sd["1.weight"].data[...] = 2.0  # a checkpoint may hold any value: it is loaded as is
    other.load_state_dict(sd)
    assert other[1].weight.tolist() == [2.0] * 4 and not other[1].weight.requires_grad
    other.double()
    assert other[1].weight.dtype == np.float64 and not other[1].weight.requires_grad
    other.to("cpu")
    assert not other[1].weight.requires_grad and other[1].bias.requires_grad
    other.requires_grad_(True)  # Module.requires_grad_ unfreezes everything
    assert other[1].weight.requires_grad
