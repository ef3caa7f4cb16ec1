"""Training learns: a small problem that needs the hidden layers is fitted, on both implementations."""
import numpy as np

import mlpcore


def _spirals(n_per_class=100, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k in range(n_classes):
        r = np.linspace(0.05, 1, n_per_class)
        theta = np.linspace(k * 4, (k + 1) * 4, n_per_class) + rng.normal(0, 0.1, n_per_class)
        X.append(np.c_[r * np.sin(theta), r * np.cos(theta)])
        y.append(np.full(n_per_class, k))
    return np.concatenate(X), np.concatenate(y)


def test_two_hidden_layers_fit_spirals(model_factory, dtype):
    X, y = _spirals()
    model = model_factory([2, 64, 64, 3], dtype, seed=0)
    rng = np.random.default_rng(1)
    for _ in range(400):
        order = rng.permutation(len(X))
        for start in range(0, len(X), 30):
            rows = order[start:start + 30]
            model.train_step(X[rows].astype(dtype), y[rows], 0.3)
    accuracy = (model.predict(X.astype(dtype)) == y).mean()
    assert accuracy >= 0.95


def test_fit_learns_spirals_and_records_history(dtype):
    X, y = _spirals()
    net = mlpcore.Network([2, 64, 64, 3], dtype=dtype, seed=0)
    history = net.fit(X, y, epochs=400, batch_size=30, lr=0.3, seed=1,
                      validation_data=(X, y))
    assert history.epoch == list(range(1, 401))
    assert len(history.loss) == len(history.seconds) == len(history.val_accuracy) == 400
    assert history.loss[-1] < 0.25 * history.loss[0]
    assert net.score(X, y) >= 0.95
    assert history.val_accuracy[-1] == net.score(X, y)


def test_a_linear_problem_is_learnt_by_softmax_regression(model_factory, dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = (X @ rng.normal(size=(5, 4))).argmax(axis=1)
    model = model_factory([5, 4], dtype, seed=0)
    for _ in range(300):
        model.train_step(X.astype(dtype), y, 0.5)
    assert (model.predict(X.astype(dtype)) == y).mean() >= 0.95
