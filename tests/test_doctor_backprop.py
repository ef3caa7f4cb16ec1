"""mlpcore.doctor.check_backprop runs a hand-written backprop on probes of its choosing and names the bug:
every entry of tests/backprop_catalogue.py (right and wrong backprops in several styles), the student's
code and its fix, and what it does with functions and arguments it cannot check."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from mlpcore import doctor, reference

from backprop_catalogue import BROKEN, CATALOGUE, CORRECT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STUDENT_SIZES = [784, 300, 300, 10]
CODES = {"softmax-derivative", "relu-derivative-at-zero", "missing-relu-mask", "sign-flipped", "gradient-scale",
         "wrong-weights-in-backprop", "error-through-bias", "bias-gradient", "gradient-mismatch",
         "softmax-overflow"}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_doctor_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _where(findings):
    return {(f.code, f.layer, f.part) for f in findings}


# -------------------------------------------------------------------------------------------------
# The catalogue itself

def test_the_catalogue_covers_every_code_in_every_style():
    assert len(BROKEN) >= 14 and len(CORRECT) >= 4
    assert len({case.name for case in CATALOGUE}) == len(CATALOGUE)
    expected_codes = {code for case in BROKEN for code, _, _ in case.expected}
    assert expected_codes == CODES
    styles = {case.style for case in CATALOGUE}
    assert {"vectorised", "per-sample loop", "einsum", "class", "float32"} <= styles
    assert {case.style for case in CORRECT} >= {"vectorised", "per-sample loop", "einsum", "float32"}
    assert any(case.targets == "labels" for case in CORRECT)
    assert any(case.targets == "labels" for case in BROKEN)
    assert any(len(case.expected) > 1 for case in BROKEN)
    for case in BROKEN:
        for code, layer, part in case.expected:
            assert 0 <= layer < len(case.sizes) - 1 and part in ("weights", "bias")


def _probes(sizes, targets, seed=0):
    """Random problems of 1 and 5 rows: plain; with two units of every hidden layer at exactly 0 (their
    columns of W zero); with logits from about -200 to 1800."""
    rng = np.random.default_rng(seed)
    for kind in ("plain", "zeros", "large"):
        for m in (1, 5):
            weights = [rng.normal(scale=(a + 1) ** -0.5, size=(a + 1, b)) for a, b in zip(sizes[:-1], sizes[1:])]
            X = rng.normal(size=(m, sizes[0]))
            if kind == "zeros":
                for k in range(len(weights) - 1):
                    weights[k][:, rng.choice(sizes[k + 1], 2, replace=False)] = 0
            if kind == "large":
                logits = reference.forward_all(weights, X)[1][-1]
                weights[-1] *= 1000 / np.abs(logits).max()
                weights[-1][-1] += 800   # every logit of a row shifted alike: the same softmax, and exp overflows
            y = rng.integers(0, sizes[-1], size=m)
            yield kind, weights, X, (y if targets == "labels" else np.eye(sizes[-1])[y])


def _agrees(grad, exact, rows, float32):
    grad, exact = np.asarray(grad, dtype=np.float64)[rows], exact[rows]
    return np.allclose(grad, exact, rtol=1e-4 if float32 else 1e-8, atol=1e-7 if float32 else 1e-12)


@pytest.mark.parametrize("case", CATALOGUE, ids=str)
def test_each_entry_is_wrong_where_it_says_and_right_above(case):
    """Held to mlpcore.reference alone: a correct entry agrees everywhere; a broken one agrees in every
    layer above the top-most finding's, and its top-most finding's layer and part disagree somewhere
    (only with logits near 1000, for softmax-overflow)."""
    L = len(case.sizes) - 1
    top_layer, _, top_part = max((layer, code, part) for code, layer, part in case.expected) if case.broken \
        else (-1, None, None)
    overflow_only = {code for code, _, _ in case.expected} == {"softmax-overflow"}
    float32 = case.style == "float32"
    wrong_somewhere = False
    for kind, weights, X, Y in _probes(case.sizes, case.targets):
        given = [W.copy() for W in weights]
        loss, grads = case.func(given, X.copy(), Y.copy())
        for W, G in zip(weights, given):
            np.testing.assert_array_equal(W, G)
        exact_loss, exact = reference.loss_and_gradients(weights, X, Y)
        assert len(grads) == L and all(np.shape(g) == W.shape for g, W in zip(grads, weights))
        if overflow_only and kind == "large":
            assert not all(np.isfinite(g).all() for g in grads)
            wrong_somewhere = True
            continue
        for layer in range(top_layer + 1, L):
            assert _agrees(grads[layer], exact[layer], slice(None), float32), (kind, layer)
        if top_layer >= 0:
            if top_part == "bias":
                assert _agrees(grads[top_layer], exact[top_layer], slice(None, -1), float32), (kind, top_layer)
            rows = slice(None, -1) if top_part == "weights" else slice(-1, None)
            wrong_somewhere |= not _agrees(grads[top_layer], exact[top_layer], rows, float32)
        if not case.broken:
            assert loss == pytest.approx(exact_loss, rel=1e-5 if float32 else 1e-9)
    assert wrong_somewhere == case.broken


# -------------------------------------------------------------------------------------------------
# The diagnoses

@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_a_broken_backprop_is_named(case):
    report = doctor.check_backprop(case.func, list(case.sizes), targets=case.targets)
    assert _where(report.errors) == case.expected, str(report)
    assert len(report.errors) == len(case.expected), str(report)   # one finding per bug
    assert not report.ok
    for finding in report.findings:
        assert isinstance(finding.message, str) and finding.message.strip()
        assert isinstance(finding.fix, str) and finding.fix.strip()
    text = str(report)
    assert all(code in text for code, _, _ in case.expected)


@pytest.mark.parametrize("case", CORRECT, ids=str)
def test_a_correct_backprop_has_no_finding(case):
    report = doctor.check_backprop(case.func, list(case.sizes), targets=case.targets)
    assert report.findings == [], str(report)
    assert report.ok and "nothing found" in str(report)


# Seeds whose probes once caught the doctor out: a layer's exact gradient 0, or rounding noise, on some probe
# (so only an absolute floor tells a loop's or einsum's rounding from a bug), or no logit above exp's overflow.
SEEDS = [1, 2, 20, 24, 36, 170, 310, 419, 468]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CATALOGUE, ids=str)
def test_the_diagnosis_does_not_depend_on_the_seed(case, seed):
    report = doctor.check_backprop(case.func, list(case.sizes), targets=case.targets, seed=seed)
    assert _where(report.errors) == case.expected, str(report)
    assert len(report.errors) == len(case.expected), str(report)


def test_the_same_seed_gives_the_same_report():
    case = next(case for case in CATALOGUE if case.name == "class_student_two_bugs")
    first = doctor.check_backprop(case.func, list(case.sizes), seed=3)
    second = doctor.check_backprop(case.func, list(case.sizes), seed=3)
    assert str(first) == str(second)


def test_the_students_backprop_has_its_two_bugs_named():
    report = doctor.check_backprop(_load("student").backprop, STUDENT_SIZES)
    assert _where(report.errors) == {("softmax-derivative", 2, "weights"), ("relu-derivative-at-zero", 1, "weights")}, \
        str(report)
    assert len(report.errors) == 2 and not report.ok


def test_the_students_fixed_backprop_has_no_finding():
    report = doctor.check_backprop(_load("student_fixed").backprop, STUDENT_SIZES)
    assert report.findings == [], str(report)


@pytest.mark.parametrize("targets", ["onehot", "labels"])
def test_the_probes_are_what_the_function_is_promised(targets):
    """float64 weights and X of the right shapes, one-hot float64 rows or integer labels; batches of one row
    and of more; hidden pre-activations exactly 0; logits in the hundreds."""
    sizes = [7, 6, 6, 4]
    calls = []

    def recording(weights, X, Y):
        calls.append(([W.copy() for W in weights], X.copy(), np.array(Y, copy=True)))
        return reference.loss_and_gradients(weights, X, Y)

    assert doctor.check_backprop(recording, sizes, targets=targets).findings == []
    assert len(calls) >= 3
    batch_sizes = {len(X) for _, X, _ in calls}
    assert 1 in batch_sizes and max(batch_sizes) > 1
    zero_pre_activation = large_logits = False
    for weights, X, Y in calls:
        assert [W.shape for W in weights] == [(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:])]
        assert all(W.dtype == np.float64 for W in weights) and X.dtype == np.float64 and X.shape[1] == 7
        if targets == "onehot":
            assert Y.dtype == np.float64 and Y.shape == (len(X), 4)
            assert set(np.unique(Y)) <= {0.0, 1.0} and (Y.sum(axis=1) == 1).all()
        else:
            assert Y.dtype.kind in "iu" and Y.shape == (len(X),) and 0 <= Y.min() and Y.max() < 4
        _, pre_activations = reference.forward_all(weights, X)
        zero_pre_activation |= any((z == 0).any() for z in pre_activations[:-1])
        large_logits |= np.abs(pre_activations[-1]).max() > 500
    assert zero_pre_activation and large_logits


# -------------------------------------------------------------------------------------------------
# What the user gave is left alone

def test_nothing_the_user_gave_is_changed():
    case = next(case for case in CATALOGUE if case.name == "vectorised")
    sizes = list(case.sizes)
    sizes_array = np.array(case.sizes)
    global_rng = np.random.get_state()
    seen = []

    def recording(weights, X, Y):
        seen.append((weights, X, Y))
        return case.func(weights, X, Y)

    first = doctor.check_backprop(recording, sizes)
    second = doctor.check_backprop(recording, sizes_array)
    assert sizes == list(case.sizes)
    np.testing.assert_array_equal(sizes_array, case.sizes)
    assert first.findings == [] and second.findings == []
    after = np.random.get_state()
    assert global_rng[0] == after[0] and np.array_equal(global_rng[1], after[1]) and global_rng[2:] == after[2:]
    assert seen and all(len(W) == len(case.sizes) - 1 for W, _, _ in seen)


def test_a_backprop_that_changes_its_arguments_changes_nothing_the_doctor_checks_with():
    """A user's function that scales X and steps W in place, as training code does: the doctor's own copies
    of the probes are untouched, so the function, right otherwise, is still found right."""
    def in_place(weights, X, Y):
        loss, grads = reference.loss_and_gradients(weights, X, Y)
        X *= 2.0
        for W, g in zip(weights, grads):
            W -= 0.5 * g
        return loss, grads

    report = doctor.check_backprop(in_place, [6, 5, 4])
    assert report.findings == [], str(report)


# -------------------------------------------------------------------------------------------------
# What cannot be checked

SIZES = [6, 5, 4, 3]


def test_a_function_that_raises_is_a_value_error_naming_the_exception():
    def broken(weights, X, Y):
        raise ZeroDivisionError("my backprop divided by zero")

    with pytest.raises(ValueError, match="ZeroDivisionError") as info:
        doctor.check_backprop(broken, SIZES)
    assert "my backprop divided by zero" in str(info.value)


def test_too_few_or_too_many_gradients_is_a_value_error_saying_so():
    def too_few(weights, X, Y):
        loss, grads = reference.loss_and_gradients(weights, X, Y)
        return loss, grads[1:]

    def too_many(weights, X, Y):
        loss, grads = reference.loss_and_gradients(weights, X, Y)
        return loss, grads + [np.zeros(3)]

    for func, got in ((too_few, 2), (too_many, 4)):
        with pytest.raises(ValueError, match="(?i)grad") as info:
            doctor.check_backprop(func, SIZES)
        assert "3" in str(info.value) and str(got) in str(info.value)


@pytest.mark.parametrize("mistake", ["no bias row", "transposed", "flattened", "one extra column"])
def test_a_gradient_of_the_wrong_shape_is_a_value_error_saying_so(mistake):
    change = {"no bias row": lambda g: g[:-1], "transposed": lambda g: g.T, "flattened": lambda g: g.ravel(),
              "one extra column": lambda g: np.hstack([g, np.zeros((g.shape[0], 1))])}[mistake]

    def wrong(weights, X, Y):
        loss, grads = reference.loss_and_gradients(weights, X, Y)
        grads[1] = change(grads[1])
        return loss, grads

    with pytest.raises(ValueError, match="shape") as info:
        doctor.check_backprop(wrong, SIZES)
    assert "(6, 4)" in str(info.value)   # W[1]'s shape: what its gradient must have


def test_a_function_that_returns_no_pair_is_a_value_error():
    def grads_only(weights, X, Y):
        return reference.loss_and_gradients(weights, X, Y)[1]

    with pytest.raises(ValueError):
        doctor.check_backprop(grads_only, SIZES)


@pytest.mark.parametrize("layer_sizes", [[], [5], [5, 0, 3], [5, -4, 3], [5, 4, 1], None, 5, "784 300 10",
                                         [5, 2.5, 3], [5, "four", 3]])
def test_bad_layer_sizes_are_refused(layer_sizes):
    case = next(case for case in CORRECT if case.name == "vectorised")
    with pytest.raises((ValueError, TypeError)):
        doctor.check_backprop(case.func, layer_sizes)


@pytest.mark.parametrize("targets", ["one-hot", "label", "soft", None, 1])
def test_bad_targets_are_refused(targets):
    case = next(case for case in CORRECT if case.name == "vectorised")
    with pytest.raises((ValueError, TypeError)):
        doctor.check_backprop(case.func, [6, 5, 3], targets=targets)


def test_a_func_that_is_not_callable_is_a_type_error():
    with pytest.raises(TypeError):
        doctor.check_backprop("backprop", [6, 5, 3])


# -------------------------------------------------------------------------------------------------
# The loss, and the other common layout

def _exact(weights, X, Y):
    return reference.loss_and_gradients(weights, X, Y)


def test_a_summed_loss_is_a_warning_and_the_gradients_still_pass():
    def summed(weights, X, Y):
        loss, grads = _exact(weights, X, Y)
        return loss * len(X), grads
    report = doctor.check_backprop(summed, [10, 7, 3])
    assert report.ok and report.codes() == ["loss-scale"]
    assert report.findings[0].severity == "warning" and report.findings[0].layer is None


def test_a_wrong_loss_is_a_warning_that_shows_both_values():
    def off(weights, X, Y):
        loss, grads = _exact(weights, X, Y)
        return loss + 0.5, grads
    report = doctor.check_backprop(off, [10, 7, 3])
    assert report.ok and report.codes() == ["loss-mismatch"]
    assert "exact" in report.findings[0].message


def test_a_loss_that_is_not_one_number_is_a_value_error():
    def vector(weights, X, Y):
        loss, grads = _exact(weights, X, Y)
        return np.array([loss, loss]), grads
    with pytest.raises(ValueError, match="loss must be one number"):
        doctor.check_backprop(vector, [10, 7, 3])


def _bias_first_backprop(weights, X, Y):
    """A correct backprop in the other layout: ones prepended, bias in each W's first row."""
    m = len(X)
    a, zs = [X], []
    for i, W in enumerate(weights):
        z = np.hstack([np.ones((m, 1)), a[-1]]) @ W
        zs.append(z)
        a.append(np.maximum(z, 0) if i < len(weights) - 1 else z)
    P = np.exp(zs[-1] - zs[-1].max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    delta, grads = (P - Y) / m, [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = np.hstack([np.ones((m, 1)), a[i]]).T @ delta
        if i:
            delta = (delta @ weights[i][1:].T) * (zs[i - 1] > 0)
    return -np.sum(Y * np.log(np.maximum(P, 1e-300))) / m, grads


def test_a_correct_backprop_with_the_bias_first_is_recognised_not_called_wrong():
    report = doctor.check_backprop(_bias_first_backprop, [12, 9, 9, 4])
    assert report.codes() == ["bias-row-first"] and report.ok  # a warning: right, in the other layout


def test_a_broken_backprop_with_the_bias_first_is_still_wrong():
    def broken(weights, X, Y):
        loss, grads = _bias_first_backprop(weights, X, Y)
        grads[0] = grads[0] * 2
        return loss, grads
    report = doctor.check_backprop(broken, [12, 9, 9, 4])
    assert not report.ok and "bias-row-first" not in report.codes()


# -------------------------------------------------------------------------------------------------
# Deeper and wider networks, and functions the doctor cannot check as they are (from a review)

def _vectorised(weights, X, Y, *, dtype=np.float64, relu_ge=None, zero_layer=None, noise_layer=None):
    W = [w.astype(dtype) for w in weights]
    X, Y, m = X.astype(dtype), Y.astype(dtype), len(X)
    inputs, zs, a = [], [], X
    for w in W:
        inputs.append(np.hstack([a, np.ones((m, 1), dtype)]))
        zs.append(inputs[-1] @ w)
        a = np.maximum(zs[-1], 0)
    P = np.exp(zs[-1] - zs[-1].max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    delta, grads = (P - Y) / m, [None] * len(W)
    for i in range(len(W) - 1, -1, -1):
        grads[i] = inputs[i].T @ delta
        if i:
            z = zs[i - 1]
            delta = (delta @ W[i][:-1].T) * ((z >= 0) if relu_ge == i - 1 else (z > 0))
    if zero_layer is not None:
        grads[zero_layer] = np.zeros_like(grads[zero_layer])
    if noise_layer is not None:
        grads[noise_layer] = grads[noise_layer] + 1e-3
    return -np.sum(Y * np.log(np.maximum(P, 1e-300))) / m, grads


@pytest.mark.parametrize("sizes,kwargs,expected", [
    ([784, 1024, 1024, 1024, 10], {"dtype": np.float32, "relu_ge": 0}, {("relu-derivative-at-zero", 0, "weights")}),
    ([256] * 6 + [10], {"dtype": np.float32, "relu_ge": 1}, {("relu-derivative-at-zero", 1, "weights")}),
    ([50] * 8 + [10], {"zero_layer": 0}, {("gradient-scale", 0, "weights")}),
    ([10] * 12, {"noise_layer": 0}, {("gradient-mismatch", 0, "weights")}),
    ([784, 512, 256, 128, 10], {"dtype": np.float32}, set()),
])
def test_the_lowest_layers_of_deep_and_wide_networks_are_checked(sizes, kwargs, expected):
    report = doctor.check_backprop(lambda W, X, Y: _vectorised(W, X, Y, **kwargs), sizes)
    assert _where(report.errors) == expected, str(report)


def test_a_zero_gradient_is_called_zero():
    report = doctor.check_backprop(lambda W, X, Y: _vectorised(W, X, Y, zero_layer=1), [10, 8, 8, 3])
    assert _where(report.errors) == {("gradient-scale", 1, "weights")}
    assert "is zero" in report.errors[0].message


def test_float16_gradients_are_refused_as_too_coarse():
    with pytest.raises(ValueError, match="float16"):
        doctor.check_backprop(lambda W, X, Y: _vectorised(W, X, Y, dtype=np.float16), [10, 8, 3])


def test_a_function_that_is_not_deterministic_is_said_to_be():
    rng = np.random.default_rng(0)

    def with_dropout(weights, X, Y):
        loss, grads = _vectorised(weights, X, Y)
        return loss, [g * (rng.random(g.shape) > 0.1) for g in grads]

    report = doctor.check_backprop(with_dropout, [10, 8, 3])
    assert report.codes() == ["not-deterministic"] and not report.ok


def test_a_function_that_calls_sys_exit_is_a_value_error():
    def leaves(weights, X, Y):
        sys.exit(0)
    with pytest.raises(ValueError, match=r"sys.exit\(0\)"):
        doctor.check_backprop(leaves, [10, 8, 3])
