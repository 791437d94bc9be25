"""DataLoader: batching, seeded shuffling, (seed, epoch) determinism and resume, drop_last,
background prefetch (equivalence, error propagation, clean shutdown), no dataset copies;
BatchInfo for transforms that ask for it (AlternatingFlip across epochs and resume)."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import numpy as np
import pytest

import minidl.random
from minidl.data import ArrayDataset, DataLoader, Dataset
from minidl.data import transforms as T


def _arr(t):
    return t if isinstance(t, np.ndarray) else t.data


def _epoch(loader):
    return [tuple(np.array(_arr(f)) for f in batch) for batch in loader]


def _data(n=23):
    x = np.arange(n * 3 * 4 * 4, dtype=np.uint8).reshape(n, 3, 4, 4)
    return x, np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("n, bs, drop_last, sizes", [
    (23, 5, False, [5, 5, 5, 5, 3]),
    (23, 5, True, [5, 5, 5, 5]),
    (20, 5, True, [5, 5, 5, 5]),
    (3, 8, False, [3]),
    (3, 8, True, []),
])
def test_batch_sizes_and_len(n, bs, drop_last, sizes):
    loader = DataLoader(_data(n), batch_size=bs, drop_last=drop_last, as_tensor=False)
    batches = _epoch(loader)
    assert len(loader) == len(sizes)
    assert [len(b[1]) for b in batches] == sizes
    assert batches == [] or batches[0][0].shape[1:] == (3, 4, 4)


def test_no_shuffle_is_in_order():
    x, y = _data()
    batches = _epoch(DataLoader((x, y), batch_size=4, as_tensor=False))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


def test_shuffle_is_a_permutation_and_matches_documented_order():
    x, y = _data()
    loader = DataLoader((x, y), batch_size=4, shuffle=True, seed=7, as_tensor=False)
    for epoch in range(3):
        got = np.concatenate([b[1] for b in _epoch(loader)])
        expected = np.random.default_rng([7, epoch]).permutation(len(y))
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in _epoch_at(loader, epoch)]),
                                      x[expected])


def _epoch_at(loader, epoch):
    saved = loader.epoch
    loader.set_epoch(epoch)
    out = _epoch(loader)
    loader.set_epoch(saved)
    return out


def _aug():
    return T.Compose([T.RandomCrop(4, padding=1), T.RandomHorizontalFlip(), T.ToFloat()])


def test_same_seed_same_batches_and_epochs_differ():
    a = DataLoader(_data(), batch_size=4, shuffle=True, seed=3, transform=_aug(),
                   as_tensor=False)
    b = DataLoader(_data(), batch_size=4, shuffle=True, seed=3, transform=_aug(),
                   as_tensor=False)
    ea0, eb0 = _epoch(a), _epoch(b)
    ea1 = _epoch(a)
    for p, q in zip(ea0, eb0):
        for u, v in zip(p, q):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(ea0[0][1], ea1[0][1])
    c = DataLoader(_data(), batch_size=4, shuffle=True, seed=4, as_tensor=False)
    assert not np.array_equal(_epoch(c)[0][1], ea0[0][1])


def test_resume_at_epoch_boundary_reproduces_uninterrupted_run():
    def make():
        return DataLoader(_data(), batch_size=4, shuffle=True, seed=11, transform=_aug(),
                          as_tensor=False)

    full = make()
    epochs = [_epoch(full) for _ in range(4)]
    assert full.epoch == 4
    resumed = make()
    resumed.load_state_dict({"seed": 11, "epoch": 2})
    for k in (2, 3):
        for p, q in zip(_epoch(resumed), epochs[k]):
            for u, v in zip(p, q):
                np.testing.assert_array_equal(u, v)
    other = make()
    other.set_epoch(3)
    np.testing.assert_array_equal(_epoch(other)[1][0], epochs[3][1][0])
    assert other.state_dict() == {"seed": 11, "epoch": 4}


def test_seed_none_follows_manual_seed():
    minidl.random.manual_seed(5)
    a = DataLoader(_data(), batch_size=4, shuffle=True, as_tensor=False)
    minidl.random.manual_seed(5)
    b = DataLoader(_data(), batch_size=4, shuffle=True, as_tensor=False)
    assert a.seed == b.seed
    np.testing.assert_array_equal(_epoch(a)[0][1], _epoch(b)[0][1])


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetch_gives_identical_batches(prefetch):
    kw = dict(batch_size=4, shuffle=True, seed=2, transform=_aug(), as_tensor=False)
    ref = _epoch(DataLoader(_data(), **kw))
    got = _epoch(DataLoader(_data(), prefetch=prefetch, **kw))
    assert len(ref) == len(got)
    for p, q in zip(ref, got):
        for u, v in zip(p, q):
            np.testing.assert_array_equal(u, v)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "minidl-prefetch"]


def _wait_no_prefetch_threads(timeout=5.0):
    deadline = time.monotonic() + timeout
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _prefetch_threads()


def test_prefetch_abandoned_iterator_stops_thread():
    loader = DataLoader(_data(200), batch_size=2, prefetch=2, as_tensor=False)
    for i, _ in enumerate(loader):
        if i == 3:
            break
    gc.collect()
    assert _wait_no_prefetch_threads()
    it = iter(loader)
    next(it)
    it.close()
    assert _wait_no_prefetch_threads()


class _Failing(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i == 6:
            raise KeyError(f"sample {i} is unreadable")
        return np.zeros((1, 2, 2), np.uint8), np.int64(i)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_exceptions_reach_the_consumer(prefetch):
    loader = DataLoader(_Failing(), batch_size=3, prefetch=prefetch, as_tensor=False)
    seen = []
    with pytest.raises(KeyError, match="sample 6"):
        for _, y in loader:
            seen.append(y.tolist())
    assert seen == [[0, 1, 2], [3, 4, 5]]
    assert _wait_no_prefetch_threads()


def test_duck_typed_dataset_and_single_array():
    class Plain:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full((1, 1, 1), i, np.uint8), i

    ys = [y.tolist() for _, y in DataLoader(Plain(), batch_size=2, as_tensor=False)]
    assert ys == [[0, 1], [2, 3], [4]]
    (x,), = list(DataLoader(np.zeros((3, 1, 2, 2), np.uint8), batch_size=3, as_tensor=False))
    assert x.shape == (3, 1, 2, 2)


def test_array_dataset_does_not_copy_and_checks_lengths():
    x, y = _data()
    ds = ArrayDataset(x, y)
    assert ds.arrays[0] is x and ds.arrays[1] is y
    with pytest.raises(ValueError, match="first dimension"):
        ArrayDataset(x, y[:-1])
    with pytest.raises(ValueError, match="at least one"):
        ArrayDataset()


def test_epoch_allocates_only_batches():
    x = np.zeros((4096, 3, 32, 32), np.uint8)  # 12 MiB
    y = np.zeros(4096, np.int64)
    loader = DataLoader((x, y), batch_size=64, shuffle=True, seed=0, as_tensor=False)
    tracemalloc.start()
    try:
        for _ in loader:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"an epoch allocated {peak / 2**20:.1f} MiB at peak"


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(prefetch=-1), "prefetch"),
    (dict(seed=-3), "seed"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataLoader(_data(), **kwargs)
    with pytest.raises(TypeError, match="transform"):
        DataLoader(_data(), transform=3)
    with pytest.raises(TypeError, match="dataset"):
        DataLoader(object())


def test_yields_tensors_on_device():
    pytest.importorskip("minidl.autograd")
    from minidl.autograd import Tensor

    loader = DataLoader(_data(), batch_size=8, transform=T.ToFloat(), device="cpu")
    x, y = next(iter(loader))
    assert isinstance(x, Tensor) and isinstance(y, Tensor)
    assert x.data.dtype == np.float32 and y.data.dtype == np.int64
    assert not x.requires_grad
    assert str(x.device) == "cpu"


# --------------------------------------------------- BatchInfo and AlternatingFlip in a loader


def _tagged(n=50):
    """Images (n, 1, 1, 2) = [i, -1]: flipped, they read [-1, i]; labels are the indices."""
    x = np.stack([np.arange(n), np.full(n, -1)], axis=1).astype(np.float32)
    return x.reshape(n, 1, 1, 2), np.arange(n, dtype=np.int64)


def _flip_sets(loader, epochs):
    """Per epoch, the set of dataset indices served flipped (checking each image's content)."""
    out = []
    for _ in range(epochs):
        flipped = set()
        for x, y in loader:
            x, y = np.asarray(_arr(x)), np.asarray(_arr(y))
            row = x[:, 0, 0]
            is_flipped = row[:, 0] == -1
            np.testing.assert_array_equal(np.where(is_flipped, row[:, 1], row[:, 0]), y)
            flipped |= set(y[is_flipped].tolist())
        out.append(flipped)
    return out


def test_loader_passes_batch_info_to_transforms_that_ask():
    seen = []

    class Record:
        uses_batch_info = True

        def __call__(self, x, rng, info=None):
            seen.append((info.indices.tolist(), info.epoch, info.seed))
            return x

    loader = DataLoader(_tagged(10), batch_size=4, shuffle=True, seed=5, as_tensor=False,
                        transform=T.Compose([T.ToFloat(), Record()]))
    loader.set_epoch(2)
    ys = [y.tolist() for _, y in loader]
    assert [s[0] for s in seen] == ys  # the dataset indices, in batch order
    assert all(s[1:] == (2, 5) for s in seen)
    # a plain two-argument function still works as a transform
    plain = DataLoader(_tagged(10), batch_size=4, transform=lambda x, rng: x + 1,
                       as_tensor=False)
    assert next(iter(plain))[0][0, 0, 0, 1] == 0


def test_alternating_flip_over_epochs_in_a_shuffled_loader(device):
    n = 50
    loader = DataLoader(_tagged(n), batch_size=8, shuffle=True, seed=3, device=device,
                        transform=T.AlternatingFlip())
    sets = _flip_sets(loader, 4)
    everything = set(range(n))
    assert 0 < len(sets[0]) < n
    assert sets[1] == everything - sets[0]  # epoch 1 flips exactly the others
    assert sets[2] == sets[0] and sets[3] == sets[1]
    # the flips belong to the index, not the batch: another batch size, same sets
    other = DataLoader(_tagged(n), batch_size=13, shuffle=True, seed=3, device=device,
                       transform=T.Compose([T.AlternatingFlip()]))
    assert _flip_sets(other, 2) == sets[:2]
    # and to the loader's seed
    reseeded = DataLoader(_tagged(n), batch_size=8, shuffle=True, seed=4, device=device,
                          transform=T.AlternatingFlip())
    assert _flip_sets(reseeded, 1)[0] != sets[0]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_alternating_flip_resumes_exactly_from_state_dict(prefetch):
    def make():
        aug = T.Compose([T.RandomCrop((1, 2), padding=(0, 1), padding_mode="reflect"),
                         T.AlternatingFlip()])
        return DataLoader(_tagged(30), batch_size=7, shuffle=True, seed=9, transform=aug,
                          prefetch=prefetch, as_tensor=False)

    full = make()
    epochs = [_epoch(full) for _ in range(5)]
    saved = make()
    for _ in range(3):
        _epoch(saved)
    state = saved.state_dict()  # a checkpoint taken after epoch 3 (epochs 0-2 done)
    resumed = make()  # a new process: new loader, new transform, empty cache
    resumed.load_state_dict(state)
    for k in (3, 4):
        got = _epoch(resumed)
        assert len(got) == len(epochs[k])
        for p, q in zip(got, epochs[k]):
            for u, v in zip(p, q):
                np.testing.assert_array_equal(u, v)
