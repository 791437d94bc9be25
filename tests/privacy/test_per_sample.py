"""PerSampleGradients: per-example gradients, norms (ghost and materialised) and clipped
sums equal a loop of single-example backward passes, for every layer with a rule; the
path choice, chunking, and the errors for models without a per-sample gradient."""

from __future__ import annotations

import numpy as np
import pytest
from privacy_helpers import close, loop_reference, ref_norms, trainable

import minidl
import minidl.nn as nn
import minidl.privacy.per_sample as per_sample
from minidl.privacy import PerSampleGradients, check_model
from minidl.privacy.per_sample import choose_path

B = 5  # examples per test batch


def batch_backward(model, x, y, loss_reduction="mean"):
    """Attach PerSampleGradients, run one batch forward and backward, return it."""
    ps = PerSampleGradients(model, loss_reduction=loss_reduction)
    loss = nn.CrossEntropyLoss(reduction=loss_reduction)
    loss(model(minidl.tensor(x)), minidl.tensor(y)).backward()
    return ps


def data(rng, *shape, classes=3):
    return rng.standard_normal((B, *shape)), rng.integers(0, classes, B)


def randomize_affine(model, rng, variant="generic"):
    """Norm layers start at weight 1, bias 0: make them generic. The rule has two ways to
    the weight's gradient: from the output (``xhat = (y - bias) / weight``) when no weight
    is zero, else from the rebuilt normalized input; ``"zero"`` puts a 0 in the weight,
    ``"frozen-bias"`` freezes the bias (still used to undo the shift)."""
    for m in model.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.uniform(-0.5, 0.5, m.bias.shape)
            if variant == "zero":
                m.weight.data.reshape(-1)[1] = 0.0
            elif variant == "frozen-bias":
                m.bias.requires_grad = False


AFFINE_VARIANTS = ["generic", "zero", "frozen-bias"]


def check_exact(model, x, y):
    """Per-sample grads, norms and clipped sums against the loop; returns the attachment."""
    ref = loop_reference(model, x, y)
    ps = batch_backward(model, x, y)
    grads = ps.per_sample_grads()
    assert set(grads) == {id(p) for _, p in trainable(model)}
    for name, p in trainable(model):
        assert grads[id(p)].shape == (len(x), *p.shape), name
        close(grads[id(p)], ref[id(p)], name)
    close(ps.norms(), ref_norms(ref), "norms")
    scale = np.linspace(0.2, 1.0, len(x))
    sums = ps.clipped_sum(scale)
    for name, p in trainable(model):
        close(sums[id(p)], np.tensordot(scale, ref[id(p)], axes=1), f"clipped sum {name}")
    return ps


# ---------------------------------------------------------------------------------------
# exactness, layer by layer


@pytest.mark.parametrize("bias", [True, False])
def test_linear_2d(rng, bias):
    model = nn.Sequential(nn.Linear(4, 6, bias=bias), nn.Tanh(), nn.Linear(6, 3)).double()
    check_exact(model, *data(rng, 4))


def test_linear_3d_positions(rng):
    # a Linear over (B, T, F): each example's gradient sums over its T positions
    t = 4
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Flatten(), nn.Linear(t * 6, 3)).double()
    check_exact(model, *data(rng, t, 5))


def test_linear_relu_linear(rng):
    # a separate ReLU module after a Linear: the rule sees the Linear's pre-ReLU gradient
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    check_exact(model, *data(rng, 4))


CONV_CASES = [
    dict(kernel_size=3),
    dict(kernel_size=1),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=(3, 2), padding="same"),            # even width: odd total padding
    dict(kernel_size=3, dilation=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, groups=2),
    dict(kernel_size=(2, 3), stride=2, dilation=2, padding=1, groups=2, bias=False),
    dict(kernel_size=3, padding=1, activation="relu"),
    dict(kernel_size=3, padding="same", dilation=2, groups=2, activation="relu"),
    dict(kernel_size=(3, 2), stride=2, bias=False, activation="relu"),
]


@pytest.mark.parametrize("kw", CONV_CASES, ids=lambda kw: ",".join(
    f"{k}={v}" for k, v in kw.items()))
def test_conv2d_geometries(rng, kw):
    conv = nn.Conv2d(4, 6, **kw)
    oh, ow = conv(minidl.zeros(1, 4, 7, 6)).shape[2:]
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(6 * oh * ow, 3)).double()
    if kw.get("activation") == "relu":  # the fused ReLU must really cut some gradients
        with minidl.no_grad():
            y = conv(minidl.tensor(rng.standard_normal((B, 4, 7, 6)))).numpy()
        assert (y == 0).any() and (y > 0).any()
    check_exact(model, *data(rng, 4, 7, 6))


def test_conv_before_max_pool(rng):
    # Sequential fuses Conv2d -> ReLU -> MaxPool2d unless a hook watches the conv; the
    # attachment's hook must turn that off so that the conv's output gradient exists
    model = nn.Sequential(nn.Conv2d(2, 4, 3, activation="relu"), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).double()
    check_exact(model, *data(rng, 2, 8, 8))


@pytest.mark.parametrize("variant", AFFINE_VARIANTS)
def test_group_norm(rng, variant):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).double()
    randomize_affine(model, rng, variant)
    check_exact(model, *data(rng, 2, 6, 6))


@pytest.mark.parametrize("variant", AFFINE_VARIANTS)
def test_group_norm_on_features(rng, variant):
    # GroupNorm on (B, C): no spatial axes to sum over
    model = nn.Sequential(nn.Linear(4, 6), nn.GroupNorm(3, 6), nn.Tanh(),
                          nn.Linear(6, 3)).double()
    randomize_affine(model, rng, variant)
    check_exact(model, *data(rng, 4))


@pytest.mark.parametrize("variant", AFFINE_VARIANTS)
@pytest.mark.parametrize("shape", [(7,), (3, 7)], ids=["(B,T,F)-over-F", "(B,T,F)-over-TF"])
def test_layer_norm(rng, shape, variant):
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(shape), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 7, 3)).double()
    randomize_affine(model, rng, variant)
    check_exact(model, *data(rng, 3, 5))


def test_layer_norm_2d_input(rng):
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3)).double()
    randomize_affine(model, rng)
    check_exact(model, *data(rng, 5))


def test_examples_do_not_see_each_other(rng):
    # what the clipping bound rests on: changing example 1 leaves every other example's
    # gradients unchanged (a batch norm in training mode would fail this)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, activation="relu"), nn.GroupNorm(2, 4),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    randomize_affine(model, rng)
    x, y = data(rng, 2, 6, 6)
    ps = PerSampleGradients(model)
    runs = []
    for xs in (x, np.concatenate([x[:1], 3 * x[1:2] + 1, x[2:]])):
        nn.CrossEntropyLoss()(model(minidl.tensor(xs)), minidl.tensor(y)).backward()
        runs.append(ps.per_sample_grads())
        ps.clear()
        model.zero_grad()
    for k in runs[0]:
        others = [0, 2, 3, 4]
        close(runs[1][k][others], runs[0][k][others])
        assert not np.allclose(runs[1][k][1], runs[0][k][1])


class Shared(nn.Module):
    """The same Linear applied twice (weight sharing), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.fc(self.fc(x).tanh()))


def test_weight_sharing(rng):
    # each example's gradient of a shared weight is the sum over both uses
    model = Shared().double()
    ps = check_exact(model, *data(rng, 4))
    assert len(ps._records) == 3  # fc twice, head once


def test_shared_conv_at_two_resolutions(rng):
    class TwoScales(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.pool = nn.AvgPool2d(2)
            self.head = nn.Linear(2 * 6 * 6 + 2 * 3 * 3, 3)

        def forward(self, x):
            a = self.conv(x)
            b = self.conv(self.pool(a))
            return self.head(minidl.functional.concatenate(
                [a.flatten(1), b.flatten(1)], axis=1))

    check_exact(TwoScales().double(), *data(rng, 2, 6, 6))


@pytest.mark.parametrize("frozen", [0, 2])
def test_frozen_layer_is_left_out(rng, frozen):
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(),
                          nn.Linear(5, 3)).double()
    model[frozen].requires_grad_(False)
    ps = check_exact(model, *data(rng, 4))
    grads = ps.per_sample_grads()
    assert id(model[frozen].weight) not in grads and id(model[frozen].bias) not in grads
    assert len(grads) == 4
    assert model[frozen] not in ps.layers


def test_frozen_bias_only(rng):
    model = nn.Sequential(nn.Linear(4, 3)).double()
    model[0].bias.requires_grad = False
    ps = check_exact(model, *data(rng, 4))
    assert list(ps.per_sample_grads()) == [id(model[0].weight)]


def test_sum_reduction(rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double()
    x, y = data(rng, 2, 6, 6)
    ref = loop_reference(model, x, y)
    ps = batch_backward(model, x, y, loss_reduction="sum")
    grads = ps.per_sample_grads()
    for name, p in trainable(model):
        close(grads[id(p)], ref[id(p)], name)
    close(ps.norms(), ref_norms(ref))


def test_reduction_mismatch_scales_by_batch(rng):
    # a mean loss declared as "sum": every per-example gradient comes out 1/B of its own,
    # which is what loss_reduction exists to undo
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = data(rng, 4)
    ref = loop_reference(model, x, y)
    ps = PerSampleGradients(model, loss_reduction="sum")
    nn.CrossEntropyLoss()(model(minidl.tensor(x)), minidl.tensor(y)).backward()
    close(ps.norms(), ref_norms(ref) / B)


# ---------------------------------------------------------------------------------------
# ghost norms and the path choice


def conv_model():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3,
                         stride=2, groups=2), nn.Flatten(), nn.Linear(6 * 3 * 3, 3)).double()


@pytest.mark.parametrize("path", ["ghost", "per-sample"])
def test_forced_path_norms_and_clipped_sums(rng, monkeypatch, path):
    monkeypatch.setattr(per_sample, "choose_path", lambda *a, **k: path)
    model = conv_model()
    x, y = data(rng, 2, 8, 8)
    ref = loop_reference(model, x, y)
    ps = batch_backward(model, x, y)
    norms = ps.norms()
    assert norms.dtype == np.float64 and norms.shape == (B,)
    close(norms, ref_norms(ref))
    assert ps.paths == {"0": path, "2": path, "4": path}
    scale = np.array([1.0, 0.3, 0.0, 0.7, 0.05])
    sums = ps.clipped_sum(scale)
    for name, p in trainable(model):
        close(sums[id(p)], np.tensordot(scale, ref[id(p)], axes=1), name)


def test_ghost_equals_materialised(rng, monkeypatch):
    model = conv_model()
    x, y = data(rng, 2, 8, 8)
    ps = batch_backward(model, x, y)
    got = {}
    for path in ("ghost", "per-sample"):
        monkeypatch.setattr(per_sample, "choose_path", lambda *a, path=path, **k: path)
        got[path] = (ps.norms(), ps.clipped_sum(np.full(B, 0.5)))
    close(got["ghost"][0], got["per-sample"][0])
    for k in got["ghost"][1]:
        close(got["ghost"][1][k], got["per-sample"][1][k])


def test_choose_path():
    # ghost when the two (L, L) Grams cost less than the (OC, K) gradient
    assert choose_path(1, 100, 10) == "ghost"             # a plain Linear
    assert choose_path(64, 576, 128) == "ghost"           # small map, wide layer
    assert choose_path(1024, 27, 32) == "per-sample"      # big map, first layer
    assert choose_path(10, 10, 10) == "per-sample"        # 10 * 20 = 200 > 100
    assert choose_path(4, 10, 10) == "ghost"              # 4 * 20 = 80 < 100
    # per group: 8 channels in 4 groups are 2 -> 2, where the gradient is tiny
    assert choose_path(4, 72, 8, groups=1) == "ghost"
    assert choose_path(4, 72, 8, groups=4) == "per-sample"


def test_paths_follow_the_cost(rng):
    # a 1 -> 2 conv over 14x14 positions: per-sample; the Linear after it (L = 1): ghost
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 3)).double()
    x, y = data(rng, 1, 16, 16)
    ps = check_exact(model, x, y)
    assert ps.paths == {"0": "per-sample", "2": "ghost"}


@pytest.mark.parametrize("chunk", [1, 3000])
def test_chunking_changes_nothing(rng, monkeypatch, chunk):
    # CHUNK_BYTES=1: one example per chunk; 3000 bytes: one, two or all five examples per
    # chunk depending on the layer (ragged last chunks); nothing may change
    model = conv_model()
    x, y = data(rng, 2, 8, 8)
    ps = batch_backward(model, x, y)
    expected = {}
    for path in ("ghost", "per-sample"):
        monkeypatch.setattr(per_sample, "choose_path", lambda *a, path=path, **k: path)
        expected[path] = ps.norms()
    grads = ps.per_sample_grads()
    monkeypatch.setattr(per_sample, "CHUNK_BYTES", chunk)
    for path in ("ghost", "per-sample"):
        monkeypatch.setattr(per_sample, "choose_path", lambda *a, path=path, **k: path)
        close(ps.norms(), expected[path], path)
    for k, g in ps.per_sample_grads().items():
        close(g, grads[k])


class _Logged(np.ndarray):
    """An array that logs the example slice of every read ``a[e, ...]``."""

    log: list = []

    def __getitem__(self, key):
        if isinstance(key, tuple) and isinstance(key[0], slice):
            _Logged.log.append((key[0].start, key[0].stop))
        return np.asarray(super().__getitem__(key))


@pytest.mark.parametrize("path", ["ghost", "per-sample"])
@pytest.mark.parametrize("chunk, starts", [(None, [0]), (1, [0, 1, 2, 3, 4])])
def test_chunking_splits_work(rng, monkeypatch, path, chunk, starts):
    # the chunk size is what bounds the per-example arrays: see which example ranges the
    # batched products read (default: the whole batch at once; 1 byte: one example each)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double()
    x, y = data(rng, 2, 6, 6)
    expected = ref_norms(loop_reference(model, x, y))
    ps = batch_backward(model, x, y)
    real = per_sample._outer_norms_sq

    def spy(t, p):
        t.a, keep = t.a.view(_Logged), t.a
        try:
            return real(t, p)
        finally:
            t.a = keep

    _Logged.log = []
    monkeypatch.setattr(per_sample, "_outer_norms_sq", spy)
    monkeypatch.setattr(per_sample, "choose_path", lambda *a, **k: path)
    if chunk is not None:
        monkeypatch.setattr(per_sample, "CHUNK_BYTES", chunk)
    close(ps.norms(), expected)
    assert sorted({s for s, _ in _Logged.log}) == starts


# ---------------------------------------------------------------------------------------
# errors and bookkeeping


def test_batch_norm_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm2d\).*nn\.GroupNorm"):
        PerSampleGradients(model)
    with pytest.raises(ValueError, match="batch norm"):
        check_model(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))


class Scale(nn.Module):
    """A layer with its own Parameter, applied with functional ops: no rule."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(np.ones(3))

    def forward(self, x):
        return x * self.s


def test_layer_without_rule_is_refused():
    with pytest.raises(ValueError, match=r"layer '1' \(Scale\) has trainable parameters "
                                         r"\(s\) but no per-sample gradient rule"):
        PerSampleGradients(nn.Sequential(nn.Linear(2, 3), Scale()))
    # a model that owns a Parameter itself is named by its class
    with pytest.raises(ValueError, match=r"layer 'Scale' \(Scale\).*no per-sample gradient"):
        check_model(Scale())
    with pytest.raises(TypeError, match="nn.Module"):
        check_model(lambda x: x)


def test_frozen_custom_layer_is_accepted_frozen_batch_norm_is_not(rng):
    # a frozen layer has no gradient to privatise: a frozen custom layer is fine and the
    # rest stays exact; a frozen batch norm is still refused, because in training mode its
    # batch statistics mix the examples (one example moves the others' gradients)
    scale = Scale().requires_grad_(False)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 3),
                          scale).double()
    check_model(model)
    check_exact(model, *data(rng, 2, 6, 6))
    bn = nn.BatchNorm2d(3).requires_grad_(False)
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm2d\) is batch norm"):
        check_model(nn.Sequential(nn.Conv2d(2, 3, 3), bn))


def test_bad_loss_reduction():
    with pytest.raises(ValueError, match="loss_reduction must be 'mean' or 'sum'"):
        PerSampleGradients(nn.Linear(2, 2), loss_reduction="none")


def test_stray_forward_is_ignored(rng):
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = data(rng, 4)
    ref = loop_reference(model, x, y)
    ps = PerSampleGradients(model)
    model(minidl.tensor(rng.standard_normal((7, 4))))   # never back-propagated (another size)
    with minidl.no_grad():
        model(minidl.tensor(x))                            # not recorded at all
    assert len(ps._records) == 2
    nn.CrossEntropyLoss()(model(minidl.tensor(x)), minidl.tensor(y)).backward()
    assert ps.batch_size == B
    close(ps.norms(), ref_norms(ref))


def test_two_backpropagated_batch_sizes_raise(rng):
    # two layers that saw batches of different sizes in one backward pass: no example
    # has one gradient over both
    a, b = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    model = nn.Sequential(a, b)
    ps = PerSampleGradients(model)
    loss = nn.CrossEntropyLoss()
    (loss(a(minidl.tensor(rng.standard_normal((2, 4)))), minidl.tensor([0, 1]))
     + loss(b(minidl.tensor(rng.standard_normal((3, 4)))), minidl.tensor([0, 1, 2]))
     ).backward()
    with pytest.raises(ValueError, match=r"different batch sizes \[2, 3\]"):
        ps.norms()


def test_one_layer_two_batch_sizes_raise(rng):
    # the same layer called on batches of 2 and 3 examples, both back-propagated
    model = nn.Sequential(nn.Linear(4, 3)).double()
    ps = PerSampleGradients(model)
    loss = nn.CrossEntropyLoss()
    (loss(model(minidl.tensor(rng.standard_normal((2, 4)))), minidl.tensor([0, 1]))
     + loss(model(minidl.tensor(rng.standard_normal((3, 4)))), minidl.tensor([0, 1, 2]))
     ).backward()
    # a ValueError either way; the explanatory message is only reached for different
    # layers (the calls of one layer are concatenated before the sizes are compared)
    with pytest.raises(ValueError):
        ps.norms()


def test_norms_before_backward_raise(rng):
    model = nn.Sequential(nn.Linear(4, 3)).double()
    ps = PerSampleGradients(model)
    assert ps.batch_size == 0
    with pytest.raises(RuntimeError, match="no recorded forward and backward pass"):
        ps.norms()
    model(minidl.tensor(rng.standard_normal((2, 4))))  # forward only: still nothing
    with pytest.raises(RuntimeError, match="no recorded forward and backward pass"):
        ps.norms()


def test_clear_and_detach(rng):
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = data(rng, 4)
    ps = batch_backward(model, x, y)
    assert ps.batch_size == B
    ps.clear()
    assert ps.batch_size == 0
    ps.detach()
    nn.CrossEntropyLoss()(model(minidl.tensor(x)), minidl.tensor(y)).backward()
    assert ps._records == [] and ps.batch_size == 0
    assert not model[0]._forward_hooks


@pytest.mark.parametrize("path", ["ghost", "per-sample"])
def test_float32_stays_float32(rng, monkeypatch, path):
    monkeypatch.setattr(per_sample, "choose_path", lambda *a, **k: path)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3))
    x, y = data(rng, 2, 6, 6)
    ps = batch_backward(model, x.astype(np.float32), y)
    norms = ps.norms()
    sums = ps.clipped_sum(np.full(B, 0.5))
    grads = ps.per_sample_grads()
    assert norms.dtype == np.float64  # norms accumulate in float64 (documented)
    assert len(sums) == len(grads) == 6
    for k in sums:
        assert sums[k].dtype == np.float32 and grads[k].dtype == np.float32
    ps.detach()
    ref = loop_reference(model.double(), x, y)
    np.testing.assert_allclose(norms, ref_norms(ref), rtol=1e-4)  # float32 accuracy
