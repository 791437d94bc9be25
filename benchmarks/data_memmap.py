"""Benchmark: stream one shuffled epoch of a dataset bigger than a RAM budget from disk.

Builds a synthetic uint8 image dataset (default 1 GiB of 3x32x32 images, CIFAR-shaped) as a
memmap dataset folder in a temporary directory, then runs one shuffled epoch through
``DataLoader`` in three ways, each in its own process so that its peak resident memory
(``ru_maxrss``) is its own:

- ``memmap``: ``MemmapDataset`` (positional reads, sorted per batch): the subject;
- ``mmap-index``: the same files, batches fancy-indexed through the ``np.load(mmap_mode)``
  mapping (what a naive memmap loader does), to show what the mapping costs in memory;
- ``in-memory``: the whole file loaded into RAM first, then ``ArrayDataset`` (the speed
  reference; its peak memory is the file size).

Prints a table (images/s, MB/s, peak RSS, RSS / file size) and optionally writes JSON.
``--cold`` asks the kernel to drop the file from the page cache before each epoch, so reads
hit the disk. Usage::

    python benchmarks/data_memmap.py --size-gb 1 --budget-mb 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minidl.data import ArrayDataset, DataLoader, MemmapDataset, write_memmap_dataset  # noqa: E402

IMAGE_SHAPE = (3, 32, 32)
MIB = 2**20


def _rss_now_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB else


class _SyntheticImages:
    """Array-like (N, 3, 32, 32) uint8 whose slices are generated on demand (bounded RAM)."""

    def __init__(self, n: int, seed: int) -> None:
        self.shape, self.dtype, self.seed = (n, *IMAGE_SHAPE), np.dtype(np.uint8), seed

    def __getitem__(self, s: slice) -> np.ndarray:
        rng = np.random.default_rng([self.seed, s.start])
        return rng.integers(0, 256, (s.stop - s.start, *IMAGE_SHAPE), dtype=np.uint8)


def _drop_cache(path: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def phase_write(args: argparse.Namespace) -> dict:
    n = int(args.size_gb * 2**30) // int(np.prod(IMAGE_SHAPE))
    labels = np.random.default_rng(1).integers(0, 10, n)
    t0 = time.perf_counter()
    write_memmap_dataset(Path(args.dir) / "ds", _SyntheticImages(n, 0), labels,
                         [f"class{i}" for i in range(10)], overwrite=True, chunk_size=8192)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt}


def phase_epoch(args: argparse.Namespace) -> dict:
    folder = Path(args.dir) / "ds"
    images_file = folder / "images.npy"
    cold = _drop_cache(images_file) if args.cold else False
    base_rss = _rss_now_mib()
    load_s = 0.0
    ds = MemmapDataset(folder)
    if args.phase == "mmap-index":
        data = ArrayDataset(ds.images, ds.labels)
    elif args.phase == "in-memory":
        t0 = time.perf_counter()
        data = ArrayDataset(np.load(images_file), np.load(folder / "labels.npy"))
        load_s = time.perf_counter() - t0
    else:
        data = ds
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, seed=0,
                        prefetch=args.prefetch, as_tensor=False)
    t0 = time.perf_counter()
    count, checksum = 0, 0
    for x, _ in loader:
        count += x.shape[0]
        checksum += int(x[:, 0, 0, 0].sum())  # touch the data; compare across phases
    dt = time.perf_counter() - t0
    return {"images": count, "seconds": dt, "load_seconds": load_s, "checksum": checksum,
            "base_rss_mib": base_rss, "cold_cache": cold}


def _run_phase(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--dir", args.dir,
           "--size-gb", str(args.size_gb), "--batch-size", str(args.batch_size),
           "--prefetch", str(args.prefetch)] + (["--cold"] if args.cold else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="dataset size in GiB")
    parser.add_argument("--budget-mb", type=float, default=512,
                        help="RAM budget the memmap epoch must stay under (MiB)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the dataset afterwards")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before epochs")
    parser.add_argument("--skip-in-memory", action="store_true")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:  # child process: one phase, JSON on stdout
        result = phase_write(args) if args.phase == "write" else phase_epoch(args)
        result["peak_rss_mib"] = _peak_rss_mib()
        print(json.dumps(result))
        return

    made_dir = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="minidl-memmap-bench-")
    try:
        write = _run_phase("write", args)
        file_bytes = (Path(args.dir) / "ds" / "images.npy").stat().st_size
        file_mib = file_bytes / MIB
        phases = ["memmap", "mmap-index"] + ([] if args.skip_in_memory else ["in-memory"])
        rows = [("write", write)] + [(p, _run_phase(p, args)) for p in phases]
    finally:
        if made_dir and not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    results = []
    for name, r in rows:
        mb = r["images"] * int(np.prod(IMAGE_SHAPE)) / 1e6
        results.append({
            "phase": name, "images": r["images"], "seconds": round(r["seconds"], 3),
            "load_seconds": round(r.get("load_seconds", 0.0), 3),
            "images_per_s": round(r["images"] / r["seconds"]),
            "mb_per_s": round(mb / r["seconds"], 1),
            "peak_rss_mib": round(r["peak_rss_mib"], 1),
            "peak_rss_over_file": round(r["peak_rss_mib"] / file_mib, 3),
            "checksum": r.get("checksum"), "cold_cache": r.get("cold_cache", False),
        })
    checksums = {r["checksum"] for r in results if r["checksum"] is not None}
    memmap = next(r for r in results if r["phase"] == "memmap")
    summary = {
        "file_mib": round(file_mib, 1), "budget_mib": args.budget_mb,
        "batch_size": args.batch_size, "prefetch": args.prefetch, "cold": args.cold,
        "memmap_within_budget": memmap["peak_rss_mib"] < args.budget_mb,
        "same_data_in_all_phases": len(checksums) == 1,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} "
                   f"{platform.release()}, numpy {np.__version__}",
    }

    print(f"dataset: {file_mib:.0f} MiB of {IMAGE_SHAPE} uint8 images, RAM budget "
          f"{args.budget_mb:.0f} MiB, batch {args.batch_size}, prefetch {args.prefetch}"
          f"{', cold page cache' if args.cold else ''}")
    header = f"{'phase':<11} {'images':>9} {'s':>7} {'images/s':>10} {'MB/s':>8} " \
             f"{'peak RSS MiB':>13} {'RSS/file':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        extra = f"  (+{r['load_seconds']:.2f} s to load)" if r["load_seconds"] else ""
        print(f"{r['phase']:<11} {r['images']:>9} {r['seconds']:>7.2f} {r['images_per_s']:>10} "
              f"{r['mb_per_s']:>8.1f} {r['peak_rss_mib']:>13.1f} {r['peak_rss_over_file']:>9.3f}"
              f"{extra}")
    mem = next((r for r in results if r["phase"] == "in-memory"), None)
    if mem:
        print(f"memmap throughput = {memmap['images_per_s'] / mem['images_per_s']:.2f}x "
              f"in-memory; memmap peak RSS = {memmap['peak_rss_mib'] / mem['peak_rss_mib']:.2f}x "
              "in-memory")
    print(f"memmap epoch within the {args.budget_mb:.0f} MiB budget: "
          f"{'yes' if summary['memmap_within_budget'] else 'NO'}; identical data in all "
          f"phases: {'yes' if summary['same_data_in_all_phases'] else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "results": results},
                                              indent=1))


if __name__ == "__main__":
    main()
