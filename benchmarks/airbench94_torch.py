"""PyTorch CPU reference: the airbench94 recipe on CIFAR-10 (94% in 9.9 epochs on a GPU).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/airbench94_torch.py \\
        --data-dir ../shared/datasets/cifar-10-batches-bin --seed 0 \\
        --json benchmarks/results/airbench94_torch_seed0.json

Smoke test (2 steps; about a minute on 2 shared cores, most of it the TTA pass over 2048 test
images; the accuracies mean nothing):
``python benchmarks/airbench94_torch.py --data-dir ../shared/datasets/cifar-10-batches-bin
--limit 2048 --epochs 1``.

A port written from the recipe of Keller Jordan's ``legacy/airbench94.py``
(github.com/KellerJordan/cifar10-airbench), so that minidl's own port can be compared with
the same recipe in PyTorch on the same machine. PyTorch is a benchmark-only dependency
(``pip install torch==2.13.0``); minidl never imports it.

What is ported, as in airbench94:

- Data: CIFAR-10 read from the official *binary* layout (``data_batch_1..5.bin``,
  ``test_batch.bin``; one label byte then 3072 CHW pixel bytes per record), scaled to
  [0, 1] and normalised with the CIFAR-10 mean/std airbench uses.
- Network: a 2x2 patch-whitening conv 3->24 with bias (weight frozen, set from the
  eigendecomposition of the uncentred 2x2-patch covariance of the first 5000 training
  images, eps 5e-4, the 12 filters and their negatives), GELU, three ConvGroups (conv3x3
  'same' no bias -> max-pool 2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU,
  widths 64/256/256; convs dirac-initialised on their first in-channels outputs; BatchNorm
  weight frozen at 1, eps 1e-12, running-stat momentum 0.4 in PyTorch's convention),
  max-pool 3, linear 256->10 without bias, output x 1/9.
- Training: batch 1024, 9.9 epochs (ceil(48 * 9.9) = 476 steps, last partial batch of each
  epoch dropped), SGD with Nesterov momentum 0.85; lr 11.5 and weight decay 0.0153 "per
  1024 examples" converted as airbench does (kilostep_scale = 1024 * (1 + 1/(1 - momentum)),
  lr / kilostep_scale, wd * batch / kilostep_scale, passed to PyTorch as weight_decay / lr);
  BatchNorm biases in their own group with lr x 64 (bias_scaler) and weight decay divided by
  the same lr so the decay per step is unchanged; label-smoothed (0.2) cross-entropy summed
  over the batch; LR multiplier 0.2 -> 1.0 linearly over the first 23% of steps, then
  1.0 -> 0.07; the whitening bias trained for the first 3 epochs only; lookahead EMA every
  5 steps with decay 0.95**5 * (step/total)**3 and a final update with decay 1.0 (the
  weights are reset to the EMA at the end); alternating flip (epoch 0: a random half of the
  images, fixed; odd epochs: all of those flipped back, i.e. the complement) and random
  translation by up to 2 pixels from a reflect-padded copy; channels_last memory format.
- Evaluation: test accuracy without TTA after each epoch (untimed, as in airbench), and
  at the end with TTA level 2: mirror, plus two 1-pixel translations (reflect pad 1, crops at
  offsets (0,0) and (2,2)), each mirrored; logits 0.5 * untranslated + 0.5 * mean of the two
  translated, every view averaged with its mirror.

What differs from the GPU original:

- CPU, float32 throughout (airbench runs the network in float16 with float32 BatchNorm),
  eager mode (no torch.compile), ``torch.set_num_threads(--threads)``.
- No warm-up run with random labels before the timed run (airbench does one to compile and
  warm the GPU); one run per invocation, seeded with ``torch.manual_seed(--seed)``
  (airbench does not seed).
- Only the padded image copy is kept between epochs (airbench also keeps the normalised and
  flipped copies); the values used are the same.

Timing: ``train_time_s`` covers what airbench times before its TTA: the whitening init
(normalising the first 5000 images, patches, eigendecomposition) and the training loop,
including the first epoch's normalise/flip/pad of the training set and every epoch's
random crops. It excludes reading the files from disk and the uint8 -> float conversion
(airbench does these when it loads the dataset), building the network, and the per-epoch
test evaluation. ``tta_time_s`` is the final TTA evaluation alone; airbench's printed
total is their sum, also written as ``airbench_total_time_s``.

``--limit N`` trains on the first N training images and evaluates on an evenly strided
subset of N test images (the test records of the shared copy are sorted by class), for
smoke tests only. With fewer than 5 steps no lookahead update happens before the final one,
so the final reset to the EMA returns the initial weights; that is the recipe, not a bug.
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
import torch
import torch.nn.functional as F
from torch import nn

# Hyper-parameters: the `hyp` dictionary at the top of airbench94.py.
HYP = {
    "opt": {
        "train_epochs": 9.9,  # hyp['opt']['train_epochs']
        "batch_size": 1024,  # hyp['opt']['batch_size']
        "lr": 11.5,  # hyp['opt']['lr']: learning rate per 1024 examples
        "momentum": 0.85,  # hyp['opt']['momentum'] (Nesterov)
        "weight_decay": 0.0153,  # hyp['opt']['weight_decay']: per 1024 examples
        "bias_scaler": 64.0,  # hyp['opt']['bias_scaler']: lr multiplier for BatchNorm biases
        "label_smoothing": 0.2,  # hyp['opt']['label_smoothing']
        "whiten_bias_epochs": 3,  # hyp['opt']['whiten_bias_epochs']
    },
    "aug": {
        "flip": True,  # hyp['aug']['flip']: alternating flip
        "translate": 2,  # hyp['aug']['translate']: reflect-pad 2, random crop back to 32
    },
    "net": {
        "widths": {"block1": 64, "block2": 256, "block3": 256},  # hyp['net']['widths']
        # hyp['net']['batchnorm_momentum'] = 0.6 is airbench's EMA weight on the old running
        # statistics; its BatchNorm passes momentum=1-0.6=0.4 to PyTorch.
        "batchnorm_momentum": 0.6,
        "scaling_factor": 1 / 9,  # hyp['net']['scaling_factor']: the output multiplier
        "tta_level": 2,  # hyp['net']['tta_level']: 0 none, 1 mirror, 2 mirror + translate
    },
}

# CIFAR-10 per-channel mean and std used by airbench94 (CIFAR_MEAN, CIFAR_STD).
CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616))

WHITEN_KERNEL = 2  # make_net(): whiten_kernel_size = 2
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # make_net(): whiten_width = 24 (12 filters and negatives)
WHITEN_EPS = 5e-4  # init_whitening_conv(..., eps=5e-4)
WHITEN_IMAGES = 5000  # main(): whitening init from the first 5000 training images
EMA_EVERY = 5  # main(): lookahead update every 5 steps
EVAL_BATCH = 2000  # test loader batch size / test_images.split(2000)

RECORD = 1 + 3 * 32 * 32  # CIFAR-10 binary record: label byte + CHW pixels


# ----------------------------------------------------------------------------- data


def read_cifar10_bin(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from one CIFAR-10 .bin file."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 records")
    rec = raw.reshape(-1, RECORD)
    labels = torch.from_numpy(rec[:, 0].astype(np.int64))
    images = torch.from_numpy(np.ascontiguousarray(rec[:, 1:]).reshape(-1, 3, 32, 32))
    if int(labels.max()) > 9:
        raise ValueError(f"{path}: label byte above 9; not the CIFAR-10 binary layout")
    return images, labels


def load_cifar10(data_dir: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    parts = [read_cifar10_bin(os.path.join(data_dir, f"data_batch_{i}.bin")) for i in range(1, 6)]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = read_cifar10_bin(os.path.join(data_dir, "test_batch.bin"))
    return {"train": train, "test": test}


def normalize(images: torch.Tensor) -> torch.Tensor:
    # torchvision's T.Normalize(CIFAR_MEAN, CIFAR_STD), as airbench's loader applies it.
    return (images - CIFAR_MEAN.view(1, 3, 1, 1)) / CIFAR_STD.view(1, 3, 1, 1)


def batch_flip_lr(images: torch.Tensor) -> torch.Tensor:
    """Flip a random half (each image independently with probability 1/2) left-right."""
    flip_mask = (torch.rand(len(images)) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip_mask, images.flip(-1), images)


def batch_crop(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Random crop of each (pre-padded) image: shifts uniform in [-r, r] on both axes."""
    r = (images.size(-1) - crop_size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2))
    out = torch.empty((len(images), images.size(1), crop_size, crop_size), dtype=images.dtype)
    out = out.contiguous(memory_format=torch.channels_last)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[mask] = images[mask, :, r + sy : r + sy + crop_size, r + sx : r + sx + crop_size]
    return out


class CifarLoader:
    """airbench's CifarLoader on the CPU: in-memory tensors, alternating flip, translation."""

    def __init__(self, images_u8, labels, batch_size, train, aug=None):
        # airbench converts at load time: uint8 -> [0, 1], channels_last (untimed there too).
        self.images = (images_u8.float() / 255).contiguous(memory_format=torch.channels_last)
        self.labels = labels
        self.batch_size = batch_size
        self.aug = aug or {}
        self.drop_last = train  # airbench: drop_last defaults to train
        self.shuffle = train  # airbench: shuffle defaults to train
        self.epoch = 0
        self.proc_images: dict[str, torch.Tensor] = {}

    def __len__(self):
        if self.drop_last:
            return len(self.images) // self.batch_size
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        pad = self.aug.get("translate", 0)
        flip = self.aug.get("flip", False)
        if self.epoch == 0:
            images = normalize(self.images)
            # Alternating flip: a random half is flipped once, on the first epoch ...
            if flip:
                images = batch_flip_lr(images)
            if pad > 0:
                # ... and the (flipped) images are reflect-padded once for the crops.
                images = F.pad(images, (pad,) * 4, mode="reflect")
            self.proc_images["base"] = images
        images = self.proc_images["base"]
        if pad > 0:
            images = batch_crop(images, self.images.shape[-2])
        # ... then every odd epoch flips all of them, i.e. shows the complement of the
        # previous epoch's flips.
        if flip and self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1

        indices = torch.randperm(len(images)) if self.shuffle else torch.arange(len(images))
        for i in range(len(self)):
            idxs = indices[i * self.batch_size : (i + 1) * self.batch_size]
            yield images[idxs], self.labels[idxs]


# ----------------------------------------------------------------------------- network


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class BatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: eps 1e-12, weight frozen at 1, bias trained."""

    def __init__(self, num_features, momentum, eps=1e-12, weight=False, bias=True):
        # airbench's momentum is the weight of the old statistics; PyTorch's is the new one's.
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = bias


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias by default; dirac init on the first in_channels outputs."""

    def __init__(self, in_channels, out_channels, kernel_size=3, padding="same", bias=False):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, padding=padding,
                         bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def make_net() -> nn.Sequential:
    widths = HYP["net"]["widths"]
    bn_mom = HYP["net"]["batchnorm_momentum"]
    net = nn.Sequential(
        Conv(3, WHITEN_WIDTH, WHITEN_KERNEL, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(WHITEN_WIDTH, widths["block1"], bn_mom),
        ConvGroup(widths["block1"], widths["block2"], bn_mom),
        ConvGroup(widths["block2"], widths["block3"], bn_mom),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(widths["block3"], 10, bias=False),
        Mul(HYP["net"]["scaling_factor"]),
    )
    net[0].weight.requires_grad = False  # the whitening filters are never trained
    return net.to(memory_format=torch.channels_last)  # float32 throughout (airbench: half)


def get_patches(x: torch.Tensor, patch_shape) -> torch.Tensor:
    c, (h, w) = x.shape[1], patch_shape
    return x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()


def init_whitening_conv(layer: nn.Conv2d, train_images: torch.Tensor, eps=WHITEN_EPS):
    """Filters = eigenvectors / sqrt(eigenvalue + eps) of the uncentred patch covariance."""
    patches = get_patches(train_images, patch_shape=layer.weight.shape[2:])
    n, c, h, w = patches.shape
    flat = patches.reshape(n, -1)
    cov = (flat.T @ flat) / n
    eigenvalues, eigenvectors = torch.linalg.eigh(cov, UPLO="U")
    # Largest eigenvalue first; each row of eigenvectors.T is one filter.
    eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
    eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((scaled, -scaled))


class LookaheadState:
    """airbench's lookahead EMA: ema <- lerp(ema, net, 1 - decay); net <- ema."""

    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema, cur in zip(self.net_ema.values(), net.state_dict().values()):
            if cur.dtype in (torch.half, torch.float):  # BN running stats too; not counters
                ema.lerp_(cur, 1 - decay)
                cur.copy_(ema)


# ----------------------------------------------------------------------------- evaluation


def infer(model, images: torch.Tensor, tta_level=0) -> torch.Tensor:
    def infer_basic(x):
        return model(x).clone()

    def infer_mirror(x):
        return 0.5 * model(x) + 0.5 * model(x.flip(-1))

    def infer_mirror_translate(x):
        logits = infer_mirror(x)
        padded = F.pad(x, (1,) * 4, mode="reflect")
        translated = [padded[:, :, 0:32, 0:32], padded[:, :, 2:34, 2:34]]
        logits_translate = torch.stack([infer_mirror(t) for t in translated]).mean(0)
        return 0.5 * logits + 0.5 * logits_translate

    model.eval()
    fn = [infer_basic, infer_mirror, infer_mirror_translate][tta_level]
    test_images = normalize(images)
    with torch.no_grad():
        return torch.cat([fn(x.contiguous(memory_format=torch.channels_last))
                          for x in test_images.split(EVAL_BATCH)])


def evaluate(model, loader: CifarLoader, tta_level=0) -> float:
    logits = infer(model, loader.images, tta_level)
    return (logits.argmax(1) == loader.labels).float().mean().item()


# ----------------------------------------------------------------------------- training


def train(data, seed: int, epochs: float, log=print) -> dict:
    torch.manual_seed(seed)
    opt = HYP["opt"]
    batch_size = opt["batch_size"]
    momentum = opt["momentum"]
    # airbench: with constant gradients, Nesterov steps are (1 + 1/(1 - momentum)) times the
    # gradient, so lr and wd are given per 1024 examples and divided by this scale.
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = opt["lr"] / kilostep_scale
    wd = opt["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * opt["bias_scaler"]

    loss_fn = nn.CrossEntropyLoss(label_smoothing=opt["label_smoothing"], reduction="none")
    test_loader = CifarLoader(*data["test"], batch_size=EVAL_BATCH, train=False)
    train_loader = CifarLoader(*data["train"], batch_size=batch_size, train=True,
                               aug=HYP["aug"])
    total_train_steps = math.ceil(len(train_loader) * epochs)
    if total_train_steps < 1:
        raise SystemExit(f"no training steps: need at least {batch_size} training images")

    model = make_net()
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    other_params = [p for k, p in model.named_parameters()
                    if "norm" not in k and p.requires_grad]
    # PyTorch multiplies weight_decay by the group's lr, hence wd / lr: the decay per step is
    # wd * schedule for both groups, i.e. not scaled up by bias_scaler.
    param_configs = [dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                     dict(params=other_params, lr=lr, weight_decay=wd / lr)]
    optimizer = torch.optim.SGD(param_configs, momentum=momentum, nesterov=True)

    def get_lr(step):
        warmup_steps = int(total_train_steps * 0.23)  # airbench: 23% of steps warm-up
        warmdown_steps = total_train_steps - warmup_steps
        if step < warmup_steps:
            frac = step / warmup_steps
            return 0.2 * (1 - frac) + 1.0 * frac  # from 0.2 up to 1.0
        frac = (step - warmup_steps) / warmdown_steps
        return 1.0 * (1 - frac) + 0.07 * frac  # then down to 0.07

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, get_lr)
    # airbench: alpha_schedule = 0.95**5 * (arange(total+1) / total)**3
    alpha_schedule = 0.95**5 * (torch.arange(total_train_steps + 1) / total_train_steps) ** 3
    lookahead_state = LookaheadState(model)

    # Timed: whitening init (airbench times it too).
    t0 = time.perf_counter()
    whiten_images = normalize(train_loader.images[:WHITEN_IMAGES])
    init_whitening_conv(model[0], whiten_images)
    train_time = time.perf_counter() - t0

    history = []
    current_steps = 0
    for epoch in range(math.ceil(epochs)):
        model[0].bias.requires_grad = epoch < opt["whiten_bias_epochs"]

        t0 = time.perf_counter()
        model.train()
        loss_sum = correct = seen = 0.0
        for inputs, labels in train_loader:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            outputs = model(inputs)
            loss = loss_fn(outputs, labels).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # Epoch means (not in airbench, which reports the last batch only): cheap here.
            loss_sum += loss.item()
            correct += (outputs.detach().argmax(1) == labels).sum().item()
            seen += len(labels)

            current_steps += 1
            if current_steps % EMA_EVERY == 0:
                lookahead_state.update(model, decay=alpha_schedule[current_steps].item())
            if current_steps >= total_train_steps:
                lookahead_state.update(model, decay=1.0)  # airbench's final decay 1.0
                break
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time

        # Untimed, as in airbench: last-batch train loss/acc and test accuracy without TTA.
        entry = {
            "epoch": epoch,
            "steps": current_steps,
            "train_loss": loss.item() / batch_size,  # airbench: last batch, per example
            "train_acc": (outputs.detach().argmax(1) == labels).float().mean().item(),
            "train_loss_mean": loss_sum / seen,
            "train_acc_mean": correct / seen,
            "val_acc": evaluate(model, test_loader, tta_level=0),
            "epoch_time_s": epoch_time,
            "train_time_so_far_s": train_time,
        }
        history.append(entry)
        log(f"epoch {epoch:2d}  steps {current_steps:4d}  "
            f"train_loss {entry['train_loss']:.4f} (mean {entry['train_loss_mean']:.4f})  "
            f"train_acc {entry['train_acc']:.4f} (mean {entry['train_acc_mean']:.4f})  "
            f"val_acc {entry['val_acc']:.4f}  time {train_time:8.1f}s")

    t0 = time.perf_counter()
    tta_acc = evaluate(model, test_loader, tta_level=HYP["net"]["tta_level"])
    tta_time = time.perf_counter() - t0

    return {
        "history": history,
        "total_train_steps": total_train_steps,
        "test_acc": history[-1]["val_acc"],
        "test_acc_tta": tta_acc,
        "train_time_s": train_time,
        "tta_time_s": tta_time,
        "airbench_total_time_s": train_time + tta_time,
        "n_train": len(train_loader.images),
        "n_test": len(test_loader.images),
    }


# ----------------------------------------------------------------------------- main


def machine_info(threads: int) -> dict:
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parallel = torch.__config__.parallel_info().splitlines()
    if "Environment variables:" in parallel:
        parallel = parallel[: parallel.index("Environment variables:")]
    return {
        "processor": platform.processor(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_parallel_info": [s.strip() for s in parallel],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("MINIDL_CIFAR10_DIR"),
                   help="folder with the CIFAR-10 binary files (default: $MINIDL_CIFAR10_DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=HYP["opt"]["train_epochs"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--limit", type=int, default=None,
                   help="first N training images and N strided test images (smoke tests)")
    p.add_argument("--json", default=None, help="write results to this path")
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("give --data-dir or set MINIDL_CIFAR10_DIR")

    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data_dir)  # untimed: reading the files
    if args.limit is not None:
        images, labels = data["train"]
        data["train"] = (images[: args.limit], labels[: args.limit])
        images, labels = data["test"]
        idx = torch.linspace(0, len(images) - 1, min(args.limit, len(images))).long()
        data["test"] = (images[idx], labels[idx])

    res = train(data, seed=args.seed, epochs=args.epochs)
    summary = (f"airbench94_torch seed={args.seed} epochs={args.epochs:g} "
               f"steps={res['total_train_steps']} n_train={res['n_train']} "
               f"n_test={res['n_test']} test_acc={100 * res['test_acc']:.2f}% "
               f"tta_acc={100 * res['test_acc_tta']:.2f}% train_time={res['train_time_s']:.1f}s "
               f"tta_time={res['tta_time_s']:.1f}s threads={args.threads}")
    print(summary)

    if args.json:
        out = {
            "recipe": "airbench94 (KellerJordan/cifar10-airbench legacy/airbench94.py), "
                      "PyTorch CPU float32 eager port",
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "data_dir": args.data_dir,
            "seed": args.seed,
            "epochs": args.epochs,
            "limit": args.limit,
            "hyp": HYP,
            "machine": machine_info(args.threads),
            "summary": summary,
            **res,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
