"""Array protocols: np.asarray, DLPack (NumPy, PyTorch), NumPy operands on either side."""

from __future__ import annotations

import numpy as np
import pytest

import minidl


def test_asarray_is_the_float_array_without_a_copy():
    t = minidl.tensor(np.arange(6.0).reshape(2, 3))
    a = np.asarray(t)
    assert a.dtype == np.float64 and a.shape == (2, 3) and np.shares_memory(a, t.data)
    assert np.asarray(t, dtype=np.float32).dtype == np.float32
    copied = np.array(t, copy=True)
    copied[0, 0] = 99.0
    assert t.data[0, 0] == 0.0
    assert np.asarray(minidl.tensor(3.0)).shape == ()


def test_asarray_refuses_a_tensor_that_requires_grad():
    p = minidl.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"requires grad; use np.asarray\(tensor.detach\(\)\)"):
        np.asarray(p)
    assert np.asarray(p.detach()).tolist() == [1.0]


def test_numpy_operands_on_either_side_stay_tensors():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    for out in (np.float32(2) * x, x * np.float32(2), np.float64(2) + x, x - np.float64(1),
                np.array([1.0, 3.0]) * x, x / np.array([2.0, 2.0])):
        assert isinstance(out, minidl.Tensor) and out.dtype == np.float32 and out.requires_grad
    (np.array([3.0, 5.0]) * x).sum().backward()
    assert x.grad.tolist() == [3.0, 5.0]


def test_dlpack_with_numpy_shares_memory_both_ways():
    a = np.arange(4.0)
    t = minidl.from_dlpack(a)
    assert not t.requires_grad and t.dtype == np.float64 and np.shares_memory(t.data, a)
    back = np.from_dlpack(t)
    back[1] = -1.0
    assert a[1] == -1.0 and t.data[1] == -1.0
    assert t.__dlpack_device__() == (1, 0)
    with pytest.raises(RuntimeError, match="can't export a tensor that requires grad"):
        np.from_dlpack(minidl.tensor([1.0], requires_grad=True))
    with pytest.raises(TypeError, match="from_dlpack: expected an object with __dlpack__"):
        minidl.from_dlpack([1.0, 2.0])


def test_dlpack_with_torch_shares_memory_both_ways():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (optional oracle)")
    t = minidl.tensor(np.arange(3, dtype=np.float32))
    tt = torch.from_dlpack(t)
    tt[0] = 42.0
    assert t.data[0] == 42.0
    src = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    m = minidl.from_dlpack(src)
    src[1, 2] = -5.0
    assert m.shape == (2, 3) and m.data[1, 2] == -5.0
    # the shared tensor takes part in minidl's autograd like any other input
    w = minidl.tensor(np.ones((3, 2), np.float32), requires_grad=True)
    (m @ w).sum().backward()
    assert np.allclose(w.grad.numpy(), src.numpy().sum(axis=0)[:, None].repeat(2, axis=1))
