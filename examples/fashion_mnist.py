"""Train a small CNN on Fashion-MNIST (28x28 greyscale clothes, 10 classes) with minidl.

    python examples/fashion_mnist.py --epochs 5
    python examples/fashion_mnist.py --data-dir /path/to/fashion-mnist --limit 5000 --epochs 1

Data: the four IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``--data-dir``; by
default ``$MINIDL_FASHION_MNIST_DIR``, else wherever ``load_fashion_mnist`` finds them
(``$MINIDL_FASHION_MNIST``, the minidl cache dir, Debian's ``/usr/share/datasets/
fashion-mnist`` from ``apt-get install dataset-fashion-mnist``). The network is the seed CNN
sized for 1x28x28 input (Conv32-Pool-Conv64-Pool-Dense128-Dense10, 225,034 parameters),
trained with Adam; ``--augment`` adds random crops (padding 2) and horizontal flips (a
mirrored shirt is still a shirt). Everything a run produces goes to ``--out``: checkpoints
(``last.npz`` each epoch), ``history.json``/``.csv``, ``result.json`` and, when matplotlib
is installed, plots. ``--resume`` continues from ``<out>/last.npz`` and gives the same result
as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import minidl
from minidl import nn, optim
from minidl.data import FASHION_MNIST_CLASSES, DataLoader, load_fashion_mnist
from minidl.data import transforms as T
from minidl.inference import prediction_metadata
from minidl.models import seed_cnn
from minidl.train import ModelCheckpoint, PrintEpoch, Trainer

# examples/reporting.py, beside this script, however the script was loaded
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402
from reporting import report_run  # noqa: E402

# Mean and standard deviation of the Fashion-MNIST training pixels (scaled to [0, 1]).
MEAN = (0.2860,)
STD = (0.3530,)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    p = cli.Parser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("MINIDL_FASHION_MNIST_DIR"),
                   type=cli.existing_path,
                   help="folder with the Fashion-MNIST IDX files; default: "
                        "$MINIDL_FASHION_MNIST_DIR, then auto-detected (e.g. Debian's "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=cli.positive_int, default=5)
    p.add_argument("--batch-size", type=cli.positive_int, default=64)
    p.add_argument("--lr", type=cli.positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--augment", action="store_true",
                   help="random crop (pad 2) + horizontal flip")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--limit", type=cli.positive_int, default=None,
                   help="train on the first N images")
    p.add_argument("--test-limit", type=cli.positive_int, default=None,
                   help="evaluate on N test images, evenly spaced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/fashion_mnist",
                   help="folder for checkpoints, history, plots")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.npz")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even if it holds an earlier run")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the example; returns what it writes to ``result.json``."""
    args = parse_args(argv)
    minidl.manual_seed(args.seed)
    out = cli.fresh_run_folder(Path(args.out), args.resume, args.overwrite)
    try:
        x_train, y_train = load_fashion_mnist(args.data_dir, train=True)
        x_test, y_test = load_fashion_mnist(args.data_dir, train=False)
    except cli.DatasetNotFoundError as exc:
        raise cli.CLIError(f"no Fashion-MNIST found ({args.data_dir or 'auto-detected'}): "
                           "point --data-dir at the folder with the IDX files, or apt-get "
                           "install dataset-fashion-mnist") from exc
    out.mkdir(parents=True, exist_ok=True)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    if args.test_limit and args.test_limit < len(x_test):
        keep = np.linspace(0, len(x_test) - 1, args.test_limit).round().astype(np.int64)
        x_test, y_test = x_test[keep], y_test[keep]
    print(f"Fashion-MNIST: {len(x_train)} train / {len(x_test)} test images, "
          f"shape {x_train.shape[1:]}", flush=True)

    to_input = [T.ToFloat(), T.Normalize(MEAN, STD)]
    augment = [T.RandomCrop(28, padding=2), T.RandomHorizontalFlip()] if args.augment else []
    train = DataLoader((x_train, y_train), batch_size=args.batch_size, shuffle=True,
                       seed=args.seed, transform=T.Compose(augment + to_input),
                       device=args.device, prefetch=2)
    test = DataLoader((x_test, y_test), batch_size=1000, transform=T.Compose(to_input),
                      device=args.device)

    model = seed_cnn(num_classes=10, in_channels=1, image_size=28).to(args.device)
    model.summary((1, 1, 28, 28))
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    callbacks = [ModelCheckpoint(out, monitor="val_accuracy"), PrintEpoch()]
    meta = prediction_metadata("seed_cnn", FASHION_MNIST_CLASSES, 28, mode="L", mean=MEAN,
                               std=STD, model_kwargs={"num_classes": 10, "in_channels": 1,
                                                      "image_size": 28})
    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), callbacks=callbacks,
                      progress=not args.no_progress, log_every=20, metadata=meta)
    if args.resume:
        ckpt = out / "last.npz"
        if not ckpt.exists():
            raise cli.CLIError(f"--resume: no checkpoint at {ckpt}")
        trainer.load_checkpoint(ckpt)
        if trainer.epoch >= args.epochs:
            raise cli.CLIError(f"--resume: {ckpt} has already trained {trainer.epoch} "
                               f"epoch(s) and --epochs is {args.epochs}: nothing left to "
                               "train; pass a larger --epochs to continue")
        print(f"resumed from {ckpt} after epoch {trainer.epoch}", flush=True)

    start = time.perf_counter()
    history = trainer.fit(train, epochs=args.epochs, validation=test)
    wall = time.perf_counter() - start
    config = {
        "command": cli.command_line(__file__, argv),
        "model": "seed_cnn(in_channels=1, image_size=28)", "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "augment": args.augment,
        "seed": args.seed, "limit": args.limit, "test_limit": args.test_limit,
        "train_images": len(x_train), "test_images": len(x_test),
        "device": args.device,
    }
    return report_run(trainer, history, test, out, config, wall, FASHION_MNIST_CLASSES, x_test,
                      y_test)


if __name__ == "__main__":
    cli.run(main)
