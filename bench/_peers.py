"""The peers: PyTorch (CPU) and scikit-learn's MLPClassifier, the same network and SGD, each in its own worker.

Both train 784-300-300-10 (ReLU, softmax cross-entropy) with plain SGD (lr 0.1, no momentum, no weight decay)
over shuffled minibatches, one epoch per timed call, always from the same initial weights, in the dtype asked.
Their thread pools are limited by _worker (threadpoolctl); torch's intra-op pool is set here as well.
"""
import time
import warnings

from _common import LAYERS, LR, RECIPE_PARTS
from _worker import Worker


def torch_worker(data, config):
    import torch

    torch.set_num_threads(config["threads"])
    trainers = {}
    for dtype, (X, y) in data["train"].items():
        trainers["torch", dtype] = TorchTrainer(X, y)
        for part in RECIPE_PARTS:
            trainers[f"torch-{part}", dtype] = TorchTrainer(X, y, part)
    info = {"version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_blas": _torch_blas(torch)}
    return Worker(config["rows"], config["warmup_rows"], trainers), info


def _torch_blas(torch):
    """The BLAS torch was built with (it does not use NumPy's or SciPy's)."""
    for part in torch.__config__.show().replace(",", "\n").splitlines():
        if part.strip().startswith("BLAS_INFO="):
            return part.strip().split("=", 1)[1]
    return "unknown"


class TorchTrainer:
    """nn.Linear / nn.ReLU layers, nn.CrossEntropyLoss and optim.SGD: the textbook PyTorch loop; or one of
    the recipe's pieces (RECIPE_PARTS: optim.SGD with momentum, optim.Adam, nn.Dropout after each hidden
    ReLU), with a new optimizer each epoch, as mlpcore's."""

    def __init__(self, X, y, part=None):
        import torch
        from torch import nn

        self.torch = torch
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y)
        torch.manual_seed(0)
        name, self.settings, dropout = RECIPE_PARTS[part] if part else ("sgd", {"lr": LR}, 0.0)
        self.optimizer_class = torch.optim.Adam if name == "adam" else torch.optim.SGD
        layers = []
        for n_in, n_out in zip(LAYERS[:-1], LAYERS[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        self.model = nn.Sequential(*layers[:-2 if dropout else -1]).to(self.X.dtype)
        self.initial = {name: value.clone() for name, value in self.model.state_dict().items()}
        self.loss = nn.CrossEntropyLoss()

    def epoch(self, batch, seed, rows):
        torch, model = self.torch, self.model
        model.load_state_dict(self.initial)
        model.train()
        optimizer = self.optimizer_class(model.parameters(), **self.settings)
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        order = torch.randperm(rows, generator=generator)
        for start in range(0, rows, batch):
            batch_rows = order[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            self.loss(model(self.X[batch_rows]), self.y[batch_rows]).backward()
            optimizer.step()
        return {"seconds": time.perf_counter() - started}


def sklearn_worker(data, config):
    import sklearn

    trainers = {("sklearn", dtype): SklearnTrainer(X, y) for dtype, (X, y) in data["train"].items()}
    return Worker(config["rows"], config["warmup_rows"], trainers), {"version": sklearn.__version__}


class SklearnTrainer:
    """MLPClassifier(solver="sgd"), one ``fit`` with ``max_iter=1`` per epoch.

    fit initialises the weights from `seed` (Glorot, not He: it makes no difference to the time) and checks
    its input, then trains exactly one epoch; there is no validation (early_stopping=False). The
    ConvergenceWarning of max_iter=1 is silenced. Each call checks that sklearn kept the dtype of X (it accepts
    float32 as is) and ran exactly one epoch over every row.
    """

    def __init__(self, X, y):
        self.X, self.y = X, y

    def epoch(self, batch, seed, rows):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(
            hidden_layer_sizes=LAYERS[1:-1], activation="relu", solver="sgd", learning_rate="constant",
            learning_rate_init=LR, momentum=0.0, nesterovs_momentum=False, alpha=0.0, batch_size=batch,
            max_iter=1, shuffle=True, early_stopping=False, random_state=seed)
        X, y = self.X[:rows], self.y[:rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            started = time.perf_counter()
            model.fit(X, y)
            seconds = time.perf_counter() - started
        dtypes = {W.dtype for W in model.coefs_ + model.intercepts_}
        if dtypes != {X.dtype}:
            raise AssertionError(f"MLPClassifier trained in {dtypes} on {X.dtype} input")
        if model.n_iter_ != 1 or model.t_ != rows:
            raise AssertionError(f"MLPClassifier ran {model.n_iter_} epochs over {model.t_} rows, "
                                 f"not 1 over {rows}")
        return {"seconds": seconds}
