"""Hand-written backprops, right and wrong, for mlpcore.doctor.check_backprop to diagnose.

Each one is written the way a student might write it: vectorised NumPy like mlpcore.reference, a loop over
the samples accumulating outer products, np.einsum, a class with forward/backward methods, some taking
one-hot targets and some integer labels. Every function takes ``(weights, X, Y)`` in mlpcore's layout
(``W[i]`` of shape ``(n_in + 1, n_out)``, the bias its last row; ReLU hidden layers, softmax output, mean
cross-entropy) and returns ``(loss, grads)``.

``CATALOGUE`` lists them as ``Case``s: the function, the layer sizes to check it on, its targets and the
findings the doctor must give, as a set of ``(code, layer, part)``; empty for a correct backprop. Each broken
one is broken in the stated way only (tests/test_doctor_backprop.py holds every entry to
mlpcore.reference where it should agree with it).
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Case:
    name: str
    style: str          # "vectorised", "per-sample loop", "einsum", "class", "float32"
    func: object
    sizes: tuple
    targets: str = "onehot"
    expected: frozenset = frozenset()   # {(code, layer, part)}; empty: a correct backprop

    @property
    def broken(self):
        return bool(self.expected)

    def __str__(self):
        return self.name


# =================================================================================================
# Correct backprops
# =================================================================================================

def vectorised(weights, X, Y):
    """Like mlpcore.reference: the whole batch at once."""
    m = X.shape[0]
    inputs, zs = [], []
    a = X
    for i, W in enumerate(weights):
        a = np.hstack([a, np.ones((m, 1))])
        inputs.append(a)
        z = a @ W
        zs.append(z)
        if i < len(weights) - 1:
            a = np.maximum(z, 0)
    logits = zs[-1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -np.sum(Y * log_probs) / m
    delta = (np.exp(log_probs) - Y) / m
    grads = [None] * len(weights)
    for i in reversed(range(len(weights))):
        grads[i] = inputs[i].T @ delta
        if i > 0:
            delta = (delta @ weights[i][:-1].T) * (zs[i - 1] > 0)
    return loss, grads


def per_sample_loop(weights, X, Y):
    """One sample at a time, each adding its outer products to the gradients."""
    m = len(X)
    grads = [np.zeros_like(W) for W in weights]
    total = 0.0
    for x, y in zip(X, Y):
        inputs, zs = [], []
        a = x
        for W in weights:
            a = np.append(a, 1.0)
            inputs.append(a)
            z = a @ W
            zs.append(z)
            a = np.maximum(z, 0.0)
        logits = zs[-1] - zs[-1].max()
        p = np.exp(logits) / np.exp(logits).sum()
        total -= np.dot(y, logits - np.log(np.exp(logits).sum()))
        d = p - y
        for i in range(len(weights) - 1, -1, -1):
            grads[i] += np.outer(inputs[i], d)
            if i > 0:
                d = (weights[i][:-1] @ d) * (zs[i - 1] > 0)
    return total / m, [g / m for g in grads]


def einsum_backprop(weights, X, Y):
    m = X.shape[0]
    ones = np.ones((m, 1))
    h, pre = [X], []
    for W in weights:
        z = np.einsum("ni,ij->nj", np.concatenate([h[-1], ones], axis=1), W)
        pre.append(z)
        h.append(np.maximum(z, 0))
    z = pre[-1]
    logp = z - z.max(axis=1, keepdims=True)
    logp = logp - np.log(np.einsum("nk->n", np.exp(logp)))[:, None]
    loss = -np.einsum("nk,nk->", Y, logp) / m
    err = (np.exp(logp) - Y) / m
    grads = []
    for l in range(len(weights) - 1, -1, -1):
        grads.insert(0, np.einsum("ni,nj->ij", np.concatenate([h[l], ones], axis=1), err))
        if l:
            err = np.einsum("nj,ij->ni", err, weights[l][:-1]) * (pre[l - 1] > 0)
    return loss, grads


def float32_backprop(weights, X, Y):
    """Everything in float32, as a GPU-minded student would: float32 gradients come back."""
    Ws = [W.astype(np.float32) for W in weights]
    X = X.astype(np.float32)
    Y = Y.astype(np.float32)
    m = np.float32(X.shape[0])
    acts, zs = [X], []
    for W in Ws:
        z = np.c_[acts[-1], np.ones(len(X), dtype=np.float32)] @ W
        zs.append(z)
        acts.append(np.maximum(z, np.float32(0)))
    z = zs[-1] - zs[-1].max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    P = e / s
    loss = float(-(Y * (z - np.log(s))).sum() / m)
    delta = (P - Y) / m
    grads = [None] * len(Ws)
    for i in range(len(Ws) - 1, -1, -1):
        grads[i] = np.c_[acts[i], np.ones(len(X), dtype=np.float32)].T @ delta
        if i:
            delta = (delta @ Ws[i][:-1].T) * (zs[i - 1] > 0).astype(np.float32)
    return loss, grads


def labels_vectorised(weights, X, y):
    """Integer labels: the one-hot matrix is never built, 1 is subtracted at the label's column."""
    n = len(y)
    rows = np.arange(n)
    layer_inputs, pre_acts = [], []
    out = X
    for k, W in enumerate(weights):
        inp = np.column_stack([out, np.ones(n)])
        layer_inputs.append(inp)
        pre_acts.append(inp @ W)
        out = pre_acts[-1] if k == len(weights) - 1 else np.maximum(pre_acts[-1], 0)
    out = out - out.max(axis=1, keepdims=True)
    lse = np.log(np.exp(out).sum(axis=1))
    loss = np.mean(lse - out[rows, y])
    dout = np.exp(out - lse[:, None])
    dout[rows, y] -= 1
    dout /= n
    grads = []
    for k in range(len(weights) - 1, -1, -1):
        grads.append(layer_inputs[k].T @ dout)
        if k > 0:
            dout = dout @ weights[k][:-1].T
            dout[pre_acts[k - 1] <= 0] = 0
    return loss, grads[::-1]


def labels_per_sample_loop(weights, X, y):
    grads = [np.zeros(W.shape) for W in weights]
    loss = 0.0
    for x, label in zip(X, y):
        a_list, z_list = [], []
        a = x
        for W in weights:
            a = np.concatenate([a, [1.0]])
            a_list.append(a)
            z_list.append(a @ W)
            a = np.maximum(z_list[-1], 0)
        z = z_list[-1]
        zmax = z.max()
        logsum = zmax + np.log(np.sum(np.exp(z - zmax)))
        loss += logsum - z[label]
        d = np.exp(z - logsum)
        d[label] -= 1.0
        for j in reversed(range(len(weights))):
            grads[j] += a_list[j][:, None] * d[None, :]
            if j > 0:
                d = weights[j][:-1] @ d
                d = np.where(z_list[j - 1] > 0, d, 0.0)
    n = len(X)
    return loss / n, [g / n for g in grads]


class MLP:
    """A class with forward and backward; the instance is called as func(weights, X, Y)."""

    def forward(self, X):
        self.inputs, self.zs = [], []
        a = X
        for i, W in enumerate(self.W):
            a = np.append(a, np.ones((len(a), 1)), axis=1)
            self.inputs.append(a)
            z = a @ W
            self.zs.append(z)
            a = self.relu(z) if i < len(self.W) - 1 else z
        self.P = self.softmax(a)
        return a

    @staticmethod
    def relu(z):
        return np.maximum(z, 0)

    @staticmethod
    def relu_grad(z):
        return (z > 0).astype(float)

    @staticmethod
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def loss(self, logits, Y):
        z = logits - logits.max(axis=1, keepdims=True)
        return -np.mean(np.sum(Y * (z - np.log(np.exp(z).sum(axis=1, keepdims=True))), axis=1))

    def backward(self, Y):
        m = len(Y)
        delta = (self.P - Y) / m
        grads = []
        for i in range(len(self.W) - 1, -1, -1):
            grads.insert(0, self.inputs[i].T @ delta)
            if i > 0:
                delta = delta @ self.W[i][:-1].T * self.relu_grad(self.zs[i - 1])
        return grads

    def __call__(self, weights, X, Y):
        self.W = weights
        logits = self.forward(X)
        return self.loss(logits, Y), self.backward(Y)


# =================================================================================================
# Broken backprops
# =================================================================================================

# ---- softmax-derivative ----------------------------------------------------------------------

def softmax_derivative_vectorised(weights, X, Y):
    """The error at the output times a 'softmax derivative' P * (1 - P)."""
    m = X.shape[0]
    a_s, z_s = [], []
    a = X
    for i, W in enumerate(weights):
        a = np.hstack([a, np.ones((m, 1))])
        a_s.append(a)
        z = a @ W
        z_s.append(z)
        a = np.maximum(z, 0) if i < len(weights) - 1 else z
    a = a - a.max(axis=1, keepdims=True)
    P = np.exp(a) / np.exp(a).sum(axis=1, keepdims=True)
    loss = -np.sum(Y * (a - np.log(np.exp(a).sum(axis=1, keepdims=True)))) / m
    delta = (P - Y) * P * (1 - P) / m   # bug: no P * (1 - P) with cross-entropy
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = a_s[i].T @ delta
        if i > 0:
            delta = (delta @ weights[i][:-1].T) * (z_s[i - 1] > 0)
    return loss, grads


def labels_softmax_derivative(weights, X, y):
    n = len(X)
    cache = []
    h = X
    for W in weights[:-1]:
        h_aug = np.c_[h, np.ones(n)]
        z = h_aug @ W
        cache.append((h_aug, z))
        h = np.where(z > 0, z, 0.0)
    h_aug = np.c_[h, np.ones(n)]
    logits = h_aug @ weights[-1]
    cache.append((h_aug, logits))
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.mean(logits[np.arange(n), y] - np.log(np.exp(logits).sum(axis=1)))
    dz = probs.copy()
    dz[np.arange(n), y] -= 1
    dz *= probs * (1 - probs)            # bug
    dz /= n
    grads = []
    for i in range(len(weights) - 1, -1, -1):
        h_aug, _ = cache[i]
        grads.append(h_aug.T @ dz)
        if i:
            dz = (dz @ weights[i][:-1].T) * (cache[i - 1][1] > 0)
    grads.reverse()
    return loss, grads


# ---- relu-derivative-at-zero -----------------------------------------------------------------

def relu_prime(z):
    return np.where(z >= 0, 1.0, 0.0)   # bug: 1 at z == 0


def relu_derivative_at_zero_shared(weights, X, Y):
    """One derivative function, used by every hidden layer."""
    m = len(X)
    A, Z = [X], []
    for W in weights:
        Z.append(np.hstack((A[-1], np.ones((m, 1)))) @ W)
        A.append(np.maximum(Z[-1], 0))
    logits = Z[-1]
    logits = logits - logits.max(1, keepdims=True)
    logsumexp = np.log(np.exp(logits).sum(1, keepdims=True))
    loss = -(Y * (logits - logsumexp)).sum(1).mean()
    D = (np.exp(logits - logsumexp) - Y) / m
    G = []
    for l in range(len(weights) - 1, -1, -1):
        G = [np.hstack((A[l], np.ones((m, 1)))).T @ D] + G
        if l:
            D = D @ weights[l][:-1].T * relu_prime(Z[l - 1])
    return loss, G


def loop_relu_derivative_at_zero_first_layer(weights, X, Y):
    """Three hidden layers written out, one sample at a time; the first layer's mask is z >= 0."""
    W0, W1, W2, W3 = weights
    g0, g1, g2, g3 = (np.zeros_like(W) for W in weights)
    loss = 0.0
    for x, y in zip(X, Y):
        x1 = np.append(x, 1)
        z1 = x1 @ W0
        h1 = np.append(np.maximum(z1, 0), 1)
        z2 = h1 @ W1
        h2 = np.append(np.maximum(z2, 0), 1)
        z3 = h2 @ W2
        h3 = np.append(np.maximum(z3, 0), 1)
        out = h3 @ W3
        out = out - out.max()
        p = np.exp(out) / np.sum(np.exp(out))
        loss += -np.sum(y * (out - np.log(np.sum(np.exp(out)))))
        d4 = p - y
        d3 = (W3[:-1] @ d4) * (z3 > 0)
        d2 = (W2[:-1] @ d3) * (z2 > 0)
        d1 = (W1[:-1] @ d2) * (z1 >= 0)   # bug
        g3 += np.outer(h3, d4)
        g2 += np.outer(h2, d3)
        g1 += np.outer(h1, d2)
        g0 += np.outer(x1, d1)
    m = len(X)
    return loss / m, [g0 / m, g1 / m, g2 / m, g3 / m]


def float32_relu_derivative_at_zero(weights, X, Y):
    """In float32, with np.heaviside(z, 1) as the ReLU's derivative: 1 at z == 0."""
    Ws = [np.asarray(W, dtype=np.float32) for W in weights]
    a = np.asarray(X, dtype=np.float32)
    T = np.asarray(Y, dtype=np.float32)
    n = a.shape[0]
    one = np.ones((n, 1), np.float32)
    stack = []
    for W in Ws:
        a_in = np.concatenate([a, one], axis=1)
        z = a_in @ W
        stack.append((a_in, z))
        a = np.maximum(z, 0)
    z = stack[-1][1]
    z = z - z.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(np.mean(-(T * (z - log_sum)).sum(axis=1)))
    d = (np.exp(z - log_sum) - T) / np.float32(n)
    grads = [None] * len(Ws)
    for i in range(len(Ws) - 1, -1, -1):
        grads[i] = stack[i][0].T @ d
        if i:
            d = (d @ Ws[i][:-1].T) * np.heaviside(stack[i - 1][1], np.float32(1))   # bug: 1 at 0
    return loss, grads


# ---- missing-relu-mask -----------------------------------------------------------------------

def einsum_missing_relu_mask(weights, X, Y):
    m = X.shape[0]
    ones = np.ones((m, 1))
    acts, logits = [X], None
    for k, W in enumerate(weights):
        z = np.einsum("bi,io->bo", np.concatenate([acts[-1], ones], 1), W)
        if k == len(weights) - 1:
            logits = z
        else:
            acts.append(np.maximum(z, 0))
    s = logits - logits.max(1, keepdims=True)
    lse = np.log(np.exp(s).sum(1, keepdims=True))
    loss = -np.einsum("bk,bk->", Y, s - lse) / m
    delta = (np.exp(s - lse) - Y) / m
    grads = [None] * len(weights)
    for k in range(len(weights) - 1, -1, -1):
        grads[k] = np.einsum("bi,bo->io", np.concatenate([acts[k], ones], 1), delta)
        if k > 0:
            delta = np.einsum("bo,io->bi", delta, weights[k][:-1])   # bug: no ReLU mask
    return loss, grads


def unrolled_missing_relu_mask_middle(weights, X, Y):
    """Four layers written out by hand; the mask is left out at the second hidden layer."""
    W1, W2, W3, W4 = weights
    n = X.shape[0]
    col = np.ones((n, 1))
    a0 = np.hstack([X, col])
    z1 = a0 @ W1
    a1 = np.hstack([np.maximum(z1, 0), col])
    z2 = a1 @ W2
    a2 = np.hstack([np.maximum(z2, 0), col])
    z3 = a2 @ W3
    a3 = np.hstack([np.maximum(z3, 0), col])
    z4 = a3 @ W4
    z4 = z4 - np.max(z4, axis=1, keepdims=True)
    p = np.exp(z4) / np.exp(z4).sum(axis=1, keepdims=True)
    loss = -np.sum(Y * (z4 - np.log(np.exp(z4).sum(axis=1, keepdims=True)))) / n
    d4 = (p - Y) / n
    d3 = d4 @ W4[:-1].T * (z3 > 0)
    d2 = d3 @ W3[:-1].T                # bug: forgot * (z2 > 0)
    d1 = d2 @ W2[:-1].T * (z1 > 0)
    return loss, [a0.T @ d1, a1.T @ d2, a2.T @ d3, a3.T @ d4]


# ---- sign-flipped ----------------------------------------------------------------------------

def sign_flipped_everywhere(weights, X, Y):
    """delta = Y - P, as in an update rule W += lr * g, returned as the gradient."""
    m = X.shape[0]
    layer_in, layer_z = [], []
    a = X
    for W in weights:
        a = np.concatenate([a, np.ones((m, 1))], axis=1)
        layer_in.append(a)
        layer_z.append(a @ W)
        a = np.maximum(layer_z[-1], 0)
    z = layer_z[-1]
    z = z - z.max(axis=1)[:, None]
    lse = np.log(np.exp(z).sum(axis=1))[:, None]
    loss = float(np.mean(-(Y * (z - lse)).sum(axis=1)))
    delta = (Y - np.exp(z - lse)) / m      # bug: minus the gradient
    grads = []
    for i in reversed(range(len(weights))):
        grads.insert(0, layer_in[i].T @ delta)
        if i:
            delta = delta @ weights[i][:-1].T * (layer_z[i - 1] > 0)
    return loss, grads


def einsum_sign_flipped_below(weights, X, Y):
    """The error passed down from the output layer goes through -W."""
    m = X.shape[0]
    ones = np.ones((m, 1))
    a, zs, ins = X, [], []
    for W in weights:
        a = np.concatenate([a, ones], axis=1)
        ins.append(a)
        zs.append(np.einsum("mi,ij->mj", a, W))
        a = np.maximum(zs[-1], 0)
    top = zs[-1] - zs[-1].max(axis=1, keepdims=True)
    log_p = top - np.log(np.exp(top).sum(axis=1, keepdims=True))
    loss = -np.einsum("mk,mk", Y, log_p) / m
    L = len(weights)
    e = (np.exp(log_p) - Y) / m
    grads = [None] * L
    grads[L - 1] = np.einsum("mi,mj->ij", ins[L - 1], e)
    e = np.einsum("mj,ij->mi", e, -weights[L - 1][:-1]) * (zs[L - 2] > 0)   # bug: -W
    for i in range(L - 2, -1, -1):
        grads[i] = np.einsum("mi,mj->ij", ins[i], e)
        if i:
            e = np.einsum("mj,ij->mi", e, weights[i][:-1]) * (zs[i - 1] > 0)
    return loss, grads


# ---- gradient-scale --------------------------------------------------------------------------

def loop_sum_not_mean(weights, X, Y):
    """Per-sample outer products summed, never divided by the batch size (the loss is the mean)."""
    grads = [np.zeros_like(W) for W in weights]
    losses = []
    for x, t in zip(X, Y):
        ins, zs = [], []
        v = x
        for W in weights:
            v = np.r_[v, 1.0]
            ins.append(v)
            zs.append(v @ W)
            v = np.maximum(zs[-1], 0)
        o = zs[-1] - np.max(zs[-1])
        lse = np.log(np.sum(np.exp(o)))
        losses.append(lse - np.dot(t, o))
        d = np.exp(o - lse) - t
        for i in range(len(weights) - 1, -1, -1):
            grads[i] += np.outer(ins[i], d)       # bug: never divided by len(X)
            if i:
                d = weights[i][:-1].dot(d) * (zs[i - 1] > 0)
    return np.mean(losses), grads


def einsum_twice_the_gradient(weights, X, Y):
    """The error at the logits taken as 2 (P - Y), from the derivative of a squared error."""
    n = len(X)
    aug = lambda a: np.concatenate([a, np.ones((n, 1))], axis=1)
    A, Z = [X], []
    for W in weights:
        Z.append(np.einsum("ij,jk->ik", aug(A[-1]), W))
        A.append(np.maximum(Z[-1], 0))
    s = Z[-1] - Z[-1].max(axis=1, keepdims=True)
    P = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    loss = -np.einsum("ik,ik->", Y, s - np.log(np.exp(s).sum(axis=1, keepdims=True))) / n
    D = 2 * (P - Y) / n                     # bug: factor 2
    grads = [None] * len(weights)
    for l in reversed(range(len(weights))):
        grads[l] = np.einsum("ij,ik->jk", aug(A[l]), D)
        if l > 0:
            D = np.einsum("ik,jk->ij", D, weights[l][:-1]) * (Z[l - 1] > 0)
    return loss, grads


class MLPForgotMeanInOneLayer:
    """delta is not divided by m; each layer's gradient is, except layer 1's."""

    def forward(self, W, X):
        self.a, self.z = [], []
        h = X
        for k in range(len(W)):
            h = np.hstack([h, np.ones((h.shape[0], 1))])
            self.a.append(h)
            self.z.append(h @ W[k])
            h = np.maximum(self.z[-1], 0)
        return self.z[-1]

    def backward(self, W, P, Y):
        m = Y.shape[0]
        delta = P - Y
        grads = [None] * len(W)
        for k in range(len(W) - 1, -1, -1):
            grads[k] = self.a[k].T @ delta
            if k != 1:                    # bug: layer 1's was never divided by m
                grads[k] = grads[k] / m
            if k > 0:
                delta = (delta @ W[k][:-1].T) * (self.z[k - 1] > 0)
        return grads

    def loss_and_grads(self, W, X, Y):
        logits = self.forward(W, X)
        logits = logits - logits.max(axis=1, keepdims=True)
        P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        loss = -np.sum(Y * (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))) / len(X)
        return loss, self.backward(W, P, Y)


# ---- wrong-weights-in-backprop ---------------------------------------------------------------

def transpose_forgotten(weights, X, Y):
    """Two hidden layers of the same width, written out: the square W2[:-1] is used untransposed."""
    W1, W2, W3 = weights
    m = len(X)
    x = np.hstack([X, np.ones((m, 1))])
    z1 = x @ W1
    h1 = np.hstack([np.maximum(z1, 0), np.ones((m, 1))])
    z2 = h1 @ W2
    h2 = np.hstack([np.maximum(z2, 0), np.ones((m, 1))])
    z3 = h2 @ W3
    z3 = z3 - z3.max(axis=1, keepdims=True)
    P = np.exp(z3)
    total = P.sum(axis=1, keepdims=True)
    P /= total
    loss = -np.mean(np.sum(Y * (z3 - np.log(total)), axis=1))
    d3 = (P - Y) / m
    d2 = (d3 @ W3[:-1].T) * (z2 > 0)
    d1 = (d2 @ W2[:-1]) * (z1 > 0)         # bug: W2[:-1] is square, so no error; should be W2[:-1].T
    return loss, [x.T @ d1, h1.T @ d2, h2.T @ d3]


def loop_wrong_layer_weights(weights, X, Y):
    """Per sample, written out: passing down from layer 2 to 1 through W[1] (same shape as W[2])."""
    W = weights
    grads = [np.zeros_like(w) for w in W]
    loss = 0.0
    for i in range(len(X)):
        a0 = np.append(X[i], 1.0)
        z0 = a0 @ W[0]
        a1 = np.append(np.maximum(0, z0), 1.0)
        z1 = a1 @ W[1]
        a2 = np.append(np.maximum(0, z1), 1.0)
        z2 = a2 @ W[2]
        a3 = np.append(np.maximum(0, z2), 1.0)
        z3 = a3 @ W[3]
        z3 = z3 - z3.max()
        lse = np.log(np.exp(z3).sum())
        loss -= Y[i] @ (z3 - lse)
        d3 = np.exp(z3 - lse) - Y[i]
        d2 = (W[3][:-1] @ d3) * (z2 > 0)
        d1 = (W[1][:-1] @ d2) * (z1 > 0)     # bug: W[1] where W[2] belongs
        d0 = (W[1][:-1] @ d1) * (z0 > 0)
        grads[3] += np.outer(a3, d3)
        grads[2] += np.outer(a2, d2)
        grads[1] += np.outer(a1, d1)
        grads[0] += np.outer(a0, d0)
    return loss / len(X), [g / len(X) for g in grads]


def labels_next_layer_weights(weights, X, y):
    """Integer labels, layers written out: passing down from layer 1 to 0 through W[2]."""
    n = X.shape[0]
    b = np.ones((n, 1))
    x0 = np.hstack([X, b])
    z0 = x0 @ weights[0]
    x1 = np.hstack([np.maximum(z0, 0), b])
    z1 = x1 @ weights[1]
    x2 = np.hstack([np.maximum(z1, 0), b])
    z2 = x2 @ weights[2]
    x3 = np.hstack([np.maximum(z2, 0), b])
    z3 = x3 @ weights[3]
    z3 = z3 - z3.max(axis=1, keepdims=True)
    logp = z3 - np.log(np.exp(z3).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(n), y].mean()
    g3 = np.exp(logp)
    g3[np.arange(n), y] -= 1
    g3 /= n
    g2 = (g3 @ weights[3][:-1].T) * (z2 > 0)
    g1 = (g2 @ weights[2][:-1].T) * (z1 > 0)
    g0 = (g1 @ weights[2][:-1].T) * (z0 > 0)   # bug: weights[2], should be weights[1]
    return loss, [x0.T @ g0, x1.T @ g1, x2.T @ g2, x3.T @ g3]


# ---- error-through-bias ----------------------------------------------------------------------

def error_through_bias_column(weights, X, Y):
    """The error passed down keeps the bias row's column and drops the first input's."""
    m = X.shape[0]
    ins, zs = [], []
    a = X
    for W in weights:
        a = np.hstack([a, np.ones((m, 1))])
        ins.append(a)
        zs.append(a @ W)
        a = np.maximum(zs[-1], 0)
    z = zs[-1] - zs[-1].max(axis=1, keepdims=True)
    P = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.sum(Y * (z - np.log(np.exp(z).sum(axis=1, keepdims=True)))) / m
    delta = (P - Y) / m
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = ins[i].T @ delta
        if i > 0:
            delta = (delta @ weights[i].T)[:, 1:] * (zs[i - 1] > 0)   # bug: [:, :-1]
    return loss, grads


class StudentNet:
    """The student's layout: activations carry their ones column at the end; error sliced [:, 1:]."""

    def ReLU(self, z):
        return np.maximum(z, 0)

    def ReLU_derivative(self, z):
        return (z > 0).astype(int)

    def forward(self, W, X):
        m = len(X)
        self.a = [np.append(X, np.ones((m, 1)), axis=1)]
        self.Z = []
        for i in range(len(W) - 1):
            self.Z.append(self.a[i] @ W[i])
            self.a.append(np.append(self.ReLU(self.Z[i]), np.ones((m, 1)), axis=1))
        logits = self.a[-1] @ W[-1]
        exp = np.exp(logits - logits.max(1)[:, np.newaxis])
        self.P = exp / exp.sum(1)[:, np.newaxis]
        self.log_P = logits - logits.max(1)[:, np.newaxis] - np.log(exp.sum(1))[:, np.newaxis]

    def backward(self, W, Y):
        m = len(Y)
        delta = [None] * len(W)
        delta[-1] = (self.P - Y) / m
        for i in range(len(W) - 2, -1, -1):
            delta[i] = (delta[i + 1] @ W[i + 1].T)[:, 1:] * self.ReLU_derivative(self.Z[i])   # bug
        return [self.a[i].T @ delta[i] for i in range(len(W))]

    def backprop(self, W, X, Y):
        self.forward(W, X)
        return -np.sum(Y * self.log_P) / len(X), self.backward(W, Y)


# ---- bias-gradient ---------------------------------------------------------------------------

def loop_bias_forgotten(weights, X, Y):
    """Per sample, weights and biases kept apart: the bias gradients are never accumulated."""
    Ws = [W[:-1] for W in weights]
    bs = [W[-1] for W in weights]
    dWs = [np.zeros_like(W) for W in Ws]
    dbs = [np.zeros_like(b) for b in bs]
    total = 0.0
    for x, y in zip(X, Y):
        hs, zs = [x], []
        for W, b in zip(Ws, bs):
            zs.append(hs[-1] @ W + b)
            hs.append(np.maximum(zs[-1], 0))
        z = zs[-1] - zs[-1].max()
        p = np.exp(z) / np.exp(z).sum()
        total += -np.sum(y * (z - np.log(np.exp(z).sum())))
        d = p - y
        for l in range(len(Ws) - 1, -1, -1):
            dWs[l] += np.outer(hs[l], d)
            # bug: dbs[l] += d is missing
            if l > 0:
                d = (Ws[l] @ d) * (zs[l - 1] > 0)
    m = len(X)
    return total / m, [np.vstack([dW / m, db]) for dW, db in zip(dWs, dbs)]


def einsum_bias_mean_not_sum(weights, X, Y):
    """The bias gradient as the mean of delta, which already carries 1 / m."""
    m = X.shape[0]
    acts, zs = [X], []
    for W in weights:
        zs.append(np.einsum("ni,ij->nj", acts[-1], W[:-1]) + W[-1])
        acts.append(np.maximum(zs[-1], 0))
    out = zs[-1] - zs[-1].max(axis=1, keepdims=True)
    logZ = np.log(np.exp(out).sum(axis=1, keepdims=True))
    loss = -np.einsum("nk,nk->", Y, out - logZ) / m
    delta = (np.exp(out - logZ) - Y) / m
    grads = [None] * len(weights)
    for l in range(len(weights) - 1, -1, -1):
        dW = np.einsum("ni,nj->ij", acts[l], delta)
        db = delta.mean(axis=0)               # bug: should be delta.sum(axis=0)
        grads[l] = np.vstack([dW, db])
        if l:
            delta = np.einsum("nj,ij->ni", delta, weights[l][:-1]) * (zs[l - 1] > 0)
    return loss, grads


def labels_bias_first_row(weights, X, y):
    """Integer labels; the bias gradient taken from the batch's first row of delta."""
    n = len(X)
    hs, zs = [X], []
    for i, W in enumerate(weights):
        z = hs[-1] @ W[:-1] + W[-1]
        zs.append(z)
        hs.append(np.maximum(z, 0) if i + 1 < len(weights) else z)
    logits = hs[-1] - hs[-1].max(axis=1, keepdims=True)
    log_norm = np.log(np.sum(np.exp(logits), axis=1))
    loss = np.mean(log_norm - logits[np.arange(n), y])
    delta = np.exp(logits - log_norm[:, None])
    delta[np.arange(n), y] -= 1
    delta = delta / n
    grads = [None] * len(weights)
    for i in reversed(range(len(weights))):
        grads[i] = np.vstack([hs[i].T @ delta, delta[0]])   # bug: delta[0], should be delta.sum(0)
        if i:
            delta = (delta @ weights[i][:-1].T) * (zs[i - 1] > 0)
    return loss, grads


def bias_forgotten_first_layer(weights, X, Y):
    """The first layer's gradient from X without its ones column, padded with a zero bias row."""
    m = X.shape[0]
    hidden, pre = [], []
    h = X
    for W in weights:
        z = np.hstack([h, np.ones((m, 1))]) @ W
        pre.append(z)
        h = np.maximum(z, 0)
        hidden.append(h)
    s = pre[-1] - pre[-1].max(axis=1, keepdims=True)
    P = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    loss = -np.sum(Y * (s - np.log(np.exp(s).sum(axis=1, keepdims=True)))) / m
    d = (P - Y) / m
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, 0, -1):
        grads[i] = np.hstack([hidden[i - 1], np.ones((m, 1))]).T @ d
        d = d @ weights[i][:-1].T * (pre[i - 1] > 0)
    grads[0] = np.vstack([X.T @ d, np.zeros((1, d.shape[1]))])   # bug: the bias row left at 0
    return loss, grads


def labels_loop_bias_not_divided(weights, X, y):
    """Integer labels, per sample: the weights' sums are divided by the batch size, the biases' are not."""
    dW = [np.zeros((W.shape[0] - 1, W.shape[1])) for W in weights]
    db = [np.zeros(W.shape[1]) for W in weights]
    loss = 0.0
    for x, label in zip(X, y):
        hs, zs = [x], []
        for W in weights:
            zs.append(hs[-1] @ W[:-1] + W[-1])
            hs.append(np.maximum(zs[-1], 0))
        z = zs[-1] - zs[-1].max()
        log_p = z - np.log(np.exp(z).sum())
        loss -= log_p[label]
        d = np.exp(log_p)
        d[label] -= 1
        for k in range(len(weights) - 1, -1, -1):
            dW[k] += np.outer(hs[k], d)
            db[k] += d
            if k:
                d = weights[k][:-1] @ d * (zs[k - 1] > 0)
    m = len(X)
    return loss / m, [np.vstack([dW[k] / m, db[k]]) for k in range(len(weights))]   # bug: db[k] / m


# ---- gradient-mismatch -----------------------------------------------------------------------

def weight_decay_in_gradient_only(weights, X, Y):
    """L2 regularisation on one layer added to the gradient but not to the loss."""
    m = X.shape[0]
    acts, zs = [X], []
    for W in weights:
        z = np.hstack([acts[-1], np.ones((m, 1))]) @ W
        zs.append(z)
        acts.append(np.maximum(z, 0))
    z = zs[-1] - zs[-1].max(axis=1, keepdims=True)
    P = np.exp(z) / np.sum(np.exp(z), axis=1, keepdims=True)
    loss = -np.sum(Y * (z - np.log(np.sum(np.exp(z), axis=1, keepdims=True)))) / m
    delta = (P - Y) / m
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = np.hstack([acts[i], np.ones((m, 1))]).T @ delta
        if i == 1:
            grads[i] = grads[i] + 0.01 * weights[i]   # bug: not in the loss (and not wanted)
        if i > 0:
            delta = delta @ weights[i][:-1].T * (zs[i - 1] > 0)
    return loss, grads


def labels_softmax_over_batch(weights, X, y):
    """Integer labels; the softmax normalised down the batch (axis 0) instead of across the classes."""
    n = len(y)
    layers_in, layers_z = [], []
    a = X
    for W in weights:
        a = np.c_[a, np.ones(n)]
        layers_in.append(a)
        layers_z.append(a @ W)
        a = np.maximum(layers_z[-1], 0)
    z = layers_z[-1] - layers_z[-1].max(axis=0)
    probs = np.exp(z) / np.exp(z).sum(axis=0)     # bug: axis=0
    loss = -np.mean(np.log(probs[np.arange(n), y] + 1e-300))
    dz = probs.copy()
    dz[np.arange(n), y] -= 1
    dz /= n
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = layers_in[i].T @ dz
        if i:
            dz = dz @ weights[i][:-1].T * (layers_z[i - 1] > 0)
    return loss, grads


class SoftmaxSummedOverBatch:
    """The softmax's sum taken over the whole batch (no axis): right for a batch of one row only."""

    def forward(self, weights, X):
        self.layers = []
        a = X
        for W in weights:
            a_ones = np.hstack([a, np.ones((X.shape[0], 1))])
            z = a_ones @ W
            self.layers.append((a_ones, z))
            a = np.maximum(z, 0)
        z = z - z.max()
        return np.exp(z) / np.exp(z).sum()     # bug: .sum(axis=1, keepdims=True)

    def backward(self, weights, P, Y):
        delta = (P - Y) / Y.shape[0]
        grads = [None] * len(weights)
        for i in reversed(range(len(weights))):
            a_ones, _ = self.layers[i]
            grads[i] = a_ones.T @ delta
            if i > 0:
                delta = (delta @ weights[i][:-1].T) * (self.layers[i - 1][1] > 0)
        return grads

    def __call__(self, weights, X, Y):
        P = self.forward(weights, X)
        loss = -np.sum(Y * np.log(P + 1e-300)) / len(X)
        return loss, self.backward(weights, P, Y)


# ---- softmax-overflow ------------------------------------------------------------------------

class NaiveSoftmaxNet:
    """Right on ordinary inputs, but exp(logits) without subtracting the row max overflows."""

    def softmax(self, z):
        e = np.exp(z)                     # bug: no z - z.max(axis=1, keepdims=True)
        return e / e.sum(axis=1, keepdims=True)

    def forward(self, weights, X):
        self.ins, self.zs = [], []
        a = X
        for W in weights:
            a = np.hstack([a, np.ones((len(a), 1))])
            self.ins.append(a)
            self.zs.append(a @ W)
            a = np.maximum(self.zs[-1], 0)
        return self.softmax(self.zs[-1])

    def backward(self, weights, P, Y):
        delta = (P - Y) / len(Y)
        grads = []
        for i in range(len(weights) - 1, -1, -1):
            grads.append(self.ins[i].T @ delta)
            if i:
                delta = (delta @ weights[i][:-1].T) * (self.zs[i - 1] > 0)
        return grads[::-1]

    def __call__(self, weights, X, Y):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            P = self.forward(weights, X)
            loss = -np.sum(Y * np.log(P)) / len(Y)
            return loss, self.backward(weights, P, Y)


# ---- two bugs at once: the original student's --------------------------------------------------

class StudentMLP:
    """A softmax derivative at the output and a ReLU derivative of 1 at 0 in every hidden layer."""

    def relu(self, z):
        return np.maximum(z, 0)

    def relu_derivative(self, z):
        return (z >= 0).astype(float)     # bug 2

    def softmax(self, z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def softmax_derivative(self, z):
        s = self.softmax(z)
        return s * (1 - s)

    def forward(self, X):
        self.cache = []
        a = X
        for W in self.weights[:-1]:
            a1 = np.hstack([a, np.ones((len(a), 1))])
            z = a1 @ W
            self.cache.append((a1, z))
            a = self.relu(z)
        a1 = np.hstack([a, np.ones((len(a), 1))])
        z = a1 @ self.weights[-1]
        self.cache.append((a1, z))
        return self.softmax(z)

    def backward(self, P, Y):
        m = len(Y)
        delta = (P - Y) * self.softmax_derivative(self.cache[-1][1]) / m    # bug 1
        grads = []
        for i in range(len(self.weights) - 1, -1, -1):
            a1, _ = self.cache[i]
            grads.insert(0, a1.T @ delta)
            if i > 0:
                delta = (delta @ self.weights[i][:-1].T) * self.relu_derivative(self.cache[i - 1][1])
        return grads

    def step(self, weights, X, Y):
        self.weights = weights
        P = self.forward(X)
        z = self.cache[-1][1]
        z = z - z.max(axis=1, keepdims=True)
        loss = -np.mean(np.sum(Y * (z - np.log(np.exp(z).sum(axis=1, keepdims=True))), axis=1))
        return loss, self.backward(P, Y)


# =================================================================================================

def _case(name, style, func, sizes, targets="onehot", expected=()):
    return Case(name, style, func, tuple(sizes), targets, frozenset(expected))


W_ = "weights"
B_ = "bias"

CATALOGUE = [
    # ---- correct ----
    _case("vectorised", "vectorised", vectorised, [20, 16, 16, 5]),
    _case("per_sample_loop", "per-sample loop", per_sample_loop, [12, 8, 8, 8, 3]),
    _case("einsum", "einsum", einsum_backprop, [20, 16, 16, 5]),
    _case("float32", "float32", float32_backprop, [20, 16, 16, 5]),
    _case("labels_vectorised", "vectorised", labels_vectorised, [12, 8, 8, 8, 3], "labels"),
    _case("labels_per_sample_loop", "per-sample loop", labels_per_sample_loop, [10, 7, 4], "labels"),
    _case("class_mlp_call", "class", MLP(), [13, 9, 9, 4]),
    # ---- broken ----
    _case("softmax_derivative", "vectorised", softmax_derivative_vectorised, [20, 16, 16, 5],
          expected=[("softmax-derivative", 2, W_)]),
    _case("labels_softmax_derivative", "vectorised", labels_softmax_derivative, [10, 7, 4], "labels",
          expected=[("softmax-derivative", 1, W_)]),
    _case("relu_derivative_at_zero_shared", "vectorised", relu_derivative_at_zero_shared, [12, 8, 8, 8, 3],
          expected=[("relu-derivative-at-zero", 2, W_)]),
    _case("loop_relu_derivative_at_zero_first_layer", "per-sample loop", loop_relu_derivative_at_zero_first_layer,
          [12, 8, 8, 8, 3], expected=[("relu-derivative-at-zero", 0, W_)]),
    _case("float32_relu_derivative_at_zero", "float32", float32_relu_derivative_at_zero, [20, 16, 16, 5],
          expected=[("relu-derivative-at-zero", 1, W_)]),
    _case("einsum_missing_relu_mask", "einsum", einsum_missing_relu_mask, [20, 16, 16, 5],
          expected=[("missing-relu-mask", 1, W_)]),
    _case("unrolled_missing_relu_mask_middle", "vectorised", unrolled_missing_relu_mask_middle, [12, 8, 8, 8, 3],
          expected=[("missing-relu-mask", 1, W_)]),
    _case("sign_flipped_everywhere", "vectorised", sign_flipped_everywhere, [20, 16, 5],
          expected=[("sign-flipped", 1, W_)]),
    _case("einsum_sign_flipped_below", "einsum", einsum_sign_flipped_below, [12, 8, 8, 8, 3],
          expected=[("sign-flipped", 2, W_)]),
    _case("loop_sum_not_mean", "per-sample loop", loop_sum_not_mean, [12, 8, 8, 8, 3],
          expected=[("gradient-scale", 3, W_)]),
    _case("einsum_twice_the_gradient", "einsum", einsum_twice_the_gradient, [20, 16, 16, 5],
          expected=[("gradient-scale", 2, W_)]),
    _case("class_forgot_mean_in_one_layer", "class", MLPForgotMeanInOneLayer().loss_and_grads, [20, 16, 16, 5],
          expected=[("gradient-scale", 1, W_)]),
    _case("transpose_forgotten", "vectorised", transpose_forgotten, [13, 9, 9, 4],
          expected=[("wrong-weights-in-backprop", 0, W_)]),
    _case("loop_wrong_layer_weights", "per-sample loop", loop_wrong_layer_weights, [12, 8, 8, 8, 3],
          expected=[("wrong-weights-in-backprop", 1, W_)]),
    _case("labels_next_layer_weights", "vectorised", labels_next_layer_weights, [12, 8, 8, 8, 3], "labels",
          expected=[("wrong-weights-in-backprop", 0, W_)]),
    _case("error_through_bias_column", "vectorised", error_through_bias_column, [20, 16, 16, 5],
          expected=[("error-through-bias", 1, W_)]),
    _case("class_error_through_bias", "class", StudentNet().backprop, [12, 8, 8, 8, 3],
          expected=[("error-through-bias", 2, W_)]),
    _case("loop_bias_forgotten", "per-sample loop", loop_bias_forgotten, [20, 16, 5],
          expected=[("bias-gradient", 1, B_)]),
    _case("einsum_bias_mean_not_sum", "einsum", einsum_bias_mean_not_sum, [12, 8, 8, 8, 3],
          expected=[("bias-gradient", 3, B_)]),
    _case("labels_bias_first_row", "vectorised", labels_bias_first_row, [20, 16, 16, 5], "labels",
          expected=[("bias-gradient", 2, B_)]),
    _case("bias_forgotten_first_layer", "vectorised", bias_forgotten_first_layer, [12, 8, 8, 8, 3],
          expected=[("bias-gradient", 0, B_)]),
    _case("labels_loop_bias_not_divided", "per-sample loop", labels_loop_bias_not_divided, [10, 7, 4], "labels",
          expected=[("bias-gradient", 1, B_)]),
    _case("weight_decay_in_gradient_only", "vectorised", weight_decay_in_gradient_only, [20, 16, 16, 5],
          expected=[("gradient-mismatch", 1, W_)]),
    _case("labels_softmax_over_batch", "vectorised", labels_softmax_over_batch, [20, 16, 16, 5], "labels",
          expected=[("gradient-mismatch", 2, W_)]),
    _case("class_softmax_summed_over_batch", "class", SoftmaxSummedOverBatch(), [13, 9, 9, 4],
          expected=[("gradient-mismatch", 2, W_)]),
    _case("class_naive_softmax", "class", NaiveSoftmaxNet(), [20, 16, 5],
          expected=[("softmax-overflow", 1, W_)]),
    _case("class_student_two_bugs", "class", StudentMLP().step, [12, 8, 8, 8, 3],
          expected=[("softmax-derivative", 3, W_), ("relu-derivative-at-zero", 2, W_)]),
]

CORRECT = [case for case in CATALOGUE if not case.broken]
BROKEN = [case for case in CATALOGUE if case.broken]
