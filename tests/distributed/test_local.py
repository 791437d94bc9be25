"""minidl.distributed in one process, without MPI.

* a world of one (no ``init_process_group``): ``get_world()`` is the local communicator,
  ``DistributedDataParallel`` is exactly the bare model and ``SyncBatchNorm`` plain batch
  norm;
* ``SyncBatchNormFunction`` against ``batch_norm`` and ``gradcheck``;
* a fake two-rank world (two threads sharing a barrier, ``ThreadWorld`` below) to unit-test
  what ``DistributedDataParallel`` and ``SyncBatchNormFunction`` do across ranks;
* ``NCCLCommunicator`` with a fake ``nccl`` module (the arguments NCCL would receive);
* ``init_process_group`` without mpi4py, the helpers of ``util.py`` and the launcher.

The fake worlds compute on NumPy exactly what an MPI allreduce would (a sum in rank
order), so results are compared exactly where the arithmetic is the same.
"""

from __future__ import annotations

import os
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

import minidl
import minidl.distributed.__main__ as launcher
from minidl import distributed as dist
from minidl import nn, optim
from minidl.autograd import Tensor
from minidl.distributed import (
    Communicator,
    DistributedDataParallel,
    LocalCommunicator,
    NCCLCommunicator,
    SyncBatchNorm,
    SyncBatchNormFunction,
    comm,
    local_batch_size,
    rank_seed,
)
from minidl.functional import softmax_cross_entropy
from minidl.functional.norm import batch_norm
from minidl.gradcheck import gradcheck

# -- fake worlds --------------------------------------------------------------------------


class SizedWorld(Communicator):
    """A world whose rank and size are given; collectives are not expected."""

    def __init__(self, rank: int = 0, size: int = 1, backend: str = "fake") -> None:
        super().__init__()
        self.rank, self.size, self.backend = rank, size, backend
        self.aborted: list[int] = []

    def abort(self, code: int = 1) -> None:
        self.aborted.append(code)


class _Shared:
    def __init__(self, size: int) -> None:
        # A timeout, so that a rank that fails (and so never arrives) fails the others
        # with BrokenBarrierError instead of hanging the test run.
        self.barrier = threading.Barrier(size, timeout=20)
        self.slots: list = [None] * size


class ThreadWorld(Communicator):
    """Rank ``rank`` of a world of threads: every collective posts this rank's value in a
    shared list, waits for all ranks, reads every value, and waits again (so the list can
    be reused by the next collective)."""

    backend = "threads"

    def __init__(self, rank: int, shared: _Shared) -> None:
        super().__init__()
        self.rank, self.size, self.shared = rank, len(shared.slots), shared

    def _exchange(self, value):
        s = self.shared
        s.slots[self.rank] = value
        s.barrier.wait()
        values = list(s.slots)
        s.barrier.wait()
        return values

    def _allreduce(self, array, op: str) -> None:
        parts = self._exchange(np.array(array, copy=True))
        acc = parts[0].copy()
        for p in parts[1:]:  # rank order, like MPI's reduction on two ranks
            acc = acc + p if op == "sum" else np.maximum(acc, p)
        array[...] = acc

    def _broadcast(self, array, root: int) -> None:
        array[...] = self._exchange(np.array(array, copy=True))[root]

    def allgather_object(self, obj):
        return self._exchange(obj)

    def broadcast_object(self, obj, root: int = 0):
        return self._exchange(obj)[root]

    def barrier(self) -> None:
        self.shared.barrier.wait()


def thread_worlds(size: int = 2) -> list[ThreadWorld]:
    shared = _Shared(size)
    return [ThreadWorld(r, shared) for r in range(size)]


def run_ranks(fn, worlds: list[ThreadWorld]) -> tuple[list, list]:
    """Run ``fn(world)`` for every rank at once, one thread each; return (results,
    exceptions), one entry per rank."""
    results: list = [None] * len(worlds)
    errors: list = [None] * len(worlds)

    def target(r: int) -> None:
        try:
            results[r] = fn(worlds[r])
        except BaseException as exc:  # reported to the test below
            errors[r] = exc

    threads = [threading.Thread(target=target, args=(r,)) for r in range(len(worlds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a rank thread hung"
    return results, errors


def run_ok(fn, worlds: list[ThreadWorld]) -> list:
    results, errors = run_ranks(fn, worlds)
    for r, e in enumerate(errors):
        if e is not None:
            raise AssertionError(f"rank {r} raised {type(e).__name__}: {e}") from e
    return results


# -- helpers ------------------------------------------------------------------------------


def net(seed: int, width: int = 5) -> nn.Sequential:
    """A small float64 MLP with a batch norm (float and int buffers)."""
    minidl.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, 3)).double()


def state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(v.data) for k, v in model.state_dict().items()}


def grads(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(p.grad.data) for k, p in model.named_parameters()}


def backward(model: nn.Module, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = minidl.tensor(rng.normal(size=(6, 4)))
    y = minidl.tensor(rng.integers(0, 3, 6))
    for p in model.parameters():
        p.grad = None
    softmax_cross_entropy(model(x), y).backward()


def assert_same(a: dict, b: dict, what: str, rtol: float = 0.0, atol: float = 0.0) -> None:
    assert a.keys() == b.keys(), f"{what}: keys {sorted(a)} vs {sorted(b)}"
    for k in a:
        assert a[k].shape == b[k].shape, f"{what}: {k} shapes {a[k].shape} vs {b[k].shape}"
        if rtol == atol == 0.0:
            assert np.array_equal(a[k], b[k]), (
                f"{what}: {k} differs, max |diff| {np.abs(a[k] - b[k]).max():.3g}")
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=f"{what}: {k}")


# -- the world of one ---------------------------------------------------------------------


def test_default_world_is_local() -> None:
    assert not dist.is_initialized()
    world = dist.get_world()
    assert isinstance(world, LocalCommunicator), f"got {world!r}"
    assert (world.rank, world.size, world.backend) == (0, 1, "local")
    assert (dist.get_rank(), dist.get_world_size(), dist.is_main_process()) == (0, 1, True)


def test_local_collectives_leave_data_alone() -> None:
    world = LocalCommunicator()
    a = np.arange(6.0).reshape(2, 3)
    before = a.copy()
    assert world.allreduce_(a) is a and np.array_equal(a, before)
    assert world.allreduce_(a, op="max") is a and np.array_equal(a, before)
    assert world.broadcast_(a, root=0) is a and np.array_equal(a, before)
    assert world.allgather_object({"k": 1}) == [{"k": 1}]
    assert world.broadcast_object("x") == "x"
    world.barrier()
    assert world.stats["calls"] == 2 and world.stats["bytes"] == 2 * a.nbytes
    with pytest.raises(ValueError, match="op must be 'sum' or 'max'"):
        world.allreduce_(a, op="min")
    with pytest.raises(ValueError, match="not contiguous"):
        world.allreduce_(np.ones((3, 4))[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        world.broadcast_([1.0, 2.0])


def test_ddp_in_a_world_of_one_is_the_plain_model() -> None:
    bare, wrapped_inner = net(0), net(0)
    ddp = DistributedDataParallel(wrapped_inner)
    assert ddp.world is dist.get_world() and ddp.module is wrapped_inner
    x = minidl.tensor(np.random.default_rng(1).normal(size=(6, 4)))
    y = minidl.tensor(np.random.default_rng(2).integers(0, 3, 6))
    opt_a = optim.Adam(bare.parameters(), lr=0.01)
    opt_b = optim.Adam(ddp.parameters(), lr=0.01)
    for _ in range(2):
        out_a, out_b = bare(x), ddp(x)
        assert np.array_equal(out_a.data, out_b.data), "DDP forward differs from the model"
        for out, opt in ((out_a, opt_a), (out_b, opt_b)):
            opt.zero_grad()
            softmax_cross_entropy(out, y).backward()
        before = {id(p): (p.grad, np.array(p.grad.data)) for p in ddp.parameters()}
        ddp.allreduce_gradients()
        for p in ddp.parameters():
            g, values = before[id(p)]
            assert p.grad is g and np.array_equal(p.grad.data, values), (
                "allreduce_gradients changed a gradient in a world of one")
        opt_a.step()
        opt_b.step()
    assert ddp.world.stats["calls"] == 0, "a world of one must not communicate"
    assert_same(state(bare), state(wrapped_inner), "weights after 2 Adam steps")
    # state_dict has the bare model's keys and loads into a bare model, and back.
    sd = ddp.state_dict()
    assert list(sd) == list(bare.state_dict()), f"keys {list(sd)}"
    assert not any(k.startswith("module.") for k in sd)
    fresh = net(7)
    fresh.load_state_dict(sd)
    assert_same(state(fresh), state(wrapped_inner), "bare model loaded from DDP")
    other = DistributedDataParallel(net(8))
    other.load_state_dict(bare.state_dict())
    assert_same(state(other.module), state(bare), "DDP loaded from a bare model")


def test_ddp_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="expected an nn.Module"):
        DistributedDataParallel(lambda x: x)
    wrapped = DistributedDataParallel(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="already wrapped"):
        DistributedDataParallel(wrapped)
    for cap in (0, -1.0):
        with pytest.raises(ValueError, match="bucket_cap_mb"):
            DistributedDataParallel(nn.Linear(2, 2), bucket_cap_mb=cap)


# -- SyncBatchNormFunction ----------------------------------------------------------------

SHAPES = [(6, 3), (4, 3, 5), (3, 3, 4, 2)]


def _sync_bn(x, w=None, b=None, world=None, rm=None, rv=None, momentum=0.1, eps=1e-5):
    inputs = (x,) if w is None else (x, w, b)
    return SyncBatchNormFunction.apply(*inputs, world=world or LocalCommunicator(),
                                       running_mean=rm, running_var=rv, momentum=momentum,
                                       eps=eps)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sync_bn_function_equals_batch_norm(shape, affine, rng) -> None:
    c = shape[1]
    x_np = rng.normal(size=shape) * 3 + 1
    u = rng.normal(size=shape)  # a random upstream gradient
    w_np, b_np = rng.uniform(0.5, 2, c), rng.normal(size=c)
    rm0, rv0 = rng.normal(size=c), rng.uniform(0.5, 2, c)

    def leaves():
        x = minidl.tensor(x_np, requires_grad=True)
        if not affine:
            return x, None, None
        return (x, minidl.tensor(w_np, requires_grad=True),
                minidl.tensor(b_np, requires_grad=True))

    x1, w1, b1 = leaves()
    rm1, rv1 = rm0.copy(), rv0.copy()
    y1 = _sync_bn(x1, w1, b1, rm=rm1, rv=rv1, momentum=0.2)
    (y1 * minidl.tensor(u)).sum().backward()

    x2, w2, b2 = leaves()
    rm2, rv2 = minidl.tensor(rm0.copy()), minidl.tensor(rv0.copy())
    y2 = batch_norm(x2, rm2, rv2, w2, b2, training=True, momentum=0.2, eps=1e-5)
    (y2 * minidl.tensor(u)).sum().backward()

    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y1.data, y2.data, **tol, err_msg="outputs")
    np.testing.assert_allclose(rm1, rm2.data, **tol, err_msg="running_mean")
    np.testing.assert_allclose(rv1, rv2.data, **tol, err_msg="running_var")
    np.testing.assert_allclose(x1.grad.data, x2.grad.data, **tol, err_msg="x gradient")
    if affine:
        np.testing.assert_allclose(w1.grad.data, w2.grad.data, **tol, err_msg="weight grad")
        np.testing.assert_allclose(b1.grad.data, b2.grad.data, **tol, err_msg="bias grad")


def test_sync_bn_function_float32_matches_batch_norm(rng) -> None:
    x_np = (rng.normal(size=(8, 4, 3, 3)) * 2 + 5).astype(np.float32)
    w_np = rng.uniform(0.5, 2, 4).astype(np.float32)
    b_np = rng.normal(size=4).astype(np.float32)
    y1 = _sync_bn(minidl.tensor(x_np), minidl.tensor(w_np), minidl.tensor(b_np))
    y2 = batch_norm(minidl.tensor(x_np), None, None, minidl.tensor(w_np),
                    minidl.tensor(b_np), training=True)
    assert y1.dtype == np.float32, f"output dtype {y1.dtype}"
    np.testing.assert_allclose(y1.data, y2.data, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sync_bn_function_gradcheck(shape, affine, rng) -> None:
    c = shape[1]
    x = minidl.tensor(rng.normal(size=shape), requires_grad=True)
    if affine:
        w = minidl.tensor(rng.uniform(0.5, 2, c), requires_grad=True)
        b = minidl.tensor(rng.normal(size=c), requires_grad=True)
        assert gradcheck(lambda x, w, b: _sync_bn(x, w, b), [x, w, b])
    else:
        assert gradcheck(lambda x: _sync_bn(x), [x])


def test_sync_bn_function_on_two_ranks_equals_the_whole_batch(rng) -> None:
    """Two thread ranks with half a batch each: the same outputs, input gradients and
    running statistics as batch_norm over the whole batch, and per-rank weight/bias
    gradients that sum to the whole batch's."""
    n, c = 6, 3
    x_np = rng.normal(size=(2 * n, c, 2, 2)) * 2 - 1
    u = rng.normal(size=x_np.shape)
    w_np, b_np = rng.uniform(0.5, 2, c), rng.normal(size=c)
    xw = minidl.tensor(x_np, requires_grad=True)
    ww, bw = minidl.tensor(w_np, requires_grad=True), minidl.tensor(b_np, requires_grad=True)
    rmw, rvw = minidl.zeros(c, dtype=np.float64), minidl.ones(c, dtype=np.float64)
    yw = batch_norm(xw, rmw, rvw, ww, bw, training=True, momentum=0.1)
    (yw * minidl.tensor(u)).sum().backward()

    leaves = [(minidl.tensor(x_np[r * n:(r + 1) * n], requires_grad=True),
               minidl.tensor(w_np, requires_grad=True), minidl.tensor(b_np, requires_grad=True),
               np.zeros(c), np.ones(c)) for r in range(2)]

    def rank(world):
        x, w, b, rm, rv = leaves[world.rank]
        y = _sync_bn(x, w, b, world=world, rm=rm, rv=rv)
        (y * minidl.tensor(u[world.rank * n:(world.rank + 1) * n])).sum().backward()
        return y.data

    outs = run_ok(rank, thread_worlds(2))
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate(outs), yw.data, **tol, err_msg="outputs")
    gx = np.concatenate([leaves[r][0].grad.data for r in range(2)])
    np.testing.assert_allclose(gx, xw.grad.data, **tol, err_msg="input gradient")
    for k, (whole, name) in enumerate(((ww, "weight"), (bw, "bias")), 1):
        summed = leaves[0][k].grad.data + leaves[1][k].grad.data
        np.testing.assert_allclose(summed, whole.grad.data, **tol, err_msg=f"{name} grad")
    for r in range(2):
        np.testing.assert_allclose(leaves[r][3], rmw.data, **tol, err_msg="running_mean")
        np.testing.assert_allclose(leaves[r][4], rvw.data, **tol, err_msg="running_var")


# -- SyncBatchNorm.convert_sync_batchnorm -------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4, activation="relu"),
            nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=None))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6),
                                  nn.BatchNorm1d(6, eps=1e-3), nn.ReLU(), nn.Linear(6, 2))
        self.bn_plain = nn.BatchNorm1d(2, affine=False)

    def forward(self, x):
        return self.bn_plain(self.head(self.features(x)))


def test_convert_sync_batchnorm_keeps_everything(rng) -> None:
    minidl.manual_seed(3)
    model = _Net().double()
    twin = _Net().double()
    twin.load_state_dict(model.state_dict())
    names = [n for n, _ in model.named_modules()]
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    bns = {n: m for n, m in model.named_modules()
           if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))}
    assert len(bns) == 4

    out = SyncBatchNorm.convert_sync_batchnorm(model, world=LocalCommunicator())
    assert out is model
    assert [n for n, _ in model.named_modules()] == names, "module order or names changed"
    converted = dict(model.named_modules())
    for n, old in bns.items():
        new = converted[n]
        assert type(new) is SyncBatchNorm, f"{n} is still {type(new).__name__}"
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats",
                     "activation", "training"):
            assert getattr(new, attr) == getattr(old, attr), f"{n}.{attr} changed"
    assert not any(type(m).__name__.startswith("BatchNorm") for m in model.modules())
    for n, p in model.named_parameters():
        assert p is params[n], f"parameter {n} is a new object"
    assert list(dict(model.named_parameters())) == list(params)
    for n, b in model.named_buffers():
        assert b is buffers[n], f"buffer {n} is a new object"
    assert list(dict(model.named_buffers())) == list(buffers)

    # A world of one: the same results as the unconverted twin, in train and eval mode.
    x = minidl.tensor(rng.normal(size=(5, 2, 4, 4)))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(twin, mode)()
        a, b = model(x), twin(x)
        assert np.array_equal(a.data, b.data), f"{mode}: converted model output differs"
        if mode == "train":
            a.sum().backward()
            b.sum().backward()
            assert_same(grads(model), grads(twin), "gradients of the converted model")
    assert_same(state(model), state(twin), "running statistics after the converted forward")


def test_convert_a_bare_batchnorm() -> None:
    bn = nn.BatchNorm2d(3, eps=1e-3).eval()
    new = SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(new) is SyncBatchNorm and new is not bn
    assert new.weight is bn.weight and new.running_var is bn.running_var
    assert not new.training and new.eps == 1e-3
    again = SyncBatchNorm.convert_sync_batchnorm(new)
    assert again is new, "converting a SyncBatchNorm must leave it alone"


# -- DistributedDataParallel on two thread ranks ------------------------------------------


def _two_rank_ddps(widths=(5, 5), **kw) -> tuple[list, list[ThreadWorld]]:
    nets = [net(10 + r, widths[r]) for r in range(2)]
    worlds = thread_worlds(2)
    ddps = run_ok(lambda w: DistributedDataParallel(nets[w.rank], world=w, **kw), worlds)
    return ddps, worlds


def test_ddp_construction_takes_rank_0s_weights_and_buffers() -> None:
    nets = [net(10), net(11)]
    nets[1][1].running_mean.data[...] = 7.0
    nets[1][1].num_batches_tracked.data[...] = 9
    s0, s1 = state(nets[0]), state(nets[1])
    assert not np.array_equal(s0["0.weight"], s1["0.weight"]), "the test needs different seeds"
    run_ok(lambda w: DistributedDataParallel(nets[w.rank], world=w), thread_worlds(2))
    assert_same(state(nets[0]), s0, "rank 0 after construction")
    assert_same(state(nets[1]), s0, "rank 1 after construction (must be rank 0's)")


def test_ddp_averages_gradients() -> None:
    ddps, worlds = _two_rank_ddps()
    for r in range(2):
        backward(ddps[r], seed=r)  # different data per rank
    g = [grads(d.module) for d in ddps]
    ddps[1].module[3].bias.grad = None  # a parameter without a gradient counts as zero
    run_ok(lambda w: ddps[w.rank].allreduce_gradients(), worlds)
    for r in range(2):
        got = grads(ddps[r].module)
        for k in got:
            other = 0.0 if k == "3.bias" else g[1][k]
            want = (g[0][k] + other) * 0.5
            assert np.array_equal(got[k], want), (
                f"rank {r}: {k} is not the mean of the ranks' gradients, max |diff| "
                f"{np.abs(got[k] - want).max():.3g}")
            assert got[k].dtype == np.float64
    assert worlds[0].stats["calls"] == 1, "the default cap should put everything in 1 bucket"


@pytest.mark.parametrize("cap", [1e-9, 1e-4, 1000.0])
def test_bucket_size_does_not_change_the_result(cap) -> None:
    ddps, worlds = _two_rank_ddps(bucket_cap_mb=cap)
    ref, ref_worlds = _two_rank_ddps(bucket_cap_mb=1000.0)
    for pair in (ddps, ref):
        for r in range(2):
            backward(pair[r], seed=r)
    n_params = len(list(ddps[0].parameters()))
    for pair, ws in ((ddps, worlds), (ref, ref_worlds)):
        for w in ws:
            w.stats["calls"] = 0
        run_ok(lambda w, pair=pair: pair[w.rank].allreduce_gradients(), ws)
    for r in range(2):
        assert_same(grads(ddps[r].module), grads(ref[r].module), f"cap {cap} MiB, rank {r}")
    calls = worlds[0].stats["calls"]
    nbytes = max(p.data.nbytes for p in ddps[0].parameters())
    if cap * 2**20 < min(p.data.nbytes for p in ddps[0].parameters()):
        assert calls == n_params, f"a tiny cap should give one bucket per parameter, {calls}"
    elif cap * 2**20 > sum(p.data.nbytes for p in ddps[0].parameters()):
        assert calls == 1, f"a huge cap should give one bucket, got {calls}"
    else:
        assert 1 < calls < n_params, f"cap {cap} MiB ({nbytes} B params) gave {calls} buckets"


def test_buckets_never_mix_dtypes() -> None:
    class Mixed(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            r = np.random.default_rng(seed)
            self.a = nn.Parameter(r.normal(size=3).astype(np.float32))
            self.b = nn.Parameter(r.normal(size=(2, 2)))
            self.c = nn.Parameter(r.normal(size=4).astype(np.float32))

    mods = [Mixed(0), Mixed(1)]
    worlds = thread_worlds(2)
    ddps = run_ok(lambda w: DistributedDataParallel(mods[w.rank], world=w), worlds)
    gs = []
    for r, m in enumerate(mods):
        rr = np.random.default_rng(100 + r)
        for p in m.parameters():
            p.grad = Tensor(rr.normal(size=p.shape).astype(p.dtype))
        gs.append(grads(m))
    run_ok(lambda w: ddps[w.rank].allreduce_gradients(), worlds)
    assert worlds[0].stats["calls"] == 3, "float32, float64, float32: three buckets"
    for r in range(2):
        for k, v in grads(mods[r]).items():
            assert v.dtype == gs[0][k].dtype, f"{k}: gradient dtype became {v.dtype}"
            want = (gs[0][k] + gs[1][k]) * v.dtype.type(0.5)
            assert np.array_equal(v, want), f"rank {r}: {k} is not the mean"


def test_sync_buffers_averages_floats_and_copies_ints() -> None:
    ddps, worlds = _two_rank_ddps()
    bns = [d.module[1] for d in ddps]
    rng = np.random.default_rng(5)
    means = [rng.normal(size=5) for _ in range(2)]
    variances = [rng.uniform(0.5, 2, 5) for _ in range(2)]
    for r in range(2):
        bns[r].running_mean.data[...] = means[r]
        bns[r].running_var.data[...] = variances[r]
        bns[r].num_batches_tracked.data[...] = 3 + 2 * r
    run_ok(lambda w: ddps[w.rank].sync_buffers(), worlds)
    for r in range(2):
        np.testing.assert_allclose(bns[r].running_mean.data, (means[0] + means[1]) / 2,
                                   rtol=1e-15, err_msg=f"rank {r} running_mean")
        np.testing.assert_allclose(bns[r].running_var.data, (variances[0] + variances[1]) / 2,
                                   rtol=1e-15, err_msg=f"rank {r} running_var")
        assert int(bns[r].num_batches_tracked.data) == 3, (
            f"rank {r}: num_batches_tracked {int(bns[r].num_batches_tracked.data)}, rank 0 has 3")
    assert_same(state(ddps[0].module), state(ddps[1].module), "buffers after sync_buffers")


def test_ddp_state_dict_is_the_same_on_every_rank() -> None:
    ddps, worlds = _two_rank_ddps()
    ddps[1].module[1].running_mean.data[...] = 4.0
    sds = run_ok(lambda w: {k: np.array(v.data) for k, v in ddps[w.rank].state_dict().items()},
                 worlds)
    assert_same(sds[0], sds[1], "state_dict on the two ranks")
    assert not any(k.startswith("module.") for k in sds[0])


def test_check_same_model_names_the_first_difference() -> None:
    nets = [net(0, width=5), net(1, width=6)]
    _, errors = run_ranks(lambda w: DistributedDataParallel(nets[w.rank], world=w),
                          thread_worlds(2))
    for r, e in enumerate(errors):
        assert isinstance(e, ValueError), f"rank {r} raised {e!r}, expected ValueError"
        msg = str(e)
        for part in ("rank 1 differs from rank 0's", "entry 0", "'0.weight'", "(5, 4)",
                     "(6, 4)"):
            assert part in msg, f"rank {r}: {part!r} not in {msg!r}"
    assert str(errors[0]) == str(errors[1]), "the ranks reached different verdicts"


def test_check_same_model_dtype_difference() -> None:
    models = [nn.Linear(3, 2), nn.Linear(3, 2).double()]
    _, errors = run_ranks(lambda w: dist.check_same_model(models[w.rank], w), thread_worlds(2))
    for r, e in enumerate(errors):
        assert isinstance(e, ValueError), f"rank {r}: {e!r}"
        assert "float32" in str(e) and "float64" in str(e) and "'weight'" in str(e), str(e)


def test_check_same_model_passes_for_equal_models() -> None:
    models = [net(0), net(1)]  # different values, same architecture
    results = run_ok(lambda w: dist.check_same_model(models[w.rank], w), thread_worlds(2))
    assert results == [None, None]


# -- NCCLCommunicator with a fake nccl ----------------------------------------------------


class FakeDeviceArray:
    """What NCCLCommunicator reads from a CuPy array, over a NumPy array."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.data = SimpleNamespace(ptr=arr.ctypes.data)
        self.dtype, self.size, self.flags, self.nbytes = arr.dtype, arr.size, arr.flags, arr.nbytes


class FakeNcclComm:
    def __init__(self, size, uid, rank) -> None:
        self.args = (size, uid, rank)
        self.calls: list[tuple] = []

    def allReduce(self, *args) -> None:  # noqa: N802 - cupy's name
        self.calls.append(("allReduce", args))

    def broadcast(self, *args) -> None:
        self.calls.append(("broadcast", args))


class FakeNccl:
    def __init__(self, uid: str) -> None:
        self.uid, self.uid_calls, self.comms = uid, 0, []

    def get_unique_id(self):
        self.uid_calls += 1
        return self.uid

    def NcclCommunicator(self, size, uid, rank):  # noqa: N802 - cupy's name
        c = FakeNcclComm(size, uid, rank)
        self.comms.append(c)
        return c


class FakeMPI(Communicator):
    """Rank 0 of a world of ``size``: records what NCCLCommunicator sends through MPI."""

    backend = "mpi"

    def __init__(self, size: int = 2) -> None:
        super().__init__()
        self.rank, self.size = 0, size
        self.calls: list[tuple] = []

    def _allreduce(self, array, op) -> None:
        self.calls.append(("allreduce", array, op))

    def _broadcast(self, array, root) -> None:
        self.calls.append(("broadcast", array, root))

    def allgather_object(self, obj):
        self.calls.append(("allgather_object", obj))
        return [obj, obj]

    def broadcast_object(self, obj, root=0):
        self.calls.append(("broadcast_object", obj, root))
        return obj

    def barrier(self) -> None:
        self.calls.append(("barrier",))


STREAM = 0xC0FFEE


def _nccl_world() -> tuple[NCCLCommunicator, FakeNccl, FakeMPI]:
    mpi, nccl = FakeMPI(), FakeNccl("uid-of-rank-0")
    return NCCLCommunicator(mpi, nccl=nccl, stream=lambda: STREAM), nccl, mpi


@pytest.mark.parametrize("dtype, code", [(np.float32, 7), (np.float64, 8)])
@pytest.mark.parametrize("op, opcode", [("sum", 0), ("max", 2)])
def test_nccl_allreduce_arguments(dtype, code, op, opcode) -> None:
    world, nccl, mpi = _nccl_world()
    arr = np.arange(12, dtype=dtype).reshape(3, 4)
    dev = FakeDeviceArray(arr)
    assert world.allreduce_(dev, op=op) is dev
    (kind, args), = nccl.comms[0].calls
    ptr = arr.ctypes.data
    assert kind == "allReduce"
    assert args == (ptr, ptr, 12, code, opcode, STREAM), (
        f"allReduce(send, recv, count, dtype, op, stream) got {args}, expected "
        f"{(ptr, ptr, 12, code, opcode, STREAM)} (in place, NCCL codes)")
    assert world.stats["calls"] == 1 and world.stats["bytes"] == arr.nbytes
    assert not [c for c in mpi.calls if c[0] == "allreduce"], "a device array went through MPI"


@pytest.mark.parametrize("dtype, code", [(np.float32, 7), (np.float64, 8), (np.int64, 4)])
def test_nccl_broadcast_arguments(dtype, code) -> None:
    world, nccl, _ = _nccl_world()
    arr = np.zeros(5, dtype=dtype)
    world.broadcast_(FakeDeviceArray(arr), root=1)
    (kind, args), = nccl.comms[0].calls
    ptr = arr.ctypes.data
    assert (kind, args) == ("broadcast", (ptr, ptr, 5, code, 1, STREAM)), args


def test_nccl_numpy_arrays_go_through_mpi() -> None:
    world, nccl, mpi = _nccl_world()
    a = np.ones(4, np.float32)
    world.allreduce_(a, op="max")
    world.broadcast_(a, root=1)
    assert [(c[0], c[1] is a, c[2]) for c in mpi.calls if c[0] in ("allreduce", "broadcast")] \
        == [("allreduce", True, "max"), ("broadcast", True, 1)], mpi.calls
    assert nccl.comms[0].calls == [], "a NumPy array went to NCCL"
    assert world.allgather_object("o") == ["o", "o"]
    world.barrier()
    assert ("allgather_object", "o") in mpi.calls and ("barrier",) in mpi.calls


def test_nccl_rejects_what_it_cannot_send() -> None:
    world, _, _ = _nccl_world()
    with pytest.raises(TypeError, match="bool"):
        world.allreduce_(FakeDeviceArray(np.zeros(3, bool)))
    with pytest.raises(ValueError, match="not contiguous"):
        world.allreduce_(FakeDeviceArray(np.zeros((4, 4), np.float32)[:, :2]))


def test_nccl_every_rank_joins_with_rank_0s_id() -> None:
    ncclmods = [FakeNccl(f"uid-of-rank-{r}") for r in range(2)]
    worlds = thread_worlds(2)
    comms = run_ok(lambda w: NCCLCommunicator(w, nccl=ncclmods[w.rank], stream=lambda: 1),
                   worlds)
    for r in range(2):
        assert ncclmods[r].comms[0].args == (2, "uid-of-rank-0", r), (
            f"rank {r} joined with {ncclmods[r].comms[0].args}, expected rank 0's id")
        assert (comms[r].rank, comms[r].size, comms[r].backend) == (r, 2, "nccl")
    assert ncclmods[0].uid_calls == 1 and ncclmods[1].uid_calls == 0, (
        "only rank 0 may create the NCCL id")


# -- init_process_group -------------------------------------------------------------------


def test_init_without_mpi4py_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)  # "import mpi4py.MPI" now fails
    with pytest.raises(ImportError) as info:
        dist.init_process_group()
    assert "pip install 'minidl[mpi]'" in str(info.value), str(info.value)
    assert not dist.is_initialized(), "a failed init must leave the world local"
    assert isinstance(dist.get_world(), LocalCommunicator)
    with pytest.raises(ImportError, match=r"minidl\[mpi\]"):
        dist.MPICommunicator()


def test_init_rejects_an_unknown_backend() -> None:
    with pytest.raises(ValueError, match="'gloo'") as info:
        dist.init_process_group("gloo")
    assert "'mpi' or 'nccl'" in str(info.value)
    assert not dist.is_initialized()


def test_init_twice(monkeypatch) -> None:
    existing = SizedWorld(rank=1, size=2, backend="mpi")
    monkeypatch.setattr(comm, "_world", existing)
    assert dist.init_process_group("mpi") is existing
    assert (dist.get_rank(), dist.get_world_size(), dist.is_main_process()) == (1, 2, False)
    with pytest.raises(RuntimeError, match="already initialised with backend 'mpi'"):
        dist.init_process_group("nccl")
    dist.destroy_process_group()
    assert not dist.is_initialized() and isinstance(dist.get_world(), LocalCommunicator)


def test_abort_hook(monkeypatch, capsys) -> None:
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append(a[0]))
    world = SizedWorld(rank=1, size=2)
    comm._install_abort_hook(world)
    try:
        raise RuntimeError("hook-marker")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "rank 1 of 2 raised" in err and "hook-marker" in err, err
    assert world.aborted == [1] and seen == [], "an exception must abort the job"
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert seen == [KeyboardInterrupt] and world.aborted == [1], "Ctrl-C must not abort"
    monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append(a[0]))
    one = SizedWorld(rank=0, size=1)
    comm._install_abort_hook(one)
    sys.excepthook(ValueError, ValueError("x"), None)
    assert one.aborted == [] and seen[-1] is ValueError, "a world of one never aborts"


# -- util ---------------------------------------------------------------------------------


def test_local_batch_size() -> None:
    three = SizedWorld(rank=0, size=3)
    assert local_batch_size(9, three) == 3
    assert local_batch_size(64) == 64
    with pytest.raises(ValueError) as info:
        local_batch_size(7, three)
    msg = str(info.value)
    for part in ("7", "not divisible", "3 ranks", "6 or 9"):
        assert part in msg, f"{part!r} not in {msg!r}"
    for bad in (0, -4, True, 2.5, "8"):
        with pytest.raises(ValueError, match="positive int"):
            local_batch_size(bad, three)


def test_rank_seed() -> None:
    assert rank_seed(1234) == 1234 and rank_seed(0) == 0
    seeds = [rank_seed(1234, SizedWorld(rank=r, size=4)) for r in range(4)]
    assert seeds[0] == 1234
    assert len(set(seeds)) == 4, f"ranks share a seed: {seeds}"
    assert seeds == [rank_seed(1234, SizedWorld(rank=r, size=4)) for r in range(4)], (
        "rank seeds must be reproducible")
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds), seeds
    assert rank_seed(1235, SizedWorld(rank=1, size=4)) != seeds[1]


def test_all_reduce_scalars() -> None:
    assert dist.all_reduce_scalars([1.0, 2.5]) == [1.0, 2.5]
    out = run_ok(lambda w: dist.all_reduce_scalars([w.rank + 1, 10 * w.rank], w),
                 thread_worlds(2))
    assert out == [[3.0, 10.0], [3.0, 10.0]], out
    out = run_ok(lambda w: dist.all_reduce_scalars([w.rank], w, op="max"), thread_worlds(2))
    assert out == [[1.0], [1.0]], out


# -- the launcher (python -m minidl.distributed) ------------------------------------------


def test_command(monkeypatch) -> None:
    monkeypatch.setattr(launcher, "mpiexec_path", lambda: "/opt/mpi/bin/mpiexec")
    assert launcher.command(3, ["train.py", "--epochs", "1"], ["-f", "hosts"]) == [
        "/opt/mpi/bin/mpiexec", "-n", "3", "-f", "hosts", sys.executable, "-m", "mpi4py",
        "train.py", "--epochs", "1"]


def test_mpiexec_path(monkeypatch, tmp_path) -> None:
    beside, onpath = tmp_path / "venv", tmp_path / "path"
    for d in (beside, onpath):
        d.mkdir()
        (d / "mpiexec").write_text("#!/bin/sh\n")
        (d / "mpiexec").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(beside / "python"))
    assert launcher.mpiexec_path() == str(beside / "mpiexec")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(onpath))
    assert launcher.mpiexec_path() == str(onpath / "mpiexec")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match=r"pip install 'minidl\[mpi\]'"):
        launcher.mpiexec_path()


def test_thread_env(monkeypatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    given = {"OMP_NUM_THREADS": "3", "OTHER": "x"}
    env = launcher.thread_env(2, given)
    assert env == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "4",
                   "NUMBA_NUM_THREADS": "4", "OTHER": "x"}, env
    assert given == {"OMP_NUM_THREADS": "3", "OTHER": "x"}, "thread_env changed its input"
    assert launcher.thread_env(16, {})["NUMBA_NUM_THREADS"] == "1"
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert launcher.thread_env(2, {})["OMP_NUM_THREADS"] == "1"


@pytest.fixture
def execve(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((path, args, env)))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                 *launcher.TCP_ENV):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_main_runs_mpiexec(execve, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    launcher.main(["-n", "2", "train.py", "--epochs", "1", "-n", "5"])
    (path, args, env), = execve
    assert path == args[0] == launcher.mpiexec_path()
    assert args[1:] == ["-n", "2", sys.executable, "-m", "mpi4py", "train.py", "--epochs",
                        "1", "-n", "5"], args
    assert (env["OMP_NUM_THREADS"], env["OPENBLAS_NUM_THREADS"], env["NUMBA_NUM_THREADS"]) \
        == ("3", "2", "2"), "user thread settings kept, cores // N elsewhere"
    assert not set(launcher.TCP_ENV) & set(env), "TCP variables set without --tcp"
    assert env["PATH"] == os.environ["PATH"], "the rest of the environment must be passed on"


def test_main_tcp_and_hostfile(execve) -> None:
    launcher.main(["-n", "4", "--tcp", "--hostfile", "hosts.txt", "train.py"])
    (_, args, env), = execve
    assert args[1:6] == ["-n", "4", "-f", "hosts.txt", sys.executable], args
    for k, v in {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp",
                 "MPIR_CVAR_NOLOCAL": "1"}.items():
        assert env.get(k) == v, f"--tcp: {k}={env.get(k)!r}, expected {v!r}"
    assert env["NUMBA_NUM_THREADS"] == "1"


@pytest.mark.parametrize("argv, words", [
    (["-n", "0", "train.py"], "-n must be >= 1"),
    (["-n", "2"], "give the script"),
])
def test_main_usage_errors(execve, capsys, argv, words) -> None:
    with pytest.raises(SystemExit) as info:
        launcher.main(argv)
    assert info.value.code == 2 and words in capsys.readouterr().err
    assert execve == []


def test_launcher_docstring_options_exist(execve, capsys) -> None:
    """Every ``--option`` the module docstring (``python -m minidl.distributed --help``
    readers and the docs) promises must be one the parser accepts."""
    import re

    with pytest.raises(SystemExit):
        launcher.main(["--help"])
    help_text = capsys.readouterr().out
    promised = set(re.findall(r"``(--[a-z][a-z-]*)", launcher.__doc__))
    missing = sorted(o for o in promised if o not in help_text)
    assert not missing, (f"the launcher's docstring mentions {missing}, which the parser does "
                         f"not accept:\n{help_text}")
