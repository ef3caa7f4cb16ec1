"""Shared helpers: random problems, and one interface over the reference and the compiled core."""
import struct

import numpy as np
import pytest

import mlpcore
from mlpcore import reference

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


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=[1, 2, 3], ids=["1 thread", "team of 2", "team of 3"])
def threads(request, monkeypatch):
    """1, 2 or 3 threads, every batch shared out between them whatever the machine's cores (more threads
    than cores is slow, never wrong)."""
    from mlpcore import _threads
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)
    monkeypatch.setattr(_threads, "usable_cores", lambda: 64)
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
