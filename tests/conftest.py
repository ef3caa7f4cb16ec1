"""Shared helpers: random problems, and one interface over the reference and the compiled core."""
import struct

import numpy as np
import pytest

import mlpcore
from mlpcore import optimizers, reference

DTYPES = [np.float32, np.float64]
# Relative error bounds, compiled vs reference: max |a - b| / max |b| per array.
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / (scale if scale > 0 else 1.0))


def make_problem(sizes, n, dtype, targets="labels", seed=0):
    """Random X (n, sizes[0]) and targets: integer labels or rows of a distribution (soft, not one-hot)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    K = sizes[-1]
    if targets == "labels":
        y = rng.integers(0, K, size=n)
    elif targets == "onehot":
        y = np.eye(K, dtype=dtype)[rng.integers(0, K, size=n)]
    else:
        logits = rng.normal(size=(n, K))
        y = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(dtype)
    return X, y


class ReferenceModel:
    """The reference functions behind the same few methods as Network, for tests that run on both."""

    def __init__(self, net):
        self.weights = [W.copy() for W in net.weights]

    def loss_and_gradients(self, X, y):
        return reference.loss_and_gradients(self.weights, X, y)

    def train_step(self, X, y, lr):
        return reference.train_step(self.weights, X, y, lr)

    def predict(self, X):
        return reference.forward(self.weights, X).argmax(axis=1)


def reference_step(optimizer, weights, grads, state, step, lr):
    """The reference's step for `optimizer`, with its state in `state` (lists of arrays like weights)."""
    if isinstance(optimizer, optimizers.Adam):
        reference.adam_step(weights, grads, state["m"], state["v"], step, lr, optimizer.betas, optimizer.eps,
                            optimizer.weight_decay, decoupled=isinstance(optimizer, optimizers.AdamW),
                            eps_form=optimizer.eps_form)
    else:
        reference.sgd_step(weights, grads, state["m"], lr, optimizer.momentum, optimizer.nesterov,
                           optimizer.weight_decay)


def reference_fit(weights, X, y, optimizer, factor, *, epochs, batch_size, seed=0, step=0, state=None,
                  activation="relu", loss="cross_entropy", alpha=0.0):
    """Network.fit as documented, in the reference: shuffled batches, `factor(progress)` on the lr per
    batch. Returns (losses, accuracies) per epoch; `state` (moments) is updated in place."""
    rng = np.random.default_rng(seed)
    n_batches = -(-len(X) // batch_size)
    losses, accuracies = [], []
    for epoch in range(epochs):
        order = rng.permutation(len(X))
        total = correct = 0.0
        for b in range(n_batches):
            rows = order[b * batch_size:(b + 1) * batch_size]
            logits = reference.forward_all(weights, X[rows], activation=activation)[1][-1]
            targets = reference.targets_matrix(y[rows], logits.shape[1], logits.dtype)
            correct += (logits.argmax(axis=1) == targets.argmax(axis=1)).sum()
            value, grads = reference.loss_and_gradients(weights, X[rows], y[rows], activation=activation,
                                                        loss=loss, alpha=alpha)
            # History.loss is the data's loss: without alpha's penalty (taken before the step).
            penalty = 0.5 * alpha * sum(float((W[:-1] ** 2).sum()) for W in weights) / len(rows)
            total += (value - penalty) * len(rows)
            step += 1
            progress = (epoch * n_batches + b + 1) / (epochs * n_batches)
            reference_step(optimizer, weights, grads, state, step, optimizer.lr * factor(progress))
        losses.append(total / len(X))
        accuracies.append(correct / len(X))
    return losses, accuracies


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def fake_cores(monkeypatch, count):
    """Make mlpcore see `count` usable cores and an OpenMP limit as large, whatever the machine (more
    threads than cores is slow, never wrong)."""
    from mlpcore import _compiled, _threads
    monkeypatch.setattr(_threads, "usable_cores", lambda: count)
    monkeypatch.setattr(_compiled, "openmp_max_threads", lambda: count)


@pytest.fixture(params=[1, 2, 3], ids=["1 thread", "team of 2", "team of 3"])
def threads(request, monkeypatch):
    """1, 2 or 3 threads, every batch shared out between them whatever the machine's cores (more threads
    than cores is slow, never wrong)."""
    from mlpcore import _threads
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)
    fake_cores(monkeypatch, 64)
    return request.param


@pytest.fixture(params=["reference", "compiled"])
def model_factory(request):
    """Build a model (Network, or the reference over the same initial weights) for every behaviour test."""
    def build(sizes, dtype, **kwargs):
        net = mlpcore.Network(sizes, dtype=dtype, **kwargs)
        return ReferenceModel(net) if request.param == "reference" else net
    return build


IDX_TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
                  np.float64: 0x0E}


def idx_bytes(array):
    """IDX encoding of `array`."""
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, IDX_TYPE_CODES[array.dtype.type], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_data_set(folder, sizes=(("train", 600), ("t10k", 100)), low=0, high=40, marked=True, compress=False):
    """A small data set in Fashion-MNIST's format in `folder`: labels 0..9 in turn, images of random pixels
    in [low, high), with rows 2k..2k+2 brightened by 200 for class k if `marked` (learnable)."""
    import gzip
    rng = np.random.default_rng(0)
    for split, n in sizes:
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(low, high, size=(n, 28, 28)).astype(np.uint8)
        if marked:
            for i, k in enumerate(labels):
                images[i, 2 * k:2 * k + 3] += 200
        data = idx_bytes(images)
        (folder / f"{split}-images-idx3-ubyte{'.gz' if compress else ''}").write_bytes(
            gzip.compress(data) if compress else data)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return folder
