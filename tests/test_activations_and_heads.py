"""Every hidden activation (ReLU, tanh, logistic, identity) and every head (softmax + cross-entropy,
sigmoid + binary cross-entropy, identity + squared error, exp + Poisson) computes what the reference
computes: kernels, one batch's loss and gradients (with sample weights and scikit-learn's alpha), the
output, and whole fits with SGD, momentum and Adam (PyTorch's eps and scikit-learn's), on one thread and
on teams; model files keep the kind; bad combinations are refused with the weights untouched."""
import numpy as np
import pytest

import mlpcore
from mlpcore import _compiled, _kernels, optimizers, reference
from conftest import RTOL, reference_fit, relative_error

SIZES = [9, 24, 16, 3]
ACTIVATIONS = ["relu", "tanh", "logistic", "identity"]
LOSSES = ["cross_entropy", "binary_cross_entropy", "squared_error", "poisson"]


def make_targets(loss, n, K, dtype, rng):
    """Targets each head takes: integer labels, 0/1 rows (multi-label), real values, counts."""
    if loss == "cross_entropy":
        return rng.integers(0, K, size=n)
    if loss == "binary_cross_entropy":
        return (rng.random((n, K)) < 0.4).astype(dtype)
    if loss == "squared_error":
        return rng.normal(size=(n, K)).astype(dtype)
    return rng.poisson(2.0, size=(n, K)).astype(dtype)


def make_net(dtype, activation, loss, seed=3):
    # Small weights: exp outputs (Poisson) stay moderate, logistic units away from saturation.
    net = mlpcore.Network(SIZES, dtype=dtype, init="glorot", seed=seed, activation=activation, loss=loss)
    net.weights = [0.5 * W for W in net.weights]
    return net


def problem(dtype, loss, n=40, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0])).astype(dtype)
    return X, make_targets(loss, n, SIZES[-1], dtype, rng)


# --- kernels -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_forward_kernel_applies_each_activation(activation, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype(dtype)
    W = rng.normal(size=(6, 4)).astype(dtype)
    z = np.zeros((7, 4), dtype=dtype)
    _kernels.dense_forward(x, W, z, _compiled.ACTIVATIONS[activation], 0, 4)
    expected = reference.dense_forward(x, W, activation=activation)
    assert relative_error(z, expected) <= RTOL[dtype]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_pass_error_down_kernel_uses_each_derivative(activation, dtype):
    rng = np.random.default_rng(0)
    dz = rng.normal(size=(6, 4)).astype(dtype)
    W = rng.normal(size=(6, 4)).astype(dtype)  # a layer of 5 inputs
    z_below = rng.normal(size=(6, 5)).astype(dtype)
    z_below[0, :2] = 0  # ReLU's derivative at exactly 0 is 0
    x = reference.ACTIVATIONS[activation][0](z_below).astype(dtype)
    dx, sums = np.zeros((6, 5), dtype=dtype), np.zeros(5, dtype=dtype)
    _kernels.pass_error_down(dz, W, x, dx, sums, 0, 5, 1.0, _compiled.ACTIVATIONS[activation])
    expected = reference.error_passed_down(dz, W, z_below, activation)
    assert relative_error(dx, expected) <= RTOL[dtype]
    assert relative_error(sums, expected.sum(axis=0)) <= RTOL[dtype]


@pytest.mark.parametrize("loss", LOSSES[1:])
def test_elementwise_heads_kernel(loss, dtype):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 3)).astype(dtype) * 3
    T = make_targets(loss, 8, 3, dtype, rng)
    w = rng.random(8).astype(dtype)
    grad, sums = z.copy(), np.zeros(3, dtype=dtype)
    total = _kernels.head_loss_and_gradient(_compiled.HEADS[loss], grad, T, 0.25, sums, w)
    expected_grad = 0.25 * w[:, None] * (reference.output(z, loss) - T)
    assert abs(total - (w * reference.row_losses(z, T, loss)).sum()) <= RTOL[dtype] * abs(total)
    assert relative_error(grad, expected_grad) <= RTOL[dtype]
    assert relative_error(sums, expected_grad.sum(axis=0)) <= RTOL[dtype]
    out = z.copy()
    _kernels.head_output(_compiled.HEADS[loss], out)
    assert relative_error(out, reference.output(z, loss)) <= RTOL[dtype]


def test_sigmoid_head_is_finite_far_out():
    z = np.array([[-800.0, 800.0, 0.0]])
    T = np.array([[0.0, 1.0, 1.0]])
    grad = z.copy()
    total = _kernels.head_loss_and_gradient(_compiled.HEADS["binary_cross_entropy"], grad, T, 1.0,
                                            np.zeros(0))
    assert total == pytest.approx(np.log(2))  # the two far-out outputs are right: no loss, no NaN
    np.testing.assert_allclose(grad, [[0.0, 0.0, -0.5]])


# --- one batch -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_loss_and_gradients_match_the_reference(activation, loss, alpha, weighted, dtype):
    X, y = problem(dtype, loss)
    w = np.random.default_rng(5).random(len(X)).astype(dtype) if weighted else None
    net = make_net(dtype, activation, loss)
    value, grads = net.loss_and_gradients(X, y, sample_weight=w, alpha=alpha)
    ref_value, ref_grads = reference.loss_and_gradients(net.get_weights(), X, y, sample_weight=w,
                                                        activation=activation, loss=loss, alpha=alpha)
    assert abs(value - ref_value) <= RTOL[dtype] * abs(ref_value)
    for g, ref_g in zip(grads, ref_grads):
        assert relative_error(g, ref_g) <= RTOL[dtype]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_output_and_loss_match_the_reference(activation, loss, dtype):
    X, y = problem(dtype, loss, n=3000)  # more than one inference chunk
    net = make_net(dtype, activation, loss)
    expected = reference.forward(net.get_weights(), X, activation, loss)
    assert relative_error(net.output(X, threads=2), expected) <= RTOL[dtype]
    assert net.loss(X, y) == pytest.approx(reference.loss(net.get_weights(), X, y, activation, loss),
                                           rel=RTOL[dtype])


def test_gradients_agree_with_finite_differences_for_every_head():
    # Not only with the reference: the reference's formulas are the derivative of its loss.
    for loss in LOSSES:
        X, y = problem(np.float64, loss, n=10)
        net = make_net(np.float64, "tanh", loss)
        report = mlpcore.gradcheck(lambda W, X, Y: net_loss_and_gradients(net, W, X, Y), net.get_weights(), X, y)
        assert report.ok, (loss, str(report))


def net_loss_and_gradients(net, weights, X, Y):
    net.weights = weights
    return net.loss_and_gradients(X, Y)


# --- fits ------------------------------------------------------------------------------------------------

def _sklearn_adam():
    opt = optimizers.Adam(lr=0.01, betas=(0.9, 0.99), eps=1e-4)
    opt.eps_form = "sklearn"
    return opt


FIT_OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(lr=0.05),
    "nesterov": lambda: optimizers.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.Adam(lr=0.01),
    "adam-sklearn-eps": _sklearn_adam,
}


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("name", FIT_OPTIMIZERS)
@pytest.mark.parametrize("loss,activation", [("cross_entropy", "tanh"), ("binary_cross_entropy", "logistic"),
                                             ("squared_error", "relu"), ("poisson", "identity"),
                                             ("squared_error", "tanh")])
def test_fit_matches_the_reference(loss, activation, name, alpha, threads, dtype):
    X, y = problem(dtype, loss, n=30)
    net = make_net(dtype, activation, loss)
    ref_weights = net.get_weights()
    history = net.fit(X, y, epochs=3, batch_size=4, optimizer=FIT_OPTIMIZERS[name](), alpha=alpha, seed=0,
                      threads=threads)
    state = {"m": [np.zeros_like(W) for W in ref_weights], "v": [np.zeros_like(W) for W in ref_weights]}
    losses, _ = reference_fit(ref_weights, X, y, FIT_OPTIMIZERS[name](), lambda p: 1.0, epochs=3,
                              batch_size=4, state=state, activation=activation, loss=loss, alpha=alpha)
    np.testing.assert_allclose(history.loss, losses, rtol=RTOL[dtype])
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= RTOL[dtype]


def test_sklearn_eps_form_differs_from_pytorch_s():
    # The two placements of eps are different updates (else the test above could not tell them apart).
    X, y = problem(np.float64, "squared_error", n=30)
    fits = []
    for form in ("pytorch", "sklearn"):
        net = make_net(np.float64, "relu", "squared_error")
        opt = optimizers.Adam(lr=0.01, eps=1e-2)
        opt.eps_form = form
        net.fit(X, y, epochs=1, batch_size=4, optimizer=opt, seed=0, threads=1)
        fits.append(net.get_weights()[0])
    assert relative_error(fits[0], fits[1]) > 1e-3


def test_regression_learns_and_scores_r2():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = np.sin(X[:, :1]) + 0.5 * X[:, 1:2] ** 2
    net = mlpcore.Network([4, 32, 1], dtype="float64", seed=0, activation="tanh", loss="squared_error")
    net.fit(X, y, epochs=200, batch_size=32, optimizer="adam", lr=0.01, seed=0)
    assert net.score(X, y) > 0.9
    assert net.predict(X).shape == (400, 1)
    history = net.fit(X, y[:, 0], epochs=1, batch_size=32)  # one output: 1-D targets too
    assert np.isnan(history.accuracy[0])  # no accuracy for a regression


def test_multilabel_predicts_each_label():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0], axis=1).astype(float)
    net = mlpcore.Network([5, 16, 2], dtype="float64", seed=0, loss="binary_cross_entropy")
    history = net.fit(X, Y, epochs=60, batch_size=16, optimizer="adam", lr=0.01, seed=0)
    assert history.accuracy[-1] > 0.9
    assert set(np.unique(net.predict(X))) <= {0, 1} and net.predict(X).shape == (300, 2)
    assert net.score(X, Y) == pytest.approx(float((net.predict(X) == Y).all(axis=1).mean()))


# --- files ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss,activation", [("poisson", "tanh"), ("cross_entropy", "relu")])
def test_model_files_keep_the_activation_and_loss(loss, activation, tmp_path):
    net = make_net(np.float32, activation, loss)
    net.save(tmp_path / "m.npz")
    back = mlpcore.load(tmp_path / "m.npz")
    assert (back.activation, back.loss_function) == (activation, loss)
    X, _ = problem(np.float32, loss)
    np.testing.assert_array_equal(back.output(X), net.output(X))
    with np.load(tmp_path / "m.npz") as f:  # the defaults write the version-1 file they always did
        assert int(f["format_version"]) == (1 if loss == "cross_entropy" else 2)


def test_a_version_1_file_with_an_activation_is_refused(tmp_path):
    net = make_net(np.float32, "tanh", "cross_entropy")
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        entries = dict(f)
    entries["format_version"] = np.array(1)
    np.savez(tmp_path / "bad.npz", **entries)
    with pytest.raises(ValueError, match="version-1 file with an entry 'activation'"):
        mlpcore.load(tmp_path / "bad.npz")
    entries["format_version"], entries["activation"] = np.array(2), np.array("swish")
    np.savez(tmp_path / "bad.npz", **entries)
    with pytest.raises(ValueError, match="activation must be one of"):
        mlpcore.load(tmp_path / "bad.npz")


# --- refused -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"activation": "swish"}, "activation must be one of"),
    ({"activation": None}, "activation must be one of"),
    ({"loss": "hinge"}, "loss must be one of"),
])
def test_unknown_kinds_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mlpcore.Network(SIZES, **kwargs)


@pytest.mark.parametrize("activation,loss,y_kind,kwargs,match", [
    ("tanh", "cross_entropy", "labels", {"dropout": 0.2}, "dropout is implemented for ReLU"),
    ("relu", "squared_error", "rows", {"label_smoothing": 0.1}, "label_smoothing is for loss='cross_entropy'"),
    ("relu", "binary_cross_entropy", "labels", {}, "targets of shape"),
    ("relu", "binary_cross_entropy", "twos", {}, r"targets in \[0, 1\]"),
    ("relu", "poisson", "negative", {}, "targets >= 0"),
    ("relu", "squared_error", "rows", {"alpha": -1.0}, "alpha"),
    ("relu", "squared_error", "rows", {"alpha": 0.1, "optimizer": "adamw"}, "decoupled"),
])
def test_bad_combinations_are_refused_and_change_nothing(activation, loss, y_kind, kwargs, match):
    X, _ = problem(np.float64, "cross_entropy")
    y = {"labels": np.arange(len(X)) % 3, "rows": np.zeros((len(X), 3)), "twos": np.full((len(X), 3), 2.0),
         "negative": -np.ones((len(X), 3))}[y_kind]
    net = make_net(np.float64, activation, loss)
    before = net.get_weights()
    with pytest.raises(ValueError, match=match):
        net.fit(X, y, epochs=1, batch_size=8, **kwargs)
    for W, W0 in zip(net.weights, before):
        np.testing.assert_array_equal(W, W0)


def test_predict_proba_is_for_classifiers():
    net = make_net(np.float64, "relu", "squared_error")
    with pytest.raises(ValueError, match="predict_proba is for classifying networks"):
        net.predict_proba(np.zeros((2, SIZES[0])))
