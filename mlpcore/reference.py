"""The executable specification of mlpcore, in plain NumPy.

This is the student's program written correctly, as plainly as possible, so that it can be checked against
a textbook in minutes. The compiled core must compute exactly this; the tests hold it to that.

The network: weights ``W[0], ..., W[L-1]``, each bias-augmented with shape ``(n_in + 1, n_out)``, the last
row being the bias. Each layer's input gets a column of ones appended, so ``a @ W`` includes the bias.
Hidden layers use ReLU, the output layer softmax, the loss is the mean cross-entropy, unless told
otherwise: every function of the whole network takes ``activation`` (ReLU, tanh, logistic, identity) and
``loss``, the head (softmax + cross-entropy, sigmoid + binary cross-entropy, identity + squared error,
exp + Poisson deviance), each output paired with its canonical loss, so that the error at the last
pre-activations is always output - target.

Targets ``y`` are integer labels of shape ``(n,)`` or target distributions of shape ``(n, K)`` (e.g. one-hot).
Everything is computed in the dtype of the weights.
"""
import numpy as np


def add_ones_column(a):
    """Append a column of ones to a: the bias input of the next layer."""
    return np.hstack([a, np.ones((a.shape[0], 1), dtype=a.dtype)])


def relu(z):
    return np.maximum(z, 0)


def relu_derivative(z):
    # 0 at z == 0 (and below): the student's version used z >= 0.
    return (z > 0).astype(z.dtype)


def tanh_derivative(z):
    return 1 - np.tanh(z) ** 2


def logistic(z):
    return 1 / (1 + np.exp(-z))


def logistic_derivative(z):
    return logistic(z) * (1 - logistic(z))


# activation name: (f, f')
ACTIVATIONS = {
    "relu": (relu, relu_derivative),
    "tanh": (np.tanh, tanh_derivative),
    "logistic": (logistic, logistic_derivative),
    "identity": (lambda z: z, np.ones_like),
}


def softmax(z):
    # Subtracting the row max changes nothing mathematically and keeps exp from overflowing.
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def targets_matrix(y, n_classes, dtype):
    """The (n, K) target matrix T: one-hot rows for integer labels, y itself for distributions."""
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(dtype)
    T = np.zeros((y.shape[0], n_classes), dtype=dtype)
    T[np.arange(y.shape[0]), y] = 1
    return T


def output(z, loss="cross_entropy"):
    """The head's output from the last pre-activations z."""
    if loss == "cross_entropy":
        return softmax(z)
    if loss == "binary_cross_entropy":
        return logistic(z)
    if loss == "squared_error":
        return z
    return np.exp(z)  # poisson


def row_losses(z, T, loss="cross_entropy"):
    """Each row's loss: summed over its outputs."""
    if loss == "cross_entropy":
        return -(T * log_softmax(z)).sum(axis=1)
    if loss == "binary_cross_entropy":
        # -t log(sigmoid z) - (1 - t) log(1 - sigmoid z), written without overflow
        return (np.maximum(z, 0) - T * z + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
    if loss == "squared_error":
        return 0.5 * ((z - T) ** 2).sum(axis=1)
    # poisson: exp(z) - t z + t log t - t (half the deviance; t log t is 0 at t = 0)
    t_log_t = np.where(T > 0, T * np.log(np.where(T > 0, T, 1)), 0)
    return (np.exp(z) - T * z + t_log_t - T).sum(axis=1)


# -------------------------------------------------------------------------------------------------
# One operation each: what each compiled kernel computes (the tests hold each kernel to these).

def dense_forward(a, W, relu_output=True, activation="relu"):
    """One layer: the input a gets its column of ones, times W; the activation (ReLU unless told
    otherwise) applied to a hidden layer's output."""
    z = add_ones_column(a) @ W
    return ACTIVATIONS[activation][0](z) if relu_output else z


def head(logits, T):
    """Softmax-cross-entropy on a batch: the mean loss, and the error at the logits, (P - T) / n.

    For softmax followed by cross-entropy the error at the logits is simply P - T (no extra "softmax
    derivative" factor); divided by n because the loss is a mean.
    """
    return cross_entropy(logits, T), (softmax(logits) - T) / logits.shape[0]


def error_passed_down(delta, W, z_below, activation="relu"):
    """The error at the layer below's pre-activation z_below, from the error delta at this layer's.

    Back through W without its bias row (the ones column has no input to pass error to), then through
    the activation (ReLU unless told otherwise) of the layer below.
    """
    return (delta @ W[:-1].T) * ACTIVATIONS[activation][1](z_below)


def weight_gradient(a_with_ones, delta):
    """The gradient of a layer's W (bias row last) from its input with the column of ones appended and
    the error delta at its output: the bias row's gradient is the column sums of delta."""
    return a_with_ones.T @ delta


# -------------------------------------------------------------------------------------------------
# The whole network

def forward_all(weights, X, keep_masks=None, dropout=0.0, activation="relu"):
    """Forward pass keeping what backward needs.

    Returns (inputs, pre_activations): inputs[i] is the ones-augmented input of layer i; pre_activations[i]
    is its output before the activation (the last one: the logits). With keep_masks, each hidden output
    is multiplied by its mask times dropout_scale(dropout) (inverted dropout).
    """
    a = X.astype(weights[0].dtype)
    inputs, pre_activations = [], []
    for i, W in enumerate(weights):
        z = dense_forward(a, W, relu_output=False)
        inputs.append(add_ones_column(a))
        pre_activations.append(z)
        a = ACTIVATIONS[activation][0](z) if i < len(weights) - 1 else z
        if keep_masks is not None and i < len(weights) - 1:
            a = a * keep_masks[i] * dropout_scale(dropout)
    return inputs, pre_activations


def forward(weights, X, activation="relu", loss="cross_entropy"):
    """The network's output, shape (n, K): class probabilities for the default head."""
    _, pre_activations = forward_all(weights, X, activation=activation)
    return output(pre_activations[-1], loss)


def cross_entropy(logits, T):
    """Mean over the rows of -sum_k T[k] log softmax(logits)[k]."""
    return float(-(T * log_softmax(logits)).sum() / logits.shape[0])


def loss(weights, X, y, activation="relu", loss="cross_entropy"):
    _, pre_activations = forward_all(weights, X, activation=activation)
    z = pre_activations[-1]
    return float(row_losses(z, targets_matrix(y, z.shape[1], z.dtype), loss).mean())


def loss_and_gradients(weights, X, y, *, label_smoothing=0.0, sample_weight=None, keep_masks=None,
                       dropout=0.0, activation="relu", loss="cross_entropy", alpha=0.0):
    """Mean loss (cross-entropy unless told otherwise) and its gradient with respect to every weight
    matrix.

    label_smoothing eps trains on (1 - eps) T + eps / K; sample_weight makes the loss the weighted mean
    of the rows'; keep_masks (one 0/1 array per hidden layer, see dropout_mask) apply inverted dropout of
    probability `dropout` to the hidden outputs (kept units scaled by dropout_scale(dropout)). alpha is
    scikit-learn's L2 penalty: 0.5 * alpha * sum ||W[:-1]||^2 / (the rows' weight sum) added to the loss,
    its gradient alpha * W[:-1] / (that sum) to the weights' (bias rows apart).
    """
    inputs, pre_activations = forward_all(weights, X, keep_masks, dropout, activation)
    z = pre_activations[-1]
    K = z.shape[1]
    T = targets_matrix(y, K, z.dtype)
    if label_smoothing:
        T = (1 - label_smoothing) * T + label_smoothing / K
    # The weighted mean: row i's loss and error count w_i / sum(w) times instead of 1 / n.
    w = np.ones((z.shape[0], 1), dtype=z.dtype) if sample_weight is None else \
        np.asarray(sample_weight, dtype=z.dtype)[:, None]
    value = float((w[:, 0] * row_losses(z, T, loss)).sum() / w.sum())
    # For each head with its canonical loss the error at z is output - target (no extra derivative).
    delta = w * (output(z, loss) - T) / w.sum()
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = weight_gradient(inputs[i], delta)
        if alpha:
            value += 0.5 * alpha * float((weights[i][:-1] ** 2).sum()) / float(w.sum())
            grads[i] = grads[i] + alpha * _without_bias_row(weights[i]) * weights[i] / w.sum()
        if i > 0:
            delta = error_passed_down(delta, weights[i], pre_activations[i - 1], activation)
            if keep_masks is not None:
                delta = delta * keep_masks[i - 1] * dropout_scale(dropout)
    return value, grads


def train_step(weights, X, y, lr):
    """One step of plain gradient descent on (X, y), updating the arrays of `weights` in place.

    Returns the loss before the step.
    """
    value, grads = loss_and_gradients(weights, X, y)
    for W, g in zip(weights, grads):
        W -= lr * g
    return value


# -------------------------------------------------------------------------------------------------
# Optimizers and schedules: PyTorch's update formulas (torch.optim.SGD with dampening 0, Adam, AdamW),
# except that weight decay never touches the bias row (the last row of each W).

def _without_bias_row(W):
    """A mask that is 1 on the weights and 0 on the bias row: where weight decay applies."""
    mask = np.ones_like(W)
    mask[-1] = 0
    return mask


def sgd_step(weights, grads, buffers, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """One step of SGD on every W, in place; `buffers` holds the momentum buffers (zeros at first)."""
    for W, g, b in zip(weights, grads, buffers):
        g = g + weight_decay * _without_bias_row(W) * W
        if momentum > 0:
            b[...] = momentum * b + g
            g = g + momentum * b if nesterov else b
        W -= lr * g


def adam_step(weights, grads, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              decoupled=False, eps_form="pytorch"):
    """One Adam step (AdamW with decoupled=True) on every W, in place; m and v are the moments (zeros at
    first), `step` the number of this step, from 1. eps_form="sklearn" adds eps to sqrt(v) itself, as
    scikit-learn's AdamOptimizer: lr * c2 / c1 * m / (sqrt(v) + eps)."""
    beta1, beta2 = betas
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = np.sqrt(1 - beta2 ** step)
    for W, g, m_W, v_W in zip(weights, grads, m, v):
        decay = weight_decay * _without_bias_row(W)
        if decoupled:
            W *= 1 - lr * decay
        else:
            g = g + decay * W
        m_W[...] = beta1 * m_W + (1 - beta1) * g
        v_W[...] = beta2 * v_W + (1 - beta2) * g * g
        if eps_form == "sklearn":
            W -= (lr * bias_correction2_sqrt / bias_correction1) * m_W / (np.sqrt(v_W) + eps)
        else:
            W -= (lr / bias_correction1) * m_W / (np.sqrt(v_W) / bias_correction2_sqrt + eps)


def cosine_factor(progress, warmup=0.0, final=0.0):
    """The cosine schedule's factor at `progress`, the fraction of the fit's batches done counting the
    current one: linear from 0 over `warmup`, then half a cosine from 1 to `final`."""
    if progress <= warmup:
        return progress / warmup
    q = (progress - warmup) / (1 - warmup)
    return final + (1 - final) * 0.5 * (1 + np.cos(np.pi * q))


# -------------------------------------------------------------------------------------------------
# Dropout's masks: a counter-based generator, so that a mask does not depend on which worker draws it.


def splitmix64(z):
    """SplitMix64's finaliser on uint64 values (arrays wrap around as C's unsigned integers do)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_keys(seed, epochs):
    """The key of each epoch of a fit with this seed: draws of default_rng([0x6D6C70, seed])."""
    rng = np.random.default_rng([0x6D6C70, seed])
    return [int(rng.integers(0, 2**63, dtype=np.uint64)) for _ in range(epochs)]


def dropout_scale(dropout):
    """What a kept unit is scaled by: 1 / (1 - p) for the probability p actually drawn, the dropout rate
    rounded to a multiple of 2**-24 (1 when that is 0)."""
    threshold = int(dropout * 2**24 + 0.5)
    return 2**24 / (2**24 - threshold) if threshold else 1.0


def dropout_mask(key, batch, layer, rows, width, dropout):
    """The keep mask (1 kept, 0 dropped) of hidden layer `layer` (0 for the first) in batch `batch` of an
    epoch with this key: unit j of row i is dropped when the top 24 bits of
    splitmix64(splitmix64(splitmix64(key ^ batch) ^ layer) ^ (i * width + j)) are below
    round(dropout * 2**24)."""
    layer_key = splitmix64(splitmix64(np.uint64(key) ^ np.uint64(batch)) ^ np.uint64(layer))
    units = np.arange(rows * width, dtype=np.uint64).reshape(rows, width)
    threshold = np.uint64(int(dropout * 2**24 + 0.5))
    return ((splitmix64(layer_key ^ units) >> np.uint64(40)) >= threshold).astype(np.float64)


# -------------------------------------------------------------------------------------------------
# Data-parallel training (fit's comm): which rows of which rank make up each global batch.

def distributed_batches(shard_sizes, batch_size, seed, epoch, shuffle=True):
    """The global batches of `epoch` (from 1) of data-parallel training over shards of these sizes: a
    list, batch by batch, of one index array per rank (rows of its shard). Every rank trains
    ceil(largest shard / batch_size) batches; rank r shuffles its rows with default_rng([seed, epoch, r])
    (unless not `shuffle`) and cuts them into that many near-equal parts (numpy.array_split). Training on
    these batches of the union of the shards, one step each, is what every rank's fit computes."""
    n_batches = -(-max(shard_sizes) // batch_size)
    parts = [np.array_split(np.random.default_rng([seed, epoch, rank]).permutation(n) if shuffle
                            else np.arange(n), n_batches)
             for rank, n in enumerate(shard_sizes)]
    return [[rank_parts[b] for rank_parts in parts] for b in range(n_batches)]
