"""Every argument check: the rules for mlpcore's inputs and options and their messages, applied in Python
before any compiled code runs (the kernels trust what they are given). Called by Network, _model_files,
datasets and the command's argparse types, so that each rule is written once."""
import numbers
import warnings

import numpy as np

from . import _compiled
from ._initialisation import INITS

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Inputs larger than this are probably unscaled (raw pixels are 0..255): fit warns.
_LARGE_INPUT = 50.0
# The most rows of X that train_step and loss_and_gradients take, as one batch: BLAS takes 32-bit row counts.
_MAX_BATCH_ROWS = 2**31 - 1


def check_dtype(dtype):
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype.name!r}")
    return dtype


ACTIVATIONS = tuple(_compiled.ACTIVATIONS)  # the names the compiled core knows
LOSSES = tuple(_compiled.HEADS)


def check_activation(activation):
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")
    return activation


def check_loss(loss):
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    return loss


def check_init(init):
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def check_layer_sizes(layer_sizes, loss="cross_entropy"):
    """The sizes as a tuple of ints; softmax over classes needs 2 outputs or more, the other heads 1."""
    try:
        sizes = list(layer_sizes)
    except TypeError:
        raise TypeError(f"layer_sizes must be a sequence of integers, got {layer_sizes!r}") from None
    if len(sizes) < 2:
        raise ValueError(
            f"layer_sizes must hold at least the input and output sizes, got {sizes!r}")
    for size in sizes:
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, numbers.Integral):
            raise TypeError(f"layer_sizes must be integers, got {size!r} in {sizes!r}")
        if size < 1:
            raise ValueError(f"every layer size must be >= 1, got {int(size)} in {sizes!r}")
        if size >= 2**31:
            raise ValueError(f"layer sizes must be < 2**31 (BLAS takes 32-bit sizes), got {int(size)}")
    if sizes[-1] < 2 and loss == "cross_entropy":
        raise ValueError(f"the output layer needs at least 2 classes, got {int(sizes[-1])}")
    return tuple(int(s) for s in sizes)


def check_integer_at_least(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive_int(value, name):
    return check_integer_at_least(value, name, 1)


def check_learning_rate(lr):
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real):
        raise TypeError(f"lr must be a real number, got {lr!r}")
    lr = float(lr)
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    return lr


def check_real(value, name, *, low=None, high=None, low_open=False, high_open=False):
    """A finite real number, within [low, high] (or open at either end) where given."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if high is None:
            wanted = f"{'>' if low_open else '>='} {low:g}"
        else:
            wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {wanted}, got {value:g}")
    return value


def check_seed(seed):
    """None or a non-negative integer, as numpy's default_rng takes."""
    if seed is None:
        return None
    return check_integer_at_least(seed, "seed", 0)


#: More threads than this is a typo (BLAS libraries take a C int, and no machine has this many cores).
MAX_THREADS = 2**16


def check_threads(threads):
    if threads is None:
        return None
    threads = check_positive_int(threads, "threads")
    if threads > MAX_THREADS:
        raise ValueError(f"threads must be at most {MAX_THREADS}, got {threads}")
    return threads


def check_callback(callback, name):
    if callback is not None and not callable(callback):
        raise TypeError(f"{name} must be callable or None, got {callback!r}")
    return callback


def check_validation_pair(validation_data):
    """fit's validation_data as a pair (X_val, y_val), to be checked like X and y."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError("validation_data must be a pair (X_val, y_val)")
    return validation_data


def warn_if_unscaled(largest):
    """Warn, from fit, that X looks unscaled if its largest |x| is `largest`."""
    if largest > _LARGE_INPUT:
        warnings.warn(f"X has values as large as {largest:g}: unscaled inputs make training "
                      "slow or unstable. Scale them (X / 255 for pixels) or standardise them.",
                      stacklevel=4)  # at fit's caller (through Network._fit and fit)


def _as_real_array(a, name):
    """np.asarray(a), rejecting what is not real numbers."""
    arr = np.asarray(a)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must hold numbers; it has dtype object with non-numeric "
                            f"entries") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def check_finite(arr, name):
    """Refuse arr if it holds NaN or infinity, naming which."""
    if not np.isfinite(arr).all():
        what = "NaN" if np.isnan(arr).any() else "infinity or a value too large for " + arr.dtype.name
        raise ValueError(f"{name} contains {what}")


def _finite_array(arr, dtype, name):
    """arr as a C-contiguous array of `dtype`, refused if it holds NaN or infinity (a value too large for
    dtype becomes infinity, and is refused as such)."""
    with np.errstate(over="ignore"):
        arr = np.ascontiguousarray(arr, dtype=dtype)
    check_finite(arr, name)
    return arr


def check_X(X, n_features, dtype, *, return_max_abs=False, one_batch=False, workers=1, finite=True):
    """X as a C-contiguous array of `dtype` with shape (n, n_features); copies only if needed.

    With finite=False, X is not scanned for NaN and infinity: for inference, whose compiled pass finds
    them at a fraction of the cost (the caller then calls check_finite).

    With return_max_abs, returns (X, the largest |x|), found in the same pass as the finiteness check,
    which `workers` threads share.
    With one_batch, X is to be trained on as one batch, which holds at most _MAX_BATCH_ROWS rows.
    """
    arr = _as_real_array(X, "X")
    if arr.ndim != 2:
        hint = " (for a single sample use X.reshape(1, -1))" if arr.ndim == 1 else ""
        raise ValueError(f"X must be a 2-D array of shape (n_samples, n_features), "
                         f"got {arr.ndim}-D with shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"X is empty: it has 0 samples (shape {arr.shape})")
    if arr.shape[1] != n_features:
        raise ValueError(
            f"X has {arr.shape[1]} features, but the network expects {n_features}")
    if one_batch and arr.shape[0] > _MAX_BATCH_ROWS:
        # Before the conversion below: X would be copied, at many gigabytes, only to be refused.
        raise ValueError(f"X has {arr.shape[0]} rows, but one batch holds at most {_MAX_BATCH_ROWS} (BLAS "
                         f"takes 32-bit row counts): split X into batches of at most {_MAX_BATCH_ROWS} rows")
    with np.errstate(over="ignore"):  # a value too large for dtype becomes inf, reported just below
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if not finite:
        return arr
    # One compiled pass and no temporary: X may be most of the memory the process has.
    largest = _compiled.max_abs(arr, workers)
    if not np.isfinite(largest):
        check_finite(arr, "X")
    return (arr, largest) if return_max_abs else arr


def check_targets(y, n_samples, n_classes, dtype, loss="cross_entropy"):
    """Return (labels, targets): integer labels as intp, or target rows as `dtype`; the other is None.
    Labels are the cross-entropy head's alone; the others take target rows (1-D y for one output)."""
    if loss != "cross_entropy":
        return None, _check_target_rows(y, n_samples, n_classes, dtype, loss)
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf" and arr.dtype != object:
        raise TypeError(f"y must hold integer class labels or rows of target probabilities, "
                        f"got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"y must be 1-D labels of shape (n,) or 2-D targets of shape (n, "
                         f"{n_classes}), got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"X and y have different numbers of samples: X has {n_samples}, "
                         f"y has {arr.shape[0]}")
    arr = _as_real_array(arr, "y")
    if arr.ndim == 1:
        if arr.dtype.kind == "b":
            raise TypeError("y must hold integer class labels, got dtype bool")
        if arr.dtype.kind == "f":
            check_finite(arr, "y")
            if not np.array_equal(arr, np.round(arr)):
                bad = arr[arr != np.round(arr)][0]
                raise ValueError(f"y must hold integer class labels, got the non-integer value {bad}")
        low, high = arr.min(), arr.max()
        if low < 0 or high >= n_classes:
            bad = low if low < 0 else high
            raise ValueError(f"y contains the label {bad:g}, but the network has {n_classes} "
                             f"classes: labels must be in [0, {n_classes})")
        return np.ascontiguousarray(arr, dtype=np.intp), None
    if arr.shape[1] != n_classes:
        raise ValueError(f"y has target rows of width {arr.shape[1]}, but the network has "
                         f"{n_classes} outputs")
    targets = _finite_array(arr, dtype, "y")
    if (targets < 0).any():
        raise ValueError("y contains negative target probabilities")
    sums = targets.sum(axis=1, dtype=np.float64)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > 1e-4:
        raise ValueError(f"every target row of y must sum to 1 (a probability distribution); "
                         f"row {worst} sums to {sums[worst]:g}")
    return None, targets


def _check_target_rows(y, n_samples, n_outputs, dtype, loss):
    """Targets of the heads other than softmax: (n_samples, n_outputs) rows of finite values, in [0, 1]
    for binary cross-entropy, >= 0 for Poisson."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"y must be numeric targets for loss={loss!r}, got dtype {arr.dtype}")
    if arr.ndim == 1 and n_outputs == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_outputs:
        raise ValueError(f"y must be targets of shape (n, {n_outputs})" + (" or (n,)" if n_outputs == 1 else "")
                         + f" for loss={loss!r}, got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"X and y have different numbers of samples: X has {n_samples}, "
                         f"y has {arr.shape[0]}")
    targets = _finite_array(arr.astype(dtype, copy=False) if arr.dtype.kind == "b" else arr, dtype, "y")
    if loss == "binary_cross_entropy" and ((targets < 0).any() or (targets > 1).any()):
        raise ValueError("y must hold targets in [0, 1] for loss='binary_cross_entropy'")
    if loss == "poisson" and (targets < 0).any():
        raise ValueError("y must hold targets >= 0 for loss='poisson'")
    return targets


def check_sample_weight(sample_weight, n_samples, dtype):
    """None, or per-row weights as a C-contiguous array of `dtype`: finite, >= 0, not all 0."""
    if sample_weight is None:
        return None
    arr = _as_real_array(sample_weight, "sample_weight")
    if arr.ndim != 1 or arr.shape[0] != n_samples:
        raise ValueError(f"sample_weight must have shape ({n_samples},), one weight per row of X, got "
                         f"shape {arr.shape}")
    arr = _finite_array(arr, dtype, "sample_weight")
    if (arr < 0).any():
        raise ValueError(f"sample_weight must be >= 0, got {arr[arr < 0][0]:g}")
    if not arr.any():
        raise ValueError("sample_weight is 0 for every row: there is nothing to train on")
    return arr


def check_weights(weights, layer_sizes, dtype):
    """A list of arrays of `dtype` with the bias-augmented shapes of `layer_sizes`."""
    if isinstance(weights, np.ndarray) or not hasattr(weights, "__len__"):
        raise TypeError("weights must be a list of arrays, one per layer")
    expected = [(n_in + 1, n_out) for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:])]
    if len(weights) != len(expected):
        raise ValueError(f"expected {len(expected)} weight arrays for layer sizes "
                         f"{list(layer_sizes)}, got {len(weights)}")
    checked = []
    for i, (W, shape) in enumerate(zip(weights, expected)):
        arr = _as_real_array(W, f"weights[{i}]")
        if arr.shape != shape:
            raise ValueError(f"weights[{i}] has shape {arr.shape}, but layer {i} needs "
                             f"{shape} (n_in + 1, n_out): the last row is the bias")
        with np.errstate(over="ignore"):
            # Always a copy: the new arrays may be views of the very weights they replace.
            arr = arr.astype(dtype, copy=True)
        check_finite(arr, f"weights[{i}]")
        checked.append(arr)
    return checked
