"""Tests of mlpcore.datasets on small generated IDX files; the network is never used."""
import gzip
import hashlib
import io
import os
import struct
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from conftest import IDX_TYPE_CODES, idx_bytes
from mlpcore import datasets
from mlpcore.datasets import (
    DatasetNotFoundError,
    fashion_mnist_search_paths,
    find_fashion_mnist,
    load_fashion_mnist,
    read_idx,
)

NAMES = tuple(datasets.FASHION_MNIST_FILES)
OFFICIAL_FILES = dict(datasets.FASHION_MNIST_FILES)
REAL_URLOPEN = datasets._urlopen  # saved before the autouse fixture cuts the network


def write(path, data, gz=False):
    path = Path(path)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_dataset(n_train=6, n_test=4, seed=0):
    """Decompressed contents of the four files of a tiny Fashion-MNIST look-alike."""
    rng = np.random.default_rng(seed)
    contents = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0] = 255
        contents[f"{split}-images-idx3-ubyte"] = idx_bytes(images)
        contents[f"{split}-labels-idx1-ubyte"] = idx_bytes(np.arange(n, dtype=np.uint8) % 10)
    return contents


def write_dataset(folder, contents=None, gz=True, skip=()):
    """Write the files of `contents` (default: fake_dataset()) into `folder`, except those in `skip`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (contents or fake_dataset()).items():
        if name not in skip:
            write(folder / (name + ".gz" if gz else name), data, gz)
    return folder


def official(monkeypatch, contents):
    """Make `contents` the official files, as far as checksum verification goes."""
    table = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in contents.items()}
    monkeypatch.setattr(datasets, "FASHION_MNIST_FILES", table)


class FakeResponse(io.BytesIO):
    def __init__(self, data, fail_after=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self.fail_after = fail_after

    def read(self, size=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, 100))  # small chunks: the loop runs several times


def offline(url):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Empty home, no data variables, no Debian folder, no network."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("MLPCORE_DATA", "KERAS_HOME", "XDG_CACHE_HOME", "MLPCORE_TORCHVISION_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(datasets, "_urlopen", offline)
    return home


# --------------------------------------------------------------------------- read_idx

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(IDX_TYPE_CODES))
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 4), (2, 3, 4), (1, 2, 1, 3)])
def test_read_idx_round_trip(tmp_path, gz, dtype, shape):
    array = (np.arange(np.prod(shape)) * 37 - 50).reshape(shape).astype(dtype)
    out = read_idx(write(tmp_path / "a.idx", idx_bytes(array), gz))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == shape and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain.idx", idx_bytes(array), gz=True)), array)
    np.testing.assert_array_equal(read_idx(str(write(tmp_path / "raw.gz", idx_bytes(array)))), array)


GOOD = idx_bytes(np.arange(12, dtype=np.int32).reshape(3, 4))


@pytest.mark.parametrize("data, words", [
    (b"", ["truncated", "4-byte header"]),
    (b"\0\0", ["truncated"]),
    (b"\x01" + GOOD[1:], ["bad magic", "0x01000c02"]),
    (b"\0\x01" + GOOD[2:], ["bad magic"]),
    (GOOD[:2] + b"\x0a" + GOOD[3:], ["type code 0x0A"]),
    (GOOD[:3] + b"\0" + GOOD[4:], ["0 dimensions"]),
    (GOOD[:9], ["truncated", "needs 12 bytes"]),
    (GOOD[:-1], ["truncated: expected 48 bytes of data after the header, found 47"]),
    (GOOD[:12], ["truncated: expected 48 bytes", "found 0"]),
    (GOOD + b"\0", ["too long: expected 48 bytes of data after the header, found more"]),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_bad_files(tmp_path, data, words, gz):
    path = write(tmp_path / "bad-idx1-ubyte.gz", data, gz)
    with pytest.raises(ValueError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


COMPRESSED = gzip.compress(GOOD)


@pytest.mark.parametrize("data", [
    COMPRESSED[:-6],                                         # stream cut short: EOFError
    COMPRESSED[:2] + b"garbage",                             # EOFError
    COMPRESSED[:10] + b"\xff" * 5 + COMPRESSED[15:],         # bad deflate block: zlib.error
    COMPRESSED[:-8] + b"\0\0\0\0" + COMPRESSED[-4:],         # CRC mismatch: BadGzipFile
    COMPRESSED + b"\x1f\x8bjunk",                            # bad second member
])
def test_read_idx_corrupt_gzip(tmp_path, data):
    path = write(tmp_path / "x.gz", data)
    with pytest.raises(ValueError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "nope-idx3-ubyte.gz"
    with pytest.raises(FileNotFoundError, match="nope-idx3-ubyte.gz"):
        read_idx(path)


# --------------------------------------------------------------------------- search order

def default_places(home):
    return [
        datasets.DEBIAN_DIR,
        home / ".keras" / "datasets" / "fashion-mnist",
        home / "data" / "FashionMNIST" / "raw",
        home / ".cache" / "mlpcore" / "fashion-mnist",
    ]


def test_search_paths_defaults(isolated):
    assert [folder for _, folder in fashion_mnist_search_paths()] == default_places(isolated)
    assert find_fashion_mnist() is None


def test_search_paths_follow_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    monkeypatch.setenv("MLPCORE_TORCHVISION_ROOT", str(tmp_path / "tv"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert [folder for _, folder in fashion_mnist_search_paths()] == [
        tmp_path / "debian",
        tmp_path / "k" / "datasets" / "fashion-mnist",
        tmp_path / "tv" / "FashionMNIST" / "raw",
        tmp_path / "xdg" / "mlpcore" / "fashion-mnist",
    ]


def test_search_order(isolated):
    places = default_places(isolated)
    for place in places:
        write_dataset(place)
    for place in places:
        assert find_fashion_mnist() == place
        os.remove(place / (NAMES[-1] + ".gz"))  # an incomplete folder does not count
    assert find_fashion_mnist() is None


def test_raw_and_gz_files_both_count_and_gz_is_preferred(tmp_path):
    folder = write_dataset(tmp_path / "d", gz=False)
    assert find_fashion_mnist(folder) == folder
    (X, y), _ = load_fashion_mnist(folder, verify=False)
    assert y[1] == 1
    relabelled = fake_dataset()
    relabelled["train-labels-idx1-ubyte"] = idx_bytes(np.full(6, 7, dtype=np.uint8))
    write_dataset(folder, relabelled, gz=True)
    (X, y), _ = load_fashion_mnist(folder, verify=False)
    np.testing.assert_array_equal(y, 7)


def test_mixed_raw_and_gz_folder_counts(tmp_path):
    contents = fake_dataset()
    folder = write_dataset(tmp_path / "d", contents, gz=True, skip=NAMES[:2])
    write_dataset(folder, {name: contents[name] for name in NAMES[:2]}, gz=False)
    assert find_fashion_mnist(folder) == folder


def test_explicit_path_wins_and_does_not_fall_through(tmp_path, monkeypatch):
    write_dataset(datasets.DEBIAN_DIR)
    env_dir = write_dataset(tmp_path / "env")
    arg_dir = write_dataset(tmp_path / "arg")
    assert find_fashion_mnist() == datasets.DEBIAN_DIR
    monkeypatch.setenv("MLPCORE_DATA", str(env_dir))
    assert find_fashion_mnist() == env_dir
    assert fashion_mnist_search_paths() == [("MLPCORE_DATA", env_dir)]
    assert find_fashion_mnist(arg_dir) == arg_dir
    assert fashion_mnist_search_paths(str(arg_dir)) == [("path argument", arg_dir)]

    incomplete = write_dataset(tmp_path / "incomplete", skip=NAMES[1:3])
    assert find_fashion_mnist(incomplete) is None
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(incomplete, verify=False)
    message = str(info.value)
    assert str(incomplete) in message and "path argument" in message
    assert NAMES[1] in message and NAMES[2] in message and NAMES[0] not in message.split("\n")[0]
    assert str(datasets.DEBIAN_DIR) not in message

    monkeypatch.setenv("MLPCORE_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_fashion_mnist(verify=False)
    assert str(tmp_path / "missing") in str(info.value) and "MLPCORE_DATA" in str(info.value)


def test_explicit_path_never_downloads(tmp_path, monkeypatch):
    def must_not_fetch(url):
        raise AssertionError("network used")
    monkeypatch.setattr(datasets, "_urlopen", must_not_fetch)
    with pytest.raises(DatasetNotFoundError):
        load_fashion_mnist(tmp_path / "empty")


# --------------------------------------------------------------------------- offline and download

def test_offline_error_lists_every_place(isolated):
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist()
    assert time.perf_counter() - start < 2
    message = str(info.value)
    for place in default_places(isolated):
        assert str(place) in message
    assert "Temporary failure in name resolution" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "MLPCORE_DATA" in message and "path=" in message and "--data" in message
    assert isinstance(info.value, FileNotFoundError)
    cache = default_places(isolated)[-1]
    assert list(cache.iterdir()) == []  # nothing half-written left behind


def test_download_false(isolated, monkeypatch):
    def must_not_fetch(url):
        raise AssertionError("network used")
    monkeypatch.setattr(datasets, "_urlopen", must_not_fetch)
    with pytest.raises(DatasetNotFoundError, match="download=False") as info:
        load_fashion_mnist(download=False)
    assert str(datasets.DEBIAN_DIR) in str(info.value)


def serve(monkeypatch, contents, fetched, fail_after=None, check=None):
    """Serve `contents` gzipped from a fake BASE_URL, recording the URLs fetched."""
    def fake_urlopen(url):
        fetched.append(url)
        assert url.startswith(datasets.BASE_URL) and url.endswith(".gz")
        name = url[len(datasets.BASE_URL):-3]
        if check is not None:
            check(name)
        return FakeResponse(gzip.compress(contents[name]), fail_after)
    monkeypatch.setattr(datasets, "_urlopen", fake_urlopen)


def test_download(isolated, monkeypatch):
    contents = fake_dataset()
    official(monkeypatch, contents)
    cache = default_places(isolated)[-1]

    def nothing_final_yet(name):
        assert not (cache / (name + ".gz")).exists()
    fetched = []
    serve(monkeypatch, contents, fetched, check=nothing_final_yet)
    (X, y), (X_test, y_test) = load_fashion_mnist()
    assert fetched == [datasets.BASE_URL + name + ".gz" for name in NAMES]
    assert sorted(p.name for p in cache.iterdir()) == sorted(name + ".gz" for name in NAMES)
    assert X.shape == (6, 784) and X_test.shape == (4, 784)
    np.testing.assert_array_equal(y, np.arange(6) % 10)
    assert find_fashion_mnist() == cache

    fetched.clear()  # second load: from the cache
    load_fashion_mnist()
    assert fetched == []


def test_download_completes_a_partial_cache(isolated, monkeypatch):
    contents = fake_dataset()
    official(monkeypatch, contents)
    cache = write_dataset(default_places(isolated)[-1], contents, skip=NAMES[1:])
    fetched = []
    serve(monkeypatch, contents, fetched)
    load_fashion_mnist()
    assert fetched == [datasets.BASE_URL + name + ".gz" for name in NAMES[1:]]
    assert find_fashion_mnist() == cache


def test_download_without_tqdm(isolated, monkeypatch):
    contents = fake_dataset()
    official(monkeypatch, contents)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` fail
    serve(monkeypatch, contents, [])
    (X, _), _ = load_fashion_mnist()
    assert X.shape == (6, 784)


def test_download_from_file_url(isolated, tmp_path, monkeypatch):
    """The real _urlopen, on a local mirror."""
    contents = fake_dataset()
    official(monkeypatch, contents)
    mirror = write_dataset(tmp_path / "mirror", contents)
    monkeypatch.setattr(datasets, "_urlopen", REAL_URLOPEN)
    monkeypatch.setattr(datasets, "BASE_URL", mirror.as_uri() + "/")
    (X, y), _ = load_fashion_mnist()
    assert X.shape == (6, 784)
    assert find_fashion_mnist() == default_places(isolated)[-1]


def test_failed_download_leaves_no_file(isolated, monkeypatch):
    contents = fake_dataset()
    official(monkeypatch, contents)
    serve(monkeypatch, contents, [], fail_after=150)
    with pytest.raises(DatasetNotFoundError, match="connection reset") as info:
        load_fashion_mnist()
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    cache = default_places(isolated)[-1]
    assert list(cache.iterdir()) == []


def test_download_not_matching_checksum_is_discarded(isolated, monkeypatch):
    contents = fake_dataset()
    official(monkeypatch, contents)
    served = dict(contents, **{NAMES[2]: contents[NAMES[2]][:-1] + b"\x01"})
    serve(monkeypatch, served, [])
    with pytest.raises(DatasetNotFoundError, match="does not match the official") as info:
        load_fashion_mnist()
    assert NAMES[2] + ".gz" in str(info.value)
    cache = default_places(isolated)[-1]
    assert sorted(p.name for p in cache.iterdir()) == sorted(name + ".gz" for name in NAMES[:2])


def test_interrupted_download_leaves_no_file(isolated, monkeypatch):
    def interrupted(url):
        raise KeyboardInterrupt
    monkeypatch.setattr(datasets, "_urlopen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_fashion_mnist()
    assert list(default_places(isolated)[-1].iterdir()) == []


# --------------------------------------------------------------------------- options and checks

@pytest.fixture
def folder(tmp_path, monkeypatch):
    contents = fake_dataset()
    official(monkeypatch, contents)
    return write_dataset(tmp_path / "data", contents)


@pytest.mark.parametrize("dtype", ["float32", np.float64, np.dtype("float32")])
def test_scaled(folder, dtype):
    (X, y), (X_test, y_test) = load_fashion_mnist(folder, dtype=dtype)
    raw = read_idx(folder / "train-images-idx3-ubyte.gz").reshape(6, 784)
    assert X.dtype == np.dtype(dtype) and X_test.dtype == np.dtype(dtype)
    assert X.shape == (6, 784) and X_test.shape == (4, 784)
    assert X.flags.c_contiguous and X_test.flags.c_contiguous
    np.testing.assert_array_equal(X, raw.astype(dtype) / np.dtype(dtype).type(255))
    assert X.max() == 1.0 and X.min() >= 0.0
    assert y.dtype == np.int64 and y_test.dtype == np.int64


def test_unscaled(folder):
    (X, y), (X_test, _) = load_fashion_mnist(folder, scale=False, dtype="ignored")
    assert X.dtype == np.uint8 and X.shape == (6, 784) and X.flags.c_contiguous
    np.testing.assert_array_equal(X, read_idx(folder / "train-images-idx3-ubyte.gz").reshape(6, 784))
    assert y.dtype == np.int64


@pytest.mark.parametrize("dtype", ["int32", np.float16, "complex128", "nonsense", None])
def test_bad_dtype(folder, dtype):
    with pytest.raises(ValueError, match="float32 or float64"):
        load_fashion_mnist(folder, dtype=dtype)


def test_checksum_mismatch(folder, monkeypatch):
    name = "t10k-labels-idx1-ubyte"
    size, _ = datasets.FASHION_MNIST_FILES[name]
    monkeypatch.setitem(datasets.FASHION_MNIST_FILES, name, (size, "0" * 64))
    with pytest.raises(ValueError, match="does not match the official Fashion-MNIST file") as info:
        load_fashion_mnist(folder)
    assert str(folder / (name + ".gz")) in str(info.value) and "SHA-256" in str(info.value)
    load_fashion_mnist(folder, verify=False)


def test_size_mismatch(folder, monkeypatch):
    name = "train-images-idx3-ubyte"
    monkeypatch.setitem(datasets.FASHION_MNIST_FILES, name, (47040016, "0" * 64))
    with pytest.raises(ValueError, match="instead of 47040016") as info:
        load_fashion_mnist(folder)
    assert str(folder / (name + ".gz")) in str(info.value)


def test_real_checksum_table_rejects_fake_files(tmp_path):
    assert datasets.FASHION_MNIST_FILES == OFFICIAL_FILES
    with pytest.raises(ValueError, match="does not match the official"):
        load_fashion_mnist(write_dataset(tmp_path / "d"))


@pytest.mark.parametrize("name, array, match", [
    ("train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 10], dtype=np.uint8), "label 10"),
    ("train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8), "6 images but .* 5 labels"),
    ("train-labels-idx1-ubyte", np.zeros((6, 1), dtype=np.uint8), "labels: expected 1-D uint8"),
    ("t10k-images-idx3-ubyte", np.zeros((4, 28, 27), dtype=np.uint8), r"shape \(n, 28, 28\)"),
    ("t10k-images-idx3-ubyte", np.zeros((4, 28, 28), dtype=np.float32), "expected uint8"),
])
def test_structure_checks(tmp_path, name, array, match):
    contents = dict(fake_dataset(), **{name: idx_bytes(array)})
    folder = write_dataset(tmp_path / "d", contents)
    with pytest.raises(ValueError, match=match) as info:
        load_fashion_mnist(folder, verify=False)
    assert name in str(info.value)


def test_classes():
    assert len(datasets.FASHION_MNIST_CLASSES) == 10
    assert datasets.FASHION_MNIST_CLASSES[0] == "T-shirt/top" and datasets.FASHION_MNIST_CLASSES[9] == "Ankle boot"


# --------------------------------------------------------------------------- the real data

REAL = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_DIR", REAL)
    assert find_fashion_mnist() == REAL
    (X, y), (X_test, y_test) = load_fashion_mnist()
    assert X.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert X.dtype == np.float32 and X.flags.c_contiguous
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y, minlength=10), 6000)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), 1000)
