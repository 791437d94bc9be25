"""Tests of ``minidl.plot``: every figure is written as a real PNG, the confusion counts are
right, and bad inputs fail with messages that say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="minidl.plot needs matplotlib "
                                         "(pip install 'minidl[plot]')")

from minidl import plot  # noqa: E402
from minidl.train import History  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ("cat", "dog", "bird")


def assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC, path
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plot.plt.close("all")


def history() -> History:
    return History([
        {"epoch": 1, "loss": 1.2, "accuracy": 0.4, "val_loss": 1.3, "val_accuracy": 0.35},
        {"epoch": 2, "loss": 0.9, "accuracy": 0.6, "val_loss": 1.0, "val_accuracy": 0.55},
        {"epoch": 3, "loss": 0.7, "accuracy": 0.7, "val_loss": 0.9, "val_accuracy": 0.6},
    ])


def test_training_curves_png(tmp_path) -> None:
    fig = plot.training_curves(history(), tmp_path / "sub" / "curves.png")
    assert_png(tmp_path / "sub" / "curves.png")
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "validation"]
    assert list(acc_ax.lines[1].get_ydata()) == [0.35, 0.55, 0.6]
    # a plain list of rows works, and without validation there is one line per panel
    fig = plot.training_curves([{"epoch": 1, "loss": 1.0, "accuracy": 0.5}])
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]


def test_confusion_counts() -> None:
    y_true = [0, 0, 1, 2, 2, 2, 1]
    y_pred = [0, 1, 1, 2, 0, 2, 1]
    m = plot.confusion_counts(y_true, y_pred, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert m.dtype == np.int64 and m.sum() == len(y_true)
    # random cross-check against a plain loop
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    expected = np.zeros((5, 5), np.int64)
    for a, b in zip(t, p):
        expected[a, b] += 1
    np.testing.assert_array_equal(plot.confusion_counts(t, p, 5), expected)


def test_confusion_counts_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(3,\) labels vs \(2,\) predictions"):
        plot.confusion_counts([0, 1, 2], [0, 1], 3)
    with pytest.raises(ValueError, match=r"labels must be in 0..2, got -1 at index 1"):
        plot.confusion_counts([0, -1], [0, 1], 3)
    with pytest.raises(ValueError, match=r"predictions must be in 0..2, got 3 at index 0"):
        plot.confusion_counts([0, 1], [3, 1], 3)
    with pytest.raises(ValueError, match="num_classes"):
        plot.confusion_counts([0], [0], 0)


def test_confusion_matrix_png(tmp_path) -> None:
    y_true = [0, 1, 2, 2]
    y_pred = [0, 1, 1, 2]
    fig = plot.confusion_matrix(y_true, y_pred, CLASSES, tmp_path / "confusion.png")
    assert_png(tmp_path / "confusion.png")
    ax = fig.axes[0]
    assert "accuracy 0.750" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["1", "0", "0", "0", "1", "0", "0", "1", "1"]
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        plot.confusion_matrix([5], [0], CLASSES)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "gray"])
def test_prediction_grid_png(tmp_path, layout: str) -> None:
    rng = np.random.default_rng(0)
    shape = {"NCHW": (10, 3, 8, 8), "NHWC": (10, 8, 8, 3), "gray": (10, 1, 8, 8)}[layout]
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    y_true = np.arange(10) % 3
    y_pred = np.array([0, 1, 2, 0, 0, 0, 0, 1, 2, 0])
    fig = plot.prediction_grid(images, y_true, y_pred, CLASSES, tmp_path / "grid.png", cols=4)
    assert_png(tmp_path / "grid.png")
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(fig.axes) == 12 and len(titled) == 10
    assert titled[1].get_title() == "dog\n(dog)" and titled[1].title.get_color() == "black"
    assert titled[4].get_title() == "cat\n(dog)" and titled[4].title.get_color() == "red"


def test_prediction_grid_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"images must be 4-D, got shape \(8, 8\)"):
        plot.prediction_grid(np.zeros((8, 8)), [0], [0], CLASSES)
    with pytest.raises(ValueError, match="2 images but 1 labels and 2 predictions"):
        plot.prediction_grid(np.zeros((2, 1, 4, 4)), [0], [0, 1], CLASSES)
    with pytest.raises(ValueError, match="no images"):
        plot.prediction_grid(np.zeros((0, 1, 4, 4)), [], [], CLASSES)
    with pytest.raises(ValueError, match="cols"):
        plot.prediction_grid(np.zeros((1, 1, 4, 4)), [0], [0], CLASSES, cols=0)


def test_training_curves_empty_history() -> None:
    with pytest.raises(ValueError, match="history is empty"):
        plot.training_curves(History())


def test_save_training_report(tmp_path) -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 40)
    y_pred = rng.integers(0, 3, 40)
    images = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    plot.save_training_report(tmp_path, history(), y_true, y_pred, CLASSES, images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "curves.png",
                                                          "predictions.png"]
    for p in tmp_path.iterdir():
        assert_png(p)
    assert plot.plt.get_fignums() == []  # the report closes what it opened
    plot.save_training_report(tmp_path / "noimg", history(), y_true, y_pred, CLASSES)
    assert sorted(p.name for p in (tmp_path / "noimg").iterdir()) == ["confusion.png",
                                                                      "curves.png"]
