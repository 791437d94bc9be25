"""Train a CNN on CIFAR-10 with differential privacy (DP-SGD, ``minidl.privacy``).

    python examples/cifar10_dp.py --data-dir ../shared/datasets/cifar-10-batches-bin \\
        --target-epsilon 8

The recipe is one suited to DP-SGD (see docs/privacy.md): a small GroupNorm CNN
(``minidl.models.dp_cnn``: no batch norm, which mixes examples), large logical batches drawn
by Poisson sampling (1024 expected, processed in physical chunks of 256), per-example
clipping to a small norm (0.1) with SGD-momentum at a correspondingly large learning rate
(Tramer & Boneh 2021's setting), and the noise multiplier computed so that the whole run
spends ``--target-epsilon`` at ``--delta`` (RDP accountant by default). Epsilon is logged
after every epoch (history, progress line, plots). Everything goes to ``--out`` as with
``examples/cifar10.py`` (checkpoints each epoch; ``--resume`` continues a run exactly, its
epsilon included). Needs the ``privacy`` extra: ``pip install -e ".[privacy]"``.

``--model scatter_linear`` / ``scatter_cnn`` train a small head on fixed wavelet scattering
features instead (Tramer & Boneh 2021; ``nn.Scattering2D``), the strongest recipe at small
epsilon: nothing before the head is learned, so no privacy is spent on it, and the noise
goes into few weights. Their recipe (``--batch-size 8192 --epochs 60``) is the default for
them. The features are computed once per data set (about 5 minutes on one core for
CIFAR-10) and kept in ``--feature-cache``; the checkpoint holds the head, whose parameter
names are those of the whole model (``minidl.models.scatter_cnn()``), which takes images.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

import minidl
from minidl import nn, optim, privacy
from minidl._fileio import atomic_write
from minidl.data import DataLoader, load_cifar10
from minidl.data import transforms as T
from minidl.data._util import default_data_root
from minidl.data.datasets import CIFAR10_CLASSES
from minidl.inference import prediction_metadata
from minidl.models import dp_cnn, scatter_cnn, scatter_linear
from minidl.train import ModelCheckpoint, PrintEpoch, Trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402
from reporting import report_run  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)  # public per-channel statistics (not read from the data)
STD = (0.2470, 0.2435, 0.2616)
MODELS = ("dp_cnn", "scatter_linear", "scatter_cnn")
# What differs between the recipes when a flag is not given: (batch size, epochs, lr).
RECIPES = {"dp_cnn": (1024, 30, 4.0), "scatter_linear": (8192, 60, 4.0),
           "scatter_cnn": (8192, 60, 4.0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.Parser(description="DP-SGD on CIFAR-10 with minidl")
    p.add_argument("--data-dir", default=os.environ.get("MINIDL_CIFAR10_DIR"),
                   help="folder with the CIFAR-10 batches (default: $MINIDL_CIFAR10_DIR, "
                        "else download to the cache)")
    p.add_argument("--target-epsilon", type=cli.positive_float, default=8.0,
                   help="privacy budget of the whole run (the noise is calibrated to it)")
    p.add_argument("--noise-multiplier", type=cli.positive_float, default=None,
                   help="use this sigma instead of calibrating to --target-epsilon")
    p.add_argument("--delta", type=cli.positive_float, default=1e-5)
    p.add_argument("--accountant", choices=("rdp", "pld"), default="rdp")
    p.add_argument("--model", choices=MODELS, default="dp_cnn",
                   help="dp_cnn: end-to-end GroupNorm CNN; scatter_linear / scatter_cnn: a "
                        "linear layer / small CNN on fixed scattering features")
    p.add_argument("--epochs", type=cli.positive_int, default=None,
                   help="default: 30 for dp_cnn, 60 for the scattering models")
    p.add_argument("--batch-size", type=cli.positive_int, default=None,
                   help="expected logical batch (Poisson sampling); default: 1024 for "
                        "dp_cnn, 8192 for the scattering models")
    p.add_argument("--physical-batch-size", type=cli.positive_int, default=None,
                   help="examples per forward/backward pass; default: 256 for dp_cnn, "
                        "1024 for the scattering models")
    p.add_argument("--max-grad-norm", type=cli.positive_float, default=0.1)
    p.add_argument("--lr", type=cli.positive_float, default=None, help="default: 4")
    p.add_argument("--momentum", type=cli.fraction, default=0.9)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="learning rate over the run: constant, or cosine decay to 0 over "
                        "the optimizer steps")
    p.add_argument("--width", type=cli.positive_int, default=None,
                   help="channels: dp_cnn's first block (default 32), scatter_cnn's convs "
                        "(default 64)")
    p.add_argument("--feature-cache", default=None,
                   help="where scattering features are kept between runs (default: "
                        "<data cache>/features)")
    p.add_argument("--limit", type=cli.positive_int, default=None,
                   help="train on the first N images only (a quick try; epsilon is then "
                        "that of the smaller data set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/cifar10_dp")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.npz "
                   "(the accountant, noise stream and sampling resume with it)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    batch, epochs, lr = RECIPES[args.model]
    scatter = args.model != "dp_cnn"
    args.batch_size = args.batch_size or batch
    args.epochs = args.epochs or epochs
    args.lr = args.lr or lr
    args.physical_batch_size = args.physical_batch_size or (1024 if scatter else 256)
    if args.width is None:
        args.width = {"dp_cnn": 32, "scatter_cnn": 64}.get(args.model)
    elif args.model == "scatter_linear":
        p.error("--width: scatter_linear has no width (it is one Linear layer)")
    return args


def scattering_features(images: np.ndarray, cache: Path, chunk: int = 500) -> np.ndarray:
    """The scattering transform (J=2, L=8) of normalized uint8 images ``(N, 3, 32, 32)``:
    float32 ``(N, 243, 8, 8)``, computed once and kept in ``cache`` under a digest of the
    images (a changed data set or ``--limit`` gets its own file). The file is written
    atomically, so an interrupted run never leaves a truncated cache behind."""
    key = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    path = cache / f"scattering-J2-L8-{key}.npy"
    if path.exists():
        try:
            feats = np.load(path, mmap_mode="r", allow_pickle=False)
            if feats.shape == (len(images), 243, 8, 8) and feats.dtype == np.float32:
                print(f"scattering features of {len(images)} images from {path}", flush=True)
                return np.ascontiguousarray(feats)
        except ValueError:
            pass  # not a readable .npy: compute it again
    start = time.perf_counter()
    to_input = T.Compose([T.ToFloat(), T.Normalize(MEAN, STD)])
    scattering = nn.Scattering2D(J=2, L=8)
    feats = np.empty((len(images), 243, 8, 8), np.float32)
    with minidl.no_grad():
        for i in range(0, len(images), chunk):
            feats[i:i + chunk] = scattering(minidl.tensor(to_input(images[i:i + chunk]))).numpy()
    with atomic_write(path) as f:
        np.save(f, feats, allow_pickle=False)
    print(f"scattering features of {len(images)} images: {time.perf_counter() - start:.0f} s "
          f"(kept in {path})", flush=True)
    return feats


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    minidl.manual_seed(args.seed)
    out = cli.fresh_run_folder(Path(args.out), args.resume, args.overwrite)
    try:
        x_train, y_train = load_cifar10(args.data_dir, train=True,
                                        download=not args.no_download)
        x_test, y_test = load_cifar10(args.data_dir, train=False,
                                      download=not args.no_download)
    except cli.DatasetNotFoundError as exc:
        raise cli.CLIError(f"no CIFAR-10 in {args.data_dir or 'the cache folder'}: point "
                           "--data-dir at the folder holding cifar-10-batches-bin/") from exc
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
        x_test, y_test = x_test[: max(args.limit, 1000)], y_test[: max(args.limit, 1000)]
    n = len(x_train)
    if args.delta >= 1 / n:
        raise cli.CLIError(f"--delta {args.delta:g} must be below 1/N = {1 / n:.3g} for "
                           f"{n} training images")
    if args.batch_size > n:
        raise cli.CLIError(f"--batch-size {args.batch_size} exceeds the {n} training images")
    out.mkdir(parents=True, exist_ok=True)
    print(f"CIFAR-10: {n} train / {len(x_test)} test images", flush=True)

    if args.model == "dp_cnn":
        to_input = T.Compose([T.ToFloat(), T.Normalize(MEAN, STD)])
        train_x, test_x = x_train, x_test
        model = dp_cnn(width=args.width)
        input_shape = (1, 3, 32, 32)
        kwargs = {"width": args.width}
    else:  # the fixed transform runs once; the model is the head that follows it
        cache = Path(args.feature_cache) if args.feature_cache else default_data_root() / \
            "features"
        train_x = scattering_features(x_train, cache)
        test_x = scattering_features(x_test, cache)
        to_input = None
        kwargs = {"width": args.width} if args.model == "scatter_cnn" else {}
        model = (scatter_cnn if args.model == "scatter_cnn" else scatter_linear)(
            features=True, **kwargs)
        input_shape = (1, 243, 8, 8)
    train = DataLoader((train_x, y_train), batch_size=args.batch_size, seed=args.seed,
                       transform=to_input, prefetch=2)
    test = DataLoader((test_x, y_test), batch_size=1000, transform=to_input)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    budget = ({"noise_multiplier": args.noise_multiplier} if args.noise_multiplier
              else {"target_epsilon": args.target_epsilon, "epochs": args.epochs})
    model, optimizer, train = privacy.make_private(
        model, optimizer, train, max_grad_norm=args.max_grad_norm, target_delta=args.delta,
        max_physical_batch_size=args.physical_batch_size, accountant=args.accountant,
        seed=args.seed, **budget)
    print(f"DP-SGD: noise multiplier {optimizer.noise_multiplier:.4f}, clip norm "
          f"{args.max_grad_norm:g}, sample rate {train.sample_rate:.5f} "
          f"({train.steps_per_epoch} steps/epoch), delta {args.delta:g}", flush=True)
    model.summary(input_shape)
    scheduler = None
    if args.schedule == "cosine":  # per optimizer step (Trainer skips the virtual steps)
        scheduler = optim.lr_scheduler.CosineAnnealingLR(
            optimizer.optimizer, T_max=args.epochs * train.steps_per_epoch)
    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), scheduler=scheduler,
                      scheduler_per="batch",
                      callbacks=[ModelCheckpoint(out, monitor="val_accuracy"), PrintEpoch()],
                      progress=not args.no_progress, log_every=20,
                      # what minidl.predict needs: it rebuilds the whole model (with its
                      # scattering front for the scattering heads), which takes images
                      metadata=prediction_metadata(args.model, CIFAR10_CLASSES, 32,
                                                   model_kwargs=kwargs, mean=MEAN, std=STD))
    if args.resume:
        ckpt = out / "last.npz"
        if not ckpt.exists():
            raise cli.CLIError(f"--resume: no checkpoint at {ckpt}")
        try:
            trainer.load_checkpoint(ckpt)
        except (ValueError, KeyError) as exc:
            raise cli.CLIError(f"--resume: {ckpt} does not fit these options ({exc}); resume "
                               "with the options of that run") from None
        if trainer.epoch >= args.epochs:
            raise cli.CLIError(f"--resume: {ckpt} has already trained {trainer.epoch} "
                               f"epoch(s) and --epochs is {args.epochs}")
        planned = getattr(scheduler, "T_max", None)
        if planned is not None and planned != args.epochs * train.steps_per_epoch:
            raise cli.CLIError(f"--resume: {ckpt} follows a cosine schedule of {planned} steps "
                               f"({planned // train.steps_per_epoch} epochs); resume with "
                               f"--epochs {planned // train.steps_per_epoch}")
        before = optimizer.saved_noise_multiplier
        if before is not None and abs(before - optimizer.noise_multiplier) > 1e-12:
            raise cli.CLIError(
                f"--resume: that run's noise multiplier ({before:.4f}) was calibrated to "
                f"its own --epochs; this one calibrates {optimizer.noise_multiplier:.4f}. "
                f"Resume with that run's --epochs, or pass --noise-multiplier {before:.4f} "
                "to continue past its budget (the epsilon then logged says how far)")
        print(f"resumed from {ckpt} after epoch {trainer.epoch} (epsilon so far "
              f"{optimizer.epoch_metrics()['epsilon']:.3f})", flush=True)
    start = time.perf_counter()
    history = trainer.fit(train, epochs=args.epochs, validation=test)
    wall = time.perf_counter() - start
    config = {
        "command": cli.command_line(__file__, argv),
        "model": args.model + (f"(width={args.width})" if args.width else "()"),
        "epochs": args.epochs,
        "expected_batch_size": args.batch_size, "physical_batch_size":
        args.physical_batch_size, "lr": args.lr, "momentum": args.momentum,
        "schedule": args.schedule,
        "max_grad_norm": args.max_grad_norm, "noise_multiplier": optimizer.noise_multiplier,
        "target_epsilon": None if args.noise_multiplier else args.target_epsilon,
        "delta": args.delta, "accountant": args.accountant, "seed": args.seed,
        "limit": args.limit, "test_images": len(x_test),
        "epsilon": optimizer.epoch_metrics()["epsilon"], "dp_steps": optimizer.steps,
    }
    result = report_run(trainer, history, test, out, config, wall, CIFAR10_CLASSES, x_test,
                        y_test)
    print(f"epsilon spent: {config['epsilon']:.3f} at delta {args.delta:g}", flush=True)
    return result


if __name__ == "__main__":
    cli.run(main)
