"""minidl.io: safetensors save/load, and PyTorch's weights in the bundled minidl models."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl
from minidl import nn
from minidl.io import load_safetensors, load_torch_state_dict, save_safetensors
from minidl.models import airbench94, seed_cnn

pytest.importorskip("safetensors", reason="pip install 'minidl[safetensors]'")

ROOT = Path(__file__).resolve().parent.parent


def _bn_model() -> nn.Sequential:
    minidl.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 4 * 4, 2))
    m.train()
    m(minidl.randn(2, 3, 6, 6))  # move the running statistics off their defaults
    return m


def test_roundtrip_keeps_every_entry_exactly(tmp_path):
    model = _bn_model()
    path = tmp_path / "w.safetensors"
    save_safetensors(model, path, metadata={"arch": "test"})
    loaded = load_safetensors(path)
    state = model.state_dict()
    assert sorted(loaded) == sorted(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
        assert np.array_equal(loaded[k], v.numpy()), k
    fresh = _bn_model()
    for p in fresh.parameters():
        p.data[...] = 0
    fresh.load_state_dict(loaded)
    x = minidl.randn(3, 3, 6, 6)
    model.eval()
    fresh.eval()
    assert np.array_equal(model(x).detach().numpy(), fresh(x).detach().numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left


def test_a_file_that_is_not_safetensors_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match=r"bad\.safetensors is not a valid safetensors file"):
        load_safetensors(bad)
    with pytest.raises(TypeError, match="save_safetensors: 'x' is a str, not an array"):
        save_safetensors({"x": "text"}, tmp_path / "y.safetensors")


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("safetensors"):
            raise ImportError("No module named 'safetensors'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match=r"pip install 'minidl\[safetensors\]'"):
        save_safetensors(nn.Linear(2, 2), tmp_path / "z.safetensors")


def _torch():
    return pytest.importorskip("torch", reason="PyTorch not installed (optional oracle)")


def test_pytorch_seed_cnn_weights_give_pytorchs_outputs(tmp_path):
    torch = _torch()
    from safetensors.torch import save_file

    tnn = torch.nn
    torch.manual_seed(0)
    ref = tnn.Sequential(tnn.Conv2d(3, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Conv2d(32, 64, 3), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                         tnn.Linear(2304, 128), tnn.ReLU(), tnn.Linear(128, 10))
    path = tmp_path / "seed_cnn.safetensors"
    save_file(ref.state_dict(), str(path))  # sorted by name in the file
    model = seed_cnn()
    pairing = load_torch_state_dict(model, load_safetensors(path),
                                    order=list(ref.state_dict()))
    assert pairing["2.weight"] == "3.weight" and pairing["7.bias"] == "9.bias"
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    ours = model(minidl.tensor(x)).detach().numpy()
    theirs = ref(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(ours, theirs, atol=1e-5), np.abs(ours - theirs).max()


def test_pytorch_airbench94_port_weights_give_its_outputs():
    torch = _torch()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        port = importlib.import_module("airbench94_torch")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    torch.manual_seed(0)
    ref = port.make_net().eval()
    with torch.no_grad():  # non-default running statistics, so that buffers are checked too
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model = airbench94()
    load_torch_state_dict(model, ref.state_dict())
    model.eval()
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    ours = model(minidl.tensor(x)).detach().numpy()
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
    assert np.allclose(ours, theirs.numpy(), atol=1e-4), np.abs(ours - theirs.numpy()).max()


def test_a_different_architecture_is_named_at_its_first_difference():
    torch = _torch()
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"minidl's '1.weight' \(2, 8\) pairs with "
                                         r"PyTorch's '1.weight' \(3, 8\)"):
        load_torch_state_dict(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)),
                              ref.state_dict())
    with pytest.raises(ValueError, match="has 2 entries and the PyTorch weights 4"):
        load_torch_state_dict(nn.Sequential(nn.Linear(4, 8, bias=False),
                                            nn.Linear(8, 3, bias=False)), ref.state_dict())
