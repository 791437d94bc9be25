"""Benchmark minidl's conv2d / pooling kernels against NumPy's GEMM floor and PyTorch CPU.

For each convolution shape (the seed CNN's two layers and two ResNet-style 3x3 layers, batch
64, float32) it reports forward and backward time, achieved GFLOP/s, the time NumPy's own
GEMM needs for the same matrix products (measured in this run), the non-GEMM share of the
conv time, the im2col / col2im times on their own, and PyTorch's time and ratio when torch is
importable. Max pooling is reported the same way, and so are the seed CNN's two whole
conv + ReLU + max-pool blocks: minidl's fused op, the same ops unfused, and PyTorch's.

Threads: the thread count (``--threads``, default 2) is fixed before NumPy, numba or torch
load, through ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``NUMBA_NUM_THREADS``, plus ``torch.set_num_threads``. PyTorch runs in a child process so its
OpenMP pool never competes with numba's or OpenBLAS's threads. Times are medians (or minima,
``--stat min``, steadier on a shared machine) over ``--repeats`` runs after warm-up.

Usage: ``python benchmarks/conv_kernels.py [--threads 2] [--repeats 20] [--json out.json]``
"""

# ruff: noqa: B023  (timed lambdas run inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# (name, N, C, H, OC, padding, first layer: input is a plain NCHW batch that needs no grad)
CONVS = [
    ("seed conv1 3->32 32x32", 64, 3, 32, 32, 0, True),
    ("seed conv2 32->64 15x15", 64, 32, 15, 64, 0, False),
    ("resnet 64->64 32x32 p1", 64, 64, 32, 64, 1, False),
    ("resnet 128->128 16x16 p1", 64, 128, 16, 128, 1, False),
]
POOLS = [
    ("maxpool2 64x32x30x30", 64, 32, 30),
    ("maxpool2 64x64x13x13", 64, 64, 13),
]
# Whole blocks conv 3x3 + bias -> ReLU -> 2x2 max-pool, as the seed CNN runs them: minidl's
# fused op (what nn.Sequential runs), the same three ops unfused, and PyTorch's three ops.
# (name, N, C, H, OC, first layer)
BLOCKS = [
    ("seed block1 3->32 32x32", 64, 3, 32, 32, True),
    ("seed block2 32->64 15x15", 64, 32, 15, 64, False),
]


_STAT = "median"


def _median_ms(fn, repeats: int) -> float:
    """Median (or, with ``--stat min``, minimum) wall time in ms after two warm-up calls."""
    import numpy as np

    fn()
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float((np.min(ts) if _STAT == "min" else np.median(ts)) * 1e3)


def _torch_worker(threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    out: dict = {"version": torch.__version__, "conv": {}, "pool": {}, "block": {}}
    g = torch.Generator().manual_seed(0)
    for name, n, c, h, oc, p, first in CONVS:
        x = torch.randn(n, c, h, h, generator=g).requires_grad_(not first)
        w = (torch.randn(oc, c, 3, 3, generator=g) * 0.1).requires_grad_()
        b = torch.zeros(oc).requires_grad_()
        with torch.no_grad():
            fwd = _median_ms(lambda: torch.nn.functional.conv2d(x, w, b, padding=p), repeats)
        y = torch.nn.functional.conv2d(x, w, b, padding=p)
        gy = torch.randn(y.shape, generator=g)
        inputs = [w, b] if first else [x, w, b]
        bwd = _median_ms(lambda: torch.autograd.grad(y, inputs, gy, retain_graph=True), repeats)
        out["conv"][name] = {"fwd_ms": fwd, "bwd_ms": bwd}
    for name, n, c, h, oc, first in BLOCKS:
        x = torch.randn(n, c, h, h, generator=g).requires_grad_(not first)
        w = (torch.randn(oc, c, 3, 3, generator=g) * 0.1).requires_grad_()
        b = torch.zeros(oc).requires_grad_()
        inputs = [w, b] if first else [x, w, b]

        def block():
            F = torch.nn.functional
            return F.max_pool2d(F.relu(F.conv2d(x, w, b)), 2)

        with torch.no_grad():
            fwd = _median_ms(block, repeats)
        gp = torch.randn(block().shape, generator=g)
        train = _median_ms(lambda: torch.autograd.grad(block(), inputs, gp), repeats)
        out["block"][name] = {"fwd_ms": fwd, "train_ms": train}
    for name, n, c, h in POOLS:
        x = torch.randn(n, c, h, h, generator=g).requires_grad_()
        with torch.no_grad():
            fwd = _median_ms(lambda: torch.nn.functional.max_pool2d(x, 2), repeats)
        y = torch.nn.functional.max_pool2d(x, 2)
        gy = torch.randn(y.shape, generator=g)
        bwd = _median_ms(lambda: torch.autograd.grad(y, [x], gy, retain_graph=True), repeats)
        out["pool"][name] = {"fwd_ms": fwd, "bwd_ms": bwd}
    return out


def _torch_results(threads: int, repeats: int) -> dict | None:
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return None
    except Exception:
        return None
    proc = subprocess.run(
        [sys.executable, __file__, "--torch-worker", "--threads", str(threads), "--repeats",
         str(repeats), "--stat", _STAT], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        print("torch worker failed:\n" + proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None, help="write results to this path")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="min is steadier on a machine shared with other work")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global _STAT
    _STAT = args.stat
    _set_threads(args.threads)
    if args.torch_worker:
        print(json.dumps(_torch_worker(args.threads, args.repeats)))
        return

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np

    import minidl.kernels as K
    from minidl.kernels.im2col import col2im_into, im2col_into

    torch_res = None if args.no_torch else _torch_results(args.threads, args.repeats)
    rng = np.random.default_rng(0)
    f32 = np.float32
    results: dict = {"threads": args.threads, "repeats": args.repeats, "stat": _STAT,
                     "numpy": np.__version__, "conv": {}, "pool": {}}
    rep = args.repeats

    def cl(a):
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

    for name, n, c, h, oc, p, first in CONVS:
        x = rng.standard_normal((n, c, h, h)).astype(f32)
        if not first:  # inner layers receive channels-last activations from conv/pool
            x = cl(x)
        w = (rng.standard_normal((oc, c, 3, 3)) * 0.1).astype(f32)
        b = np.zeros(oc, f32)
        geo = K.conv2d_geometry(x.shape, w.shape, 1, p)
        npix, kk = n * geo.oh * geo.ow, 9 * c
        y = K.conv2d_forward(x, w, b, padding=p)
        gy = cl(rng.standard_normal(y.shape).astype(f32))
        fwd = _median_ms(lambda: K.conv2d_forward(x, w, b, padding=p), rep)
        bwd = _median_ms(lambda: K.conv2d_backward(x, w, gy, padding=p,
                                                   need_input_grad=not first), rep)
        cols = np.empty((npix, kk), f32)
        wm = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(oc, kk)
        yr = np.empty((npix, oc), f32)
        rows = rng.standard_normal((npix, oc)).astype(f32)
        gw = np.empty((oc, kk), f32)
        gc = np.empty((npix, kk), f32)
        t_i2c = _median_ms(lambda: im2col_into(x, cols, 3, 3, 1, 1, geo.pad, 1, 1, geo.oh,
                                               geo.ow, 1), rep)
        gx_buf = np.empty((n, h, h, c), f32).transpose(0, 3, 1, 2)
        t_c2i = _median_ms(lambda: col2im_into(gc, gx_buf, 3, 3, 1, 1, geo.pad, 1, 1, geo.oh,
                                               geo.ow, 1), rep)
        g_f = _median_ms(lambda: np.matmul(cols, wm.T, out=yr), rep)
        g_w = _median_ms(lambda: np.matmul(rows.T, cols, out=gw), rep)
        g_x = 0.0 if first else _median_ms(lambda: np.matmul(rows, wm, out=gc), rep)
        flops = 2.0 * npix * kk * oc
        r = {
            "fwd_ms": fwd, "bwd_ms": bwd,
            "fwd_gflops": flops / fwd / 1e6, "bwd_gflops": flops * (1 if first else 2) / bwd / 1e6,
            "gemm_fwd_ms": g_f, "gemm_bwd_ms": g_w + g_x,
            "gemm_fwd_gflops": flops / g_f / 1e6,
            "im2col_ms": t_i2c, "col2im_ms": 0.0 if first else t_c2i,
            "fwd_non_gemm_share": max(0.0, 1 - g_f / fwd),
            "bwd_non_gemm_share": max(0.0, 1 - (g_w + g_x) / bwd),
        }
        if torch_res:
            t = torch_res["conv"][name]
            r.update(torch_fwd_ms=t["fwd_ms"], torch_bwd_ms=t["bwd_ms"],
                     ratio_fwd=fwd / t["fwd_ms"], ratio_bwd=bwd / t["bwd_ms"])
        results["conv"][name] = r

    for name, n, c, h in POOLS:
        x = cl(rng.standard_normal((n, c, h, h)).astype(f32))
        y, ind = K.max_pool2d_forward(x, 2)
        gy = np.ones_like(y)
        r = {"fwd_ms": _median_ms(lambda: K.max_pool2d_forward(x, 2), rep),
             "bwd_ms": _median_ms(lambda: K.max_pool2d_backward(gy, ind, x.shape), rep)}
        if torch_res:
            t = torch_res["pool"][name]
            r.update(torch_fwd_ms=t["fwd_ms"], torch_bwd_ms=t["bwd_ms"],
                     ratio_fwd=r["fwd_ms"] / t["fwd_ms"], ratio_bwd=r["bwd_ms"] / t["bwd_ms"])
        results["pool"][name] = r

    import minidl
    import minidl.functional as F

    results["block"] = {}
    for name, n, c, h, oc, first in BLOCKS:
        x = minidl.tensor(cl(rng.standard_normal((n, c, h, h)).astype(f32)) if not first
                          else rng.standard_normal((n, c, h, h)).astype(f32),
                          requires_grad=not first)
        w = minidl.tensor((rng.standard_normal((oc, c, 3, 3)) * 0.1).astype(f32),
                          requires_grad=True)
        b = minidl.tensor(np.zeros(oc, f32), requires_grad=True)
        inputs = [w, b] if first else [x, w, b]
        gp = minidl.tensor(rng.standard_normal((n, oc, (h - 2) // 2, (h - 2) // 2)).astype(f32))
        r = {}
        for label, block in (
                ("fused", lambda: F.conv2d_max_pool2d(x, w, b, activation="relu")),
                ("unfused", lambda: F.max_pool2d(F.conv2d(x, w, b, activation="relu"), 2))):
            with minidl.no_grad():
                r[f"{label}_fwd_ms"] = _median_ms(block, rep)
            r[f"{label}_train_ms"] = _median_ms(
                lambda: minidl.autograd.grad(block(), inputs, gp), rep)
        if torch_res:
            t = torch_res["block"][name]
            r.update(torch_fwd_ms=t["fwd_ms"], torch_train_ms=t["train_ms"],
                     ratio_fwd=r["fused_fwd_ms"] / t["fwd_ms"],
                     ratio_train=r["fused_train_ms"] / t["train_ms"])
        results["block"][name] = r

    if torch_res:
        results["torch"] = torch_res["version"]
    _print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def _print_table(res: dict) -> None:
    tq = "torch" in res
    print(f"threads={res['threads']} repeats={res['repeats']} stat={res['stat']} "
          f"numpy={res['numpy']}"
          + (f" torch={res['torch']}" if tq else " (torch not importable)"))
    hdr = (f"{'conv2d (batch 64, f32, 3x3)':28s} {'pass':4s} {'ms':>7s} {'GF/s':>6s} "
           f"{'GEMM ms':>8s} {'GEMM GF/s':>9s} {'nonGEMM':>7s} {'im2col':>7s} {'col2im':>7s}"
           + (f" {'torch ms':>8s} {'ratio':>6s}" if tq else ""))
    print(hdr)
    print("-" * len(hdr))
    for name, r in res["conv"].items():
        for ps in ("fwd", "bwd"):
            gemm = r[f"gemm_{ps}_ms"]
            line = (f"{name:28s} {ps:4s} {r[f'{ps}_ms']:7.2f} {r[f'{ps}_gflops']:6.1f} "
                    f"{gemm:8.2f} "
                    + (f"{r['gemm_fwd_gflops']:9.1f} " if ps == "fwd" else f"{'':9s} ")
                    + f"{100 * r[f'{ps}_non_gemm_share']:6.0f}% "
                    + (f"{r['im2col_ms']:7.2f} {'':7s}" if ps == "fwd"
                       else f"{'':7s} {r['col2im_ms']:7.2f}"))
            if tq:
                line += f" {r[f'torch_{ps}_ms']:8.2f} {r[f'ratio_{ps}']:6.2f}"
            print(line)
    print()
    print(f"{'block conv+ReLU+pool 2x2':28s} {'pass':5s} {'fused ms':>8s} {'unfused':>8s}"
          + (f" {'torch ms':>8s} {'fused/torch':>11s}" if tq else ""))
    for name, r in res["block"].items():
        for ps, label in (("fwd", "fwd"), ("train", "f+b")):
            line = f"{name:28s} {label:5s} {r[f'fused_{ps}_ms']:8.2f} {r[f'unfused_{ps}_ms']:8.2f}"
            if tq:
                line += f" {r[f'torch_{ps}_ms']:8.2f} {r[f'ratio_{ps}']:11.2f}"
            print(line)
    print()
    for name, r in res["pool"].items():
        line = f"{name:28s} fwd {r['fwd_ms']:7.2f} ms  bwd {r['bwd_ms']:7.2f} ms"
        if tq:
            line += (f"   torch fwd {r['torch_fwd_ms']:6.2f} bwd {r['torch_bwd_ms']:6.2f}"
                     f"  ratio {r['ratio_fwd']:.2f} / {r['ratio_bwd']:.2f}")
        print(line)


if __name__ == "__main__":
    main()
