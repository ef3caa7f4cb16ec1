"""What the parent and the workers of the benchmark agree on: the network, the products of an epoch, their flops.

Pure Python (no NumPy), so that the parent process stays small: the memory probe's ru_maxrss can include the
parent's peak (a child started with vfork inherits it), so the parent must never hold the data.
"""

#: The student's network: 784 inputs, two hidden ReLU layers of 300, 10 classes.
LAYERS = (784, 300, 300, 10)
#: Learning rate of every plain-SGD training run (no momentum).
LR = 0.1
#: The training recipe's pieces, each timed against plain SGD and against PyTorch doing the same:
#: name -> (optimizer, its settings, dropout). "momentum" is SGD with momentum 0.9 at lr LR, "adam" Adam at
#: PyTorch's defaults, "dropout" plain SGD with dropout 0.2 on both hidden layers.
RECIPE_PARTS = {
    "momentum": ("sgd", {"lr": LR, "momentum": 0.9}, 0.0),
    "adam": ("adam", {"lr": 0.001}, 0.0),
    "dropout": ("sgd", {"lr": LR}, 0.2),
}


def batch_products(rows, layers=LAYERS):
    """The (m, n, k) of every matrix product, C (m x n) = A (m x k) . B (k x n), of one SGD step on `rows` rows.

    Weights are bias-augmented, ``(n_in + 1, n_out)``, and each layer's input has a column of ones:
    forward ``A_i . W_i`` for each layer, ``A_i^T . dZ_i`` (the weight gradient) for each layer, and
    ``dZ_i . W_i[:-1]^T`` (the error passed down) for each layer but the first.
    """
    forward = [(rows, n_out, n_in + 1) for n_in, n_out in zip(layers[:-1], layers[1:])]
    weight_grads = [(n_in + 1, n_out, rows) for n_in, n_out in zip(layers[:-1], layers[1:])]
    input_grads = [(rows, n_in, n_out) for n_in, n_out in zip(layers[1:-1], layers[2:])]
    return forward + weight_grads + input_grads


def batch_rows(n, batch):
    """Rows of each batch of an epoch over n rows: full batches, then a last partial one if any."""
    full, rest = divmod(n, batch)
    return [batch] * full + ([rest] if rest else [])


def flops(products):
    """Floating-point operations of the products, counted as 2 m n k each."""
    return sum(2 * m * n * k for m, n, k in products)


def epoch_flops(n, batch, layers=LAYERS):
    """Flops of the matrix products of one training epoch over n rows in batches of `batch`."""
    return sum(flops(batch_products(rows, layers)) for rows in batch_rows(n, batch))


def forward_flops(n, layers=LAYERS):
    """Flops of the forward products over n rows in one go (inference)."""
    return flops(batch_products(n, layers)[:len(layers) - 1])
