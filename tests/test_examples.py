"""End-to-end tests of the example scripts, run in-process through their ``main(argv)`` on tiny
synthetic datasets written in the real on-disk formats (CIFAR-10 binary batches, gzipped
IDX files), including ``--resume``. With ``MINIDL_CIFAR10_DIR`` set, one more test trains the
seed network briefly on real CIFAR-10."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl
from minidl.data import load_cifar10, load_fashion_mnist
from minidl.data.datasets import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
from minidl.serialization import load

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
PLOTS = ["confusion.png", "curves.png", "predictions.png"]


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (the folder is not a package)."""
    if str(EXAMPLES) not in sys.path:  # as when run as a script: examples/reporting.py
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Noise images whose brightness depends on the class, so there is something to learn."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 100, size=(len(labels),) + shape)
    x += (labels * 15).reshape((-1,) + (1,) * len(shape))
    return x.astype(np.uint8)


def write_cifar_binary(folder: Path, n_train: int = 200, n_test: int = 100) -> Path:
    """CIFAR-10 binary layout: records of 1 label byte + 3072 pixel bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def records(n: int, seed: int) -> bytes:
        labels = rng.integers(0, 10, n)
        rec = np.empty((n, 3073), np.uint8)
        rec[:, 0] = labels
        rec[:, 1:] = class_images(labels, (3, 32, 32), seed).reshape(n, -1)
        return rec.tobytes()

    per_batch = n_train // 5
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(records(per_batch, i))
    (folder / "test_batch.bin").write_bytes(records(n_test, 99))
    from minidl.data.datasets import CIFAR10_CLASSES
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return folder


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """An IDX file (uint8 data), gzipped: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion_mnist(folder: Path, n_train: int = 120, n_test: int = 60) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        write_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz",
                     class_images(labels, (28, 28), n))
        write_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def check_run_folder(out: Path, epochs: int, result: dict, n_test: int) -> None:
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk == result
    assert 0.0 <= result["test_accuracy"] <= 1.0 and np.isfinite(result["test_loss"])
    assert result["test_images"] == n_test
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"} <= set(history[0])
    csv_lines = (out / "history.csv").read_text().splitlines()
    assert len(csv_lines) == epochs + 1 and csv_lines[0].startswith("epoch,loss,accuracy")
    ckpt = load(out / "last.npz")
    assert ckpt["epoch"] == epochs and len(ckpt["history"]) == epochs
    # the final evaluation is of the checkpointed weights
    assert ckpt["history"][-1]["val_accuracy"] == result["test_accuracy"]
    if HAVE_MPL:
        for name in PLOTS:
            assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


# ---------------------------------------------------------------------------------- CIFAR-10


@pytest.fixture(scope="module")
def cifar10():
    return load_example("cifar10")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar_binary(tmp_path_factory.mktemp("data") / "cifar-10-batches-bin")


def test_cifar10_example_runs_and_resumes(cifar10, cifar_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    common = ["--data-dir", str(cifar_dir), "--limit", "64", "--batch-size", "32",
              "--no-progress", "--no-download", "--out", str(out)]
    first = cifar10.main(common + ["--epochs", "1"])
    text = capsys.readouterr().out
    assert "CIFAR-10: 64 train / 100 test images" in text
    assert "Total params: 315,722" in text and "test accuracy" in text
    check_run_folder(out, 1, first, 100)
    assert first["command"].startswith("cifar10.py --data-dir")
    epoch1 = json.loads((out / "history.json").read_text())[0]

    second = cifar10.main(common + ["--epochs", "2", "--resume"])
    assert "resumed from" in capsys.readouterr().out
    check_run_folder(out, 2, second, 100)
    history = json.loads((out / "history.json").read_text())
    assert history[0] == epoch1  # epoch 1 is carried over from the checkpoint, not rerun

    # ... and equals an uninterrupted 2-epoch run
    straight = cifar10.main([*common[:-1], str(tmp_path / "straight"), "--epochs", "2"])
    assert straight["test_loss"] == second["test_loss"]
    assert straight["test_accuracy"] == second["test_accuracy"]
    capsys.readouterr()


def test_cifar10_example_augment_resnet_test_limit(cifar10, cifar_dir, tmp_path) -> None:
    out = tmp_path / "run"
    result = cifar10.main(["--data-dir", str(cifar_dir), "--limit", "32", "--batch-size", "16",
                           "--model", "resnet9", "--width", "4", "--augment", "--epochs", "1",
                           "--test-limit", "40", "--no-progress", "--no-download",
                           "--out", str(out)])
    check_run_folder(out, 1, result, 40)
    assert result["model"] == "resnet9" and result["augment"] is True
    ckpt = load(out / "last.npz")
    assert ckpt["scheduler"]["total_steps"] == 2  # one-cycle over 1 epoch of 2 batches
    # a one-cycle run cannot be extended by resuming: say so instead of crashing mid-epoch
    with pytest.raises(cifar10.cli.CLIError, match="one-cycle schedule of 2 steps"):
        cifar10.main(["--data-dir", str(cifar_dir), "--limit", "32", "--batch-size", "16",
                      "--model", "resnet9", "--width", "4", "--epochs", "3", "--resume",
                      "--no-progress", "--no-download", "--out", str(out)])


def test_cifar10_example_resume_without_checkpoint(cifar10, cifar_dir, tmp_path) -> None:
    with pytest.raises(cifar10.cli.CLIError, match="no checkpoint"):
        cifar10.main(["--data-dir", str(cifar_dir), "--limit", "32", "--epochs", "1",
                      "--resume", "--no-progress", "--no-download",
                      "--out", str(tmp_path / "empty")])


def test_cifar10_example_on_an_image_folder(cifar10, cifar_dir, tmp_path, capsys) -> None:
    """A folder of class folders is trained on instead of CIFAR-10 (the CIFAR-10 folder and
    its parent are not taken for one); --limit samples the training split; the folder's
    classes reach the checkpoint."""
    image = pytest.importorskip("PIL.Image")
    assert not cifar10.is_image_folder(cifar_dir)
    assert not cifar10.is_image_folder(cifar_dir.parent)
    photos = tmp_path / "photos"
    for c, name in enumerate(["cat", "dog"]):
        (photos / name).mkdir(parents=True)
        for k in range(10):
            image.new("RGB", (40, 30), (200 * c, 50, 10 * k)).save(photos / name / f"{k}.png")
    assert cifar10.is_image_folder(photos)
    out = tmp_path / "run"
    result = cifar10.main(["--data-dir", str(photos), "--limit", "12", "--epochs", "1",
                           "--batch-size", "6", "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert "image folder photos: 12 train / 2 validation images" in text
    assert result["test_images"] == 2 and result["val_fraction"] == 0.1
    meta = load(out / "last.npz")["meta"]
    assert meta["classes"] == ["cat", "dog"] and meta["model"]["kwargs"] == {"num_classes": 2}
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        cifar10.main(["--data-dir", str(photos), "--val-fraction", "0", "--no-progress",
                      "--out", str(tmp_path / "zero")])


def _command(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run examples/cifar10.py as a user would; return (exit status, stderr + stdout)."""
    import subprocess

    proc = subprocess.run([sys.executable, str(EXAMPLES / "cifar10.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr + proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--limit", "-5"], "argument --limit: must be at least 1, got -5"),
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--lr", "-1"], "argument --lr: must be greater than 0"),
    (["--label-smoothing", "1.5"], "argument --label-smoothing: must be in [0, 1)"),
    (["--data-dir", "typo/cifar"], "argument --data-dir: no such file or folder: typo/cifar"),
])
def test_bad_arguments_are_two_lines_and_touch_nothing(args, message, tmp_path) -> None:
    code, text = _command([*args, "--out", "run"], tmp_path)
    assert code == 2 and message in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 2, text
    assert list(tmp_path.iterdir()) == []  # no run folder, no data folder, no download


def test_expected_errors_are_one_line_with_debug_for_the_traceback(cifar_dir,
                                                                   tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = _command(["--data-dir", str(empty), "--no-download", "--out", "run"],
                          tmp_path)
    assert code == 1 and "no CIFAR-10 in" in text and "--data-dir" in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 2, text
    code, text = _command(["--data-dir", str(empty), "--no-download", "--out", "run",
                           "--debug"], tmp_path)
    assert code == 1 and "Traceback" in text and "DatasetNotFoundError" in text
    truncated = tmp_path / "cut" / "cifar-10-batches-bin"
    truncated.mkdir(parents=True)
    for f in cifar_dir.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes()[:-100] if f.suffix == ".bin"
                                         else f.read_bytes())
    code, text = _command(["--data-dir", str(truncated), "--no-download", "--out", "run"],
                          tmp_path)
    assert code == 1 and "Traceback" not in text and "error:" in text, text


def test_runs_never_overwrite_resume_needs_a_fit(cifar10, cifar_dir, tmp_path,
                                                 capsys) -> None:
    out = tmp_path / "run"
    common = ["--data-dir", str(cifar_dir), "--limit", "32", "--batch-size", "16",
              "--no-progress", "--no-download"]
    first = cifar10.main([*common, "--epochs", "1", "--out", str(out)])
    assert (out / "best.npz").exists() and first["best_epoch"] == 1
    assert "best epoch 1" in capsys.readouterr().out
    before = (out / "last.npz").read_bytes()
    cifar10.main([*common, "--epochs", "1", "--out", str(out)])
    assert "holds an earlier run; this one writes to" in capsys.readouterr().out
    assert (out / "last.npz").read_bytes() == before and (tmp_path / "run-2" / "last.npz").exists()
    cifar10.main([*common, "--epochs", "1", "--out", str(out), "--overwrite"])
    assert not (tmp_path / "run-3").exists()
    with pytest.raises(cifar10.cli.CLIError, match="nothing left to train; pass a larger --epochs"):
        cifar10.main([*common, "--epochs", "1", "--out", str(out), "--resume"])
    with pytest.raises(cifar10.cli.CLIError, match=r"does not fit --model resnet9 .*missing keys"):
        cifar10.main([*common, "--epochs", "2", "--out", str(out), "--resume",
                      "--model", "resnet9", "--width", "4", "--schedule", "constant"])
    capsys.readouterr()


@pytest.mark.skipif(not os.environ.get("MINIDL_CIFAR10_DIR"),
                    reason="MINIDL_CIFAR10_DIR is not set (point it at a real CIFAR-10 copy)")
def test_cifar10_example_real_data_beats_chance(cifar10, tmp_path) -> None:
    """The seed net, 1 epoch on 5,000 real images: clearly better than chance (0.10)."""
    result = cifar10.main(["--data-dir", os.environ["MINIDL_CIFAR10_DIR"], "--limit", "5000",
                           "--test-limit", "2000", "--epochs", "1", "--batch-size", "64",
                           "--no-progress", "--no-download", "--out", str(tmp_path)])
    assert result["test_images"] == 2000
    assert result["test_accuracy"] >= 0.30, result


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_example_runs_and_resumes(tmp_path, capsys) -> None:
    fashion = load_example("fashion_mnist")
    data = write_fashion_mnist(tmp_path / "fashion")
    out = tmp_path / "run"
    common = ["--data-dir", str(data), "--limit", "64", "--batch-size", "32", "--augment",
              "--no-progress", "--out", str(out)]
    first = fashion.main(common + ["--epochs", "1"])
    text = capsys.readouterr().out
    assert "Fashion-MNIST: 64 train / 60 test images, shape (1, 28, 28)" in text
    assert "Total params: 225,034" in text
    check_run_folder(out, 1, first, 60)
    assert first["command"].startswith("fashion_mnist.py --data-dir")
    # the checkpoint alone classifies grayscale images as the run's evaluation did
    x_test, y_test = load_fashion_mnist(data, train=False)
    top = minidl.predict(out / "last.npz", x_test, top=1)
    names = np.array(FASHION_MNIST_CLASSES)
    accuracy = np.mean([t[0][0] == names[c] for t, c in zip(top, y_test)])
    assert accuracy == pytest.approx(first["test_accuracy"], abs=1e-9)

    second = fashion.main(common + ["--epochs", "2", "--resume"])
    assert "resumed from" in capsys.readouterr().out
    check_run_folder(out, 2, second, 60)

    straight = fashion.main([*common[:-1], str(tmp_path / "straight"), "--epochs", "2"])
    assert straight["test_loss"] == second["test_loss"]
    capsys.readouterr()


def test_fashion_mnist_example_data_dir_from_env(tmp_path, monkeypatch, capsys) -> None:
    fashion = load_example("fashion_mnist")
    data = write_fashion_mnist(tmp_path / "fm", n_train=40, n_test=30)
    monkeypatch.setenv("MINIDL_FASHION_MNIST_DIR", str(data))
    result = fashion.main(["--epochs", "1", "--batch-size", "20", "--test-limit", "10",
                           "--no-progress", "--out", str(tmp_path / "run")])
    assert result["train_images"] == 40 and result["test_images"] == 10
    assert "40 train / 10 test" in capsys.readouterr().out


# ----------------------------------------------------------------------------- airbench94


def test_airbench94_example_trains_saves_and_predicts(cifar_dir, tmp_path, capsys) -> None:
    bench = load_example("airbench94")
    save, summary = tmp_path / "out" / "airbench.npz", tmp_path / "summary.json"
    common = ["--data-dir", str(cifar_dir), "--no-download", "--limit", "64",
              "--batch-size", "32", "--epochs", "1", "--test-limit", "20"]
    result = bench.main(common + ["--save", str(save), "--json", str(summary)])
    text = capsys.readouterr().out
    assert "64 train / 20 test images, 2 steps of 32" in text and "weights saved to" in text
    assert result["steps"] == 2 and result["hyp"]["batch_size"] == 32
    assert json.loads(summary.read_text()) == result
    assert 0.0 <= result["tta_acc"] <= 1.0 and np.isfinite(result["history"][0]["train_loss"])
    # the saved weights alone give the untransformed test accuracy the run printed
    x_test, y_test = load_cifar10(cifar_dir, train=False, download=False)
    keep = np.linspace(0, len(x_test) - 1, 20).round().astype(np.int64)
    top = minidl.predict(save, x_test[keep], top=1)
    names = np.array(CIFAR10_CLASSES)
    accuracy = np.mean([t[0][0] == names[c] for t, c in zip(top, y_test[keep])])
    assert accuracy == pytest.approx(result["test_acc"], abs=1e-9)
    # a second run does not replace them without --overwrite
    with pytest.raises(SystemExit):
        bench.main(common + ["--save", str(save)])
    assert "--save" in capsys.readouterr().err


# ------------------------------------------------------------------------ CIFAR-10 with DP


def test_cifar10_dp_example_runs_resumes_and_reports_epsilon(cifar_dir, tmp_path,
                                                             capsys) -> None:
    pytest.importorskip("dp_accounting")
    dp = load_example("cifar10_dp")
    out = tmp_path / "run"
    common = ["--data-dir", str(cifar_dir), "--batch-size", "50", "--physical-batch-size",
              "32", "--delta", "1e-3", "--target-epsilon", "4", "--width", "4",
              "--no-progress", "--no-download", "--out", str(out)]
    first = dp.main(common + ["--epochs", "2"])
    text = capsys.readouterr().out
    assert "DP-SGD: noise multiplier" in text and "epsilon" in text
    history = json.loads((out / "history.json").read_text())
    eps = [r["epsilon"] for r in history]
    assert 0 < eps[0] < eps[1] <= 4.0 + 1e-9        # the budget of the whole run, spent
    assert first["epsilon"] == eps[-1] and first["dp_steps"] == 2 * 4   # round(200 / 50)
    # sigma was calibrated to a 2-epoch budget: a longer resume must say so, not overspend
    with pytest.raises(Exception, match=r"calibrated to its own --epochs.*--noise-multiplier"):
        dp.main(common + ["--epochs", "3", "--resume"])
    capsys.readouterr()


def test_cifar10_dp_example_resume_is_exact(cifar_dir, tmp_path, capsys) -> None:
    pytest.importorskip("dp_accounting")
    dp = load_example("cifar10_dp")
    common = ["--data-dir", str(cifar_dir), "--batch-size", "50", "--physical-batch-size",
              "32", "--delta", "1e-3", "--noise-multiplier", "1.0", "--width", "4",
              "--no-progress", "--no-download"]
    out = tmp_path / "run"
    dp.main(common + ["--out", str(out), "--epochs", "1"])
    resumed = dp.main(common + ["--out", str(out), "--epochs", "2", "--resume"])
    straight = dp.main(common + ["--out", str(tmp_path / "straight"), "--epochs", "2"])
    assert resumed["test_loss"] == straight["test_loss"]
    assert resumed["epsilon"] == straight["epsilon"]
    # a cosine schedule is fixed by the run's length: a longer resume is refused
    cos = tmp_path / "cos"
    dp.main(common + ["--out", str(cos), "--epochs", "1", "--schedule", "cosine"])
    with pytest.raises(Exception, match="follows a cosine schedule of 4 steps"):
        dp.main(common + ["--out", str(cos), "--epochs", "2", "--schedule", "cosine",
                          "--resume"])
    capsys.readouterr()


def test_cifar10_dp_scattering_head_caches_features_and_predicts(cifar_dir, tmp_path,
                                                                capsys) -> None:
    pytest.importorskip("dp_accounting")
    dp = load_example("cifar10_dp")
    cache = tmp_path / "features"
    common = ["--data-dir", str(cifar_dir), "--batch-size", "50", "--delta", "1e-3",
              "--noise-multiplier", "1.0", "--no-progress", "--no-download",
              "--feature-cache", str(cache), "--epochs", "1"]
    first = dp.main(common + ["--model", "scatter_cnn", "--width", "8",
                              "--out", str(tmp_path / "cnn")])
    text = capsys.readouterr().out
    assert "scattering features of 200 images:" in text and len(list(cache.iterdir())) == 2
    assert first["model"] == "scatter_cnn(width=8)"
    # the cached features are read back, not recomputed, by the next run
    dp.main(common + ["--model", "scatter_linear", "--out", str(tmp_path / "lin")])
    assert "scattering features of 200 images from" in capsys.readouterr().out
    # the checkpoint holds the head; minidl.predict rebuilds the whole model (with its
    # scattering front) and classifies raw images as the run's evaluation did
    x_test, y_test = load_cifar10(cifar_dir, train=False, download=False)
    x_test, y_test = x_test[:first["test_images"]], y_test[:first["test_images"]]
    top = minidl.predict(tmp_path / "cnn" / "last.npz", x_test, top=1)
    names = np.array(CIFAR10_CLASSES)
    accuracy = np.mean([t[0][0] == names[c] for t, c in zip(top, y_test)])
    assert accuracy == pytest.approx(first["test_accuracy"], abs=1e-9)
    with pytest.raises(SystemExit):
        dp.main(common + ["--model", "scatter_linear", "--width", "4"])


def test_cifar10_dp_example_refuses_a_large_delta(cifar_dir, tmp_path) -> None:
    pytest.importorskip("dp_accounting")
    dp = load_example("cifar10_dp")
    with pytest.raises(Exception, match=r"--delta 0.01 must be below 1/N = 0.005"):
        dp.main(["--data-dir", str(cifar_dir), "--delta", "0.01", "--no-download",
                 "--out", str(tmp_path / "r")])
