"""mlpcore.gradcheck: central finite differences against any hand-written backprop in mlpcore's layout.

The function checked takes ``(weights, X, Y)`` and returns ``(loss, grads)``: ``weights`` and ``grads`` are
lists of bias-augmented matrices, ``(n_in + 1, n_out)`` with the bias as the last row, as in
``mlpcore.reference`` and the student's code. Each layer's weights block and bias row are checked on their
own, in float64, so a report says which part of which layer is wrong. The first piece of the doctor
(issue 12); ``mlpcore.doctor`` builds on it.
"""
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["gradcheck", "GradcheckReport", "PartCheck"]

#: Entries checked per part (weights block or bias row) when n_samples is None; smaller parts are checked
#: whole.
DEFAULT_SAMPLES = 200
#: Largest relative error that passes. Central differences in float64 with eps = 1e-6 are good to about
#: 1e-9 on a smooth loss; a ReLU kink crossed by the step gives larger errors, rarely above this.
TOLERANCE = 1e-4
# Gradients smaller than this are compared absolutely (relative errors of noise are meaningless).
_FLOOR = 1e-6


@dataclass(frozen=True)
class PartCheck:
    """One part of one layer: its weights block (``W[:-1]``) or its bias row (``W[-1]``)."""
    layer: int
    part: str               # "weights" or "bias"
    checked: int            # entries compared
    total: int              # entries in the part
    max_relative_error: float
    worst_entry: tuple      # (row, column) in the layer's matrix of the largest error
    analytic: float         # the function's gradient there
    numeric: float          # the finite difference there
    ok: bool


class GradcheckReport:
    """What gradcheck found: ``parts`` (a PartCheck per layer and part, layer 0 first), ``ok``, ``eps``,
    ``tolerance``; ``str(report)`` is a table."""

    def __init__(self, parts, eps, tolerance):
        self.parts, self.eps, self.tolerance = list(parts), eps, tolerance

    @property
    def ok(self):
        return all(part.ok for part in self.parts)

    @property
    def failures(self):
        return [part for part in self.parts if not part.ok]

    def __str__(self):
        lines = [f"gradcheck: central differences, eps {self.eps:g}, tolerance {self.tolerance:g} "
                 f"(largest relative error per part)",
                 f"{'layer':>5}  {'part':<7}  {'checked':>13}  {'max rel. error':>14}  {'analytic':>12}  "
                 f"{'numeric':>12}  result"]
        for p in self.parts:
            lines.append(f"{p.layer:>5}  {p.part:<7}  {f'{p.checked}/{p.total}':>13}  {p.max_relative_error:>14.3e}"
                         f"  {p.analytic:>12.5g}  {p.numeric:>12.5g}  {'ok' if p.ok else 'FAIL'}")
        lines.append("all gradients agree" if self.ok else
                     "wrong: " + ", ".join(f"layer {p.layer} {p.part}" for p in self.failures))
        return "\n".join(lines)

    def __repr__(self):
        return f"<GradcheckReport ok={self.ok} parts={len(self.parts)}>"


def _weights_list(weights):
    if isinstance(weights, np.ndarray) or not hasattr(weights, "__len__") or len(weights) == 0:
        raise TypeError("weights must be a non-empty list of (n_in + 1, n_out) matrices, one per layer")
    arrays = []
    for i, W in enumerate(weights):
        W = np.array(W, dtype=np.float64)  # a copy: the user's arrays are never touched
        if W.ndim != 2 or W.shape[0] < 2 or W.shape[1] < 1:
            raise ValueError(f"weights[{i}] must be a (n_in + 1, n_out) matrix with the bias as its last row, "
                             f"got shape {W.shape}")
        if i > 0 and W.shape[0] != arrays[-1].shape[1] + 1:
            raise ValueError(f"weights[{i}] has {W.shape[0]} rows, but the layer below has "
                             f"{arrays[-1].shape[1]} outputs: expected {arrays[-1].shape[1] + 1} rows (bias last)")
        if not np.isfinite(W).all():
            raise ValueError(f"weights[{i}] contains NaN or infinity")
        arrays.append(W)
    return arrays


def call_function(func, weights, X, Y, what=""):
    """func on copies of weights and X: its (loss as a float, grads as returned), or a ValueError saying how
    it broke the contract (`what` says on which inputs). Shared by gradcheck and doctor.check_backprop."""
    where = f" {what}" if what else ""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = func([W.copy() for W in weights], X.copy(), Y)
    except SystemExit as exc:
        raise ValueError(f"the function called sys.exit({exc.code!r}){where}: a function to check must "
                         "return (loss, grads)") from None
    except Exception as exc:
        raise ValueError(f"the function raised {type(exc).__name__}{where}: {exc}") from exc
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ValueError(f"the function must return (loss, grads);{where} it returned {type(result).__name__}")
    try:
        loss = float(np.asarray(result[0], dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        raise ValueError(f"the function's loss must be one number;{where} it returned "
                         f"{type(result[0]).__name__} of shape {np.shape(result[0])}") from None
    return loss, result[1]


def checked_gradients(grads, weights):
    """grads as float64 arrays, one per layer shaped as its weights, and the dtypes they came in; a
    ValueError saying what is wrong otherwise."""
    L = len(weights)
    try:
        grads = list(grads) if not isinstance(grads, np.ndarray) else None
    except Exception:  # noqa: BLE001  (a user object whose iteration raises)
        grads = None
    if grads is None or len(grads) != L:
        count = len(grads) if grads is not None else "no list of"
        raise ValueError(f"the function returned {count} gradients for {L} layers: it must return (loss, grads), "
                         f"in that order, with one (n_in + 1, n_out) matrix per layer, bias row last")
    checked, dtypes = [], []
    for i, (g, W) in enumerate(zip(grads, weights)):
        try:
            g = np.asarray(g)
            if g.dtype.kind not in "biuf":
                raise TypeError
        except Exception:  # noqa: BLE001
            raise ValueError(f"gradient {i} is not an array of real numbers") from None
        if g.shape != W.shape:
            raise ValueError(f"gradient {i} has shape {g.shape}, but layer {i}'s weights have shape {W.shape} "
                             f"(n_in + 1, n_out), bias row last")
        dtypes.append(g.dtype if g.dtype.kind == "f" else np.dtype(np.float64))
        checked.append(np.asarray(g, dtype=np.float64))  # float64 from here on: no overflow in the norms
    return checked, dtypes


def _loss(func, weights, X, Y):
    """func's loss at weights, which central differences need finite."""
    loss = call_function(func, weights, X, Y)[0]
    if not np.isfinite(loss):
        raise ValueError(f"the function's loss is {loss}: not finite")
    return loss


def gradcheck(func, weights, X, Y, *, eps=None, n_samples=None, seed=0, tolerance=TOLERANCE):
    """Compare ``func(weights, X, Y) -> (loss, grads)`` with central finite differences of its own loss.

    Parameters
    ----------
    func : callable
        A hand-written loss and backprop in the bias-augmented layout: ``weights`` a list of
        ``(n_in + 1, n_out)`` matrices (bias last row), ``grads`` the same shapes. It is called on float64
        copies (it may modify them); X and Y are passed as given (X as a float64 copy).
    weights : list of array-like
        Where to check; never modified.
    eps : float, optional
        The finite-difference step (default 1e-6).
    n_samples : int, optional
        Entries checked per part (each layer's weights block and bias row) when the part has more; every
        entry of smaller parts. Default 200.
    seed : int
        Which entries are sampled.
    tolerance : float
        The largest relative error, ``|a - n| / max(|a|, |n|, 1e-6)``, that passes.

    Returns
    -------
    GradcheckReport
        ``report.ok``, ``report.parts`` (per layer: weights, then bias), ``str(report)`` a table.
    """
    weights = _weights_list(weights)
    X = np.array(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != weights[0].shape[0] - 1:
        raise ValueError(f"X must be (n_samples, {weights[0].shape[0] - 1}) for weights[0] of shape "
                         f"{weights[0].shape}, got shape {X.shape}")
    eps = 1e-6 if eps is None else float(eps)
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    n_samples = DEFAULT_SAMPLES if n_samples is None else n_samples
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    rng = np.random.default_rng(seed)

    grads, _ = checked_gradients(call_function(func, weights, X, Y)[1], weights)
    bad = [i for i, g in enumerate(grads) if not np.isfinite(g).all()]
    if bad:
        raise ValueError(f"gradient {bad[0]} contains NaN or infinity")
    parts = []
    for layer, (W, G) in enumerate(zip(weights, grads)):
        for part, rows in (("weights", range(W.shape[0] - 1)), ("bias", range(W.shape[0] - 1, W.shape[0]))):
            entries = [(r, c) for r in rows for c in range(W.shape[1])]
            total = len(entries)
            if total > n_samples:
                entries = [entries[k] for k in np.sort(rng.choice(total, size=n_samples, replace=False))]
            worst = (-1.0, entries[0], 0.0, 0.0)
            for r, c in entries:
                saved = W[r, c]
                W[r, c] = saved + eps
                plus = _loss(func, weights, X, Y)
                W[r, c] = saved - eps
                minus = _loss(func, weights, X, Y)
                W[r, c] = saved
                numeric = (plus - minus) / (2 * eps)
                analytic = G[r, c]
                error = abs(analytic - numeric) / max(abs(analytic), abs(numeric), _FLOOR)
                if error > worst[0]:
                    worst = (error, (r, c), analytic, numeric)
            parts.append(PartCheck(layer, part, len(entries), total, worst[0], worst[1], worst[2], worst[3],
                                   worst[0] <= tolerance))
    return GradcheckReport(parts, eps, tolerance)
