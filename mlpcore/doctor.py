"""mlpcore.doctor: find what keeps a hand-written network from learning, name it, and say the fix.

So far (issue 12, in progress): ``check_data`` on the data itself. ``mlpcore.gradcheck`` checks a
hand-written backprop against finite differences. Every check returns a ``Report`` of ``Finding``s: a code,
where (layer and part, for the network's checks), a message with the numbers, and the fix.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["Finding", "Report", "check_data"]

#: Inputs whose largest magnitude is above this are reported as unscaled (raw 0..255 pixels, say).
UNSCALED_ABOVE = 10.0
#: Classes whose counts differ by more than this factor are reported as imbalanced.
IMBALANCE_RATIO = 10.0


@dataclass(frozen=True)
class Finding:
    """One thing the doctor found. ``severity`` is "error" (it keeps the network from learning or makes
    its results wrong) or "warning" (worth knowing, may be intended)."""
    code: str
    message: str
    fix: str
    severity: str = "error"
    layer: int = None
    part: str = None

    def __str__(self):
        where = f" (layer {self.layer}{' ' + self.part if self.part else ''})" if self.layer is not None else ""
        return f"{self.severity}: {self.code}{where}: {self.message}\n  fix: {self.fix}"


class Report:
    """The findings of one check: ``findings``, ``errors``, ``ok`` (no errors), and ``str(report)``."""

    def __init__(self, title, findings):
        self.title, self.findings = title, list(findings)

    @property
    def errors(self):
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self):
        return not self.errors

    def codes(self):
        return [f.code for f in self.findings]

    def __str__(self):
        if not self.findings:
            return f"{self.title}: nothing found"
        head = f"{self.title}: {len(self.errors)} error(s), {len(self.findings) - len(self.errors)} warning(s)"
        return "\n".join([head] + [str(f) for f in self.findings])

    def __repr__(self):
        return f"<Report {self.title!r} codes={self.codes()}>"


def _matrix(X, name):
    arr = np.asarray(X)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n_samples, n_features), got shape {arr.shape}")
    return arr


def _input_findings(X):
    findings = []
    bad = ~np.isfinite(X)
    if bad.any():
        rows, cols = np.nonzero(bad)
        findings.append(Finding(
            "non-finite-inputs",
            f"X holds {int(np.isnan(X).sum())} NaN and {int(np.isinf(X).sum())} infinite values, in "
            f"{len(np.unique(rows))} rows (the first at row {rows[0]}, column {cols[0]})",
            "Drop or impute those rows before training: one NaN in a batch makes every weight NaN."))
    finite = np.where(bad, 0, X) if bad.any() else X
    largest = float(np.abs(finite).max())
    if largest > UNSCALED_ABOVE:
        findings.append(Finding(
            "unscaled-inputs",
            f"X ranges from {finite.min():g} to {finite.max():g}: initial weights are scaled for inputs of "
            f"about 1, so the first layer's pre-activations and gradients come out up to {largest:.0f}x too large",
            "Scale the inputs: X / 255 for 8-bit pixels, or standardise each feature with the training "
            "set's mean and standard deviation (and apply the same to the test set)."))
    constant = np.flatnonzero(np.ptp(finite, axis=0) == 0)
    if len(constant):
        shown = ", ".join(str(c) for c in constant[:8]) + (", ..." if len(constant) > 8 else "")
        findings.append(Finding(
            "constant-features",
            f"{len(constant)} of {X.shape[1]} features never change (columns {shown}): they carry nothing",
            "Harmless to training (their weights get no gradient); drop them to save work, or check that "
            "the data was read right if you expected them to vary.", severity="warning"))
    return findings


def _target_findings(y, n):
    findings = []
    y = np.asarray(y)
    if y.shape[0] != n:
        raise ValueError(f"X and y have different numbers of samples: X has {n}, y has {y.shape[0]}")
    if y.ndim == 1:
        if y.dtype.kind not in "biuf":
            findings.append(Finding(
                "labels-not-integers", f"y holds {y.dtype} values, not integer class labels",
                "Map the classes to 0..K-1 (e.g. np.unique(y, return_inverse=True)[1])."))
            return findings
        if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
            findings.append(Finding(
                "labels-not-integers", "y holds values that are not whole numbers (or NaN)",
                "Give integer class labels 0..K-1, or one-hot rows of shape (n, K)."))
            return findings
        labels = y.astype(np.int64)
        counts = np.bincount(labels - labels.min()) if labels.min() < 0 else np.bincount(labels)
        if labels.min() < 0:
            findings.append(Finding(
                "labels-out-of-range", f"labels go down to {labels.min()}: a class index must be >= 0",
                "Map the classes to 0..K-1."))
        elif (counts == 0).any():
            missing = np.flatnonzero(counts == 0)
            findings.append(Finding(
                "labels-out-of-range",
                f"labels run from {labels.min()} to {labels.max()} but class(es) {', '.join(map(str, missing[:8]))} "
                f"never occur: the network's outputs for them are trained only to say no"
                + (" (labels starting at 1?)" if labels.min() == 1 else ""),
                "Map the classes to 0..K-1 with none missing" + (": subtract 1." if labels.min() == 1 else ".")))
        present = counts[counts > 0]
    elif y.ndim == 2:
        if y.dtype.kind not in "biuf" or not np.isfinite(y).all():
            findings.append(Finding("targets-not-distributions", "y's rows hold NaN, infinity or non-numbers",
                                    "Give one-hot rows (or probabilities) that are finite."))
            return findings
        sums = y.sum(axis=1)
        off = np.flatnonzero((np.abs(sums - 1) > 1e-6) | (y < 0).any(axis=1))
        if len(off):
            findings.append(Finding(
                "targets-not-distributions",
                f"{len(off)} of {n} target rows are not distributions (row {off[0]} sums to {sums[off[0]]:g}"
                f"{' and has negative entries' if (y[off[0]] < 0).any() else ''})",
                "Each target row must be one-hot (or probabilities >= 0 that sum to 1): build it with "
                "np.eye(K)[labels]."))
            return findings
        present = np.bincount(y.argmax(axis=1), minlength=y.shape[1])
        present = present[present > 0]
    else:
        raise ValueError(f"y must be labels of shape (n,) or target rows of shape (n, K), got shape {y.shape}")
    if len(present) > 1 and present.max() > IMBALANCE_RATIO * present.min():
        findings.append(Finding(
            "class-imbalance",
            f"the largest class has {present.max()} rows and the smallest {present.min()} "
            f"({present.max() / present.min():.0f}x)",
            "Accuracy alone will flatter the model: weigh the rows (sample_weight) or resample, and look at "
            "per-class results.", severity="warning"))
    return findings


def _shared_rows(X, X_test):
    def keys(a):
        a = np.ascontiguousarray(a, dtype=np.float64)
        return {row.tobytes() for row in a}
    train = keys(X)
    shared = sum(row.tobytes() in train for row in np.ascontiguousarray(X_test, dtype=np.float64))
    if not shared:
        return []
    return [Finding(
        "test-rows-in-training",
        f"{shared} of {len(X_test)} test rows also occur, identical, in the training set",
        "Remove them from one side: a test set that overlaps the training set overstates accuracy.")]


def check_data(X, y, X_test=None):
    """What in (X, y) keeps a network from learning or makes its results wrong.

    Finds NaN and infinity in X (``non-finite-inputs``), inputs far outside the weights' scale
    (``unscaled-inputs``: the student's raw 0..255 pixels), ``constant-features``, labels that are not
    integers (``labels-not-integers``) or not 0..K-1 with every class present (``labels-out-of-range``),
    target rows that are not distributions (``targets-not-distributions``), ``class-imbalance``, and, with
    X_test, test rows that occur in the training set (``test-rows-in-training``). Returns a Report.
    """
    X = _matrix(X, "X")
    findings = _input_findings(X) + _target_findings(y, X.shape[0])
    if X_test is not None:
        X_test = _matrix(X_test, "X_test")
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(f"X_test has {X_test.shape[1]} features, but X has {X.shape[1]}")
        findings += _shared_rows(X, X_test)
    return Report("check_data", findings)
