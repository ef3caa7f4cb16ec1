"""mlpcore.doctor.Monitor: training health once per epoch, from fit's on_epoch_end."""
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import mlpcore
from mlpcore import doctor
from mlpcore._training import History

REAL_DATA = Path("/usr/share/datasets/fashion-mnist")


def _blobs(n=600, features=20, classes=4, seed=0):
    """Separable data: each class a shifted Gaussian blob, inputs of about unit scale."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    centres = rng.normal(scale=2.0, size=(classes, features))
    return (centres[y] + rng.normal(size=(n, features))).astype(np.float32), y


def _fit(net, X, y, monitor, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", doctor.MonitorWarning)
        return net.fit(X, y, on_epoch_end=monitor, seed=0, **kwargs)


def test_records_every_layer_every_epoch_and_matches_a_direct_computation():
    X, y = _blobs()
    net = mlpcore.Network([20, 16, 12, 4], dtype="float64", seed=0)
    start = [W.copy() for W in net.weights]
    monitor = doctor.Monitor(rows=100, warn=False)
    history = _fit(net, X, y, monitor, epochs=1, batch_size=50, lr=0.05)
    assert len(monitor.records) == 1
    record = monitor.records[0]
    assert record["epoch"] == 1 and record["loss"] == history.loss[0]
    assert [layer["layer"] for layer in record["layers"]] == [0, 1, 2]
    # The same quantities computed here from the monitored rows (the monitor draws them with its seed).
    rows = np.sort(np.random.default_rng(0).choice(len(X), size=100, replace=False))
    Xb, yb = X[rows].astype(np.float64), y[rows]
    a = Xb
    for layer, W in zip(record["layers"][:2], net.weights[:2]):
        z = np.hstack([a, np.ones((len(a), 1))]) @ W
        a = np.maximum(z, 0)
        assert layer["dead_relus"] == pytest.approx((z <= 0).all(axis=0).mean())
        assert layer["activation_std"] == pytest.approx(a.std(), rel=1e-12)
    assert record["layers"][2]["dead_relus"] is None
    _, grads = mlpcore.reference.loss_and_gradients(net.weights, Xb, yb)
    steps = 12  # ceil(600 / 50)
    for layer, G, W, W0 in zip(record["layers"], grads, net.weights, start):
        assert layer["gradient_norm"] == pytest.approx(np.linalg.norm(G), rel=1e-10)
        assert layer["update_ratio"] == pytest.approx(
            np.linalg.norm(W - W0) / np.linalg.norm(W0) / np.sqrt(steps), rel=1e-12)


def test_a_healthy_fit_has_no_finding_and_is_unchanged_by_the_monitor():
    X, y = _blobs()
    plain = mlpcore.Network([20, 32, 4], seed=1)
    watched = mlpcore.Network([20, 32, 4], seed=1)
    plain.fit(X, y, epochs=4, batch_size=32, lr=0.05, seed=0)
    monitor = doctor.Monitor()
    with warnings.catch_warnings():
        warnings.simplefilter("error", doctor.MonitorWarning)  # a warning here fails the test
        watched.fit(X, y, epochs=4, batch_size=32, lr=0.05, seed=0, on_epoch_end=monitor)
    assert monitor.findings == [] and monitor.report().ok
    assert len(monitor.records) == 4
    for a, b in zip(plain.weights, watched.weights):
        np.testing.assert_array_equal(a, b)  # watching changes nothing


def test_dead_relus_are_reported_for_their_layer():
    X, y = _blobs()
    net = mlpcore.Network([20, 16, 16, 4], seed=0)
    weights = net.weights
    weights[1][-1] = -1e3  # layer 1's biases: every unit off for every input
    net.weights = weights
    monitor = doctor.Monitor(warn=False)
    net.fit(X, y, epochs=1, batch_size=60, lr=0.01, seed=0, on_epoch_end=monitor)
    dead = [f for f in monitor.findings if f.code == "dead-relus"]
    assert [(f.layer, f.part) for f in dead] == [(1, "weights")]
    assert "100%" in dead[0].message
    assert monitor.records[0]["layers"][1]["dead_relus"] == 1.0


def _history(losses):
    h = History()
    for e, v in enumerate(losses, 1):
        h.epoch.append(e)
        h.loss.append(v)
    return h


def _fed(losses):
    """A Monitor on a small network, given the epochs' losses one epoch at a time: yields after each."""
    X, y = _blobs(n=100)
    monitor = doctor.Monitor(warn=False)
    monitor.on_fit_begin(mlpcore.Network([20, 8, 4], seed=0), X, y, 4)
    for k in range(1, len(losses) + 1):
        monitor(_history(losses[:k]))
        yield monitor


@pytest.mark.parametrize("losses,code", [
    ([math.log(4) * 1.005, math.log(4) * 0.995, math.log(4)], "not-learning"),
    ([0.9, 1.0, 1.1, 1.2], "lr-too-high"),
])
def test_loss_rules_fire_on_the_epoch_that_completes_them(losses, code):
    for k, monitor in enumerate(_fed(losses), 1):
        found = code in [f.code for f in monitor.findings]
        assert found == (k == len(losses))  # not one epoch earlier
    assert monitor.findings[-1].severity == "warning"


@pytest.mark.parametrize("losses", [
    [math.log(4) * 1.02, math.log(4), math.log(4)],   # one epoch outside the 1% band
    [0.9, 1.0, 1.1, 1.05],                            # grew twice, then fell
])
def test_loss_rules_need_three_epochs_in_a_row(losses):
    *_, monitor = _fed(losses)
    assert not {"not-learning", "lr-too-high"} & set(f.code for f in monitor.findings)


@pytest.mark.filterwarnings("ignore:X has values as large as", "ignore::mlpcore.TrainingWarning")
def test_update_ratios_outside_the_range_are_reported():
    X, y = _blobs()
    tiny = mlpcore.Network([20, 16, 4], seed=0)
    monitor = doctor.Monitor(warn=False)
    tiny.fit(X, y, epochs=1, batch_size=60, lr=1e-7, seed=0, on_epoch_end=monitor)
    assert {(f.code, f.layer) for f in monitor.findings} == {("updates-too-small", 0), ("updates-too-small", 1)}
    large = mlpcore.Network([20, 16, 4], seed=0)
    monitor = doctor.Monitor(warn=False)
    large.fit(X * 10, y, epochs=1, batch_size=600, lr=5.0, seed=0, on_epoch_end=monitor)
    assert "updates-too-large" in monitor.report().codes()


def test_each_finding_is_warned_once():
    X, y = _blobs()
    net = mlpcore.Network([20, 16, 4], seed=0)
    monitor = doctor.Monitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.fit(X, y, epochs=3, batch_size=60, lr=1e-7, seed=0, on_epoch_end=monitor)
    messages = [str(w.message) for w in caught if issubclass(w.category, doctor.MonitorWarning)]
    assert len(messages) == 2 and all("updates-too-small" in m for m in messages)
    assert len(monitor.records) == 3


def test_a_monitor_outside_fit_and_bad_arguments_are_refused():
    with pytest.raises(RuntimeError, match="on_epoch_end"):
        doctor.Monitor()(_history([1.0]))
    for rows in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rows"):
            doctor.Monitor(rows=rows)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_students_setting_is_reported_as_not_learning():
    (X, y), _ = mlpcore.datasets.load_fashion_mnist(REAL_DATA, verify=False)
    net = mlpcore.Network([784, 300, 300, 10], init="normal", seed=0)
    monitor = doctor.Monitor(warn=False)
    net.fit(X, y, epochs=3, batch_size=600, lr=0.001, seed=0, on_epoch_end=monitor)
    assert monitor.report().codes() == ["not-learning"]


def test_a_decaying_schedule_and_noisy_small_steps_are_not_called_too_small():
    """The default recipe's shape: momentum, a cosine schedule decaying to 0, small batches (whose steps
    are mostly noise, so an epoch's net move is far less than the sum of its steps)."""
    X, y = _blobs(n=2000)
    net = mlpcore.Network([20, 32, 4], seed=0)
    monitor = doctor.Monitor(warn=False)
    net.fit(X, y, epochs=6, batch_size=8, optimizer=mlpcore.optimizers.SGD(lr=0.01, momentum=0.9, nesterov=True),
            schedule=mlpcore.schedules.Cosine(warmup=0.03), seed=0, on_epoch_end=monitor)
    assert monitor.findings == [], str(monitor.report())


def test_a_monitor_passed_to_a_second_fit_starts_again():
    X, y = _blobs()
    monitor = doctor.Monitor(warn=False)
    for seed in (0, 1):
        net = mlpcore.Network([20, 16, 4], seed=seed)
        net.fit(X, y, epochs=2, batch_size=60, lr=1e-7, seed=0, on_epoch_end=monitor)
        assert [r["epoch"] for r in monitor.records] == [1, 2]
        assert {f.code for f in monitor.findings} == {"updates-too-small"}


def test_monitor_warnings_point_at_the_users_fit_call():
    X, y = _blobs()
    net = mlpcore.Network([20, 16, 4], seed=0)
    with pytest.warns(doctor.MonitorWarning) as caught:
        net.fit(X, y, epochs=1, batch_size=60, lr=1e-7, seed=0, on_epoch_end=doctor.Monitor())
    assert all(w.filename == __file__ for w in caught)


def test_other_activations_and_heads_are_monitored_as_they_are():
    # A tanh layer has no dead ReLUs, and its activations are tanh's; a regression's loss near ln K is
    # not "chance".
    X, y = _blobs(n=200)
    net = mlpcore.Network([20, 8, 4], dtype="float64", seed=0, activation="tanh")
    monitor = doctor.Monitor(warn=False)
    _fit(net, X, y, monitor, epochs=1, batch_size=50, lr=0.05)
    layer = monitor.records[0]["layers"][0]
    rows = np.sort(np.random.default_rng(0).choice(len(X), size=min(monitor.rows, len(X)), replace=False))
    a = np.tanh(np.hstack([X[rows].astype(np.float64), np.ones((len(rows), 1))]) @ net.weights[0])
    assert layer["dead_relus"] is None and layer["activation_std"] == pytest.approx(a.std(), rel=1e-12)
    regression = mlpcore.Network([20, 8, 4], dtype="float64", seed=0, loss="squared_error")
    monitor = doctor.Monitor(warn=False)
    monitor.on_fit_begin(regression, X.astype(np.float64), np.zeros((len(X), 4)), 4)
    for k in range(1, 4):
        monitor(_history([math.log(4)] * k))
    assert "not-learning" not in [f.code for f in monitor.findings]
