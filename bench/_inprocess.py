"""The in-process group: mlpcore, its GEMM floor and the NumPy reference, timed in one worker; the memory probe.

The GEMM floor is what the matrix products of an epoch alone take (see _common.batch_products: those of the
bias-augmented layout, k = n_in + 1; mlpcore's forward uses k = n_in, so it can come in just under), through ``scipy.linalg.blas.?gemm`` - the very library
mlpcore's ``scipy.linalg.cython_blas`` calls reach - on operands allocated once. Row-major arrays are passed
as their Fortran-ordered transposes (C = A.B in row-major is C^T = B^T.A^T in column-major), and every output
is written in place (``c=``, ``overwrite_c``): no copy happens in the timed loop, which `check_floor` verifies.
The floor does pay Python's call overhead per product (`gemm_call_seconds` measures it).
"""
import gc
import resource
import time
import tracemalloc

import numpy as np
import scipy.linalg.blas

import mlpcore
import mlpcore.doctor
from mlpcore import reference

from _common import LAYERS, LR, RECIPE_PARTS, batch_products, batch_rows
from _worker import Worker


def core_worker(data, config):
    """The worker timing mlpcore, the floor and the reference, for each dtype of `data`."""
    check_floor()
    threads, rows = config["threads"], config["rows"]
    trainers, inferers = {}, {}
    for dtype, (X, y) in data["train"].items():
        mlp = MlpcoreTrainer(X, y, threads)
        trainers["mlpcore", dtype] = mlp
        for part in RECIPE_PARTS:
            trainers[f"mlpcore-{part}", dtype] = MlpcoreTrainer(X, y, threads, part)
        trainers["mlpcore-monitor", dtype] = MlpcoreTrainer(X, y, threads, monitor=True)
        trainers["floor", dtype] = FloorTrainer(dtype)
        trainers["reference", dtype] = ReferenceTrainer(X, y, mlp.initial, config["reference_batches"])
        X_infer = data["infer"][dtype]
        inferers["mlpcore", dtype] = _timed(lambda net=mlp.net, X=X_infer: net.predict_proba(X, threads=threads))
        inferers["floor", dtype] = _timed(GemmFloor(dtype, len(X_infer)).forward)
    info = {"versions": {"mlpcore": mlpcore.__version__, "numpy": np.__version__, "scipy": scipy.__version__},
            "gemm_call_us": {dtype: gemm_call_seconds(dtype) * 1e6 for dtype in data["train"]}}
    return Worker(rows, config["warmup_rows"], trainers, inferers), info


def _timed(function):
    """A callable returning the seconds one call of `function` takes."""
    def run():
        started = time.perf_counter()
        function()
        return time.perf_counter() - started
    return run


class MlpcoreTrainer:
    """mlpcore's fit, one epoch per call, always from the same initial weights: plain SGD, or one of the
    recipe's pieces (RECIPE_PARTS: a new optimizer each epoch, its state starting at zero), or plain SGD
    watched by mlpcore.doctor.Monitor (a new one each epoch)."""

    def __init__(self, X, y, threads, part=None, monitor=False):
        self.X, self.y, self.threads = X, y, threads
        self.net = mlpcore.Network(LAYERS, dtype=X.dtype.name, init="he", seed=0)
        self.initial = [W.copy() for W in self.net.weights]
        self.part, self.monitor = part, monitor

    def _fit_arguments(self):
        if self.monitor:
            return {"lr": LR, "on_epoch_end": mlpcore.doctor.Monitor(warn=False)}
        if self.part is None:
            return {"lr": LR}
        name, settings, dropout = RECIPE_PARTS[self.part]
        optimizer = (mlpcore.optimizers.Adam if name == "adam" else mlpcore.optimizers.SGD)(**settings)
        return {"optimizer": optimizer, "dropout": dropout}

    def epoch(self, batch, seed, rows):
        self.net.weights = self.initial
        X, y = self.X[:rows], self.y[:rows]
        arguments = self._fit_arguments()
        started = time.perf_counter()
        history = self.net.fit(X, y, epochs=1, batch_size=batch, seed=seed, threads=self.threads, **arguments)
        seconds = time.perf_counter() - started
        # What a fit costs besides its epoch: the input checks and the set-up before it, what follows it.
        return {"seconds": seconds, "fit_overhead": seconds - history.seconds[0]}


class ReferenceTrainer:
    """A plain loop of ``reference.train_step`` over shuffled batches (fancy-indexed copies of X and y).

    At most `max_batches` batches of the epoch are timed and the time is scaled to all of them; the answer
    says how many were timed.
    """

    def __init__(self, X, y, initial, max_batches):
        self.X, self.y, self.initial, self.max_batches = X, y, initial, max_batches

    def epoch(self, batch, seed, rows):
        weights = [W.copy() for W in self.initial]
        n_batches = len(batch_rows(rows, batch))
        timed = min(n_batches, self.max_batches)
        started = time.perf_counter()
        order = np.random.default_rng(seed).permutation(rows)
        for start in range(0, timed * batch, batch):
            rows_of_batch = order[start:start + batch]
            reference.train_step(weights, self.X[rows_of_batch], self.y[rows_of_batch], LR)
        seconds = time.perf_counter() - started
        return {"seconds": seconds * n_batches / timed, "timed_batches": timed, "batches": n_batches}


class GemmFloor:
    """Preallocated operands for the products of one SGD step on up to `rows` rows (see the module docstring).

    Every operand is C-contiguous, shape as in the row-major maths; ``A[i]`` is layer i's input with its
    ones column, ``W[i]`` its bias-augmented weights, ``Z[i]`` its output, ``dZ[i]`` the error at its output,
    ``G[i]`` its weight gradient and ``dA[i]`` the error passed to its input (i > 0). The contents are random
    values of the magnitude of the real ones (BLAS speed does not depend on them; no denormals).
    """

    def __init__(self, dtype, rows, layers=LAYERS):
        rng = np.random.default_rng(0)
        pairs = list(zip(layers[:-1], layers[1:]))

        def array(*shape):
            return rng.uniform(-0.5, 0.5, size=shape).astype(dtype)

        self.gemm = scipy.linalg.blas.get_blas_funcs("gemm", dtype=np.dtype(dtype))
        self.A = [array(rows, n_in + 1) for n_in, _ in pairs]
        self.W = [array(n_in + 1, n_out) for n_in, n_out in pairs]
        self.Z = [np.empty((rows, n_out), dtype) for _, n_out in pairs]
        self.dZ = [array(rows, n_out) for _, n_out in pairs]
        self.G = [np.empty((n_in + 1, n_out), dtype) for n_in, n_out in pairs]
        self.dA = [None] + [np.empty((rows, n_in), dtype) for n_in, _ in pairs[1:]]

    def forward(self, m=None):
        """Z_i = A_i . W_i for each layer, on the first m rows (all by default)."""
        m = len(self.A[0]) if m is None else m
        return [(("Z", i), self.gemm(1.0, W.T, A[:m].T, c=Z[:m].T, overwrite_c=True).T)
                for i, (A, W, Z) in enumerate(zip(self.A, self.W, self.Z))]

    def backward(self, m):
        """In backprop order, G_i = A_i^T . dZ_i for each layer and dA_i = dZ_i . W_i[:-1]^T for i > 0."""
        gemm, products = self.gemm, []
        for i in reversed(range(len(self.W))):
            products.append((("G", i), gemm(1.0, self.dZ[i][:m].T, self.A[i][:m].T, trans_b=True,
                                             c=self.G[i].T, overwrite_c=True).T))
            if i > 0:
                products.append((("dA", i), gemm(1.0, self.W[i][:-1].T, self.dZ[i][:m].T, trans_a=True,
                                                  c=self.dA[i][:m].T, overwrite_c=True).T))
        return products

    def step(self, m):
        """The products of one SGD step on m rows: a list of ((name, layer), row-major result)."""
        return self.forward(m) + self.backward(m)


class FloorTrainer:
    """The GEMM floor of an epoch: the products of every batch, full ones and the last partial one."""

    def __init__(self, dtype):
        self.dtype, self.floors = dtype, {}

    def epoch(self, batch, seed, rows):
        floor = self.floors.get(batch)
        if floor is None:
            floor = self.floors[batch] = GemmFloor(self.dtype, batch)
        sizes = batch_rows(rows, batch)
        started = time.perf_counter()
        for m in sizes:
            floor.step(m)
        return {"seconds": time.perf_counter() - started}


def check_floor():
    """Check on a small network that the floor computes the right products, in place, without copies.

    Each product must equal NumPy's, be a view of its preallocated output, the shapes must be those of
    _common.batch_products, and a step must allocate nothing (tracemalloc sees NumPy's buffers, so a copy of
    any operand would show).
    """
    # Operands of 8 KiB and more, so that a copy of any stands out over the few objects Python allocates.
    layers, batch, m = (130, 70, 50, 40), 64, 48  # m < batch: views of the first rows, as in a partial batch
    for dtype in (np.float32, np.float64):
        floor = GemmFloor(dtype, batch, layers)
        floor.step(m)  # the first call may fill f2py's caches
        tracemalloc.start()
        products = floor.step(m)
        allocated = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        smallest = min(a.nbytes for a in floor.A + floor.W + floor.Z + floor.dZ + floor.G + floor.dA[1:])
        assert allocated < smallest, f"a step of the floor allocated {allocated} bytes: an operand was copied"
        assert sorted(out.shape for _, out in products) == sorted((mm, n) for mm, n, _ in batch_products(m, layers))
        A, W, dZ = ([x.astype(np.float64) for x in arrays] for arrays in (floor.A, floor.W, floor.dZ))
        expected = {"Z": lambda i: A[i][:m] @ W[i], "G": lambda i: A[i][:m].T @ dZ[i][:m],
                    "dA": lambda i: dZ[i][:m] @ W[i][:-1].T}
        for (name, i), out in products:
            assert np.shares_memory(out, getattr(floor, name)[i]), f"{name}[{i}] was not written in place"
            np.testing.assert_allclose(out, expected[name](i), rtol=1e-4 if dtype == np.float32 else 1e-12,
                                       atol=1e-5, err_msg=f"{name}[{i}]")


def gemm_call_seconds(dtype, calls=2000):
    """Seconds of Python overhead per ?gemm call of the floor, measured on 1x1 products."""
    gemm = scipy.linalg.blas.get_blas_funcs("gemm", dtype=np.dtype(dtype))
    a, c = np.ones((1, 1), dtype, order="F"), np.empty((1, 1), dtype, order="F")
    gemm(1.0, a, a, c=c, overwrite_c=True)
    started = time.perf_counter()
    for _ in range(calls):
        gemm(1.0, a, a, c=c, overwrite_c=True)
    return (time.perf_counter() - started) / calls


def memory_worker(data, config):
    """The memory probe: peak resident memory of a float32 fit of 2 epochs over the data, in a fresh process."""
    X, y = data["train"]["float32"]
    net = mlpcore.Network(LAYERS, dtype="float32", init="he", seed=0)

    def measure():
        gc.collect()
        reset = _reset_peak_rss()
        before = _peak_rss_mib()
        after = []
        net.fit(X, y, epochs=2, batch_size=config["memory_batch"], lr=LR, seed=0, threads=config["threads"],
                on_epoch_end=lambda history: after.append(_peak_rss_mib()))
        return {"before_mib": before, "after_epoch_mib": after, "data_mib": X.nbytes / 2**20,
                "rows": len(X), "batch": config["memory_batch"], "peak_reset": reset}

    return Worker(len(X), 0, extra_ops={"memory": measure})


def _peak_rss_mib():
    """ru_maxrss of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss():
    """Reset the peak RSS to the current RSS (Linux >= 4.0), so that loading the data's peak is forgotten.

    Returns whether it worked; if not, the peak before fit includes the loading of the data and may hide
    part of fit's growth.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
