"""minidl.save / minidl.load: round trips of model and optimizer state, nested values,
no pickle, atomic writes and clear errors for bad files."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import warnings
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
    with pytest.raises(ValueError, match="is a directory"):
        load(tmp_path)
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


# ------------------------------------------------------------------------ crafted files
# Each file below is a well-formed zip (valid CRCs, written by zipfile) that minidl.save
# could not have written; load must refuse it with a ValueError naming the file and the
# problem, before allocating anything large.


def _meta(tree, **fields):
    return {"format": "minidl-checkpoint", "version": 1, "tree": tree, **fields}


def _npy(arr=None, *, shape=None, descr="<f8", fortran=False, data=b"") -> bytes:
    buf = io.BytesIO()
    if arr is not None:
        np.lib.format.write_array(buf, arr, allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(
            buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
        buf.write(data)
    return buf.getvalue()


def _craft(path, meta, members=(), method=zipfile.ZIP_STORED):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns on duplicate names
        with zipfile.ZipFile(path, "w", method) as zf:
            zf.writestr("__minidl__.json", meta if isinstance(meta, (str, bytes))
                        else json.dumps(meta))
            for name, data in members:
                zf.writestr(name, data)
    return path


_W = [("w.npy", _npy(np.arange(3.0)))]
_REF = {"__array__": "w"}
_CRAFTED = {
    # member names and sizes
    "raw bytes member": (_meta({"__array__": "w"}), [("w", b"raw bytes, not an array")],
                         r"unexpected member 'w': a checkpoint holds __minidl__\.json and "
                         r"\.npy members only"),
    "missing member": (_meta({"__array__": "nope"}), _W,
                       r"key path '<root>' refers to member 'nope\.npy', which the file "
                       "does not hold"),
    "unreferenced member": (_meta({"__dict__": [["w", _REF]]}),
                            [*_W, ("x.npy", _npy(np.ones(2)))],
                            r"unexpected member 'x\.npy': no array in the metadata refers"),
    "extra text member": (_meta(_REF), [*_W, ("notes.txt", b"hi")],
                          r"unexpected member 'notes\.txt'"),
    "duplicate member": (_meta(_REF), [*_W, *_W], r"member 'w\.npy' appears 2 times"),
    "member referred twice": (_meta({"__list__": [_REF, _REF]}), _W,
                              r"'w\.npy' is referred to twice \(key paths '0' and '1'\)"),
    # .npy headers
    "lying npy header": (_meta(_REF), [("w.npy", _npy(shape=(10**12,), data=b"\0" * 16))],
                         r"member 'w\.npy' \(key path '<root>'\): its \.npy header says shape "
                         r"\(1000000000000,\) of float64 \(8000000000000 bytes\) but the "
                         r"member holds 16 bytes"),
    "short npy data": (_meta(_REF), [("w.npy", _npy(shape=(3,), data=b"\0" * 23))],
                       r"\(24 bytes\) but the member holds 23 bytes"),
    "object npy": (_meta(_REF), [("w.npy", _npy(shape=(1,), descr="|O", data=b"\0" * 8))],
                   r"member 'w\.npy' \(key path '<root>'\) has dtype object"),
    "negative npy shape": (_meta(_REF), [("w.npy", _npy(shape=(-1, 2), data=b""))],
                           r"invalid shape \(-1, 2\)"),
    "bad npy magic": (_meta(_REF), [("w.npy", b"NOTNUMPY" + b"\0" * 64)],
                      r"member 'w\.npy' \(key path '<root>'\) is corrupted or truncated"),
    "bad fortran flag": (_meta(_REF), [("w.npy", _npy(shape=(1,), fortran="yes",
                                                      data=b"\0" * 8))],
                         r"member 'w\.npy' .* is corrupted or truncated .*fortran_order"),
    # metadata fields
    "meta not utf-8": (b"\xff\xfe{}", [], r"__minidl__\.json' is not UTF-8"),
    "meta not json": ("{'format': 1", [], r"__minidl__\.json' is not valid JSON"),
    "version is a string": (_meta(1, version="1"), [],
                            r"has version '1' \(str\); expected an integer"),
    "version is a bool": (_meta(1, version=True), [], r"has version True \(bool\)"),
    "version zero": (_meta(1, version=0), [], r"has version 0; versions start at 1"),
    "newer version": (_meta(1, version=7), [], r"written by a newer minidl \(format version 7"),
    "no version": ({"format": "minidl-checkpoint", "tree": 1}, [], r"has no 'version' field"),
    "no tree": ({"format": "minidl-checkpoint", "version": 1}, [], r"has no 'tree' field"),
    "extra field": (_meta(1, code="x"), [], r"unexpected fields \['code'\]"),
    # tree nodes
    "bare json list": (_meta({"__list__": [[1, 2]]}), [],
                       r"metadata at key path '0' is a JSON array; expected a value"),
    "dict items not a list": (_meta({"__dict__": 5}), [],
                              r"__dict__ node at key path '<root>' holds a JSON int"),
    "dict entry not a pair": (_meta({"__dict__": [["a", 1, 2]]}), [], r"not a \[key, value\]"),
    "dict key is a list": (_meta({"__dict__": [[["a"], 1]]}), [],
                           r"a key of the dict at key path '<root>' is a JSON array"),
    "dict key twice": (_meta({"__dict__": [["a", 1], ["a", 2]]}), [], r"has key 'a' twice"),
    "array name not a string": (_meta({"__dict__": [["m", {"__array__": 5}]]}), [],
                                r"array reference at key path 'm' is a JSON int"),
    "unknown node": (_meta({"__code__": "x"}), [], r"unknown node with keys \['__code__'\]"),
    "array node with extra key": (_meta({"__array__": "w", "x": 1}), _W,
                                  r"unknown node with keys \['__array__', 'x'\]"),
    "scalar value a string": (_meta({"__scalar__": "1", "dtype": "<f4"}), [],
                              r"scalar at key path '<root>' is invalid: its value is a JSON "
                              r"string"),
    "scalar object dtype": (_meta({"__scalar__": 1, "dtype": "|O"}), [],
                            r"dtype '\|O' is not a bool, integer or float dtype"),
    "scalar bad dtype": (_meta({"__scalar__": 1, "dtype": "nonsense"}), [],
                         r"dtype 'nonsense' is not a NumPy dtype"),
    "scalar dtype not str": (_meta({"__scalar__": 1, "dtype": ["<f4"]}), [],
                             r"its dtype is a JSON array"),
    "scalar out of range": (_meta({"__scalar__": 300, "dtype": "|u1"}), [],
                            r"value 300 does not fit dtype '\|u1'"),
    "deep json": ('{"format": "minidl-checkpoint", "version": 1, "tree": '
                  + "[" * 100_000 + "]" * 100_000 + "}", [],
                  r"nests 100001 levels deep; a checkpoint holds at most 100 nested"),
    "deep tree": (_meta(json.loads('{"__list__": [' * 150 + "1" + "]}" * 150)), [],
                  r"key path '0(/0)*' is nested more than 100 containers deep"),
}


@pytest.mark.parametrize("case", sorted(_CRAFTED))
def test_crafted_checkpoint_gives_value_error_naming_file_and_problem(tmp_path, case) -> None:
    meta, members, problem = _CRAFTED[case]
    path = _craft(tmp_path / "crafted.npz", meta, members)
    with pytest.raises(ValueError) as info:
        load(path)
    assert type(info.value) is ValueError
    msg = str(info.value)
    assert msg.startswith(f"load: cannot read {str(path)!r}: "), msg
    assert re.search(problem, msg), msg


def test_not_a_minidl_zip_or_format(tmp_path) -> None:
    for meta, why in [([1, 2], r"holds a JSON array, not an object"),
                      (_meta(1, format=5), r"has format 5, not 'minidl-checkpoint'"),
                      ({"tree": 1}, r"has format None")]:
        path = _craft(tmp_path / "m.npz", meta)
        with pytest.raises(ValueError, match=f"load: {re.escape(repr(str(path)))} is not a "
                                             f"minidl checkpoint .*{why}"):
            load(path)
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match=r"random\.npz'.*not a zip \(\.npz\) archive"):
        load(tmp_path / "random.npz")


def test_compressed_member_is_refused_before_expanding(tmp_path) -> None:
    """A zip-bomb-ish member: 4 MB of zeros deflated to a few KB."""
    member = _npy(np.zeros(2**19))
    path = _craft(tmp_path / "bomb.npz", _meta(_REF), [("w.npy", member)],
                  method=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 20_000
    with pytest.raises(ValueError, match=r"bomb\.npz': member '__minidl__\.json' is compressed "
                                         r"\(zip method 8, .*load refuses compressed ones"):
        load(path)


def test_sizes_claimed_past_the_end_of_the_file(tmp_path) -> None:
    path = tmp_path / "c.npz"
    save({"w": np.arange(100.0)}, path)
    data = bytearray(path.read_bytes())
    # Patch the central directory's stored and claimed sizes of w.npy to 2 GB (valid CRC).
    entry = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)
    assert data[entry + 46: entry + 51] == b"w.npy"
    data[entry + 20: entry + 28] = struct.pack("<II", 2**31, 2**31)
    (tmp_path / "big.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"big\.npz': member 'w\.npy' claims 2147483648 "
                                         r"bytes at offset \d+, past the end of the \d+-byte"):
        load(tmp_path / "big.npz")


def test_save_refuses_cycles_deep_nests_and_non_json_scalars(tmp_path) -> None:
    cyclic: dict = {}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError, match=r"key path 'self(/self)*' is nested more than 100 "
                                         r"containers deep \(does a dict or list contain "):
        save(cyclic, tmp_path / "x.npz")
    deepest: object = 1
    for _ in range(100):
        deepest = [deepest]
    save(deepest, tmp_path / "ok.npz")  # exactly the limit: saved and loaded
    assert load(tmp_path / "ok.npz") == deepest
    with pytest.raises(ValueError, match="nested more than 100"):
        save([deepest], tmp_path / "x.npz")
    for value in (np.complex64(1 + 2j), np.datetime64("2020-01-01")):
        with pytest.raises(TypeError, match=rf"type {type(value).__name__} at key path 'a/s'"):
            save({"a": {"s": value}}, tmp_path / "x.npz")
    assert sorted(os.listdir(tmp_path)) == ["ok.npz"]


def test_deepest_dict_nest_round_trips(tmp_path) -> None:
    tree: object = {"leaf": np.float32(1.5), "arr": np.ones(2)}
    for i in range(99):
        tree = {i: tree}
    save(tree, tmp_path / "d.npz")
    got = load(tmp_path / "d.npz")
    for i in reversed(range(99)):
        got = got[i]
    assert got["leaf"] == np.float32(1.5) and got["arr"].tolist() == [1.0, 1.0]


def test_loaded_arrays_are_like_np_load(tmp_path) -> None:
    arrays = {"f": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
              "be": np.arange(5, dtype=">i4"), "empty": np.zeros((0, 3), np.float16),
              "0d": np.array(2.5), "rec": np.array([(1, 2.0)], [("a", "<i2"), ("b", "<f8")]),
              "bool": np.array([True, False]), "t": np.array(["2020-01-01"], "M8[D]")}
    save(arrays, tmp_path / "a.npz")
    got = load(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz", allow_pickle=False) as ref:
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            np.testing.assert_array_equal(got[k], v)
            np.testing.assert_array_equal(got[k], ref[k])
            assert got[k].flags.writeable and got[k].flags.owndata, k
            assert got[k].flags.f_contiguous == ref[k].flags.f_contiguous, k
