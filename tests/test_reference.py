"""The reference is right: its analytic gradients agree with central differences, and the student's
"softmax derivative" error at the logits does not."""
import numpy as np
import pytest

from mlpcore import reference
from conftest import make_problem, relative_error

EPS = 1e-6


def _central_differences(loss_of_weights, weights):
    grads = []
    for W in weights:
        g = np.zeros_like(W)
        for idx in np.ndindex(W.shape):
            saved = W[idx]
            W[idx] = saved + EPS
            up = loss_of_weights(weights)
            W[idx] = saved - EPS
            down = loss_of_weights(weights)
            W[idx] = saved
            g[idx] = (up - down) / (2 * EPS)
        grads.append(g)
    return grads


def _random_weights(sizes, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.5, size=(n_in + 1, n_out)) for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def _min_distance_to_relu_kink(weights, X):
    _, pre_activations = reference.forward_all(weights, X)
    hidden = pre_activations[:-1]
    return min((np.abs(z).min() for z in hidden), default=np.inf)


@pytest.mark.parametrize("sizes", [[4, 3], [4, 5, 3], [3, 6, 4, 3], [2, 3, 3, 3, 2]], ids=str)
@pytest.mark.parametrize("targets", ["labels", "soft"])
def test_gradients_match_central_differences(sizes, targets):
    weights = _random_weights(sizes, seed=1)
    X, y = make_problem(sizes, 7, np.float64, targets, seed=2)
    # A difference step that crosses a ReLU kink measures nothing: keep every pre-activation away.
    assert _min_distance_to_relu_kink(weights, X) > 100 * EPS
    _, analytic = reference.loss_and_gradients(weights, X, y)
    numeric = _central_differences(lambda w: reference.loss(w, X, y), weights)
    for a, n in zip(analytic, numeric):
        assert relative_error(a, n) < 1e-6


def test_error_at_the_logits_is_p_minus_t_over_n():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4))
    T = reference.targets_matrix(rng.integers(0, 4, size=6), 4, np.float64)
    numeric = _central_differences(lambda z: reference.cross_entropy(z[0], T), [logits])[0]
    expected = (reference.softmax(logits) - T) / len(logits)
    assert relative_error(numeric, expected) < 1e-7


def _student_loss_and_gradients(weights, X, y):
    """The reference with the student's error at the logits: (P - T) times an elementwise
    "softmax derivative" P (1 - P)."""
    inputs, pre_activations = reference.forward_all(weights, X)
    logits = pre_activations[-1]
    T = reference.targets_matrix(y, logits.shape[1], logits.dtype)
    P = reference.softmax(logits)
    delta = (P - T) * P * (1 - P) / len(X)
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = inputs[i].T @ delta
        if i > 0:
            delta = (delta @ weights[i][:-1].T) * reference.relu_derivative(pre_activations[i - 1])
    return grads


def test_softmax_derivative_version_fails_the_difference_check():
    sizes = [4, 5, 3]
    weights = _random_weights(sizes, seed=1)
    X, y = make_problem(sizes, 7, np.float64, seed=2)
    numeric = _central_differences(lambda w: reference.loss(w, X, y), weights)
    wrong = _student_loss_and_gradients(weights, X, y)
    assert all(relative_error(g, n) > 0.1 for g, n in zip(wrong, numeric))


def test_relu_derivative_is_zero_at_zero():
    z = np.array([[-1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(reference.relu_derivative(z), [[0.0, 0.0, 1.0]])


def test_reference_keeps_the_weights_dtype():
    sizes = [3, 4, 2]
    weights = [W.astype(np.float32) for W in _random_weights(sizes, 0)]
    X, y = make_problem(sizes, 5, np.float64)
    loss, grads = reference.loss_and_gradients(weights, X, y)
    assert all(g.dtype == np.float32 for g in grads)
    assert reference.forward(weights, X).dtype == np.float32
