"""minidl.save / minidl.load: round trips of model and optimizer state, nested values,
no pickle, atomic writes and clear errors for bad files."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import minidl
import minidl.nn as nn
from minidl.optim import Adam
from minidl.optim.lr_scheduler import StepLR
from minidl.serialization import load, save


def _model():
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(5, 2))


def _steps(model, opt, n, seed):
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(n):
        x = minidl.tensor(rng.standard_normal((6, 3)).astype(np.float32))
        y = minidl.tensor(rng.integers(0, 2, 6))
        opt.zero_grad()
        nn.functional.softmax_cross_entropy(model(x), y).backward()
        opt.step()


def test_nested_round_trip(tmp_path) -> None:
    obj = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([1, 2], np.int64),
        "epoch": 3, "lr": 0.1, "name": "run/1", "flag": True, "none": None,
        "history": {"loss": [1.5, 1.2], "acc": (0.5, 0.6)},
        "list": [np.zeros(2), {"deep": np.ones((1,), np.float16)}],
        7: "int key", "scalar": np.float32(2.5), "t": minidl.tensor([1.0, 2.0]),
    }
    path = tmp_path / "ckpt.npz"
    save(obj, path)
    got = load(path)
    assert list(got) == list(obj)
    np.testing.assert_array_equal(got["a"], obj["a"])
    assert got["a"].dtype == np.float32 and got["i"].dtype == np.int64
    assert got["epoch"] == 3 and got["lr"] == 0.1 and got["name"] == "run/1"
    assert got["flag"] is True and got["none"] is None
    assert got["history"] == {"loss": [1.5, 1.2], "acc": (0.5, 0.6)}
    assert got["list"][1]["deep"].dtype == np.float16
    assert got[7] == "int key"
    assert got["scalar"] == np.float32(2.5) and got["scalar"].dtype == np.float32
    assert isinstance(got["t"], np.ndarray) and got["t"].tolist() == [1.0, 2.0]
    # readable with plain NumPy and no pickle; arrays named by their key paths
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"a", "i", "list/0", "list/1/deep", "t", "__minidl__.json"}


def test_model_and_optimizer_round_trip_identical(tmp_path) -> None:
    minidl.manual_seed(0)
    model = _model()
    opt = Adam(model.named_parameters(), lr=0.01)
    sched = StepLR(opt, 2)
    _steps(model, opt, 3, seed=1)
    sched.step()
    weights_before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    save({"model": model.state_dict(), "optimizer": opt.state_dict(),
          "scheduler": sched.state_dict(), "epoch": 3,
          "rng": minidl.random.get_rng_state()}, tmp_path / "c.npz")
    for k, v in model.state_dict().items():  # saving changed nothing
        np.testing.assert_array_equal(v.numpy(), weights_before[k])

    ckpt = load(tmp_path / "c.npz")
    minidl.manual_seed(99)
    model2 = _model()
    opt2 = Adam(model2.named_parameters(), lr=0.01)
    sched2 = StepLR(opt2, 2)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["scheduler"])
    assert ckpt["epoch"] == 3

    x = minidl.randn(4, 3)
    model.eval(), model2.eval()
    np.testing.assert_array_equal(model(x).detach().numpy(), model2(x).detach().numpy())
    minidl.random.set_rng_state(ckpt["rng"])
    _steps(model, opt, 3, seed=2)
    minidl.random.set_rng_state(ckpt["rng"])
    _steps(model2, opt2, 3, seed=2)
    for (k, p), q in zip(model.state_dict().items(), model2.state_dict().values()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=k)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_no_pickle_member_and_json_metadata(tmp_path) -> None:
    save({"w": np.ones(2)}, tmp_path / "x.npz")
    with zipfile.ZipFile(tmp_path / "x.npz") as zf:
        names = zf.namelist()
        meta = json.loads(zf.read("__minidl__.json"))
    assert "w.npy" in names and meta["format"] == "minidl-checkpoint"


def test_path_is_used_as_given_and_atomic(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    save({"a": 1}, path)
    assert path.exists() and not (tmp_path / "model.ckpt.npz").exists()
    save({"a": 2}, str(path))  # overwrite
    assert load(path) == {"a": 2}
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]  # no temp files left behind
    with pytest.raises(TypeError):
        save({"bad": object()}, path)
    assert load(path) == {"a": 2}  # a failed save leaves the old file intact
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]


def test_unsupported_types_name_the_key_path(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"save: cannot save an object of type set at key path "
                                        r"'model/layers/1'"):
        save({"model": {"layers": [1, {2}]}}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="dtype object"):
        save({"o": np.array([None, 1], dtype=object)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="dict key"):
        save({(1, 2): 3}, tmp_path / "x.npz")


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="load: no such file"):
        load(tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not a minidl checkpoint"):
        load(tmp_path / "plain.npz")
    np.save(tmp_path / "arr.npy", np.ones(2))
    with pytest.raises(ValueError, match="not a minidl checkpoint"):
        load(tmp_path / "arr.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load(tmp_path / "text.npz")


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9, 0.99])
def test_truncated_or_corrupted_file(tmp_path, cut) -> None:
    path = tmp_path / "c.npz"
    save({"w": np.arange(1000.0), "b": np.ones(10), "epoch": 1}, path)
    data = path.read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ValueError, match=r"load: cannot read .*t\.npz"):
        load(tmp_path / "t.npz")
    corrupted = bytearray(data)
    corrupted[200:260] = b"\xff" * 60  # inside the first array's data
    (tmp_path / "x.npz").write_bytes(bytes(corrupted))
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load(tmp_path / "x.npz")


def test_saved_files_get_ordinary_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the final file must not stay private."""
    import os

    from minidl import save

    old = os.umask(0o022)
    try:
        save({"a": np.ones(2)}, tmp_path / "c.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o644
