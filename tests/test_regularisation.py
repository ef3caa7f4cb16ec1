"""Dropout, label smoothing and sample weights in fit compute what the reference computes, batch by batch,
on one thread and on teams sharing batches out by rows and by features."""
import numpy as np
import pytest

import mlpcore
from mlpcore import _compiled, _kernels, _threads, reference
from conftest import fake_cores, make_problem, relative_error

SIZES = [12, 40, 20, 4]
# Batches of 4 (the last of each epoch 2 rows) go by features on a team, 40 wide, in both dtypes.
N_ROWS, BATCH, EPOCHS, LR = 50, 4, 3, 0.1
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def _reference_fit(weights, X, y, *, seed, epochs=EPOCHS, batch_size=BATCH, dropout=0.0, label_smoothing=0.0,
                   sample_weight=None):
    """fit with plain SGD as documented, in the reference: shuffled batches, dropout masks from the
    epoch's key, the loss of an epoch the weighted mean of its rows'."""
    rng = np.random.default_rng(seed)
    keys = reference.dropout_keys(seed, epochs)
    weights_all = np.ones(len(X)) if sample_weight is None else sample_weight
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(X))
        total = 0.0
        for b, start in enumerate(range(0, len(X), batch_size)):
            rows = order[start:start + batch_size]
            masks = None
            if dropout:
                masks = [reference.dropout_mask(keys[epoch], b, layer, len(rows), width, dropout)
                         for layer, width in enumerate(SIZES[1:-1])]
            value, grads = reference.loss_and_gradients(
                weights, X[rows], y[rows], label_smoothing=label_smoothing,
                sample_weight=None if sample_weight is None else sample_weight[rows], keep_masks=masks,
                dropout=dropout)
            total += value * weights_all[rows].sum()
            for W, g in zip(weights, grads):
                W -= LR * g
        losses.append(total / weights_all.sum())
    return losses


def test_the_batches_go_by_features_on_a_team():
    # What the `threads` fixture's teams then exercise: the feature scheme, in both dtypes.
    assert not any(_compiled.split_by_rows(m, 40, size) for m in (BATCH, N_ROWS % BATCH) for size in (4, 8))


def _weights_for(n, seed=7):
    w = np.random.default_rng(seed).uniform(0, 3, size=n)
    w[::7] = 0  # some rows count for nothing
    return w


CASES = {
    "dropout": dict(dropout=0.3),
    "label smoothing": dict(label_smoothing=0.1),
    "sample weights": dict(sample_weight=_weights_for(N_ROWS)),
    "all three": dict(dropout=0.5, label_smoothing=0.2, sample_weight=_weights_for(N_ROWS)),
}


@pytest.mark.parametrize("targets", ["labels", "soft"])
@pytest.mark.parametrize("case", CASES)
def test_fit_matches_the_reference(case, targets, threads, dtype):
    X, y = make_problem(SIZES, N_ROWS, dtype, targets, seed=1)
    net = mlpcore.Network(SIZES, dtype=dtype, init="glorot", seed=2)
    ref_weights = [W.copy() for W in net.weights]
    history = net.fit(X, y, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=4, threads=threads, **CASES[case])
    losses = _reference_fit(ref_weights, X, y, seed=4, **CASES[case])
    np.testing.assert_allclose(history.loss, losses, rtol=TOLERANCE[dtype])
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= TOLERANCE[dtype]


def test_rows_scheme_with_everything_matches_the_reference(monkeypatch):
    # Batches of 25 on a team of 2, 40 wide: shared out by rows; rows gathered (shuffled).
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)
    fake_cores(monkeypatch, 2)
    X, y = make_problem(SIZES, N_ROWS, np.float64, seed=1)
    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    ref_weights = [W.copy() for W in net.weights]
    net.fit(X, y, epochs=EPOCHS, batch_size=25, lr=LR, seed=4, threads=2, **CASES["all three"])
    _reference_fit(ref_weights, X, y, seed=4, batch_size=25, **CASES["all three"])
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= 1e-10


def test_integer_weights_count_rows_that_many_times():
    # One batch of everything, in order: weight 2 is the row twice, weight 0 the row left out.
    X, y = make_problem(SIZES, 12, np.float64, seed=3)
    weights = np.array([2, 1, 0, 1, 3, 1, 1, 0, 2, 1, 1, 1])
    a = mlpcore.Network(SIZES, dtype="float64", seed=2)
    b = mlpcore.Network(SIZES, dtype="float64", seed=2)
    history = a.fit(X, y, epochs=1, batch_size=12, lr=LR, sample_weight=weights, shuffle=False)
    repeated = np.repeat(np.arange(12), weights)
    expected = b.fit(X[repeated], y[repeated], epochs=1, batch_size=len(repeated), lr=LR, shuffle=False)
    assert history.loss[0] == pytest.approx(expected.loss[0], rel=1e-12)
    for Wa, Wb in zip(a.weights, b.weights):
        assert relative_error(Wa, Wb) <= 1e-12


def test_dropout_masks_do_not_depend_on_the_team(monkeypatch):
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)
    fake_cores(monkeypatch, 64)
    X, y = make_problem(SIZES, N_ROWS, np.float64, seed=1)
    results = []
    for threads in (1, 2, 3):
        net = mlpcore.Network(SIZES, dtype="float64", seed=2)
        net.fit(X, y, epochs=2, batch_size=BATCH, lr=LR, seed=9, threads=threads, dropout=0.4)
        results.append(net.weights)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert relative_error(a, b) <= 1e-12
    # Another seed draws other masks.
    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    net.fit(X, y, epochs=2, batch_size=BATCH, lr=LR, seed=10, threads=1, dropout=0.4)
    assert relative_error(net.weights[0], results[0][0]) > 1e-6


def test_dropout_is_off_at_inference():
    X, y = make_problem(SIZES, N_ROWS, np.float64, seed=1)
    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    net.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, seed=0, dropout=0.5)
    np.testing.assert_allclose(net.predict_proba(X), reference.forward(net.weights, X), rtol=1e-12)


@pytest.mark.parametrize("team", [1, 2, 3])
def test_the_dropout_kernel_draws_the_reference_mask_in_any_block(team, dtype):
    rng = np.random.default_rng(0)
    out = np.abs(rng.normal(size=(9, 37))).astype(dtype) + 1
    expected = out * reference.dropout_mask(12345, 6, 1, 9, 37, 0.3) * reference.dropout_scale(0.3)
    result = out.copy()
    key = int(reference.splitmix64(reference.splitmix64(np.uint64(12345) ^ np.uint64(6)) ^ np.uint64(1)))
    for w in range(team):
        first, stop = _kernels.block_start(37, w, team), _kernels.block_start(37, w + 1, team)
        _kernels.dropout(result, 0, 9, first, stop, key, 0.3)
    np.testing.assert_allclose(result, expected.astype(dtype), rtol=1e-6)
    kept = (result != 0).mean()
    assert 0.5 < kept < 0.9  # about 70% of 333 units


def test_splitmix64_is_the_reference_one():
    for z in (0, 1, 2**63, 2**64 - 1, 0x123456789ABCDEF):
        assert _kernels.splitmix64(z) == int(reference.splitmix64(np.uint64(z)))


@pytest.mark.parametrize("kwargs,error,message", [
    ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\)"),
    ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\)"),
    ({"dropout": "half"}, TypeError, "dropout must be a real number"),
    ({"label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0, 1\]"),
    ({"sample_weight": -np.ones(40)}, ValueError, "sample_weight must be >= 0"),
    ({"sample_weight": np.full(40, np.nan)}, ValueError, "sample_weight contains NaN"),
    ({"sample_weight": np.ones(39)}, ValueError, r"sample_weight must have shape \(40,\)"),
    ({"sample_weight": np.zeros(40)}, ValueError, "sample_weight is 0 for every row"),
    ({"sample_weight": ["a"] * 40}, TypeError, "sample_weight must hold real numbers"),
])
def test_bad_arguments_leave_weights_and_optimizer_state_unchanged(kwargs, error, message):
    X, y = make_problem(SIZES, 40, np.float64, seed=1)
    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    optimizer = mlpcore.optimizers.SGD(lr=0.1, momentum=0.9)
    net.fit(X, y, epochs=1, batch_size=10, optimizer=optimizer)
    weights, (step, state) = net._params.copy(), optimizer._snapshot()
    with pytest.raises(error, match=message):
        net.fit(X, y, epochs=1, batch_size=10, optimizer=optimizer, **kwargs)
    np.testing.assert_array_equal(net._params, weights)
    assert optimizer.step == step
    np.testing.assert_array_equal(optimizer.state["momentum_buffer"], state["momentum_buffer"])
