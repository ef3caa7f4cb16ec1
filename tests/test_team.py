"""Training shared out between threads (an OpenMP team of workers) computes what the reference computes.

The team is forced here whatever the machine's cores: `threads` up to 4 (more threads than cores is slow,
never wrong) and every batch shared out, however few its rows. The architectures and batch sizes make
every product go both ways, split by rows (a batch at least as wide as the layer) and by columns, and
give workers empty shares (a last batch of one row).
"""
import numpy as np
import pytest

import mlpcore
from mlpcore import _compiled, _threads, network, reference
from conftest import RTOL, fake_cores, make_problem, relative_error
from test_core_vs_reference import _network, _reference_fit

pytestmark = pytest.mark.skipif(not _compiled.OPENMP, reason="this build of the core has no OpenMP")

SIZES = [40, 70, 50, 4]  # feature blocks (16-aligned) of 2 workers: 16 + 24, 32 + 38, 16 + 34
N_ROWS = 52
# Batches of 3 are shared out by features (the last one has 1 row); of 12 and 50 by rows, but their last
# ones (4 and 2 rows) by features.
BATCH_SIZES = [3, 12, 50]


def test_the_batch_sizes_share_out_both_ways():
    def by_rows(m):
        return _compiled.split_by_rows(m, max(SIZES[1:]), 8)

    assert [(by_rows(size), by_rows(N_ROWS % size)) for size in BATCH_SIZES] == [
        (False, False), (True, False), (True, False)]


def _spy(monkeypatch, name):
    """Record the team size of each call of _compiled.<name>."""
    teams, real = [], getattr(_compiled, name)
    monkeypatch.setattr(_compiled, name, lambda *args, **kwargs: teams.append(args[-1]) or real(*args, **kwargs))
    return teams


@pytest.fixture
def teams(monkeypatch):
    """Share out every batch, allow teams larger than the machine, and record the team size of each
    compiled training call."""
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)
    fake_cores(monkeypatch, 64)
    return _spy(monkeypatch, "train_batches")


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("targets", ["labels", "soft"])
def test_shared_fit_matches_reference_batch_by_batch(teams, threads, batch_size, targets):
    net = _network(SIZES, np.float64, seed=3)
    X, y = make_problem(SIZES, N_ROWS, np.float64, targets, seed=4)
    ref_weights = [W.copy() for W in net.weights]
    history = net.fit(X, y, epochs=3, batch_size=batch_size, lr=0.02, seed=11, threads=threads)
    ref_losses = _reference_fit(ref_weights, X, y, 3, batch_size, 0.02, seed=11)
    assert teams and set(teams) == {min(threads, batch_size)}  # never more workers than rows
    np.testing.assert_allclose(history.loss, ref_losses, rtol=1e-10)
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= 1e-10


@pytest.mark.parametrize("n", [1, 3, 11, 40])  # by features below 8 rows in float64, 24 in float32
def test_shared_gradients_match_reference(teams, monkeypatch, n, dtype):
    fake_cores(monkeypatch, 3)
    net = _network(SIZES, dtype)
    X, y = make_problem(SIZES, n, dtype, "onehot")
    loss, grads = net.loss_and_gradients(X, y)
    ref_loss, ref_grads = reference.loss_and_gradients(net.weights, X, y)
    assert teams == [min(3, n)]  # never more workers than rows
    assert loss == pytest.approx(ref_loss, rel=RTOL[dtype])
    for g, ref_g in zip(grads, ref_grads):
        assert relative_error(g, ref_g) <= RTOL[dtype]


@pytest.mark.parametrize("batch_size", [16, 256])
def test_one_and_two_threads_agree_on_the_students_shape(teams, batch_size, dtype):
    # Shared out by features at batch 16, by rows at 256.
    assert _compiled.split_by_rows(batch_size, 300, np.dtype(dtype).itemsize) == (batch_size == 256)
    X, y = make_problem([784, 300, 300, 10], 1024, dtype, seed=1)
    X = np.abs(X) / 4
    results = []
    for threads in (1, 2):
        net = mlpcore.Network([784, 300, 300, 10], dtype=dtype, seed=0)
        history = net.fit(X, y, epochs=1, batch_size=batch_size, lr=0.05, seed=0, threads=threads)
        results.append((history.loss, net.weights))
    assert set(teams) == {1, 2}
    (loss1, W1), (loss2, W2) = results
    np.testing.assert_allclose(loss1, loss2, rtol=10 * RTOL[dtype])
    for a, b in zip(W1, W2):
        assert relative_error(a, b) <= 10 * RTOL[dtype]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("layer_sizes", [[5, 7, 3], [5, 60, 3]])  # batches of 4: by rows, by features
def test_a_team_stops_together_before_a_batch_with_a_non_finite_loss(workers, layer_sizes, dtype):
    # Rows in order, batches of 4: row 9 overflows the logits, so batch 2 (rows 8..11) is not trained,
    # whichever worker's share holds it; batches 0 and 1 are.
    assert _compiled.split_by_rows(4, layer_sizes[1], np.dtype(dtype).itemsize) == (layer_sizes[1] == 7)
    sizes = np.array(layer_sizes, dtype=np.intp)
    X, y = make_problem(layer_sizes, 16, dtype)
    X[9] = np.finfo(dtype).max
    net = mlpcore.Network(layer_sizes, dtype=dtype, seed=0)
    net.weights = [net.weights[0], net.weights[1] * 100]  # row 9's logits reach infinity
    expected = mlpcore.Network(layer_sizes, dtype=dtype, seed=0)
    expected.weights = net.weights
    for start in (0, 4):
        expected.train_step(X[start:start + 4], y[start:start + 4], lr=0.1)
    params = np.concatenate([W.ravel() for W in net.weights])
    work = np.empty(_compiled.workspace_size(sizes, 4, False, workers, True), dtype=dtype)
    with _threads.blas_threads(1):  # as the core requires of a team
        total, done, _ = _compiled.train_batches(params, np.empty_like(params), sizes, X, y.astype(np.intp),
                                          np.empty((0, 0), dtype), np.empty(0, np.intp), 4, 0, 4,
                                          _compiled.UpdateRule(_compiled.SGD, 0.1), work,
                                          np.empty(4, np.intp), workers)
    assert done == 2
    assert np.isfinite(total)
    expected_params = np.concatenate([W.ravel() for W in expected.weights])
    assert relative_error(params, expected_params) <= RTOL[dtype]


def test_the_core_refuses_a_team_out_of_range():
    sizes = np.array([2, 2], dtype=np.intp)
    params = np.zeros(6)
    with pytest.raises(ValueError, match="workers must be in"):
        _compiled.train_batches(params, params.copy(), sizes, np.zeros((1, 2)), np.zeros(1, np.intp),
                            np.empty((0, 0)), np.empty(0, np.intp), 1, 0, 1,
                                _compiled.UpdateRule(_compiled.SGD, 0.1), np.empty(100),
                            np.empty(1, np.intp), 0)


def test_training_team_choice(monkeypatch):
    fake_cores(monkeypatch, 4)
    assert _threads.team(None, 600) == (4, 1)
    assert _threads.team(2, 600) == (2, 1)
    assert _threads.team(1, 600) == (1, 1)
    # Never more workers than cores: BLAS gets the threads beyond them.
    assert _threads.team(8, 600) == (4, 1)
    # Too few rows to share out: one worker, and BLAS gets the threads.
    assert _threads.team(None, 8) == (1, 4)
    assert _threads.team(4, 40) == (2, 1)


@pytest.mark.parametrize("batch_size", [3, 50])  # by features, by rows
def test_a_team_gives_the_same_weights_every_time(teams, batch_size):
    X, y = make_problem(SIZES, N_ROWS, np.float32, seed=2)
    results = []
    for _ in range(3):
        net = mlpcore.Network(SIZES, dtype="float32", seed=0)
        net.fit(X, y, epochs=2, batch_size=batch_size, lr=0.05, seed=1, threads=3)
        results.append(net.weights)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layer_sizes", [[40, 5], [40, 70, 4]])
def test_shared_float32_fit_matches_reference(teams, layer_sizes):
    # float32 over a few batches, with and without a hidden layer (one layer: always by rows).
    net = _network(layer_sizes, np.float32, seed=5)
    net.weights = [W / 50 for W in net.weights]
    X, y = make_problem(layer_sizes, N_ROWS, np.float32, seed=6)
    ref_weights = [W.astype(np.float64) for W in net.weights]
    net.fit(X, y, epochs=1, batch_size=10, lr=0.05, seed=3, threads=3)
    _reference_fit(ref_weights, X.astype(np.float64), y, 1, 10, 0.05, seed=3)
    assert set(teams) == {3}
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= 1e-4


def _fit_in_child(queue):
    X, y = make_problem(SIZES, N_ROWS, np.float32)
    net = mlpcore.Network(SIZES, dtype="float32", seed=0)
    net.fit(X, y, epochs=1, batch_size=50, threads=2)
    queue.put(_threads.team(2, 50))


def test_a_child_forked_after_a_team_trains_on_one_worker(monkeypatch):
    # GNU OpenMP hangs in a forked child's first team once the parent has run one.
    mp = pytest.importorskip("multiprocessing")
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    fake_cores(monkeypatch, 2)
    X, y = make_problem(SIZES, N_ROWS, np.float32)
    mlpcore.Network(SIZES, dtype="float32", seed=0).fit(X, y, epochs=1, batch_size=50, threads=2)
    assert _threads.team(2, 50) == (2, 1)
    context = mp.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fit_in_child, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in its training")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (1, 2)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_shared_predictions_and_loss_match_reference(monkeypatch, threads, n, dtype):
    # As inside fit. Chunks of 5 rows: several chunks, a last short one, and workers with no rows.
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)
    fake_cores(monkeypatch, 64)
    monkeypatch.setattr(network, "_CHUNK_ROWS", 5)
    proba_teams, loss_teams = _spy(monkeypatch, "predict_proba"), _spy(monkeypatch, "mean_loss")
    net = _network(SIZES, dtype)
    for targets in ("labels", "soft"):
        X, y = make_problem(SIZES, n, dtype, targets)
        _, labels, target_rows = net._check_data(X, y)
        P = net._proba(X, threads, team=True)
        assert relative_error(P, reference.forward(net.weights, X)) <= RTOL[dtype]
        loss = net._mean_loss(X, labels, target_rows, threads, team=True)
        assert loss == pytest.approx(reference.loss(net.weights, X, y), rel=RTOL[dtype])
    assert set(proba_teams) == set(loss_teams) == {min(threads, n, 5)}


def test_validation_runs_on_fits_team_and_predict_on_blas_threads(monkeypatch):
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)
    fake_cores(monkeypatch, 64)
    proba_teams, loss_teams = _spy(monkeypatch, "predict_proba"), _spy(monkeypatch, "mean_loss")
    net = _network(SIZES, np.float32)
    X, y = make_problem(SIZES, 40, np.float32)
    net.fit(X, y, epochs=2, batch_size=20, threads=2, validation_data=(X, y))
    assert proba_teams == loss_teams == [2, 2]
    net.predict_proba(X, threads=2)
    net.loss(X, y, threads=2)
    assert proba_teams[-1] == loss_teams[-1] == 1


def test_default_threads_keep_within_the_openmp_limit(tmp_path):
    # How joblib's loky workers and Dask's are told their share of the cores: OMP_NUM_THREADS, or a
    # threadpoolctl limit. Without one, threads=None is every usable core.
    import os
    import subprocess
    import sys
    import threadpoolctl
    script = "from mlpcore import _threads; print(_threads.default_threads(), _threads.usable_cores())"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    free = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout.split()
    assert free[0] == free[1]
    limited = subprocess.run([sys.executable, "-c", script], env=dict(env, OMP_NUM_THREADS="1"), cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout.split()
    assert limited == ["1", free[1]]
    if _compiled.OPENMP:
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            assert _threads.default_threads() == 1
            assert _threads.team(None, 600) == (1, 1)


def test_a_build_without_openmp_gives_blas_every_core_by_default(monkeypatch):
    # No team without OpenMP: BLAS gets the threads, within OMP_NUM_THREADS if it is set.
    fake_cores(monkeypatch, 4)
    monkeypatch.setattr(_compiled, "OPENMP", False)
    monkeypatch.setattr(_compiled, "openmp_max_threads", lambda: 1)  # what such a build reports
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _threads.default_threads() == 4
    assert _threads.team(None, 600) == (1, 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert _threads.team(None, 600) == (1, 2)
