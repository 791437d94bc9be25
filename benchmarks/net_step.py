"""One training step of the CNNs that reach real accuracy: minidl against PyTorch CPU.

Nets (float32, random 3x32x32 batches, SGD-Nesterov, label-smoothed cross-entropy):

* ``resnet9``: ``minidl.models.resnet9(width=24)`` at batch 128 (the 88.7% recipe);
* ``airbench94``: ``minidl.models.airbench94()`` at batch 256 and 1024.

PyTorch builds the same layers (``torch.nn``), in NCHW and in channels_last, and runs in a
worker process that sleeps between rounds, so its threads never compete with numba's or
OpenBLAS's. Rounds alternate: minidl with its default convolution algorithm ("auto":
Winograd for the 3x3 layers), minidl with ``im2col`` only, then PyTorch in both layouts.
Each figure is the median over rounds of a round's median step; each ratio is the median of
the per-round ratios against PyTorch's faster layout in that round.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/net_step.py \\
        --rounds 5 --json benchmarks/results/net_step.json
"""

# ruff: noqa: B023  (timed lambdas run inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CASES = [("resnet9", 128), ("airbench94", 256), ("airbench94", 1024)]


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _median_ms(fn, steps: int) -> float:
    fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# ---------------------------------------------------------------------------- PyTorch side


def _torch_net(name: str):
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return x + self.block(x)

    class Mul(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return x * self.f

    if name == "resnet9":
        w = 24

        def cbr(ci, co):
            return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(co), nn.ReLU())
        return nn.Sequential(
            cbr(3, w), cbr(w, 2 * w), nn.MaxPool2d(2),
            Residual(nn.Sequential(cbr(2 * w, 2 * w), cbr(2 * w, 2 * w))),
            cbr(2 * w, 4 * w), nn.MaxPool2d(2), cbr(4 * w, 8 * w), nn.MaxPool2d(2),
            Residual(nn.Sequential(cbr(8 * w, 8 * w), cbr(8 * w, 8 * w))),
            nn.MaxPool2d(4), nn.Flatten(), nn.Linear(8 * w, 10, bias=False), Mul(0.125))

    def bn(c):
        m = nn.BatchNorm2d(c, eps=1e-12, momentum=0.4)
        m.weight.requires_grad_(False)
        return m

    def group(ci, co):
        return nn.Sequential(nn.Conv2d(ci, co, 3, padding="same", bias=False),
                             nn.MaxPool2d(2), bn(co), nn.GELU(),
                             nn.Conv2d(co, co, 3, padding="same", bias=False), bn(co),
                             nn.GELU())
    net = nn.Sequential(nn.Conv2d(3, 24, 2, padding=0, bias=True), nn.GELU(),
                        group(24, 64), group(64, 256), group(256, 256), nn.MaxPool2d(3),
                        nn.Flatten(), nn.Linear(256, 10, bias=False), Mul(1 / 9))
    net[0].weight.requires_grad_(False)
    del torch
    return net


def _torch_worker(threads: int, steps: int, cases: list) -> None:
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    runs = []
    for name, batch in cases:
        for fmt in ("nchw", "channels_last"):
            net = _torch_net(name)
            mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            net = net.to(memory_format=mf)
            opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3,
                                  momentum=0.85, nesterov=True)
            x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=mf)
            y = torch.randint(0, 10, (batch,))
            loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2)

            def step(net=net, opt=opt, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x), y).backward()
                opt.step()
            runs.append((f"{name}|{batch}|torch_{fmt}", step))
    for _ in sys.stdin:
        print(json.dumps({key: _median_ms(fn, steps) for key, fn in runs}), flush=True)


# ----------------------------------------------------------------------------- minidl side


def _minidl_runs(cases: list) -> list:
    import numpy as np

    import minidl
    from minidl import models, nn, optim
    rng = np.random.default_rng(0)
    runs = []
    for name, batch in cases:
        minidl.manual_seed(0)
        net = models.resnet9(width=24) if name == "resnet9" else models.airbench94()
        opt = optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3,
                        momentum=0.85, nesterov=True)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)
        x = minidl.tensor(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32))
        y = minidl.tensor(rng.integers(0, 10, batch))

        def step(net=net, opt=opt, x=x, y=y):
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        runs.append((name, batch, step))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", nargs="+", default=None,
                    help="cases as net:batch (default: resnet9:128 airbench94:256 "
                         "airbench94:1024)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per case and round")
    ap.add_argument("--json", default=None)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    _set_threads(args.threads)
    cases = CASES if not args.nets else [(s.split(":")[0], int(s.split(":")[1]))
                                         for s in args.nets]
    if args.torch_worker:
        _torch_worker(args.threads, args.steps, cases)
        return
    worker = None
    try:
        import torch  # noqa: F401
        worker = subprocess.Popen(
            [sys.executable, __file__, "--torch-worker", "--threads", str(args.threads),
             "--steps", str(args.steps), "--nets", *[f"{n}:{b}" for n, b in cases]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    except ImportError:
        print("torch not installed: minidl figures only")
    from minidl.kernels import set_conv_algorithm
    runs = _minidl_runs(cases)
    rounds = []
    for r in range(args.rounds):
        res = {}
        for algo in ("auto", "im2col"):
            set_conv_algorithm(algo)
            for name, batch, step in runs:
                res[f"{name}|{batch}|minidl_{algo}"] = _median_ms(step, args.steps)
        set_conv_algorithm("auto")
        if worker is not None:
            worker.stdin.write("go\n")
            worker.stdin.flush()
            res.update(json.loads(worker.stdout.readline()))
        rounds.append(res)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                          res.items()), file=sys.stderr)
    if worker is not None:
        worker.stdin.close()
        worker.wait()
    rows = []
    for name, batch in cases:
        key = f"{name}|{batch}|"
        row = {"net": name, "batch": batch}
        for col in ("minidl_auto", "minidl_im2col", "torch_nchw", "torch_channels_last"):
            vals = [rd[key + col] for rd in rounds if key + col in rd]
            row[col + "_ms"] = statistics.median(vals) if vals else None
        if worker is not None:
            best = [min(rd[key + "torch_nchw"], rd[key + "torch_channels_last"]) for rd in rounds]
            for col in ("minidl_auto", "minidl_im2col"):
                row[col + "_ratio"] = statistics.median(
                    rd[key + col] / b for rd, b in zip(rounds, best))
        rows.append(row)
    print(f"\n{'net':12s} {'batch':>5s} {'minidl':>8s} {'im2col':>8s} {'PT nchw':>8s} "
          f"{'PT cl':>8s} {'minidl/PT':>9s} {'im2col/PT':>9s}")
    for row in rows:
        def f(v, spec="8.1f"):
            return format(v, spec) if v is not None else "       -"
        print(f"{row['net']:12s} {row['batch']:5d} {f(row['minidl_auto_ms'])} "
              f"{f(row['minidl_im2col_ms'])} {f(row['torch_nchw_ms'])} "
              f"{f(row['torch_channels_last_ms'])} {f(row.get('minidl_auto_ratio'), '9.2f')} "
              f"{f(row.get('minidl_im2col_ratio'), '9.2f')}")
    if args.json:
        try:
            from threadpoolctl import threadpool_info
        except ImportError:
            def threadpool_info():
                return []
        meta = {"machine": platform.processor() or platform.machine(),
                "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
                "blas": [{k: d.get(k) for k in ("internal_api", "version", "architecture",
                                                 "num_threads")} for d in threadpool_info()],
                "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
