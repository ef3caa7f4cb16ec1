"""examples/student.py with the student's four bugs fixed, each marked "fixed:".

    mlpcore doctor examples/student_fixed.py:backprop --sizes 784 300 300 10
    mlpcore doctor --batches examples/student_fixed.py:make_batches

The fourth fix is in the data: scale the pixels to 0..1 (X_train / 255) before training. A fifth, which
did not stop learning but makes a loss curve scale with the batch size: backprop's loss is now the mean,
like its gradients (the post's get_loss sums over the batch).
"""
import numpy as np

minibatch_size = 600


def softmax(z):
    exp = np.exp(z - z.max(1)[:, np.newaxis])
    return np.array(exp / exp.sum(1)[:, np.newaxis])


def softmax_derivative(z):
    sm = softmax(z)
    return sm * (1 - sm)


def ReLU(z):
    return np.maximum(z, 0)


def ReLU_derivative(z):
    return (z > 0).astype(int)  # fixed: 0 at 0, where the unit passed nothing on


def get_loss(y, y_pred):
    return -np.sum(y * np.log(y_pred))


def backprop(W, X, Y):
    """The forward and backward pass of the post's fit() on one batch: (loss, gradients).

    As in examples/student.py, the post's g is minus the gradient, so this returns -g."""
    L = len(W) - 1
    m = len(X)
    Z = [None] * (L + 2)
    a = [None] * (L + 2)
    delta = [None] * (L + 2)

    # forward propagation
    a[0] = np.append(X, np.ones((m, 1)), axis=1)
    for i in range(L):
        Z[i + 1] = a[i] @ W[i]
        a[i + 1] = np.append(ReLU(Z[i + 1]), np.ones((m, 1), dtype=int), axis=1)
    Z[-1] = a[L] @ W[L]
    a[-1] = softmax(Z[-1])

    # back propagation
    delta[-1] = Y - a[-1]  # fixed: with cross-entropy, the error at the logits is Y - P, no derivative factor
    for i in range(L, 0, -1):
        delta[i] = (delta[i + 1] @ W[i].T)[:, :-1] * ReLU_derivative(Z[i])

    g = [a[i].T @ delta[i + 1] / m for i in range(len(W))]
    return get_loss(Y, a[-1]) / m, [-gi for gi in g]  # fixed: the mean, as the gradients are


def make_batches(X_train, Y_train):
    """One epoch of minibatches: (X, Y) pairs."""
    permutaion = list(np.random.permutation(X_train.shape[0]))
    X_shuffle = X_train[permutaion]
    Y_shuffle = Y_train[permutaion]
    for batche in range(0, X_shuffle.shape[0], minibatch_size):
        X = X_shuffle[batche:batche + minibatch_size]  # fixed: the same order as Y
        Y = Y_shuffle[batche:batche + minibatch_size]
        yield X, Y
