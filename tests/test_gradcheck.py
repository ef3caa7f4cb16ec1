"""mlpcore.gradcheck holds a hand-written backprop to central differences of its own loss, part by part."""
import numpy as np
import pytest

import mlpcore
from mlpcore import reference

SIZES = [6, 9, 7, 4]


def _problem(seed=0, n=11):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(scale=0.5, size=(a + 1, b)) for a, b in zip(SIZES[:-1], SIZES[1:])]
    X = rng.normal(size=(n, SIZES[0]))
    y = rng.integers(0, SIZES[-1], size=n)
    return weights, X, y


def _correct(weights, X, Y):
    return reference.loss_and_gradients(weights, X, Y)


@pytest.mark.parametrize("targets", ["labels", "onehot"])
def test_a_correct_backprop_passes_every_part(targets):
    weights, X, y = _problem()
    Y = y if targets == "labels" else np.eye(SIZES[-1])[y]
    before = [W.copy() for W in weights]
    report = mlpcore.gradcheck(_correct, weights, X, Y)
    assert report.ok and not report.failures
    assert [(p.layer, p.part) for p in report.parts] == [(l, part) for l in range(3) for part in ("weights", "bias")]
    assert all(p.checked == p.total for p in report.parts)  # small parts: every entry
    assert max(p.max_relative_error for p in report.parts) < 1e-5  # far below the tolerance, 1e-4
    for W, B in zip(weights, before):
        np.testing.assert_array_equal(W, B)  # the user's arrays are untouched
    assert "all gradients agree" in str(report)


@pytest.mark.parametrize("layer,part", [(0, "weights"), (1, "bias"), (2, "weights"), (2, "bias")])
def test_a_wrong_part_is_named_and_only_it(layer, part):
    weights, X, y = _problem(seed=1)

    def broken(ws, X, Y):
        loss, grads = reference.loss_and_gradients(ws, X, Y)
        rows = slice(None, -1) if part == "weights" else slice(-1, None)
        grads[layer][rows] *= 2  # e.g. a sum where the mean belongs, in that part only
        return loss, grads

    report = mlpcore.gradcheck(broken, weights, X, y)
    assert not report.ok
    assert [(p.layer, p.part) for p in report.failures] == [(layer, part)]
    failing = report.failures[0]
    assert failing.max_relative_error == pytest.approx(0.5, abs=1e-4)  # |2a - a| / |2a|
    assert failing.analytic == pytest.approx(2 * failing.numeric, rel=1e-5)
    assert f"wrong: layer {layer} {part}" in str(report)
    assert "FAIL" in str(report)


def test_large_parts_are_sampled_reproducibly():
    rng = np.random.default_rng(2)
    weights = [rng.normal(scale=0.1, size=(41, 30)), rng.normal(scale=0.1, size=(31, 3))]
    X, y = rng.normal(size=(5, 40)), rng.integers(0, 3, size=5)
    report = mlpcore.gradcheck(_correct, weights, X, y, n_samples=25, seed=3)
    assert [(p.checked, p.total) for p in report.parts] == [(25, 1200), (25, 30), (25, 90), (3, 3)]
    assert report.ok
    again = mlpcore.gradcheck(_correct, weights, X, y, n_samples=25, seed=3)
    assert [p.worst_entry for p in again.parts] == [p.worst_entry for p in report.parts]


@pytest.mark.parametrize("func,message", [
    (lambda w, X, Y: (1.0, [np.zeros_like(W) for W in w[:-1]]), "returned 2 gradients for 3 layers"),
    (lambda w, X, Y: (1.0, [np.zeros_like(W).T for W in w]), r"gradient 0 has shape \(9, 7\)"),
    (lambda w, X, Y: 1.0, "must return \\(loss, grads\\)"),
    (lambda w, X, Y: (float("nan"), [np.zeros_like(W) for W in w]), "loss is nan"),
    (lambda w, X, Y: (np.ones(3), [np.zeros_like(W) for W in w]), "loss must be one number"),
    (lambda w, X, Y: 1 / 0, "the function raised ZeroDivisionError"),
])
def test_a_function_that_breaks_the_contract_gets_a_clear_error(func, message):
    weights, X, y = _problem()
    with pytest.raises(ValueError, match=message):
        mlpcore.gradcheck(func, weights, X, y)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(eps=0), ValueError, "eps must be"),
    (dict(n_samples=0), ValueError, "n_samples must be"),
    (dict(weights=np.zeros((7, 9))), TypeError, "non-empty list"),
    (dict(weights=[np.zeros((7, 9)), np.zeros((9, 4))]), ValueError, r"weights\[1\] has 9 rows"),
    (dict(X=np.zeros((3, 5))), ValueError, r"X must be \(n_samples, 6\)"),
])
def test_bad_arguments_are_refused(kwargs, error, message):
    weights, X, y = _problem()
    args = dict(weights=weights, X=X)
    args.update({k: v for k, v in kwargs.items() if k in args})
    options = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(error, match=message):
        mlpcore.gradcheck(_correct, args["weights"], args["X"], y, **options)


def _student_backprop(softmax_derivative_bug):
    """The student's forward and backward passes (ones column appended, one-hot Y), with or without their
    elementwise "softmax derivative" at the output."""
    def loss_and_grads(weights, X, Y):
        n, activations, pre = len(X), [X], []
        for i, W in enumerate(weights):
            z = np.hstack([activations[-1], np.ones((n, 1))]) @ W
            pre.append(z)
            if i < len(weights) - 1:
                activations.append(np.maximum(z, 0))
            else:
                e = np.exp(z - z.max(axis=1, keepdims=True))
                activations.append(e / e.sum(axis=1, keepdims=True))
        P = activations[-1]
        loss = -np.sum(Y * np.log(P)) / n
        delta = (P - Y) / n
        if softmax_derivative_bug:
            delta = delta * P * (1 - P)
        grads = [None] * len(weights)
        for i in range(len(weights) - 1, -1, -1):
            grads[i] = np.hstack([activations[i], np.ones((n, 1))]).T @ delta
            if i > 0:
                delta = (delta @ weights[i][:-1].T) * (pre[i - 1] > 0)
        return loss, grads
    return loss_and_grads


def test_the_students_softmax_derivative_is_caught_and_the_fix_passes():
    weights, X, y = _problem(seed=4)
    Y = np.eye(SIZES[-1])[y]
    report = mlpcore.gradcheck(_student_backprop(True), weights, X, Y)
    assert (2, "weights") in [(p.layer, p.part) for p in report.failures]
    assert (2, "bias") in [(p.layer, p.part) for p in report.failures]
    assert mlpcore.gradcheck(_student_backprop(False), weights, X, Y).ok
