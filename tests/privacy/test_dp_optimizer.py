"""DPOptimizer: the step's gradient is the clipped per-example sum plus Gaussian noise of
the stated size over the expected batch size; the noise is seeded, resumable and once per
logical batch (virtual steps give the same update as one big batch); any optimizer works,
the unclipped gradient never reaches it, and bad arguments fail clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from privacy_helpers import Recorder, close, loop_reference, ref_norms

import minidl
import minidl.nn as nn
from minidl import optim
from minidl.data import DataLoader
from minidl.privacy import (
    DPOptimizer,
    PerSampleGradients,
    PoissonDataLoader,
    PrivacyAccountant,
    make_private,
)


def build(seed=0):
    """A small float64 model (conv, group norm, linear), the same for the same seed."""
    minidl.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 3)).double()


def images(rng, n):
    return rng.standard_normal((n, 1, 5, 5)), rng.integers(0, 3, n)


def copy_of(model, seed=0):
    """A hook-free twin of ``model`` with its current parameters (for the loop reference)."""
    twin = build(seed)
    twin.load_state_dict({k: v.numpy().copy() for k, v in model.state_dict().items()})
    return twin


def forward_backward(model, x, y, loss_fn=None):
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    loss_fn(model(minidl.tensor(x)), minidl.tensor(y)).backward()


def private_grad(model, x, y, max_grad_norm, expected_batch_size):
    """The noise-free DP-SGD gradient from the loop reference, in model.parameters() order:
    ``sum_i min(1, C / |g_i|) g_i / E``."""
    ref = loop_reference(copy_of(model), x, y)
    scale = np.minimum(1.0, max_grad_norm / ref_norms(ref))
    grads = [np.tensordot(scale, g, axes=1) / expected_batch_size for g in ref.values()]
    return grads, ref


def noise_only(shape_model, sigma, c, e, seed, steps):
    """The gradients a noise-only DPOptimizer hands its optimizer in its first ``steps``."""
    rec = Recorder(shape_model.parameters())
    opt = DPOptimizer(rec, PerSampleGradients(shape_model), sigma, c, e, seed=seed)
    for _ in range(steps):
        opt.step()
    opt.per_sample.detach()
    return rec.seen


# ---------------------------------------------------------------------------------------
# clipping


def test_noise_free_step_is_clipped_sum_over_expected_size(rng):
    model = build()
    x, y = images(rng, 6)
    norms = ref_norms(loop_reference(copy_of(model), x, y))
    c = float(np.median(norms))  # half the examples are clipped, half are not
    expected, _ = private_grad(model, x, y, c, 8)
    rec = Recorder(model.parameters())
    opt = DPOptimizer(rec, PerSampleGradients(model), noise_multiplier=0.0, max_grad_norm=c,
                      expected_batch_size=8, seed=0)   # 8, not the 6 drawn: E[|B|]
    forward_backward(model, x, y)
    assert opt.step() is True
    assert opt.steps == 1 and len(rec.seen) == 1
    for got, want in zip(rec.seen[0], expected):
        close(got, want)
    close(opt.last_norms, norms)
    assert opt.last_clipped_fraction == pytest.approx(0.5)


def test_every_example_is_bounded_by_the_clip_norm(rng):
    # one example per step, E = 1: the step's gradient is that example's clipped gradient,
    # of norm min(|g_i|, C) <= C
    model = build()
    x, y = images(rng, 6)
    norms = ref_norms(loop_reference(copy_of(model), x, y))
    c = float(np.median(norms))
    rec = Recorder(model.parameters())
    opt = DPOptimizer(rec, PerSampleGradients(model), 0.0, c, 1, seed=0)
    for i in range(len(x)):
        forward_backward(model, x[i:i + 1], y[i:i + 1])
        opt.step()
        total = math.sqrt(sum(float((g ** 2).sum()) for g in rec.seen[-1]))
        assert total <= c + 1e-12
        assert total == pytest.approx(min(norms[i], c), rel=1e-10)
        assert opt.last_clipped_fraction == float(norms[i] > c)


def test_make_private_noise_free_training_is_clipped_sgd(rng):
    # the whole pipeline with accountant=None (no target_delta needed): each SGD update is
    # -lr * the clipped sum over the Poisson batch / the expected batch size
    n, lr, c = 24, 0.5, 0.3
    x, y = images(rng, n)
    model = build()
    model, opt, loader = make_private(model, optim.SGD(model.parameters(), lr=lr),
                                      DataLoader((x, y), batch_size=6, seed=3),
                                      max_grad_norm=c, noise_multiplier=0.0,
                                      accountant=None, seed=0)
    assert isinstance(loader, PoissonDataLoader) and loader.sample_rate == 0.25
    assert opt.expected_batch_size == 6 and opt.accountant is None
    steps = 0
    for s, (xb, yb) in enumerate(loader):
        idx = loader.sample(0, s)
        close(xb.numpy(), x[idx])
        before = [p.detach().numpy().copy() for p in model.parameters()]
        grads, _ = private_grad(model, x[idx], y[idx], c, 6)
        opt.zero_grad()
        forward_backward(model, xb.numpy(), yb.numpy())
        assert opt.step()
        steps += 1
        for b, g, p in zip(before, grads, model.parameters()):
            close(p.detach().numpy(), b - lr * g)
    assert steps == opt.steps == 4
    assert opt.epoch_metrics() == {}  # no accountant, no epsilon


# ---------------------------------------------------------------------------------------
# noise


def test_noise_std_and_mean():
    sigma, c, e = 1.3, 0.7, 10
    std = sigma * c / e
    model = nn.Linear(200, 100).double()
    grads = noise_only(model, sigma, c, e, seed=123, steps=1)[0]
    assert [g.shape for g in grads] == [(100, 200), (100,)]
    z = np.concatenate([g.ravel() for g in grads])
    n = z.size  # 20,100 draws
    # (n-1) s^2 / std^2 ~ chi-square with k = n-1 degrees of freedom: mean k, sd sqrt(2k),
    # so s^2 / std^2 = 1 +- sqrt(2/k) (= 0.010) per sd and s / std = 1 +- sqrt(1/(2k))
    # (= 0.005); 5 sd (0.025) is passed by a correct std with probability 1 - 6e-7 and
    # fails a std that is 3% off (e.g. dividing by the drawn size 10 +- 0.3)
    tol = 5 * math.sqrt(1 / (2 * (n - 1)))
    assert abs(z.std(ddof=1) / std - 1) < tol
    # the sample mean is N(0, std^2 / n): 5 of its sds
    assert abs(z.mean()) < 5 * std / math.sqrt(n)
    # weight and bias both get noise of that size (not one std for the whole tensor list)
    assert abs(grads[1].std(ddof=1) / std - 1) < 5 * math.sqrt(1 / (2 * 99))


def test_noise_is_added_to_the_clipped_sum(rng):
    sigma, c, e = 0.8, 0.5, 4
    model = build()
    x, y = images(rng, 4)
    expected, _ = private_grad(model, x, y, c, e)
    noise = noise_only(build(), sigma, c, e, seed=11, steps=1)[0]
    rec = Recorder(model.parameters())
    opt = DPOptimizer(rec, PerSampleGradients(model), sigma, c, e, seed=11)
    forward_backward(model, x, y)
    opt.step()
    for got, g, z in zip(rec.seen[0], expected, noise):
        close(got, g + z)
        assert np.abs(z).max() > 0


def test_noise_is_reproducible_and_fresh_each_step():
    a = noise_only(build(), 1.0, 1.0, 5, seed=7, steps=3)
    b = noise_only(build(), 1.0, 1.0, 5, seed=7, steps=3)
    other = noise_only(build(), 1.0, 1.0, 5, seed=8, steps=1)
    for t in range(3):
        for ga, gb in zip(a[t], b[t]):
            assert np.array_equal(ga, gb)
    for t, u in ((0, 1), (1, 2), (0, 2)):
        assert not np.allclose(a[t][-1], a[u][-1])
    assert not np.allclose(a[0][-1], other[0][-1])


def test_seed_none_comes_from_minidl_random():
    model = build()
    seeds = []
    for _ in range(2):
        minidl.manual_seed(42)
        seeds.append(DPOptimizer(Recorder(model.parameters()), PerSampleGradients(model),
                                 1.0, 1.0, 4).seed)
    assert seeds[0] == seeds[1]


def test_float32_noise_stays_float32():
    model = nn.Linear(3, 2)
    grads = noise_only(model, 1.0, 1.0, 2, seed=0, steps=1)[0]
    assert all(g.dtype == np.float32 for g in grads)


def test_state_dict_resumes_noise_stream_and_accountant(rng):
    sigma, c, e, q = 0.9, 0.5, 4, 0.25
    batches = [images(rng, 4) for _ in range(4)]

    def setup(seed):
        model = build()
        inner = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        opt = DPOptimizer(inner, PerSampleGradients(model), sigma, c, e, seed=seed,
                          accountant=PrivacyAccountant("rdp"), sample_rate=q, delta=1e-5)
        return model, opt

    def train(model, opt, bs):
        for x, y in bs:
            opt.zero_grad()
            forward_backward(model, x, y)
            opt.step()

    model_a, opt_a = setup(seed=5)
    train(model_a, opt_a, batches[:2])
    saved_model = {k: v.numpy().copy() for k, v in model_a.state_dict().items()}
    saved = opt_a.state_dict()
    assert saved["dp"] == {"steps": 2, "seed": 5, "noise_multiplier": sigma,
                           "max_grad_norm": c, "accountant": {
                               "mechanism": "rdp", "history": [[sigma, q, 2]]}}
    train(model_a, opt_a, batches[2:])

    model_b, opt_b = setup(seed=99)  # another seed: the loaded one must win
    model_b.load_state_dict(saved_model)
    opt_b.load_state_dict(saved)
    assert opt_b.steps == 2 and opt_b.seed == 5 and opt_b.accountant.steps == 2
    assert opt_a.saved_noise_multiplier is None and opt_b.saved_noise_multiplier == sigma
    train(model_b, opt_b, batches[2:])
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):  # noise, momentum resumed
        np.testing.assert_array_equal(pa.detach().numpy(), pb.detach().numpy())
    assert opt_b.accountant.history == opt_a.accountant.history == [[sigma, q, 4]]
    assert opt_b.epoch_metrics() == opt_a.epoch_metrics()
    assert opt_a.epoch_metrics()["epsilon"] == opt_a.accountant.get_epsilon(1e-5) > 0


def test_load_state_dict_without_dp_entry_raises():
    model = build()
    inner = optim.SGD(model.parameters(), lr=0.1)
    opt = DPOptimizer(inner, PerSampleGradients(model), 1.0, 1.0, 4, seed=0)
    with pytest.raises(ValueError, match="has no 'dp' entry"):
        opt.load_state_dict(inner.state_dict())


# ---------------------------------------------------------------------------------------
# virtual steps


@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_virtual_steps_equal_one_logical_batch(rng, sigma):
    n = 40
    data = images(rng, n)
    runs = {}
    for cap in (None, 3):
        model = build()
        loader = PoissonDataLoader(data, sample_rate=0.25, max_physical_batch_size=cap,
                                   seed=2, as_tensor=False)
        opt = DPOptimizer(optim.SGD(model.parameters(), lr=0.3), PerSampleGradients(model),
                          sigma, 0.4, loader.batch_size, seed=9, loader=loader)
        chunks = stepped = 0
        for x, y in loader:
            assert len(x) <= (cap or n)
            opt.zero_grad()
            forward_backward(model, x, y)
            took = opt.step()
            assert took == loader.end_of_logical_batch
            chunks += 1
            stepped += took
            if not took:  # nothing of the chunk's own gradient is left on the parameters
                assert all(p.grad is None for p in model.parameters())
        assert opt.steps == stepped == loader.steps_per_epoch == 4
        runs[cap] = (chunks, [p.detach().numpy().copy() for p in model.parameters()])
    assert runs[None][0] == 4 and runs[3][0] > 8  # the sampled batches (~10) were split
    for a, b in zip(runs[None][1], runs[3][1]):
        close(a, b)


# ---------------------------------------------------------------------------------------
# any optimizer; what the optimizer sees


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.2),
    lambda ps: optim.SGD(ps, lr=0.2, momentum=0.9, nesterov=True),
    lambda ps: optim.Adam(ps, lr=0.05),
], ids=["sgd", "sgd-momentum", "adam"])
def test_any_optimizer_gets_the_private_gradient(rng, make):
    # DP(optimizer) == optimizer fed the clipped, averaged gradient by hand, over 3 steps
    # (so momentum and Adam's moments see the private gradients too)
    c, e = 0.3, 5
    model, plain = build(), build()
    dp = DPOptimizer(make(model.parameters()), PerSampleGradients(model), 0.0, c, e, seed=0)
    ref_opt = make(plain.parameters())
    for _ in range(3):
        x, y = images(rng, 4)
        grads, _ = private_grad(plain, x, y, c, e)
        for p, g in zip(plain.parameters(), grads):
            p.grad = minidl.tensor(g)
        ref_opt.step()
        dp.zero_grad()
        forward_backward(model, x, y)
        dp.step()
        for p, q in zip(model.parameters(), plain.parameters()):
            close(p.detach().numpy(), q.detach().numpy())
    assert dp.param_groups is dp.optimizer.param_groups and dp.state is dp.optimizer.state


def test_unclipped_gradient_never_reaches_the_optimizer(rng):
    c, e = 0.1, 4
    model = build()
    x, y = images(rng, 4)
    expected, _ = private_grad(model, x, y, c, e)
    rec = Recorder(model.parameters())
    opt = DPOptimizer(rec, PerSampleGradients(model), 0.0, c, e, seed=0)
    forward_backward(model, x, y)
    raw = [p.grad.numpy().copy() for p in model.parameters()]
    opt.step()
    for seen, p, want, r in zip(rec.seen[0], model.parameters(), expected, raw):
        close(seen, want)
        close(p.grad.numpy(), want)          # what stays on .grad is the private gradient
        assert not np.allclose(seen, r)       # not the ordinary batch gradient


def test_optimizer_over_part_of_the_model(rng):
    # an optimizer over the head only: the norms still cover every trainable parameter
    # (clipping is over the whole example), and only the head is stepped
    c, e = 0.2, 4
    model = build()
    x, y = images(rng, 4)
    expected, _ = private_grad(model, x, y, c, e)
    head = model[4]
    rec = Recorder(head.parameters())
    opt = DPOptimizer(rec, PerSampleGradients(model), 0.0, c, e, seed=0)
    assert opt.params == [head.weight, head.bias]
    forward_backward(model, x, y)
    opt.step()
    close(rec.seen[0][0], expected[-2])
    close(rec.seen[0][1], expected[-1])


# ---------------------------------------------------------------------------------------
# empty batches


def test_step_with_nothing_recorded_is_noise_only():
    sigma, c, e = 1.0, 2.0, 3
    model = build()
    acc = PrivacyAccountant()
    rec = Recorder(model.parameters())
    opt = DPOptimizer(rec, PerSampleGradients(model), sigma, c, e, seed=4, accountant=acc,
                      sample_rate=0.1)
    assert opt.step() is True
    assert opt.steps == 1 and acc.history == [[sigma, 0.1, 1]]
    rng = np.random.default_rng([4, 0])  # the documented noise stream of step 0
    for g, p in zip(rec.seen[0], model.parameters()):
        close(g, rng.standard_normal(p.shape) * sigma * c / e)


def empty_poisson_batch():
    """An empty draw of a 3-example dataset at q = 0.05 (probability 0.86 per step)."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    loader = PoissonDataLoader((x, np.array([0, 1, 2])), sample_rate=0.05, seed=0)
    for xb, yb in loader:
        if xb.shape[0] == 0:
            return xb, yb
    raise AssertionError("no empty draw")


def test_empty_poisson_batch_through_the_model_is_noise_only():
    # an empty batch records nothing (PerSampleGradients skips zero-row outputs): the step
    # is noise only
    xb, yb = empty_poisson_batch()
    assert xb.shape == (0, 4)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    rec = Recorder(model.parameters())
    opt = DPOptimizer(rec, PerSampleGradients(model, loss_reduction="sum"), 1.0, 1.0, 2,
                      seed=0)
    nn.CrossEntropyLoss(reduction="sum")(model(xb), yb).backward()
    assert opt.step() is True
    expected = noise_only(nn.Sequential(nn.Linear(4, 3)).double(), 1.0, 1.0, 2, 0, 1)[0]
    for g, z in zip(rec.seen[0], expected):
        close(g, z)


# ---------------------------------------------------------------------------------------
# bad arguments


def test_bad_arguments():
    model = build()
    ps = PerSampleGradients(model)

    def make(**kw):
        args = dict(optimizer=optim.SGD(model.parameters(), lr=0.1), per_sample=ps,
                    noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)
        args.update(kw)
        return DPOptimizer(**args)

    make()  # the defaults are fine
    for bad in (-0.5, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="noise_multiplier must be a finite number >= 0"):
            make(noise_multiplier=bad)
    for bad in (0, -1.0, 0.0, float("inf"), True, None):
        with pytest.raises(ValueError, match="max_grad_norm must be a positive number"):
            make(max_grad_norm=bad)
    for bad in (2.5, 4.0, 0, -3, True):
        with pytest.raises(ValueError, match="expected_batch_size must be a positive int"):
            make(expected_batch_size=bad)
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not the model's that PerSampleGradients covers"):
        make(optimizer=optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="expected a minidl optimizer, got list"):
        make(optimizer=[])
    with pytest.raises(ValueError, match="an accountant needs the sample_rate"):
        make(accountant=PrivacyAccountant())
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        make(delta=1.5)


def test_repr():
    model = build()
    opt = DPOptimizer(optim.Adam(model.parameters()), PerSampleGradients(model), 1.1, 0.5, 64,
                      seed=0)
    assert repr(opt) == ("DPOptimizer(Adam, noise_multiplier=1.1, max_grad_norm=0.5, "
                         "expected_batch_size=64, steps=0)")
