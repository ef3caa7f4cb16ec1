"""Fashion-MNIST: IDX file reader, search for local copies, verified download. Public, as
``mlpcore.datasets``; the command loads its data with it.

``load_fashion_mnist`` looks for the four official files in these folders, first match wins:

1. the ``path`` argument or else the ``MLPCORE_DATA`` environment variable, if either is given
   (then that folder only: nothing else is searched);
2. ``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``);
3. Keras's cache, ``$KERAS_HOME/datasets/fashion-mnist/`` (``KERAS_HOME`` defaults to ``~/.keras``);
4. a torchvision root, ``$MLPCORE_TORCHVISION_ROOT/FashionMNIST/raw/``
   (``MLPCORE_TORCHVISION_ROOT`` defaults to ``~/data``);
5. mlpcore's cache, ``$XDG_CACHE_HOME/mlpcore/fashion-mnist/`` (``XDG_CACHE_HOME`` defaults to ``~/.cache``).

If none has them, they are downloaded into mlpcore's cache. Every file is checked against the
SHA-256 of the official release unless ``verify=False``.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import sys
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ._files import current_umask
from ._validation import check_dtype

__all__ = [
    "BASE_URL",
    "DEBIAN_DIR",
    "DOWNLOAD_TIMEOUT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "DatasetNotFoundError",
    "fashion_mnist_search_paths",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: File name (without ``.gz``) -> (size, SHA-256) of its decompressed contents in the official release.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": (47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}

#: Official mirror; each file is served as ``BASE_URL + name + ".gz"``.
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Seconds without a response before a download gives up: offline machines must fail fast.
DOWNLOAD_TIMEOUT = 10.0

# IDX type code -> big-endian numpy dtype.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetNotFoundError(FileNotFoundError):
    """The data set is in none of the places searched and could not be downloaded."""


# --------------------------------------------------------------------------- IDX files

def read_idx(path):
    """Read an IDX file, gzip-compressed or not.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Compression is detected from its first bytes, not its name.

    Returns
    -------
    numpy.ndarray
        Writable C-contiguous array of the file's shape and type, in native byte order.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a valid IDX file (or not valid gzip); the message names the file.
    """
    return _parse_idx(_read_bytes(path), path)


# numpy arrays have at most 64 dimensions; IDX headers may declare up to 255.
_IDX_MAX_DIMS = 32
_CHUNK = 1 << 24


def _read_bytes(path):
    """The IDX file `path`'s bytes, decompressed if it is gzip data: the header, then exactly as many
    bytes as it declares and one more if there is one (to tell a file that is too long). Nothing beyond
    that is read or decompressed, so a small file that declares or inflates to gigabytes costs nothing."""
    name = os.fspath(path)
    if Path(path).is_dir():
        raise ValueError(f"{name} is a folder, not an IDX file")
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            head = _read_at_most(stream, 4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[3] == 0 or head[3] > _IDX_MAX_DIMS:
                return head + _read_at_most(stream, 4 * _IDX_MAX_DIMS)  # _parse_idx says what is wrong
            dims = _read_at_most(stream, 4 * head[3])
            if len(dims) < 4 * head[3] or head[2] not in _IDX_TYPES:
                return head + dims
            count = 1
            for n in struct.unpack(f">{head[3]}I", dims):
                count *= n
            return _read_at_most(stream, count * _IDX_TYPES[head[2]].itemsize + 1, head + dims)
        except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
            if not compressed:
                raise
            raise ValueError(f"{name} is a corrupt gzip file: {exc}") from exc


def _read_at_most(stream, n, prefix=b""):
    """`prefix`, then up to n bytes of `stream` (fewer at its end), as one bytearray that grows as the bytes
    arrive: memory follows what the file holds, not what its header claims."""
    data = bytearray(prefix)
    end = len(prefix) + n
    while len(data) < end:
        part = stream.read(min(end - len(data), _CHUNK))
        if not part:
            break
        data += part
    return data


def _parse_idx(data, path):
    """Parse the IDX bytes `data` read from `path` (named in error messages)."""
    name = os.fspath(path)
    if len(data) < 4:
        raise ValueError(f"{name} is truncated: an IDX file starts with a 4-byte header, found {len(data)} bytes")
    if data[:2] != b"\0\0":
        raise ValueError(
            f"{name} is not an IDX file: bad magic number 0x{data[:4].hex()} (must start with two zero bytes)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise ValueError(
            f"{name} is not an IDX file: unknown data type code 0x{code:02X} "
            f"(known: {', '.join(f'0x{c:02X}' for c in _IDX_TYPES)})"
        )
    if ndim == 0:
        raise ValueError(f"{name} is not a valid IDX file: its header gives 0 dimensions")
    if ndim > _IDX_MAX_DIMS:
        raise ValueError(f"{name} is not a usable IDX file: its header gives {ndim} dimensions (at most "
                         f"{_IDX_MAX_DIMS} are read)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{name} is truncated: the header of a {ndim}-dimensional IDX file needs {header} bytes, "
            f"found {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[code]
    count = 1
    for n in shape:
        count *= n
    expected, found = count * dtype.itemsize, len(data) - header
    if found < expected:
        raise ValueError(
            f"{name} is truncated: expected {expected} bytes of data after the header, found {found}"
        )
    if found > expected:
        raise ValueError(
            f"{name} is too long: expected {expected} bytes of data after the header, found more"
        )
    # astype copies: the result owns writable memory in native byte order.
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return flat.astype(dtype.newbyteorder("=")).reshape(shape)


# --------------------------------------------------------------------------- where the data lives

def _env_path(var, default):
    """Path from environment variable `var` (unset or empty: `default`), with ``~`` expanded."""
    return Path(os.environ.get(var) or default).expanduser()


def _explicit_dir(path):
    """(description, folder) the user asked for through `path` or MLPCORE_DATA, or None."""
    if path is not None:
        return "path argument", Path(path).expanduser()
    if os.environ.get("MLPCORE_DATA"):
        return "MLPCORE_DATA", _env_path("MLPCORE_DATA", "")
    return None


def _cache_dir():
    return _env_path("XDG_CACHE_HOME", Path.home() / ".cache") / "mlpcore" / "fashion-mnist"


def fashion_mnist_search_paths(path=None):
    """Folders searched for Fashion-MNIST, in order.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder given by the user. If given, or if ``MLPCORE_DATA`` is set, it is the only folder searched.

    Returns
    -------
    list of (str, pathlib.Path)
        Description of each place and its folder.
    """
    explicit = _explicit_dir(path)
    if explicit is not None:
        return [explicit]
    return [
        ("Debian package dataset-fashion-mnist", Path(DEBIAN_DIR)),
        ("Keras cache ($KERAS_HOME/datasets)", _env_path("KERAS_HOME", Path.home() / ".keras")
         / "datasets" / "fashion-mnist"),
        ("torchvision root ($MLPCORE_TORCHVISION_ROOT)", _env_path("MLPCORE_TORCHVISION_ROOT", Path.home() / "data")
         / "FashionMNIST" / "raw"),
        ("mlpcore cache ($XDG_CACHE_HOME/mlpcore)", _cache_dir()),
    ]


def _dataset_files(folder):
    """Map each official file name to its path in `folder` (``.gz`` preferred), or to None if absent."""
    found = {}
    for name in FASHION_MNIST_FILES:
        candidates = [folder / (name + ".gz"), folder / name]
        found[name] = next((p for p in candidates if p.is_file()), None)
    return found


def find_fashion_mnist(path=None):
    """First folder of ``fashion_mnist_search_paths(path)`` holding all four files.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder given by the user; see `fashion_mnist_search_paths`.

    Returns
    -------
    pathlib.Path or None
        The folder, or None if no folder has all four files.
    """
    for _, folder in fashion_mnist_search_paths(path):
        if all(_dataset_files(folder).values()):
            return folder
    return None


def _how_to_get_it():
    names = ", ".join(f"{name}[.gz]" for name in FASHION_MNIST_FILES)
    return (
        "To get the data, either\n"
        "  - install the Debian package: sudo apt-get install dataset-fashion-mnist, or\n"
        f"  - put the four files ({names}) in a folder and pass it: load_fashion_mnist(path=FOLDER), "
        "the command-line option --data FOLDER, or the environment variable MLPCORE_DATA=FOLDER."
    )


def _not_found_message(reason):
    places = "\n".join(f"  - {desc}: {folder}" for desc, folder in fashion_mnist_search_paths())
    return f"Fashion-MNIST not found. Looked in:\n{places}\n{reason}\n{_how_to_get_it()}"


def _missing_in_explicit_dir(desc, folder):
    if not folder.is_dir():
        problem = "the folder does not exist"
    else:
        missing = [name for name, p in _dataset_files(folder).items() if p is None]
        problem = "missing " + ", ".join(f"{name}[.gz]" for name in missing)
    return f"Fashion-MNIST not found in {folder} (given by {desc}): {problem}.\n{_how_to_get_it()}"


# --------------------------------------------------------------------------- download

def _urlopen(url):
    """Open `url` for reading (the one network access of this module)."""
    return urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT)


def _progress_bar(total, desc):
    """A tqdm byte counter, or None if tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def _download_file(name, folder):
    """Download ``name.gz`` into `folder`; it appears under its final name only once verified."""
    url = BASE_URL + name + ".gz"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.gz.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, _urlopen(url) as response:
            length = response.headers.get("Content-Length")
            bar = _progress_bar(int(length) if length else None, name + ".gz")
            try:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
        problem = _official_mismatch(_read_bytes(tmp), name)
        if problem is not None:
            raise ValueError(f"{url} does not match the official Fashion-MNIST file ({problem})")
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the cache from other users
        os.replace(tmp, folder / (name + ".gz"))
    except BaseException:
        # Also on KeyboardInterrupt: no half-written file may stay behind.
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(folder):
    """Download into `folder` the files it lacks."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [name for name, p in _dataset_files(folder).items() if p is None]
    print(f"mlpcore: downloading Fashion-MNIST from {BASE_URL} into {folder}", file=sys.stderr)
    for name in missing:
        _download_file(name, folder)


# --------------------------------------------------------------------------- loading

def _official_mismatch(data, name):
    """How `data` differs from the official decompressed file `name`, or None if it is identical."""
    size, sha256 = FASHION_MNIST_FILES[name]
    if len(data) != size:
        return f"{len(data)} bytes after decompression instead of {size}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        return f"SHA-256 {digest} instead of {sha256}"
    return None


def _read_official(path, name, verify):
    """Read IDX file `path`, checking first that it is the official file `name` if `verify`."""
    data = _read_bytes(path)  # read and decompressed once, for both the hash and the parse
    if verify:
        problem = _official_mismatch(data, name)
        if problem is not None:
            raise ValueError(
                f"{path} does not match the official Fashion-MNIST file ({problem}); it may be corrupt: "
                "delete it and load again (mlpcore then uses another copy or downloads a fresh one)"
            )
    return _parse_idx(data, path)


def _read_split(files, split, verify):
    """Images (n, 784) and int64 labels of `split` ("train" or "t10k") from the file paths `files`."""
    images_path, labels_path = files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"]
    images = _read_official(images_path, f"{split}-images-idx3-ubyte", verify)
    labels = _read_official(labels_path, f"{split}-labels-idx1-ubyte", verify)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path} does not hold Fashion-MNIST images: expected uint8 data of shape (n, 28, 28), "
            f"found {images.dtype} data of shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path} does not hold Fashion-MNIST labels: expected 1-D uint8 data, "
            f"found {labels.dtype} data of shape {labels.shape}"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path} holds label {labels.max()}, outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    if len(images) == 0:
        raise ValueError(f"{images_path} holds no images (its header gives shape {images.shape})")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images.reshape(len(images), -1), labels.astype(np.int64)


def _float_dtype(dtype):
    """`dtype` as a numpy dtype if the network computes in it (float32 or float64), else ValueError.

    The rule is the network's (check_dtype); the message is this module's, and None (float64 to numpy)
    is refused.
    """
    if dtype is not None:
        try:
            return check_dtype(dtype)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")


def load_fashion_mnist(path=None, *, dtype="float32", scale=True, verify=True, download=True):
    """Load Fashion-MNIST, downloading it into mlpcore's cache if no local copy is found.

    See the module docstring for the folders searched and the environment variables.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder holding the four files (each as NAME or NAME.gz). Overrides ``MLPCORE_DATA``;
        if either is given, only that folder is used.
    dtype : {"float32", "float64"}
        Type of the scaled images.
    scale : bool
        If True, images are divided by 255 into `dtype`; if False, the raw uint8 (`dtype` is ignored).
    verify : bool
        Check each file against the SHA-256 of the official release.
    download : bool
        Download the data if it is found nowhere (never done when a folder is given).

    Returns
    -------
    (X_train, y_train), (X_test, y_test)
        Images of shape (n, 784), C-contiguous, and int64 labels in 0..9; n is 60000 and 10000.

    Raises
    ------
    DatasetNotFoundError
        (a FileNotFoundError) If the data is not in the given folder, or found nowhere and not downloaded;
        the message lists the places looked in and how to get the data.
    ValueError
        If `dtype` is not supported, or a file is corrupt or not the official one.
    """
    if scale:
        dtype = _float_dtype(dtype)  # before any file is read: a typo must not cost a 47 MB read
    folder = find_fashion_mnist(path)
    if folder is None:
        explicit = _explicit_dir(path)
        if explicit is not None:
            raise DatasetNotFoundError(_missing_in_explicit_dir(*explicit))
        if not download:
            raise DatasetNotFoundError(_not_found_message("Downloading is turned off (download=False)."))
        folder = _cache_dir()
        try:
            _download(folder)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise DatasetNotFoundError(_not_found_message(f"Downloading from {BASE_URL} failed: {exc}")) from exc
    files = _dataset_files(folder)
    (X_train, y_train), (X_test, y_test) = (_read_split(files, split, verify) for split in ("train", "t10k"))
    if scale:
        # Divided in `dtype` directly: no float64 temporary for float32 output.
        X_train, X_test = np.divide(X_train, 255, dtype=dtype), np.divide(X_test, 255, dtype=dtype)
    return (X_train, y_train), (X_test, y_test)
