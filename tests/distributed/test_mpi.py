"""minidl.distributed across real processes: ``mpiexec -n 2`` jobs running
``mpi_worker.py`` scenarios, compared by the tests here.

* equivalence: 2 ranks x B/2 through DistributedDataParallel == 1 process x B (float64 to
  1e-10, float32 to a measured tolerance), also from different per-rank seeds and through
  ``Trainer.fit``;
* SyncBatchNorm: 2 ranks x b == 1 process x 2b with plain batch norm;
* determinism: repeated jobs are bit-identical, resume in a new job equals the
  uninterrupted run, only rank 0 writes and prints;
* uneven shards, a failing rank, mismatched models, an indivisible batch (the job ends,
  it never hangs), MPICH over TCP, and the ``python -m minidl.distributed`` launcher.

Every job gets one thread per rank (OMP/OpenBLAS/numba) and tiny inputs; the module takes
well under a minute on two cores once numba's kernels are cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("mpi_worker.py")


def _find_mpiexec() -> str | None:
    here = Path(sys.executable).with_name("mpiexec")
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None

pytestmark = pytest.mark.skipif(
    not HAVE_MPI4PY or MPIEXEC is None,
    reason=("needs mpi4py and mpiexec (pip install 'minidl[mpi]'): "
            + ("mpi4py is not installed" if not HAVE_MPI4PY else "no mpiexec beside "
               f"{sys.executable} or on PATH")))

MARKER = "rank-one-failure-marker-6c1f"  # mpi_worker.MARKER
TCP_ENV = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "MPIR_CVAR_NOLOCAL": "1"}


class Job:
    def __init__(self, rc: int, out: str, err: str, seconds: float) -> None:
        self.rc, self.out, self.err, self.seconds = rc, out, err, seconds

    @property
    def output(self) -> str:
        return self.out + self.err

    def tail(self, n: int = 3000) -> str:
        return f"exit status {self.rc}\n--- stdout ---\n{self.out[-n:]}\n--- stderr ---\n" \
               f"{self.err[-n:]}"


def run(cmd: list[str], env_extra: dict | None = None, timeout: float = 120) -> Job:
    """Run a job in its own process group (so that a hang is killed whole); fail the test
    with the job's output if it runs past ``timeout``."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    for k, v in (env_extra or {}).items():  # None: leave the variable unset
        env.pop(k, None) if v is None else env.__setitem__(k, v)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung (> {timeout} s):\n"
                    + Job(-9, out, err, timeout).tail())
    return Job(proc.returncode, out, err, time.perf_counter() - start)


def mpirun(scenario: str, outdir: Path, *args: str, module: bool = True,
           env_extra: dict | None = None, timeout: float = 120) -> Job:
    python = [sys.executable, "-m", "mpi4py"] if module else [sys.executable]
    return run([MPIEXEC, "-n", "2", *python, str(WORKER), scenario, str(outdir), *args],
               env_extra, timeout)


def ok(job: Job, what: str) -> Job:
    assert job.rc == 0, f"{what} failed:\n{job.tail()}"
    return job


def load(path: Path) -> dict[str, np.ndarray]:
    assert path.exists(), f"the job did not write {path.name}"
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def max_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys(), f"different entries: {sorted(a)} vs {sorted(b)}"
    worst = max(a, key=lambda k: float(np.abs(a[k].astype(np.float64) - b[k]).max()))
    return float(np.abs(a[worst].astype(np.float64) - b[worst]).max()), worst


def assert_close(a: dict, b: dict, atol: float, what: str) -> None:
    d, k = max_diff(a, b)
    assert d <= atol, f"{what}: max |diff| {d:.3g} (in {k!r}) > {atol:g}"


def assert_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: different entries"
    bad = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not bad, f"{what}: not bit-identical in {bad} (max |diff| {max_diff(a, b)[0]:.3g})"


# -- a. equivalence -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("equivalence")
    ok(mpirun("equivalence", out), "the equivalence job")
    return out


def _ranks_agree(out: Path, name: str) -> dict:
    r0, r1 = load(out / f"{name}_rank0.npz"), load(out / f"{name}_rank1.npz")
    assert_identical(r0, r1, f"{name}: the two ranks' weights")
    return r0


def test_float64_two_ranks_equal_one_process(equivalence) -> None:
    got = _ranks_agree(equivalence, "f64")
    ref = load(equivalence / "f64_ref.npz")
    assert_close(got, ref, 1e-10, "float64, 2 ranks x 4 vs 1 process x 8, 3 Adam steps")
    # and the run did move the weights (a test of nothing would pass too)
    init = load(equivalence / "f64_bcast_rank0.npz")
    assert max_diff(got, init)[0] > 1e-4, "3 Adam steps did not change the weights"


def test_float32_two_ranks_close_to_one_process(equivalence) -> None:
    """Tolerance, measured: the averaged gradient sums two half-batch GEMMs instead of one,
    so float32 gradients differ by rounding (~1e-7 relative). Adam divides each gradient
    by its own running RMS, so where a gradient element is itself at rounding level
    (|g| ~ 1e-8, from cancellation) its update (up to lr = 1e-3 per step) is decided by the
    rounding: the same happens between a float32 and a float64 one-process run. Measured on
    28,228 weights: 99.7% bit-identical or within 1e-8, 0.07% beyond 1e-6, max 1.3e-4
    (float32 vs float64 one-process: 0.08% beyond 1e-6, max 7.7e-5). So: 99% within 1e-6,
    and nothing beyond Adam's largest possible disagreement, 2 * lr per step."""
    got = _ranks_agree(equivalence, "f32")
    ref = load(equivalence / "f32_ref.npz")
    diffs = np.concatenate([np.abs(got[k].astype(np.float64) - ref[k]).ravel() for k in ref])
    far = float((diffs > 1e-6).mean())
    assert far <= 0.01, f"float32: {far:.2%} of the weights differ by more than 1e-6"
    assert diffs.max() <= 2 * 1e-3 * 3, f"float32: max |diff| {diffs.max():.3g}"
    assert float(np.quantile(diffs, 0.99)) <= 1e-7, np.quantile(diffs, 0.99)


def test_different_initial_seeds_are_made_equal(equivalence) -> None:
    init0 = load(equivalence / "seeds_init_rank0.npz")
    init1 = load(equivalence / "seeds_init_rank1.npz")
    assert max_diff(init0, init1)[0] > 1e-3, "the ranks were meant to start differently"
    for r in range(2):
        assert_identical(load(equivalence / f"seeds_bcast_rank{r}.npz"), init0,
                         f"rank {r} after DistributedDataParallel (must be rank 0's weights)")
    got = _ranks_agree(equivalence, "seeds")
    assert_close(got, load(equivalence / "seeds_ref.npz"), 1e-10,
                 "different per-rank seeds, after 3 steps, vs 1 process from rank 0's seed")


def test_trainer_fit_loader_two_ranks_equal_one_process(equivalence) -> None:
    got = _ranks_agree(equivalence, "fit_loader")
    assert_close(got, load(equivalence / "fit_loader_ref.npz"), 1e-10,
                 "Trainer.fit, DataLoader + DistributedSampler (seed 11, shuffle, batch 4 "
                 "per rank) vs 1 process with batch 8, 2 epochs")


def test_trainer_fit_arrays_two_ranks_equal_one_process(equivalence) -> None:
    """fit((x, y), batch_size=8, shuffle=True) after manual_seed(7): the trainer shards
    the arrays; rank 0 draws the shuffle seed from the same global generator state as a
    one-process run, so the two must train on the same batches."""
    got = _ranks_agree(equivalence, "fit_arrays")
    assert_close(got, load(equivalence / "fit_arrays_ref.npz"), 1e-10,
                 "Trainer.fit((x, y), batch_size=8, shuffle=True) on 2 ranks vs 1 process, "
                 "same manual_seed (a large difference means a different shuffle order)")


# -- b. SyncBatchNorm ---------------------------------------------------------------------


def test_sync_batchnorm_two_ranks_equal_one_process(tmp_path) -> None:
    ok(mpirun("syncbn", tmp_path), "the SyncBatchNorm job")
    kinds = json.loads((tmp_path / "syncbn_kinds_rank0.json").read_text())
    assert "SyncBatchNorm" in kinds and not any(k.startswith("BatchNorm") for k in kinds), kinds
    ref = load(tmp_path / "syncbn_ref.npz")
    for r in range(2):
        got = load(tmp_path / f"syncbn_rank{r}.npz")
        assert got.keys() == ref.keys(), f"entries {sorted(got)} vs {sorted(ref)}"
        for group in ("loss", "grad0.", "state."):
            sub = [k for k in ref if k.startswith(group)]
            assert sub, group
            assert_close({k: got[k] for k in sub}, {k: ref[k] for k in sub}, 1e-10,
                         f"rank {r}, {group.rstrip('.')} (2 ranks x 2 with SyncBatchNorm vs "
                         "1 process x 4 with BatchNorm)")
        assert any("running_var" in k for k in got) and any("running_mean" in k for k in got)


# -- c. determinism, resume, rank-0 writes ------------------------------------------------


@pytest.fixture(scope="module")
def determinism(tmp_path_factory) -> tuple[Path, dict[str, Job]]:
    out = tmp_path_factory.mktemp("determinism")
    jobs = {mode: ok(mpirun("determinism", out, mode), f"the {mode} determinism job")
            for mode in ("plain", "ckpt", "resume")}
    return out, jobs


def test_repeated_jobs_are_bit_identical(determinism) -> None:
    out, _ = determinism
    plain = _ranks_agree(out, "plain")
    assert_identical(_ranks_agree(out, "ckpt"), plain,
                     "two separate 2-rank jobs, same seeds (the second also checkpointing)")


def test_resume_in_a_new_job_equals_the_uninterrupted_run(determinism) -> None:
    out, _ = determinism
    assert_identical(_ranks_agree(out, "resume"), _ranks_agree(out, "plain"),
                     "resumed from the epoch-1 checkpoint in a new job vs uninterrupted")


def test_only_rank_0_writes_and_prints(determinism) -> None:
    out, jobs = determinism
    files = sorted(p.name for p in (out / "ckpt").iterdir())
    assert files == ["last.npz"], f"checkpoint folder holds {files}"
    for mode, epochs in (("plain", (1, 2)), ("ckpt", (1, 2)), ("resume", (2,))):
        lines = [ln for ln in jobs[mode].out.splitlines() if ln.startswith("epoch ")]
        assert [ln.split()[1] for ln in lines] == [str(e) for e in epochs], (
            f"{mode}: PrintEpoch lines {lines}, expected one per epoch {epochs} (rank 0 only)")


# -- d. uneven shards ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uneven")
    ok(mpirun("uneven", out, timeout=60), "the uneven-shards job")
    return out


def test_uneven_shards(uneven) -> None:
    r = [json.loads((uneven / f"uneven_rank{k}.json").read_text()) for k in range(2)]
    # 22 images, global batch 8: 2 full global batches, then 6 shared 3 + 3.
    assert r[0]["steps"] == r[1]["steps"] == [3, 3, 3], [x["steps"] for x in r]
    assert_identical(load(uneven / "uneven_rank0.npz"), load(uneven / "uneven_rank1.npz"),
                     "weights of the two ranks")
    # 17 evaluation images without padding: rank 0 evaluates 8 (2 batches), rank 1 9 (3).
    assert (r[0]["eval_images"], r[1]["eval_images"]) == (8, 9), r
    assert (r[0]["eval_batches"], r[1]["eval_batches"]) == (2, 3), r
    ref = r[0]["ref_accuracy"]
    assert 0 < ref < 1, f"the reference accuracy {ref} would not catch a miscount"
    for k in range(2):
        assert r[k]["accuracy"] == ref, (
            f"rank {k}: distributed evaluate accuracy {r[k]['accuracy']} vs one process {ref}")
        assert r[k]["array_accuracy"] == ref, f"rank {k}: evaluate((x, y)) {r[k]}"
        assert abs(r[k]["loss"] - r[0]["ref_loss"]) <= 1e-6 * abs(r[0]["ref_loss"]), r[k]


def test_predict_returns_every_row(uneven) -> None:
    """Trainer.predict(x) of a DistributedDataParallel model, on every rank: the logits of
    all the images asked for, as in one process (not this rank's shard of them)."""
    out = uneven
    ref = load(out / "uneven_predict_ref.npz")["predict"]
    assert ref.shape == (17, 3)
    for r in range(2):
        got = load(out / f"uneven_predict_rank{r}.npz")["predict"]
        assert got.shape == ref.shape, (
            f"rank {r}: Trainer.predict returned {got.shape[0]} rows of logits for 17 images")
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6, err_msg=f"rank {r}")


# -- e-g. failures end the job ------------------------------------------------------------


@pytest.mark.parametrize("module", [True, False], ids=["python-m-mpi4py", "plain-python"])
def test_a_failing_rank_ends_the_job(tmp_path, module) -> None:
    job = mpirun("fail", tmp_path, module=module, timeout=60)
    assert job.rc != 0, f"a job whose rank 1 raised exited 0:\n{job.tail()}"
    assert MARKER in job.output, f"the failing rank's error is not in the output:\n{job.tail()}"
    assert job.seconds < 20, f"the job took {job.seconds:.1f} s to end after rank 1 failed"
    assert not (tmp_path / "rank0_passed_the_barrier").exists()


def test_model_mismatch_ends_the_job(tmp_path) -> None:
    job = mpirun("mismatch", tmp_path, timeout=60)
    assert job.rc != 0, f"a job with different models exited 0:\n{job.tail()}"
    assert "differs from rank 0's" in job.output, job.tail()
    assert "'0.weight'" in job.output, f"the first difference is not named:\n{job.tail()}"
    assert not list(tmp_path.glob("rank*_wrapped"))


@pytest.mark.parametrize("scenario, words", [
    ("indivisible", ["global batch size 7 is not divisible by the 2 ranks"]),
    ("unsharded", ["needs", "sampler=minidl.distributed.DistributedSampler()"]),
])
def test_bad_training_data_ends_the_job(tmp_path, scenario, words) -> None:
    """fit((x, y), batch_size=7) on 2 ranks, or a DataLoader without a sampler: every rank
    raises the same clear error before the first step (instead of a hang or a silently
    wrong run)."""
    job = mpirun(scenario, tmp_path, timeout=60)
    assert job.rc != 0, f"{scenario} on 2 ranks exited 0:\n{job.tail()}"
    for w in words:
        assert w in job.output, f"{w!r} not in the output:\n{job.tail()}"
    assert not (tmp_path / "trained").exists()


# -- h. TCP -------------------------------------------------------------------------------


def test_equivalence_over_tcp(tmp_path) -> None:
    job = ok(mpirun("equivalence", tmp_path, "2", "f64",
                    env_extra={**TCP_ENV, "MPIR_CVAR_DEBUG_SUMMARY": "1"}),
             "the equivalence job over TCP")
    assert "provider: tcp" in job.output, (
        "MPICH's debug summary does not show libfabric's TCP provider, so the TCP path may "
        f"not have run:\n{job.tail()}")
    got = _ranks_agree(tmp_path, "f64")
    assert_close(got, load(tmp_path / "f64_ref.npz"), 1e-10, "float64 over TCP, 2 steps")


def test_plain_python_is_a_world_of_one_mpi_rank(tmp_path) -> None:
    """``python script.py`` without mpiexec: init_process_group gives one MPI rank."""
    ok(run([sys.executable, str(WORKER), "hello", str(tmp_path)], timeout=60),
       "python mpi_worker.py hello (no mpiexec)")
    res = json.loads((tmp_path / "hello_rank0.json").read_text())
    assert (res["rank"], res["size"], res["sum"], res["backend"], res["main"],
            res["initialized"]) == (0, 1, 1.0, "mpi", True, True), res


# -- i. the launcher ----------------------------------------------------------------------


def test_launcher_end_to_end(tmp_path) -> None:
    job = run([sys.executable, "-m", "minidl.distributed", "-n", "2", str(WORKER), "hello",
               str(tmp_path)], env_extra={"NUMBA_NUM_THREADS": None}, timeout=60)
    ok(job, "python -m minidl.distributed -n 2 mpi_worker.py hello")
    results = [json.loads((tmp_path / f"hello_rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert (res["rank"], res["size"], res["sum"], res["backend"]) == (r, 2, 3.0, "mpi"), res
        assert res["local_rank"] == r and res["main"] == (r == 0), res
        assert res["env"]["OMP_NUM_THREADS"] == "1", "the launcher overrode a user setting"
        per_rank = str(max(1, (os.cpu_count() or 1) // 2))
        assert res["env"]["NUMBA_NUM_THREADS"] == per_rank, (
            f"the launcher should give each of 2 ranks {per_rank} numba threads: {res['env']}")
