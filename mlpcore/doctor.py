"""mlpcore.doctor: find what keeps a hand-written network from learning, name it, and say the fix.

``check_backprop`` on a hand-written backprop (it names the bug), ``check_batches`` on a batch maker,
``check_data`` on the data itself; ``mlpcore.gradcheck`` holds a backprop to finite differences. Every check
returns a ``Report`` of ``Finding``s: a code, where (layer and part, for the network's checks), a message
with the numbers, and the fix. Layers are numbered like the weights list: layer 0 is W[0], the first.
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np

from . import _backprop_check as backprop
from . import _compiled, _kernels, reference
from ._training import stuck_at_chance

__all__ = ["Finding", "Report", "Monitor", "MonitorWarning", "check_backprop", "check_data", "check_batches"]

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
    try:
        Xb, Yb = np.asarray(item[0], dtype=np.float64), np.asarray(item[1])
    except (TypeError, ValueError):
        raise ValueError(f"batch {b} of epoch {epoch}: Xb is not an array of numbers") from None
    if Xb.ndim != 2 or Xb.shape[1] != n_features or Yb.ndim == 0 or len(Yb) != len(Xb):
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


def _one_epoch(make_batches, X_probe, Y_probe, epoch):
    """The batches make_batches gives for one epoch, at most four epochs' worth of rows (a generator that
    never ends, as Keras's are, is refused rather than followed forever)."""
    batches, rows, endless = [], 0, False
    try:
        for item in make_batches(X_probe.copy(), Y_probe.copy()):
            batches.append(item)
            rows += len(item[0]) if isinstance(item, (tuple, list)) and item and hasattr(item[0], "__len__") else 1
            if rows > 4 * len(X_probe):
                endless = True
                break
    except SystemExit as exc:
        raise ValueError(f"make_batches called sys.exit({exc.code!r})") from None
    except Exception as exc:
        raise ValueError(f"make_batches raised {type(exc).__name__}: {exc}") from exc
    if endless:
        raise ValueError(f"make_batches gave more than 4 x {len(X_probe)} rows in epoch {epoch} without ending: "
                         "it must give one epoch's batches and stop (not loop forever)")
    return batches


def check_batches(make_batches, X, Y, *, epochs=2, seed=0):
    """Run ``make_batches(X, Y)``, a user's batch maker (an iterable of (Xb, Yb) for one epoch), on inputs
    that carry their row index, and report what goes wrong.

    The doctor calls it ``epochs`` times on arrays shaped like X and Y whose every feature of row i is i
    and whose label is i mod K (one-hot rows if Y is 2-D); the batch maker may select and reorder rows but
    must not change their values. Findings: ``labels-misaligned`` (a batch's labels belong to other rows
    than its inputs: the student's shuffle bug), ``rows-dropped`` (a warning when no more than the largest
    batch is left out, as a dropped last batch is), ``rows-repeated`` within an epoch, and ``no-reshuffle``
    (a warning: every epoch visits the rows in the same order). NumPy's global generator is seeded with
    `seed` while it runs (and put back after), so a batch maker that shuffles with np.random gives the
    same report every time. Returns a Report.
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

    # A batch maker that shuffles with NumPy's global generator gives the same batches every run of the
    # doctor (its state is put back afterwards).
    saved_state = np.random.get_state()
    np.random.seed(seed)
    try:
        epochs_batches = [_one_epoch(make_batches, X_probe, Y_probe, epoch) for epoch in range(1, epochs + 1)]
    finally:
        np.random.set_state(saved_state)
    for epoch, batches in enumerate(epochs_batches, 1):
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


# -------------------------------------------------------------------------------------------------
# check_backprop

def _layer_name(layer, L):
    return f"layer {layer} (W[{layer}], the output layer)" if layer == L - 1 else f"layer {layer} (W[{layer}])"


def _layers_text(layers):
    return "layer " + str(layers[0]) if len(layers) == 1 else "layers " + ", ".join(map(str, layers))


def _bug_finding(bug, L):
    """The Finding of a bug the doctor injected and reproduced."""
    code, where = bug[0], bug[1]
    hidden_all = where == "all"
    top_hidden = L - 2
    if code == "softmax-derivative":
        return Finding(code, f"the error at the output is multiplied by a \"softmax derivative\" P * (1 - P): "
                             f"{_layer_name(L - 1, L)} and every layer below get a wrong gradient",
                       "For softmax followed by cross-entropy the error at the logits is simply P - Y (divided "
                       "by the batch size): drop the derivative factor.", layer=L - 1, part="weights")
    if code == "relu-derivative-at-zero":
        return Finding(code, f"the ReLU's derivative is taken as 1 where the pre-activation is exactly 0 "
                             f"(z >= 0) in {'every hidden layer' if hidden_all else _layer_name(where, L)}: a "
                             f"unit that output 0 passed nothing on and must get no gradient back",
                       "Use (z > 0), not (z >= 0): the derivative is 0 at 0, as in PyTorch, TensorFlow and "
                       "mlpcore.reference.", layer=top_hidden if hidden_all else where, part="weights")
    if code == "missing-relu-mask":
        return Finding(code, f"the error passed down to {'every hidden layer' if hidden_all else _layer_name(where, L)}"
                             f" is not multiplied by the ReLU's derivative: units that were off (z <= 0) get "
                             f"gradient as if they were on",
                       "Multiply the error passed down by (z > 0), z that layer's pre-activation.",
                       layer=top_hidden if hidden_all else where, part="weights")
    if code == "wrong-weights-in-backprop":
        through = (f"W[{where}][:-1] instead of its transpose" if bug[2] == "transposed" else
                   f"W[{bug[2]}] (another layer's weights) instead of W[{where}]")
        return Finding(code, f"the error is passed down from layer {where} to layer {where - 1} through {through}",
                       f"Pass the error down as delta @ W[{where}][:-1].T (then times the ReLU's derivative).",
                       layer=where - 1, part="weights")
    if code == "error-through-bias":
        layers = list(range(L - 1, 0, -1)) if hidden_all else [where]
        return Finding(code, f"the error passed down from {_layers_text(layers)} goes through the bias row and "
                             f"skips the first input's row: (delta @ W.T)[:, 1:] instead of [:, :-1]",
                       "The bias is W's last row and its input, the ones column, has no error to receive: pass "
                       "the error down through W[:-1] (drop the last column of delta @ W.T).",
                       layer=layers[0] - 1, part="weights")
    raise AssertionError(code)


def _factor_text(factor):
    """'3 times', 'the batch size times' ... : a Factor in words."""
    value = abs(factor.value)
    number = "" if value == 1 else f"{value:g} times "
    if factor.kind == "constant":
        return f"{value:g} times"
    return number + ("the batch size times" if factor.kind == "batch-size" else "1 / (batch size) times")


def _scale_findings(layers, factor, bias_too, L):
    """sign-flipped and/or gradient-scale for the layers (from the top) whose gradient is factor times
    the right one."""
    where = "every layer's gradient" if len(layers) == L else f"the gradient of {_layers_text(layers)}"
    part_text = "" if bias_too else " (the weights block; the bias row is right)"
    findings = []
    if factor.value == 0:
        return [Finding(
            "gradient-scale", f"{where}{part_text} is zero: nothing flows back to it", "Return the gradient "
            "computed for that layer (a list built before the backward pass, or overwritten by zeros?).",
            layer=layers[0], part="weights")]
    if factor.value < 0:
        findings.append(Finding(
            "sign-flipped", f"{where}{part_text} has the wrong sign: it points uphill, so a step along "
            f"-gradient makes the loss grow", "Return the gradient of the loss: the error at the output is "
            "P - Y, not Y - P (if your update adds lr * g, return -g).", layer=layers[0], part="weights"))
    if not (factor.kind == "constant" and abs(factor.value) == 1):
        if factor.kind == "batch-size" and abs(factor.value) == 1:
            what = "the sum over the batch, not the mean (the batch size times too large)"
        else:
            what = f"{_factor_text(factor)} the gradient of the mean cross-entropy"
        findings.append(Finding(
            "gradient-scale", f"{where}{part_text} is {what}",
            "Divide by the batch size once, at the output (delta = (P - Y) / m), and multiply by nothing "
            "else: the learning rate then means the same for every batch size.", layer=layers[0],
            part="weights"))
    return findings


def _bias_text(bias):
    """What is wrong with a bias row whose gradient matched `bias` (a Factor, or ("first-row", Factor))."""
    if isinstance(bias, tuple):
        what = "the error of the batch's first row only"
    elif bias.value == 0:
        what = "zero: the bias gets no gradient"
    elif bias.kind == "constant" and bias.value == -1:
        what = "of the wrong sign"
    elif bias.kind == "per-row" and bias.value == 1:
        what = "the mean of the rows' errors, where their sum belongs (delta already carries 1 / m)"
    elif bias.kind == "batch-size" and bias.value == 1:
        what = "the batch size times too large (a sum over the batch not divided by it)"
    else:
        what = f"{_factor_text(bias)} what it should be"
    return what


def _bias_finding(layers, what, L):
    where = "every layer's bias row" if len(layers) == L else (
        f"the bias row of {_layer_name(layers[0], L)}" if len(layers) == 1
        else f"the bias rows of {_layers_text(layers)}")
    return Finding("bias-gradient", f"the gradient of {where} is {what}",
                   "The bias row's gradient is the ones column times the error: delta.sum(axis=0), with delta "
                   "the same error (already divided by the batch size) as the weights'.", layer=layers[0],
                   part="bias")


def _mismatch_finding(layer, part, user_grads, probes, L):
    """gradient-mismatch, with the largest difference from the exact gradient over the probes."""
    rows = slice(None, -1) if part == "weights" else slice(-1, None)
    worst = (-1.0, None, 0.0, 0.0, 0)
    for grads, probe in zip(user_grads, probes):
        exact = reference.loss_and_gradients(probe.weights, probe.X, probe.labels)[1][layer][rows]
        mine = np.asarray(grads[layer], dtype=np.float64)[rows]
        scale = max(np.abs(exact).max(), 1e-12)
        with np.errstate(invalid="ignore"):
            difference = np.where(np.isfinite(mine), np.abs(mine - exact), np.inf)
        at = np.unravel_index(np.argmax(difference), difference.shape)
        if difference[at] / scale > worst[0]:
            worst = (difference[at] / scale, at, mine[at], exact[at], len(probe.X))
    error, at, mine, exact, m = worst
    entry = (int(at[0]) if part == "weights" else "bias", int(at[1]))
    return Finding(
        "gradient-mismatch",
        f"the gradient of the {part} {'block' if part == 'weights' else 'row'} of {_layer_name(layer, L)} "
        f"differs from the exact one (on a batch of {m}: entry {entry} is {mine:.6g}, exact {exact:.6g}; "
        f"largest difference {error:.3g} of the part's largest entry), and no known bug reproduces it",
        "Compare that layer's backward step with mlpcore.reference.loss_and_gradients; mlpcore.gradcheck "
        "on your function shows which entries differ.", layer=layer, part=part)


def _check_layer_sizes(layer_sizes):
    try:
        sizes = [int(s) for s in layer_sizes]
        whole = all(float(s) == int(s) and not isinstance(s, bool) for s in layer_sizes)
    except (TypeError, ValueError):
        raise TypeError(f"layer_sizes must be a sequence of integers, got {layer_sizes!r}") from None
    if not whole:
        raise TypeError(f"layer_sizes must be a sequence of integers, got {list(layer_sizes)!r}")
    if len(sizes) < 2 or min(sizes) < 1 or sizes[-1] < 2:
        raise ValueError(f"layer_sizes must give at least the input and output sizes, each >= 1 with >= 2 "
                         f"classes, e.g. [784, 300, 300, 10]; got {sizes}")
    return sizes


def check_backprop(func, layer_sizes, *, targets="onehot", seed=0):
    """Run a hand-written ``func(weights, X, Y) -> (loss, grads)`` on probes, compare its gradients with the
    exact ones and name the bug.

    ``weights`` is a list of bias-augmented ``(n_in + 1, n_out)`` matrices (bias last row), for a ReLU
    network of ``layer_sizes`` with a softmax output and the mean cross-entropy; ``Y`` is one-hot rows
    (``targets="onehot"``) or integer labels (``targets="labels"``); ``grads`` are the gradients, shaped as
    the weights. The doctor chooses the weights and inputs: batches of 1, 3, 8 and 16 rows, hidden
    pre-activations exactly 0 in places, and logits near +-1000 in one probe. It recognises a bug by
    reproducing it: it computes what the reference gives with each known bug injected (and each pair), and
    names the variant that gives the user's numbers. Findings, each at the first layer going backwards
    whose gradient is wrong (``layer`` numbered like the weights, ``part`` "weights" or "bias"):
    ``softmax-derivative``, ``relu-derivative-at-zero``, ``missing-relu-mask``, ``sign-flipped``,
    ``gradient-scale`` (a constant factor, or a sum where the mean belongs), ``wrong-weights-in-backprop``,
    ``error-through-bias``, ``bias-gradient``, ``softmax-overflow`` (NaN or infinity with large logits), and
    ``gradient-mismatch`` when no known bug reproduces the numbers. A correct function gets no finding.

    Gradients returned in float32 are compared to a relative 1e-4, float64 ones to 1e-7. Raises ValueError
    when func raises or returns something that is not (loss, one gradient per layer of the right shape).
    """
    if not callable(func):
        raise TypeError("func must be callable: func(weights, X, Y) -> (loss, grads)")
    sizes = _check_layer_sizes(layer_sizes)
    if targets not in ("onehot", "labels"):
        raise ValueError(f"targets must be 'onehot' or 'labels', got {targets!r}")
    L = len(sizes) - 1
    probes = backprop.make_probes(sizes, seed)
    losses, user, dtypes = zip(*[backprop.call_user(func, probe, targets) for probe in probes])
    again = backprop.call_user(func, probes[-2], targets)
    if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(again[1], user[-2])):
        return Report("check_backprop", [Finding(
            "not-deterministic", "the function returned different gradients for the same weights and inputs, "
            "called twice: dropout, a random generator, a global state or a cache inside it",
            "Check a function that computes the same thing every time: turn dropout off (or fix its mask) "
            "and keep state out of it; then its gradients can be compared.")])
    finite = [all(np.isfinite(g).all() for g in grads) for grads in user]
    findings = []
    for grads, probe, ok in zip(user, probes, finite):
        if not ok and not probe.large_logits:
            layer = max(i for i, g in enumerate(grads) if not np.isfinite(g).all())
            return Report("check_backprop", [Finding(
                "gradient-mismatch", f"the gradient of {_layer_name(layer, L)} holds NaN or infinity on a "
                f"batch of {len(probe.X)} with moderate inputs", "Look for a division by zero or a log of 0 "
                "in that layer's backward step.", layer=layer, part="weights")])
    if not all(finite):
        findings.append(Finding(
            "softmax-overflow", "with logits near +-1000 the gradients hold NaN or infinity: exp overflows in "
            "a softmax that does not subtract each row's largest logit",
            "Compute exp(z - z.max(axis=1, keepdims=True)): the same softmax, and it cannot overflow.",
            layer=L - 1, part="weights"))
        kept = [i for i, ok in enumerate(finite) if ok]
        probes, user = [probes[i] for i in kept], [user[i] for i in kept]
    tolerance = backprop.tolerance_for([d for ds in dtypes for d in ds])
    if _right_with_bias_first(probes, user, tolerance):
        return Report("check_backprop", _loss_findings(losses, probes, tolerance, backprop.bias_first) + [Finding(
            "bias-row-first", "your function takes the bias from the first row of each W (a ones column "
            "prepended to each layer's input), and its gradients are right in that layout; mlpcore's layout, "
            "and the doctor's, has the bias as the last row, so nothing else was checked",
            "Append the ones column instead of prepending it (bias last), or keep your layout and move the "
            "row when exchanging weights with mlpcore: np.vstack([W[1:], W[:1]]).", severity="warning")])
    bugs, matches = backprop.search(sizes, probes, user, tolerance)
    explained = [layer for layer in range(L - 1, -1, -1) if matches[layer] is not None]
    findings += [_bug_finding(bug, L) for bug in sorted(bugs, key=str)]
    # Layers whose weights are off by the same factor are one finding, at the top one.
    run = []
    for layer in explained + [None]:
        factor = matches[layer].weights if layer is not None else None
        if run and not matches[run[0]].weights.same_as(factor):
            first = matches[run[0]].weights
            findings += _scale_findings(run, first, all(first.same_as(matches[i].bias) for i in run), L)
            run = []
        if factor is not None and not factor.is_one:
            run.append(layer)
    # Bias rows wrong in the same way are one finding, at the top one.
    wrong_bias = []
    for layer in explained:
        bias, weights = matches[layer].bias, matches[layer].weights
        if bias is None:
            findings.append(_mismatch_finding(layer, "bias", user, probes, L))
        elif not weights.same_as(bias) and not backprop.ONE.same_as(bias):
            what = _bias_text(bias)
            if wrong_bias and wrong_bias[-1][1] == what and wrong_bias[-1][0][-1] == layer + 1:
                wrong_bias[-1][0].append(layer)
            else:
                wrong_bias.append(([layer], what))
    findings += [_bias_finding(layers, what, L) for layers, what in wrong_bias]
    if len(explained) < L:
        findings.append(_mismatch_finding(L - 1 - len(explained), "weights", user, probes, L))
    findings += _loss_findings(losses, probes, tolerance)
    findings.sort(key=lambda f: (f.layer is None, -(f.layer or 0)))  # backwards from the output, the loss last
    return Report("check_backprop", findings)


def _right_with_bias_first(probes, user, tolerance):
    """Whether the user's gradients are exactly right for a function that keeps the bias in the first row."""
    for probe, grads in zip(probes, user):
        exact = reference.loss_and_gradients(backprop.bias_first(probe.weights), probe.X, probe.labels)[1]
        for g, e, scale in zip(grads, exact, probe.scales):
            if np.linalg.norm(g - np.vstack([e[-1:], e[:-1]])) > tolerance * (np.linalg.norm(e) + scale):
                return False
    return True


def _loss_findings(losses, probes, tolerance, layout=lambda weights: weights):
    """Warnings when the loss returned is not the mean cross-entropy (it does not change the gradients,
    but a loss curve, or early stopping reading it, would be off). `layout` maps the probe's weights to
    the network the function sees (backprop.bias_first for a function that takes the bias first)."""
    ratios, first_off = [], None
    for loss, probe in zip(losses, probes):
        if probe.large_logits:
            continue
        exact = reference.loss(layout(probe.weights), probe.X, probe.labels)
        ratio = loss / exact if np.isfinite(loss) and exact > 0 else np.nan
        ratios.append((ratio, len(probe.X)))
        if first_off is None and not abs(ratio - 1) <= 10 * tolerance:
            first_off = (loss, exact, len(probe.X))
    if first_off is None:
        return []
    if all(abs(r / m - 1) <= 10 * tolerance for r, m in ratios):
        return [Finding("loss-scale", "the loss returned is the sum over the batch, where the gradients are "
                        "those of the mean: a loss curve then grows with the batch size",
                        "Return the mean cross-entropy: divide the summed loss by the batch size.",
                        severity="warning")]
    loss, exact, m = first_off
    return [Finding("loss-mismatch", f"the loss returned is not the mean cross-entropy (on a batch of {m}: "
                    f"{loss:.6g}, exact {exact:.6g}); the gradients are checked on their own",
                    "Return -mean(sum(Y * log_softmax(Z), axis=1)) with Z the logits; a loss curve or early "
                    "stopping that reads a wrong loss misleads.", severity="warning")]


# -------------------------------------------------------------------------------------------------
# Monitor: training health, once per epoch

def _norm(matrix):
    """The Frobenius norm, without BLAS (np.linalg.norm's dot would wake NumPy's BLAS threads)."""
    return float(np.sqrt(np.einsum("ij,ij->", matrix, matrix, dtype=np.float64)))


class MonitorWarning(UserWarning):
    """A finding of mlpcore.doctor.Monitor, as a warning while training runs."""


class Monitor:
    """A callback for ``fit(..., on_epoch_end=Monitor())`` that watches training's health.

    After every epoch it runs the network on one fixed batch of the training rows (``rows`` of them, drawn
    once) and records per layer: the fraction of dead ReLUs (units that output 0 for every row of the
    batch), the spread (standard deviation) of the hidden activations, the gradient's norm, and the
    update-to-weight ratio: how far the epoch moved the layer's weights, ||W_end - W_start|| / ||W_start||,
    per step, divided by the square root of the epoch's steps (SGD's steps are mostly noise, and n of them
    add up to about sqrt(n) times one). It warns (MonitorWarning, once per code and layer in a fit) with a
    finding when:

    - ``not-learning``: the loss stayed within 1% of ln K (chance) for 3 epochs;
    - ``lr-too-high``: the loss grew 3 epochs in a row;
    - ``dead-relus``: over 90% of a hidden layer's units are dead;
    - ``updates-too-small`` / ``updates-too-large``: a layer's update ratio is below 1e-5 (while the
      learning rate is at least half its largest in the fit: not at the end of a decaying schedule) or
      above 1e-1.

    ``records`` holds one dict per epoch, ``findings`` what was found, both of the last fit (a Monitor
    passed to another fit starts again); ``report()`` returns them as a Report. With ``warn=False`` it
    only records. Its cost is a forward pass and a gradient on the batch
    and a copy of the weights: about 1% of an epoch of the student's network at the default ``rows``.
    """

    #: Epochs within 1% of chance (ln K) that are "not learning".
    PATIENCE = 3
    DEAD_ABOVE = 0.9
    UPDATE_RANGE = (1e-5, 1e-1)

    def __init__(self, *, rows=256, seed=0, warn=True):
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
            raise ValueError(f"rows must be an integer >= 1, got {rows!r}")
        self.rows, self.seed, self.warn = int(rows), seed, bool(warn)
        self.records, self.findings = [], []
        self._net = None

    def on_fit_begin(self, network, X, y, batches_per_epoch):
        """Called by fit before the first epoch: draws the monitored batch, notes the starting weights."""
        n = X.shape[0]
        rows = np.sort(np.random.default_rng(self.seed).choice(n, size=min(self.rows, n), replace=False))
        self._net, self._X, self._y = network, X[rows], y[rows]
        self._steps = batches_per_epoch
        self._previous = [W.copy() for W in network.weights]
        self.records, self.findings = [], []

    def __call__(self, history):
        if self._net is None:
            raise RuntimeError("Monitor must be passed to fit as on_epoch_end (fit tells it the network and "
                               "the data before the first epoch)")
        net = self._net
        weights = net.weights
        layers = []
        # The products run in the compiled core's BLAS, as training does, never in NumPy's: NumPy's own
        # BLAS threads, once woken, spin on the cores the next epoch's team needs (4x this call's cost).
        a = self._X
        relu = net.activation == "relu"
        for i, W in enumerate(weights[:-1]):
            z = np.empty((a.shape[0], W.shape[1]), dtype=a.dtype)
            _kernels.dense_forward(a, W, z, _compiled.ACTIVATIONS["identity"], 0, W.shape[1])
            a = reference.ACTIVATIONS[net.activation][0](z)
            # Dead units are ReLU's: tanh and logistic units saturate, but still pass a gradient.
            layers.append({"layer": i, "dead_relus": float((z <= 0).all(axis=0).mean()) if relu else None,
                           "activation_std": float(a.std())})
        layers.append({"layer": len(weights) - 1, "dead_relus": None, "activation_std": None})
        _, grads = net.loss_and_gradients(self._X, self._y)
        for record, W, G, before in zip(layers, weights, grads, self._previous):
            start = _norm(before)
            record["gradient_norm"] = _norm(G)
            record["update_ratio"] = _norm(W - before) / start / math.sqrt(self._steps) if start else math.inf
            np.copyto(before, W)
        self.records.append({"epoch": history.epoch[-1], "loss": history.loss[-1], "layers": layers})
        lr_full = not history.lr or history.lr[-1] >= 0.5 * max(history.lr)
        for finding in self._findings(history.loss, net.n_classes, layers, lr_full,
                                      net.loss_function == "cross_entropy"):
            if not any(f.code == finding.code and f.layer == finding.layer for f in self.findings):
                self.findings.append(finding)
                if self.warn:  # stacklevel 5: the user's call of fit (through train_epochs, _fit, fit)
                    warnings.warn(f"epoch {history.epoch[-1]}: {finding}", MonitorWarning, stacklevel=5)

    def _findings(self, losses, n_classes, layers, lr_full, softmax):
        chance = math.log(n_classes)
        recent = losses[-self.PATIENCE:]
        # Chance, ln K, is the softmax head's loss of a network that knows nothing; no other head's.
        if softmax and stuck_at_chance(losses, n_classes, self.PATIENCE):
            yield Finding(
                "not-learning", f"the loss has stayed at {recent[-1]:.4f}, within 1% of ln {n_classes} = "
                f"{chance:.4f} (chance), for {self.PATIENCE} epochs",
                "Check the gradients (mlpcore.doctor.check_backprop) and the data (check_data, check_batches); "
                "if they are right, the signal vanishes: use He initialisation instead of tiny weights, or a "
                "larger learning rate.", severity="warning")
        if len(losses) > self.PATIENCE and all(losses[-k] > losses[-k - 1] for k in range(1, self.PATIENCE + 1)):
            yield Finding(
                "lr-too-high", f"the loss grew {self.PATIENCE} epochs in a row, to {losses[-1]:.4f}",
                "Lower the learning rate (by 3x to 10x), or use a schedule that decays it.", severity="warning")
        low, high = self.UPDATE_RANGE
        for record in layers:
            layer, dead, ratio = record["layer"], record["dead_relus"], record["update_ratio"]
            if dead is not None and dead > self.DEAD_ABOVE:
                yield Finding(
                    "dead-relus", f"{100 * dead:.0f}% of layer {layer}'s ReLUs output 0 for every row of the "
                    f"monitored batch: they get no gradient and never come back", "Lower the learning rate, "
                    "use He initialisation, and scale the inputs; a large negative bias also kills units.",
                    layer=layer, part="weights", severity="warning")
            if ratio < low and lr_full:
                yield Finding(
                    "updates-too-small", f"layer {layer}'s weights move {ratio:.2g} of their size per step "
                    f"(below {low:g}): it barely learns", "Raise the learning rate, or check that the "
                    "gradient reaching this layer is not vanishing (tiny initial weights do that).",
                    layer=layer, part="weights", severity="warning")
            elif ratio > high:
                yield Finding(
                    "updates-too-large", f"layer {layer}'s weights move {ratio:.2g} of their size per step "
                    f"(above {high:g})", "Lower the learning rate.", layer=layer, part="weights", severity="warning")

    def report(self):
        return Report("Monitor", self.findings)
