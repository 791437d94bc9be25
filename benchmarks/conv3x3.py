"""Every 3x3 convolution of ResNet-9 and the airbench94 net: minidl (im2col and Winograd)
against PyTorch CPU in its faster layout, forward and backward, ratios from the same run.

Layers (float32, stride 1, padding 1, no bias; batch per net from ``--batch``):

* ResNet-9 width 24 (``minidl.models.resnet9(width=24)``), batch 128 by default;
* the airbench94 net (widths 64/256/256 after a 2x2 whitening conv to 24 channels),
  batch 256 by default.

Per layer and pass, minidl's two algorithms (``minidl.kernels.set_conv_algorithm``) and
PyTorch's NCHW and channels_last runs are timed in alternating rounds: one round of minidl
in this process, then one round of PyTorch in a worker process that sleeps between rounds
(its threads never compete with numba's or OpenBLAS's). Each figure is the median over
rounds of a round's median; each ratio is the median of the per-round ratios against
PyTorch's faster layout in that round. Backward is ``aten.convolution_backward`` on the
PyTorch side and ``conv2d_backward`` on ours, both computing the input gradient (except for
the first layer, whose input needs none) and the weight gradient.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv3x3.py \\
        --net all --rounds 5 --json benchmarks/results/conv3x3.json
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

# (net, name, C, OC, H): input H x H, padding 1
LAYERS = [
    ("resnet9", "prep 3->24 @32", 3, 24, 32),
    ("resnet9", "layer1 24->48 @32", 24, 48, 32),
    ("resnet9", "res1 48->48 @16", 48, 48, 16),
    ("resnet9", "layer2 48->96 @16", 48, 96, 16),
    ("resnet9", "layer3 96->192 @8", 96, 192, 8),
    ("resnet9", "res3 192->192 @4", 192, 192, 4),
    ("airbench94", "block1a 24->64 @31", 24, 64, 31),
    ("airbench94", "block1b 64->64 @15", 64, 64, 15),
    ("airbench94", "block2a 64->256 @15", 64, 256, 15),
    ("airbench94", "block2b 256->256 @7", 256, 256, 7),
    ("airbench94", "block3a 256->256 @7", 256, 256, 7),
    ("airbench94", "block3b 256->256 @3", 256, 256, 3),
]
FIRST = {"prep 3->24 @32"}  # the net's input needs no gradient


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _torch_worker(threads: int, repeats: int, layers: list) -> None:
    """Child process: on each input line run one round over ``layers``, print its JSON."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cases = []
    for name, n, c, oc, h in layers:
        x = torch.randn(n, c, h, h)
        w = torch.randn(oc, c, 3, 3) * 0.1
        gy = torch.randn(n, oc, h, h)
        cases.append((name, x, w, gy))
    for _ in sys.stdin:
        out = {}
        with torch.no_grad():
            for name, x, w, gy in cases:
                mask = (name not in FIRST, True, False)
                for fmt in ("nchw", "channels_last"):
                    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
                    xs, ws, gs = (t.contiguous(memory_format=mf) for t in (x, w, gy))
                    fwd = _median_ms(lambda: torch.nn.functional.conv2d(xs, ws, padding=1),
                                     repeats)
                    bwd = _median_ms(lambda: torch.ops.aten.convolution_backward(
                        gs, xs, ws, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask),
                        repeats)
                    out[f"{name}|{fmt}"] = (fwd, bwd)
        print(json.dumps(out), flush=True)


def _minidl_round(cases: list, repeats: int) -> dict:
    from minidl.kernels import conv as K
    out = {}
    for name, x, w, gy in cases:
        for algo in ("im2col", "winograd"):
            K.set_conv_algorithm(algo)
            fwd = _median_ms(lambda: K.conv2d_forward(x, w, None, padding=1), repeats)
            bwd = _median_ms(lambda: K.conv2d_backward(
                x, w, gy, padding=1, need_input_grad=name not in FIRST, need_bias_grad=False),
                repeats)
            out[f"{name}|{algo}"] = (fwd, bwd)
    K.set_conv_algorithm("auto")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=("resnet9", "airbench94", "all"), default="all")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch for every layer (default: 128 for ResNet-9, 256 for airbench94)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per layer and round")
    ap.add_argument("--json", default=None)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    _set_threads(args.threads)
    layers = [(name, args.batch or (128 if net == "resnet9" else 256), c, oc, h)
              for net, name, c, oc, h in LAYERS if args.net in ("all", net)]
    if args.torch_worker:
        _torch_worker(args.threads, args.repeats, layers)
        return

    import numpy as np
    rng = np.random.default_rng(0)
    cases = []
    for name, n, c, oc, h in layers:
        def cl(shape):
            a = rng.standard_normal((shape[0], shape[2], shape[3], shape[1]), dtype=np.float32)
            return a.transpose(0, 3, 1, 2)  # channels-last memory, as minidl's layers pass it
        cases.append((name, cl((n, c, h, h)),
                      (0.1 * rng.standard_normal((oc, c, 3, 3))).astype(np.float32),
                      cl((n, oc, h, h))))
    worker = None
    try:
        import torch  # noqa: F401
        worker = subprocess.Popen(
            [sys.executable, __file__, "--torch-worker", "--net", args.net, "--threads",
             str(args.threads), "--repeats", str(args.repeats)]
            + (["--batch", str(args.batch)] if args.batch else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    except ImportError:
        print("torch not installed: minidl figures only")
    rounds = []
    for r in range(args.rounds):
        ours = _minidl_round(cases, args.repeats)
        theirs = {}
        if worker is not None:
            worker.stdin.write("go\n")
            worker.stdin.flush()
            theirs = json.loads(worker.stdout.readline())
        rounds.append({**ours, **theirs})
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    if worker is not None:
        worker.stdin.close()
        worker.wait()

    rows = []
    for name, n, _c, _oc, _h in layers:
        for i, pass_ in enumerate(("forward", "backward")):
            def med(key):
                vals = [rd[key][i] for rd in rounds if key in rd]
                return statistics.median(vals) if vals else None
            row = {"layer": name, "batch": n, "pass": pass_,
                   "im2col_ms": med(f"{name}|im2col"), "winograd_ms": med(f"{name}|winograd"),
                   "torch_nchw_ms": med(f"{name}|nchw"),
                   "torch_cl_ms": med(f"{name}|channels_last")}
            if worker is not None:
                best = [min(rd[f"{name}|nchw"][i], rd[f"{name}|channels_last"][i])
                        for rd in rounds]
                for algo in ("im2col", "winograd"):
                    row[f"{algo}_ratio"] = statistics.median(
                        rd[f"{name}|{algo}"][i] / b for rd, b in zip(rounds, best))
            rows.append(row)
    print(f"\n{'layer':24s} {'batch':>5s} {'pass':8s} {'im2col':>8s} {'winograd':>9s} "
          f"{'PT nchw':>8s} {'PT cl':>8s} {'im2col/PT':>9s} {'wino/PT':>8s}")
    for row in rows:
        def f(v, spec="8.2f"):
            return format(v, spec) if v is not None else "       -"
        print(f"{row['layer']:24s} {row['batch']:5d} {row['pass']:8s} {f(row['im2col_ms'])} "
              f"{f(row['winograd_ms'], '9.2f')} {f(row['torch_nchw_ms'])} "
              f"{f(row['torch_cl_ms'])} {f(row.get('im2col_ratio'), '9.2f')} "
              f"{f(row.get('winograd_ratio'))}")
    if args.json:
        try:
            from threadpoolctl import threadpool_info
        except ImportError:
            def threadpool_info():
                return []
        meta = {"machine": platform.processor() or platform.machine(),
                "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
                "blas": [{k: d.get(k) for k in ("internal_api", "version", "architecture",
                                                 "num_threads")} for d in threadpool_info()],
                "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
