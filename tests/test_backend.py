"""backend.py: Device parsing, array-module dispatch, device moves, helpers; and the check
that ops refuse to mix devices (exercised through a fake device, since CI has no GPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.backend import Device


def test_device_parsing_and_equality() -> None:
    assert Device("cpu").type == "cpu"
    assert Device("cuda") == Device("cuda:0") == "cuda:0" == Device("GPU")
    assert Device("cuda:1").index == 1 and str(Device("cuda:1")) == "cuda:1"
    assert repr(Device("cuda:2")) == "Device('cuda:2')"
    assert Device(Device("cuda:3")) == Device("cuda:3")
    assert Device("cpu") != "cuda" and Device("cpu") != "tpu" and Device("cpu") != 3
    assert len({Device("cuda"), Device("cuda:0"), Device("cpu")}) == 2


@pytest.mark.parametrize("spec, err, match", [
    ("tpu", ValueError, "Device: unknown device 'tpu'"),
    ("cuda:x", ValueError, "Device: bad CUDA index in 'cuda:x'"),
    ("cpu:1", ValueError, "unknown device"),
    (0, TypeError, "Device: expected a string like 'cpu' or 'cuda:0', got 0"),
])
def test_device_errors(spec, err, match) -> None:
    with pytest.raises(err, match=match):
        Device(spec)


def test_array_module_and_device_of() -> None:
    a = np.zeros(3)
    assert backend.get_array_module(a) is np
    assert backend.get_array_module(minidl.tensor(a)) is np
    assert backend.get_array_module([1, 2], 3.0) is np
    assert backend.device_of(a) == "cpu"
    assert minidl.tensor(a).device == Device("cpu")
    assert minidl.tensor(a).xp is np
    assert Device("cpu").xp is np


def test_to_device_and_to_numpy_on_cpu() -> None:
    a = np.arange(4.0)
    assert backend.to_device(a, "cpu") is a
    assert backend.to_numpy(a) is a
    t = minidl.tensor(a)
    assert t.to("cpu") is t and t.cpu() is t
    backend.synchronize("cpu")  # a no-op, but callable


def test_cuda_is_available_is_bool() -> None:
    assert isinstance(minidl.cuda_is_available(), bool)


@pytest.mark.skipif(minidl.cuda_is_available(), reason="a GPU is present")
def test_cuda_request_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="CUDA device requested but CuPy or a GPU is not "
                                           "available.*device='cpu'"):
        minidl.zeros(2, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA device requested"):
        minidl.ones(2).to("cuda")


def test_scatter_add_accumulates_repeats() -> None:
    target = np.zeros(4)
    backend.scatter_add(target, np.array([1, 1, 3, 1]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert target.tolist() == [0.0, 7.0, 0.0, 3.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_matches_math_and_keeps_dtype(dtype) -> None:
    x = np.linspace(-4, 4, 33).astype(dtype)
    y = backend.erf(x)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, [math.erf(v) for v in x.astype(np.float64)],
                               rtol=1e-6 if dtype == np.float32 else 1e-15, atol=1e-7)


def test_ops_refuse_to_mix_devices(monkeypatch) -> None:
    """No GPU in CI: pretend one array lives on cuda:0 and check the op-level device check."""
    class FakeDeviceArray(np.ndarray):
        """Stands in for a CuPy array: another array type, so the device check runs."""

    a = minidl.ones(2, requires_grad=True)
    b = minidl.ones(2)
    b.data = b.data.view(FakeDeviceArray)
    fake = id(b.data)
    real = backend.device_of
    monkeypatch.setattr(backend, "device_of",
                        lambda arr: Device("cuda:0") if id(arr) == fake else real(arr))
    assert b.device == "cuda:0" and a.device == "cpu"
    with pytest.raises(RuntimeError, match=r"Mul: inputs are on different devices \(cpu and "
                                           r"cuda:0\); move them with .to\(device\) first"):
        a * b
    with pytest.raises(RuntimeError, match="Concatenate: inputs are on different devices"):
        minidl.functional.concatenate([a, b])


def test_ops_and_backward_on_device(device) -> None:
    """The same small graph on every available device, checked against NumPy by hand on
    each (CPU included); gradients stay on that device."""
    x0 = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    w0 = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    x = minidl.tensor(x0, device=device, requires_grad=True)
    w = minidl.tensor(w0, device=device, requires_grad=True)
    labels = [0, 2]
    loss = minidl.functional.softmax_cross_entropy((x @ w).tanh(), labels)
    loss.backward()
    assert loss.device == device and x.grad.device == device and w.grad.device == device
    assert x.grad.dtype == w.grad.dtype == np.float32
    # forward and backward of mean(-log softmax(tanh(x w))[label]) in float64
    x64, w64 = x0.astype(np.float64), w0.astype(np.float64)
    t = np.tanh(x64 @ w64)
    p = np.exp(t - t.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(3)[labels]
    want_loss = -np.log(p[[0, 1], labels]).mean()
    gz = (p - onehot) / 2 * (1 - t * t)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(backend.to_numpy(x.grad.data), gz @ w64.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(w.grad.data), x64.T @ gz, rtol=1e-5, atol=1e-6)
