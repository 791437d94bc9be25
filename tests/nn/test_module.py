"""Module API: registration order, state_dict round trips and errors, train/eval, to(),
repr, hooks, containers, Linear, init and the nn.functional alias."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minidl
import minidl.nn as nn
from minidl.gradcheck import gradcheck, gradgradcheck


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.scale = nn.Parameter(np.ones(1, np.float32))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(5, 2))
        self.register_buffer("steps", minidl.tensor(np.zeros((), np.int64)))
        self.register_buffer("cache", minidl.zeros(2), persistent=False)

    def forward(self, x):
        return self.head(self.bn(self.fc1(x)) * self.scale)


def test_named_parameters_registration_order() -> None:
    names = [n for n, _ in Block().named_parameters()]
    assert names == ["scale", "fc1.weight", "fc1.bias", "bn.weight", "bn.bias",
                     "head.1.weight", "head.1.bias"]
    assert [n for n, _ in Block().named_buffers()] == [
        "steps", "cache", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    m = Block()
    assert [n for n, _ in m.named_children()] == ["fc1", "bn", "head"]
    assert len(list(m.modules())) == 6
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())


def test_shared_parameters_listed_once() -> None:
    lin = nn.Linear(3, 3)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]


def test_reassign_and_delete() -> None:
    m = Block()
    m.fc1 = nn.Linear(4, 5)
    assert "fc1.weight" in dict(m.named_parameters())
    del m.scale
    assert "scale" not in dict(m.named_parameters())
    m.extra = 3  # plain attribute
    assert m.extra == 3 and "extra" not in m.state_dict()
    with pytest.raises(AttributeError, match="'Block' object has no attribute 'nope'"):
        _ = m.nope


def test_state_dict_round_trip_and_sharing() -> None:
    minidl.manual_seed(1)
    a = Block()
    minidl.manual_seed(2)
    b = Block()
    sd = a.state_dict()
    assert list(sd) == ["scale", "steps", "fc1.weight", "fc1.bias", "bn.weight", "bn.bias",
                        "bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
                        "head.1.weight", "head.1.bias"]
    assert "cache" not in sd  # non-persistent buffer
    keep_b = b.fc1.weight
    b.load_state_dict({k: v.numpy() for k, v in sd.items()})
    assert b.fc1.weight is keep_b  # same Parameter objects, values copied in
    x = minidl.randn(6, 4)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).detach().numpy(), b(x).detach().numpy())
    # state_dict tensors share memory with the model (PyTorch semantics)
    a.fc1.weight.data[0, 0] = 42.0
    assert sd["fc1.weight"].numpy()[0, 0] == 42.0
    assert b.bn.num_batches_tracked.dtype == np.int64


def test_load_state_dict_errors() -> None:
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    sd = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    bad = dict(sd)
    bad["1.weight"] = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"size mismatch for 1.weight: checkpoint has shape "
                                         r"\(2, 4\), model has shape \(2, 3\)"):
        m.load_state_dict(bad)
    other = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).state_dict()
    with pytest.raises(KeyError) as exc:
        m.load_state_dict(other)
    msg = str(exc.value)
    assert "missing keys (2): 1.weight, 1.bias" in msg
    assert "unexpected keys (2): 2.weight, 2.bias" in msg
    partial = {"0.weight": sd["0.weight"]}
    res = m.load_state_dict(partial, strict=False)
    assert res.missing_keys == ["0.bias", "1.weight", "1.bias"] and res.unexpected_keys == []


def test_load_state_dict_casts_to_param_dtype() -> None:
    m = nn.Linear(2, 2)
    m.load_state_dict({"weight": np.ones((2, 2)), "bias": np.zeros(2)})
    assert m.weight.dtype == np.float32 and m.weight.detach().numpy().sum() == 4


def test_train_eval_propagation() -> None:
    m = Block()
    assert all(x.training for x in m.modules())
    assert m.eval() is m
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())


def test_to_keeps_parameter_objects_and_casts() -> None:
    m = Block()
    params = list(m.parameters())
    m.to("cpu")
    assert all(p is q for p, q in zip(params, m.parameters()))
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m.bn.running_mean.dtype == np.float64
    assert m.bn.num_batches_tracked.dtype == np.int64  # integers are not cast
    assert all(p is q for p, q in zip(params, m.parameters()))


def test_zero_grad_and_requires_grad() -> None:
    m = nn.Linear(3, 2)
    m(minidl.ones(2, 3)).sum().backward()
    # d/dW of sum(x W^T + b) over 2 rows of ones: every entry 2, and 2 for each bias
    np.testing.assert_array_equal(m.weight.grad.numpy(), np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(m.bias.grad.numpy(), [2.0, 2.0])
    m.zero_grad()
    assert m.weight.grad is None
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())


def test_repr_like_pytorch() -> None:
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Sequential(nn.Dropout(0.1)))
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Linear(in_features=4, out_features=3, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Sequential(\n"
        "    (0): Dropout(p=0.1)\n"
        "  )\n"
        ")")
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"
    assert repr(nn.Conv2d(3, 32, 3, padding=1)) == (
        "Conv2d(3, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))")


def test_forward_hook_and_remove() -> None:
    m = nn.Linear(2, 2)
    seen = []
    h = m.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    m(minidl.ones(3, 2))
    h.remove()
    m(minidl.ones(3, 2))
    assert seen == [(3, 2)]


def test_sequential_and_modulelist() -> None:
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    seq.append(nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear)
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"]
    assert isinstance(seq[:2], nn.Sequential) and len(seq[:2]) == 2
    assert seq(minidl.ones(4, 2)).shape == (4, 1)
    with pytest.raises(IndexError, match="Sequential: index 5 is out of range for 3 modules"):
        seq[5]
    ml = nn.ModuleList([nn.Linear(2, 2)]).extend([nn.Linear(2, 2)])
    assert len(ml) == 2 and [n for n, _ in ml.named_parameters()][2] == "1.weight"
    with pytest.raises(TypeError, match="Sequential: argument 0 must be a Module"):
        nn.Sequential(3)


def test_linear_shape_error_message() -> None:
    fc = nn.Linear(2304, 128)
    with pytest.raises(ValueError, match=r"^Linear: input has 1600 features but layer expects "
                                         r"2304 \(input shape \(64, 1600\)\)$"):
        fc(minidl.zeros(64, 1600))


def test_linear_gradcheck() -> None:
    fc = nn.Linear(4, 3).double()
    x = minidl.tensor(np.random.default_rng(0).standard_normal((5, 4)), requires_grad=True)

    def f(x, w, b):
        return fc(x * 1.0) * 1.0

    assert gradcheck(f, [x, fc.weight, fc.bias])
    assert gradgradcheck(lambda x, w, b: fc(x) * fc(x), [x, fc.weight, fc.bias])


def test_default_init_bounds_and_determinism() -> None:
    minidl.manual_seed(7)
    a = nn.Sequential(nn.Linear(100, 50), nn.Conv2d(8, 4, 3))
    minidl.manual_seed(7)
    b = nn.Sequential(nn.Linear(100, 50), nn.Conv2d(8, 4, 3))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy(), err_msg=n)
    w = a[0].weight.detach().numpy()
    assert np.abs(w).max() <= 1 / math.sqrt(100) and np.abs(w).max() > 0.09
    assert np.abs(a[0].bias.detach().numpy()).max() <= 1 / math.sqrt(100)
    assert np.abs(a[1].weight.detach().numpy()).max() <= 1 / math.sqrt(72)
    assert w.dtype == np.float32


def test_init_functions() -> None:
    init = nn.init
    assert init.calculate_fan_in_and_fan_out(minidl.zeros(64, 32, 3, 3)) == (288, 576)
    w = init.kaiming_normal_(minidl.zeros(256, 400), nonlinearity="relu")
    assert abs(w.numpy().std() - math.sqrt(2 / 400)) < 0.003
    w = init.xavier_uniform_(minidl.zeros(300, 200))
    bound = math.sqrt(6 / 500)
    assert w.numpy().max() <= bound and w.numpy().max() > 0.95 * bound
    w = init.xavier_normal_(minidl.zeros(300, 200))
    assert abs(w.numpy().std() - math.sqrt(2 / 500)) < 0.003
    assert init.ones_(minidl.zeros(2)).tolist() == [1.0, 1.0]
    assert init.zeros_(minidl.ones(2)).tolist() == [0.0, 0.0]
    assert init.normal_(minidl.zeros(1000), 3.0, 0.1).numpy().mean() == pytest.approx(3, abs=0.02)
    with pytest.raises(ValueError, match="at least 2 dims"):
        init.xavier_uniform_(minidl.zeros(3))


def test_nn_functional_alias() -> None:
    import minidl.nn.functional as F

    assert F is minidl.functional
    assert F.relu is minidl.functional.relu


def test_setattr_refuses_to_replace_a_parameter_or_submodule_silently() -> None:
    lin = nn.Linear(2, 3)
    with pytest.raises(TypeError, match=r"cannot assign 'Tensor' as parameter 'weight' "
                                        r"\(nn.Parameter or None expected\)"):
        lin.weight = minidl.ones(3, 2)
    assert isinstance(lin.weight, nn.Parameter) and len(list(lin.parameters())) == 2
    lin.bias = None  # None still clears it, and a Parameter replaces it
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]
    lin.weight = nn.Parameter(minidl.zeros(3, 2))
    assert lin.weight.sum().item() == 0.0
    seq = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"cannot assign 'int' as child module '0'"):
        setattr(seq, "0", 3)
    assert isinstance(seq[0], nn.Linear)


def test_modulelist_setitem_range() -> None:
    ml = nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.ReLU()])
    ml[-1] = nn.Tanh()
    assert type(ml[2]).__name__ == "Tanh"
    for idx in (5, -4):
        with pytest.raises(IndexError, match=f"ModuleList: index {idx} is out of range for 3 "
                                             "modules"):
            ml[idx] = nn.ReLU()
    with pytest.raises(IndexError, match="index 0 is out of range for 0 modules"):
        nn.ModuleList()[0] = nn.ReLU()


def test_replacing_a_child_or_parameter_keeps_its_position():
    # Regression: re-assigning moved the entry to the end, so ``seq[1] = layer`` made a
    # Sequential run its layers out of order.
    seq = minidl.nn.Sequential(minidl.nn.Linear(2, 3), minidl.nn.ReLU(), minidl.nn.Linear(3, 1))
    seq[1] = minidl.nn.Tanh()
    assert [type(m).__name__ for m in seq] == ["Linear", "Tanh", "Linear"]
    assert seq(minidl.ones(4, 2)).shape == (4, 1)
    lin = seq[0]
    lin.weight = minidl.nn.Parameter(np.zeros((3, 2), np.float32))
    assert list(lin.state_dict()) == ["weight", "bias"]
    seq.add_module("0", minidl.nn.Linear(2, 3))
    assert list(seq.state_dict())[:2] == ["0.weight", "0.bias"]
