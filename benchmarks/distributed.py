"""Data-parallel scaling on one machine, the allreduce cost, and a ring-allreduce model.

    python benchmarks/distributed.py --json benchmarks/results/distributed.json

Three measurements, each in fresh subprocesses (``mpiexec -n 2 python -m mpi4py`` for the
ranks), interleaved over ``--rounds`` so that machine noise hits every mode alike:

1. Training step of the seed CNN (Adam) and ResNet-9 width 24 (SGD-Nesterov) at global
   batch 64 and 256, float32, random data, in three modes: one process x 1 thread, one
   process x 2 threads, and 2 ranks x 1 thread (``DistributedDataParallel``, each rank half
   the batch). The first and the last alternate inside one 2-rank job (rank 0 alone with
   the whole batch while rank 1 waits, then both), so that they share the same minutes of
   a noisy machine; the 2-thread process runs right after. Reported: median step time,
   throughput of 2 ranks over each single-process mode (the same global batch, so the
   ratio of step times; median of the per-round ratios), and the time rank 0 spends in the
   gradient allreduce per step (including any wait for the other rank). The same job also
   runs both ranks at once on their half batches *without* any communication: the
   throughput two cores of the machine give at all (they share caches and memory
   bandwidth), the ceiling for any data-parallel scheme.
2. Allreduce of float32 messages of 4 B to 64 MiB between 2 ranks, over shared memory
   (MPICH's default on one machine) and forced onto TCP (``--tcp`` of the launcher), with
   ``t(n) = a + n / bw`` fitted by least squares.
3. A ring-allreduce model from those figures: at ``p`` ranks one allreduce of ``S`` bytes
   takes ``2 (p - 1) a + 2 (p - 1) / p * S / bw`` (reduce-scatter then all-gather, each
   ``p - 1`` steps of ``S / p`` bytes). With the measured per-image compute time of each
   net and the link bandwidth of 10 and 100 Gbit/s it predicts the efficiency
   ``t_compute / (t_compute + t_allreduce)`` (no overlap of communication with backward)
   at 8, 64 and 512 ranks for a per-rank batch of 32 and 128, and the per-rank batch that
   90% efficiency needs. ``docs/distributed.md`` discusses the table.

Thread counts are pinned per process through ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
and ``NUMBA_NUM_THREADS``. Unset ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` for figures
that mean something on a user's machine (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
TCP_ENV = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "MPIR_CVAR_NOLOCAL": "1"}
APART = "2 processes x 1 thread, no communication"
NETS = {"seed": "seed CNN", "resnet9": "ResNet-9 width 24", "airbench94": "airbench94 net"}


# -- workers (run inside the subprocesses) ---------------------------------------------------

def _build(net: str):
    from minidl import models, optim

    if net == "seed":
        model = models.seed_cnn()
        return model, optim.Adam(model.parameters(), lr=1e-3)
    if net == "resnet9":
        model = models.resnet9(width=24)
    else:
        model = models.airbench94()
    trainable = [p for p in model.parameters() if p.requires_grad]  # airbench94 freezes some
    return model, optim.SGD(trainable, lr=0.01, momentum=0.9, nesterov=True)


def _timed_step(model, opt, x, y, world, reduce: bool) -> tuple[float, float]:
    """One training step: (its seconds, seconds of it spent in the gradient allreduce)."""
    from minidl.functional import softmax_cross_entropy

    before = world.stats["seconds"]
    start = time.perf_counter()
    loss = softmax_cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    if reduce:
        model.allreduce_gradients()
    opt.step()
    return time.perf_counter() - start, world.stats["seconds"] - before


def worker_step(net: str, batch: int, steps: int, distributed: bool) -> None:
    """Time ``steps`` training steps at global ``batch``; rank 0 prints one JSON line."""
    import minidl
    from minidl import distributed as dist

    world = dist.init_process_group("mpi") if distributed else dist.get_world()
    local = dist.local_batch_size(batch, world)
    minidl.manual_seed(0)
    model, opt = _build(net)
    if distributed:
        model = dist.DistributedDataParallel(model, world)
    rng = np.random.default_rng(world.rank)
    x = minidl.Tensor(rng.standard_normal((local, 3, 32, 32)).astype(np.float32))
    y = minidl.Tensor(rng.integers(0, 10, local).astype(np.int64))
    params = sum(p.size for p in model.parameters() if p.requires_grad)  # what is allreduced
    times, comm = [], []
    for k in range(steps + 3):  # 3 warm-up steps (numba compiles, buffers grow)
        t, c = _timed_step(model, opt, x, y, world, distributed)
        if k >= 3:
            times.append(t)
            comm.append(c)
    if world.rank == 0:
        print(json.dumps({"step_s": times, "comm_s": comm, "params": int(params)}),
              flush=True)


def worker_scaling(net: str, batch: int, steps: int, rounds: int) -> None:
    """In one 2-rank job, alternate ``rounds`` times: rank 0 alone trains a plain model at
    the global ``batch`` (rank 1 waits at a barrier: one process x 1 thread), then both
    ranks train a ``DistributedDataParallel`` copy at half the batch each. Both modes thus
    run in the same minutes of a noisy machine. Rank 0 prints one JSON line."""
    import minidl
    from minidl import distributed as dist

    world = dist.init_process_group("mpi")
    local = dist.local_batch_size(batch, world)
    minidl.manual_seed(0)
    plain, plain_opt = _build(net)
    minidl.manual_seed(0)
    model, opt = _build(net)
    model = dist.DistributedDataParallel(model, world)
    rng = np.random.default_rng(world.rank)
    xs = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    ys = rng.integers(0, 10, batch).astype(np.int64)
    x_all, y_all = minidl.Tensor(xs), minidl.Tensor(ys)
    x, y = minidl.Tensor(xs[:local]), minidl.Tensor(ys[:local])

    def step(m, o, xb, yb, reduce: bool) -> tuple[float, float]:
        return _timed_step(m, o, xb, yb, world, reduce)

    single, apart, ranks, comm = [], [], [], []
    for r in range(rounds + 1):  # round 0 warms up (numba compiles, buffers grow)
        if world.rank == 0:
            ts = [step(plain, plain_opt, x_all, y_all, False)[0] for _ in range(steps)]
        world.barrier()
        # Both ranks at once, each on its own half batch, never talking: what two cores of
        # this machine give without any communication (shared caches and memory bandwidth).
        alone = [step(plain, plain_opt, x, y, False)[0] for _ in range(steps)]
        world.barrier()
        both = [step(model, opt, x, y, True) for _ in range(steps)]
        world.barrier()
        if r and world.rank == 0:
            single.append(float(np.median(ts)))
            apart.append(float(np.median(alone)))
            ranks.append(float(np.median([t for t, _ in both])))
            comm.append(float(np.median([c for _, c in both])))
    if world.rank == 0:
        params = sum(p.size for p in model.parameters() if p.requires_grad)
        print(json.dumps({"single_s": single, "apart_s": apart, "ranks_s": ranks,
                          "comm_s": comm, "params": int(params)}), flush=True)


def worker_allreduce(sizes: list[int], repeats: int) -> None:
    """Median allreduce time per message size; rank 0 prints one JSON line."""
    from minidl import distributed as dist

    world = dist.init_process_group("mpi")
    out = []
    for nbytes in sizes:
        a = np.ones(max(1, nbytes // 4), np.float32)
        world.allreduce_(a)  # warm-up
        world.barrier()
        ts = []
        for _ in range(repeats):
            start = time.perf_counter()
            world.allreduce_(a)
            ts.append(time.perf_counter() - start)
        out.append([int(a.nbytes), float(np.median(ts))])
    if world.rank == 0:
        print(json.dumps(out), flush=True)


# -- the driver ------------------------------------------------------------------------------

def _env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env.update(extra or {})
    return env


def _mpiexec() -> str:
    here = Path(sys.executable).with_name("mpiexec")
    return str(here) if here.exists() else "mpiexec"


def _run(cmd: list[str], env: dict) -> object:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))]
    return json.loads(lines[-1])


def _step(net: str, batch: int, steps: int, mode: str) -> dict:
    args = [str(HERE), "--worker", "step", "--net", net, "--batch", str(batch),
            "--steps", str(steps)]
    if mode == "2 ranks x 1 thread":
        cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", *args, "--distributed"]
        return _run(cmd, _env(1))
    threads = 1 if mode == "1 process x 1 thread" else 2
    return _run([sys.executable, *args], _env(threads))


def _scaling(net: str, batch: int, steps: int, rounds: int) -> dict:
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(HERE), "--worker",
           "scaling", "--net", net, "--batch", str(batch), "--steps", str(steps),
           "--rounds", str(rounds)]
    return _run(cmd, _env(1))


def _allreduce(tcp: bool, repeats: int) -> list:
    sizes = [4 << (2 * k) for k in range(13)] + [64 << 20]  # 4 B ... 64 MiB
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(HERE), "--worker",
           "allreduce", "--sizes", ",".join(map(str, sizes)), "--steps", str(repeats)]
    return _run(cmd, _env(1, TCP_ENV if tcp else None))


def fit_latency_bandwidth(points: list) -> tuple[float, float]:
    """Least-squares ``t = a + n / bw`` over (bytes, seconds) points, weighting each
    point by 1/t so that small and large messages count alike; returns (a, bw)."""
    n = np.array([p[0] for p in points], float)
    t = np.array([p[1] for p in points], float)
    w = 1.0 / t
    A = np.stack([np.ones_like(n), n], axis=1) * w[:, None]
    (a, inv_bw), *_ = np.linalg.lstsq(A, t * w, rcond=None)
    return max(float(a), 0.0), 1.0 / max(float(inv_bw), 1e-15)


def ring_allreduce_s(nbytes: float, ranks: int, latency: float, bandwidth: float) -> float:
    """The ring allreduce time of the module docstring."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * nbytes / bandwidth


def scaling_model(per_image_s: dict, grad_bytes: dict, latency: float) -> list[dict]:
    """Predicted efficiency per net, link, rank count and per-rank batch."""
    rows = []
    for net, t_img in per_image_s.items():
        for gbit in (10, 100):
            bw = gbit * 1e9 / 8
            for ranks in (8, 64, 512):
                comm = ring_allreduce_s(grad_bytes[net], ranks, latency, bw)
                row = {"net": net, "link_gbit": gbit, "ranks": ranks,
                       "allreduce_ms": comm * 1e3,
                       "batch_for_90pct": int(np.ceil(9 * comm / t_img))}
                for b in (32, 128):
                    compute = b * t_img
                    row[f"efficiency_b{b}"] = compute / (compute + comm)
                rows.append(row)
    return rows


def _machine() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                info["avx512f"] = " avx512f " in line + " "
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture")}
                        for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        pass
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=("step", "scaling", "allreduce"))
    p.add_argument("--net", default="seed", choices=sorted(NETS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sizes", default="")
    p.add_argument("--distributed", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", default="seed:64,seed:256,resnet9:64,resnet9:256",
                   help="net:global_batch pairs of the scaling table")
    p.add_argument("--json", help="write all results here")
    args = p.parse_args()
    if args.worker == "step":
        return worker_step(args.net, args.batch, args.steps, args.distributed)
    if args.worker == "scaling":
        return worker_scaling(args.net, args.batch, args.steps, args.rounds)
    if args.worker == "allreduce":
        return worker_allreduce([int(s) for s in args.sizes.split(",")], args.steps)

    modes = ("1 process x 1 thread", "1 process x 2 threads", "2 ranks x 1 thread")
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    raw: dict = {f"{n}:{b}": {m: [] for m in modes + (APART,)} for n, b in cases}
    comm: dict = {f"{n}:{b}": [] for n, b in cases}
    params: dict = {}
    # Each round: one 2-rank job alternating 1 process x 1 thread with 2 ranks x 1 thread
    # (3 sub-rounds inside it), then a 1 process x 2 threads run right after.
    for r in range(args.rounds):
        for net, batch in cases:
            key = f"{net}:{batch}"
            res = _scaling(net, batch, args.steps, 3)
            raw[key][modes[0]].extend(res["single_s"])
            raw[key][modes[2]].extend(res["ranks_s"])
            raw[key][APART].extend(res["apart_s"])
            comm[key].extend(res["comm_s"])
            params[net] = res["params"]
            two = _step(net, batch, args.steps, modes[1])
            raw[key][modes[1]].extend([float(np.median(two["step_s"]))] * 3)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    print("\n## Training step, same global batch (median over rounds)\n")
    print("| net | batch | 1p x 1t | 1p x 2t | 2r x 1t | 2r/1p1t throughput | "
          "2r/1p2t throughput | allreduce per step | ceiling: 2 apart/1p1t |")
    print("|---|---|---|---|---|---|---|---|---|")
    table = []
    for net, batch in cases:
        key = f"{net}:{batch}"
        t1, t2, tr = (np.array(raw[key][m]) for m in modes)
        ta = np.array(raw[key][APART])
        row = {"net": net, "batch": batch, "single_1t_ms": float(np.median(t1)) * 1e3,
               "single_2t_ms": float(np.median(t2)) * 1e3,
               "ranks2_ms": float(np.median(tr)) * 1e3,
               "speedup_vs_1t": float(np.median(t1 / tr)),
               "speedup_vs_2t": float(np.median(t2 / tr)),
               "allreduce_ms": float(np.median(comm[key])) * 1e3,
               "apart_ms": float(np.median(ta)) * 1e3,
               "ceiling_vs_1t": float(np.median(t1 / ta)),
               "grad_mb": params[net] * 4 / 2**20}
        table.append(row)
        print(f"| {NETS[net]} | {batch} | {row['single_1t_ms']:.1f} ms | "
              f"{row['single_2t_ms']:.1f} ms | {row['ranks2_ms']:.1f} ms | "
              f"{row['speedup_vs_1t']:.2f} | {row['speedup_vs_2t']:.2f} | "
              f"{row['allreduce_ms']:.2f} ms ({row['grad_mb']:.1f} MB) | "
              f"{row['ceiling_vs_1t']:.2f} |")

    print("\n## Allreduce between 2 ranks (float32)\n")
    sweeps = {}
    for name, tcp in (("shared memory", False), ("TCP", True)):
        pts = _allreduce(tcp, repeats=20)
        a, bw = fit_latency_bandwidth(pts)
        sweeps[name] = {"points": pts, "latency_us": a * 1e6, "bandwidth_gb_s": bw / 1e9}
        print(f"{name}: latency {a * 1e6:.1f} us, bandwidth {bw / 1e9:.2f} GB/s; "
              + ", ".join(f"{n}B {t * 1e6:.0f}us" for n, t in pts[::3]))

    # Per-image compute time on one thread, from the single-process runs at the largest
    # batch measured (the airbench94 net once, at batch 64, for the model only).
    per_image = {}
    for net in sorted({n for n, _ in cases}):
        b = max(bb for nn, bb in cases if nn == net)
        per_image[net] = float(np.median(raw[f"{net}:{b}"][modes[0]])) / b
    res = _step("airbench94", 64, max(3, args.steps // 4), modes[0])
    per_image["airbench94"] = float(np.median(res["step_s"])) / 64
    params["airbench94"] = res["params"]
    grad_bytes = {n: params[n] * 4 for n in per_image}
    latency = sweeps["TCP"]["latency_us"] * 1e-6
    model = scaling_model(per_image, grad_bytes, latency)
    print(f"\n## Ring-allreduce model (latency {latency * 1e6:.0f} us from the TCP fit)\n")
    print("| net | link | ranks | allreduce | eff. b32 | eff. b128 | batch for 90% |")
    print("|---|---|---|---|---|---|---|")
    for row in model:
        print(f"| {NETS[row['net']]} | {row['link_gbit']} Gbit/s | {row['ranks']} | "
              f"{row['allreduce_ms']:.1f} ms | {row['efficiency_b32']:.0%} | "
              f"{row['efficiency_b128']:.0%} | {row['batch_for_90pct']} |")
    if args.json:
        out = {"machine": _machine(), "date": time.strftime("%Y-%m-%d"),
               "steps": args.steps, "rounds": args.rounds, "step_table": table,
               "raw_step_s": raw, "allreduce": sweeps, "per_image_s": per_image,
               "grad_bytes": grad_bytes, "model": model}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
