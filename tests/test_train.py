"""Tests of ``minidl.train``: the fit/evaluate/predict loop, history, callbacks, checkpoints
and exact resume. Everything runs on tiny synthetic images and tiny networks so the module
takes a few seconds."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

import minidl
from minidl import nn, optim
from minidl.autograd import Tensor, is_grad_enabled
from minidl.data import DataLoader
from minidl.data import transforms as T
from minidl.serialization import load
from minidl.train import (
    Callback,
    EarlyStopping,
    History,
    LRSchedulerStep,
    ModelCheckpoint,
    Trainer,
    predict,
)

TIME_KEYS = ("time", "images_per_s")


def blobs(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two separable classes of 3x8x8 uint8 images: bright top half (class 0) or bright
    bottom half (class 1), plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 90, size=(n, 3, 8, 8))
    x[y == 0, :, :4, :] += 150
    x[y == 1, :, 4:, :] += 150
    return x.astype(np.uint8), y.astype(np.int64)


def tiny_net(dropout: float = 0.0) -> nn.Sequential:
    """Conv(4, 3x3) -> ReLU -> MaxPool 2 -> Flatten -> Dropout -> Linear(64, 2)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(dropout), nn.Linear(4 * 4 * 4, 2),
    )


def loader(x: np.ndarray, y: np.ndarray, batch_size: int = 16, shuffle: bool = True,
           seed: int | None = 0, augment: bool = False) -> DataLoader:
    aug = [T.RandomCrop(8, padding=1), T.RandomHorizontalFlip()] if augment else []
    return DataLoader((x, y), batch_size=batch_size, shuffle=shuffle, seed=seed,
                      transform=T.Compose(aug + [T.ToFloat()]))


def params(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(v.data) for k, v in model.state_dict().items()}


def strip_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


# ------------------------------------------------------------------------------ end to end


def test_fit_learns_separable_images() -> None:
    x, y = blobs(96)
    model = tiny_net()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.02), progress=False)
    before = trainer.evaluate(loader(x, y, shuffle=False))
    history = trainer.fit(loader(x, y), epochs=6, validation=loader(x, y, shuffle=False))
    assert len(history) == 6 and trainer.epoch == 6
    assert history["epoch"] == [1, 2, 3, 4, 5, 6]
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] >= 0.95
    assert history["val_accuracy"][-1] >= 0.95 > before["accuracy"] + 0.2
    assert history["val_loss"][-1] < before["loss"]
    assert set(history.keys()) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                                   "lr", "time", "images_per_s"}
    for p in model.parameters():  # trained in float32, never silently upcast
        assert p.dtype == np.float32


def test_fit_accepts_arrays_keras_style() -> None:
    x, y = blobs(64)
    xf = x.astype(np.float32) / 255
    model = tiny_net()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.02), progress=False)
    history = trainer.fit((xf, y), epochs=5, validation=(xf, y), batch_size=16)
    assert history["accuracy"][-1] >= 0.95 and history["val_accuracy"][-1] >= 0.95
    res = trainer.evaluate((xf, y), batch_size=10)
    assert res["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    logits = trainer.predict(xf, batch_size=10)
    assert logits.shape == (64, 2)
    assert (logits.argmax(1) == y).mean() == pytest.approx(res["accuracy"])
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit((xf, y), epochs=6, batch_size=0)


def test_fit_epochs_is_a_total_and_validated() -> None:
    x, y = blobs(32)
    model = tiny_net()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False)
    trainer.fit(loader(x, y), epochs=2)
    trainer.fit(loader(x, y), epochs=3)  # continues to a total of 3, not 5
    assert trainer.history["epoch"] == [1, 2, 3]
    before = params(model)
    trainer.fit(loader(x, y), epochs=2)  # already past: trains nothing
    assert all(np.array_equal(before[k], v) for k, v in params(model).items())
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(loader(x, y), epochs=-1)


# ----------------------------------------------------------------------------------- resume


def _resume_setup(seed: int, epochs: int, folder=None):
    """A fresh 'process': new model, optimizer, scheduler, loader after manual_seed(seed).

    The loader is built with ``seed=None``, so its shuffle/augmentation seed is drawn from
    the global RNG: resuming must restore it from the checkpoint.
    """
    minidl.manual_seed(seed)
    x, y = blobs(64, seed=3)
    model = tiny_net(dropout=0.3)
    opt = optim.Adam(model.parameters(), lr=0.01)
    train = loader(x, y, batch_size=16, shuffle=True, seed=None, augment=True)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.03, total_steps=epochs * len(train))
    callbacks = [ModelCheckpoint(folder)] if folder is not None else []
    trainer = Trainer(model, opt, scheduler=sched, scheduler_per="batch", callbacks=callbacks,
                      progress=False, log_every=3)
    val = loader(x, y, batch_size=32, shuffle=False)
    return trainer, train, val


def test_resume_is_exact(tmp_path) -> None:
    epochs = 4
    trainer, train, val = _resume_setup(0, epochs)
    full = trainer.fit(train, epochs=epochs, validation=val)
    expected = params(trainer.model)

    first, train1, val1 = _resume_setup(0, epochs, tmp_path)
    first.fit(train1, epochs=2, validation=val1)
    assert load(tmp_path / "last.npz")["epoch"] == 2
    del first, train1, val1

    second, train2, val2 = _resume_setup(12345, epochs)  # different seed: all from the ckpt
    assert not np.array_equal(params(second.model)["0.weight"], expected["0.weight"])
    second.load_checkpoint(tmp_path / "last.npz")
    assert second.epoch == 2 and len(second.history) == 2
    resumed = second.fit(train2, epochs=epochs, validation=val2)

    got = params(second.model)
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    assert strip_time(resumed.epochs) == strip_time(full.epochs)
    assert second.scheduler.last_epoch == trainer.scheduler.last_epoch == epochs * len(train)
    assert second.optimizer.param_groups[0]["lr"] == trainer.optimizer.param_groups[0]["lr"]


def test_resume_with_array_data(tmp_path) -> None:
    """Keras-style (x, y) arrays: the internally built loader's seed is checkpointed too."""
    def run(seed: int, epochs: int, ckpt=None):
        minidl.manual_seed(seed)
        x, y = blobs(48, seed=5)
        model = tiny_net(dropout=0.2)
        trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                          progress=False)
        if ckpt is not None:
            trainer.load_checkpoint(ckpt)
        trainer.fit((x.astype(np.float32) / 255, y), epochs=epochs, batch_size=16)
        return trainer

    full = run(0, 3)
    part = run(0, 1)
    part.save_checkpoint(tmp_path / "ckpt.npz")
    resumed = run(777, 3, tmp_path / "ckpt.npz")
    for k, v in params(full.model).items():
        np.testing.assert_array_equal(params(resumed.model)[k], v, err_msg=k)
    assert strip_time(resumed.history.epochs) == strip_time(full.history.epochs)


def test_resume_with_alternating_flip_is_exact(tmp_path) -> None:
    """AlternatingFlip's flips derive from the loader's (seed, epoch) and the image's index:
    resuming after an odd number of epochs continues with the complementary flips."""
    def run(seed: int, epochs: int, ckpt=None):
        minidl.manual_seed(seed)
        x, y = blobs(48, seed=4)
        model = tiny_net()
        trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                          progress=False)
        if ckpt is not None:
            trainer.load_checkpoint(ckpt)
        aug = T.Compose([T.RandomCrop(8, padding=2, padding_mode="reflect"),
                         T.AlternatingFlip(), T.ToFloat()])
        trainer.fit(DataLoader((x, y), batch_size=16, shuffle=True, seed=None, transform=aug),
                    epochs=epochs)
        return trainer

    full = run(0, 4)
    part = run(0, 1)
    part.save_checkpoint(tmp_path / "ckpt.npz")
    resumed = run(31, 4, tmp_path / "ckpt.npz")  # another seed: the loader's comes from ckpt
    for k, v in params(full.model).items():
        np.testing.assert_array_equal(params(resumed.model)[k], v, err_msg=k)
    assert strip_time(resumed.history.epochs) == strip_time(full.history.epochs)


def test_checkpoint_without_scheduler_state_is_refused(tmp_path) -> None:
    x, y = blobs(16)
    model = tiny_net()
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).save_checkpoint(
        tmp_path / "c.npz")
    opt = optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, scheduler=optim.lr_scheduler.StepLR(opt, 1), progress=False)
    with pytest.raises(ValueError, match="missing field.*scheduler.*no scheduler state"):
        trainer.load_checkpoint(tmp_path / "c.npz")


def _trainer_state(trainer: Trainer) -> tuple:
    """Everything a load may change, copied."""
    model = {k: np.array(v.data) for k, v in trainer.model.state_dict().items()}
    return (model, json.dumps(trainer.optimizer.state_dict(), default=lambda a: a.tolist()),
            trainer.epoch, list(trainer.history.epochs),
            json.dumps(minidl.random.get_rng_state()))


def _assert_unchanged(trainer: Trainer, before: tuple) -> None:
    after = _trainer_state(trainer)
    for k, v in before[0].items():
        np.testing.assert_array_equal(after[0][k], v, err_msg=k)
    assert after[1:] == before[1:]


def _trained(seed: int, epochs: int = 1) -> Trainer:
    x, y = blobs(16, seed=seed)
    minidl.manual_seed(seed)
    model = tiny_net()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.01), progress=False)
    trainer.fit((x.astype(np.float32) / 255, y), epochs=epochs, batch_size=8)
    return trainer


def test_loading_a_model_state_dict_as_a_checkpoint_is_refused_and_changes_nothing(
        tmp_path) -> None:
    source = _trained(1)
    minidl.save(source.model.state_dict(), tmp_path / "weights.npz")
    trainer = _trained(2)
    before = _trainer_state(trainer)
    with pytest.raises(ValueError, match=r"weights\.npz.*missing field.*model.*looks like a "
                                         r"model state_dict"):
        trainer.load_checkpoint(tmp_path / "weights.npz")
    _assert_unchanged(trainer, before)


@pytest.mark.parametrize("field", ["model", "optimizer", "epoch", "rng"])
def test_a_checkpoint_missing_a_field_is_refused_and_changes_nothing(tmp_path, field) -> None:
    state = _trained(1).state_dict()
    del state[field]
    minidl.save(state, tmp_path / "c.npz")
    trainer = _trained(2)
    before = _trainer_state(trainer)
    with pytest.raises(ValueError, match=f"missing field.*{field}"):
        trainer.load_checkpoint(tmp_path / "c.npz")
    _assert_unchanged(trainer, before)


@pytest.mark.parametrize("bad", [
    {"epoch": -1}, {"epoch": "3"}, {"rng": "not json"}, {"history": "x"},
    {"train_loader": {"seed": "abc"}}, {"model": [1, 2]},
])
def test_a_malformed_checkpoint_field_is_a_clear_error(tmp_path, bad) -> None:
    state = _trained(1).state_dict()
    state.update(bad)
    minidl.save(state, tmp_path / "c.npz")
    trainer = _trained(2)
    before = _trainer_state(trainer)
    with pytest.raises(ValueError, match=f"checkpoint field '{next(iter(bad))}'"):
        trainer.load_checkpoint(tmp_path / "c.npz")
    _assert_unchanged(trainer, before)


def test_a_failure_half_way_through_the_load_rolls_everything_back(tmp_path) -> None:
    # The model part loads, then the optimizer part is refused (its parameter names do not
    # match): the model must be put back as it was.
    state = _trained(1, epochs=2).state_dict()
    group = state["optimizer"]["param_groups"][0]
    group["params"] = list(reversed(group["params"]))
    minidl.save(state, tmp_path / "c.npz")
    trainer = _trained(2)
    before = _trainer_state(trainer)
    with pytest.raises(ValueError, match="parameter names of group 0 differ"):
        trainer.load_checkpoint(tmp_path / "c.npz")
    _assert_unchanged(trainer, before)


# -------------------------------------------------------------------------------- callbacks


class Scripted(Callback):
    """Feeds a scripted metric into the epoch logs (before the callbacks under test)."""

    def __init__(self, key: str, values: list[float]) -> None:
        self.key, self.values = key, values

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        logs[self.key] = self.values[epoch - 1]
        self.trainer.history.epochs[-1][self.key] = self.values[epoch - 1]


def test_model_checkpoint_last_and_best(tmp_path) -> None:
    x, y = blobs(32)
    model = tiny_net()
    scores = [0.2, 0.5, 0.4, 0.7, 0.6]
    ckpt = ModelCheckpoint(tmp_path / "run", monitor="score", mode="max")
    saved: list[tuple[int, int | None]] = []

    class Spy(Callback):
        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            last = load(tmp_path / "run" / "last.npz")
            best = tmp_path / "run" / "best.npz"
            saved.append((last["epoch"], load(best)["epoch"] if best.exists() else None))
            leftovers = [p.name for p in (tmp_path / "run").iterdir()
                         if p.name not in ("last.npz", "best.npz")]
            assert leftovers == [], f"temporary files left behind: {leftovers}"

    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False,
                      callbacks=[Scripted("score", scores), ckpt, Spy()])
    trainer.fit(loader(x, y), epochs=5)
    assert saved == [(1, 1), (2, 2), (3, 2), (4, 4), (5, 4)]
    assert ckpt.best == 0.7
    last = load(tmp_path / "run" / "last.npz")
    np.testing.assert_array_equal(last["model"]["5.weight"], params(model)["5.weight"])
    assert [r["epoch"] for r in last["history"]] == [1, 2, 3, 4, 5]

    # A restarted run knows the best so far: a worse epoch must not overwrite best.npz.
    model2 = tiny_net()
    ckpt2 = ModelCheckpoint(tmp_path / "run", monitor="score", mode="max")
    trainer2 = Trainer(model2, optim.SGD(model2.parameters(), lr=0.01), progress=False,
                       callbacks=[Scripted("score", scores + [0.65]), ckpt2])
    trainer2.load_checkpoint(tmp_path / "run" / "last.npz")
    trainer2.fit(loader(x, y), epochs=6)
    assert load(tmp_path / "run" / "best.npz")["epoch"] == 4
    assert load(tmp_path / "run" / "last.npz")["epoch"] == 6


def test_model_checkpoint_every_and_validation() -> None:
    with pytest.raises(ValueError, match="every"):
        ModelCheckpoint("x", every=0)
    with pytest.raises(ValueError, match="mode"):
        ModelCheckpoint("x", mode="up")


def test_model_checkpoint_every_n_epochs(tmp_path) -> None:
    x, y = blobs(16)
    model = tiny_net()
    epochs_seen: list[int] = []

    class Spy(Callback):
        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            path = tmp_path / "last.npz"
            epochs_seen.append(load(path)["epoch"] if path.exists() else 0)

    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False,
                      callbacks=[ModelCheckpoint(tmp_path, every=2), Spy()])
    trainer.fit(loader(x, y), epochs=5)
    assert epochs_seen == [0, 2, 2, 4, 4]


def test_early_stopping_after_patience() -> None:
    x, y = blobs(16)
    model = tiny_net()
    stop = EarlyStopping(monitor="score", patience=2, mode="min")
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False,
                      callbacks=[Scripted("score", [1.0, 0.8, 0.9, 0.85, 0.5, 0.4]), stop])
    history = trainer.fit(loader(x, y), epochs=6)
    assert history["epoch"] == [1, 2, 3, 4]  # best at 2, no gain at 3 and 4: stop
    assert stop.best == 0.8 and stop.wait == 2

    # min_delta: improvements smaller than it do not count
    model = tiny_net()
    stop = EarlyStopping(monitor="score", patience=1, mode="max", min_delta=0.1)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False,
                      callbacks=[Scripted("score", [0.5, 0.55, 0.9]), stop])
    assert trainer.fit(loader(x, y), epochs=3)["epoch"] == [1, 2]


def test_early_stopping_replays_history_on_resume(tmp_path) -> None:
    x, y = blobs(16)
    scores = [1.0, 0.8, 0.9, 0.95, 0.7]
    model = tiny_net()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False,
                      callbacks=[Scripted("score", scores), EarlyStopping("score", 2)])
    trainer.fit(loader(x, y), epochs=3)
    trainer.save_checkpoint(tmp_path / "c.npz")
    model2 = tiny_net()
    trainer2 = Trainer(model2, optim.SGD(model2.parameters(), lr=0.01), progress=False,
                       callbacks=[Scripted("score", scores), EarlyStopping("score", 2)])
    trainer2.load_checkpoint(tmp_path / "c.npz")
    # Uninterrupted, the run stops after epoch 4 (no gain at 3 and 4); so must the resumed.
    assert trainer2.fit(loader(x, y), epochs=5)["epoch"] == [1, 2, 3, 4]


def test_early_stopping_errors() -> None:
    x, y = blobs(16)
    model = tiny_net()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False,
                      callbacks=[EarlyStopping("val_loss")])
    with pytest.raises(KeyError, match="val_loss.*pass validation data"):
        trainer.fit(loader(x, y), epochs=2)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="best")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_lr_scheduler_step_per_epoch_and_batch(tmp_path) -> None:
    x, y = blobs(32)
    model = tiny_net()
    opt = optim.SGD(model.parameters(), lr=1.0)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = Trainer(model, opt, scheduler=sched, progress=False)  # per epoch
    history = trainer.fit(loader(x, y, batch_size=8), epochs=3)
    assert history["lr"] == [1.0, 0.5, 0.25]  # the lr each epoch trained with
    assert opt.param_groups[0]["lr"] == 0.125

    model = tiny_net()
    opt = optim.SGD(model.parameters(), lr=1.0)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    # Given as a callback after a checkpoint: still stepped first, still checkpointed.
    trainer = Trainer(model, opt, callbacks=[ModelCheckpoint(tmp_path, every=10),
                                             LRSchedulerStep(sched, per="batch")],
                      progress=False)
    assert isinstance(trainer.callbacks[0], LRSchedulerStep)
    assert trainer.scheduler is sched and "scheduler" in trainer.state_dict()
    trainer.fit(loader(x, y, batch_size=8), epochs=1)  # 4 batches
    assert sched.last_epoch == 4 and opt.param_groups[0]["lr"] == 0.5 ** 4
    with pytest.raises(ValueError, match="per"):
        LRSchedulerStep(sched, per="step")


def test_callback_hook_order() -> None:
    x, y = blobs(16)
    calls: list[str] = []

    class Recorder(Callback):
        def on_train_begin(self) -> None:
            calls.append("train_begin")

        def on_epoch_begin(self, epoch: int) -> None:
            calls.append(f"epoch_begin {epoch}")

        def on_batch_end(self, step: int, logs: dict) -> None:
            assert isinstance(logs["loss"], Tensor)
            calls.append(f"batch {step}")

        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            calls.append(f"epoch_end {epoch} {sorted(logs)[:2]}")

        def on_train_end(self) -> None:
            calls.append("train_end")

    model = tiny_net()
    rec = Recorder()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), callbacks=[rec],
                      progress=False)
    assert rec.trainer is trainer
    trainer.fit(loader(x, y, batch_size=8), epochs=2)
    assert calls == ["train_begin", "epoch_begin 1", "batch 1", "batch 2",
                     "epoch_end 1 ['accuracy', 'epoch']", "epoch_begin 2", "batch 1",
                     "batch 2", "epoch_end 2 ['accuracy', 'epoch']", "train_end"]


# ---------------------------------------------------------------------------------- history


def test_history_json_csv_and_save(tmp_path) -> None:
    h = History()
    h.append({"epoch": 1, "loss": 2.0, "accuracy": 0.25})
    h.append({"epoch": 2, "loss": 1.5, "accuracy": 0.5, "val_loss": 1.7})
    assert len(h) == 2
    assert h["loss"] == [2.0, 1.5] and h["val_loss"] == [None, 1.7]
    assert h.keys() == ["epoch", "loss", "accuracy", "val_loss"]
    assert json.loads(h.to_json()) == h.epochs
    rows = list(csv.DictReader(io.StringIO(h.to_csv())))
    assert rows == [{"epoch": "1", "loss": "2.0", "accuracy": "0.25", "val_loss": ""},
                    {"epoch": "2", "loss": "1.5", "accuracy": "0.5", "val_loss": "1.7"}]
    h.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "history.json").read_text()) == h.epochs
    assert (tmp_path / "out" / "history.csv").read_bytes() == h.to_csv().encode()
    assert b"\r" not in (tmp_path / "out" / "history.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["history.csv",
                                                                    "history.json"]
    # the history copies its rows: later changes to the caller's dict do not leak in
    row = {"epoch": 3}
    h.append(row)
    row["epoch"] = 99
    assert h["epoch"][-1] == 3


def test_fit_history_roundtrips_through_files(tmp_path) -> None:
    x, y = blobs(32)
    model = tiny_net()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.01), progress=False)
    history = trainer.fit(loader(x, y), epochs=2, validation=loader(x, y, shuffle=False))
    history.save(tmp_path)
    assert json.loads((tmp_path / "history.json").read_text()) == history.epochs
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["val_accuracy"]) for r in rows] == history["val_accuracy"]


# ------------------------------------------------------------------------ evaluate, predict


class ModeSpy(nn.Module):
    """Wraps a model and records (training flag, grad enabled) at each forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):  # type: ignore[no-untyped-def]
        self.seen.append((self.training, is_grad_enabled()))
        return self.inner(x)


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_and_predict_run_in_eval_mode_without_grad(start_training: bool) -> None:
    x, y = blobs(40)
    model = ModeSpy(nn.Sequential(tiny_net(dropout=0.5)))
    model.train(start_training)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False)
    res = trainer.evaluate(loader(x, y, shuffle=False))
    assert model.seen and all(s == (False, False) for s in model.seen)
    assert model.training is start_training and model.inner[0][4].training is start_training
    assert 0.0 <= res["accuracy"] <= 1.0 and math.isfinite(res["loss"])

    model.seen.clear()
    logits = trainer.predict(loader(x, y, batch_size=16, shuffle=False))
    assert logits.shape == (40, 2) and isinstance(logits, np.ndarray)
    assert all(s == (False, False) for s in model.seen) and len(model.seen) == 3
    assert model.training is start_training
    # dropout is off in eval mode: predictions are deterministic and match evaluate
    again = predict(model, loader(x, y, batch_size=7, shuffle=False))
    np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-6)
    assert (logits.argmax(1) == y).mean() == pytest.approx(res["accuracy"])
    assert is_grad_enabled()


def test_predict_accepts_bare_batches_and_arrays() -> None:
    x, _ = blobs(10)
    xf = x.astype(np.float32) / 255
    model = tiny_net()
    batches = [Tensor(xf[:4]), Tensor(xf[4:])]
    a = predict(model, batches)
    b = predict(model, xf, batch_size=3)
    c = predict(model, Tensor(xf))
    assert a.shape == (10, 2)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_evaluate_accepts_probability_targets() -> None:
    x, y = blobs(16)
    xf = Tensor(x.astype(np.float32) / 255)
    onehot = Tensor(np.eye(2, dtype=np.float32)[y])
    model = tiny_net()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False)
    res_soft = trainer.evaluate([(xf, onehot)])
    res_hard = trainer.evaluate([(xf, Tensor(y))])
    assert res_soft["accuracy"] == res_hard["accuracy"]
    assert res_soft["loss"] == pytest.approx(res_hard["loss"], rel=1e-5)


# ---------------------------------------------------------------------------------- errors


def test_nan_loss_raises_helpful_error() -> None:
    x, y = blobs(64)
    xf = x.astype(np.float32) / 255
    xf[37] = np.nan  # sample 37 sits in batch 5 (batch size 8, no shuffle)
    model = tiny_net()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False,
                      log_every=3)
    train = DataLoader((xf, y), batch_size=8, shuffle=False)
    with pytest.raises(FloatingPointError,
                       match=r"loss became nan at epoch 1, batch 5 of 8.*learning rate"):
        trainer.fit(train, epochs=1)
    assert len(trainer.history) == 0


def test_diverging_lr_raises_floating_point_error() -> None:
    x, y = blobs(64)
    model = tiny_net()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=1e30), progress=False)
    with pytest.raises(FloatingPointError, match=r"lr 1e\+30"):
        with np.errstate(all="ignore"):
            trainer.fit(loader(x, y), epochs=3)


def test_nan_in_the_last_partial_log_interval_is_caught() -> None:
    """A loader without __len__: the last losses are read after the loop; still checked."""
    x, y = blobs(16)
    xf = x.astype(np.float32) / 255
    xf[15] = np.inf

    class NoLen:
        def __iter__(self):
            for i in range(0, 16, 4):
                yield Tensor(xf[i:i + 4]), Tensor(y[i:i + 4])

    model = tiny_net()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False,
                      log_every=100)
    with pytest.raises(FloatingPointError, match=r"batch 4;"):
        with np.errstate(all="ignore"):
            trainer.fit(NoLen(), epochs=1)


def test_empty_loader_raises_clear_error() -> None:
    x, y = blobs(4)
    model = tiny_net()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), progress=False)
    empty = DataLoader((x, y), batch_size=8, drop_last=True, transform=T.ToFloat())
    with pytest.raises(ValueError, match="produced no batches.*drop_last"):
        trainer.fit(empty, epochs=1)
    with pytest.raises(ValueError, match="evaluate: the loader produced no batches"):
        trainer.evaluate([])
    with pytest.raises(ValueError, match="predict: the loader produced no batches"):
        trainer.predict([])


def test_a_slow_first_step_is_explained_once(monkeypatch, capsys):
    """A first step slower than SLOW_FIRST_STEP_S (numba compiling) gets one line of
    explanation; fast first steps and later epochs get none."""
    import minidl.train.trainer as trainer_mod

    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    y = np.zeros(16, np.int64)
    model = nn.Linear(3, 2)
    monkeypatch.setattr(trainer_mod, "SLOW_FIRST_STEP_S", -1.0)  # every first step is "slow"
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).fit(
        (x, y), epochs=2, batch_size=8)
    out = capsys.readouterr().out
    assert out.count("numba compiled minidl's CPU kernels") == 1, out
    monkeypatch.setattr(trainer_mod, "SLOW_FIRST_STEP_S", 1e9)
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).fit(
        (x, y), epochs=1, batch_size=8)
    assert "numba" not in capsys.readouterr().out


def test_fit_keras_style_x_y_equals_the_pair_form(rng) -> None:
    # fit(x, y, epochs=..., batch_size=...) as in Keras trains exactly as fit((x, y), ...)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = rng.integers(0, 2, 32)
    runs = []
    for keras in (True, False):
        minidl.manual_seed(0)
        model = nn.Linear(3, 2)
        t = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False)
        h = t.fit(x, y, epochs=2, batch_size=8) if keras else t.fit((x, y), epochs=2,
                                                                     batch_size=8)
        runs.append(h["loss"])
    assert runs[0] == runs[1]
    with pytest.raises(TypeError, match="with y, the first argument must be the input"):
        t.fit(DataLoader((x, y), batch_size=8), y, epochs=1)
