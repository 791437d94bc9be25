"""Device behaviour of modules, optimizers and checkpoints (CPU, and CUDA when present):
moving keeps Parameter objects, an optimizer built before the move keeps working, saving
never moves the model and loading never changes its device."""

from __future__ import annotations

import numpy as np

import minidl
import minidl.nn as nn
from minidl.optim import SGD, Adam
from minidl.serialization import load, save


def _net():
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(6, 3))


def _step(model, opt, device, seed):
    rng = np.random.default_rng(seed)
    x = minidl.tensor(rng.standard_normal((5, 4)).astype(np.float32), device=device)
    y = minidl.tensor(rng.integers(0, 3, 5), device=device)
    opt.zero_grad()
    loss = nn.functional.softmax_cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def test_optimizer_built_before_move(device) -> None:
    model = _net()
    opt = Adam(model.named_parameters(), lr=1e-2)
    params = list(model.parameters())
    _step(model, opt, "cpu", 0)  # state is created on the CPU ...
    model.to(device)  # ... then the model moves
    assert all(p is q for p, q in zip(params, model.parameters()))
    assert all(p.device == device for p in model.parameters())
    assert all(b.device == device for b in model.buffers())
    _step(model, opt, device, 1)
    for st in opt.state.values():
        assert minidl.backend.device_of(st["exp_avg"]) == device
        assert st["exp_avg"].dtype == np.float32
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32 for p in model.parameters())


def test_save_load_keeps_devices(device, tmp_path) -> None:
    minidl.manual_seed(0)
    model = _net().to(device)
    opt = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    _step(model, opt, device, 0)
    save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "c.npz")
    assert all(p.device == device for p in model.parameters())  # saving moved nothing
    ckpt = load(tmp_path / "c.npz")
    assert all(isinstance(v, np.ndarray) for v in ckpt["model"].values())

    minidl.manual_seed(1)
    model2 = _net().to(device)
    opt2 = SGD(model2.named_parameters(), lr=0.1, momentum=0.9)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert all(p.device == device for p in model2.parameters())
    assert all(minidl.backend.device_of(s["momentum_buffer"]) == device
               for s in opt2.state.values())
    minidl.manual_seed(5)
    a = _step(model, opt, device, 3)
    minidl.manual_seed(5)
    b = _step(model2, opt2, device, 3)
    assert a == b
