"""Tests of ``minidl.train.TensorBoard``: what a run writes is read back with TensorBoard's
own reader and compared with the trainer's history, step by step. Tiny data, a linear
model, a few seconds in all."""

from __future__ import annotations

import gc
import struct
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

import minidl  # noqa: E402
from minidl import nn, optim  # noqa: E402
from minidl.autograd import is_grad_enabled  # noqa: E402
from minidl.distributed import Communicator  # noqa: E402
from minidl.train import Callback, TensorBoard, Trainer  # noqa: E402
from minidl.train import _tensorboard_images as draw  # noqa: E402
from minidl.train import tensorboard as tb_module  # noqa: E402

N, BATCH = 48, 16  # 3 steps per epoch
SAMPLE = 10  # images given to the callback: a size no training/validation batch has
EPOCH_TAGS = {"epoch/epoch", "train/loss", "train/accuracy", "epoch/time",
              "epoch/images_per_s", "epoch/lr", "val/loss", "val/accuracy"}
HISTORY_KEY = {"epoch/epoch": "epoch", "train/loss": "loss", "train/accuracy": "accuracy",
               "epoch/time": "time", "epoch/images_per_s": "images_per_s", "epoch/lr": "lr",
               "val/loss": "val_loss", "val/accuracy": "val_accuracy"}


def data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 3x8x8 float images: bright top half (0) or bottom half (1)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0, 0.3, size=(n, 3, 8, 8)).astype(np.float32)
    x[y == 0, :, :4] += 1.0
    x[y == 1, :, 4:] += 1.0
    return x, y.astype(np.int64)


class Probe(nn.Module):
    """A linear classifier that records ``(batch size, training, grad enabled)`` per call."""

    def __init__(self) -> None:
        super().__init__()
        self.flat, self.fc = nn.Flatten(), nn.Linear(3 * 8 * 8, 2)
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x):
        self.calls.append((x.shape[0], self.training, is_grad_enabled()))
        return self.fc(self.flat(x))


class Losses(Callback):
    """Each batch's loss (None for an empty batch) and the LR it was trained with."""

    def __init__(self) -> None:
        self.loss: list[float | None] = []
        self.lr: list[float] = []

    def on_epoch_begin(self, epoch: int) -> None:
        self._lr = self.trainer.optimizer.param_groups[0]["lr"]

    def on_batch_end(self, step: int, logs: dict) -> None:
        self.loss.append(None if logs["loss"] is None else float(logs["loss"]))
        self.lr.append(self._lr)
        self._lr = self.trainer.optimizer.param_groups[0]["lr"]


class Rank(Communicator):
    """A rank of a world whose size is given; no collective is expected (no DDP model)."""

    def __init__(self, rank: int, size: int) -> None:
        super().__init__()
        self.rank, self.size, self.backend = rank, size, "fake"


def read(log_dir) -> EventAccumulator:
    ea = EventAccumulator(str(log_dir), size_guidance={
        k: 0 for k in ("scalars", "images", "tensors", "histograms", "audio",
                       "compressedHistograms")})
    ea.Reload()
    return ea


def steps(ea: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in ea.Scalars(tag)]


def png_header(blob: bytes) -> tuple[int, int, int]:
    """(width, height, colour type) of a PNG; colour type 2 is 8-bit RGB."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, _, colour = struct.unpack(">IIBB", blob[16:26])
    return width, height, colour


def run(log_dir, epochs: int = 2, callbacks=(), model=None, **tb_kwargs):
    model = model or Probe()
    x, y = data()
    tb = TensorBoard(log_dir, **tb_kwargs)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1),
                      callbacks=[*callbacks, tb], progress=False)
    trainer.fit((x, y), epochs=epochs, batch_size=BATCH, validation=data(32, 1))
    return trainer, tb


def test_scalars_images_and_text_match_the_run(tmp_path) -> None:
    x_val, y_val = data(SAMPLE, 2)
    losses, model = Losses(), Probe()
    trainer, tb = run(tmp_path / "run", callbacks=[losses], model=model, log_every=2,
                      images=(x_val, y_val), class_names=["top", "bottom"],
                      hparams={"lr": 0.1, "optimizer": "sgd", "note": None})
    assert tb.writer is None  # closed by on_train_end
    ea = read(tmp_path / "run")
    tags = ea.Tags()
    assert set(tags["scalars"]) == {"step/loss", "step/lr"} | EPOCH_TAGS
    # per step: the global step, every log_every; the values of those very batches
    assert steps(ea, "step/loss") == steps(ea, "step/lr") == [2, 4, 6]
    for e in ea.Scalars("step/loss"):
        assert e.value == np.float32(losses.loss[e.step - 1])
    for e in ea.Scalars("step/lr"):
        assert e.value == np.float32(losses.lr[e.step - 1])
    # per epoch: at the epoch's last step, each equal to the history's value
    for tag in EPOCH_TAGS:
        assert steps(ea, tag) == [3, 6], tag
        expected = trainer.history[HISTORY_KEY[tag]]
        assert [e.value for e in ea.Scalars(tag)] == [np.float32(v) for v in expected], tag
    # images, drawn as RGB at the size minidl.plot draws them
    assert set(tags["images"]) == {"images/confusion_matrix", "images/predictions"}
    shapes = {"images/confusion_matrix":
              draw.confusion_image(y_val, y_val, ["top", "bottom"], True).shape,
              "images/predictions":
              draw.grid_image(x_val, y_val, y_val, ["top", "bottom"], True).shape}
    for tag, (h, w, _) in shapes.items():
        events = ea.Images(tag)
        assert [e.step for e in events] == [3, 6]
        for e in events:
            assert (e.width, e.height) == (w, h)
            assert png_header(e.encoded_image_string) == (w, h, 2)
    # the predictions ran in eval mode without gradients; training mode came back
    sample_calls = [c for c in model.calls if c[0] == SAMPLE]
    assert sample_calls == [(SAMPLE, False, False)] * 2
    assert model.training
    # text: the model's summary table and the run's config, at the first step
    assert set(tags["tensors"]) == {"model/summary/text_summary", "hparams/text_summary"}
    (summary,) = ea.Tensors("model/summary/text_summary")
    text = summary.tensor_proto.string_val[0].decode()
    assert summary.step == 0 and "Linear" in text and "Total params: 386" in text
    (config,) = ea.Tensors("hparams/text_summary")
    assert "| optimizer | sgd |" in config.tensor_proto.string_val[0].decode()
    assert set(ea.PluginTagToContent("hparams")) == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}


def test_step_lr_is_the_rate_each_batch_used(tmp_path) -> None:
    model = Probe()
    opt = optim.SGD(model.parameters(), lr=1.0)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = Trainer(model, opt, scheduler=sched, scheduler_per="batch", progress=False,
                      callbacks=[TensorBoard(tmp_path, log_every=1)])
    trainer.fit(data(), epochs=2, batch_size=BATCH)
    ea = read(tmp_path)
    assert [(e.step, e.value) for e in ea.Scalars("step/lr")] == [
        (s, np.float32(0.5 ** (s - 1))) for s in range(1, 7)]
    assert [e.value for e in ea.Scalars("epoch/lr")] == [np.float32(v)
                                                         for v in trainer.history["lr"]]


def test_empty_batches_count_as_steps_without_a_loss(tmp_path) -> None:
    x, y = data()
    batches = [(minidl.tensor(x[:16]), minidl.tensor(y[:16])),
               (minidl.tensor(x[:0]), minidl.tensor(y[:0])),  # Poisson sampling drew none
               (minidl.tensor(x[16:32]), minidl.tensor(y[16:32]))]
    model = Probe()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False,
                      callbacks=[TensorBoard(tmp_path, log_every=1)])
    trainer.fit(batches, epochs=2)
    ea = read(tmp_path)
    assert steps(ea, "step/loss") == [1, 3, 4, 6]
    assert steps(ea, "step/lr") == [1, 2, 3, 4, 5, 6]
    assert steps(ea, "train/loss") == [3, 6]


def test_only_rank_0_writes(tmp_path) -> None:
    model = Probe()
    tb = TensorBoard(tmp_path / "run", images=data(SAMPLE, 2))
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[tb],
                      progress=False)
    trainer.world = Rank(1, 2)  # what a rank-1 trainer sees; the model is not wrapped here
    assert not trainer.is_main_process
    trainer.fit(data(), epochs=2, batch_size=BATCH)
    assert not (tmp_path / "run").exists()
    assert tb.writer is None and tb.step == 0
    assert not [c for c in model.calls if c[0] == SAMPLE]  # nor predicted the images


def test_resume_continues_the_steps_and_hides_what_the_crash_left(tmp_path) -> None:
    log_dir, ckpt = tmp_path / "run", tmp_path / "ckpt.npz"
    x, y = data()

    def trainer_for(callbacks):
        minidl.manual_seed(0)
        model = Probe()
        return Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=callbacks,
                       progress=False)

    first = trainer_for([TensorBoard(log_dir, log_every=2)])
    first.fit((x, y), epochs=2, batch_size=BATCH)
    first.save_checkpoint(ckpt)
    first.fit((x, y), epochs=3, batch_size=BATCH)  # epoch 3 is logged, then "a crash"
    resumed = trainer_for([TensorBoard(log_dir, log_every=2)])
    resumed.load_checkpoint(ckpt)  # back to the end of epoch 2
    resumed.fit((x, y), epochs=3, batch_size=BATCH)
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 3
    ea = read(log_dir)
    # each step once: the crashed run's epoch 3 (steps 7...9) is purged by the resumed one
    assert steps(ea, "step/loss") == [2, 4, 6, 8]
    assert steps(ea, "train/loss") == [3, 6, 9]
    assert [e.value for e in ea.Scalars("epoch/epoch")] == [1, 2, 3]
    assert [e.value for e in ea.Scalars("train/loss")] == [
        np.float32(v) for v in resumed.history["loss"]]
    assert [e.step for e in ea.Tensors("model/summary/text_summary")] == [0, 6, 6]


def test_images_without_matplotlib_are_drawn_with_numpy(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(draw, "have_matplotlib", lambda: False)
    monkeypatch.setattr(tb_module, "_warned_no_matplotlib", False)
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        run(tmp_path, epochs=1, images=data(SAMPLE, 2), max_images=9)
    ea = read(tmp_path)
    (cm,) = ea.Images("images/confusion_matrix")
    assert (cm.width, cm.height) == (320, 320)  # 2 classes of 160-pixel squares
    (grid,) = ea.Images("images/predictions")
    assert (grid.width, grid.height) == (8 * 12, 2 * 12)  # 9 images 8x8 + frames, 8 a row
    assert png_header(grid.encoded_image_string)[2] == 2


def test_numpy_drawings() -> None:
    y, pred = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    cm = draw.confusion_image(y, pred, ["a", "b", "c"], False)
    cell = 320 // 3
    assert cm.shape == (3 * cell, 3 * cell, 3) and cm.dtype == np.uint8
    assert (cm[0, 0] == cm[cell, cell]).all()  # equal counts, equal colour
    assert (cm[cell, 0] == 255).all()  # no sample there: white
    images = np.zeros((2, 8, 8, 1), np.uint8)  # NHWC is accepted too
    grid = draw.grid_image(images, np.array([0, 1]), np.array([0, 0]), ["a", "b"], False)
    assert grid.shape == (12, 24, 3)
    assert tuple(grid[0, 0]) == draw.CORRECT and tuple(grid[0, 12]) == draw.WRONG
    floats = np.array([[[[-1.0, 3.0]]]], np.float32)  # (1, 1, 1, 2) NCHW
    assert draw.display_uint8(floats).ravel().tolist() == [0, 255]


def test_png_encoding_decodes_to_the_same_pixels() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3)).astype(np.uint8)
    blob = draw.png(rgb)
    assert png_header(blob) == (7, 5, 2)
    Image = pytest.importorskip("PIL.Image")
    import io

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")), rgb)


def test_non_image_inputs_get_a_confusion_matrix_only(tmp_path) -> None:
    x, y = data()
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False,
                      callbacks=[TensorBoard(tmp_path, images=(x.reshape(N, -1), y))])
    trainer.fit((x, y), epochs=1, batch_size=BATCH)
    assert read(tmp_path).Tags()["images"] == ["images/confusion_matrix"]


def test_fit_that_raises_still_leaves_its_events(tmp_path) -> None:
    class Crash(Callback):
        def on_batch_end(self, step, logs):
            if self.trainer.epoch == 1 and step == 2:
                raise RuntimeError("boom")

    def crashed_run():
        try:
            run(tmp_path, epochs=2, callbacks=[Crash()], log_every=1)
        except RuntimeError:
            pass

    crashed_run()  # on_train_end never ran; the callback is garbage now
    gc.collect()
    ea = read(tmp_path)
    assert steps(ea, "step/loss") == [1, 2, 3, 4]  # 4 was never flushed by an epoch end
    tb = TensorBoard(tmp_path / "again")
    tb.close()
    tb.close()  # closing twice (or never opened) is fine


def test_missing_tensorboardx_names_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tensorboard\]"'):
        TensorBoard(tmp_path)


X, Y = data(4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(log_every=0), "log_every"),
    (dict(log_every=True), "log_every"),
    (dict(log_every=2.5), "log_every"),
    (dict(max_images=0), "max_images"),
    (dict(batch_size=-1), "batch_size"),
    (dict(log_dir=None), "log_dir"),
    (dict(images=X), "images must be a pair"),
    (dict(images=(X, Y[:3])), "images must be"),
    (dict(images=(X, Y.astype(np.float32))), "class indices"),
    (dict(images=(X, Y), class_names=["only one"]), "class_names"),
    (dict(class_names=["a", "b"]), "class_names is only used with images"),
    (dict(input_shape=(1, 0, 8)), "input_shape"),
    (dict(hparams=[("lr", 0.1)]), "hparams"),
])
def test_bad_arguments_name_themselves(tmp_path, kwargs, match) -> None:
    kwargs.setdefault("log_dir", tmp_path)
    with pytest.raises(ValueError, match=match):
        TensorBoard(**kwargs)


def test_class_names_must_cover_the_predictions(tmp_path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))  # 3 classes, 2 names
    model[1].bias.data[...] = [0.0, 0.0, 100.0]  # and it predicts the third
    x, y = data()
    with pytest.raises(ValueError, match="predicts class 2 but only 2 class_names"):
        Trainer(model, optim.SGD(model.parameters(), lr=0.0), progress=False,
                callbacks=[TensorBoard(tmp_path, images=(x, y), class_names=["a", "b"])]
                ).fit((x, y), epochs=1, batch_size=BATCH)
