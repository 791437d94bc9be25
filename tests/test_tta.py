"""Test-time augmentation (``minidl.train.tta``): levels 0/1/2 against averages computed by
hand with a linear model in float64, the shifted views against np.pad, eval mode / no_grad /
training-flag restore, batching, ``Trainer.evaluate(tta=...)`` and ``Trainer.predict``,
errors."""

from __future__ import annotations

import numpy as np
import pytest

from minidl import nn, optim
from minidl.autograd import Tensor, is_grad_enabled
from minidl.backend import to_device, to_numpy
from minidl.data import DataLoader
from minidl.train import Trainer, predict, tta_logits, tta_predict


def _linear(c=2, h=3, w=4, k=3, seed=0, device="cpu") -> nn.Sequential:
    """Flatten -> Linear in float64 with random weights: model(v) = v.reshape(N, -1) @ W.T + b."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k)).double()
    rng = np.random.default_rng(seed)
    model[1].weight.data[...] = rng.normal(size=(k, c * h * w))
    model[1].bias.data[...] = rng.normal(size=k)
    return model.to(device)


def _weights(model):
    return to_numpy(model[1].weight.data), to_numpy(model[1].bias.data)


def _hand(model, x, level):
    """The documented formula, written out in NumPy."""
    weight, bias = _weights(model)

    def f(v):
        return v.reshape(len(v), -1) @ weight.T + bias

    def l1(v):
        return (f(v) + f(v[..., ::-1])) / 2

    if level == 0:
        return f(x)
    if level == 1:
        return l1(x)
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    t1, t2 = padded[:, :, 0:h, 0:w], padded[:, :, 2:h + 2, 2:w + 2]
    return 0.5 * l1(x) + 0.5 * (l1(t1) + l1(t2)) / 2


def _images(n=5, c=2, h=3, w=4, seed=1):
    return np.random.default_rng(seed).normal(size=(n, c, h, w))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_levels_equal_hand_computed_averages(level, device):
    model = _linear(device=device)
    x = _images()
    got = tta_predict(model, x, level=level, batch_size=2)
    assert isinstance(got, np.ndarray) and got.shape == (5, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, _hand(model, x, level), rtol=1e-12, atol=1e-12)
    one_batch = tta_logits(model, Tensor(to_device(x, device)), level)  # builds a graph
    np.testing.assert_allclose(to_numpy(one_batch.detach().data), got, rtol=1e-12, atol=1e-12)


def test_level0_is_predict_and_levels_differ():
    model = _linear()
    x = _images()
    np.testing.assert_array_equal(tta_predict(model, x, level=0), predict(model, x))
    l0, l1, l2 = (tta_predict(model, x, level=k) for k in (0, 1, 2))
    assert not np.allclose(l0, l1) and not np.allclose(l1, l2)
    # the default level is 2
    np.testing.assert_array_equal(tta_predict(model, x), l2)


def test_shifted_views_are_one_pixel_diagonal_shifts_with_reflected_borders():
    """A model that returns its input's pixels shows exactly which views level 2 averages."""
    views = []

    def spy(t):
        views.append(np.array(t.data))
        return Tensor(t.data.reshape(len(t.data), -1))

    x = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4)
    tta_logits(spy, x, level=2)
    assert len(views) == 6
    plain, mirror, down_right, down_right_m, up_left, up_left_m = (v[0, 0] for v in views)
    np.testing.assert_array_equal(plain, x[0, 0])
    np.testing.assert_array_equal(mirror, x[0, 0, :, ::-1])
    np.testing.assert_array_equal(down_right[1:, 1:], x[0, 0, :-1, :-1])  # moved by (+1, +1)
    np.testing.assert_array_equal(up_left[:-1, :-1], x[0, 0, 1:, 1:])     # moved by (-1, -1)
    assert down_right[0].tolist() == [5, 4, 5, 6]  # reflected: row 1 then column 1, no repeat
    np.testing.assert_array_equal(down_right_m, down_right[:, ::-1])
    np.testing.assert_array_equal(up_left_m, up_left[:, ::-1])


def test_mirror_symmetric_images_are_unchanged_by_level1():
    model = _linear(w=4)
    x = _images(w=2)
    x = np.concatenate([x, x[..., ::-1]], axis=-1)  # each row reads a b b a
    np.testing.assert_allclose(tta_predict(model, x, level=1), tta_predict(model, x, level=0),
                               rtol=1e-12, atol=1e-12)


class ModeSpy(nn.Module):
    """Records (training flag, grad enabled, batch size) at each forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool, int]] = []

    def forward(self, x):  # type: ignore[no-untyped-def]
        self.seen.append((self.training, is_grad_enabled(), x.shape[0]))
        return self.inner(x)


@pytest.mark.parametrize("start_training", [True, False])
@pytest.mark.parametrize("level, passes", [(0, 1), (1, 2), (2, 6)])
def test_eval_mode_no_grad_batched_and_training_flag_restored(start_training, level, passes):
    model = ModeSpy(nn.Sequential(_linear(), nn.Dropout(0.5)))
    model.train(start_training)
    x = _images(n=7)
    out = tta_predict(model, x, level=level, batch_size=3)
    assert out.shape == (7, 3)
    assert len(model.seen) == 3 * passes  # batches of 3, 3, 1; `passes` views each
    assert [s[2] for s in model.seen] == [3] * passes + [3] * passes + [1] * passes
    assert all(s[:2] == (False, False) for s in model.seen)
    assert model.training is start_training and model.inner[1].training is start_training
    assert is_grad_enabled()
    # dropout was off: the result equals the formula, whatever the batch size
    np.testing.assert_allclose(out, _hand(model.inner[0], x, level), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tta_predict(model, x, level=level, batch_size=100), out,
                               rtol=1e-12, atol=1e-12)


def test_training_flag_restored_after_an_error():
    model = _linear()
    model.train()
    with pytest.raises(ValueError, match="tta_logits"):
        tta_predict(model, _images(h=1), level=2)
    assert model.training


def test_accepts_tensors_and_loaders():
    model = _linear()
    x = _images(n=6)
    ref = tta_predict(model, x, level=2)
    np.testing.assert_allclose(tta_predict(model, Tensor(x), level=2), ref, rtol=1e-12)
    batches = DataLoader((x, np.zeros(6, np.int64)), batch_size=4)
    np.testing.assert_allclose(tta_predict(model, batches, level=2), ref, rtol=1e-12)
    np.testing.assert_allclose(tta_predict(model, [Tensor(x[:2]), Tensor(x[2:])], level=2),
                               ref, rtol=1e-12)


def test_float32_stays_float32():
    model = nn.Sequential(nn.Flatten(), nn.Linear(24, 3))
    out = tta_predict(model, _images().astype(np.float32), level=2)
    assert out.dtype == np.float32


def _softmax_ce(logits, y):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


@pytest.mark.parametrize("level", [0, 1, 2])
def test_trainer_evaluate_and_predict_with_tta(level):
    model = _linear()
    model.train()
    x = _images(n=12)
    y = np.random.default_rng(2).integers(0, 3, 12)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False)
    logits = _hand(model, x, level)
    for data in ((x, y), DataLoader((x, y), batch_size=5)):
        res = trainer.evaluate(data, batch_size=5, tta=level)
        assert res["accuracy"] == pytest.approx((logits.argmax(1) == y).mean())
        assert res["loss"] == pytest.approx(_softmax_ce(logits, y), rel=1e-9)
    assert model.training
    np.testing.assert_allclose(trainer.predict(x, tta=level), logits, rtol=1e-12, atol=1e-12)
    if level == 0:
        assert trainer.evaluate((x, y)) == trainer.evaluate((x, y), tta=0)


def test_errors_name_the_function_and_the_argument():
    model = _linear()
    x = _images()
    for bad in (3, -1):
        with pytest.raises(ValueError, match=rf"tta_predict: TTA level must be 0, 1 or 2, "
                                             rf"got {bad}"):
            tta_predict(model, x, level=bad)
    for bad in (1.0, "2", True, None):
        with pytest.raises(TypeError, match="tta_predict: TTA level must be an int"):
            tta_predict(model, x, level=bad)
    with pytest.raises(ValueError, match="tta_logits: TTA level must be 0, 1 or 2"):
        tta_logits(model, x, 5)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False)
    with pytest.raises(ValueError, match="Trainer.evaluate: TTA level must be 0, 1 or 2"):
        trainer.evaluate((x, np.zeros(5, np.int64)), tta=4)
    with pytest.raises(TypeError, match="Trainer.predict: TTA level must be an int"):
        trainer.predict(x, tta="2")
    with pytest.raises(ValueError, match=r"tta_logits: TTA level 1 mirrors images and needs a "
                                         r"batch of shape \(N, C, H, W\), got shape \(5, 24\)"):
        tta_predict(nn.Linear(24, 3), x.reshape(5, 24), level=1)
    with pytest.raises(ValueError, match=r"TTA level 2 reflect-pads by one pixel and needs "
                                         r"H, W >= 2, got shape \(5, 2, 3, 1\)"):
        tta_predict(_linear(w=1), _images(w=1), level=2)
    # level 0 is plain inference: any input shape the model takes
    assert tta_predict(nn.Linear(24, 3).double(), x.reshape(5, 24), level=0).shape == (5, 3)
    with pytest.raises(ValueError, match="tta_predict: the loader produced no batches"):
        tta_predict(model, [], level=1)
