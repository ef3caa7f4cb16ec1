"""The compiled core computes what mlpcore.reference computes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mlpcore
from mlpcore import reference
from conftest import RTOL, make_problem, relative_error

# (layer sizes, batch rows): 0 to 3 hidden layers, widths 1 to 64, batches of 1, odd sizes, and larger
# than a layer.
ARCHITECTURES = [
    ([5, 3], 1),
    ([5, 3], 17),
    ([7, 1, 2], 9),
    ([1, 64, 4], 33),
    ([12, 8, 5], 1),
    ([20, 16, 9, 3], 40),
    ([3, 64, 1, 7], 5),
    ([9, 11, 13, 17, 6], 101),
    ([64, 2, 64, 3, 10], 8),
]
TARGET_FORMS = ["labels", "onehot", "soft"]


def _network(sizes, dtype, seed=0):
    # Biases too are random (init="normal" draws them; scaled up so that hidden units are a mix of
    # active and inactive), so every gradient entry is exercised.
    net = mlpcore.Network(sizes, dtype=dtype, init="normal", seed=seed)
    net.weights = [W * 50 for W in net.weights]
    return net


@pytest.mark.parametrize("sizes,n", ARCHITECTURES, ids=lambda v: str(v))
@pytest.mark.parametrize("targets", TARGET_FORMS)
def test_loss_and_gradients_match_reference(sizes, n, targets, dtype):
    net = _network(sizes, dtype)
    X, y = make_problem(sizes, n, dtype, targets)
    loss, grads = net.loss_and_gradients(X, y)
    ref_loss, ref_grads = reference.loss_and_gradients(net.weights, X, y)
    assert loss == pytest.approx(ref_loss, rel=RTOL[dtype])
    assert len(grads) == len(ref_grads)
    for g, ref_g, W in zip(grads, ref_grads, net.weights):
        assert g.shape == W.shape and g.dtype == dtype
        assert relative_error(g, ref_g) <= RTOL[dtype]


@pytest.mark.parametrize("sizes,n", ARCHITECTURES, ids=lambda v: str(v))
def test_forward_and_loss_match_reference(sizes, n, dtype):
    net = _network(sizes, dtype)
    X, y = make_problem(sizes, n, dtype)
    P = net.predict_proba(X)
    assert P.shape == (n, sizes[-1]) and P.dtype == dtype
    assert relative_error(P, reference.forward(net.weights, X)) <= RTOL[dtype]
    assert net.loss(X, y) == pytest.approx(reference.loss(net.weights, X, y), rel=RTOL[dtype])
    np.testing.assert_array_equal(net.predict(X), P.argmax(axis=1))


@pytest.mark.parametrize("sizes,n", ARCHITECTURES[::2], ids=lambda v: str(v))
@pytest.mark.parametrize("targets", TARGET_FORMS)
def test_train_step_matches_reference(sizes, n, targets, dtype):
    net = _network(sizes, dtype)
    ref_weights = [W.copy() for W in net.weights]
    X, y = make_problem(sizes, n, dtype, targets)
    for _ in range(3):
        loss = net.train_step(X, y, lr=0.05)
        ref_loss = reference.train_step(ref_weights, X, y, lr=0.05)
        assert loss == pytest.approx(ref_loss, rel=RTOL[dtype])
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= RTOL[dtype]


def _reference_fit(weights, X, y, epochs, batch_size, lr, seed, shuffle=True):
    """What fit documents: epoch e visits default_rng(seed)'s e-th permutation in batches (the rows in
    order without shuffle)."""
    rng = np.random.default_rng(seed)
    epoch_losses = []
    for _ in range(epochs):
        order = rng.permutation(len(X)) if shuffle else np.arange(len(X))
        total = 0.0
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            total += reference.train_step(weights, X[rows], y[rows], lr) * len(rows)
        epoch_losses.append(total / len(X))
    return epoch_losses


@pytest.mark.parametrize("targets", TARGET_FORMS)
@pytest.mark.parametrize("batch_size", [1, 7, 50])
def test_fit_matches_reference_batch_by_batch(targets, batch_size):
    # 50 rows: batches of 7 leave a last partial batch of 1, which must be trained.
    sizes = [6, 10, 8, 4]
    net = _network(sizes, np.float64, seed=3)
    X, y = make_problem(sizes, 50, np.float64, targets, seed=4)
    ref_weights = [W.copy() for W in net.weights]
    history = net.fit(X, y, epochs=4, batch_size=batch_size, lr=0.02, seed=11)
    ref_losses = _reference_fit(ref_weights, X, y, 4, batch_size, 0.02, seed=11)
    np.testing.assert_allclose(history.loss, ref_losses, rtol=1e-10)
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= 1e-10


def test_fit_without_shuffle_visits_rows_in_order():
    sizes = [4, 6, 3]
    net = _network(sizes, np.float64)
    X, y = make_problem(sizes, 23, np.float64)
    ref_weights = [W.copy() for W in net.weights]
    net.fit(X, y, epochs=2, batch_size=5, lr=0.1, shuffle=False)
    for _ in range(2):
        for start in range(0, 23, 5):
            reference.train_step(ref_weights, X[start:start + 5], y[start:start + 5], 0.1)
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= 1e-10


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(1, 24), min_size=2, max_size=5),
    n_classes=st.integers(2, 12),
    n=st.integers(1, 70),
    seed=st.integers(0, 2**16),
    use_float32=st.booleans(),
)
def test_random_architectures_match_reference(widths, n_classes, n, seed, use_float32):
    dtype = np.dtype(np.float32 if use_float32 else np.float64)
    sizes = widths + [n_classes]
    net = _network(sizes, dtype, seed=seed)
    X, y = make_problem(sizes, n, dtype, seed=seed)
    loss, grads = net.loss_and_gradients(X, y)
    ref_loss, ref_grads = reference.loss_and_gradients(net.weights, X, y)
    assert loss == pytest.approx(ref_loss, rel=RTOL[dtype])
    for g, ref_g in zip(grads, ref_grads):
        assert relative_error(g, ref_g) <= RTOL[dtype]


def test_relu_derivative_is_zero_at_zero(dtype):
    # Hidden unit 0 gets exactly z = 0 for every row (zero weights and bias): no gradient flows to it.
    sizes = [3, 2, 2]
    net = mlpcore.Network(sizes, dtype=dtype, seed=0)
    W0, W1 = net.weights
    W0[:, 0] = 0
    net.weights = [W0, W1]
    X, y = make_problem(sizes, 5, dtype)
    _, grads = net.loss_and_gradients(X, y)
    _, ref_grads = reference.loss_and_gradients(net.weights, X, y)
    assert np.all(grads[0][:, 0] == 0)
    assert relative_error(grads[0], ref_grads[0]) <= RTOL[dtype]


def test_large_inputs_are_processed_in_chunks(dtype):
    # More rows than one block of predict_proba / loss: the blocks must join up exactly.
    sizes = [3, 5, 4]
    net = _network(sizes, dtype)
    X, y = make_problem(sizes, 5000, dtype)
    assert relative_error(net.predict_proba(X), reference.forward(net.weights, X)) <= RTOL[dtype]
    assert net.loss(X, y) == pytest.approx(reference.loss(net.weights, X, y), rel=RTOL[dtype])
