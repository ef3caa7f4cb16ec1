"""The model file format: writing a network's parts to a .npz file and reading them back, checked. Called by
Network.save and mlpcore.load (network.py), which build and take apart the Network itself."""
import json
import math
import os
import zipfile

import numpy as np

from . import _validation as check
from ._files import DEFLATE_MAX_RATIO, atomic_write
from ._version import __version__

# What a saved model file holds; `format` tells an mlpcore model from any other .npz.
FILE_FORMAT = "mlpcore-network"
# Version 2 adds the entries `activation` and `loss`, written only when they are not ReLU and cross-entropy
# (the only network version 1 knew): a version-1 reader is told to upgrade instead of loading a tanh
# network as a ReLU one.
FILE_VERSION = 2
DEFAULT_KIND = {"activation": "relu", "loss": "cross_entropy"}


def write(path, layer_sizes, dtype, weights, metadata, kind):
    """Write a network's parts to `path` as a .npz file (no pickle), atomically; the mlpcore version is
    added to `metadata`. `kind`: {"activation": ..., "loss": ...}."""
    kind_entries = {} if kind == DEFAULT_KIND else {name: np.array(value) for name, value in kind.items()}
    metadata = dict(metadata, mlpcore_version=__version__)
    try:
        metadata_json = json.dumps(metadata)
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    arrays = {f"weights_{i}": W for i, W in enumerate(weights)}
    with atomic_write(path) as f:
        np.savez(f, format=np.array(FILE_FORMAT), format_version=np.array(FILE_VERSION if kind_entries else 1),
                 layer_sizes=np.array(layer_sizes, dtype=np.int64),
                 dtype=np.array(dtype.name), metadata=np.array(metadata_json), **kind_entries, **arrays)


# Entries a model file may hold besides weights_0, weights_1, ...: their largest size in bytes (metadata is
# free-form JSON; the others are a few numbers or one string).
_SMALL_ENTRIES = {"format": 4096, "format_version": 4096, "layer_sizes": 4096 * 8, "dtype": 4096,
                  "metadata": 16 * 2**20, "activation": 4096, "loss": 4096}


class _Refused(ValueError):
    """What is wrong with the file, before read() names it: `kind` "unreadable" (not an archive, damaged),
    "foreign" (an archive, not a model's) or "inconsistent" (a model's entries that do not agree)."""

    def __init__(self, message, kind="inconsistent"):
        super().__init__(message)
        self.kind = kind


_WHAT_IT_IS = {"unreadable": "is not a readable mlpcore model file", "foreign": "is not an mlpcore model file",
               "inconsistent": "is an inconsistent mlpcore model file"}


def read(path):
    """(layer_sizes, dtype, weights, metadata, kind) of the model file `path`, checked against each other;
    kind is {"activation": ..., "loss": ...}.

    Nothing is read in full before it is known to be what a model holds: the entries' names come first,
    then each entry's declared shape and type (np.lib.format's header, of bounded size), checked against
    the layer sizes, and only then its data, exactly that many bytes. Raises FileNotFoundError if `path`
    does not exist, OSError if it cannot be read (permissions), and ValueError naming the file for
    anything else: not a model, damaged, inconsistent, or crafted.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not an mlpcore model file")
    with open(path, "rb") as f:  # FileNotFoundError and PermissionError as they are
        try:
            return _read_model(f, os.fstat(f.fileno()).st_size)
        except _Refused as exc:
            raise ValueError(f"{path} {_WHAT_IT_IS[exc.kind]}: {exc}") from None
        except Exception as exc:  # noqa: BLE001  (a damaged file may raise anything from zipfile or zlib)
            raise ValueError(f"{path} is not a readable mlpcore model file (damaged, truncated or not a "
                             f".npz archive): {type(exc).__name__}: {exc}") from None


def _read_model(f, file_size):
    if not zipfile.is_zipfile(f):
        # Checked first: np.load would try it as a pickle and suggest allow_pickle=True.
        raise _Refused("it is truncated, or not a .npz archive", "unreadable")
    with zipfile.ZipFile(f) as archive:
        members = {}
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name in members:
                raise _Refused(f"it holds {info.filename!r} twice")
            members[name] = info
        if "format" not in members or _small(archive, members, "format", np.str_) != FILE_FORMAT:
            raise _Refused(f"a .npz file without format={FILE_FORMAT!r}", "foreign")
        version = int(_small(archive, members, "format_version", np.integer))
        if version > FILE_VERSION:
            raise _Refused(f"it was written by a newer mlpcore (file format {version}); upgrade mlpcore to "
                           "read it")
        kind = dict(DEFAULT_KIND)
        for name in kind:
            if name in members:
                if version < 2:
                    raise _Refused(f"a version-{version} file with an entry {name!r}")
                kind[name] = str(_small(archive, members, name, np.str_))
        try:
            check.check_activation(kind["activation"])
            check.check_loss(kind["loss"])
        except (TypeError, ValueError) as exc:
            raise _Refused(str(exc)) from None
        sizes = _small(archive, members, "layer_sizes", np.integer)
        if sizes.ndim != 1:
            raise _Refused(f"layer_sizes has shape {sizes.shape}, not a list of sizes")
        try:
            layer_sizes = check.check_layer_sizes([int(s) for s in sizes], kind["loss"])
            dtype = check.check_dtype(str(_small(archive, members, "dtype", np.str_)))
        except (TypeError, ValueError) as exc:
            raise _Refused(str(exc)) from None
        n_layers = len(layer_sizes) - 1
        expected = set(_SMALL_ENTRIES) | {f"weights_{i}" for i in range(n_layers)}
        extra = sorted(set(members) - expected)
        more_layers = [name for name in extra if name.startswith("weights_")]
        if more_layers:
            raise _Refused(f"its layer sizes {list(layer_sizes)} give {n_layers} layers, but it holds "
                           f"{more_layers[0]}")
        if extra:
            raise _Refused(f"unexpected entries {extra}")
        # What the weights take, from the layer sizes, against what the file could hold at most.
        shapes = [(n_in + 1, n_out) for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:])]
        needed = sum(r * c for r, c in shapes) * dtype.itemsize
        if needed > DEFLATE_MAX_RATIO * file_size:
            raise _Refused(f"its layer sizes {list(layer_sizes)} need {needed} bytes of weights; a file of "
                           f"{file_size} bytes cannot hold them")
        weights = [_entry(archive, members, f"weights_{i}", dtype, shape) for i, shape in enumerate(shapes)]
        try:
            metadata = json.loads(str(_small(archive, members, "metadata", np.str_)))
            check.check_weights(weights, layer_sizes, dtype)
        except (TypeError, ValueError, RecursionError) as exc:
            raise _Refused(str(exc) if not isinstance(exc, RecursionError) else "its metadata nests too "
                           "deeply") from None
        if not isinstance(metadata, dict):
            raise _Refused(f"its metadata is a JSON {type(metadata).__name__}, not an object")
    return list(layer_sizes), dtype, weights, metadata, kind


def _header(archive, members, name, limit):
    """The open entry `name`, its (shape, dtype) from its .npy header, refused if missing or its data
    would take more than `limit` bytes or than the archive entry declares."""
    info = members.get(name)
    if info is None:
        raise _Refused(f"entry {name!r} is missing")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Refused(f"entry {name!r} uses a compression mlpcore does not read")
    if info.file_size > DEFLATE_MAX_RATIO * max(info.compress_size, 1) + 4096:
        raise _Refused(f"entry {name!r} declares {info.file_size} bytes from {info.compress_size} compressed")
    stream = archive.open(info)
    version = np.lib.format.read_magic(stream)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise _Refused(f"entry {name!r} is a .npy of unknown version {version}")
    shape, fortran_order, dtype = read_header(stream, max_header_size=4096)
    if any(n < 0 for n in shape):  # numpy's parser takes (-1,), whose size would pass every bound
        raise _Refused(f"entry {name!r} declares a negative dimension, shape {shape}")
    if dtype.hasobject or fortran_order:
        raise _Refused(f"entry {name!r} holds {'objects' if dtype.hasobject else 'Fortran-ordered data'}")
    count = int(np.prod(shape, dtype=np.float64))
    nbytes = count * dtype.itemsize
    if nbytes > limit or nbytes > info.file_size:
        raise _Refused(f"entry {name!r} declares shape {shape} of {dtype} ({nbytes} bytes), more than "
                       f"{'it holds' if nbytes > info.file_size else 'a model has there'}")
    return stream, shape, dtype, count


def _read_data(stream, name, shape, dtype, count):
    data = stream.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise _Refused(f"entry {name!r} is truncated")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape).copy()


def _small(archive, members, name, kind):
    """A small entry's value (a 0-d or 1-d array), refused unless its type is of `kind`."""
    stream, shape, dtype, count = _header(archive, members, name, _SMALL_ENTRIES[name])
    if not np.issubdtype(dtype, kind):
        raise _Refused(f"entry {name!r} holds {dtype}, not {'text' if kind is np.str_ else 'integers'}")
    value = _read_data(stream, name, shape, dtype, count)
    return value[()] if value.ndim == 0 else value


def _entry(archive, members, name, dtype, shape):
    """A weights entry: exactly `shape` of `dtype`, read only once its header says so."""
    # The header's shape and type are compared before any data is read, so the bound is theirs.
    stream, found_shape, found_dtype, count = _header(archive, members, name, math.inf)
    if found_shape != shape or found_dtype != dtype:
        layer = name.split("_")[1]
        raise _Refused(f"weights[{layer}] has shape {found_shape}, but layer {layer} needs {shape}"
                       if found_shape != shape else f"{name} is {found_dtype}, but the model is {dtype}")
    return _read_data(stream, name, shape, dtype, count)
