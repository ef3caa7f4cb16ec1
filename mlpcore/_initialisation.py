"""Initial weights: the initialisations a network can start from (INITS) and how each draws its weights.
Used by Network, by _validation to check `init`, and by the command for its --init choices."""
import numpy as np

INITS = ("he", "glorot", "normal")


def initial_weights(shapes, init, rng):
    """float64 arrays of the bias-augmented `shapes` (n_in + 1, n_out), drawn from `rng` as `init` says
    (see Network)."""
    weights = []
    for n_in_plus_bias, n_out in shapes:
        n_in = n_in_plus_bias - 1
        W = np.zeros((n_in_plus_bias, n_out))
        if init == "he":
            W[:-1] = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))
        elif init == "glorot":
            limit = np.sqrt(6.0 / (n_in + n_out))
            W[:-1] = rng.uniform(-limit, limit, size=(n_in, n_out))
        else:
            W[:] = rng.normal(0.0, 0.01, size=W.shape)
        weights.append(W)
    return weights
