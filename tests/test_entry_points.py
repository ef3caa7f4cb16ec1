"""The compiled entry points refuse what would take them out of bounds, and leave the weights alone.

Python checks values before calling them; these checks are the core's own, for shapes and counts that
would otherwise divide by zero, read or write out of bounds, or overflow BLAS's 32-bit sizes.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from mlpcore import _compiled
from conftest import make_problem

SIZES = np.array([5, 6, 3], dtype=np.intp)
N_PARAMS = 6 * 6 + 7 * 3


def _train_args(n=10, batch_size=4, order=True, label_work=4, first=0, stop=3):
    rng = np.random.default_rng(0)
    X, y = make_problem(list(SIZES), n, np.float64)
    params = rng.normal(size=N_PARAMS)
    work = np.empty(_compiled.workspace_size(SIZES, max(batch_size, 1), True, 1, True))
    return dict(params=params, grads=np.empty_like(params), sizes=SIZES, X=X, labels=y.astype(np.intp),
                targets=np.empty((0, 3)), order=np.arange(n, dtype=np.intp) if order else np.empty(0, np.intp),
                batch_size=batch_size, first_batch=first, stop_batch=stop,
                rule=_compiled.UpdateRule(_compiled.SGD, 0.1), work=work,
                label_work=np.empty(label_work, np.intp))


def test_a_valid_call_trains_every_batch():
    total, done, correct = _compiled.train_batches(*_train_args().values())
    assert done == 3 and np.isfinite(total)


@pytest.mark.parametrize("first,stop", [(0, 4), (2, 1), (-1, 2), (4, 4)])
def test_batches_past_the_end_are_refused(first, stop):
    args = _train_args(first=first, stop=stop)
    before = args["params"].copy()
    with pytest.raises(ValueError, match="not within the 3 batches"):
        _compiled.train_batches(*args.values())
    np.testing.assert_array_equal(args["params"], before)


def test_a_short_label_work_is_refused():
    args = _train_args(label_work=3)
    before = args["params"].copy()
    with pytest.raises(ValueError, match="label_work holds 3 labels"):
        _compiled.train_batches(*args.values())
    np.testing.assert_array_equal(args["params"], before)


@pytest.mark.parametrize("batch_size", [0, -1, 2**31])
def test_batch_sizes_blas_cannot_take_are_refused(batch_size):
    args = _train_args()
    args["batch_size"] = batch_size
    before = args["params"].copy()
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 2\*\*31 - 1\]"):
        _compiled.train_batches(*args.values())
    np.testing.assert_array_equal(args["params"], before)


@pytest.mark.parametrize("field,value,message", [
    ("params", np.zeros(N_PARAMS - 1), "params has 56 entries"),
    ("grads", np.zeros(N_PARAMS + 1), "grads has 58 entries"),
    ("X", np.zeros((10, 4)), r"X has shape \(10, 4\)"),
    ("labels", np.zeros(9, np.intp), "labels has 9 entries for 10 rows"),
    ("order", np.arange(9, dtype=np.intp), "order has 9 entries for 10 rows"),
    ("sizes", np.array([5, 0, 3], dtype=np.intp), "every layer size"),
])
def test_shapes_that_disagree_are_refused(field, value, message):
    args = _train_args()
    args[field] = value
    with pytest.raises(ValueError, match=message):
        _compiled.train_batches(*args.values())


def test_target_rows_of_the_wrong_shape_are_refused():
    args = _train_args()
    args["labels"], args["targets"] = np.empty(0, np.intp), np.full((10, 2), 0.5)
    with pytest.raises(ValueError, match=r"targets has shape \(10, 2\)"):
        _compiled.train_batches(*args.values())


def test_a_workspace_beyond_memory_is_refused_not_overflowed():
    wide = np.array([2**31 - 1] * 6, dtype=np.intp)
    with pytest.raises(ValueError, match="more elements than memory can"):
        _compiled.workspace_size(wide, 2**31 - 1, True, 64, True)
    with pytest.raises(ValueError, match=r"the rows of a batch must be in \[1, 2\*\*31 - 1\]"):
        _compiled.workspace_size(SIZES, 2**31)


def test_inference_refuses_a_chunk_blas_cannot_take_and_a_wrong_output():
    params = np.zeros(N_PARAMS)
    X = np.zeros((4, 5))
    work = np.empty(_compiled.workspace_size(SIZES, 4))
    with pytest.raises(ValueError, match=r"chunk must be in \[1, 2\*\*31 - 1\]"):
        _compiled.predict_proba(params, SIZES, X, np.empty((4, 3)), work, 0)
    with pytest.raises(ValueError, match=r"out has shape \(4, 2\)"):
        _compiled.predict_proba(params, SIZES, X, np.empty((4, 2)), work, 4)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_inference_says_whether_the_input_was_finite(workers):
    rng = np.random.default_rng(4)
    sizes = np.array([6, 40, 3], np.intp)
    params = rng.normal(size=(6 + 1) * 40 + (40 + 1) * 3)
    X = rng.normal(size=(23, 6))
    labels = rng.integers(0, 3, 23).astype(np.intp)
    work = np.empty(_compiled.workspace_size(sizes, 5, False, workers))
    out = np.empty((23, 3))
    no_targets = np.empty((0, 3))
    assert _compiled.predict_proba(params, sizes, X, out, work, 5, workers) is True
    loss, finite = _compiled.mean_loss(params, sizes, X, labels, no_targets, work, 5, workers)
    assert finite is True and np.isfinite(loss)
    for row in (0, 11, 22):  # in the first, a middle and the last chunk, each worker's rows
        bad = X.copy()
        bad[row, 2] = np.nan
        assert _compiled.predict_proba(params, sizes, bad, out, work, 5, workers) is False
        assert _compiled.mean_loss(params, sizes, bad, labels, no_targets, work, 5, workers)[1] is False


def test_inference_on_a_smaller_team_than_asked_for_says_finite(tmp_path):
    # OpenMP may start fewer workers than asked (OMP_THREAD_LIMIT, or a build without OpenMP): the
    # slots of workers that never ran must not read as having seen NaN.
    code = (
        "import numpy as np; from mlpcore import _compiled\n"
        "sizes = np.array([6, 40, 3], np.intp); rng = np.random.default_rng(4)\n"
        "params = rng.normal(size=7 * 40 + 41 * 3); X = rng.normal(size=(23, 6))\n"
        "work = np.empty(_compiled.workspace_size(sizes, 5, False, 3))\n"
        "print(_compiled.predict_proba(params, sizes, X, np.empty((23, 3)), work, 5, 3))\n"
    )
    # From an empty folder, so that `python -c` imports the mlpcore under test, not a source tree in the
    # current folder.
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_THREAD_LIMIT": "1"},
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_update_rules_are_explicit():
    assert _compiled.UpdateRule(_compiled.GRADIENTS_ONLY).kind == _compiled.GRADIENTS_ONLY
    assert _compiled.UpdateRule(_compiled.SGD, 0.5).lr == 0.5
    with pytest.raises(ValueError, match="needs a learning rate > 0"):
        _compiled.UpdateRule(_compiled.SGD, 0.0)
    with pytest.raises(ValueError, match="unknown update rule kind 7"):
        _compiled.UpdateRule(7)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_abs_shared_out_finds_the_largest_magnitude_nan_and_infinity(workers, dtype):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(101, 7)).astype(dtype)  # an odd size: shares of unequal length
    X[57, 3] = -40.5  # the largest magnitude is negative, in the middle
    assert _compiled.max_abs(X, workers) == 40.5
    for where in ((0, 0), (100, 6), (50, 2)):  # first, last and middle items: every share's edges
        Y = X.copy()
        Y[where] = -np.inf
        assert _compiled.max_abs(Y, workers) == np.inf
        Y[where] = np.nan
        assert np.isnan(_compiled.max_abs(Y, workers))
    assert _compiled.max_abs(np.zeros((0, 3), dtype), workers) == 0.0
    with pytest.raises(ValueError, match="workers must be in"):
        _compiled.max_abs(X, 0)


def test_sizes_whose_counts_wrap_around_are_refused():
    # Each size fits BLAS, but the parameter count wraps around to 57 in 64-bit arithmetic, and the
    # workspace count goes negative: both must be counted without wrapping and refused.
    big = 2**31 - 1
    sizes = np.array([1, big, big, big, 2147483588, big, 120], dtype=np.intp)
    X = np.zeros((4, 1))
    with pytest.raises(ValueError, match="params has 57 entries"):
        _compiled.train_batches(np.zeros(57), np.zeros(57), sizes, X, np.zeros(4, np.intp), np.empty((0, 120)),
                                np.empty(0, np.intp), 429496730, 0, 1, _compiled.UpdateRule(_compiled.SGD, 0.1),
                                np.zeros(16), np.empty(0, np.intp))
    with pytest.raises(ValueError, match="more elements than memory can"):
        _compiled.workspace_size(sizes, 429496730)
    with pytest.raises(ValueError, match="params has 57 entries"):
        _compiled.predict_proba(np.zeros(57), sizes, X, np.empty((4, 120)), np.zeros(16), 429496730)


@pytest.mark.parametrize("field,value,message", [
    ("labels", np.array([0, 1, 3, 0, 0, 0, 0, 0, 0, 0], np.intp), r"labels has the value 3 at 2, outside \[0, 3\)"),
    ("labels", np.array([0, -1] + [0] * 8, np.intp), r"labels has the value -1 at 1"),
    ("order", np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10], np.intp), r"order has the value 10 at 9, outside \[0, 10\)"),
])
def test_indices_out_of_range_are_refused(field, value, message):
    args = _train_args()
    args[field] = value
    before = args["params"].copy()
    with pytest.raises(ValueError, match=message):
        _compiled.train_batches(*args.values())
    np.testing.assert_array_equal(args["params"], before)


@pytest.mark.parametrize("kwargs,message", [
    ({"sample_weight": np.ones(9)}, "sample_weight has 9 entries for 10 rows"),
    ({"sample_weight": np.ones(10)}, "weight_work must hold at least 4 weights"),
    ({"sample_weight": np.ones(10), "weight_work": np.ones(3)}, "weight_work must hold at least 4"),
    ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\]"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_the_training_extras_are_checked(kwargs, message):
    args = _train_args()
    before = args["params"].copy()
    with pytest.raises(ValueError, match=message):
        _compiled.train_batches(*args.values(), **kwargs)
    np.testing.assert_array_equal(args["params"], before)


def test_rule_state_and_schedule_must_fit_the_parameters():
    args = _train_args()
    args["rule"] = _compiled.UpdateRule(_compiled.ADAM, 0.01, first_moment=np.zeros(N_PARAMS, np.float32),
                                        second_moment=np.zeros(N_PARAMS, np.float32))
    with pytest.raises(ValueError, match="the update rule's state is 57 entries of float32"):
        _compiled.train_batches(*args.values())
    args["rule"] = _compiled.UpdateRule(_compiled.SGD, 0.1)
    args["rule"].lr_factors = np.ones(2)
    with pytest.raises(ValueError, match="lr_factors has 2 entries, fewer than the 3 batches"):
        _compiled.train_batches(*args.values())


def test_lr_factors_are_copied_not_borrowed():
    import array
    factors = array.array("d", [0.5, 0.5, 0.5])
    rule = _compiled.UpdateRule(_compiled.SGD, 0.1)
    rule.lr_factors = factors
    factors[0] = 99.0
    factors.extend([1.0] * 100000)  # the buffer moves; the rule must not read the old one
    assert rule.lr_factors.tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="lr_factors must be finite and >= 0"):
        rule.lr_factors = [1.0, -1.0]


@pytest.mark.parametrize("kwargs", [{"beta1": 1.0}, {"beta2": -0.1}, {"eps": -1.0}, {"momentum": -0.5},
                                    {"weight_decay": float("inf")}])
def test_update_rule_settings_out_of_range_are_refused(kwargs):
    with pytest.raises(ValueError, match="settings are out of range"):
        _compiled.UpdateRule(_compiled.ADAM, 0.01, first_moment=np.zeros(3), second_moment=np.zeros(3), **kwargs)
    with pytest.raises(ValueError, match="needs a learning rate > 0"):
        _compiled.UpdateRule(_compiled.SGD, float("inf"))
