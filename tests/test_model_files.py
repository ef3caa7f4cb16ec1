"""Models on disk: exact round trip, atomic writes, clear errors for bad files."""
import json
import os

import numpy as np
import pytest

import mlpcore


@pytest.fixture
def trained(dtype):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 6)), rng.integers(0, 3, 50)
    net = mlpcore.Network([6, 8, 5, 3], dtype=dtype, seed=0)
    net.fit(X, y, epochs=3, batch_size=16, lr=0.1)
    net.metadata = {"settings": {"lr": 0.1}, "final": {"test_accuracy": 0.5}}
    return net, X


def test_round_trip_is_exact(trained, tmp_path):
    net, X = trained
    net.save(tmp_path / "model.npz")
    loaded = mlpcore.load(tmp_path / "model.npz")
    assert loaded.layer_sizes == net.layer_sizes and loaded.dtype == net.dtype
    for a, b in zip(loaded.weights, net.weights):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert loaded.predict_proba(X).tobytes() == net.predict_proba(X).tobytes()
    assert loaded.metadata == dict(net.metadata, mlpcore_version=mlpcore.__version__)


def test_saved_file_needs_no_pickle(trained, tmp_path):
    net, _ = trained
    net.save(tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz", allow_pickle=False) as npz:
        assert str(npz["format"]) == "mlpcore-network"
        assert json.loads(str(npz["metadata"]))["settings"] == {"lr": 0.1}


def test_failed_save_keeps_the_old_file(trained, tmp_path, monkeypatch):
    net, _ = trained
    path = tmp_path / "model.npz"
    net.save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def test_saved_file_gets_the_usual_permissions(trained, tmp_path):
    net, _ = trained
    old = os.umask(0o022)
    try:
        net.save(tmp_path / "model.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "model.npz").stat().st_mode & 0o777 == 0o644


def test_metadata_must_be_json(trained, tmp_path):
    net, _ = trained
    net.metadata = {"bad": object()}
    with pytest.raises(TypeError, match="JSON"):
        net.save(tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        mlpcore.load(tmp_path / "nothing.npz")


def test_truncated_file(trained, tmp_path):
    net, _ = trained
    net.save(tmp_path / "model.npz")
    data = (tmp_path / "model.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz is not a readable mlpcore model file"):
        mlpcore.load(tmp_path / "cut.npz")


def test_not_an_npz(tmp_path):
    (tmp_path / "notes.npz").write_text("hello")
    with pytest.raises(ValueError, match="notes.npz is not a readable mlpcore model file"):
        mlpcore.load(tmp_path / "notes.npz")


def test_foreign_npz(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz is not an mlpcore model file"):
        mlpcore.load(tmp_path / "other.npz")


def test_pickled_entries_are_refused(tmp_path):
    np.savez(tmp_path / "pickled.npz", format=np.array("mlpcore-network"),
             format_version=np.array(1), layer_sizes=np.array([2, 2]),
             dtype=np.array("float32"), metadata=np.array("{}"),
             weights_0=np.array([object()] * 6, dtype=object).reshape(3, 2))
    with pytest.raises(ValueError, match="pickled.npz"):
        mlpcore.load(tmp_path / "pickled.npz")


def _rewrite(src, dst, **changes):
    with np.load(src, allow_pickle=False) as npz:
        contents = {key: npz[key] for key in npz.files}
    contents.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del contents[key]
    np.savez(dst, **contents)


@pytest.mark.parametrize("changes,words", [
    ({"weights_1": np.zeros((4, 4), np.float32)}, "weights[1] has shape (4, 4)"),
    ({"weights_2": None}, "weights_2"),
    ({"layer_sizes": np.array([6, 8, 3])}, "layer sizes [6, 8, 3] give 2 layers, but it holds weights_2"),
    ({"layer_sizes": np.array([6, 8, 3, 3])}, "weights[1] has shape (9, 5), but layer 1 needs (9, 3)"),
    ({"notes": np.zeros(2)}, "unexpected entries ['notes']"),
    ({"dtype": np.array("int8")}, "dtype"),
    ({"metadata": np.array("{not json")}, "inconsistent"),
    ({"format_version": np.array(99)}, "newer mlpcore"),
])
def test_inconsistent_files(trained, tmp_path, changes, words):
    net, _ = trained
    net.save(tmp_path / "model.npz")
    changes = {k: (v.astype(net.dtype) if k.startswith("weights") and v is not None else v)
               for k, v in changes.items()}
    _rewrite(tmp_path / "model.npz", tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError) as info:
        mlpcore.load(tmp_path / "bad.npz")
    assert "bad.npz" in str(info.value) and words in str(info.value)


def test_weights_of_another_dtype_in_file(trained, tmp_path):
    net, _ = trained
    net.save(tmp_path / "model.npz")
    other = np.float64 if net.dtype == np.float32 else np.float32
    _rewrite(tmp_path / "model.npz", tmp_path / "mixed.npz", weights_1=net.weights[1].astype(other))
    with pytest.raises(ValueError, match="mixed.npz is an inconsistent .* weights_1 is"):
        mlpcore.load(tmp_path / "mixed.npz")


def test_a_folder_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        mlpcore.load(tmp_path)


def test_nan_weights_in_file(trained, tmp_path):
    net, _ = trained
    net.save(tmp_path / "model.npz")
    W = net.weights[0].copy()
    W[0, 0] = np.nan
    _rewrite(tmp_path / "model.npz", tmp_path / "nan.npz", weights_0=W)
    with pytest.raises(ValueError, match="weights.0. contains NaN"):
        mlpcore.load(tmp_path / "nan.npz")
