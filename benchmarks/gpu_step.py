"""Training-step time on a device, minidl vs PyTorch eager on the same device.

    python benchmarks/gpu_step.py                       # cuda: seed net b64, resnet9 b512
    python benchmarks/gpu_step.py --device cpu --models seed --steps 3   # a dry run

Both frameworks train the same architecture (the seed CNN of the Keras tutorial, and
ResNet-9 with batch norm at width 64), float32 (``--amp`` for minidl's float16 mixed
precision against torch.autocast), on random batches already on the device. Rounds
alternate between the frameworks; each round is synchronized before the clock stops. The
table shows median step times and the median of the per-round ratios, plus the time of a
full 50,000-image epoch of the seed net implied by its step time. Writes JSON with
``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minidl  # noqa: E402
from minidl import amp, backend, nn, optim  # noqa: E402
from minidl.models import resnet9, seed_cnn  # noqa: E402

CONFIGS = {"seed": 64, "resnet9": 512}


def _batch(batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 10, batch).astype(np.int64))


class Minidl:
    def __init__(self, model: str, batch: int, device: str, use_amp: bool) -> None:
        minidl.manual_seed(0)
        self.device = device
        self.model = (seed_cnn() if model == "seed" else resnet9(width=64)).to(device)
        self.opt = optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = nn.CrossEntropyLoss()
        x, y = _batch(batch)
        self.x, self.y = minidl.tensor(x, device=device), minidl.tensor(y, device=device)
        self.autocast = amp.autocast("float16", enabled=use_amp)
        self.scaler = amp.GradScaler(enabled=use_amp)

    def step(self) -> None:
        with self.autocast:
            loss = self.loss(self.model(self.x), self.y)
        self.opt.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def sync(self) -> None:
        backend.synchronize(self.device)


class Torch:
    def __init__(self, model: str, batch: int, device: str, use_amp: bool) -> None:
        import torch

        self.torch = torch
        torch.manual_seed(0)
        self.device = device
        tnn = torch.nn
        if model == "seed":
            net = tnn.Sequential(
                tnn.Conv2d(3, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2),
                tnn.Conv2d(32, 64, 3), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                tnn.Linear(2304, 128), tnn.ReLU(), tnn.Linear(128, 10))
        else:
            net = _torch_resnet9(tnn, 64)
        self.model = net.to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = tnn.CrossEntropyLoss()
        x, y = _batch(batch)
        self.x, self.y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler(enabled=use_amp)

    def step(self) -> None:
        with self.torch.autocast(self.device.split(":")[0], dtype=self.torch.float16,
                                 enabled=self.use_amp):
            loss = self.loss(self.model(self.x), self.y)
        self.opt.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


def _torch_resnet9(tnn, w: int):  # noqa: ANN001, ANN202 - mirrors minidl.models.resnet9
    def conv_bn(cin, cout):  # noqa: ANN001, ANN202
        return tnn.Sequential(tnn.Conv2d(cin, cout, 3, padding=1, bias=False),
                              tnn.BatchNorm2d(cout), tnn.ReLU())

    class Residual(tnn.Module):
        def __init__(self, block):  # noqa: ANN001
            super().__init__()
            self.block = block

        def forward(self, x):  # noqa: ANN001, ANN202
            return x + self.block(x)

    class Scale(tnn.Module):
        def forward(self, x):  # noqa: ANN001, ANN202
            return x * 0.125

    return tnn.Sequential(
        conv_bn(3, w), conv_bn(w, 2 * w), tnn.MaxPool2d(2),
        Residual(tnn.Sequential(conv_bn(2 * w, 2 * w), conv_bn(2 * w, 2 * w))),
        conv_bn(2 * w, 4 * w), tnn.MaxPool2d(2), conv_bn(4 * w, 8 * w), tnn.MaxPool2d(2),
        Residual(tnn.Sequential(conv_bn(8 * w, 8 * w), conv_bn(8 * w, 8 * w))),
        tnn.MaxPool2d(4), tnn.Flatten(), tnn.Linear(8 * w, 10, bias=False), Scale())


def _round(runner, steps: int) -> float:  # noqa: ANN001
    runner.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    runner.sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description="training step: minidl vs PyTorch on a device")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["seed", "resnet9"], choices=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--amp", action="store_true", help="float16 mixed precision on both sides")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    try:
        import torch  # noqa: F401
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    results = {"device": args.device, "amp": args.amp, "python": platform.python_version(),
               "models": []}
    print(f"device {args.device}, amp {args.amp}, {args.rounds} rounds x {args.steps} steps")
    print(f"{'model':>8} {'batch':>5} {'minidl ms':>10} {'torch ms':>9} {'ratio':>6}")
    for name in args.models:
        batch = CONFIGS[name]
        runners = {"minidl": Minidl(name, batch, args.device, args.amp)}
        if have_torch:
            runners["torch"] = Torch(name, batch, args.device, args.amp)
        for r in runners.values():
            _round(r, 3)  # warm-up: compilation, memory pools, cuBLAS handles
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.rounds):
            for k, r in runners.items():
                times[k].append(_round(r, args.steps))
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        row = {"model": name, "batch": batch, "median_ms": med}
        if have_torch:
            row["minidl_over_torch"] = float(np.median(np.array(times["minidl"])
                                                       / np.array(times["torch"])))
        if name == "seed":
            row["seed_epoch_s"] = med["minidl"] / 1e3 * (50000 / batch)
        results["models"].append(row)
        print(f"{name:>8} {batch:>5} {med['minidl']:>10.2f} {med.get('torch', float('nan')):>9.2f}"
              f" {row.get('minidl_over_torch', float('nan')):>6.2f}")
        if "seed_epoch_s" in row:
            print(f"         seed-net epoch (50,000 images) at this step time: "
                  f"{row['seed_epoch_s']:.2f} s")
    if args.json:
        from minidl._fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
