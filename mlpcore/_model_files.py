"""The model file format: writing a network's parts to a .npz file and reading them back, checked. Called by
Network.save and mlpcore.load (network.py), which build and take apart the Network itself."""
import json
import os
import zipfile

import numpy as np

from . import _validation as check
from ._files import atomic_write
from ._version import __version__

# What a saved model file holds; `format` tells an mlpcore model from any other .npz.
FILE_FORMAT = "mlpcore-network"
FILE_VERSION = 1


def write(path, layer_sizes, dtype, weights, metadata):
    """Write a network's parts to `path` as a .npz file (no pickle), atomically; the mlpcore version is
    added to `metadata`."""
    metadata = dict(metadata, mlpcore_version=__version__)
    try:
        metadata_json = json.dumps(metadata)
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    arrays = {f"weights_{i}": W for i, W in enumerate(weights)}
    with atomic_write(path) as f:
        np.savez(f, format=np.array(FILE_FORMAT), format_version=np.array(FILE_VERSION),
                 layer_sizes=np.array(layer_sizes, dtype=np.int64),
                 dtype=np.array(dtype.name), metadata=np.array(metadata_json), **arrays)


def read(path):
    """(layer_sizes, dtype, weights, metadata) of the model file `path`, checked against each other.

    Raises FileNotFoundError if `path` does not exist, and ValueError naming the file if it is not a
    complete, consistent mlpcore model file.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        # Checked first: np.load would try it as a pickle and suggest allow_pickle=True.
        raise ValueError(f"{path} is not a readable mlpcore model file (truncated, or not a .npz "
                         "archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not an mlpcore model file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a readable mlpcore model file (truncated or not a .npz "
                         f"file): {exc}") from None
    if str(contents.get("format", "")) != FILE_FORMAT:
        raise ValueError(f"{path} is not an mlpcore model file (a .npz file without "
                         f"format={FILE_FORMAT!r})")
    try:
        if int(contents["format_version"]) > FILE_VERSION:
            raise ValueError(f"it was written by a newer mlpcore (file format "
                             f"{int(contents['format_version'])}); upgrade mlpcore to read it")
        layer_sizes = [int(s) for s in contents["layer_sizes"]]
        n_layers = len(layer_sizes) - 1
        dtype = check.check_dtype(str(contents["dtype"]))
        weights = [contents[f"weights_{i}"] for i in range(n_layers)]
        # Checked against each other before a network of that size is built.
        check.check_layer_sizes(layer_sizes)
        check.check_weights(weights, layer_sizes, dtype)
        wrong = [i for i, W in enumerate(weights) if W.dtype != dtype]
        if wrong:
            raise ValueError(f"weights_{wrong[0]} is {weights[wrong[0]].dtype}, but the model is {dtype}")
        metadata = json.loads(str(contents["metadata"]))
        extra = set(contents) - {"format", "format_version", "layer_sizes", "dtype", "metadata"} - {
            f"weights_{i}" for i in range(n_layers)}
        if extra:
            raise ValueError(f"unexpected entries {sorted(extra)}")
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is an inconsistent mlpcore model file: {exc}") from None
    return layer_sizes, dtype, weights, metadata
