"""mlpcore: fast multilayer-perceptron training on the CPU, held to a plain NumPy reference."""
from ._version import __version__
from .network import History, Network, TrainingDiverged, load

__all__ = ["Network", "History", "TrainingDiverged", "load", "__version__"]
