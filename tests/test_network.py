"""The Network API: construction, weights, accepted inputs, threads, interruption."""
import numpy as np
import pytest

import mlpcore
from mlpcore import reference
from conftest import RTOL, make_problem, relative_error


def test_same_seed_same_weights(dtype):
    a = mlpcore.Network([784, 300, 300, 10], dtype=dtype, seed=42)
    b = mlpcore.Network([784, 300, 300, 10], dtype=dtype, seed=42)
    c = mlpcore.Network([784, 300, 300, 10], dtype=dtype, seed=43)
    for Wa, Wb, Wc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(Wa, Wb)
        assert not np.array_equal(Wa, Wc)


@pytest.mark.parametrize("init,weight_std,bias_std", [
    ("he", lambda n_in, n_out: np.sqrt(2 / n_in), 0.0),
    ("glorot", lambda n_in, n_out: np.sqrt(2 / (n_in + n_out)), 0.0),
    ("normal", lambda n_in, n_out: 0.01, 0.01),
])
def test_initialisations(init, weight_std, bias_std, dtype):
    net = mlpcore.Network([784, 300, 300, 10], dtype=dtype, init=init, seed=0)
    assert net.n_params == 785 * 300 + 301 * 300 + 301 * 10
    for W, (n_in, n_out) in zip(net.weights, [(784, 300), (300, 300), (300, 10)]):
        assert W.shape == (n_in + 1, n_out) and W.dtype == dtype and W.flags.c_contiguous
        assert W[:-1].std() == pytest.approx(weight_std(n_in, n_out), rel=0.05)
        assert W[-1].std() == pytest.approx(bias_std, abs=0.004)


def test_students_weights_load_as_they_are(dtype):
    # The student's W: float64 lists of (n_in + 1, n_out) arrays, last row the bias.
    rng = np.random.default_rng(0)
    W = [rng.normal(0, 0.01, (785, 300)), rng.normal(0, 0.01, (301, 300)), rng.normal(0, 0.01, (301, 10))]
    net = mlpcore.Network([784, 300, 300, 10], dtype=dtype)
    net.weights = W
    for mine, theirs in zip(net.weights, W):
        np.testing.assert_array_equal(mine, theirs.astype(dtype))
    X = rng.random((3, 784))
    assert relative_error(net.predict_proba(X), reference.forward(W, X)) <= RTOL[dtype]


def test_weights_are_views_that_training_updates():
    net = mlpcore.Network([3, 4, 2], seed=0)
    W = net.weights
    X, y = make_problem([3, 4, 2], 8, np.float32)
    net.train_step(X, y, lr=0.1)
    np.testing.assert_array_equal(W[0], net.weights[0])


@pytest.mark.parametrize("make_X", [
    pytest.param(lambda X: X.astype(np.float64), id="float64"),
    pytest.param(lambda X: X.astype(np.float32), id="float32"),
    pytest.param(lambda X: (X * 10).astype(np.int32), id="int32"),
    pytest.param(lambda X: np.asfortranarray(X), id="fortran"),
    pytest.param(lambda X: np.repeat(X, 2, axis=1)[:, ::2], id="strided"),
    pytest.param(lambda X: X.tolist(), id="list"),
    pytest.param(lambda X: X.astype(">f8"), id="big-endian"),
])
def test_any_real_layout_is_accepted(make_X, dtype):
    net = mlpcore.Network([5, 6, 3], dtype=dtype, seed=0)
    X, y = make_problem([5, 6, 3], 9, np.float64)
    given = make_X(X)
    expected_X = np.asarray(given, dtype=dtype)
    expected = reference.forward(net.weights, expected_X)
    assert relative_error(net.predict_proba(given), expected) <= RTOL[dtype]
    assert net.loss(given, y) == pytest.approx(reference.loss(net.weights, expected_X, y),
                                               rel=RTOL[dtype])


def test_read_only_inputs_work(dtype, tmp_path):
    X, y = make_problem([5, 6, 3], 20, dtype)
    np.save(tmp_path / "X.npy", X)
    X_mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    y_ro = y.copy()
    y_ro.setflags(write=False)
    net = mlpcore.Network([5, 6, 3], dtype=dtype, seed=0)
    net.fit(X_mapped, y_ro, epochs=2, batch_size=6)
    net.train_step(X_mapped, y_ro, lr=0.1)
    assert net.predict(X_mapped).shape == (20,)


def test_fit_does_not_change_the_callers_arrays(dtype):
    X, y = make_problem([5, 6, 3], 20, dtype)
    X0, y0 = X.copy(), y.copy()
    mlpcore.Network([5, 6, 3], dtype=dtype, seed=0).fit(X, y, epochs=2, batch_size=6)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


def test_one_hot_and_label_targets_train_identically(dtype):
    X, y = make_problem([5, 6, 3], 30, dtype)
    a = mlpcore.Network([5, 6, 3], dtype=dtype, seed=0)
    b = mlpcore.Network([5, 6, 3], dtype=dtype, seed=0)
    ha = a.fit(X, y, epochs=3, batch_size=7, seed=1)
    hb = b.fit(X, np.eye(3)[y], epochs=3, batch_size=7, seed=1)
    np.testing.assert_allclose(ha.loss, hb.loss, rtol=RTOL[dtype])
    for Wa, Wb in zip(a.weights, b.weights):
        assert relative_error(Wa, Wb) <= RTOL[dtype]


def test_batch_larger_than_the_data_is_one_batch():
    X, y = make_problem([4, 3], 5, np.float64)
    a = mlpcore.Network([4, 3], dtype="float64", seed=0)
    b = mlpcore.Network([4, 3], dtype="float64", seed=0)
    a.fit(X, y, epochs=1, batch_size=600, lr=0.1)
    b.train_step(X, y, lr=0.1)
    for Wa, Wb in zip(a.weights, b.weights):
        assert relative_error(Wa, Wb) <= 1e-12


def test_threads_one_and_two_agree(dtype):
    X, y = make_problem([50, 40, 30, 5], 300, dtype)
    results = []
    for threads in (1, 2):
        net = mlpcore.Network([50, 40, 30, 5], dtype=dtype, seed=0)
        history = net.fit(X, y, epochs=2, batch_size=64, seed=0, threads=threads)
        results.append((history.loss, net.weights, net.predict_proba(X, threads=threads)))
    (loss1, W1, P1), (loss2, W2, P2) = results
    np.testing.assert_allclose(loss1, loss2, rtol=RTOL[dtype])
    for a, b in zip(W1, W2):
        assert relative_error(a, b) <= RTOL[dtype]
    assert relative_error(P1, P2) <= RTOL[dtype]


def test_blas_thread_count_is_restored():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [info["num_threads"] for info in threadpoolctl.threadpool_info()]
    X, y = make_problem([5, 3], 20, np.float32)
    net = mlpcore.Network([5, 3], seed=0)
    net.fit(X, y, epochs=1, threads=1)
    net.predict(X, threads=1)
    assert [info["num_threads"] for info in threadpoolctl.threadpool_info()] == before


def test_interrupt_restores_the_last_finished_epoch():
    X, y = make_problem([5, 6, 3], 40, np.float64)
    net = mlpcore.Network([5, 6, 3], dtype="float64", seed=0)
    snapshots = []

    def on_epoch_end(history):
        snapshots.append([W.copy() for W in net.weights])

    def on_progress(epoch, done, total):
        if epoch == 3 and done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=5, batch_size=4, on_epoch_end=on_epoch_end, on_progress=on_progress)
    assert len(snapshots) == 2
    for W, saved in zip(net.weights, snapshots[-1]):
        np.testing.assert_array_equal(W, saved)


def test_progress_reports_every_batch_by_the_end():
    X, y = make_problem([5, 3], 50, np.float32)
    seen = []
    mlpcore.Network([5, 3], seed=0).fit(
        X, y, epochs=2, batch_size=7, on_progress=lambda e, done, total: seen.append((e, done, total)))
    assert seen[-1] == (2, 8, 8)
    assert [s for s in seen if s[0] == 1][-1] == (1, 8, 8)


def test_history_as_dict():
    X, y = make_problem([5, 3], 50, np.float32)
    history = mlpcore.Network([5, 3], seed=0).fit(X, y, epochs=3, validation_data=(X, y))
    d = history.as_dict()
    assert d["epoch"] == [1, 2, 3]
    assert len(d["loss"]) == len(d["val_loss"]) == len(d["val_accuracy"]) == 3


def test_assigning_the_networks_own_weights_swapped():
    net = mlpcore.Network([3, 3, 3, 3], dtype="float64", seed=0)
    W0, W1, W2 = (W.copy() for W in net.weights)
    views = net.weights
    net.weights = [views[1], views[0], views[2]]
    np.testing.assert_array_equal(net.weights[0], W1)
    np.testing.assert_array_equal(net.weights[1], W0)
    np.testing.assert_array_equal(net.weights[2], W2)


def test_a_failing_callback_rolls_back_to_the_last_finished_epoch():
    X, y = make_problem([5, 6, 3], 40, np.float64)
    net = mlpcore.Network([5, 6, 3], dtype="float64", seed=0)
    snapshots = []

    def on_epoch_end(history):
        if history.epoch[-1] == 3:
            raise RuntimeError("callback failed")
        snapshots.append([W.copy() for W in net.weights])

    with pytest.raises(RuntimeError, match="callback failed"):
        net.fit(X, y, epochs=5, batch_size=4, on_epoch_end=on_epoch_end)
    for W, saved in zip(net.weights, snapshots[-1]):
        np.testing.assert_array_equal(W, saved)


def test_interrupt_during_validation_keeps_the_previous_epoch():
    X, y = make_problem([5, 6, 3], 40, np.float64)
    net = mlpcore.Network([5, 6, 3], dtype="float64", seed=0)
    snapshots = []
    real_loss = net._mean_loss

    def loss(*args, **kwargs):
        if len(snapshots) == 2:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    net._mean_loss = loss
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=5, batch_size=4, validation_data=(X, y),
                on_epoch_end=lambda h: snapshots.append([W.copy() for W in net.weights]))
    for W, saved in zip(net.weights, snapshots[-1]):
        np.testing.assert_array_equal(W, saved)


@pytest.mark.parametrize("bad,words", [
    (dict(on_progress=5), "on_progress must be callable"),
    (dict(on_epoch_end="print"), "on_epoch_end must be callable"),
    (dict(validation_data=np.zeros((3, 5))), "validation_data must be a pair"),
])
def test_bad_fit_options_are_rejected_before_training(bad, words):
    X, y = make_problem([5, 3], 20, np.float32)
    net = mlpcore.Network([5, 3], seed=0)
    before = [W.copy() for W in net.weights]
    with pytest.raises(TypeError, match=words):
        net.fit(X, y, epochs=1, **bad)
    for W, saved in zip(net.weights, before):
        np.testing.assert_array_equal(W, saved)


def test_validation_inside_fit_keeps_the_thread_limit():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from mlpcore._threads import _find_blas_controller

    path = _find_blas_controller().lib_controllers[0].filepath
    X, y = make_problem([5, 3], 20, np.float32)
    net = mlpcore.Network([5, 3], seed=0)
    seen = []
    real_mean_loss = net._mean_loss

    def mean_loss(*args, **kwargs):
        # Called before the limit of its own call is set: what it sees is fit's limit, still in force.
        threads = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["filepath"] == path]
        seen.extend(threads)
        return real_mean_loss(*args, **kwargs)

    net._mean_loss = mean_loss
    net.fit(X, y, epochs=2, threads=1, validation_data=(X, y))
    assert seen == [1, 1]


def test_datasets_is_reachable_from_the_package():
    assert mlpcore.datasets.load_fashion_mnist is not None
    assert len(mlpcore.datasets.FASHION_MNIST_CLASSES) == 10


def test_the_core_refuses_a_workspace_too_small_for_gathering():
    from mlpcore import _compiled

    net = mlpcore.Network([5, 6, 3], dtype="float64", seed=0)
    X, y = make_problem([5, 6, 3], 10, np.float64)
    before = net._params.copy()
    work = np.empty(_compiled.workspace_size(net._sizes, 4, False))  # no room for gathered rows
    assert _compiled.workspace_size(net._sizes, 4, True) > work.size
    with pytest.raises(ValueError, match="workspace"):
        _compiled.train_batches(net._params, np.empty_like(net._params), net._sizes, X, y.astype(np.intp),
                            np.empty((0, 3)), np.arange(10, dtype=np.intp), 4, 0, 3, _compiled.UpdateRule(_compiled.SGD, 0.1), work,
                            np.empty(4, dtype=np.intp))
    np.testing.assert_array_equal(net._params, before)
