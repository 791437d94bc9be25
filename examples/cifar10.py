"""Train a CNN on CIFAR-10 with minidl, the way the classic Keras tutorial does.

    python examples/cifar10.py --data-dir ../shared/datasets/cifar-10-batches-bin

Defaults follow the tutorial: the seed network (Conv32-Pool-Conv64-Pool-Dense128-Dense10),
Adam with lr 1e-3, batch 64, 10 epochs, the test set used for validation each epoch.
``--model resnet9 --augment`` trains the ResNet-style net with batch norm, flip + crop
augmentation and a one-cycle schedule. Everything a run produces goes to ``--out``:
checkpoints (``last.npz`` each epoch), ``history.json``/``.csv``, ``result.json`` and, when
matplotlib is installed, plots. ``--resume`` continues from ``<out>/last.npz`` and gives the
same result as an uninterrupted run with the same seed.

Your own images: ``--data-dir FOLDER`` where FOLDER holds one sub-folder of images (JPEG,
PNG, ...) per class trains on them instead, decoded at 32x32 (``minidl.data.ImageFolder``)
and split by class into training and validation (``--val-fraction``, 10% by default); the
validation split then plays the test set's part, the folder names are the classes, and
inputs are normalized with the training split's own per-channel mean and std. Checkpoints
record the architecture, classes and normalization, so that ``python -m minidl predict
--checkpoint <out>/best.npz photo.jpg`` needs nothing else.

Data-parallel training on several processes (cores, GPUs or machines) over MPI, with the
``mpi`` extra installed (``pip install -e ".[mpi]"``)::

    python -m minidl.distributed -n 2 examples/cifar10.py --distributed --data-dir ...

(or ``mpiexec -n 2 python -m mpi4py examples/cifar10.py --distributed ...``). The batch size
is the global one, each rank taking its share; rank 0 writes the files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import minidl
from minidl import distributed as dist
from minidl import nn, optim
from minidl.data import IMAGE_EXTENSIONS, DataLoader, ImageFolder, load_cifar10, train_val_split
from minidl.data import transforms as T
from minidl.data.datasets import CIFAR10_CLASSES
from minidl.inference import prediction_metadata
from minidl.models import build_model
from minidl.train import ModelCheckpoint, PrintEpoch, Trainer

# examples/reporting.py, beside this script, however the script was loaded
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402
from reporting import report_run  # noqa: E402

# Per-channel statistics of the CIFAR-10 training set (for Normalize).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.Parser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("MINIDL_CIFAR10_DIR"),
                   type=cli.existing_path,
                   help="CIFAR-10 folder or archive (python or binary version), or a folder "
                        "of your own images with one sub-folder per class; default: "
                        "$MINIDL_CIFAR10_DIR, then the cache dir (downloading if needed)")
    p.add_argument("--val-fraction", type=cli.fraction, default=0.1,
                   help="with an image folder: the share of each class held out for "
                        "validation")
    p.add_argument("--epochs", type=cli.positive_int, default=10)
    p.add_argument("--batch-size", type=cli.positive_int, default=64)
    p.add_argument("--lr", type=cli.positive_float, default=None,
                   help="learning rate, the peak of the one-cycle schedule (default: 1e-3 for "
                        "Adam, 0.1 for SGD)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                   help="default: adam for the seed net (the tutorial's), sgd with Nesterov "
                        "momentum 0.9 for resnet9")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: 0 for Adam, 5e-4 for SGD (AdamW is used when > 0 with Adam)")
    p.add_argument("--model", choices=("seed", "resnet9"), default="seed")
    p.add_argument("--width", type=cli.positive_int, default=32, help="resnet9 base width")
    p.add_argument("--augment", action="store_true", help="random crop (pad 4) + flip")
    p.add_argument("--schedule", choices=("constant", "onecycle"), default=None,
                   help="LR schedule (default: constant for seed, onecycle for resnet9)")
    p.add_argument("--label-smoothing", type=cli.fraction, default=0.0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 GEMMs, float32 master weights, loss "
                        "scaling (for CUDA; slow on the CPU)")
    p.add_argument("--limit", type=cli.positive_int, default=None,
                   help="train on the first N images (and, unless --test-limit, evaluate on "
                        "max(N, 1000) test images)")
    p.add_argument("--test-limit", type=cli.positive_int, default=None,
                   help="evaluate on N test images, evenly spaced (every class even when the "
                        "test file is sorted by class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/cifar10", help="folder for checkpoints, history, "
                                                         "plots")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.npz")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even if it holds an earlier run (default: a fresh "
                        "<out>-2, <out>-3, ... folder)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--no-download", action="store_true", help="never download the data")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also write TensorBoard event files (scalars, confusion matrix, "
                        "predictions) into DIR; needs pip install -e \".[tensorboard]\"")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI job (launch with python -m "
                        "minidl.distributed -n N ...); NCCL between GPUs with --device cuda")
    p.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch-norm statistics over all ranks")
    return p.parse_args(argv)


def architecture(args: argparse.Namespace, num_classes: int) -> tuple[str, dict]:
    """The network as ``minidl.models.MODELS`` names it: what ``build`` makes and what the
    checkpoints record for ``minidl.predict``."""
    if args.model == "seed":
        return "seed_cnn", {"num_classes": num_classes}
    return "resnet9", {"num_classes": num_classes, "width": args.width}


def is_image_folder(path: Path) -> bool:
    """True for a folder with a sub-folder of image files (a class folder); False for the
    CIFAR-10 folders and archives, whose sub-folders, if any, hold batch files."""
    return path.is_dir() and any(
        sub.is_dir() and not sub.name.startswith(".")
        and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in sub.iterdir() if f.is_file())
        for sub in path.iterdir())


def load_image_folder(args: argparse.Namespace, verbose: bool = True):
    """The folder's images as uint8 arrays at 32x32, split by class: ``(x_train, y_train,
    x_val, y_val, classes)``. Decoded once, here, rather than every epoch; ``--limit``
    keeps a random sample of the training split (the folder is sorted by class) and is
    applied before decoding."""
    data = ImageFolder(args.data_dir, size=32)
    train, val = train_val_split(data, args.val_fraction, seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(train))[: args.limit]
    if verbose:
        print(f"decoding {len(order) + len(val)} of the {len(data)} images in {data.root} "
              f"({len(data.classes)} classes) at 32x32", flush=True)
    x_train, y_train = train.get_batch(order)
    x_val, y_val = val.get_batch(np.arange(len(val)))
    return x_train, y_train, x_val, y_val, list(data.classes)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)`` scaled to [0, 1], summed in
    float64 a chunk at a time (no float copy of the whole set). A constant channel gets std
    1/255 rather than 0, which Normalize would refuse."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        squares += np.square(x).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1 / 255).tolist()


def build(args: argparse.Namespace, steps_per_epoch: int, world, num_classes: int = 10):
    name, kwargs = architecture(args, num_classes)
    model = build_model(name, **kwargs)
    model.to(args.device)
    if args.distributed:  # rank 0's initial weights go to every rank
        if args.sync_bn:
            model = dist.SyncBatchNorm.convert_sync_batchnorm(model, world)
        model = dist.DistributedDataParallel(model, world)
    if args.optimizer == "sgd":
        optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                              weight_decay=args.weight_decay)
    else:
        opt_cls = optim.AdamW if args.weight_decay else optim.Adam
        optimizer = opt_cls(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = args.schedule or ("onecycle" if args.model == "resnet9" else "constant")
    scheduler = None
    if schedule == "onecycle":
        scheduler = optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    return model, optimizer, scheduler


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.optimizer is None:
        args.optimizer = "sgd" if args.model == "resnet9" else "adam"
    if args.lr is None:
        args.lr = 0.1 if args.optimizer == "sgd" else 1e-3
    if args.weight_decay is None:
        args.weight_decay = 5e-4 if args.optimizer == "sgd" else 0.0
    world = dist.get_world()
    if args.distributed:
        world = dist.init_process_group("nccl" if args.device.startswith("cuda") else "mpi")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{world.local_rank()}"  # one GPU per rank of this machine
    elif args.sync_bn:
        raise cli.CLIError("--sync-bn needs --distributed")
    main_rank = world.rank == 0
    minidl.manual_seed(args.seed)
    # Rank 0 decides the folder (the others may not see rank 0's disk).
    out = Path(world.broadcast_object(
        str(cli.fresh_run_folder(Path(args.out), args.resume, args.overwrite))
        if main_rank else None))

    download = not args.no_download
    folder = args.data_dir is not None and is_image_folder(Path(args.data_dir).expanduser())
    if folder:
        x_train, y_train, x_test, y_test, classes = load_image_folder(args, main_rank)
        mean, std = channel_stats(x_train)  # the folder's own statistics, not CIFAR-10's
        data_name = f"image folder {Path(args.data_dir).name}"
    else:
        classes, mean, std, data_name = list(CIFAR10_CLASSES), MEAN, STD, "CIFAR-10"
        try:
            x_train, y_train = load_cifar10(args.data_dir, train=True, download=download)
            x_test, y_test = load_cifar10(args.data_dir, train=False, download=download)
        except cli.DatasetNotFoundError as exc:
            where = args.data_dir or "the cache folder (~/.cache/minidl or $MINIDL_DATA)"
            hint = "" if download or args.data_dir else ", or drop --no-download to fetch it"
            raise cli.CLIError(
                f"no CIFAR-10 in {where}: expected cifar-10-batches-py/, "
                f"cifar-10-batches-bin/ or their .tar.gz archive (or, for your own images, "
                f"one sub-folder of images per class); point --data-dir at the folder that "
                f"holds them{hint}"
            ) from exc  # --debug shows the loader's own error too
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
        if args.test_limit is None:  # a quick run stays quick: evaluate on a sample too
            args.test_limit = max(args.limit, 1000)
    if args.test_limit and args.test_limit < len(x_test):
        keep = np.linspace(0, len(x_test) - 1, args.test_limit).round().astype(np.int64)
        x_test, y_test = x_test[keep], y_test[keep]
    if main_rank:
        print(f"{data_name}: {len(x_train)} train / {len(x_test)} "
              f"{'validation' if folder else 'test'} images, shape {x_train.shape[1:]}"
              + (f"; {world.size} ranks x batch {args.batch_size // world.size}"
                 if args.distributed else ""), flush=True)

    to_input = [T.ToFloat(), T.Normalize(mean, std)]
    augment = [T.RandomCrop(32, padding=4, padding_mode="reflect"),
               T.RandomHorizontalFlip()] if args.augment else []
    try:
        batch = dist.local_batch_size(args.batch_size, world)
    except ValueError as exc:
        raise cli.CLIError(f"--batch-size: {exc}") from None
    shard = dist.DistributedSampler(world) if args.distributed else None
    train = DataLoader((x_train, y_train), batch_size=batch, shuffle=True,
                       seed=args.seed, transform=T.Compose(augment + to_input),
                       device=args.device, prefetch=2, sampler=shard)
    test_shard = dist.DistributedSampler(world, pad=False) if args.distributed else None
    test = DataLoader((x_test, y_test), batch_size=1000, transform=T.Compose(to_input),
                      device=args.device, sampler=test_shard)

    model, optimizer, scheduler = build(args, len(train), world, len(classes))
    # Dropout masks (the seed net has none, but a user's might): each rank its own stream.
    minidl.manual_seed(dist.rank_seed(args.seed, world))
    if main_rank:
        model.summary((1, 3, 32, 32))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    arch, arch_kwargs = architecture(args, len(classes))  # recorded for minidl.predict
    trainer = Trainer(model, optimizer, loss_fn, scheduler=scheduler, scheduler_per="batch",
                      callbacks=[ModelCheckpoint(out, monitor="val_accuracy"), PrintEpoch()] + (
                          [minidl.train.TensorBoard(  # every k-th test image: all classes
                              args.tensorboard, hparams=vars(args), class_names=classes,
                              images=(T.Compose(to_input)(x_test[::max(1, len(x_test) // 256)]),
                                      y_test[::max(1, len(x_test) // 256)]))]
                          if args.tensorboard else []),
                      progress=not args.no_progress,
                      log_every=20, mixed_precision="float16" if args.amp else None,
                      metadata=prediction_metadata(arch, classes, 32, model_kwargs=arch_kwargs,
                                                   mean=mean, std=std))
    if args.resume:
        ckpt = out / "last.npz"
        if not world.broadcast_object(ckpt.exists()):  # rank 0 holds the files
            raise cli.CLIError(f"--resume: no checkpoint at {ckpt}; start a run without "
                               "--resume, or point --out at the run's folder")
        try:
            trainer.load_checkpoint(ckpt)
        except (ValueError, KeyError) as exc:  # another architecture, or not a checkpoint
            detail = str(exc.args[0] if exc.args else exc).splitlines()
            more = f" ({detail[1].split(':')[0].strip()})" if len(detail) > 1 else ""
            raise cli.CLIError(f"--resume: {ckpt} does not fit --model {args.model} with "
                               f"these options{more}; resume with the options of that run, "
                               "or start a new one in another --out") from None
        if trainer.epoch >= args.epochs:
            raise cli.CLIError(f"--resume: {ckpt} has already trained {trainer.epoch} "
                               f"epoch(s) and --epochs is {args.epochs}: nothing left to "
                               f"train; pass a larger --epochs to continue")
        planned = getattr(scheduler, "total_steps", None)
        if planned is not None and planned != args.epochs * len(train):
            # The one-cycle schedule is fixed when a run starts; a longer run needs a new one.
            raise cli.CLIError(f"--resume: {ckpt} follows a one-cycle schedule of {planned} "
                               f"steps ({planned // len(train)} epochs); resume with --epochs "
                               f"{planned // len(train)} or start a new run")
        if main_rank:
            print(f"resumed from {ckpt} after epoch {trainer.epoch}", flush=True)

    start = time.perf_counter()
    history = trainer.fit(train, epochs=args.epochs, validation=test)
    wall = time.perf_counter() - start
    config = {
        "command": cli.command_line(__file__, argv),
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "optimizer": args.optimizer, "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing, "width": args.width,
        "augment": args.augment, "seed": args.seed, "limit": args.limit,
        "test_limit": args.test_limit, "test_images": len(x_test),
        "device": args.device, "amp": args.amp, "world_size": world.size,
        "sync_bn": args.sync_bn, "val_fraction": args.val_fraction if folder else None,
    }
    full_test = DataLoader((x_test, y_test), batch_size=1000, transform=T.Compose(to_input),
                           device=args.device) if args.distributed else test
    return report_run(trainer, history, test, out, config, wall, classes, x_test,
                      y_test, predict_loader=full_test)


if __name__ == "__main__":
    cli.run(main)
