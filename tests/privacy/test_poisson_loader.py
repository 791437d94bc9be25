"""PoissonDataLoader: batch sizes are Binomial(N, q) with every example equally likely,
epochs depend only on (seed, epoch), chunks reassemble the sampled batch and flag its end
(also with prefetch), empty draws keep their fields' shapes and dtypes, and bad arguments
are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minidl.autograd import Tensor
from minidl.privacy import PoissonDataLoader


def dataset(n, rng=None):
    """Images whose label is their index, so a batch's labels are its indices."""
    rng = rng or np.random.default_rng(0)
    return rng.standard_normal((n, 2, 3)).astype(np.float32), np.arange(n, dtype=np.int64)


def logical_batches(loader):
    """One epoch as [(chunks of labels, end flags)] per logical batch."""
    out, chunks, flags = [], [], []
    for _, y in loader:
        chunks.append(np.asarray(y))
        flags.append(loader.end_of_logical_batch)
        if flags[-1]:
            out.append((chunks, flags))
            chunks, flags = [], []
    assert not chunks, "the epoch ended inside a logical batch"
    return out


def test_sizes_are_binomial():
    n, q, draws = 500, 0.3, 10_000
    loader = PoissonDataLoader(dataset(n), sample_rate=q, seed=123, as_tensor=False)
    steps = loader.steps_per_epoch
    assert steps == 3 and len(loader) == 3 and loader.batch_size == 150
    counts = np.zeros(n)
    sizes = []
    for k in range(draws):
        idx = loader.sample(k // steps, k % steps)
        assert np.all(np.diff(idx) > 0)  # each example at most once per batch
        counts[idx] += 1
        sizes.append(len(idx))
    sizes = np.array(sizes, dtype=np.float64)
    mean, var = n * q, n * q * (1 - q)            # 150 and 105
    # the sample mean of 10,000 draws has sd sqrt(105 / 10,000) = 0.10: allow 5 sds
    assert abs(sizes.mean() - mean) < 5 * math.sqrt(var / draws)
    # the sample variance has sd ~ var * sqrt(2 / (draws - 1)) = 1.5 (a binomial this large
    # is nearly normal: its excess kurtosis (1 - 6q(1-q)) / var = -0.002 changes that by
    # 0.1%); 5 sds (7.4) tell Binomial's 105 from Poisson's 150 or a fixed size's 0
    assert abs(sizes.var(ddof=1) - var) < 5 * var * math.sqrt(2 / (draws - 1))
    # every example joins with probability q: its count is Binomial(10,000, 0.3), sd 45.8;
    # the largest of 500 such deviations is ~3 sds, so 6 sds never fail a correct sampler
    assert np.abs(counts - draws * q).max() < 6 * math.sqrt(draws * q * (1 - q))


def test_iteration_serves_the_samples():
    loader = PoissonDataLoader(dataset(60), sample_rate=0.1, seed=4, as_tensor=False)
    batches = [y for _, y in loader]
    assert len(batches) == loader.steps_per_epoch == 10
    for s, y in enumerate(batches):
        np.testing.assert_array_equal(y, loader.sample(0, s))
    np.testing.assert_array_equal(np.concatenate(batches), loader.epoch_order(0))
    assert len({len(y) for y in batches}) > 1  # sizes vary: this is not a fixed-size loader


def test_epoch_depends_only_on_seed_and_epoch():
    data = dataset(50)

    def epoch(loader):
        return [y.tolist() for _, y in loader]

    a = PoissonDataLoader(data, sample_rate=0.2, seed=7, as_tensor=False)
    epochs = [epoch(a) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]
    b = PoissonDataLoader(data, sample_rate=0.2, seed=7, as_tensor=False)
    b.set_epoch(1)
    assert epoch(b) == epochs[1] and epoch(b) == epochs[2]  # then it counts up
    c = PoissonDataLoader(data, sample_rate=0.2, seed=7, as_tensor=False)
    c.load_state_dict(a.state_dict())
    assert c.epoch == 3 and epoch(c) == epoch(a)
    assert epoch(PoissonDataLoader(data, sample_rate=0.2, seed=8, as_tensor=False)) \
        != epochs[0]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_chunks_reassemble_the_logical_batch(prefetch):
    cap = 4
    loader = PoissonDataLoader(dataset(100), sample_rate=0.1, max_physical_batch_size=cap,
                               seed=3, prefetch=prefetch, as_tensor=False)
    assert len(loader) == 10 * 3  # 10 steps, an expected 10 examples in 3 chunks of <= 4
    batches = logical_batches(loader)
    assert len(batches) == loader.steps_per_epoch == 10
    split = 0
    for s, (chunks, flags) in enumerate(batches):
        assert all(len(c) <= cap for c in chunks)
        assert all(len(c) == cap for c in chunks[:-1])  # only the last chunk is short
        assert flags == [False] * (len(chunks) - 1) + [True]
        np.testing.assert_array_equal(np.concatenate(chunks), loader.sample(0, s))
        split += len(chunks) > 1
    assert split >= 5  # most of the ~10-example batches needed several chunks


def test_cap_at_least_the_batch_never_splits():
    loader = PoissonDataLoader(dataset(40), sample_rate=0.25, max_physical_batch_size=40,
                               seed=0, as_tensor=False)
    batches = logical_batches(loader)
    assert [len(chunks) for chunks, _ in batches] == [1] * 4


def test_empty_draws_keep_shapes_and_dtypes():
    # 3 examples at q = 0.02: a step is empty with probability 0.98^3 = 0.94
    loader = PoissonDataLoader(dataset(3), sample_rate=0.02, seed=0)
    assert loader.steps_per_epoch == 50 and loader.batch_size == 1
    batches = list(loader)
    assert len(batches) == 50
    empty = [b for b in batches if b[1].shape[0] == 0]
    assert 40 <= len(empty) < 50   # served, not skipped: the accountant counts these steps
    for x, y in empty:
        assert isinstance(x, Tensor) and isinstance(y, Tensor)
        assert x.shape == (0, 2, 3) and x.dtype == np.float32
        assert y.shape == (0,) and y.dtype == np.int64


def test_transform_is_applied_also_to_empty_draws():
    x, y = dataset(5)
    seen = []

    def transform(batch, rng):
        seen.append(len(batch))
        assert isinstance(rng, np.random.Generator)
        return batch.astype(np.float64) * 2 + 1

    loader = PoissonDataLoader((x, y), sample_rate=0.1, seed=1, transform=transform,
                               as_tensor=False)
    out = list(loader)
    assert len(seen) == len(out) == 10
    assert any(len(yb) == 0 for _, yb in out) and any(len(yb) > 0 for _, yb in out)
    for xb, yb in out:
        assert xb.dtype == np.float64 and xb.shape == (len(yb), 2, 3)
        np.testing.assert_array_equal(xb, x[yb].astype(np.float64) * 2 + 1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, 4.0, True, "8"])
def test_bad_max_physical_batch_size(bad):
    with pytest.raises(ValueError, match="max_physical_batch_size must be a positive int or "
                                         "None"):
        PoissonDataLoader(dataset(10), sample_rate=0.5, max_physical_batch_size=bad)
    PoissonDataLoader(dataset(10), sample_rate=0.5, max_physical_batch_size=np.int64(3))


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, True, None, "0.1"])
def test_bad_sample_rate(bad):
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        PoissonDataLoader(dataset(10), sample_rate=bad)


def test_sample_rate_one_takes_everyone():
    loader = PoissonDataLoader(dataset(6), sample_rate=1.0, seed=0, as_tensor=False)
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3, 4, 5]]


def test_repr():
    loader = PoissonDataLoader(dataset(100), sample_rate=0.05, max_physical_batch_size=2)
    assert repr(loader) == ("PoissonDataLoader(samples=100, sample_rate=0.05, "
                            "expected_batch_size=5, max_physical_batch_size=2)")
