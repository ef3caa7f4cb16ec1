"""Benchmark of mlpcore's training epoch and inference against the GEMM floor, NumPy, PyTorch and scikit-learn.

What is measured
    One epoch of plain SGD (lr 0.1) of the student's network 784-300-300-10 over the 60,000 training rows of
    Fashion-MNIST (random data of the same shape when it is not installed), at batch sizes 600, 128 and 32,
    in float32 and float64, by:

    - mlpcore: ``net.fit(X, y, epochs=1, batch_size=B, lr=0.1, seed=r, threads=T)``, one shuffle included
      (T OpenMP workers sharing out each batch, each calling BLAS on one thread);
    - the GEMM floor: only the matrix products of that epoch (forward, weight gradients, errors passed down),
      through ``scipy.linalg.blas`` - the BLAS mlpcore calls - on preallocated operands, no copies (checked
      on a small case at start-up); what mlpcore would take if everything but the products were free;
    - mlpcore.reference (NumPy): a loop of ``reference.train_step`` over shuffled batches; where an epoch
      has more than 200 batches only the first 200 are timed and the time is scaled (marked in the table);
    - PyTorch (CPU; nn.Linear, nn.ReLU, nn.CrossEntropyLoss, optim.SGD) and scikit-learn's MLPClassifier
      (solver "sgd", no momentum, alpha 0, ``max_iter=1``: exactly one epoch, in the dtype of X), if installed.

    Each training run starts from the same weights. Also: mlpcore's predict_proba over 10,000 test rows
    against its forward GEMM floor (the three forward products over those rows), and, in a fresh process,
    the peak resident memory (ru_maxrss) of a float32 fit of 2 epochs, before it and after each epoch.

How
    Every implementation runs in a long-lived worker process (bench/_worker.py) that loads the data once,
    warms each case up (an untimed part of an epoch) and then times what it is told to, with
    time.perf_counter around exactly one epoch: mlpcore, the floor and the reference share the "core"
    worker, PyTorch and scikit-learn have one each. For each repeat and batch size this parent asks for every
    case in turn, core group then PyTorch then scikit-learn, in reverse order on odd repeats (A B ... B A), so
    that the cases' times of one repeat are measured side by side; ratios are the medians over repeats of
    those paired ratios. Every process uses the same thread count for BLAS, OpenMP and torch.
    Before each timed case the machine is left idle for --settle seconds: a library's idle threads go on
    spinning after its last call (OpenBLAS's pool for about 0.1 s here), and on a 2-core machine the next
    case would pay for them (bench/README.md gives the figures).

Output
    A table on stdout (median seconds, min-max, ratio to the GEMM floor of the same dtype, GFLOP/s counting
    2mnk per product, ratio to mlpcore of the same dtype, and the issue's targets with PASS or MISS), and
    results.txt, results.json and results.png (if matplotlib is installed) in --out (default bench/results/).
    Missing a target never fails the run; a real error does (exit code 1).

    python bench/run.py            # the full run: several minutes on 2 cores
    python bench/run.py --quick    # a tiny run of every code path in seconds (for CI)
"""
import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import _report
from _common import LAYERS, LR, RECIPE_PARTS

BENCH = Path(__file__).resolve().parent
PEERS = ("torch", "sklearn")

#: Sizes of the full run and of --quick.
FULL = {"rows": 60000, "infer_rows": 10000, "repeats": 5, "batch_sizes": [600, 128, 32],
        "reference_batches": 200, "infer_calls": 5, "warmup_rows": 6000, "settle": 0.3}
QUICK = {"rows": 1000, "infer_rows": 500, "repeats": 1, "batch_sizes": [600, 128],
         "reference_batches": 5, "infer_calls": 2, "warmup_rows": 1, "settle": 0.0}
#: Batch size of the memory probe's fit.
MEMORY_BATCH = 600


class WorkerError(RuntimeError):
    """A worker failed: its traceback, or its exit."""


class WorkerProcess:
    """A _worker.py process, spoken to in JSON lines (see _worker's docstring)."""

    def __init__(self, kind, config):
        self.kind = kind
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "_worker.py"), kind, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def receive(self):
        """The worker's next answer; WorkerError if it is an error or the worker died."""
        line = self.process.stdout.readline()
        if not line:
            raise WorkerError(f"the {self.kind} worker exited with code {self.process.wait()} without answering")
        answer = json.loads(line)
        if "error" in answer:
            raise WorkerError(f"the {self.kind} worker failed:\n{answer['error']}")
        return answer

    def call(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.receive()

    def close(self):
        """Ask the worker to quit; kill it if it has not within 30 s (or if it is stuck in a computation)."""
        try:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark mlpcore's training epoch and inference (see the module docstring).")
    parser.add_argument("--quick", action="store_true",
                        help=f"a tiny run of every code path ({QUICK['rows']} rows, batch sizes "
                             f"{QUICK['batch_sizes']}, 1 repeat), for CI; asserts nothing about time")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for every BLAS, OpenMP and torch (default: the usable cores, %(default)s)")
    parser.add_argument("--repeats", type=int, help=f"repeats (default {FULL['repeats']}, {QUICK['repeats']} "
                                                    "with --quick)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="B",
                        help=f"default {FULL['batch_sizes']} ({QUICK['batch_sizes']} with --quick)")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], default=["float32", "float64"])
    parser.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS),
                        help="peers to compare with, when installed (default: all; none: --peers alone)")
    parser.add_argument("--settle", type=float, metavar="SECONDS",
                        help=f"idle time before each timed case, for the previous case's idle threads to stop "
                             f"spinning (default {FULL['settle']}, {QUICK['settle']} with --quick)")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="output folder (default %(default)s)")
    args = parser.parse_args(argv)
    for name in ("threads", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.settle is not None and not 0 <= args.settle <= 60:
        parser.error("--settle must be between 0 and 60 seconds")
    if args.batch_sizes and min(args.batch_sizes) < 1:
        parser.error("batch sizes must be at least 1")
    return args


def settings_of(args):
    """Everything the workers and the report need to know about this run."""
    sizes = dict(QUICK if args.quick else FULL)
    sizes["repeats"] = args.repeats or sizes["repeats"]
    if args.settle is not None:
        sizes["settle"] = args.settle
    sizes["batch_sizes"] = list(dict.fromkeys(args.batch_sizes or sizes["batch_sizes"]))
    return {**sizes, "layers": LAYERS, "lr": LR, "threads": args.threads, "dtypes": list(dict.fromkeys(args.dtypes)),
            "memory_batch": MEMORY_BATCH, "quick": args.quick}


def train_cases(groups, dtypes):
    """(worker, impl, dtype) of every training case of one batch size, in the order of one repeat."""
    cases = [("core", impl, dtype) for dtype in dtypes for impl in ("mlpcore", "floor")]
    cases += [("core", "reference", dtype) for dtype in dtypes]
    cases += [("core", f"mlpcore-{part}", dtype) for part in RECIPE_PARTS for dtype in dtypes]
    cases += [("core", "mlpcore-monitor", dtype) for dtype in dtypes]
    cases += [(peer, peer, dtype) for peer in groups if peer != "core" for dtype in dtypes]
    if "torch" in groups:
        cases += [("torch", f"torch-{part}", dtype) for part in RECIPE_PARTS for dtype in dtypes]
    return cases


def measure(workers, settings):
    """Time every case, interleaved; returns (samples, extras) as _report.summarise takes them."""
    samples, extras = defaultdict(list), {}
    dtypes = settings["dtypes"]
    cases = train_cases(workers, dtypes)
    for r in range(settings["repeats"]):
        ordered = cases if r % 2 == 0 else cases[::-1]
        for batch in settings["batch_sizes"]:
            shown = []
            for worker, impl, dtype in ordered:
                time.sleep(settings["settle"])
                answer = workers[worker].call(op="train", impl=impl, dtype=dtype, batch=batch, seed=r)
                samples["train", impl, dtype, batch].append(answer.pop("seconds"))
                if "fit_overhead" in answer:  # one per repeat, like the times
                    answer["fit_overhead"] = extras.get(("train", impl, dtype, batch), {}).get(
                        "fit_overhead", []) + [answer["fit_overhead"]]
                extras["train", impl, dtype, batch] = answer
                shown.append(f"{impl} {dtype[-2:]} {samples['train', impl, dtype, batch][-1]:.2f}")
            _progress(f"repeat {r + 1}/{settings['repeats']}, batch {batch}: {', '.join(shown)} s")
        time.sleep(settings["settle"])
        for call in range(settings["infer_calls"]):
            for dtype in dtypes:
                for impl in ("mlpcore", "floor") if (r + call) % 2 == 0 else ("floor", "mlpcore"):
                    answer = workers["core"].call(op="infer", impl=impl, dtype=dtype)
                    samples["infer", impl, dtype, None].append(answer["seconds"])
    return samples, extras


def _progress(message):
    print(message, file=sys.stderr, flush=True)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(hellos):
    """Versions, machine and thread pools, from the workers' ready messages."""
    core = hellos["core"]
    return {
        **core["versions"], **{peer: hellos[peer]["version"] for peer in PEERS if peer in hellos},
        "python": platform.python_version(), "cpu": _cpu_model(), "usable_cores": len(os.sched_getaffinity(0)),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "threadpools": {kind: hello["threadpools"] for kind, hello in hellos.items()},
        "torch_blas": hellos.get("torch", {}).get("torch_blas"),
        "floor_gemm_call_overhead_us": core["gemm_call_us"],
    }


def _cpu_seconds():
    """(CPU seconds all processes of the machine have been busy, CPU seconds of this one and its waited
    children), to tell how much of the machine other processes took during the run (Linux only)."""
    ours = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))
    try:
        ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except OSError:
        return None, ours
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"), ours


def contention(before, after, wall_seconds):
    """Share of the usable cores' time that other processes (other users of the machine) took during the run."""
    if before[0] is None:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / (wall_seconds * os.cpu_count()))


def main(argv=None):
    args = parse_args(argv)
    settings = settings_of(args)
    peers = [p for p in dict.fromkeys(args.peers) if importlib.util.find_spec(p) is not None]
    for p in sorted(set(args.peers) - set(peers)):
        _progress(f"{p} is not installed: skipped")
    started, cpu_before, load_before = time.perf_counter(), _cpu_seconds(), os.getloadavg()
    # The memory probe starts first, while this process is at its smallest (a child's ru_maxrss may include
    # its parent's), and runs while the other workers load their data; nothing is timed until it is done.
    processes = {"memory": WorkerProcess("memory", settings)}
    try:
        for kind in ["core"] + peers:
            processes[kind] = WorkerProcess(kind, settings)
        processes["memory"].receive()
        memory = _report.memory_summary(processes["memory"].call(op="memory"))
        processes.pop("memory").close()
        hellos = {kind: process.receive() for kind, process in processes.items()}
        _progress(f"data: {hellos['core']['source']}; workers ready after {time.perf_counter() - started:.1f} s")
        samples, extras = measure(processes, settings)
    except WorkerError as error:
        print(f"bench/run.py: {error}", file=sys.stderr)
        return 1
    finally:
        for process in processes.values():
            process.close()
    wall_seconds = time.perf_counter() - started
    results = _report.summarise(samples, extras, settings["rows"], settings["infer_rows"])
    run = {"settings": settings, "source": hellos["core"]["source"], "environment": environment(hellos),
           "results": results, "memory": memory, "targets": _report.targets(results, memory),
           "wall_seconds": wall_seconds, "load_average_before_after": [load_before[0], os.getloadavg()[0]],
           "other_processes_cpu_share": contention(cpu_before, _cpu_seconds(), wall_seconds)}
    text = _report.table(run)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.txt").write_text(text + "\n")
    _report.write_json(run, args.out / "results.json")
    written = ["results.txt", "results.json"]
    if _report.plot(run, args.out / "results.png"):
        written.append("results.png")
    else:
        _progress("matplotlib is not installed: no chart")
    print(f"\nWritten to {args.out}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
