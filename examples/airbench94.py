"""airbench94 in minidl: the fastest known CIFAR-10 recipe to ~94%, on a CPU.

    python examples/airbench94.py --data-dir ../shared/datasets/cifar-10-batches-bin

A re-implementation of Keller Jordan's airbench94 (``legacy/airbench94.py`` in
KellerJordan/cifar10-airbench; 94.0% in 9.9 epochs on the official files) with minidl's
own pieces, each a general framework feature:

* the net, ``minidl.models.airbench94``: a frozen 2x2 patch-whitening conv initialised
  from the data (``nn.init.patch_whitening_``: eigenvectors of the 2x2 patch covariance of
  5000 training images), GELU, three conv -> max-pool -> batch norm -> GELU groups with
  batch norms of frozen scale, logits scaled by 1/9;
* SGD with Nesterov momentum 0.85 and per-group learning rates and weight decay
  (``models.airbench94_param_groups``: batch-norm biases at 64x the learning rate), with
  airbench's "decoupled" hyper-parameters (lr 11.5 and weight decay 0.0153 per 1024
  examples, converted below);
* summed cross-entropy with label smoothing 0.2, batch 1024, 9.9 epochs, a warm-up from
  0.2x to 1x over 23% of the steps then a linear decay to 0.07x (``optim.LambdaLR``);
* alternating flip (``data.transforms.AlternatingFlip``) and 2-pixel reflect-pad random
  translation (``RandomCrop(32, padding=2, padding_mode="reflect")``);
* lookahead (``optim.Lookahead``): every 5 steps the weights and batch-norm statistics
  move to an average that grows slower towards the end (decay ``0.95**5 * (step/total)**3``);
  the whitening bias trains for the first 3 epochs only;
* test-time augmentation (``train.tta_predict``, level 2: mirror and two 1-pixel
  translations) for the final accuracy.

Prints one line per epoch and a summary; ``--json`` writes it, with the machine;
``--save`` writes the trained weights as a checkpoint that ``python -m minidl predict``
uses on its own (it carries the architecture, class names and input normalization). The timed
part ("train time") is the whitening init and the training loop, as airbench times it; the
per-epoch test accuracy (without TTA) is not timed; the TTA evaluation is timed on its own.
``benchmarks/airbench94_torch.py`` is the same recipe in PyTorch, for the comparison in
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

import minidl
from minidl import nn, optim
from minidl._fileio import atomic_write_text
from minidl.data import CIFAR10_CLASSES, DataLoader, load_cifar10
from minidl.data import transforms as T
from minidl.inference import prediction_metadata
from minidl.models import airbench94, airbench94_param_groups
from minidl.train import tta_predict

# examples/cli.py, beside this script, however the script was loaded
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 training-set channel statistics
STD = (0.2470, 0.2435, 0.2616)

HYP = {  # airbench94's hyp, same names
    "batch_size": 1024,
    "train_epochs": 9.9,
    "lr": 11.5,  # per 1024 examples, "decoupled" (see kilostep_scale)
    "momentum": 0.85,
    "weight_decay": 0.0153,  # per 1024 examples, likewise
    "bias_scaler": 64.0,  # batch-norm biases learn 64x faster
    "label_smoothing": 0.2,
    "whiten_bias_epochs": 3,
    "translate": 2,
    "batchnorm_momentum": 0.4,  # PyTorch's convention (airbench writes 0.6 = 1 - 0.4)
    "tta_level": 2,
    "whiten_images": 5000,
    "lookahead_every": 5,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.Parser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("MINIDL_CIFAR10_DIR"),
                   type=cli.existing_path,
                   help="CIFAR-10 folder or archive (or set MINIDL_CIFAR10_DIR)")
    p.add_argument("--epochs", type=float, default=HYP["train_epochs"])
    p.add_argument("--batch-size", type=cli.positive_int, default=HYP["batch_size"],
                   help="examples per step (learning rate and weight decay are given per "
                        "1024 examples, so they follow it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=cli.positive_int, default=None,
                   help="train on the first N images")
    p.add_argument("--test-limit", type=cli.positive_int, default=None,
                   help="evaluate on N evenly spaced test images")
    p.add_argument("--json", default=None, help="write the summary here")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="write the trained weights here, with what prediction needs")
    p.add_argument("--overwrite", action="store_true",
                   help="let --save/--json replace files from an earlier run")
    p.add_argument("--no-download", action="store_true", help="never download the data")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = p.parse_args(argv)
    if args.epochs <= 0:
        p.error(f"--epochs must be positive, got {args.epochs}")
    for flag in ("save", "json"):
        path = getattr(args, flag)
        if path is not None and os.path.exists(path) and not args.overwrite:
            p.error(f"--{flag}: {path} exists (from an earlier run?); pass --overwrite to "
                    "replace it, or another path")
    return args


def lr_factor(step: int, total: int) -> float:
    """airbench's schedule: 0.2 -> 1.0 over the first 23% of steps, then 1.0 -> 0.07."""
    warmup = int(total * 0.23)
    if step < warmup:
        frac = step / warmup
        return 0.2 * (1 - frac) + 1.0 * frac
    frac = (step - warmup) / max(1, total - warmup)
    return 1.0 * (1 - frac) + 0.07 * frac


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    minidl.manual_seed(args.seed)
    x_train, y_train = load_cifar10(args.data_dir, train=True, download=not args.no_download)
    x_test, y_test = load_cifar10(args.data_dir, train=False, download=not args.no_download)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    if args.test_limit and args.test_limit < len(x_test):
        keep = np.linspace(0, len(x_test) - 1, args.test_limit).round().astype(np.int64)
        x_test, y_test = x_test[keep], y_test[keep]
    to_input = T.Compose([T.ToFloat(), T.Normalize(MEAN, STD)])
    test_images = to_input(x_test)
    batch_size = args.batch_size
    train = DataLoader(
        (x_train, y_train), batch_size=batch_size, shuffle=True, drop_last=True, seed=args.seed,
        transform=T.Compose([to_input, T.AlternatingFlip(),
                             T.RandomCrop(32, padding=HYP["translate"], padding_mode="reflect")]),
        prefetch=2)
    total_steps = math.ceil(len(train) * args.epochs)
    if total_steps < 1:
        raise cli.CLIError(f"no training step: need at least {batch_size} training images "
                           f"(got {len(x_train)}); raise --limit")

    # airbench gives lr and weight decay per 1024 examples and "decoupled" from Nesterov's
    # gain: with a constant gradient, a Nesterov step is (1 + 1/(1 - momentum)) gradients.
    momentum = HYP["momentum"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = HYP["lr"] / kilostep_scale
    wd = HYP["weight_decay"] * batch_size / kilostep_scale
    model = airbench94(batchnorm_momentum=HYP["batchnorm_momentum"])
    optimizer = optim.SGD(airbench94_param_groups(model, lr=lr, weight_decay=wd / lr,
                                                  bias_scaler=HYP["bias_scaler"]),
                          lr=lr, momentum=momentum, nesterov=True)
    scheduler = optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=HYP["label_smoothing"], reduction="sum")
    alpha = 0.95 ** HYP["lookahead_every"] * (np.arange(total_steps + 1) / total_steps) ** 3
    print(f"airbench94: {len(x_train)} train / {len(x_test)} test images, {total_steps} steps "
          f"of {batch_size}, seed {args.seed}", flush=True)

    t0 = time.perf_counter()
    nn.init.patch_whitening_(model.whiten.weight, to_input(x_train[:HYP["whiten_images"]]))
    lookahead = optim.Lookahead(model)
    train_time = time.perf_counter() - t0
    history, step = [], 0
    for epoch in range(math.ceil(args.epochs)):
        model.whiten.bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        t0 = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train:
            out = model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.item())
            correct += int((out.data.argmax(1) == y.data).sum())
            seen += len(y)
            step += 1
            if step % HYP["lookahead_every"] == 0:
                lookahead.update(decay=float(alpha[step]))
            if step >= total_steps:
                break
        if step >= total_steps:
            lookahead.update(decay=1.0)  # the end: back onto the average
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        test_acc = accuracy(tta_predict(model, test_images, level=0, batch_size=2000), y_test)
        history.append({"epoch": epoch, "steps": step, "train_loss": loss_sum / seen,
                        "train_acc": correct / seen, "test_acc": test_acc,
                        "epoch_time_s": epoch_time})
        print(f"epoch {epoch:2d}  steps {step:4d}  train loss {loss_sum / seen:.4f}  "
              f"train acc {correct / seen:.4f}  test acc {test_acc:.4f}  "
              f"{epoch_time:6.1f} s", flush=True)
        if step >= total_steps:
            break
    t0 = time.perf_counter()
    tta_acc = accuracy(tta_predict(model, test_images, level=HYP["tta_level"],
                                   batch_size=2000), y_test)
    tta_time = time.perf_counter() - t0
    result = {
        "recipe": "airbench94", "framework": f"minidl {minidl.__version__}",
        "seed": args.seed, "epochs": args.epochs, "steps": step, "n_train": len(x_train),
        "n_test": len(x_test), "test_acc": history[-1]["test_acc"], "tta_acc": tta_acc,
        "train_time_s": train_time, "tta_time_s": tta_time,
        "total_time_s": train_time + tta_time, "history": history,
        "hyp": {**HYP, "batch_size": batch_size},
        "machine": {"processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    "threads": os.environ.get("OMP_NUM_THREADS")},
    }
    print(f"airbench94 minidl seed={args.seed} steps={step} "
          f"test_acc={100 * result['test_acc']:.2f}% tta_acc={100 * tta_acc:.2f}% "
          f"train_time={train_time:.1f}s tta_time={tta_time:.1f}s", flush=True)
    if args.save:
        meta = prediction_metadata("airbench94", CIFAR10_CLASSES, 32, mean=MEAN, std=STD,
                                   model_kwargs={"batchnorm_momentum": HYP["batchnorm_momentum"]})
        os.makedirs(os.path.dirname(os.path.abspath(args.save)), exist_ok=True)
        minidl.save({"model": model.state_dict(), "meta": meta}, args.save)
        print(f"weights saved to {args.save} (python -m minidl predict --checkpoint "
              f"{args.save} IMAGE...)", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    cli.run(main)
