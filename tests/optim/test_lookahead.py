"""``Lookahead``: exact values of the moving average over several updates (parameters *and*
batch-norm running statistics), the two ends of ``decay``, checkpoint resume, dtype and
errors."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.nn as nn
from minidl.optim import SGD, Lookahead


def _model(dtype=np.float64) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).to(dtype=dtype)
    model[1].weight.requires_grad_(False)  # a frozen parameter is averaged too (stays put)
    return model


def _floats(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items() if v.dtype.kind == "f"}


def _perturb(model: nn.Module, rng: np.random.Generator) -> None:
    """Stand-in for some optimizer steps and forward passes: move every trained value."""
    for name, t in model.state_dict().items():
        if t.dtype.kind == "f" and name != "1.weight":
            t.data[...] += rng.normal(size=t.shape)


FLOAT_NAMES = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]


def test_exact_values_over_several_updates(rng) -> None:
    model = _model()
    la = Lookahead(model)
    ema = _floats(model)
    assert list(ema) == FLOAT_NAMES and list(la.state_dict()) == FLOAT_NAMES
    for decay in (0.9, 0.5, 0.0, 0.75, 1.0):
        _perturb(model, rng)
        now = _floats(model)
        la.update(decay)
        for k in ema:  # the same float64 arithmetic as the docstring's formula
            ema[k] = ema[k] + (1.0 - decay) * (now[k] - ema[k])
        for k, v in _floats(model).items():
            np.testing.assert_array_equal(v, ema[k], err_msg=f"{decay}: {k}")
            np.testing.assert_array_equal(la.state_dict()[k], ema[k], err_msg=f"{decay}: {k}")
    assert model[1].weight.tolist() == [1.0, 1.0]  # frozen: the average of a constant
    assert int(model[1].num_batches_tracked.item()) == 0


def test_decay_zero_keeps_the_model_and_decay_one_restores_the_average(rng) -> None:
    model = _model()
    la = Lookahead(model)
    start = _floats(model)
    _perturb(model, rng)
    moved = _floats(model)
    la.update(0.0)  # the average jumps to the model; the model is unchanged
    for k, v in _floats(model).items():
        np.testing.assert_array_equal(v, moved[k], err_msg=k)
        np.testing.assert_array_equal(la.state_dict()[k], moved[k], err_msg=k)
    assert any(not np.array_equal(moved[k], start[k]) for k in start)
    _perturb(model, rng)
    la.update(1.0)  # the average stays; the model goes back onto it
    for k, v in _floats(model).items():
        np.testing.assert_array_equal(v, moved[k], err_msg=k)


def test_buffers_follow_the_average_and_integers_are_left_alone(rng) -> None:
    model = _model(np.float32)
    la = Lookahead(model)
    x = minidl.tensor(rng.normal(size=(8, 3)).astype(np.float32) * 3 + 1)
    before = _floats(model)
    model(x)  # training-mode forward: running statistics move
    after = _floats(model)
    assert not np.array_equal(after["1.running_mean"], before["1.running_mean"])
    la.update(0.5)
    for k in ("1.running_mean", "1.running_var"):
        want = before[k] + np.float32(0.5) * (after[k] - before[k])
        np.testing.assert_allclose(model.state_dict()[k].numpy(), want, rtol=1e-6)
        assert model.state_dict()[k].dtype == np.float32  # no float64 creeps in
    assert int(model[1].num_batches_tracked.item()) == 1
    assert all(v.dtype == np.float32 for v in la.state_dict().values())


def test_resume_from_a_checkpoint_gives_the_same_run(tmp_path, rng) -> None:
    def run(model, la, seed, steps):
        g = np.random.default_rng(seed)
        for i in range(steps):
            _perturb(model, g)
            la.update(0.8 if i % 2 else 0.6)

    minidl.manual_seed(3)
    straight = _model()
    la = Lookahead(straight)
    run(straight, la, 0, 3)
    run(straight, la, 1, 3)

    minidl.manual_seed(3)
    first = _model()
    la1 = Lookahead(first)
    run(first, la1, 0, 3)
    minidl.save({"model": first.state_dict(), "lookahead": la1.state_dict()},
                str(tmp_path / "ck.npz"))
    ck = minidl.load(str(tmp_path / "ck.npz"))
    minidl.manual_seed(99)  # a different fresh model: everything comes from the file
    resumed = _model()
    resumed.load_state_dict(ck["model"])
    la2 = Lookahead(resumed)
    la2.load_state_dict(ck["lookahead"])
    run(resumed, la2, 1, 3)
    for k, v in _floats(straight).items():
        np.testing.assert_array_equal(_floats(resumed)[k], v, err_msg=k)
        np.testing.assert_array_equal(la2.state_dict()[k], la.state_dict()[k], err_msg=k)


def test_state_dict_is_a_snapshot_and_load_leaves_the_model(rng) -> None:
    model = _model()
    la = Lookahead(model)
    snap = la.state_dict()
    _perturb(model, rng)
    la.update(0.0)
    assert not np.array_equal(snap["0.weight"], la.state_dict()["0.weight"])
    now = _floats(model)
    la.load_state_dict(snap)
    for k, v in _floats(model).items():
        np.testing.assert_array_equal(v, now[k], err_msg=k)
    la.update(1.0)
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), snap["0.weight"])


def test_with_an_optimizer_and_a_cast_model(rng) -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    la = Lookahead(model)
    model.double()  # after the Lookahead was made: the average follows on the next update
    x = minidl.tensor(rng.normal(size=(8, 3)))
    for step in range(1, 5):
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()
        if step % 2 == 0:
            la.update(0.5)
    assert all(v.dtype == np.float64 for v in la.state_dict().values())
    assert all(p.dtype == np.float64 for p in model.parameters())
    for k, v in _floats(model).items():
        np.testing.assert_array_equal(la.state_dict()[k], v, err_msg=k)  # model == average
    assert "Lookahead(Sequential, 6 averaged entries)" == repr(la)


def test_errors() -> None:
    model = _model()
    la = Lookahead(model)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"Lookahead.update: decay must be in \[0, 1\]"):
            la.update(bad)
    with pytest.raises(TypeError, match="Lookahead: model must be an nn.Module, got dict"):
        Lookahead({})
    sd = la.state_dict()
    del sd["1.running_var"]
    sd["extra"] = np.zeros(2)
    with pytest.raises(KeyError, match=r"state dict's keys do not match .*missing: "
                                       r"\['1.running_var'\]; unexpected: \['extra'\]"):
        la.load_state_dict(sd)
    sd = la.state_dict()
    sd["0.bias"] = np.zeros(5)
    before = la.state_dict()
    with pytest.raises(ValueError, match=r"'0.bias' has shape \(5,\), the model's has \(2,\)"):
        la.load_state_dict(sd)
    for k, v in la.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing changed
    with pytest.raises(TypeError, match="expected a mapping"):
        la.load_state_dict([1, 2])
    model.register_buffer("scale", minidl.ones(2, dtype=np.float64))
    with pytest.raises(KeyError, match=r"update: the model's floating state entries do not "
                                       r"match .* unexpected: \['scale'\]"):
        la.update(0.5)


def test_on_each_device(device, rng) -> None:
    model = _model(np.float32).to(device)
    la = Lookahead(model)
    start = {k: minidl.backend.to_numpy(v.data).copy() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    for t in params.values():
        t.data[...] += 1.0
    la.update(0.25)
    for k, v in model.state_dict().items():
        assert v.device == minidl.backend.Device(device), k
        if v.dtype.kind == "f":
            moved = start[k] + (1.0 if k in params else 0.0)  # buffers did not move
            np.testing.assert_allclose(minidl.backend.to_numpy(v.data),
                                       start[k] + 0.75 * (moved - start[k]), rtol=1e-6)
    assert all(isinstance(v, np.ndarray) for v in la.state_dict().values())
