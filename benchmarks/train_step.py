"""Seed-CNN training step and inference: minidl vs PyTorch CPU vs the GEMM floor.

    python benchmarks/train_step.py                  # batch 64 and 256, 2 threads
    python benchmarks/train_step.py --json benchmarks/results/train_step.json

The network is the Keras CIFAR-10 tutorial's (Conv32-Pool-Conv64-Pool-Dense128-Dense10),
float32, Adam, softmax cross-entropy, on random 3x32x32 batches. For each batch size it
times, in interleaved rounds (minidl, minidl unfused, the GEMM floor, PyTorch, repeated), a full
training step (forward, backward, optimizer step) and reports medians and the median of
the per-round ratios, so that machine noise hits both sides alike. PyTorch runs in a
worker process of its own (torch imported into minidl's process slowed minidl by about
10%). The *GEMM floor* is the
time NumPy's own BLAS takes for exactly the matrix products of one step (the im2col-GEMMs of
both convolutions forward and backward and the two dense layers), on preallocated arrays:
what a framework that spent nothing outside GEMM would take. minidl runs each
Conv2d -> MaxPool2d pair as one fused op (``minidl.nn.fusion``) that does less than those
products: it skips the conv outputs no pooling window reads (13x13 -> 12x12 in the second
layer) and replaces both backward GEMMs of each conv by gathers/scatters over the arg-max
positions. "minidl_unfused" is the same model with fusion off, timed in the same rounds.

Inference is batch 1000 under no_grad. Peak memory (max RSS) of a 40-step training run is
measured in fresh subprocesses, one per framework. PyTorch is optional
(``pip install torch==2.13.0``); without it only minidl and the floor are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def _early_threads() -> int:
    # BLAS and numba read their thread counts at import time, so set them before numpy loads.
    n = 2
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            n = int(sys.argv[i + 1])
        elif a.startswith("--threads="):
            n = int(a.split("=", 1)[1])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


THREADS = _early_threads()

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minidl  # noqa: E402
from minidl import nn, optim  # noqa: E402
from minidl.models import seed_cnn  # noqa: E402

torch = None  # imported only in the PyTorch worker and memory child processes


def _import_torch() -> None:
    global torch
    try:
        import torch as _torch
    except ImportError:  # optional reference
        return
    torch = _torch
    torch.set_num_threads(THREADS)


def _torch_version() -> str | None:
    # asked of a subprocess: torch is never imported into the process that times minidl
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def _data(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 10, batch).astype(np.int64))


class MinidlRunner:
    """minidl's step; ``fuse=False`` turns off Sequential's conv+pool fusion for it."""

    def __init__(self, batch: int, fuse: bool = True) -> None:
        self.fuse = fuse
        minidl.manual_seed(0)
        self.model = seed_cnn()
        self.opt = optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = nn.CrossEntropyLoss()
        x, y = _data(batch)
        self.x, self.y = minidl.tensor(x), minidl.tensor(y)

    def step(self) -> None:
        old = nn.set_fusion(self.fuse)
        try:
            loss = self.loss(self.model(self.x), self.y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        finally:
            nn.set_fusion(old)

    def infer(self, x: np.ndarray) -> None:
        self.model.eval()
        with minidl.no_grad():
            self.model(minidl.tensor(x))
        self.model.train()


class TorchRunner:
    def __init__(self, batch: int) -> None:
        torch.manual_seed(0)
        tnn = torch.nn
        self.model = tnn.Sequential(
            tnn.Conv2d(3, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(32, 64, 3), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Linear(2304, 128), tnn.ReLU(), tnn.Linear(128, 10))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = tnn.CrossEntropyLoss()
        x, y = _data(batch)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def step(self) -> None:
        loss = self.loss(self.model(self.x), self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def infer(self, x: np.ndarray) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model(torch.from_numpy(x))
        self.model.train()


class GemmFloor:
    """The matrix products of one seed-net training step, on preallocated float32 arrays."""

    def __init__(self, batch: int) -> None:
        rng = np.random.default_rng(0)
        n = batch
        # (rows M, inner K, cols N) of each product C[M,N] = A[M,K] @ B[K,N]
        shapes = []
        for m, k, oc, first in ((n * 30 * 30, 27, 32, True), (n * 13 * 13, 288, 64, False)):
            shapes.append((m, k, oc))            # forward: cols @ W^T
            shapes.append((oc, m, k))            # grad weight: gy^T @ cols
            if not first:
                shapes.append((m, oc, k))        # grad input: gy @ W (then col2im)
        for fin, fout in ((2304, 128), (128, 10)):
            shapes += [(n, fin, fout), (fout, n, fin), (n, fout, fin)]
        # BLAS speed depends on the operands' memory order (a (64, 10816) @ (10816, 288)
        # product can be 10x slower with one order than another), and a framework is free to
        # choose it, so the floor takes the fastest of the four orders for each product.
        self.ops = [self._fastest(rng, m, k, c) for m, k, c in shapes]
        self.flops = sum(2 * m * k * c for m, k, c in shapes)

    @staticmethod
    def _fastest(rng: np.random.Generator, m: int, k: int, c: int) -> tuple:
        best, best_t = None, float("inf")
        for fa in (False, True):
            for fb in (False, True):
                a = rng.standard_normal((m, k), dtype=np.float32)
                b = rng.standard_normal((k, c), dtype=np.float32)
                a = np.asfortranarray(a) if fa else a
                b = np.asfortranarray(b) if fb else b
                op = (a, b, np.empty((m, c), np.float32))
                np.matmul(*op[:2], out=op[2])
                t = min(_time(lambda op=op: np.matmul(op[0], op[1], out=op[2]), 2)
                        for _ in range(3))
                if t < best_t:
                    best, best_t = op, t
        return best

    def step(self) -> None:
        for a, b, out in self.ops:
            np.matmul(a, b, out=out)


def _time(fn, steps: int) -> float:
    # Let the previous runner's idle worker threads (OpenMP, OpenBLAS) stop spinning, so
    # that no framework is timed while another one's threads still burn the cores.
    # One untimed call then wakes the parked threads and refills the caches that the other
    # runners evicted, as in a training loop, where steps follow each other.
    time.sleep(0.2)
    fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


class TorchWorker:
    """PyTorch in its own process, timed on request, so that it and minidl never share a
    process: importing torch into minidl's process alone slowed minidl's seed-CNN step by
    about 10% (its OpenMP runtime and allocator), which a user never sees."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--torch-worker", "--threads",
             str(THREADS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def time(self, what: str, batch: int, steps: int) -> float:
        """Seconds per ``what`` ("step" or "infer") at ``batch``, timed in the worker."""
        self.proc.stdin.write(f"{what} {batch} {steps}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _torch_worker() -> None:
    _import_torch()
    runners: dict[int, TorchRunner] = {}
    x_infer, _ = _data(1000, seed=1)
    for line in sys.stdin:
        what, batch, steps = line.split()
        if int(batch) not in runners:
            runners[int(batch)] = r = TorchRunner(int(batch))
            for _ in range(3):  # warm-up, as for minidl
                r.step()
            r.infer(x_infer)
        r = runners[int(batch)]
        fn = r.step if what == "step" else (lambda r=r: r.infer(x_infer))
        print(_time(fn, int(steps)), flush=True)


def bench_batch(batch: int, rounds: int, steps: int, worker: TorchWorker | None) -> dict:
    runners = {"minidl": MinidlRunner(batch), "minidl_unfused": MinidlRunner(batch, False),
               "gemm_floor": GemmFloor(batch)}
    for r in runners.values():  # warm-up: JIT compilation, allocator, caches
        for _ in range(3):
            r.step()
    times: dict[str, list[float]] = {k: [] for k in runners}
    if worker is not None:
        times["torch"] = []
    for _ in range(rounds):
        for name, r in runners.items():
            times[name].append(_time(r.step, steps))
        if worker is not None:
            times["torch"].append(worker.time("step", batch, steps))
    res = {"batch": batch, "median_ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
           "gemm_floor_gflops": runners["gemm_floor"].flops / 1e9}
    md = np.array(times["minidl"])
    res["minidl_over_floor"] = float(np.median(md / np.array(times["gemm_floor"])))
    res["unfused_over_fused"] = float(np.median(np.array(times["minidl_unfused"]) / md))
    if worker is not None:
        res["minidl_over_torch"] = float(np.median(md / np.array(times["torch"])))
    return res


def bench_inference(rounds: int, worker: TorchWorker | None) -> dict:
    x, _ = _data(1000, seed=1)
    r = MinidlRunner(64)
    r.infer(x)
    times: dict[str, list[float]] = {"minidl": []}
    if worker is not None:
        times["torch"] = []
    for _ in range(rounds):
        times["minidl"].append(_time(lambda: r.infer(x), 1))
        if worker is not None:
            times["torch"].append(worker.time("infer", 64, 1))
    res = {"batch": 1000, "median_ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()}}
    if worker is not None:
        res["minidl_over_torch"] = float(np.median(np.array(times["minidl"])
                                                   / np.array(times["torch"])))
    return res


def child_peak_rss(framework: str, batch: int, steps: int) -> float:
    """Run ``steps`` training steps in a fresh process; return its max RSS in MiB."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", framework, "--batch-sizes",
         str(batch), "--child-steps", str(steps), "--threads", str(THREADS)],
        capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _child(framework: str, batch: int, steps: int) -> None:
    r = MinidlRunner(batch) if framework == "minidl" else TorchRunner(batch)
    for _ in range(steps):
        r.step()
    # VmHWM is this process's own peak RSS; getrusage's ru_maxrss is not used because Linux
    # carries it over from the parent through fork + exec.
    with open("/proc/self/status") as f:
        hwm = next(line for line in f if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) / 1024.0)


def main() -> None:
    p = argparse.ArgumentParser(description="seed-CNN step: minidl vs PyTorch vs GEMM floor")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--child", choices=("minidl", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--child-steps", type=int, default=40, help=argparse.SUPPRESS)
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        _torch_worker()
        return
    if args.child:
        if args.child == "torch":
            _import_torch()
        _child(args.child, args.batch_sizes[0], args.child_steps)
        return
    version = None if args.no_torch else _torch_version()
    use_torch = version is not None
    worker = TorchWorker() if use_torch else None
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus", "threads":
               args.threads, "numpy": np.__version__, "python": platform.python_version(),
               "torch": version, "torch_process": "worker" if use_torch else None,
               "train": [], "date": time.strftime("%Y-%m-%d")}
    print(f"seed CNN, float32, {args.threads} threads, {args.rounds} rounds x {args.steps} "
          f"steps; torch {results['torch']}")
    print(f"{'batch':>5} {'minidl ms':>10} {'torch ms':>9} {'floor ms':>9} "
          f"{'minidl/torch':>12} {'minidl/floor':>12} {'unfused ms':>10} {'unfused/fused':>13}")
    for b in args.batch_sizes:
        r = bench_batch(b, args.rounds, args.steps, worker)
        results["train"].append(r)
        m = r["median_ms"]
        print(f"{b:>5} {m['minidl']:>10.1f} {m.get('torch', float('nan')):>9.1f} "
              f"{m['gemm_floor']:>9.1f} {r.get('minidl_over_torch', float('nan')):>12.2f} "
              f"{r['minidl_over_floor']:>12.2f} {m['minidl_unfused']:>10.1f} "
              f"{r['unfused_over_fused']:>13.2f}", flush=True)
    inf = bench_inference(args.rounds, worker)
    if worker is not None:
        worker.close()
    results["inference"] = inf
    print(f"inference batch 1000: minidl {inf['median_ms']['minidl']:.1f} ms"
          + (f", torch {inf['median_ms']['torch']:.1f} ms, ratio "
             f"{inf['minidl_over_torch']:.2f}" if use_torch else ""))
    if not args.no_memory:
        b = args.batch_sizes[0]
        mem = {"batch": b, "steps": 40, "minidl_mib": child_peak_rss("minidl", b, 40)}
        if use_torch:
            mem["torch_mib"] = child_peak_rss("torch", b, 40)
            mem["minidl_over_torch"] = mem["minidl_mib"] / mem["torch_mib"]
        results["peak_rss"] = mem
        print(f"peak RSS, 40 training steps at batch {b}: minidl {mem['minidl_mib']:.0f} MiB"
              + (f", torch {mem['torch_mib']:.0f} MiB, ratio {mem['minidl_over_torch']:.2f}"
                 if use_torch else ""))
    if args.json:
        from minidl._fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
