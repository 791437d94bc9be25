"""Dataset readers: CIFAR-10 in both official formats (folder and .tar.gz), the restricted
unpickler, IDX files (MNIST / Fashion-MNIST), and clear errors for missing or corrupt files."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minidl.data import (
    CIFAR10,
    CIFAR10_CLASSES,
    DataFormatError,
    DatasetNotFoundError,
    FashionMNIST,
    default_data_root,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    safe_unpickle,
)

FORMATS = ["python", "binary"]


# ------------------------------------------------------------------------- CIFAR-10 happy


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("source", ["folder", "parent", "archive"])
def test_cifar10_loads_both_formats_from_folder_and_archive(cifar, tmp_path, fmt, source):
    if source == "archive":
        root = cifar.write_archive(tmp_path, fmt).parent
    else:
        folder = cifar.write_folder(tmp_path, fmt)
        root = folder if source == "folder" else tmp_path
    for train, (x_ref, y_ref) in ((True, cifar.train), (False, cifar.test)):
        x, y = load_cifar10(root, train=train)
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert x.shape == x_ref.shape and x.flags.c_contiguous and x.flags.writeable
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
    if source == "archive":  # read in place: nothing extracted next to the archive
        assert [p.name for p in root.iterdir()] == [_archive_name(fmt)]


def _archive_name(fmt: str) -> str:
    return "cifar-10-binary.tar.gz" if fmt == "binary" else "cifar-10-python.tar.gz"


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar10_python_any_pickle_protocol(cifar, tmp_path, protocol):
    cifar.write_folder(tmp_path, "python", protocol=protocol)
    x, y = load_cifar10(tmp_path, train=False)
    np.testing.assert_array_equal(x, cifar.test[0])
    np.testing.assert_array_equal(y, cifar.test[1])


def test_cifar10_nhwc_layout(cifar, tmp_path):
    cifar.write_folder(tmp_path, "binary")
    x, _ = load_cifar10(tmp_path, train=False, layout="NHWC")
    assert x.shape == (len(cifar.test[0]), 32, 32, 3) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, cifar.test[0].transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="layout"):
        load_cifar10(tmp_path, layout="CHW")


@pytest.mark.parametrize("fmt", FORMATS)
def test_cifar10_dataset_class_reads_class_names_from_meta(tmp_path, fmt, cifar_factory):
    names = [f"c{i}" for i in range(10)]
    cifar_factory(classes=names).write_folder(tmp_path, fmt)
    ds = CIFAR10(tmp_path, train=True)
    assert ds.classes == tuple(names)
    assert len(ds) == 30 and ds[3][0].shape == (3, 32, 32)
    assert isinstance(ds[3][1], np.int64)


def test_cifar10_format_choice(cifar, tmp_path):
    cifar.write_folder(tmp_path, "binary")
    with pytest.raises(DatasetNotFoundError):
        load_cifar10(tmp_path, format="python")
    assert load_cifar10(tmp_path, format="binary", train=False)[0].shape[0] == 5
    with pytest.raises(ValueError, match="format"):
        load_cifar10(tmp_path, format="png")


def test_cifar10_root_from_environment(cifar, tmp_path, clean_env, monkeypatch):
    folder = cifar.write_folder(tmp_path / "somewhere", "binary")
    monkeypatch.setenv("MINIDL_CIFAR10_DIR", str(folder))
    assert load_cifar10(train=False)[0].shape[0] == 5
    monkeypatch.delenv("MINIDL_CIFAR10_DIR")
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "somewhere"))
    assert default_data_root() == tmp_path / "somewhere"
    assert load_cifar10(train=False)[0].shape[0] == 5


def test_default_root_respects_xdg(clean_env, monkeypatch):
    assert default_data_root() == clean_env
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_root() == Path.home() / ".cache" / "minidl"


# ------------------------------------------------------------------------- missing data


def test_cifar10_missing_names_directory_and_fix(tmp_path, clean_env):
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path / "empty")
    msg = str(info.value)
    assert str(tmp_path / "empty") in msg
    assert "download=True" in msg and "cifar-10-batches-py" in msg and "data_batch_1" in msg
    with pytest.raises(DatasetNotFoundError, match=str(clean_env)):
        load_cifar10()


def test_cifar10_missing_one_batch_is_named(cifar, tmp_path):
    folder = cifar.write_folder(tmp_path, "binary")
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4.bin"):
        load_cifar10(tmp_path)
    assert load_cifar10(tmp_path, train=False)[0].shape[0] == 5  # test split still fine


# ------------------------------------------------------------------------- corrupt data


def test_cifar10_binary_truncated(cifar, tmp_path):
    folder = cifar.write_folder(tmp_path, "binary")
    f = folder / "data_batch_2.bin"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"data_batch_2\.bin.*3073-byte records"):
        load_cifar10(tmp_path)


def test_cifar10_binary_empty_file(cifar, tmp_path):
    folder = cifar.write_folder(tmp_path, "binary")
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DataFormatError, match="test_batch.bin"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_binary_label_out_of_range(cifar, tmp_path):
    folder = cifar.write_folder(tmp_path, "binary")
    data = bytearray((folder / "test_batch.bin").read_bytes())
    data[3073 * 2] = 200
    (folder / "test_batch.bin").write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"test_batch\.bin.*record 2.*200.*0\.\.9"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_python_truncated_pickle(cifar, tmp_path):
    folder = cifar.write_folder(tmp_path, "python")
    f = folder / "test_batch"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(DataFormatError, match="test_batch"):
        load_cifar10(tmp_path, train=False)


@pytest.mark.parametrize("bad", [
    {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
    {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
    {b"data": np.zeros((2, 3072), np.uint8)},
    [1, 2, 3],
])
def test_cifar10_python_wrong_content(cifar, tmp_path, bad):
    folder = cifar.write_folder(tmp_path, "python")
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataFormatError, match="test_batch"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_bad_meta(cifar, tmp_path):
    folder = cifar.write_folder(tmp_path, "binary")
    (folder / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DataFormatError, match=r"batches\.meta\.txt.*10 class names"):
        load_cifar10(tmp_path, train=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cifar10_truncated_archive(cifar, tmp_path, fmt):
    path = cifar.write_archive(tmp_path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=path.name):
        load_cifar10(tmp_path, format=fmt)


# ------------------------------------------------------------------------- safe unpickling


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_restricted_unpickler_refuses_os_system(tmp_path, cifar):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(DataFormatError, match=r"refusing.*system"):
        safe_unpickle(payload, "evil.pkl")
    assert not marker.exists()
    # The same file in place of a CIFAR batch: refused, names the file, runs nothing.
    folder = cifar.write_folder(tmp_path / "c", "python")
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DataFormatError, match="test_batch"):
        load_cifar10(folder, train=False)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [_EvalEvil(), io.BytesIO, np.load])
def test_restricted_unpickler_refuses_other_globals(obj):
    with pytest.raises(DataFormatError, match="refusing"):
        safe_unpickle(pickle.dumps(obj), "x")


def test_restricted_unpickler_refuses_other_codecs():
    # _codecs.encode is admitted for latin1 only (how protocol-2 pickles store bytes).
    evil = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(DataFormatError, match="codec"):
        safe_unpickle(evil)


def test_restricted_unpickler_reads_arrays_and_containers():
    obj = {b"k": [1, 2.5, "s", b"b", (None, True)], "a": np.arange(6, dtype=np.int16).reshape(2, 3)}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        out = safe_unpickle(pickle.dumps(obj, protocol=protocol))
        assert out[b"k"] == obj[b"k"]
        np.testing.assert_array_equal(out["a"], obj["a"])
        assert out["a"].dtype == np.int16



# Hand-assembled pickles: each names a dangerous global with GLOBAL (protocol 0-3 style) or
# STACK_GLOBAL (protocol 4+) and calls it with REDUCE, so no Python object ever had to exist
# for them. If executed, most would create the marker file; none may run.
_PROTO2, _PROTO4, _MARK, _TUPLE, _REDUCE, _BUILD, _STOP = b"\x80\x02", b"\x80\x04", b"(", b"t", \
    b"R", b"b", b"."


def _u(text: str) -> bytes:  # BINUNICODE
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _glob(module: str, name: str, stack: bool = False) -> bytes:
    if stack:
        return _u(module) + _u(name) + b"\x93"  # STACK_GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _call(func: bytes, *args: bytes) -> bytes:
    return func + _MARK + b"".join(args) + _TUPLE + _REDUCE


def _evil_pickles(marker: Path) -> dict[str, bytes]:
    touch = f"touch {marker}"
    py = f"open({str(marker)!r}, 'w')"
    encode = _glob("_codecs", "encode")
    return {
        "builtins.getattr": _call(_glob("builtins", "getattr"), encode, _u("__globals__")),
        "builtins.__import__": _call(_glob("builtins", "__import__"), _u("os")),
        "builtins.eval": _call(_glob("builtins", "eval"), _u(py)),
        "builtins.exec": _call(_glob("builtins", "exec"), _u(py)),
        "__builtin__.eval": _call(_glob("__builtin__", "eval"), _u(py)),  # Python 2 name
        "operator.attrgetter": _call(_call(_glob("operator", "attrgetter"), _u("system")),
                                     _call(_glob("builtins", "__import__"), _u("os"))),
        "operator.methodcaller": _call(_glob("operator", "methodcaller"), _u("system"),
                                       _u(touch)),
        "os.system": _call(_glob("os", "system"), _u(touch)),
        "posix.system": _call(_glob("posix", "system"), _u(touch)),
        "nt.system": _call(_glob("nt", "system"), _u(touch)),
        "subprocess.Popen": _call(_glob("subprocess", "Popen"),
                                  _MARK + _u("touch") + _u(str(marker)) + b"l"),  # LIST
        "_codecs.encode.__globals__": _glob("_codecs", "encode.__globals__"),
        "_codecs.encode.__globals__ (STACK_GLOBAL)": _glob("_codecs", "encode.__globals__",
                                                           stack=True),
        "numpy.core.multiarray._reconstruct.__globals__": _glob(
            "numpy.core.multiarray", "_reconstruct.__globals__", stack=True),
        "numpy.load (STACK_GLOBAL)": _call(_glob("numpy", "load", stack=True), _u("x.npy")),
        "numpy.core.multiarray (via numpy)": _glob("numpy", "core.multiarray._reconstruct"),
        "numpy.ndarray.__reduce_ex__": _glob("numpy", "ndarray.__reduce_ex__", stack=True),
    }


def test_restricted_unpickler_allow_list_is_exactly_this() -> None:
    from minidl.data import datasets

    assert set(datasets._SAFE_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }
    assert datasets._SAFE_GLOBALS["numpy", "ndarray"] is np.ndarray
    assert datasets._SAFE_GLOBALS["numpy", "dtype"] is np.dtype
    for key in [("numpy._core.multiarray", "_reconstruct"), ("numpy._core.numeric", "_frombuffer"),
                ("_codecs", "encode")]:  # functions go in wrapped, never as themselves
        assert type(datasets._SAFE_GLOBALS[key]) is datasets._Admitted, key


@pytest.mark.parametrize("protocol", [_PROTO2, _PROTO4], ids=["proto2", "proto4"])
@pytest.mark.parametrize("case", sorted(_evil_pickles(Path("m"))))
def test_restricted_unpickler_refuses_dangerous_globals(tmp_path, case, protocol):
    marker = tmp_path / "pwned"
    payload = protocol + _evil_pickles(marker)[case] + _STOP
    refused = case.split(" ")[0]
    with pytest.raises(DataFormatError, match=r"evil\.pkl: restricted unpickler: refusing to "
                                              rf"load global {refused.split('.')[0]}\.") as info:
        safe_unpickle(payload, "evil.pkl")
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_restricted_unpickler_refuses_before_running_anything(tmp_path):
    # A legitimate array first, then the call: nothing at all may run.
    marker = tmp_path / "pwned"
    array = pickle.dumps(np.arange(3), protocol=2)[2:-1]
    payload = (_PROTO2 + _MARK + array + _call(_glob("os", "system"), _u(f"touch {marker}"))
               + b"l" + _STOP)
    with pytest.raises(DataFormatError, match="refusing to load global os.system"):
        safe_unpickle(payload)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("numpy._core.numeric", "_frombuffer"),
                                         ("numpy.core.multiarray", "_reconstruct"),
                                         ("_codecs", "encode")])
@pytest.mark.parametrize("state", [
    b"}" + _u("pwned") + b"K\x01s",  # BUILD with a dict: into the object's __dict__
    b"N}" + _u("__defaults__") + _MARK + b"K\x01K\x00t" + b"s\x86",  # (None, slots): setattr
], ids=["dict-state", "slot-state"])
def test_restricted_unpickler_cannot_modify_admitted_functions(module, name, state):
    """BUILD on an admitted global would otherwise rewrite numpy's own function for the
    whole process (e.g. _frombuffer's axis_order default)."""
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer

    defaults = _frombuffer.__defaults__
    with pytest.raises(DataFormatError, match="restricted unpickler"):
        safe_unpickle(_PROTO2 + _glob(module, name) + state + _BUILD + _STOP)
    assert _frombuffer.__defaults__ == defaults and not hasattr(_frombuffer, "pwned")
    assert not hasattr(_reconstruct, "pwned")
    np.testing.assert_array_equal(  # arrays still come back right
        safe_unpickle(pickle.dumps(np.arange(6).reshape(2, 3).T, protocol=5)),
        np.arange(6).reshape(2, 3).T)


@pytest.mark.parametrize("name", ["ndarray", "dtype"])
def test_restricted_unpickler_cannot_modify_admitted_classes(name):
    with pytest.raises(DataFormatError):
        safe_unpickle(_PROTO2 + _glob("numpy", name) + b"N}" + _u("pwned") + b"K\x01s\x86"
                      + _BUILD + _STOP)
    assert not hasattr(getattr(np, name), "pwned")


# ------------------------------------------------------------------------- IDX


def _idx(arr: np.ndarray) -> bytes:
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}
    code = codes[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_idx_set(folder: Path, n_train: int = 7, n_test: int = 3, gz: bool = False,
                   seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for train, n in ((True, n_train), (False, n_test)):
        prefix = "train" if train else "t10k"
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            data = _idx(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[train] = (x, y)
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_dtypes_raw_and_gz(tmp_path, dtype, gz):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = _idx(arr)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: b"\x01" + d[1:], "bad magic"),
    (lambda d: d[:2] + b"\x07" + d[3:], "bad magic"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\x00", "truncated"),
    (lambda d: d[:2], "too short"),
    (lambda d: d[:6], "header"),
])
def test_read_idx_corrupt(tmp_path, mutate, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(mutate(_idx(np.zeros((2, 3), np.uint8))))
    with pytest.raises(DataFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    data = gzip.compress(_idx(np.zeros((50, 28, 28), np.uint8)))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="gzip"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_and_fashion_mnist(tmp_path, clean_env, gz):
    ref = _write_idx_set(tmp_path / "fashion-mnist", gz=gz)
    for train in (True, False):
        x, y = load_fashion_mnist(tmp_path, train=train)  # found in root/fashion-mnist
        assert x.shape == (len(ref[train][0]), 1, 28, 28) and x.dtype == np.uint8
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 0], ref[train][0])
        np.testing.assert_array_equal(y, ref[train][1])
    ref = _write_idx_set(clean_env / "mnist", gz=gz, seed=1)  # default cache location
    x, y = load_mnist(train=False)
    np.testing.assert_array_equal(x[:, 0], ref[False][0])
    ds = FashionMNIST(tmp_path / "fashion-mnist")
    assert len(ds) == 7 and ds.classes[0] == "T-shirt/top"


def test_idx_dataset_errors(tmp_path, clean_env):
    with pytest.raises(DatasetNotFoundError, match="MINIDL_MNIST"):
        load_mnist(tmp_path / "none")
    folder = tmp_path / "m"
    _write_idx_set(folder)
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(5, np.uint8)))
    with pytest.raises(DataFormatError, match="train-labels-idx1-ubyte.*7 images"):
        load_mnist(folder)
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx(np.full(7, 12, np.uint8)))
    with pytest.raises(DataFormatError, match="out of range"):
        load_mnist(folder)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="train-labels-idx1-ubyte"):
        load_mnist(folder)
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((3, 28, 27), np.uint8)))
    with pytest.raises(DataFormatError, match=r"\(N, 28, 28\)"):
        load_mnist(folder, train=False)


# ------------------------------------------------------------------------- real data


def test_real_cifar10_when_available():
    folder = os.environ.get("MINIDL_CIFAR10_DIR")
    if not folder:
        pytest.skip("set MINIDL_CIFAR10_DIR to a CIFAR-10 folder (e.g. "
                    "../shared/datasets/cifar-10-batches-bin) to run this test")
    x, y = load_cifar10(folder, train=True)
    assert x.shape == (50000, 3, 32, 32) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [5000] * 10
    xt, yt = load_cifar10(folder, train=False)
    assert xt.shape == (10000, 3, 32, 32)
    assert np.bincount(yt, minlength=10).tolist() == [1000] * 10
    mean = x[:5000].reshape(5000, 3, -1).mean(axis=(0, 2)) / 255
    assert np.all((mean > 0.4) & (mean < 0.55))
    assert CIFAR10(folder, train=False).classes == CIFAR10_CLASSES


def test_real_fashion_mnist_when_installed():
    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    x, y = load_fashion_mnist("/usr/share/datasets/fashion-mnist", train=False)
    assert x.shape == (10000, 1, 28, 28)
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10


def test_archive_member_order_does_not_matter(cifar, tmp_path):
    # Members in an unusual order and an extra file (the official archive has readme.html).
    files = cifar.files("binary")
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ["readme.html", *sorted(files, key=lambda s: s[::-1])]:
            data = files.get(name, b"<html/>")
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    np.testing.assert_array_equal(load_cifar10(tmp_path)[1], cifar.train[1])
