"""mlpcore.doctor.check_data names what is wrong with the data itself, and stays quiet on good data."""
import numpy as np
import pytest

from mlpcore import datasets, doctor


def _good(n=200, d=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, d)), np.arange(n) % k


def test_good_data_has_no_finding():
    X, y = _good()
    X_test, _ = _good(seed=1)
    report = doctor.check_data(X, y, X_test)
    assert report.ok and report.findings == []
    assert str(report) == "check_data: nothing found"
    onehot = np.eye(4)[y]
    assert doctor.check_data(X, onehot).findings == []


def _only(report, code):
    assert report.codes() == [code], str(report)
    return report.findings[0]


def test_the_students_raw_pixels_are_unscaled():
    X, y = _good()
    finding = _only(doctor.check_data(np.round(X * 255).astype(np.uint8), y), "unscaled-inputs")
    assert finding.severity == "error" and "X / 255" in finding.fix
    assert "0 to 255" in finding.message


def test_nan_and_infinity_are_located():
    X, y = _good()
    X[7, 3], X[9, 0] = np.nan, np.inf
    finding = _only(doctor.check_data(X, y), "non-finite-inputs")
    assert "1 NaN and 1 infinite values, in 2 rows (the first at row 7, column 3)" in finding.message


def test_constant_features_are_a_warning():
    X, y = _good()
    X[:, [2, 5]] = 0.5
    report = doctor.check_data(X, y)
    finding = _only(report, "constant-features")
    assert finding.severity == "warning" and report.ok
    assert "2 of 12 features" in finding.message and "columns 2, 5" in finding.message


@pytest.mark.parametrize("labels,code,words", [
    (lambda y: y + 1, "labels-out-of-range", "subtract 1"),
    (lambda y: np.where(y == 2, 3, y), "labels-out-of-range", "class(es) 2 never occur"),
    (lambda y: y - 1, "labels-out-of-range", "down to -1"),
    (lambda y: y + 0.5, "labels-not-integers", "not whole numbers"),
    (lambda y: np.array(list("abcd"))[y], "labels-not-integers", "<U1"),
])
def test_labels_that_are_not_0_to_k_minus_1(labels, code, words):
    X, y = _good()
    finding = _only(doctor.check_data(X, labels(y)), code)
    assert words in finding.message + finding.fix


def test_target_rows_that_are_not_distributions():
    X, y = _good()
    T = np.eye(4)[y]
    T[5] = [1, 1, 0, 0]
    finding = _only(doctor.check_data(X, T), "targets-not-distributions")
    assert "1 of 200 target rows" in finding.message and "row 5 sums to 2" in finding.message


def test_class_imbalance_is_a_warning():
    X, _ = _good()
    y = np.r_[np.zeros(190, int), np.ones(10, int)]
    finding = _only(doctor.check_data(X, y), "class-imbalance")
    assert finding.severity == "warning" and "190 rows and the smallest 10 (19x)" in finding.message


def test_test_rows_that_occur_in_training():
    X, y = _good()
    X_test, _ = _good(seed=1)
    X_test[[3, 8]] = X[[10, 11]]
    finding = _only(doctor.check_data(X, y, X_test), "test-rows-in-training")
    assert "2 of 200 test rows" in finding.message


@pytest.mark.parametrize("args,error,message", [
    ((np.zeros(5), np.zeros(5)), ValueError, "2-D array"),
    ((np.zeros((5, 2)), np.zeros(4)), ValueError, "X has 5, y has 4"),
    ((np.array([["a"]]), np.zeros(1)), TypeError, "must hold numbers"),
    ((np.zeros((5, 2)), np.zeros(5), np.zeros((3, 3))), ValueError, "X_test has 3 features"),
])
def test_bad_arguments_are_refused(args, error, message):
    with pytest.raises(error, match=message):
        doctor.check_data(*args)


@pytest.mark.skipif(not datasets.DEBIAN_DIR.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_fashion_mnist_raw_and_scaled():
    (X, y), (X_test, _) = datasets.load_fashion_mnist(datasets.DEBIAN_DIR, scale=False, download=False)
    assert doctor.check_data(X, y, X_test).codes() == ["unscaled-inputs"]
    assert doctor.check_data(X / 255, y, X_test / 255).findings == []
