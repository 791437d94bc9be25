"""DistributedSampler and DataLoader(sampler=...), without MPI.

``DistributedSampler.shard`` is a pure function of the epoch's order, the per-rank batch,
the world size and the rank, so every rank of a W-rank job can be simulated here by
calling it once per rank. What must hold:

* step ``s`` of a W-rank run (all ranks' batches together) is exactly step ``s`` of a
  one-process run with batch ``W * b``: that is what makes averaged gradients equal to one
  big batch;
* with padding, every rank has the same number of indices (so the same number of steps: a
  rank with one step more would wait forever in the gradient allreduce), the padding
  coming from the start of the order;
* ``pad=False`` (evaluation) splits without duplicates: every index exactly once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidl.data import DataLoader
from minidl.distributed import DistributedSampler, LocalCommunicator


def shards(order: np.ndarray, world: int, b: int, **kw) -> list[np.ndarray]:
    """Every rank's shard of ``order`` in a world of ``world`` ranks."""
    return [DistributedSampler(num_replicas=world, rank=r, **kw).shard(order, b)
            for r in range(world)]


def steps(shard: np.ndarray, b: int) -> list[np.ndarray]:
    return [shard[k:k + b] for k in range(0, len(shard), b)]


# A permutation (not arange), so that a shard built from positions instead of values fails.
orders = st.integers(1, 60).flatmap(
    lambda n: st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).permutation(n)))
worlds = st.integers(1, 4)
batches = st.integers(1, 6)


# -- shard ------------------------------------------------------------------------------


@given(order=orders, w=worlds, b=batches)
def test_full_global_batches_are_the_one_process_batches(order, w, b) -> None:
    big = w * b
    full = len(order) // big
    per_rank = [steps(s, b) for s in shards(order, w, b)]
    for s in range(full):
        union = np.concatenate([per_rank[r][s] for r in range(w)])
        expected = order[s * big:(s + 1) * big]
        assert np.array_equal(union, expected), (
            f"N={len(order)}, W={w}, b={b}: step {s} of the ranks together is "
            f"{union.tolist()}, the one-process batch {expected.tolist()}")
        for r in range(w):
            assert len(per_rank[r][s]) == b, f"rank {r} step {s} has {len(per_rank[r][s])}"


@given(order=orders, w=worlds, b=batches)
def test_padded_shards_have_equal_length_and_steps(order, w, b) -> None:
    got = shards(order, w, b)
    lengths = [len(s) for s in got]
    assert len(set(lengths)) == 1, f"N={len(order)}, W={w}, b={b}: shard lengths {lengths}"
    n_steps = [math.ceil(len(s) / b) for s in got]
    assert len(set(n_steps)) == 1, f"steps per rank {n_steps}"
    # Nothing is lost: every index of the order is served by some rank.
    served = set(np.concatenate(got).tolist())
    assert served == set(order.tolist()), f"indices never served: {set(order) - served}"


@given(order=orders, w=st.integers(2, 4), b=batches)
def test_padding_comes_from_the_start_of_the_order(order, w, b) -> None:
    big = w * b
    full = len(order) // big
    tail = order[full * big:]
    got = shards(order, w, b)
    last = np.concatenate([s[full * b:] for s in got])  # the last step, rank 0 first
    need = -len(tail) % w
    expected = np.concatenate([tail, np.resize(order, need)]) if len(tail) else tail
    assert np.array_equal(last, expected), (
        f"N={len(order)}, W={w}, b={b}: the padded last global batch is {last.tolist()}, "
        f"expected the tail {tail.tolist()} then order[:{need}]")
    assert len(last) < len(tail) + w, "more padding than needed to share the tail evenly"


@given(order=orders, w=st.integers(2, 4), b=batches)
def test_drop_last_drops_the_partial_global_batch(order, w, b) -> None:
    big = w * b
    full = len(order) // big
    got = shards(order, w, b, drop_last=True)
    for r, s in enumerate(got):
        assert len(s) == full * b, f"rank {r}: {len(s)} indices, expected {full * b}"
        assert np.array_equal(s, order[:full * big].reshape(full, w, b)[:, r].ravel()), (
            f"rank {r}: with drop_last the full global batches must be unchanged")


@given(order=orders, w=worlds, b=batches)
def test_unpadded_split_covers_every_index_once(order, w, b) -> None:
    got = shards(order, w, b, pad=False)
    allidx = np.concatenate(got)
    assert np.array_equal(np.sort(allidx), np.sort(order)), (
        f"N={len(order)}, W={w}, b={b}: pad=False served {sorted(allidx.tolist())}, "
        f"expected each of {sorted(order.tolist())} exactly once")
    big = w * b
    full = len(order) // big
    tails = [len(s) - full * b for s in got]
    assert max(tails) - min(tails) <= 1, f"uneven split of the tail: {tails}"


@pytest.mark.parametrize("pad", [False, True])
def test_world_of_one_returns_the_order(pad) -> None:
    order = np.random.default_rng(3).permutation(11)
    s = DistributedSampler(num_replicas=1, rank=0, pad=pad)
    for b in (1, 3, 4, 11, 20):
        assert np.array_equal(s.shard(order, b), order), f"b={b}: {s.shard(order, b)}"
    assert s.stream == (), "a world of one must not change the transform seeds"


def test_doc_example_and_stream() -> None:
    s0 = DistributedSampler(num_replicas=2, rank=0)
    s1 = DistributedSampler(num_replicas=2, rank=1)
    assert s0.shard(np.arange(10), 2).tolist() == [0, 1, 4, 5, 8]
    assert s1.shard(np.arange(10), 2).tolist() == [2, 3, 6, 7, 9]
    assert s1.shard(np.arange(9), 2).tolist() == [2, 3, 6, 7, 0]
    assert (s0.stream, s1.stream) == ((0,), (1,))
    assert "num_replicas=2, rank=1" in repr(s1)


def test_default_world_is_the_local_one() -> None:
    s = DistributedSampler()
    assert (s.num_replicas, s.rank) == (1, 0)
    s = DistributedSampler(LocalCommunicator())
    assert (s.num_replicas, s.rank) == (1, 0)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(num_replicas=2, rank=2), ValueError, ["rank=2", "num_replicas=2"]),
    (dict(num_replicas=2, rank=-1), ValueError, ["rank=-1"]),
    (dict(num_replicas=0, rank=0), ValueError, ["num_replicas=0"]),
    (dict(num_replicas=True, rank=0), TypeError, ["num_replicas", "True"]),
    (dict(num_replicas=2, rank=False), TypeError, ["rank", "False"]),
    (dict(num_replicas=2.0, rank=0), TypeError, ["num_replicas"]),
    (dict(num_replicas=2), ValueError, ["both"]),
    (dict(rank=1), ValueError, ["both"]),
    (dict(world=LocalCommunicator(), num_replicas=1), ValueError, ["either world"]),
    (dict(world=LocalCommunicator(), rank=0), ValueError, ["either world"]),
])
def test_bad_arguments(kwargs, error, words) -> None:
    with pytest.raises(error) as info:
        DistributedSampler(**kwargs)
    for w in words:
        assert w in str(info.value), f"{w!r} not in the message {str(info.value)!r}"


# -- DataLoader(sampler=...) ------------------------------------------------------------


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
    return x, np.arange(n, dtype=np.int64)


def _labels(loader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


@given(n=st.integers(1, 40), w=worlds, b=batches, loader_drop=st.booleans(),
       sampler_drop=st.booleans(), pad=st.booleans())
def test_len_matches_the_batches_produced(n, w, b, loader_drop, sampler_drop, pad) -> None:
    for r in range(w):
        sampler = DistributedSampler(num_replicas=w, rank=r, drop_last=sampler_drop, pad=pad)
        loader = DataLoader(_data(n), batch_size=b, drop_last=loader_drop, seed=0,
                            as_tensor=False, sampler=sampler)
        produced = len(_labels(loader))
        assert len(loader) == produced, (
            f"N={n}, W={w}, rank {r}, b={b}, loader drop_last={loader_drop}, "
            f"sampler drop_last={sampler_drop}, pad={pad}: len(loader) {len(loader)}, "
            f"{produced} batches produced")


@pytest.mark.parametrize("n, w, b", [(48, 2, 4), (50, 2, 4), (37, 3, 2), (64, 4, 3)])
def test_shuffled_ranks_are_the_big_batch_run(n, w, b) -> None:
    data = _data(n)
    ranks = [DataLoader(data, batch_size=b, shuffle=True, seed=5, as_tensor=False,
                        sampler=DistributedSampler(num_replicas=w, rank=r)) for r in range(w)]
    single = DataLoader(data, batch_size=w * b, shuffle=True, seed=5, as_tensor=False)
    full = n // (w * b)
    seen_epochs = []
    for epoch in range(3):
        per_rank = [_labels(ld) for ld in ranks]
        big = _labels(single)
        assert len({len(p) for p in per_rank}) == 1, "ranks have different numbers of steps"
        for s in range(full):
            batches = [set(per_rank[r][s]) for r in range(w)]
            for r in range(w):
                for q in range(r + 1, w):
                    assert not batches[r] & batches[q], (
                        f"epoch {epoch} step {s}: ranks {r} and {q} share "
                        f"{sorted(batches[r] & batches[q])}")
            union = sum((per_rank[r][s] for r in range(w)), [])
            assert union == big[s], (
                f"epoch {epoch} step {s}: ranks together {union}, one process {big[s]}")
        seen_epochs.append(sum((per_rank[0][s] for s in range(full)), []))
        # The order is a function of (seed, epoch): the same as epoch_order says.
        want = np.random.default_rng([5, epoch]).permutation(n)
        assert np.array_equal(ranks[1 % w].epoch_order(epoch), DistributedSampler(
            num_replicas=w, rank=1 % w).shard(want, b))
    assert seen_epochs[0] != seen_epochs[1], "two epochs drew the same order"
    # Replaying an epoch with set_epoch gives the same shard.
    ranks[0].set_epoch(1)
    assert sum(_labels(ranks[0])[:full], []) == seen_epochs[1]


class _Recorder:
    """A transform that returns the batch unchanged and records one draw of its rng."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def __call__(self, x, rng):
        self.draws.append(float(rng.random()))
        return x


def test_transform_streams_differ_per_rank() -> None:
    data = _data(32)
    recs = [_Recorder(), _Recorder()]
    for r in range(2):
        loader = DataLoader(data, batch_size=4, shuffle=True, seed=9, transform=recs[r],
                            sampler=DistributedSampler(num_replicas=2, rank=r))
        list(loader)
    assert len(recs[0].draws) == len(recs[1].draws) == 4
    same = [a == b for a, b in zip(recs[0].draws, recs[1].draws)]
    assert not any(same), f"ranks 0 and 1 drew the same augmentation at steps {same}"


def test_world_of_one_sampler_is_a_plain_loader() -> None:
    data = _data(30)
    rec_plain, rec_sampled = _Recorder(), _Recorder()
    plain = DataLoader(data, batch_size=4, shuffle=True, seed=9, transform=rec_plain)
    sampled = DataLoader(data, batch_size=4, shuffle=True, seed=9, transform=rec_sampled,
                         sampler=DistributedSampler(num_replicas=1, rank=0))
    for _ in range(2):
        a, b = _labels(plain), _labels(sampled)
        assert a == b, f"a world-of-one sampler changed the batches: {a} vs {b}"
    assert len(plain) == len(sampled)
    assert rec_plain.draws == rec_sampled.draws, "transform rngs differ in a world of one"


def test_sampler_without_shard_is_a_type_error() -> None:
    class NoShard:
        stream = ()

    class ShardNotCallable:
        shard = 3

    for bad in (NoShard(), ShardNotCallable(), [0, 1, 2]):
        with pytest.raises(TypeError, match="shard") as info:
            DataLoader(_data(4), batch_size=2, sampler=bad)
        assert type(bad).__name__ in str(info.value)
