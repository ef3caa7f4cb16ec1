"""Data-parallel training on real MPI: `mpiexec -n 2` and `-n 3` (unequal shards) through subprocess, on
loopback, over MPICH's shared-memory path and its TCP path. Every rank ends with the same weights bit for
bit, equal to training on the union of the shards in the same global batches (the reference); a failing
rank ends the job within seconds; `mlpcore train --distributed` trains and rank 0 alone saves and prints.
Skipped where mpiexec or mpi4py is missing (pip install 'mlpcore[mpi]')."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import mlpcore
from conftest import relative_error, write_idx_data_set
from test_distributed import OPTIMIZERS, SIZES, TOLERANCE, reference_on_the_union, shards

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'mlpcore[mpi]')")

TRANSPORTS = {
    "shared memory": {},
    # MPICH's network path, on loopback only.
    "tcp": {"MPIR_CVAR_NOLOCAL": "1", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "lo"},
}
TIMEOUT = 120

TRAIN_SCRIPT = """
import sys
import numpy as np
from mpi4py import MPI
import mlpcore
sys.path.insert(0, {tests!r})
from test_distributed import OPTIMIZERS, SIZES, shards

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
dtype = np.dtype({dtype!r})
parts = shards(dtype, {shard_sizes!r})
for name in {names!r}:
    net = mlpcore.Network(SIZES, dtype=dtype, seed=3 if rank == 0 else 100 + rank)
    history = net.fit(*parts[rank], epochs=3, batch_size=4, optimizer=OPTIMIZERS[name](), seed=7, threads=1,
                      comm=comm, alpha=0.01)
    np.savez({out!r} + f"/{{name}}-{{rank}}.npz", *net.get_weights(), loss=np.array(history.loss))
"""


def mpiexec(n, args, env_extra, cwd):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **env_extra)
    started = time.perf_counter()
    run = subprocess.run([MPIEXEC, "-n", str(n), *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    return run, time.perf_counter() - started


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("shard_sizes", [(30, 30), (37, 21, 29)], ids=["2 ranks", "3 ranks, unequal shards"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ranks_end_equal_to_each_other_and_to_training_on_the_union(shard_sizes, transport, dtype, tmp_path):
    script = tmp_path / "train.py"
    names = list(OPTIMIZERS)
    script.write_text(TRAIN_SCRIPT.format(tests=os.path.dirname(__file__), dtype=dtype,
                                          shard_sizes=shard_sizes, names=names, out=str(tmp_path)))
    run, seconds = mpiexec(len(shard_sizes), [sys.executable, "-m", "mpi4py", str(script)], TRANSPORTS[transport],
                           tmp_path)
    assert run.returncode == 0, run.stderr
    parts = shards(np.dtype(dtype), shard_sizes)
    for name in names:
        ranks = [np.load(tmp_path / f"{name}-{rank}.npz") for rank in range(len(shard_sizes))]
        weights = [[f[f"arr_{i}"] for i in range(len(SIZES) - 1)] for f in ranks]
        for other in weights[1:]:
            for W, W0 in zip(other, weights[0]):
                np.testing.assert_array_equal(W, W0)  # bit for bit on every rank
        ref_weights = mlpcore.Network(SIZES, dtype=dtype, seed=3).get_weights()
        losses = reference_on_the_union(ref_weights, parts, OPTIMIZERS[name](), 3, 4, 7, alpha=0.01)
        errors = [relative_error(W, ref_W) for W, ref_W in zip(weights[0], ref_weights)]
        assert max(errors) <= TOLERANCE[np.dtype(dtype)], (name, errors)
        np.testing.assert_allclose(ranks[0]["loss"], losses, rtol=10 * TOLERANCE[np.dtype(dtype)])


FAILING_SCRIPT = """
import numpy as np
from mpi4py import MPI
import mlpcore

comm = MPI.COMM_WORLD
rng = np.random.default_rng(comm.Get_rank())
X, y = rng.normal(size=(4000, 20)), rng.integers(0, 3, 4000)

def fail(history):
    if comm.Get_rank() == 1 and history.epoch[-1] == 2:
        raise RuntimeError("rank 1 failed on purpose")

mlpcore.Network([20, 64, 3], dtype="float64").fit(X, y, epochs=1000, batch_size=16, seed=0, threads=1,
                                                  comm=comm, on_epoch_end=fail)
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_rank_that_raises_ends_the_job_within_seconds(transport, tmp_path):
    (tmp_path / "fail.py").write_text(FAILING_SCRIPT)
    run, seconds = mpiexec(2, [sys.executable, "-m", "mpi4py", "fail.py"], TRANSPORTS[transport], tmp_path)
    assert run.returncode != 0
    assert "rank 1 failed on purpose" in run.stderr
    assert seconds < 30, seconds  # the other rank does not wait forever (1000 epochs would take minutes)


def test_mlpcore_train_distributed(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_idx_data_set(tmp_path / "data")
    run, _ = mpiexec(2, [sys.executable, "-m", "mlpcore", "train", "--distributed", "--data", str(data),
                         "--epochs", "2", "--batch-size", "50", "--hidden", "32", "--out", str(tmp_path / "run")],
                     {}, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("training 784-32-10") == 1  # rank 0 alone prints
    assert "per rank on 2 ranks" in run.stdout
    assert run.stdout.count("epoch 2/2") == 1
    net = mlpcore.load(tmp_path / "run" / "model.npz")
    assert net.metadata["settings"]["ranks"] == 2 and net.metadata["epochs_trained"] == 2


def test_mlpcore_train_distributed_without_out_saves_one_run_folder(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_idx_data_set(tmp_path / "data")
    run, _ = mpiexec(2, [sys.executable, "-m", "mlpcore", "train", "--distributed", "--data", str(data),
                         "--epochs", "1", "--hidden", "16"], {}, tmp_path)
    assert run.returncode == 0, run.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "model.npz").exists()


def test_mlpcore_train_distributed_error_ends_every_rank(tmp_path):
    run, seconds = mpiexec(2, [sys.executable, "-m", "mlpcore", "train", "--distributed", "--data",
                               str(tmp_path / "missing"), "--out", str(tmp_path / "run")], {}, tmp_path)
    assert run.returncode != 0 and seconds < 30
    assert "mlpcore: error" in run.stderr or "mlpcore train" in run.stderr


def test_an_mpi4py_without_an_mpi_library_is_one_line_saying_what_to_install(tmp_path):
    # mpi4py's wheels raise RuntimeError (not ImportError) from `from mpi4py import MPI` when no MPI
    # library can be loaded: a stand-in package that does the same.
    (tmp_path / "fake" / "mpi4py").mkdir(parents=True)
    (tmp_path / "fake" / "mpi4py" / "__init__.py").write_text("")
    (tmp_path / "fake" / "mpi4py" / "MPI.py").write_text(
        "raise RuntimeError('cannot load MPI library: libmpi.so.12: cannot open shared object file')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"))
    run = subprocess.run([sys.executable, "-m", "mlpcore", "train", "--distributed", "--out", str(tmp_path / "r")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 2
    assert "found no MPI library" in run.stderr and "pip install 'mlpcore[mpi]'" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_each_rank_takes_its_share_of_the_machine_s_cores(tmp_path):
    # mpiexec starts every rank seeing every core: threads=None is their share, not all of them each.
    (tmp_path / "threads.py").write_text(
        "from mpi4py import MPI\nfrom mlpcore import _distributed, _threads\n"
        "seen = MPI.COMM_WORLD.gather((_distributed.threads_per_rank(MPI.COMM_WORLD), _threads.default_threads()))\n"
        "if MPI.COMM_WORLD.Get_rank() == 0:\n"  # one printer: the ranks' lines could interleave
        "    print('\\n'.join(f'{share} {cores}' for share, cores in seen), flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    run = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "threads.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        share, cores = map(int, line.split())
        assert share == max(1, cores // 2)
