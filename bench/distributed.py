"""Data-parallel training on MPI against one process: 2 ranks x 1 thread against 1 process x 2 threads, per
batch size, and the all-reduce's share of each step; then a model of scaling past one machine.

    python bench/distributed.py            # Fashion-MNIST (random data of its shape without it), 3 repeats
    python bench/distributed.py --quick    # 6,000 rows, 1 repeat: CI's smoke test

One epoch of plain SGD of 784-300-300-10, float32, the same global batch B both ways: one process with a
team of 2 on all 60,000 rows in batches of B, or `mpiexec -n 2`, each rank 1 thread on its 30,000 rows in
batches of B / 2 (the global batch is the sum of the local ones). The all-reduce's time is measured inside
the reducer (a timing proxy around the communicator). The model (bench/README.md): a step on p ranks takes
compute(B) / p + a ring all-reduce of the 1.3 MB of gradients, 2 (p - 1) / p x 1.3 MB / bandwidth +
2 (p - 1) x latency, compute(B) being one thread's step measured here.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

SIZES = [784, 300, 300, 10]
N_PARAMS = sum((a + 1) * b for a, b in zip(SIZES[:-1], SIZES[1:]))


def data(quick):
    from mlpcore import datasets
    try:
        (X, y), _ = datasets.load_fashion_mnist(dtype="float32", download=False)
    except (FileNotFoundError, OSError, ValueError):
        rng = np.random.default_rng(0)
        X, y = rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000)
    return (X[:6000], y[:6000]) if quick else (X, y)


class TimedComm:
    """The communicator, with the time spent in Allreduce calls of the gradient buffer counted."""

    def __init__(self, comm):
        self.comm, self.seconds, self.calls = comm, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def Allreduce(self, sendbuf, recvbuf=None, *args, **kwargs):
        buffer = recvbuf if recvbuf is not None else sendbuf
        started = time.perf_counter()
        result = self.comm.Allreduce(sendbuf, recvbuf, *args, **kwargs)
        if getattr(buffer, "size", 0) >= N_PARAMS:
            self.seconds += time.perf_counter() - started
            self.calls += 1
        return result


def epoch_seconds(X, y, batch_size, threads, comm=None):
    import mlpcore
    net = mlpcore.Network(SIZES, dtype="float32", seed=0)
    net.fit(X[:2000], y[:2000], epochs=1, batch_size=batch_size, threads=threads, comm=comm)  # warm-up
    started = time.perf_counter()
    net.fit(X, y, epochs=1, batch_size=batch_size, threads=threads, comm=comm, seed=1)
    return time.perf_counter() - started


def worker(args):
    """Under mpiexec: each rank its half of the rows, local batches of B / 2, one thread."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = data(args.quick)
    n = len(X)
    X, y = X[n * rank // size:n * (rank + 1) // size], y[n * rank // size:n * (rank + 1) // size]
    results = []
    for batch in args.batch_sizes:
        for _ in range(args.repeats):
            timed = TimedComm(comm)
            seconds = epoch_seconds(X, y, batch // size, 1, timed)
            results.append({"batch": batch, "seconds": seconds, "allreduce_seconds": timed.seconds,
                            "steps": timed.calls})
    gathered = comm.gather(results, root=0)
    if rank == 0:
        print(json.dumps(gathered))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[600, 128, 32])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.batch_sizes = 1, [600, 128]
    if args.worker:
        return worker(args)
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        print("no mpiexec: pip install 'mlpcore[mpi]'")
        return 1
    X, y = data(args.quick)
    single = {b: {t: [epoch_seconds(X, y, b, t) for _ in range(args.repeats)] for t in (1, 2)}
              for b in args.batch_sizes}
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    run = subprocess.run([mpiexec, "-n", "2", sys.executable, os.path.abspath(__file__), "--worker",
                          "--repeats", str(args.repeats), "--batch-sizes", *map(str, args.batch_sizes)]
                         + (["--quick"] if args.quick else []), env=env, capture_output=True, text=True,
                         check=True)
    ranks = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"784-300-300-10 float32 plain SGD, {len(X)} rows, one epoch; medians of {args.repeats}")
    print(f"{'batch':>6} {'1 proc x 1 thr s':>17} {'1 proc x 2 thr s':>17} {'2 ranks x 1 thr s':>18} "
          f"{'2x1 / 1x2':>10} {'all-reduce ms':>14} {'its share':>10}")
    measured = []
    for b in args.batch_sizes:
        per_rank = [[r for r in rank_results if r["batch"] == b] for rank_results in ranks]
        epoch = statistics.median(max(r["seconds"] for r in rs) for rs in zip(*per_rank))
        reduce_ms = statistics.median(r["allreduce_seconds"] / r["steps"] for r in per_rank[0]) * 1e3
        steps = per_rank[0][0]["steps"]
        one, two = statistics.median(single[b][1]), statistics.median(single[b][2])
        share = reduce_ms * steps / 1e3 / epoch
        print(f"{b:>6} {one:>17.3f} {two:>17.3f} {epoch:>18.3f} {epoch / two:>9.2f}x {reduce_ms:>14.3f} "
              f"{100 * share:>9.1f}%")
        measured.append({"batch": b, "compute_step_s": one / -(-len(X) // b), "allreduce_ms": reduce_ms})
    print()
    print(scaling_model(measured))
    return 0


# Network models: (name, bandwidth in bytes/s, latency per message in s).
NETWORKS = [("10 Gbit/s, 20 us", 10e9 / 8, 20e-6), ("100 Gbit/s, 5 us", 100e9 / 8, 5e-6)]
RANKS = [2, 4, 8, 16, 32, 64]


def scaling_model(measured):
    """The table of bench/README.md: speed-up over one thread of a step on p ranks."""
    size = N_PARAMS * 4
    lines = [f"model: step(p) = compute(B) / p + 2 (p-1)/p x {size / 1e6:.2f} MB / bandwidth + 2 (p-1) x latency; "
             "speed-up = compute(B) / step(p) (efficiency = speed-up / p)"]
    header = f"{'batch':>6} {'network':<18} " + " ".join(f"{'p=' + str(p):>12}" for p in RANKS)
    lines.append(header)
    for m in measured:
        compute = m["compute_step_s"]
        for name, bandwidth, latency in NETWORKS:
            cells = []
            for p in RANKS:
                step = compute / p + 2 * (p - 1) / p * size / bandwidth + 2 * (p - 1) * latency
                speed_up = compute / step
                cells.append(f"{speed_up:5.1f}x ({100 * speed_up / p:3.0f}%)")
            lines.append(f"{m['batch']:>6} {name:<18} " + " ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
