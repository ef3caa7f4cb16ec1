"""mlpcore.doctor: find what keeps a hand-written network from learning, name it, and say the fix.

So far (issue 12, in progress): ``check_data`` on the data itself, ``check_batches`` on a batch maker. ``mlpcore.gradcheck`` checks a
hand-written backprop against finite differences. Every check returns a ``Report`` of ``Finding``s: a code,
where (layer and part, for the network's checks), a message with the numbers, and the fix.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["Finding", "Report", "check_data", "check_batches"]

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


def _batch_indices(item, b, epoch, n_features, n, n_classes, onehot):
    """The row indices a batch (Xb, Yb) of the probe carries, and how many of its labels are not theirs."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"make_batches must yield pairs (Xb, Yb); batch {b} of epoch {epoch} is "
                         f"{type(item).__name__}")
    Xb, Yb = np.asarray(item[0], dtype=np.float64), np.asarray(item[1])
    if Xb.ndim != 2 or Xb.shape[1] != n_features or len(Yb) != len(Xb):
        raise ValueError(f"batch {b} of epoch {epoch}: Xb has shape {Xb.shape} and Yb {Yb.shape}; expected "
                         f"(m, {n_features}) and m targets")
    index = Xb[:, 0]
    if not ((Xb == index[:, None]).all() and (index == np.round(index)).all() and (index >= 0).all()
            and (index < n).all()):
        raise ValueError("make_batches changed the values of X (scaled or transformed them?): the doctor gives "
                         "it rows that carry their own index, and needs them back as given, only selected and "
                         "reordered")
    index = index.astype(np.int64)
    labels = Yb.argmax(axis=1) if onehot else Yb.astype(np.int64)
    return index, int((labels != index % n_classes).sum())


def check_batches(make_batches, X, Y, *, epochs=2):
    """Run ``make_batches(X, Y)``, a user's batch maker (an iterable of (Xb, Yb) for one epoch), on inputs
    that carry their row index, and report what goes wrong.

    The doctor calls it ``epochs`` times on arrays shaped like X and Y whose every feature of row i is i
    and whose label is i mod K (one-hot rows if Y is 2-D); the batch maker may select and reorder rows but
    must not change their values. Findings: ``labels-misaligned`` (a batch's labels belong to other rows
    than its inputs: the student's shuffle bug), ``rows-dropped`` (a warning when no more than the largest
    batch is left out, as a dropped last batch is), ``rows-repeated`` within an epoch, and ``no-reshuffle``
    (a warning: every epoch visits the rows in the same order). Returns a Report.
    """
    X = _matrix(X, "X")
    Y = np.asarray(Y)
    n = X.shape[0]
    if Y.ndim not in (1, 2) or Y.shape[0] != n:
        raise ValueError(f"Y must be {n} labels or {n} target rows, got shape {Y.shape}")
    if not callable(make_batches):
        raise TypeError("make_batches must be callable: make_batches(X, Y) -> iterable of (Xb, Yb)")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    onehot = Y.ndim == 2
    n_classes = Y.shape[1] if onehot else max(2, int(np.nanmax(Y)) + 1 if Y.dtype.kind in "biuf" else 2)
    classes = np.arange(n) % n_classes
    X_probe = np.repeat(np.arange(n, dtype=np.float64)[:, None], X.shape[1], axis=1)
    Y_probe = np.eye(n_classes)[classes] if onehot else classes
    findings, codes, orders = [], set(), []

    def add(finding):
        if finding.code not in codes:
            codes.add(finding.code)
            findings.append(finding)

    for epoch in range(1, epochs + 1):
        try:
            batches = list(make_batches(X_probe.copy(), Y_probe.copy()))
        except Exception as exc:
            raise ValueError(f"make_batches raised {type(exc).__name__}: {exc}") from exc
        if not batches:
            raise ValueError(f"make_batches gave no batch in epoch {epoch}")
        seen, misaligned, largest = [], 0, 0
        for b, item in enumerate(batches):
            index, wrong = _batch_indices(item, b, epoch, X.shape[1], n, n_classes, onehot)
            seen.append(index)
            misaligned += wrong
            largest = max(largest, len(index))
        seen = np.concatenate(seen)
        if misaligned:
            add(Finding(
                "labels-misaligned",
                f"in epoch {epoch}, {misaligned} of {len(seen)} rows were given another row's label: the "
                f"inputs and the labels were taken in different orders",
                "Index X and Y with the same permutation: order = rng.permutation(n), then "
                "X[order[start:stop]] and Y[order[start:stop]]."))
        counts = np.bincount(seen, minlength=n)
        dropped, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        if dropped:
            add(Finding(
                "rows-dropped", f"epoch {epoch} never visited {dropped} of {n} rows (e.g. row "
                f"{int(np.flatnonzero(counts == 0)[0])})",
                "Cover every row each epoch: let the last batch be shorter instead of leaving it out.",
                severity="warning" if dropped <= largest else "error"))
        if repeated:
            add(Finding(
                "rows-repeated", f"epoch {epoch} visited {repeated} rows more than once (row "
                f"{int(np.flatnonzero(counts > 1)[0])} {int(counts.max())} times at most)",
                "Draw a permutation (without replacement) and cut it into batches."))
        orders.append(seen)
    if epochs > 1 and all(len(o) == len(orders[0]) and (o == orders[0]).all() for o in orders[1:]):
        in_place = len(orders[0]) == n and (orders[0] == np.arange(n)).all()
        add(Finding(
            "no-reshuffle",
            "every epoch visited the rows in the same order" + (", X's own" if in_place else ""),
            "Draw a new permutation at the start of every epoch (rng.permutation(n)), from one generator "
            "created once, not re-seeded each epoch.", severity="warning"))
    return Report("check_batches", findings)
