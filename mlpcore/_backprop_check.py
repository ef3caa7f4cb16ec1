"""How doctor.check_backprop works: the probes it feeds a hand-written backprop, the reference with each
known bug injected, and the search for the variant that reproduces the user's gradients.

A diagnosis is never a guess from a ratio: the doctor computes, on the same probes, the gradients that each
known bug (and each pair of bugs) would give, and names the variant that reproduces the user's numbers.
Each layer's gradient may besides be off by a factor (a constant, or the batch size: a sum where the mean
belongs), found by least squares and reported as gradient-scale or sign-flipped. The bias row is a leaf of
the backward pass (nothing below depends on it), so its own mistakes are matched on their own.

Layers are numbered like the weights: layer i is W[i], L - 1 the output layer. The error "at layer i" is
the gradient of the loss with respect to its pre-activation z_i = [a_i, 1] @ W[i].
"""
import itertools
from dataclasses import dataclass

import numpy as np

from . import reference
from ._gradcheck import call_function, checked_gradients

#: Batch sizes of the ordinary probes: 1 (where sum and mean agree) and others, so that a factor that is
#: the batch size is told from a constant one.
BATCH_SIZES = (1, 3, 8, 16)
#: The large-logits probe: its output layer's weights are scaled by a power of two that takes its largest
#: logit to at least this, where exp overflows in float64 (above 709.8; in float32 above 88.7).
LARGE_LOGIT = 1000.0
#: Pre-activations are typically about this size in the ordinary probes (the logits: 2, so softmax is
#: neither uniform nor saturated).
_HIDDEN_SPREAD, _LOGIT_SPREAD = 1.0, 2.0
# Every third hidden unit is put exactly at 0 in one row of the batch.
_ZERO_EVERY = 3
# Integers of weights and inputs: small, so that every product and partial sum is exact.
_WEIGHT_INTEGERS = 2
# float32 holds integers up to 2**24 exactly: a pre-activation whose every partial sum is a multiple of
# 2**-bits below 2**(24 - bits) is computed exactly in float32 in any order.
_FLOAT32_BITS = 24


@dataclass
class Probe:
    weights: list           # float64, bias-augmented
    X: np.ndarray
    labels: np.ndarray
    large_logits: bool
    scales: list = None     # per layer, the size of its gradient's terms (see gradient_scales)


def _grid(rng, shape):
    """Integers in [-_WEIGHT_INTEGERS, _WEIGHT_INTEGERS], as float64."""
    return rng.integers(-_WEIGHT_INTEGERS, _WEIGHT_INTEGERS + 1, size=shape).astype(np.float64)


def _power_of_two_step(raw, spread):
    """The power of two s that makes raw * s spread about `spread` (its standard deviation)."""
    std = float(raw.std())
    return 2.0 ** np.round(np.log2(spread / std)) if std > 0 else 1.0


def make_probe(layer_sizes, m, rng, large_logits=False):
    """Weights, inputs and labels chosen so that every hidden pre-activation is exact (weights and inputs
    are small integers times powers of two) and, in every hidden layer where float32 would also compute
    them exactly, every third unit is exactly 0 in one row of the batch: where z >= 0 and z > 0 differ."""
    L = len(layer_sizes) - 1
    X = rng.integers(-1, 2, size=(m, layer_sizes[0])).astype(np.float64)
    a, bits, float32_exact = X, 0, np.ones(m, dtype=bool)
    weights = []
    for i in range(L):
        n_in, n_out = layer_sizes[i], layer_sizes[i + 1]
        integers = _grid(rng, (n_in, n_out))
        last = i == L - 1
        step = _power_of_two_step(a @ integers, _LOGIT_SPREAD if last else _HIDDEN_SPREAD)
        block = integers * step
        bias = _grid(rng, n_out) * step
        z = a @ block
        bits += max(0, int(-np.log2(step)))
        if not last:
            # The largest partial sum of each row's pre-activations, and whether float32 gets them exactly.
            bound = np.abs(a) @ np.abs(block) + np.abs(bias)
            float32_exact &= (bound * 2.0 ** bits < 2.0 ** _FLOAT32_BITS).all(axis=1)
            for j in range(0, n_out, _ZERO_EVERY):
                row = (j // _ZERO_EVERY) % m
                if float32_exact[row]:
                    bias[j] = -z[row, j]
        if last and large_logits:
            top = max(float((z + bias).max()), 1e-3)
            factor = 2.0 ** np.ceil(np.log2(LARGE_LOGIT / top))
            block, bias = block * factor, bias * factor
        W = np.vstack([block, bias])
        weights.append(W)
        a = np.maximum(z + bias, 0)
    labels = rng.integers(0, layer_sizes[-1], size=m)
    return Probe(weights, X, labels, large_logits, gradient_scales(weights, X, labels))


def gradient_scales(weights, X, labels):
    """Per layer, the size of the terms its gradient sums: rounding noise is about this times the machine
    epsilon, whatever the gradient itself (which may cancel to 0).

    That is || |[a, 1]|^T N || with N the size of the error's noise, in epsilons: at the output
    |P - T| + P + |T| (P itself is rounded: where P = T, P - T is noise of P's size), divided by the batch
    size as the error is. Below, the error's own size, plus the fresh rounding of the product it comes
    from, |delta above| @ |W[:-1]|^T (an error that cancels to 0 is noise of that size), plus the noise
    above carried down as noise is, in quadrature: sqrt(N^2 @ (W[:-1]^2)^T). A worst-case bound (absolute
    values all the way down) grows ~10x a layer faster than the gradient and soon allows anything."""
    inputs, pre_activations = reference.forward_all(weights, X)
    logits = pre_activations[-1]
    P = reference.softmax(logits)
    T = reference.targets_matrix(labels, logits.shape[1], logits.dtype)
    delta = (P - T) / len(X)
    terms = (np.abs(P - T) + P + np.abs(T)) / len(X)
    scales = [0.0] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        scales[i] = float(np.linalg.norm(np.abs(inputs[i]).T @ terms))
        if i:
            W = weights[i][:-1]
            carried = np.sqrt((terms ** 2) @ (W ** 2).T)
            terms = (np.abs(delta) @ np.abs(W).T + carried) * (pre_activations[i - 1] >= 0)
            delta = (delta @ W.T) * (pre_activations[i - 1] > 0)
            terms += np.abs(delta)
    return scales


def make_probes(layer_sizes, seed):
    rng = np.random.default_rng(seed)
    probes = [make_probe(layer_sizes, m, rng) for m in BATCH_SIZES]
    probes.append(make_probe(layer_sizes, 8, rng, large_logits=True))
    return probes


# -------------------------------------------------------------------------------------------------
# The reference with bugs injected. A bug is a tuple (code, where, ...); `where` is a layer or "all".

def known_bugs(layer_sizes):
    """Every single bug the doctor can inject into a network of these sizes."""
    L = len(layer_sizes) - 1
    hidden = list(range(L - 1))
    shapes = [(a + 1, b) for a, b in zip(layer_sizes[:-1], layer_sizes[1:])]
    bugs = [("softmax-derivative", L - 1)]
    for code in ("relu-derivative-at-zero", "missing-relu-mask"):
        bugs += [(code, k) for k in hidden] + ([(code, "all")] if len(hidden) > 1 else [])
    for i in range(1, L):
        if shapes[i][0] - 1 == shapes[i][1]:
            bugs.append(("wrong-weights-in-backprop", i, "transposed"))
        bugs += [("wrong-weights-in-backprop", i, j) for j in range(L) if j != i and shapes[j] == shapes[i]]
    bugs += [("error-through-bias", i) for i in range(1, L)] + ([("error-through-bias", "all")] if L > 2 else [])
    return bugs


def variants(layer_sizes):
    """The bug sets tried, fewest bugs first: none, each bug, each pair of bugs of different kinds."""
    bugs = known_bugs(layer_sizes)
    yield frozenset()
    for bug in bugs:
        yield frozenset([bug])
    for first, second in itertools.combinations(bugs, 2):
        if first[0] != second[0]:
            yield frozenset([first, second])


def _applies(bugs, code, layer):
    return any(bug[0] == code and bug[1] in (layer, "all") for bug in bugs)


def buggy_gradients(weights, X, labels, bugs):
    """reference.loss_and_gradients with `bugs` injected: (grads, errors), errors[i] the error at layer i's
    pre-activation (divided by the batch size, as the reference's)."""
    inputs, pre_activations = reference.forward_all(weights, X)
    logits = pre_activations[-1]
    P = reference.softmax(logits)
    T = reference.targets_matrix(labels, logits.shape[1], logits.dtype)
    L = len(weights)
    delta = (P - T) / logits.shape[0]
    if _applies(bugs, "softmax-derivative", L - 1):
        delta = delta * P * (1 - P)
    grads, errors = [None] * L, [None] * L
    for i in range(L - 1, -1, -1):
        errors[i] = delta
        grads[i] = reference.weight_gradient(inputs[i], delta)
        if i == 0:
            break
        through = weights[i][:-1].T
        for bug in bugs:
            if bug[0] == "wrong-weights-in-backprop" and bug[1] == i:
                through = weights[i][:-1] if bug[2] == "transposed" else weights[bug[2]][:-1].T
        if _applies(bugs, "error-through-bias", i):
            through = weights[i][1:].T
        delta = delta @ through
        z = pre_activations[i - 1]
        if _applies(bugs, "relu-derivative-at-zero", i - 1):
            delta = delta * (z >= 0)
        elif not _applies(bugs, "missing-relu-mask", i - 1):
            delta = delta * (z > 0)
    return grads, errors


# -------------------------------------------------------------------------------------------------
# Matching: does the user's part equal factor * the variant's part, on every probe, with a factor that
# is a constant, or that constant times the batch size (a sum where the mean belongs), or divided by it?

@dataclass(frozen=True)
class Factor:
    kind: str      # "constant", "batch-size" (times m) or "per-row" (divided by m)
    value: float

    @property
    def is_one(self):
        return self.kind == "constant" and self.value == 1.0

    def same_as(self, other):
        """The same factor, up to the fit's rounding (1e-3 relative)."""
        return (isinstance(other, Factor) and self.kind == other.kind
                and abs(self.value - other.value) <= 1e-3 * max(abs(self.value), abs(other.value), 1e-300))


ONE = Factor("constant", 1.0)


def _fit(user, variant, tolerance, floor, batch_size):
    """The factor c with user ~ c * variant to `tolerance` (relative), None if there is none, and
    "any" when both are at most `floor`: rounding noise, where the exact gradient is 0 or nearly (the
    user's side up to batch_size times that: a sum over the batch of noise)."""
    user_norm, variant_norm = np.linalg.norm(user), np.linalg.norm(variant)
    if variant_norm <= floor:
        return "any" if user_norm <= floor * max(batch_size, 1) else None
    c = float(np.vdot(user, variant) / variant_norm ** 2)
    residual = np.linalg.norm(user - c * variant)
    return c if residual <= tolerance * max(user_norm, abs(c) * variant_norm) + floor else None


def _snap(value, tolerance):
    """1 or -1 when the fitted factor is that up to rounding; 0 only when it is 0 (a factor of 1e-7 is a
    factor, not a zero)."""
    for nice in (1.0, -1.0):
        if abs(value - nice) <= tolerance:
            return nice
    return 0.0 if value == 0 else value


def fit_factor(users, variants_, batch_sizes, tolerance, floors):
    """One Factor that makes every probe's user part equal the variant's, or None."""
    fitted = []
    for user, variant, m, floor in zip(users, variants_, batch_sizes, floors):
        c = _fit(user, variant, tolerance, floor, m)
        if c is None:
            return None
        if c != "any":
            fitted.append((c, m))
    if not fitted:
        return ONE
    for kind, per_m in (("constant", lambda m: 1.0), ("batch-size", lambda m: m), ("per-row", lambda m: 1.0 / m)):
        values = [c / per_m(m) for c, m in fitted]
        middle = float(np.median(values))
        if all(abs(v - middle) <= 10 * tolerance * max(abs(middle), 1.0) for v in values):
            return Factor(kind, _snap(middle, 10 * tolerance))
    return None


@dataclass
class LayerMatch:
    weights: Factor
    bias: object           # a Factor (the bias row, c times right), ("first-row", Factor), or None


def match_layer(layer, user_grads, variant_results, probes, tolerance):
    """How the user's gradient of `layer` matches a variant's on every probe: a LayerMatch, or None if the
    weights block does not match. Below tolerance * the layer's gradient_scales, a part is rounding noise
    (its exact gradient may be 0)."""
    sizes = [len(p.X) for p in probes]
    floors = [tolerance * p.scales[layer] for p in probes]
    weights = fit_factor([g[layer][:-1] for g in user_grads], [v[0][layer][:-1] for v in variant_results],
                         sizes, tolerance, floors)
    if weights is None:
        return None
    users = [g[layer][-1] for g in user_grads]
    bias = fit_factor(users, [v[0][layer][-1] for v in variant_results], sizes, tolerance, floors)
    if bias is None:
        first = fit_factor(users, [v[1][layer][0] for v in variant_results], sizes, tolerance, floors)
        bias = ("first-row", first) if first is not None else None
    return LayerMatch(weights, bias)


def tolerance_for(dtypes):
    """The relative tolerance for gradients computed in these dtypes: 1e-7 in float64, 1e-4 in float32.
    float16 is refused: its 11 bits cannot hold the probes' exact zeros, so its ReLU masks differ from
    the exact ones wherever they matter, and its sums of hundreds of terms are off by percents."""
    itemsize = min(np.dtype(dtype).itemsize for dtype in dtypes)
    if itemsize < 4:
        raise ValueError("the function returned float16 gradients: too coarse to tell a bug from rounding; "
                         "check it computing in float32 or float64")
    return 1e-4 if itemsize == 4 else 1e-7


def search(layer_sizes, probes, user_grads, tolerance):
    """The variant that explains the most layers from the output down (fewest bugs among equals):
    (bugs, matches), matches[i] a LayerMatch for each layer explained (from L - 1 down), None below."""
    L = len(layer_sizes) - 1
    best = None
    for bugs in variants(layer_sizes):
        results = [buggy_gradients(p.weights, p.X, p.labels, bugs) for p in probes]
        matches = [None] * L
        explained = 0
        for layer in range(L - 1, -1, -1):
            matches[layer] = match_layer(layer, user_grads, results, probes, tolerance)
            if matches[layer] is None:
                break
            explained += 1
        if best is None or explained > best[0]:
            best = (explained, bugs, matches)
        if explained == L:
            break
    return best[1], best[2]


def call_user(func, probe, targets):
    """func on copies of the probe: (its loss as a float, its gradients as float64 arrays, their dtypes),
    checked for count and shape."""
    Y = np.eye(probe.weights[-1].shape[1])[probe.labels] if targets == "onehot" else probe.labels.copy()
    m = len(probe.X)
    what = f"on a batch of {m} row{'s' if m > 1 else ''}" + (" with large logits" if probe.large_logits else "")
    loss, grads = call_function(func, probe.weights, probe.X, Y, what)
    return (loss, *checked_gradients(grads, probe.weights))


def bias_first(weights):
    """The same network in the other common layout, the bias as the first row (a ones column prepended to
    each layer's input), seen by a function that expects that one: its first row is the bias."""
    return [np.vstack([W[1:], W[:1]]) for W in weights]
