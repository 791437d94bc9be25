"""Prediction from a checkpoint alone: examples/cifar10.py trains a seed CNN for one epoch on a
small image folder; its checkpoint then classifies images through ``minidl.predict`` and
``python -m minidl predict`` (text and JSON), with probabilities equal to the softmax of the
model's logits computed here by hand. Also: the checkpoint's metadata layout, the
``Trainer(metadata=...)`` contract (JSON values only, kept on resume, old checkpoints still
load) and every error path of the command (one line, status 1, no traceback)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl
from minidl import optim
from minidl.__main__ import main as cli_main
from minidl.data import ImageFolder, train_val_split
from minidl.inference import Predictor, prediction_metadata
from minidl.models import MODELS, build_model, seed_cnn
from minidl.train import Trainer

Image = pytest.importorskip("PIL.Image")

ROOT = Path(__file__).resolve().parent.parent
COLORS = {"apple": (220, 30, 30), "leaf": (30, 200, 40), "sky": (40, 60, 230)}


def _example(name: str):
    examples = str(ROOT / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    spec = importlib.util.spec_from_file_location(f"_predict_example_{name}",
                                                  ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(image folder, run folder, result) of a one-epoch example run on 24 images."""
    base = tmp_path_factory.mktemp("predict")
    folder = base / "photos"
    rng = np.random.default_rng(0)
    for name, color in COLORS.items():
        (folder / name).mkdir(parents=True)
        for k in range(8):
            pixels = np.clip(np.array(color) + rng.integers(-40, 40, (36 + k, 44, 3)), 0, 255)
            suffix = "png" if k % 2 == 0 else "jpg"
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{k}.{suffix}")
    out = base / "run"
    result = _example("cifar10").main(["--data-dir", str(folder), "--epochs", "1",
                                       "--batch-size", "8", "--val-fraction", "0.25",
                                       "--no-progress", "--no-download", "--out", str(out)])
    return folder, out, result


def _files(folder: Path) -> list[Path]:
    return [folder / "sky" / "0.png", folder / "apple" / "1.jpg", folder / "leaf" / "2.png"]


def test_the_example_trains_on_an_image_folder_and_records_prediction_metadata(run, capsys):
    folder, out, result = run
    assert result["test_images"] == 6 and result["val_fraction"] == 0.25
    for name in ("best.npz", "last.npz"):
        meta = minidl.load(out / name)["meta"]
        assert meta["model"] == {"name": "seed_cnn", "kwargs": {"num_classes": 3}}
        assert meta["classes"] == ["apple", "leaf", "sky"]
        assert meta["input"]["size"] == [32, 32] and meta["input"]["mode"] == "RGB"
    # normalized with the training split's own statistics
    data = ImageFolder(folder, size=32)
    train, _ = train_val_split(data, 0.25, seed=0)
    x = train.get_batch(np.arange(len(train)))[0].astype(np.float64) / 255
    np.testing.assert_allclose(meta["input"]["mean"], x.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(meta["input"]["std"], x.std(axis=(0, 2, 3)), atol=1e-9)
    capsys.readouterr()


def _softmax_by_hand(ckpt_path: Path, images: np.ndarray) -> np.ndarray:
    state = minidl.load(ckpt_path)
    meta = state["meta"]
    model = seed_cnn(num_classes=3)
    model.load_state_dict(state["model"])
    model.eval()
    mean = np.array(meta["input"]["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.array(meta["input"]["std"], np.float32).reshape(1, 3, 1, 1)
    x = (images.astype(np.float32) / np.float32(255) - mean) / std
    with minidl.no_grad():
        logits = model(minidl.tensor(x)).numpy().astype(np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_predict_gives_the_softmax_of_the_model(run):
    folder, out, _ = run
    files = _files(folder)
    ckpt = out / "best.npz"
    data = ImageFolder(folder, size=32)
    images = data.get_batch(np.array([data.files.index(f) for f in files]))[0]
    expected = _softmax_by_hand(ckpt, images)

    predictor = Predictor.from_checkpoint(ckpt)
    probs = predictor.probabilities(files)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)

    top = minidl.predict(ckpt, files, top=2)
    assert len(top) == 3
    for ranked, row in zip(top, expected):
        assert [name for name, _ in ranked] == [predictor.classes[j]
                                                for j in np.argsort(-row)[:2]]
        assert ranked[0][1] >= ranked[1][1] and sum(p for _, p in ranked) <= 1 + 1e-9
        for name, p in ranked:
            assert p == pytest.approx(row[predictor.classes.index(name)], rel=1e-4, abs=1e-6)
    everything = minidl.predict(predictor, files, top=10)       # clipped to the 3 classes
    assert [len(r) for r in everything] == [3, 3, 3]
    assert all(sum(p for _, p in r) == pytest.approx(1.0) for r in everything)

    # Arrays: a (C, H, W) image, a batch, and a full-size image resized as files are
    # (equal up to float rounding: another batch size sums in another order).
    def same(a, b):
        return [n for n, _ in a] == [n for n, _ in b] and [p for _, p in a] == pytest.approx(
            [p for _, p in b], rel=1e-5, abs=1e-7)

    assert same(minidl.predict(predictor, images[0], top=3)[0], everything[0])
    assert all(map(same, minidl.predict(predictor, images, top=3), everything))
    with Image.open(files[0]) as im:
        full = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    assert full.shape[1:] != (32, 32)
    assert same(minidl.predict(predictor, [full], top=3)[0], everything[0])
    with pytest.raises(TypeError, match="give uint8 pixels"):
        minidl.predict(predictor, images.astype(np.float32))
    with pytest.raises(ValueError, match="top must be a positive int"):
        minidl.predict(predictor, files, top=0)
    with pytest.raises(ValueError, match="no images given"):
        minidl.predict(predictor, [])


def _command(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "minidl", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


def test_command_line_text_and_json(run):
    folder, out, _ = run
    files = [str(f) for f in _files(folder)]
    ckpt = str(out / "best.npz")
    expected = minidl.predict(ckpt, files, top=2)

    proc = _command("predict", "--checkpoint", ckpt, *files, "--top", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, path, ranked in zip(lines, files, expected):
        m = re.fullmatch(r"(.+): (\w+) (\d+\.\d)%, (\w+) (\d+\.\d)%", line)
        assert m and m.group(1) == path, line
        assert [m.group(2), m.group(4)] == [name for name, _ in ranked]
        assert float(m.group(3)) == pytest.approx(100 * ranked[0][1], abs=0.051)

    proc = _command("predict", "--checkpoint", ckpt, *files, "--json")
    assert proc.returncode == 0, proc.stderr
    parsed = json.loads(proc.stdout)
    assert [r["image"] for r in parsed] == files
    for record, ranked in zip(parsed, minidl.predict(ckpt, files, top=3)):
        assert [t["class"] for t in record["top"]] == [name for name, _ in ranked]
        probs = [t["probability"] for t in record["top"]]
        assert probs == pytest.approx([p for _, p in ranked], rel=1e-5)
        assert sum(probs) <= 1 + 1e-9 and probs == sorted(probs, reverse=True)

    proc = _command()
    assert proc.returncode == 0 and "predict" in proc.stdout and "usage:" in proc.stdout


def test_command_line_errors_are_one_line(run, tmp_path, capsys):
    folder, out, _ = run
    ckpt = str(out / "best.npz")
    image = str(_files(folder)[0])

    def fails(*args: str) -> str:
        assert cli_main(list(args)) == 1
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
        assert lines[0].startswith("python -m minidl predict: error: "), lines[0]
        return lines[0]

    assert "checkpoint nope.npz does not exist" in fails("predict", "--checkpoint", "nope.npz",
                                                          image)
    assert "is not a minidl checkpoint" in fails("predict", "--checkpoint", image, image)
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))
    assert "is not a minidl checkpoint" in fails("predict", "--checkpoint", str(plain), image)

    # An older (or hand-made) trainer checkpoint without metadata: say how to get one.
    model = seed_cnn(num_classes=3)
    old = tmp_path / "old.npz"
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).save_checkpoint(old)
    msg = fails("predict", "--checkpoint", str(old), image)
    assert "has no prediction metadata" in msg and "prediction_metadata" in msg
    weights = tmp_path / "weights.npz"
    minidl.save(model.state_dict(), weights)
    assert "holds no model weights" in fails("predict", "--checkpoint", str(weights), image)

    state = minidl.load(ckpt)
    state["meta"]["model"]["name"] = "vgg16"
    foreign = tmp_path / "vgg.npz"
    minidl.save(state, foreign)
    msg = fails("predict", "--checkpoint", str(foreign), image)
    assert "unknown architecture 'vgg16'" in msg and "seed_cnn" in msg
    state["meta"]["model"] = {"name": "resnet9", "kwargs": {"num_classes": 3, "width": 4}}
    mismatch = tmp_path / "mismatch.npz"
    minidl.save(state, mismatch)
    assert "do not fit resnet9(num_classes=3, width=4)" in fails(
        "predict", "--checkpoint", str(mismatch), image)

    assert "image missing.png does not exist" in fails("predict", "--checkpoint", ckpt,
                                                       "missing.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert f"cannot decode {broken}" in fails("predict", "--checkpoint", ckpt, image,
                                              str(broken))

    # --debug: the traceback instead of the line
    assert cli_main(["predict", "--checkpoint", "nope.npz", image, "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:   # argparse: status 2
        cli_main(["predict", image])
    assert exc.value.code == 2
    capsys.readouterr()


def test_command_line_error_in_a_subprocess(tmp_path):
    proc = _command("predict", "--checkpoint", str(tmp_path / "none.npz"), "x.png")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_trainer_metadata_is_json_kept_on_resume_and_optional(tmp_path):
    meta = prediction_metadata("seed_cnn", ["a", "b"], 32, model_kwargs={"num_classes": 2},
                               mean=np.array([0.5, 0.4, 0.3]), std=(0.2, 0.2, 0.2))
    assert meta["input"]["mean"] == [0.5, 0.4, 0.3] and type(meta["input"]["mean"][0]) is float
    model = seed_cnn(num_classes=2)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), metadata=meta,
                      progress=False)
    meta["classes"].append("changed later")      # the trainer keeps its own copy
    trainer.save_checkpoint(tmp_path / "a.npz")
    saved = minidl.load(tmp_path / "a.npz")["meta"]
    assert saved["classes"] == ["a", "b"] and saved["model"]["name"] == "seed_cnn"

    # A trainer built without metadata takes the checkpoint's; one with its own keeps it.
    plain = Trainer(seed_cnn(num_classes=2), optim.SGD(seed_cnn(num_classes=2).parameters(),
                                                        lr=0.1), progress=False)
    assert plain.metadata is None and "meta" not in plain.state_dict()
    plain.load_checkpoint(tmp_path / "a.npz")
    assert plain.metadata == saved
    # Old checkpoints (no "meta") load as before.
    old = Trainer(seed_cnn(num_classes=2), optim.SGD(seed_cnn(num_classes=2).parameters(),
                                                      lr=0.1), progress=False)
    old.save_checkpoint(tmp_path / "old.npz")
    old.load_checkpoint(tmp_path / "old.npz")
    assert old.metadata is None

    # numpy scalars become Python numbers; anything that is not JSON is refused, by path
    t = Trainer(model, optim.SGD(model.parameters(), lr=0.1),
                metadata={"x": np.float32(0.5), "n": [np.int64(3)]})
    assert t.metadata == {"x": 0.5, "n": [3]} and type(t.metadata["n"][0]) is int
    for bad, match in [({"w": np.zeros(3)}, r"at 'w' is a ndarray \(convert it with "
                                            r"\.tolist\(\)\)"),
                       ({"a": {1: "x"}}, "key 1 at 'a' is a int"),
                       ({"f": open}, "at 'f' is a builtin_function_or_method"),
                       (["not", "a", "dict"], "must be a dict")]:
        with pytest.raises(ValueError, match=match):
            Trainer(model, optim.SGD(model.parameters(), lr=0.1), metadata=bad)


def test_models_registry_and_metadata_checks():
    assert {"seed_cnn", "resnet9", "dp_cnn", "airbench94"} <= set(MODELS)
    assert build_model("seed_cnn", num_classes=4)(minidl.zeros(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="unknown architecture 'lenet'.*seed_cnn"):
        build_model("lenet")
    with pytest.raises(ValueError, match="resnet9 takes no argument.*depth"):
        build_model("resnet9", depth=3)
    with pytest.raises(ValueError, match="unknown architecture 'lenet'"):
        prediction_metadata("lenet", ["a"], 32)
    with pytest.raises(ValueError, match="'input.mean' must be 3 number"):
        prediction_metadata("seed_cnn", ["a"], 32, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="'input.mean' and 'input.std' go together"):
        prediction_metadata("seed_cnn", ["a"], 32, mean=[0.5] * 3)
    with pytest.raises(ValueError, match="'classes' must be a non-empty list"):
        prediction_metadata("seed_cnn", [], 32)
    with pytest.raises(ValueError, match="size must be"):
        prediction_metadata("seed_cnn", ["a"], 0)
    grey = prediction_metadata("seed_cnn", ["a", "b"], (28, 28), mode="L",
                               model_kwargs={"num_classes": 2, "in_channels": 1,
                                             "image_size": 28}, mean=[0.5], std=[0.25])
    assert grey["input"] == {"size": [28, 28], "mode": "L", "mean": [0.5], "std": [0.25]}
