"""mlpcore used as a hostile user would: concurrent calls, logits that overflow, damaged and crafted model
and IDX files, signals during training, divergence that stays finite (issue 13). Each case came from a
hostile run; each stays here so that it stays found."""
import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

import mlpcore
from mlpcore import datasets
from conftest import idx_bytes, write_idx_data_set

DTYPES = ["float32", "float64"]


def _blobs(n=400, features=12, classes=3, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    X = rng.normal(scale=2.0, size=(classes, features))[y] + rng.normal(size=(n, features))
    return X.astype(dtype), y


def _scipy_blas_threads():
    import scipy.linalg  # noqa: F401  (loads the BLAS mlpcore calls)
    return sorted((lib["filepath"], lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas")


# -------------------------------------------------------------------------------------------------
# 1. Threads

def test_threads_predicting_on_one_network_get_the_serial_result():
    X, _ = _blobs(n=5000, features=40)
    net = mlpcore.Network([40, 64, 32, 3], seed=0)
    expected = net.predict_proba(X)
    before = _scipy_blas_threads()
    results, errors = [None] * 6, []

    def predict(i):
        try:
            for _ in range(5):
                results[i] = net.predict_proba(X)
                assert np.array_equal(results[i], expected)
        except BaseException as exc:  # noqa: BLE001  (reported below, from the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=predict, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _scipy_blas_threads() == before  # BLAS's thread count is what it was


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_fit_beside_a_predict_loop_gives_the_weights_of_a_fit_alone(dtype):
    X, y = _blobs(n=20000, features=100, dtype=dtype)
    alone = mlpcore.Network([100, 256, 3], dtype=dtype, seed=1)
    alone.fit(X, y, epochs=2, batch_size=128, lr=0.05, seed=0)
    net = mlpcore.Network([100, 256, 3], dtype=dtype, seed=1)
    before = _scipy_blas_threads()
    stop, seen, errors = threading.Event(), [], []

    def predict_loop():
        try:
            while not stop.is_set():
                proba = net.predict_proba(X[:500])
                seen.append(bool(np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-5)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    reader = threading.Thread(target=predict_loop)
    reader.start()
    try:
        net.fit(X, y, epochs=2, batch_size=128, lr=0.05, seed=0)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors
    assert seen and all(seen)
    for a, b in zip(alone.weights, net.weights):
        np.testing.assert_array_equal(a, b)
    assert _scipy_blas_threads() == before


def _serial_states_and_concurrent_reads(sizes, X, y, steps, lr, read):
    """read(net) after each of `steps` train_steps, serially; then read(net) over and over in a thread while
    another network from the same seed takes the same steps: (the serial states, what the thread read)."""
    net = mlpcore.Network(sizes, dtype="float64", seed=0)
    states = [read(net)]
    for _ in range(steps):
        net.train_step(X, y, lr=lr)
        states.append(read(net))
    net = mlpcore.Network(sizes, dtype="float64", seed=0)
    stop, seen = threading.Event(), []

    def reader():
        while not stop.is_set():
            seen.append(read(net))

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(steps):
        net.train_step(X, y, lr=lr)
    stop.set()
    thread.join()
    assert seen
    return states, seen


def test_a_reader_never_sees_half_a_step():
    """train_step writes every weight under the network's lock: a reader's loss is that of the weights
    before the step or after it, never of a mixture."""
    X, y = _blobs(n=256, features=20)
    states, seen = _serial_states_and_concurrent_reads([20, 256, 3], X, y, 4, 0.5, lambda net: net.loss(X, y))
    assert all(any(abs(v - s) <= 1e-12 * abs(s) for s in states) for v in seen)


def test_a_network_pickles_without_its_lock():
    import pickle
    net = mlpcore.Network([5, 4, 3], seed=0)
    copy = pickle.loads(pickle.dumps(net))
    for a, b in zip(net.weights, copy.weights):
        np.testing.assert_array_equal(a, b)
    X, _ = _blobs(n=10, features=5)
    np.testing.assert_array_equal(copy.predict_proba(X), net.predict_proba(X))


# -------------------------------------------------------------------------------------------------
# 2. Logits that overflow: an error from every entry point, never NaN as an answer

def _overflowing():
    net = mlpcore.Network([4, 3, 3], dtype="float32", seed=0)
    weights = net.weights
    weights[0] *= 1e20
    weights[1] *= 1e20
    net.weights = weights
    X = np.ones((5, 4), dtype=np.float32)
    return net, X, np.zeros(5, dtype=int)


@pytest.mark.parametrize("call", ["predict_proba", "predict", "score", "loss", "loss_and_gradients"])
def test_overflowing_logits_are_an_error_from_every_entry_point(call):
    net, X, y = _overflowing()
    before = [W.copy() for W in net.weights]
    args = (X,) if call in ("predict_proba", "predict") else (X, y)
    with pytest.raises(ValueError, match="overflow"):
        getattr(net, call)(*args)
    for a, b in zip(before, net.weights):
        np.testing.assert_array_equal(a, b)


def _refused_within(call, match=None):
    """call() must raise ValueError (matching `match`): (the error, the peak bytes traced meanwhile)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as caught:
            call()
        return caught.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -------------------------------------------------------------------------------------------------
# 3. Model files: damaged or crafted, always one ValueError naming the file

@pytest.fixture
def model_file(tmp_path):
    net = mlpcore.Network([6, 8, 5, 3], seed=0)
    net.metadata = {"note": "hostile"}
    path = tmp_path / "model.npz"
    net.save(path)
    return path


def test_a_few_hundred_mutated_model_files_load_or_are_refused_by_name(model_file, tmp_path):
    base = model_file.read_bytes()
    rng = np.random.default_rng(12)
    target = tmp_path / "mutated.npz"
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(300):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 6))):
            if len(data) < 2:
                break
            at = int(rng.integers(len(data)))
            kind = rng.integers(4)
            if kind == 0:
                data[at] = int(rng.integers(256))
            elif kind == 1:
                del data[at:at + int(rng.integers(1, 40))]
            elif kind == 2:
                data[at:at] = rng.bytes(int(rng.integers(1, 20)))
            else:
                del data[at:]
        target.write_bytes(bytes(data))
        try:
            net = mlpcore.load(target)
        except ValueError as exc:
            assert "mutated.npz" in str(exc)
            outcomes["refused"] += 1
        else:
            assert net.layer_sizes == (6, 8, 5, 3)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 200


def _rewrite(src, dst, **entries):
    """A copy of the model file with entries replaced, added (arrays) or written raw (bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            name = info.filename[:-4]
            if name not in entries:
                zout.writestr(info.filename, zin.read(info))
        for name, value in entries.items():
            if isinstance(value, bytes):
                zout.writestr(name + ".npy", value)
            else:
                with zout.open(name + ".npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def _npy_header_only(shape, descr="<f4"):
    """A .npy header (magic included) declaring `shape`, and no data after it."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


@pytest.mark.parametrize("entries,words", [
    # An unknown entry declaring 6 GiB: refused by its name, unread.
    ({"junk": _npy_header_only((40000, 40000))}, "unexpected entries ['junk']"),
    # Layer sizes whose weights could not fit in the file: refused before anything is allocated.
    ({"layer_sizes": np.array([100000, 100000, 5, 3])}, "cannot hold them"),
    # A weights entry whose header declares far more than the layer sizes imply.
    ({"weights_0": _npy_header_only((70000, 8))}, "(70000, 8)"),
    ({"metadata": np.array("[" * 100000 + "]" * 100000)}, "nests too deeply"),
    ({"metadata": np.array("[1, 2]")}, "not an object"),
    ({"layer_sizes": np.array([[6, 8], [5, 3]])}, "not a list of sizes"),
    ({"format_version": np.array("one")}, "not integers"),
    ({"weights_0": b"\x93NUMPY\x09\x00garbage"}, "model file"),
])
def test_crafted_model_files_are_refused_by_name(model_file, tmp_path, entries, words):
    crafted = tmp_path / "crafted.npz"
    _rewrite(model_file, crafted, **entries)
    error, peak = _refused_within(lambda: mlpcore.load(crafted))
    assert "crafted.npz" in str(error) and words in str(error)
    assert peak < 50 * 2**20  # nothing near what was declared was allocated


def test_an_object_array_in_a_model_file_is_never_unpickled(model_file, tmp_path):
    crafted = tmp_path / "pickled.npz"
    with open(tmp_path / "obj.npy", "wb") as f:
        np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _rewrite(model_file, crafted, metadata=(tmp_path / "obj.npy").read_bytes())
    with pytest.raises(ValueError, match="holds objects"):
        mlpcore.load(crafted)


# -------------------------------------------------------------------------------------------------
# 4. IDX files

def _idx_mutations(base, rng, count):
    for _ in range(count):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(len(data)))
            if rng.integers(2):
                data[at] = int(rng.integers(256))
            else:
                del data[at:]
            if not data:
                break
        yield bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_a_few_hundred_mutated_idx_files_read_or_are_refused_by_name(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, size=(20, 6, 5)).astype(np.uint8)
    base = idx_bytes(images)
    rng = np.random.default_rng(3)
    path = tmp_path / "images-idx3-ubyte"
    for data in _idx_mutations(gzip.compress(base) if compress else base, rng, 200):
        path.write_bytes(data)
        try:
            array = datasets.read_idx(path)
        except ValueError as exc:
            assert str(path) in str(exc)
        else:
            assert array.size * array.itemsize <= len(base)


def test_a_small_gzip_that_declares_gigabytes_reads_only_what_it_holds(tmp_path):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b"\0\0\x08\x03" + struct.pack(">3I", 4_000_000, 28, 28))
        f.write(bytes(32 * 2**20))  # 32 MiB of zeros: a few tens of KiB compressed
    _, peak = _refused_within(lambda: datasets.read_idx(path), "truncated")
    assert peak < 200 * 2**20  # the 3.1 GB declared is never allocated


@pytest.mark.parametrize("content,words", [
    (b"\0\0\x08\xff" + bytes(4 * 255), "255 dimensions"),
    (b"\0\0\x08\x03" + struct.pack(">3I", 0, 28, 28), None),  # zero images: read_idx is fine with it
])
def test_odd_idx_headers_name_the_file(tmp_path, content, words):
    path = tmp_path / "odd-idx3-ubyte"
    path.write_bytes(content)
    if words is None:
        assert datasets.read_idx(path).shape == (0, 28, 28)
    else:
        with pytest.raises(ValueError, match=words) as caught:
            datasets.read_idx(path)
        assert str(path) in str(caught.value)


def test_a_data_set_with_no_image_and_a_folder_as_a_file_name_the_path(tmp_path):
    for split in ("train", "t10k"):
        (tmp_path / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
        (tmp_path / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    with pytest.raises(ValueError, match="holds no images") as caught:
        datasets.load_fashion_mnist(tmp_path, verify=False)
    assert str(tmp_path) in str(caught.value)
    with pytest.raises(ValueError, match="is a folder"):
        datasets.read_idx(tmp_path)


# -------------------------------------------------------------------------------------------------
# 5. The command line: one line and status 2, never a traceback

def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "mlpcore", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_idx_data_set(tmp_path_factory.mktemp("data"))


def _one_line_status_2(result):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_command_line_failures_are_one_line(tmp_path, small_data):
    mlpcore.Network([784, 5], seed=0).save(tmp_path / "five.npz")
    message = _one_line_status_2(_cli("evaluate", tmp_path / "five.npz", "--data", small_data, cwd=tmp_path))
    assert "784-5 network" in message and "10 classes" in message
    for command in ("train", "evaluate"):
        extra = [tmp_path / "five.npz"] if command == "evaluate" else []
        message = _one_line_status_2(_cli(command, *extra, "--threads", 2**64, "--data", small_data, cwd=tmp_path))
        assert "up to 65536" in message
    message = _one_line_status_2(_cli("train", "--hidden", 1_000_000_000, "--epochs", 1, "--data", small_data,
                                      "--out", tmp_path / "huge", cwd=tmp_path))
    assert "not enough memory" in message and not (tmp_path / "huge").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_model_is_not_called_truncated(tmp_path, small_data):
    path = tmp_path / "locked.npz"
    mlpcore.Network([784, 10], seed=0).save(path)
    path.chmod(0)
    message = _one_line_status_2(_cli("evaluate", path, "--data", small_data, cwd=tmp_path))
    assert "Permission denied" in message and "truncated" not in message


# -------------------------------------------------------------------------------------------------
# 6. Signals and crashes

@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_scheduler_signal_keeps_the_last_finished_epoch(small_data, tmp_path, signame):
    number = getattr(signal, signame, None)
    if number is None:
        pytest.skip(f"no {signame} here")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlpcore", "train", "--epochs", "100000", "--hidden", "30", "--batch-size", "10",
         "--data", str(small_data), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            if line.startswith("epoch") and line.split()[1].startswith("2/"):
                process.send_signal(number)
                break
        _, stderr = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
    assert process.returncode == 128 + number, stderr
    assert f"interrupted by {signame}" in stderr and "Traceback" not in stderr
    rows = json.loads((out / "history.json").read_text())
    net = mlpcore.load(out / "model.npz")
    assert net.metadata["interrupted"] is True and net.metadata["epochs_trained"] == len(rows) >= 1


def test_temporary_files_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    from mlpcore._files import _HOST
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    day_ago = __import__("time").time() - 2 * 86400
    removed = [tmp_path / f".model.npz.{_HOST}.{dead.pid}.abcd_123.tmp",  # this host, its writer gone
               tmp_path / f".model.npz.0000ffff.{os.getpid()}.abcdefgh.tmp"]  # another host's, 2 days old
    kept = [tmp_path / f".model.npz.{_HOST}.{os.getpid()}.abcdefgh.tmp",  # a save running in this process
            tmp_path / f".model.npz.0000ffff.{dead.pid}.abcdefgh.tmp",    # another host's, recent
            tmp_path / f".model.npz.old.{_HOST}.{dead.pid}.abcdefgh.tmp",  # another file's (model.npz.old)
            tmp_path / ".model.npz.x1y2z3.tmp"]                           # not this naming at all
    for path in removed + kept:
        path.write_bytes(b"x" * 1000)
    os.utime(removed[1], (day_ago, day_ago))
    mlpcore.Network([3, 2], seed=0).save(tmp_path / "model.npz")
    assert not any(path.exists() for path in removed)
    assert all(path.exists() for path in kept)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["model.npz"]


def test_a_save_killed_midway_leaves_the_old_model(tmp_path):
    path = tmp_path / "model.npz"
    mlpcore.Network([3, 2], seed=0).save(path)
    before = path.read_bytes()
    code = ("import os, mlpcore, numpy as np\n"
            "import mlpcore._model_files as f\n"
            "real = np.savez\n"
            "def die(*a, **k):\n"
            "    real(*a, **k)\n"
            "    os._exit(9)\n"
            "f.np.savez = die\n"
            f"mlpcore.Network([3, 2], seed=1).save({str(path)!r})\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    assert path.read_bytes() == before
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1
    mlpcore.Network([3, 2], seed=2).save(path)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


# -------------------------------------------------------------------------------------------------
# 7. Divergence that stays finite

def test_finite_divergence_is_warned_and_diverged_fits_carry_their_history():
    X, y = _blobs(dtype="float64")
    net = mlpcore.Network([12, 16, 3], dtype="float64", seed=0)
    with pytest.warns(mlpcore.TrainingWarning, match="training is diverging"):
        try:
            net.fit(X, y, epochs=4, batch_size=20, lr=1e3, seed=0)
        except mlpcore.TrainingDiverged as exc:
            assert exc.history is not None and len(exc.history.loss) == len(exc.history.epoch)
    net = mlpcore.Network([12, 16, 3], dtype="float32", seed=0)
    with pytest.raises(mlpcore.TrainingDiverged) as caught:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net.fit(X * 1e15, y, epochs=3, batch_size=20, lr=1e3, seed=0)
    assert isinstance(caught.value.history, mlpcore.History)


def test_a_loss_stuck_at_chance_is_warned_once():
    X, y = _blobs()
    net = mlpcore.Network([12, 16, 3], init="normal", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.fit(X, y, epochs=8, batch_size=50, lr=1e-6, seed=0)
    stuck = [w for w in caught if issubclass(w.category, mlpcore.TrainingWarning)]
    assert len(stuck) == 1 and "not learning" in str(stuck[0].message)


def test_a_healthy_fit_warns_nothing():
    X, y = _blobs()
    net = mlpcore.Network([12, 16, 3], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(X, y, epochs=5, batch_size=32, lr=0.05, seed=0)


# -------------------------------------------------------------------------------------------------
# Every public entry point, on generated input: refused with ValueError or TypeError, or answered, and the
# weights never changed by a refused call and never made NaN.

_values = st.sampled_from([0.0, 1.0, -1.0, 1e30, -1e30, np.inf, -np.inf, np.nan, 1e-40, 255.0, 3.5])
_arrays = st.one_of(
    st.builds(lambda shape, value, dtype: np.full(shape, value, dtype=dtype),
              st.sampled_from([(0, 5), (3, 5), (3, 4), (3, 6), (5,), (2, 5, 1), (1, 5)]), _values,
              st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.complex64])),
    st.sampled_from([None, "abc", [[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]] * 3, object()]),
)
_targets = st.one_of(
    st.sampled_from([None, "y", [0, 1, 2], [0, 1, 5], [-1, 0, 1], [0.5, 1, 2], [True, False, True]]),
    st.builds(lambda shape, value: np.full(shape, value), st.sampled_from([(3,), (3, 3), (3, 2), (2,), (3, 3, 1)]),
              st.sampled_from([0, 1, 2, 0.5, np.nan, -1])),
)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=st.sampled_from(["predict_proba", "predict", "score", "loss", "loss_and_gradients", "train_step",
                             "fit"]),
       X=_arrays, y=_targets, dtype=st.sampled_from(DTYPES))
def test_every_entry_point_refuses_or_answers_and_never_harms_the_weights(call, X, y, dtype):
    net = mlpcore.Network([5, 4, 3], dtype=dtype, seed=0)
    before = [W.copy() for W in net.weights]
    args = {"predict_proba": (X,), "predict": (X,), "score": (X, y), "loss": (X, y), "loss_and_gradients": (X, y),
            "train_step": (X, y, 0.1), "fit": (X, y)}[call]
    kwargs = {"epochs": 1, "batch_size": 2} if call == "fit" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = getattr(net, call)(*args, **kwargs)
        except (ValueError, TypeError):
            for a, b in zip(before, net.weights):
                np.testing.assert_array_equal(a, b)
            return
    for W in net.weights:
        assert np.isfinite(W).all()
    if call == "predict_proba":  # an answer is the reference's, not merely finite
        assert np.isfinite(result).all()
        expected = mlpcore.reference.forward([W.astype(np.float64) for W in before], np.asarray(X, np.float64))
        np.testing.assert_allclose(result, expected, rtol=1e-3 if dtype == "float32" else 1e-9, atol=1e-6)
    elif call in ("score", "loss", "train_step"):
        assert np.isfinite(result)


# -------------------------------------------------------------------------------------------------
# From a review of the above: hand-offs between threads, fork, snapshots, a second training at once

def _run_with_deadline(target, seconds=60):
    """target() in a daemon thread; fails the test (instead of hanging the run) if it has not ended."""
    errors = []

    def run():
        try:
            target()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "deadlock: still running"
    assert not errors, errors


@pytest.mark.parametrize("work", ["train_step", "loss_and_gradients", "fit", "predict"])
def test_a_callback_may_hand_work_to_another_thread_and_wait_for_it(work):
    """A fit on a team holds BLAS at one thread; a call in another thread that wishes otherwise must not
    wait for that fit while the fit waits for it (an executor in a callback)."""
    X, y = _blobs(n=1000, features=20)
    a, b = mlpcore.Network([20, 16, 3], seed=0), mlpcore.Network([20, 16, 3], seed=1)
    calls = {"train_step": lambda: b.train_step(X[:8], y[:8], 0.01),
             "loss_and_gradients": lambda: b.loss_and_gradients(X[:8], y[:8]),
             "fit": lambda: b.fit(X[:100], y[:100], epochs=1, batch_size=8),
             "predict": lambda: b.predict(X)}

    def on_epoch_end(history):
        helper = threading.Thread(target=calls[work])
        helper.start()
        helper.join()

    _run_with_deadline(lambda: a.fit(X, y, epochs=2, batch_size=64, on_epoch_end=on_epoch_end))


def test_a_process_forked_while_another_thread_trains_can_use_mlpcore():
    import multiprocessing
    X, y = _blobs(n=20000, features=50)
    net = mlpcore.Network([50, 128, 3], seed=0)
    trainer = threading.Thread(target=net.fit, args=(X, y), kwargs={"epochs": 5, "batch_size": 64})
    trainer.start()
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(1) as pool:
            # Inside mlpcore in the parent (a held BLAS limit, a network being written) must not hang the child.
            result = pool.apply_async(_predict_in_child, (net, X[:10]))
            assert result.get(timeout=60).shape == (10,)
    finally:
        trainer.join()


def _predict_in_child(net, X):
    other = mlpcore.Network([50, 8, 3], seed=1)
    other.train_step(X, np.zeros(len(X), dtype=int), 0.01)
    return net.predict(X)


def test_get_weights_is_a_consistent_snapshot_while_another_thread_trains():
    X, y = _blobs(n=64, features=100)
    states, snapshots = _serial_states_and_concurrent_reads([100, 400, 3], X, y, 20, 0.2,
                                                            lambda net: net.get_weights())
    for snapshot in snapshots:
        assert any(all(np.array_equal(a, b) for a, b in zip(snapshot, state)) for state in states)


def test_a_network_is_not_trained_twice_at_once():
    X, y = _blobs()
    net = mlpcore.Network([12, 16, 3], seed=0)
    seen = []

    def train_again(history):
        with pytest.raises(RuntimeError, match="already being trained"):
            net.fit(X, y, epochs=1)
        with pytest.raises(RuntimeError, match="already being trained"):
            net.train_step(X[:5], y[:5], 0.1)
        seen.append(history.epoch[-1])

    net.fit(X, y, epochs=2, batch_size=50, lr=0.05, seed=0, on_epoch_end=train_again)
    assert seen == [1, 2]
    net.fit(X, y, epochs=1, batch_size=50, lr=0.05, seed=0)  # free again afterwards


def test_a_negative_dimension_in_a_model_entry_is_refused_unread(model_file, tmp_path):
    crafted = tmp_path / "negative.npz"
    _rewrite(model_file, crafted, format=_npy_header_only((-1,), "<U14") + bytes(50 * 2**20))
    _, peak = _refused_within(lambda: mlpcore.load(crafted), "negative dimension")
    assert peak < 20 * 2**20


def test_an_incompressible_gzip_that_declares_gigabytes_costs_what_it_holds(tmp_path):
    path = tmp_path / "noise-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\0\0\x08\x03" + struct.pack(">3I", 3000, 1000, 1000))
        f.write(np.random.default_rng(0).bytes(2**20))
    _, peak = _refused_within(lambda: datasets.read_idx(path), "truncated")
    assert peak < 40 * 2**20  # what the 1 MiB holds, not 3 GB, nor 1,100 times the file


def test_a_loss_that_starts_high_and_falls_is_not_called_diverging():
    X, y = _blobs(dtype="float64")
    net = mlpcore.Network([12, 16, 3], dtype="float64", seed=0)
    net.weights = [W * 10 for W in net.weights]
    with warnings.catch_warnings():
        warnings.simplefilter("error", mlpcore.TrainingWarning)
        history = net.fit(X, y, epochs=6, batch_size=20, lr=1e-3, seed=0)
    assert history.loss[0] > 10 * np.log(3) and history.loss[-1] < history.loss[0]


def _train_process(small_data, out, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "mlpcore", "train", "--epochs", "100000", "--hidden", "30", "--batch-size", "10",
         "--data", str(small_data), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _after_epoch(process, epoch, action):
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            if line.startswith("epoch") and line.split()[1].startswith(f"{epoch}/"):
                action()
                break
        return process.communicate(timeout=60)
    finally:
        watchdog.cancel()


def test_two_sigterms_in_a_row_still_save_the_model(small_data, tmp_path):
    process = _train_process(small_data, tmp_path / "out", cwd=tmp_path)

    def twice():
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)

    _, stderr = _after_epoch(process, 2, twice)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert mlpcore.load(tmp_path / "out" / "model.npz").metadata["interrupted"] is True


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_under_nohup_sighup_is_still_ignored(small_data, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "mlpcore", "train", "--epochs", "3", "--hidden", "30", "--data", str(small_data),
         "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _, stderr = _after_epoch(process, 1, lambda: process.send_signal(signal.SIGHUP))
    assert process.returncode == 0, stderr
    assert mlpcore.load(tmp_path / "out" / "model.npz").metadata["epochs_trained"] == 3
