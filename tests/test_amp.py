"""Mixed precision: autocast casts GEMM inputs to float16 and sensitive ops to float32,
parameters and their gradients stay float32, GradScaler scales, unscales, skips overflowed
steps and adapts the scale."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import nn, optim
from minidl.amp import GradScaler, autocast
from minidl.models import resnet9, seed_cnn


def test_autocast_dtypes_per_op():
    x = minidl.randn(2, 3, 8, 8)
    w = minidl.randn(4, 3, 3, 3, requires_grad=True)
    with autocast("float16"):
        y = F.conv2d(x, w, padding=1)
        assert y.dtype == np.float16
        z = F.batch_norm(y, None, None, training=True)
        assert z.dtype == np.float32
        s = y + z  # mixed precisions compute in the wider one inside autocast
        assert s.dtype == np.float32
        loss = F.softmax_cross_entropy(F.linear(s.flatten(1), minidl.randn(5, 256)),
                                       minidl.tensor([0, 1]))
        assert loss.dtype == np.float32
    loss.backward()
    assert w.grad.dtype == np.float32  # master weights get float32 gradients
    with pytest.raises(TypeError, match="dtype mismatch"):
        _ = y + z  # outside autocast, mixing stays an error


def test_autocast_refuses_bfloat16_and_can_be_disabled():
    with pytest.raises(TypeError, match="bfloat16"):
        autocast("bfloat16")
    with autocast("float16", enabled=False):
        assert F.linear(minidl.randn(2, 3), minidl.randn(4, 3)).dtype == np.float32


@pytest.mark.parametrize("make", [seed_cnn, lambda: resnet9(width=4)], ids=["seed", "resnet9"])
def test_mixed_precision_training_tracks_float32(make):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 16)

    def run(amp_on: bool) -> tuple[list, nn.Module]:
        minidl.manual_seed(0)
        model = make()
        opt = optim.Adam(model.parameters(), lr=1e-3)
        scaler = GradScaler(enabled=amp_on)
        losses = []
        for _ in range(6):
            with autocast("float16", enabled=amp_on):
                loss = F.softmax_cross_entropy(model(minidl.tensor(images)),
                                               minidl.tensor(labels))
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
        return losses, model

    full, _ = run(False)
    half, model = run(True)
    assert half[-1] < half[0]
    np.testing.assert_allclose(half, full, rtol=0.05)
    for p in model.parameters():
        assert p.dtype == np.float32 and p.grad.dtype == np.float32


def test_grad_scaler_skips_overflow_and_adapts_scale():
    p = nn.Parameter(minidl.tensor([1.0, 2.0]))
    opt = optim.SGD([p], lr=0.1)
    scaler = GradScaler(init_scale=4.0, growth_interval=2)
    p.grad = minidl.tensor([np.inf, 1.0])
    assert scaler.step(opt) is False  # skipped
    scaler.update()
    assert p.tolist() == [1.0, 2.0] and scaler.scale_value == 2.0
    for _ in range(2):
        p.grad = minidl.tensor([2.0, 2.0])  # = true gradient 1.0 times scale 2.0
        assert scaler.step(opt) is True
        scaler.update()
    np.testing.assert_allclose(p.detach().numpy(), [0.8, 1.8], rtol=1e-6)
    assert scaler.scale_value == 4.0  # grew after growth_interval clean steps
    state = scaler.state_dict()
    other = GradScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_trainer_mixed_precision_option(tmp_path):
    from minidl.train import Trainer

    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    minidl.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.05), progress=False,
                      mixed_precision="float16")
    history = trainer.fit((x, y), epochs=4, batch_size=16)
    assert history["loss"][-1] < history["loss"][0]
    assert all(p.dtype == np.float32 for p in model.parameters())
    trainer.save_checkpoint(tmp_path / "c.npz")
    other = Trainer(model, optim.Adam(model.parameters(), lr=0.05), progress=False,
                    mixed_precision="float16")
    other.load_checkpoint(tmp_path / "c.npz")
    assert other.scaler.state_dict() == trainer.scaler.state_dict()


def test_grad_scaler_unscale_replaces_shared_or_readonly_grads():
    # After backward(create_graph=True) the gradient of a + b is one array handed to both
    # a and b: dividing it in place would unscale it twice.
    a = nn.Parameter(minidl.tensor([1.0, 2.0]))
    b = nn.Parameter(minidl.tensor([3.0, 4.0]))
    c = minidl.tensor([5.0, 7.0])
    scaler = GradScaler(init_scale=4.0)
    scaler.scale(((a + b) * c).sum()).backward(create_graph=True)
    assert not scaler.unscale_(optim.SGD([a, b], lr=0.1))
    np.testing.assert_array_equal(a.grad.numpy(), [5.0, 7.0])
    np.testing.assert_array_equal(b.grad.numpy(), [5.0, 7.0])
    # p.sum()'s gradient is a read-only broadcast view of the scale
    p = nn.Parameter(minidl.tensor([1.0, 2.0, 3.0]))
    scaler = GradScaler(init_scale=8.0)
    scaler.scale(p.sum()).backward(create_graph=True)
    assert scaler.step(optim.SGD([p], lr=0.5))
    np.testing.assert_array_equal(p.grad.numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(p.detach().numpy(), [0.5, 1.5, 2.5])


def test_autocast_is_thread_local():
    import threading

    entered, release = threading.Event(), threading.Event()
    seen = []

    def worker():
        with autocast("float16"):
            entered.set()
            release.wait(5)
            seen.append(minidl.amp.autocast_dtype())

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert entered.wait(5)
        assert minidl.amp.autocast_dtype() is None
        w = minidl.randn(3, 4)
        assert F.linear(minidl.randn(2, 4), w).dtype == np.float32
    finally:
        release.set()
        t.join(5)
    assert seen == [np.float16]
