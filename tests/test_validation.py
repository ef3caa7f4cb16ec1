"""Bad input gets a clear error naming the problem, raised before any compiled code runs, and the
network's weights are never changed by a call that raised."""
import numpy as np
import pytest

import mlpcore
from mlpcore import TrainingDiverged, _validation

SIZES = [4, 5, 3]


@pytest.fixture
def net(dtype):
    return mlpcore.Network(SIZES, dtype=dtype, seed=0)


def _data(n=6):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, size=n)


X_OK, Y_OK = _data()
X_NAN = X_OK.copy()
X_NAN[2, 1] = np.nan
X_INF = X_OK.copy()
X_INF[0, 0] = np.inf
Y_SOFT_BAD_SUM = np.full((6, 3), 0.5)
Y_NEGATIVE = np.tile([1.5, -0.5, 0.0], (6, 1))

# (description, call on the network, error type, words the message must contain)
BAD_CALLS = [
    ("too few features", lambda n: n.fit(X_OK[:, :3], Y_OK, epochs=1), ValueError,
     "X has 3 features, but the network expects 4"),
    ("too many features", lambda n: n.predict(np.ones((2, 5))), ValueError,
     "X has 5 features, but the network expects 4"),
    ("1-D X", lambda n: n.predict(np.ones(4)), ValueError, "reshape(1, -1)"),
    ("3-D X", lambda n: n.predict(np.ones((2, 2, 4))), ValueError, "2-D array"),
    ("length mismatch", lambda n: n.fit(X_OK, Y_OK[:5], epochs=1), ValueError,
     "X has 6, y has 5"),
    ("label too large", lambda n: n.train_step(X_OK, np.r_[Y_OK[:5], 3], lr=0.1), ValueError,
     "label 3"),
    ("negative label", lambda n: n.loss(X_OK, np.r_[Y_OK[:5], -1]), ValueError, "label -1"),
    ("non-integer label", lambda n: n.fit(X_OK, np.r_[Y_OK[:5], 1.5], epochs=1), ValueError,
     "non-integer value 1.5"),
    ("string labels", lambda n: n.fit(X_OK, np.array(list("abcabc")), epochs=1), TypeError,
     "dtype <U1"),
    ("target width", lambda n: n.fit(X_OK, np.eye(4)[[0, 1, 2, 3, 0, 1]], epochs=1), ValueError,
     "width 4, but the network has 3 outputs"),
    ("target rows not distributions", lambda n: n.train_step(X_OK, Y_SOFT_BAD_SUM, lr=0.1),
     ValueError, "row 0 sums to 1.5"),
    ("negative targets", lambda n: n.loss_and_gradients(X_OK, Y_NEGATIVE), ValueError,
     "negative"),
    ("NaN in X", lambda n: n.fit(X_NAN, Y_OK, epochs=1), ValueError, "X contains NaN"),
    ("inf in X", lambda n: n.train_step(X_INF, Y_OK, lr=0.1), ValueError, "X contains infinity"),
    # Inference finds them in its own pass over the first layer (the ReLU would hide them from the output).
    ("NaN in X, predict_proba", lambda n: n.predict_proba(X_NAN), ValueError, "X contains NaN"),
    ("inf in X, predict", lambda n: n.predict(X_INF), ValueError, "X contains infinity"),
    ("NaN in X, score", lambda n: n.score(X_NAN, Y_OK), ValueError, "X contains NaN"),
    ("inf in X, loss", lambda n: n.loss(X_INF, Y_OK), ValueError, "X contains infinity"),
    ("float64 X too large for float32, predict",
     lambda n: mlpcore.Network([4, 5, 3], dtype="float32").predict(X_OK * 1e300), ValueError,
     "X contains infinity or a value too large for float32"),
    ("empty X", lambda n: n.fit(np.empty((0, 4)), np.empty(0, int), epochs=1), ValueError,
     "0 samples"),
    ("string X", lambda n: n.predict(np.array([["a", "b", "c", "d"]])), TypeError, "X must hold"),
    ("object X", lambda n: n.predict(np.array([[1, 2, None, "x"]], dtype=object)), TypeError,
     "X must hold"),
    ("complex X", lambda n: n.predict(np.ones((1, 4), dtype=complex)), TypeError, "complex"),
    ("lr zero", lambda n: n.fit(X_OK, Y_OK, epochs=1, lr=0), ValueError, "lr must be"),
    ("lr negative", lambda n: n.train_step(X_OK, Y_OK, lr=-0.1), ValueError, "lr must be"),
    ("lr nan", lambda n: n.fit(X_OK, Y_OK, epochs=1, lr=float("nan")), ValueError, "lr must be"),
    ("lr inf", lambda n: n.train_step(X_OK, Y_OK, lr=float("inf")), ValueError, "lr must be"),
    ("lr string", lambda n: n.train_step(X_OK, Y_OK, lr="0.1"), TypeError, "lr must be"),
    ("batch_size zero", lambda n: n.fit(X_OK, Y_OK, epochs=1, batch_size=0), ValueError,
     "batch_size must be >= 1"),
    ("batch_size float", lambda n: n.fit(X_OK, Y_OK, epochs=1, batch_size=2.5), TypeError,
     "batch_size must be an integer"),
    ("epochs zero", lambda n: n.fit(X_OK, Y_OK, epochs=0), ValueError, "epochs must be >= 1"),
    ("threads zero", lambda n: n.fit(X_OK, Y_OK, epochs=1, threads=0), ValueError,
     "threads must be >= 1"),
    ("weights wrong shape", lambda n: setattr(n, "weights", [np.zeros((4, 5)), np.zeros((6, 3))]),
     ValueError, "weights[0] has shape (4, 5), but layer 0 needs (5, 5)"),
    ("weights wrong count", lambda n: setattr(n, "weights", [np.zeros((5, 5))]), ValueError,
     "expected 2 weight arrays"),
    ("weights with NaN", lambda n: setattr(n, "weights", [np.zeros((5, 5)), np.full((6, 3), np.nan)]),
     ValueError, "weights[1] contains NaN"),
    ("weights not a list", lambda n: setattr(n, "weights", np.zeros((5, 5))), TypeError,
     "list of arrays"),
    ("weights of strings", lambda n: setattr(n, "weights", [np.zeros((5, 5)), np.full((6, 3), "a")]),
     TypeError, "weights[1] must hold"),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_rejected_and_weights_unchanged(net, call, error, words):
    before = [W.copy() for W in net.weights]
    with pytest.raises(error) as info:
        call(net)
    assert words in str(info.value)
    for W, W_before in zip(net.weights, before):
        np.testing.assert_array_equal(W, W_before)


@pytest.mark.parametrize("call", [
    pytest.param(lambda net, X, y: net.loss_and_gradients(X, y), id="loss_and_gradients"),
    pytest.param(lambda net, X, y: net.train_step(X, y, lr=0.1), id="train_step"),
])
def test_more_rows_than_one_batch_holds_are_refused(net, call, monkeypatch):
    # BLAS takes 32-bit row counts: at most 2**31 - 1 rows, lowered here to 5.
    assert _validation._MAX_BATCH_ROWS == 2**31 - 1
    monkeypatch.setattr(_validation, "_MAX_BATCH_ROWS", 5)
    before = [W.copy() for W in net.weights]
    with pytest.raises(ValueError, match=r"^X has 6 rows, but one batch holds at most 5 \(BLAS takes "
                                         r"32-bit row counts\): split X into batches of at most 5 rows$"):
        call(net, X_OK, Y_OK)
    for W, W_before in zip(net.weights, before):
        np.testing.assert_array_equal(W, W_before)
    call(net, X_OK[:5], Y_OK[:5])  # as many rows as one batch holds


@pytest.mark.parametrize("sizes,error,words", [
    ([784], ValueError, "at least the input and output"),
    ([784, 0, 10], ValueError, "every layer size must be >= 1"),
    ([784, -3, 10], ValueError, "every layer size must be >= 1"),
    ([784, 300, 1], ValueError, "at least 2 classes"),
    ([784, 30.5, 10], TypeError, "must be integers"),
    ([784, 2**31, 10], ValueError, "must be < 2\\*\\*31"),
    (784, TypeError, "sequence of integers"),
])
def test_bad_layer_sizes(sizes, error, words):
    with pytest.raises(error, match=words):
        mlpcore.Network(sizes)


@pytest.mark.parametrize("kwargs,error,words", [
    ({"dtype": "float16"}, ValueError, "'float32' or 'float64', got 'float16'"),
    ({"dtype": "int64"}, ValueError, "'float32' or 'float64'"),
    ({"dtype": "banana"}, TypeError, "'float32' or 'float64'"),
    ({"init": "zeros"}, ValueError, "init must be one of"),
])
def test_bad_network_options(kwargs, error, words):
    with pytest.raises(error, match=words):
        mlpcore.Network(SIZES, **kwargs)


def test_values_too_large_for_float32_are_rejected():
    net = mlpcore.Network(SIZES, dtype="float32")
    with pytest.raises(ValueError, match="too large for float32"):
        net.predict(np.full((1, 4), 1e300))


@pytest.mark.filterwarnings("ignore:X has values as large")
def test_diverging_fit_restores_the_last_good_epoch(dtype):
    net = mlpcore.Network(SIZES, dtype=dtype, seed=0)
    X, y = _data(60)
    net.fit(X, y, epochs=1, lr=0.1, batch_size=10)
    after_first = [W.copy() for W in net.weights]
    with pytest.raises(TrainingDiverged, match="diverged"):
        net.fit(X * 1e3, y, epochs=5, lr=1e30, batch_size=10)
    for W, good in zip(net.weights, after_first):
        np.testing.assert_array_equal(W, good)
        assert np.isfinite(W).all()


def test_diverging_train_step_leaves_weights(dtype):
    net = mlpcore.Network(SIZES, dtype=dtype, seed=0)
    X, y = _data()
    before = [W.copy() for W in net.weights]
    with pytest.raises(TrainingDiverged):
        for _ in range(10):
            net.train_step(X * 1e3, y, lr=1e35)
            before = [W.copy() for W in net.weights]
    for W, good in zip(net.weights, before):
        np.testing.assert_array_equal(W, good)
        assert np.isfinite(W).all()


def test_unscaled_inputs_get_a_warning():
    net = mlpcore.Network(SIZES, seed=0)
    X, y = _data()
    with pytest.warns(UserWarning, match="X / 255"):
        net.fit(np.abs(X) * 255, y, epochs=1, lr=1e-4)
