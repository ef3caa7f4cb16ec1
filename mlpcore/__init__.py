"""mlpcore: fast multilayer-perceptron training on the CPU, held to a plain NumPy reference."""
from ._version import __version__

try:
    from . import datasets, optimizers, schedules
    from ._early_stopping import EarlyStopping
    from ._gradcheck import gradcheck
    from .network import History, Network, TrainingDiverged, TrainingWarning, load
except ImportError as exc:
    if "_compiled" not in str(exc):
        raise
    import os as _os
    raise ImportError(
        f"mlpcore's compiled core is not built in {_os.path.dirname(__file__)}. Python took mlpcore from "
        "that source folder, probably because it is the current folder: run from another folder, or "
        "build in place with `pip install -e .`") from exc

__all__ = ["datasets", "optimizers", "schedules", "EarlyStopping", "Network", "History", "TrainingDiverged",
           "TrainingWarning", "load", "gradcheck", "__version__"]
