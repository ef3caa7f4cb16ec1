"""A benchmark worker: a long-lived process that times one group of implementations on command.

run.py starts it as ``python _worker.py KIND CONFIG_JSON`` (KIND: core, torch, sklearn or memory) and talks to
it in JSON lines: the worker loads the data, builds its implementations and answers ``{"ready": true, ...}``;
then each command line gets one answer line:

    {"op": "train", "impl": "mlpcore", "dtype": "float32", "batch": 600, "seed": 3}  ->  {"seconds": 1.23}
    {"op": "infer", "impl": "floor", "dtype": "float64"}                              ->  {"seconds": 0.05}
    {"op": "memory"}                                                                   ->  {"before_mib": ...}
    {"op": "quit"}                                                                     ->  (exits)

An error is answered with ``{"error": TRACEBACK}`` and ends the worker. The protocol uses a private copy of
the original stdout; file descriptor 1 is pointed at stderr so that anything a library prints cannot corrupt
it. The first time an implementation is asked for a batch size it is warmed up, untimed, on part of an epoch
(``warmup_rows`` of the configuration, at least one batch).
"""
import json
import os
import sys
import traceback

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

#: Size of Fashion-MNIST's training and test sets, also used for the random stand-in.
TRAIN_ROWS, TEST_ROWS, FEATURES, CLASSES = 60000, 10000, 784, 10


def load_data(rows, infer_rows, dtypes):
    """The first `rows` training rows and `infer_rows` test rows of Fashion-MNIST, or random data of that shape.

    Returns a dict: ``source``, ``train[dtype] = (X, y)`` and ``infer[dtype] = X`` for each dtype, X being
    C-contiguous in [0, 1] and y int64 labels in 0..9. Nothing is downloaded: a missing data set means random
    data (X uniform in [0, 1), y uniform labels), so that a benchmark never waits on the network.
    """
    from mlpcore.datasets import load_fashion_mnist

    try:
        (X, y), (X_test, _) = load_fashion_mnist(dtype="float32", download=False, verify=False)
        source = "Fashion-MNIST"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        X = rng.random((min(rows, TRAIN_ROWS), FEATURES), dtype=np.float32)
        y = rng.integers(0, CLASSES, size=len(X))
        X_test = rng.random((min(infer_rows, TEST_ROWS), FEATURES), dtype=np.float32)
        source = "random data (Fashion-MNIST not found)"
    # Copies, so that the full arrays are freed when fewer rows are asked for.
    y = y[:rows].copy()
    return {
        "source": source,
        "train": {dtype: (np.array(X[:rows], dtype=dtype), y) for dtype in dtypes},
        "infer": {dtype: np.array(X_test[:infer_rows], dtype=dtype) for dtype in dtypes},
    }


class Worker:
    """Dispatches commands to the implementations of one worker kind.

    `trainers` maps (impl, dtype) to an object whose ``epoch(batch, seed, rows)`` trains one epoch over the
    first `rows` rows and returns the answer (``{"seconds": ...}``, timed around the epoch only);
    `inferers` maps (impl, dtype) to a callable returning the seconds of one inference pass;
    `extra_ops` maps further op names to callables.
    """

    def __init__(self, rows, warmup_rows, trainers=None, inferers=None, extra_ops=None):
        self.rows, self.warmup_rows = rows, warmup_rows
        self.trainers = trainers or {}
        self.inferers = inferers or {}
        self.ops = {"train": self.train, "infer": self.infer, **(extra_ops or {})}
        self.warm = set()

    def train(self, impl, dtype, batch, seed):
        trainer = self.trainers[impl, dtype]
        if (impl, dtype, batch) not in self.warm:
            trainer.epoch(batch, seed, min(self.rows, max(batch, self.warmup_rows)))
            self.warm.add((impl, dtype, batch))
        return trainer.epoch(batch, seed, self.rows)

    def infer(self, impl, dtype):
        infer = self.inferers[impl, dtype]
        if (impl, dtype) not in self.warm:
            infer()
            self.warm.add((impl, dtype))
        return {"seconds": infer()}


def build(kind, config):
    """(Worker, info for the ready message) for a worker kind; each kind imports only what it needs."""
    if kind == "memory":
        import _inprocess
        data = load_data(config["rows"], 0, ["float32"])
        return _inprocess.memory_worker(data, config), {"source": data["source"]}
    data = load_data(config["rows"], config["infer_rows"], config["dtypes"])
    if kind == "core":
        import _inprocess
        worker, info = _inprocess.core_worker(data, config)
    elif kind == "torch":
        import _peers
        worker, info = _peers.torch_worker(data, config)
    elif kind == "sklearn":
        import _peers
        worker, info = _peers.sklearn_worker(data, config)
    else:
        raise ValueError(f"unknown worker kind {kind!r}")
    return worker, {"source": data["source"], **info}


def main(kind, config_json):
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def send(message):
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    try:
        config = json.loads(config_json)
        worker, info = build(kind, config)
        # Every BLAS and OpenMP pool loaded by now (build imported them all), for the worker's whole life.
        threadpool_limits(config["threads"])
        send({"ready": True, "pid": os.getpid(), "threadpools": _pools(), **info})
        for line in sys.stdin:
            command = json.loads(line)
            op = command.pop("op")
            if op == "quit":
                break
            send(worker.ops[op](**command))
    except Exception:
        send({"error": traceback.format_exc()})
        return 1
    return 0


def _pools():
    """The BLAS and OpenMP libraries loaded in this process, with their versions and thread counts."""
    return [f"{p['internal_api']} {p.get('version')} ({os.path.basename(p['filepath'])}): {p['num_threads']} threads"
            for p in threadpool_info()]


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
