"""A DP-SGD training step against a normal step of the same network (issue 15's speed target:
DP step <= 2x normal step, same batch, same run).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/dp_step.py \\
        --json benchmarks/results/dp_step.json

Both steps train ``minidl.models.dp_cnn`` (the DP recipe's GroupNorm CNN) with SGD-momentum
on the same random float32 batch, in alternating rounds in one process: the normal step is
forward, backward, ``optimizer.step()``; the DP step adds what ``minidl.privacy`` does
(recording each layer's input and output gradient, per-example norms, the clipped sum,
noise, then the same optimizer step). Reported: each step's median and the median of the
per-round ratios, and which norm path each layer took (``PerSampleGradients.paths``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _early_threads() -> int:
    n = 2
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            n = int(sys.argv[i + 1])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


THREADS = _early_threads()

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minidl  # noqa: E402
from minidl import nn, optim  # noqa: E402
from minidl.models import dp_cnn  # noqa: E402
from minidl.privacy import DPOptimizer, PerSampleGradients  # noqa: E402


def _steps(batch: int) -> tuple:
    rng = np.random.default_rng(0)
    x = minidl.tensor(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32))
    y = minidl.tensor(rng.integers(0, 10, batch))
    loss_fn = nn.CrossEntropyLoss()
    minidl.manual_seed(0)
    plain = dp_cnn()
    plain_opt = optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    minidl.manual_seed(0)
    private = dp_cnn()
    per_sample = PerSampleGradients(private)
    dp_opt = DPOptimizer(optim.SGD(private.parameters(), lr=0.1, momentum=0.9), per_sample,
                         noise_multiplier=1.0, max_grad_norm=0.1, expected_batch_size=batch,
                         seed=0)

    def normal() -> None:
        plain_opt.zero_grad()
        loss_fn(plain(x), y).backward()
        plain_opt.step()

    def dp() -> None:
        dp_opt.zero_grad()
        loss_fn(private(x), y).backward()
        dp_opt.step()
    return normal, dp, per_sample


def _time(fn, steps: int) -> float:
    fn()  # untimed: wakes the threads, refills the caches the other step evicted
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from threadpoolctl import threadpool_info
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
               f"{platform.processor() or ''}".strip(", "), "threads": args.threads,
               "blas": [(i.get("internal_api"), i.get("architecture"))
                        for i in threadpool_info() if i.get("user_api") == "blas"],
               "date": time.strftime("%Y-%m-%d"), "cases": []}
    print(f"dp_cnn, float32, {args.threads} threads, {args.rounds} rounds x {args.steps} "
          f"steps; BLAS {results['blas']}")
    for batch in args.batch_sizes:
        normal, dp, per_sample = _steps(batch)
        for _ in range(2):
            normal()
            dp()
        t_n, t_d = [], []
        for _ in range(args.rounds):
            t_n.append(_time(normal, args.steps))
            t_d.append(_time(dp, args.steps))
        ratio = statistics.median(d / n for d, n in zip(t_d, t_n))
        case = {"batch": batch, "normal_ms": 1e3 * statistics.median(t_n),
                "dp_ms": 1e3 * statistics.median(t_d), "dp_over_normal": ratio,
                "paths": dict(per_sample.paths)}
        results["cases"].append(case)
        print(f"batch {batch}: normal {case['normal_ms']:.1f} ms, DP {case['dp_ms']:.1f} ms, "
              f"DP / normal {ratio:.2f} (target <= 2); norm paths {case['paths']}",
              flush=True)
    if args.json:
        from minidl._fileio import atomic_write_text
        atomic_write_text(args.json, json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
