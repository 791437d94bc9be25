"""``python -m minidl.distributed -n N script.py [args...]``: launch N ranks with mpiexec.

It runs ``mpiexec -n N python -m mpi4py script.py args...`` with the ``mpiexec`` installed
beside this Python (the MPICH wheel of the ``mpi`` extra) or on ``PATH``. ``-m mpi4py``
makes a rank that raises abort the whole job instead of leaving the others waiting. Unless
you set them, it gives each rank ``cores // N`` threads (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``NUMBA_NUM_THREADS``), because N ranks each starting one
thread per core would fight over the cores.

Options: ``--hostfile FILE`` (several machines: one host name per line, ``host:slots``),
and ``--tcp``, which makes MPICH send every message over TCP sockets, even between ranks
on one machine (how ranks on different machines talk without InfiniBand; on one machine
it exercises that path).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
# MPICH (ch4 device): the OFI network module with libfabric's TCP provider, and no
# shared-memory shortcut between ranks of one machine.
TCP_ENV = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "MPIR_CVAR_NOLOCAL": "1"}


def mpiexec_path() -> str:
    """The ``mpiexec`` beside ``sys.executable``, else the one on ``PATH``."""
    here = Path(sys.executable).with_name("mpiexec")
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec")
    if found is None:
        raise SystemExit("minidl.distributed: no mpiexec found; install the extra: pip install "
                         "'minidl[mpi]' (mpi4py and the MPICH wheel)")
    return found


def command(nprocs: int, script: list[str], mpi_args: list[str]) -> list[str]:
    """The mpiexec command line that runs ``script`` on ``nprocs`` ranks.

    >>> command(2, ["train.py", "--epochs", "1"], [])[-5:]
    ['-m', 'mpi4py', 'train.py', '--epochs', '1']
    """
    return [mpiexec_path(), "-n", str(nprocs), *mpi_args, sys.executable, "-m", "mpi4py",
            *script]


def thread_env(nprocs: int, env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``cores // nprocs`` threads per rank where the user set none.

    >>> thread_env(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"]
    '3'
    """
    env = dict(env)
    per_rank = str(max(1, (os.cpu_count() or 1) // nprocs))
    for name in _THREAD_VARS:
        env.setdefault(name, per_rank)
    return env


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m minidl.distributed",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--nprocs", type=int, required=True, help="number of ranks")
    p.add_argument("--hostfile", help="MPICH host file, for ranks on several machines")
    p.add_argument("--tcp", action="store_true", help="send all messages over TCP")
    p.add_argument("script", nargs=argparse.REMAINDER, help="the script and its arguments")
    args = p.parse_args(argv)
    if args.nprocs < 1:
        p.error(f"-n must be >= 1, got {args.nprocs}")
    if not args.script:
        p.error("give the script to run, e.g. examples/cifar10.py --distributed")
    mpi_args = ["-f", args.hostfile] if args.hostfile else []
    cmd = command(args.nprocs, args.script, mpi_args)
    env = thread_env(args.nprocs, dict(os.environ))
    if args.tcp:
        env.update(TCP_ENV)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
