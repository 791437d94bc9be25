"""The ranks' side of tests/distributed/test_mpi.py: ``mpiexec -n 2 python -m mpi4py
mpi_worker.py SCENARIO OUTDIR [ARGS...]``.

Each scenario joins the job with ``init_process_group``, runs, and writes what the test
compares (``.npz`` weights, ``.json`` numbers) into OUTDIR, one file per rank where the
ranks' views matter. One-process references are computed here too, on rank 0, with the
same code minus ``DistributedDataParallel``: no collective runs while rank 0 computes
them, so rank 1 just waits at its next collective.

Everything is tiny (12x12 or 8x8 images, batches of 8) so that a job takes a second or
two; the run is float64 wherever the test compares to 1e-10.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

import minidl
from minidl import distributed as dist
from minidl import nn, optim
from minidl.data import DataLoader
from minidl.data import transforms as T
from minidl.distributed import DistributedDataParallel, DistributedSampler, SyncBatchNorm
from minidl.functional import softmax_cross_entropy
from minidl.models import seed_cnn
from minidl.train import Callback, ModelCheckpoint, PrintEpoch, Trainer

B = 8  # the global batch


def weights(model: nn.Module) -> dict[str, np.ndarray]:
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return {k: np.array(v.data) for k, v in model.state_dict().items()}


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


# -- a. equivalence: 2 ranks x B/2 == 1 process x B ---------------------------------------


def _cnn(seed: int, dtype) -> nn.Module:
    minidl.manual_seed(seed)
    model = seed_cnn(num_classes=4, in_channels=3, image_size=12)
    return model.double() if dtype == np.float64 else model


def _cnn_data(dtype, steps: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * B, 3, 12, 12)).astype(dtype)
    y = rng.integers(0, 4, steps * B).astype(np.int64)
    return x, y


def _train_steps(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int,
                 ddp: DistributedDataParallel | None = None, shard: slice = slice(None)
                 ) -> None:
    """``steps`` Adam steps on consecutive global batches; with ``ddp``, this rank's
    ``shard`` of each and the gradients averaged."""
    net = ddp if ddp is not None else model
    opt = optim.Adam(net.parameters(), lr=1e-3)
    for s in range(steps):
        xs, ys = x[s * B:(s + 1) * B][shard], y[s * B:(s + 1) * B][shard]
        loss = softmax_cross_entropy(net(minidl.tensor(xs)), minidl.tensor(ys))
        opt.zero_grad()
        loss.backward()
        if ddp is not None:
            ddp.allreduce_gradients()
        opt.step()


def equivalence(out: Path, steps: str = "3", cases: str = "all") -> None:
    world = dist.init_process_group()
    rank, size = world.rank, world.size
    b = B // size
    shard = slice(rank * b, (rank + 1) * b)
    n_steps = int(steps)
    todo = [("f64", np.float64, 0), ("f32", np.float32, 0), ("seeds", np.float64, rank)]
    if cases == "f64":
        todo = todo[:1]
    for name, dtype, seed_offset in todo:
        x, y = _cnn_data(dtype, n_steps)
        model = _cnn(100 + seed_offset, dtype)
        before = weights(model)
        ddp = DistributedDataParallel(model)
        after_init = weights(model)
        _train_steps(model, x, y, n_steps, ddp, shard)
        np.savez(out / f"{name}_rank{rank}.npz", **weights(model))
        np.savez(out / f"{name}_init_rank{rank}.npz", **before)
        np.savez(out / f"{name}_bcast_rank{rank}.npz", **after_init)
        if rank == 0:
            ref = _cnn(100, dtype)
            _train_steps(ref, x, y, n_steps)
            np.savez(out / f"{name}_ref.npz", **weights(ref))
    if cases == "f64":
        return

    # Trainer.fit with (x, y) arrays and the global batch_size: the trainer shards them.
    x, y = _cnn_data(np.float64)

    def trainer_run(model: nn.Module, data) -> dict:
        trainer = Trainer(model, optim.Adam(model.parameters(), lr=1e-3), progress=False)
        if isinstance(data, tuple):
            trainer.fit(data, epochs=2, batch_size=B, shuffle=True)
        else:
            trainer.fit(data, epochs=2)
        return weights(model)

    # The shuffle seed is drawn from the global generator (rank 0's, broadcast), which
    # rank_seed leaves as a one-process run's on rank 0.
    minidl.manual_seed(dist.rank_seed(7))
    w = trainer_run(DistributedDataParallel(_cnn_here()), (x, y))
    np.savez(out / f"fit_arrays_rank{rank}.npz", **w)
    # The same through a DataLoader with a DistributedSampler and an explicit seed.
    minidl.manual_seed(dist.rank_seed(8))
    loader = DataLoader((x, y), batch_size=b, shuffle=True, seed=11,
                        sampler=DistributedSampler())
    w = trainer_run(DistributedDataParallel(_cnn_here()), loader)
    np.savez(out / f"fit_loader_rank{rank}.npz", **w)
    if rank == 0:
        minidl.manual_seed(7)
        np.savez(out / "fit_arrays_ref.npz", **trainer_run(_cnn_here(), (x, y)))
        minidl.manual_seed(8)
        loader = DataLoader((x, y), batch_size=B, shuffle=True, seed=11)
        np.savez(out / "fit_loader_ref.npz", **trainer_run(_cnn_here(), loader))


def _cnn_here() -> nn.Module:
    """The float64 seed CNN, initialised from the global generator as it stands."""
    return seed_cnn(num_classes=4, in_channels=3, image_size=12).double()


# -- b. SyncBatchNorm: 2 ranks x b == 1 process x 2b with plain batch norm ----------------


def _bn_net() -> nn.Module:
    minidl.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6), nn.BatchNorm1d(6, activation="relu"), nn.Linear(6, 3),
    ).double()


def syncbn(out: Path) -> None:
    world = dist.init_process_group()
    rank, size = world.rank, world.size
    n = 2 * size  # the global batch: b = 2 per rank
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2 * n, 3, 5, 5)) * 2 + 0.5
    y = rng.integers(0, 3, 2 * n).astype(np.int64)

    def run(model: nn.Module, ddp: DistributedDataParallel | None, shard: slice) -> dict:
        net = ddp if ddp is not None else model
        opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        result: dict = {}
        for step in range(2):
            xs = x[step * n:(step + 1) * n][shard]
            ys = y[step * n:(step + 1) * n][shard]
            loss = softmax_cross_entropy(net(minidl.tensor(xs)), minidl.tensor(ys))
            opt.zero_grad()
            loss.backward()
            value = float(loss.item())
            if ddp is not None:
                ddp.allreduce_gradients()
                value = dist.all_reduce_scalars([value])[0] / size
            result[f"loss{step}"] = np.array(value)
            if step == 0:
                for k, p in model.named_parameters():
                    result[f"grad0.{k}"] = np.array(p.grad.data)
            opt.step()
        for k, v in model.state_dict().items():  # raw buffers: no sync_buffers here
            result[f"state.{k}"] = np.array(v.data)
        return result

    model = SyncBatchNorm.convert_sync_batchnorm(_bn_net())
    kinds = sorted({type(m).__name__ for m in model.modules()})
    b = n // size
    got = run(model, DistributedDataParallel(model), slice(rank * b, (rank + 1) * b))
    np.savez(out / f"syncbn_rank{rank}.npz", **got)
    write_json(out / f"syncbn_kinds_rank{rank}.json", kinds)
    if rank == 0:
        np.savez(out / "syncbn_ref.npz", **run(_bn_net(), None, slice(None)))


# -- c. determinism and resume through Trainer.fit ----------------------------------------


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8),
            rng.integers(0, 3, n).astype(np.int64))


class _CopyAfterEpoch1(Callback):
    """Rank 0 keeps the epoch-1 checkpoint (ModelCheckpoint overwrites last.npz)."""

    def __init__(self, src: Path, dst: Path) -> None:
        self.src, self.dst = src, dst

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if epoch == 1 and self.trainer.is_main_process:
            shutil.copyfile(self.src, self.dst)


def determinism(out: Path, mode: str) -> None:
    """``mode``: ``plain`` (2 epochs), ``ckpt`` (2 epochs with ModelCheckpoint, keeping the
    epoch-1 checkpoint) or ``resume`` (load that checkpoint, fit to epoch 2)."""
    world = dist.init_process_group()
    rank = world.rank
    minidl.manual_seed(dist.rank_seed(5))  # dropout masks differ per rank
    x, y = _images(40, 2)
    augment = T.Compose([T.RandomCrop(8, padding=2, padding_mode="reflect"),
                         T.RandomHorizontalFlip(), T.ToFloat()])
    loader = DataLoader((x, y), batch_size=4, shuffle=True, seed=21, transform=augment,
                        sampler=DistributedSampler())
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 4 * 4, 3))
    ddp = DistributedDataParallel(model)
    callbacks: list[Callback] = [PrintEpoch()]
    if mode == "ckpt":
        folder = out / "ckpt"
        callbacks += [ModelCheckpoint(folder),
                      _CopyAfterEpoch1(folder / "last.npz", out / "epoch1.npz")]
    trainer = Trainer(ddp, optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9),
                      callbacks=callbacks, progress=False)
    if mode == "resume":
        trainer.load_checkpoint(out / "epoch1.npz")
        assert trainer.epoch == 1, trainer.epoch
    trainer.fit(loader, epochs=2)
    np.savez(out / f"{mode}_rank{rank}.npz", **weights(model))


# -- d. uneven shards ---------------------------------------------------------------------


class _CountSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_epoch_begin(self, epoch: int) -> None:
        self.steps.append(0)

    def on_batch_end(self, step: int, logs: dict) -> None:
        self.steps[-1] += 1


def uneven(out: Path) -> None:
    world = dist.init_process_group()
    rank = world.rank
    x, y = _images(22, 3)  # 22 = 2 global batches of 8, then 6
    xf = x.astype(np.float32) / 255
    minidl.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.ReLU(), nn.Linear(8, 3))
    ddp = DistributedDataParallel(model)
    counter = _CountSteps()
    trainer = Trainer(ddp, optim.SGD(ddp.parameters(), lr=0.1), callbacks=[counter],
                      progress=False)
    loader = DataLoader((xf, y), batch_size=B // world.size, shuffle=True, seed=1,
                        sampler=DistributedSampler())
    trainer.fit(loader, epochs=2)
    trainer.fit((xf, y), epochs=3, batch_size=B)  # arrays: sharded, padded, one more epoch
    # Evaluation without padding: 17 images, 4 per batch: rank 0 gets 8, rank 1 gets 9.
    xe, ye = _images(17, 9)
    xe = xe.astype(np.float32) / 255
    eval_loader = DataLoader((xe, ye), batch_size=4, sampler=DistributedSampler(pad=False))
    metrics = trainer.evaluate(eval_loader)
    result = {"steps": counter.steps, "eval_batches": len(eval_loader),
              "eval_images": int(sum(len(b[1]) for b in eval_loader)),
              "accuracy": metrics["accuracy"], "loss": metrics["loss"],
              "array_accuracy": trainer.evaluate((xe, ye), batch_size=4)["accuracy"]}
    np.savez(out / f"uneven_rank{rank}.npz", **weights(model))
    # Inference on arrays: every rank asked for the logits of all 17 images.
    np.savez(out / f"uneven_predict_rank{rank}.npz", predict=trainer.predict(xe, batch_size=4))
    if rank == 0:  # one process, the bare model: no collectives
        ref = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False)
        m = ref.evaluate((xe, ye), batch_size=4)
        result.update(ref_accuracy=m["accuracy"], ref_loss=m["loss"])
        np.savez(out / "uneven_predict_ref.npz", predict=ref.predict(xe, batch_size=4))
    write_json(out / f"uneven_rank{rank}.json", result)


# -- e-g. failures ------------------------------------------------------------------------

MARKER = "rank-one-failure-marker-6c1f"


def fail(out: Path) -> None:
    world = dist.init_process_group()
    if world.rank == 1:
        raise RuntimeError(f"{MARKER}: rank 1 fails on purpose")
    world.barrier()  # rank 0 waits here for a rank that never comes
    (out / "rank0_passed_the_barrier").write_text("the job should have been aborted")


def mismatch(out: Path) -> None:
    world = dist.init_process_group()
    width = 6 if world.rank == 1 else 5
    model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
    DistributedDataParallel(model)
    (out / f"rank{world.rank}_wrapped").write_text("the mismatch went unnoticed")


def unsharded(out: Path) -> None:
    dist.init_process_group()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 2, 16)
    model = DistributedDataParallel(nn.Linear(4, 2))
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).fit(
        DataLoader((x, y), batch_size=4, seed=0), epochs=1)
    (out / "trained").write_text("an unsharded loader was accepted")


def indivisible(out: Path) -> None:
    dist.init_process_group()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(14, 4)).astype(np.float32), rng.integers(0, 2, 14)
    model = DistributedDataParallel(nn.Linear(4, 2))
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).fit(
        (x, y), epochs=1, batch_size=7)
    (out / "trained").write_text("batch 7 on 2 ranks was accepted")


# -- i. a cheap scenario for the launcher (and a world of one MPI rank) --------------------


def hello(out: Path) -> None:
    import os

    world = dist.init_process_group()
    total = dist.all_reduce_scalars([world.rank + 1.0])[0]
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                          "NUMBA_NUM_THREADS")}
    write_json(out / f"hello_rank{world.rank}.json",
               {"rank": world.rank, "size": world.size, "sum": total, "env": env,
                "backend": world.backend, "local_rank": world.local_rank(),
                "main": dist.is_main_process(), "initialized": dist.is_initialized()})


SCENARIOS = {"equivalence": equivalence, "syncbn": syncbn, "determinism": determinism,
             "uneven": uneven, "fail": fail, "mismatch": mismatch,
             "indivisible": indivisible, "unsharded": unsharded, "hello": hello}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](Path(sys.argv[2]), *sys.argv[3:])
