"""Optimizers for Network.fit: plain SGD, SGD with momentum (heavy-ball or Nesterov), Adam and AdamW.

An optimizer holds its hyperparameters and its state: flat arrays laid out like the network's parameters
(moments), and the number of steps taken. The compiled core steps each block of weights with them right
where it writes the block's gradient (src/_update_rules.pxd). An instance keeps its state between fits, as
a PyTorch optimizer does: pass the same instance to continue training; a name given to fit starts fresh.

The update formulas are PyTorch's (``torch.optim.SGD`` with dampening 0, ``Adam``, ``AdamW``), except that
weight decay never touches the bias row; ``mlpcore.reference`` writes them out in NumPy.

While any optimizer but plain SGD (SGD with neither momentum nor weight decay) trains, on x86-64,
mlpcore's threads flush subnormal numbers to zero:
a moment that decays where the gradient is exactly 0 would otherwise stop at the smallest subnormal for
good, and every step on it take a slow path (3x slower epochs, measured on random data). Results differ
from IEEE arithmetic only below 1.2e-38 (float32) or 2.2e-308 (float64); plain SGD is untouched.
"""
import numpy as np

from . import _compiled
from . import _validation as check

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "get"]


class Optimizer:
    """Base class: a learning rate, a step count and state arrays named in ``_STATE``."""

    _STATE = ()

    def __init__(self, lr):
        self.lr = check.check_learning_rate(lr)
        self.step = 0
        self.state = {}

    # What fit uses ---------------------------------------------------------------------------------------

    def _bind(self, n_params, dtype):
        """Allocate the state (zeros) on first use; refuse state made for other parameters."""
        for name in self._state_names():
            current = self.state.get(name)
            if current is None:
                self.state[name] = np.zeros(n_params, dtype=dtype)
            elif current.shape != (n_params,) or current.dtype != dtype:
                raise ValueError(
                    f"this {type(self).__name__} holds state for {current.size} {current.dtype} parameters, "
                    f"but the network has {n_params} {np.dtype(dtype).name} parameters: use a new optimizer "
                    "for another network")

    def _update_rule(self, lr=None, l2=0.0):
        """The compiled rule for one fit, at learning rate `lr` (the optimizer's own if None), with
        scikit-learn's L2 penalty `l2` (fit's alpha: l2 * W / the batch's weight sum added to the
        gradient, the bias row apart)."""
        raise NotImplementedError

    def _snapshot(self):
        return self.step, {name: array.copy() for name, array in self.state.items()}

    def _restore(self, snapshot):
        self.step, saved = snapshot
        for name, array in saved.items():
            np.copyto(self.state[name], array)

    def _state_names(self):
        return self._STATE

    def __repr__(self):
        settings = ", ".join(f"{name}={value!r}" for name, value in self._settings().items())
        return f"{type(self).__name__}({settings})"

    def _settings(self):
        return {"lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum (Nesterov's if asked) and L2 weight decay.

    With g the gradient of the mean loss, b the momentum buffer (zero at first), for every weight w::

        g = g + weight_decay * w        (not for the bias row)
        b = momentum * b + g            (with momentum > 0)
        g = g + momentum * b if nesterov else b
        w = w - lr * g

    With momentum 0 and weight_decay 0 this is plain SGD, ``w -= lr * g``, fused into the gradient
    product (no state, no extra pass over the weights).
    """

    def __init__(self, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = check.check_real(momentum, "momentum", low=0)
        self.weight_decay = check.check_real(weight_decay, "weight_decay", low=0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)

    def _state_names(self):
        return ("momentum_buffer",) if self.momentum > 0 else ()

    def _update_rule(self, lr=None, l2=0.0):
        lr = self.lr if lr is None else lr
        if self.momentum == 0 and self.weight_decay == 0 and l2 == 0:
            return _compiled.UpdateRule(_compiled.SGD, lr)
        return _compiled.UpdateRule(_compiled.SGD_MOMENTUM, lr, momentum=self.momentum,
                                    nesterov=self.nesterov, weight_decay=self.weight_decay,
                                    first_moment=self.state.get("momentum_buffer"), l2=l2)

    def _settings(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma and Ba), with L2 weight decay added to the gradient as ``torch.optim.Adam`` does.

    With g the gradient, m and v the moments (zero at first), t the step number (from 1)::

        g = g + weight_decay * w        (not for the bias row)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    The compiled step computes the last line in the paper's equal form with one division per weight,
    ``w - (lr * c2 / c1) * m / (sqrt(v) + eps * c2)`` (c1, c2 the two corrections): the same update but
    for rounding, to about 1e-16 in float64 per step.

    ``eps_form = "sklearn"`` (an attribute, default "pytorch") puts eps where scikit-learn's
    AdamOptimizer does, ``w - (lr * c2 / c1) * m / (sqrt(v) + eps)``: what mlpcore.sklearn uses.
    """

    _STATE = ("exp_avg", "exp_avg_sq")
    _DECOUPLED = False

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (check.check_real(beta1, "betas[0]", low=0, high=1, high_open=True),
                      check.check_real(beta2, "betas[1]", low=0, high=1, high_open=True))
        self.eps = check.check_real(eps, "eps", low=0)
        self.weight_decay = check.check_real(weight_decay, "weight_decay", low=0)
        self.eps_form = "pytorch"

    def _update_rule(self, lr=None, l2=0.0):
        if self.eps_form not in ("pytorch", "sklearn"):
            raise ValueError(f"eps_form must be 'pytorch' or 'sklearn', got {self.eps_form!r}")
        if l2 != 0 and self._DECOUPLED:
            raise ValueError("alpha (an L2 penalty in the gradient) does not go with AdamW's decoupled decay: "
                             "use Adam, or AdamW's weight_decay alone")
        return _compiled.UpdateRule(_compiled.ADAM, self.lr if lr is None else lr, beta1=self.betas[0],
                                    beta2=self.betas[1], eps=self.eps, weight_decay=self.weight_decay,
                                    decoupled=self._DECOUPLED, first_moment=self.state.get("exp_avg"),
                                    second_moment=self.state.get("exp_avg_sq"), l2=l2,
                                    eps_before_correction=self.eps_form == "sklearn")

    def _settings(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as ``torch.optim.AdamW``: before Adam's
    step (without the L2 term), every weight but the bias row is shrunk, ``w = w * (1 - lr *
    weight_decay)``."""

    _DECOUPLED = True

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps, weight_decay)


#: The names fit takes, and what each starts.
NAMES = {
    "sgd": lambda: SGD(),
    "momentum": lambda: SGD(momentum=0.9),
    "nesterov": lambda: SGD(momentum=0.9, nesterov=True),
    "adam": lambda: Adam(),
    "adamw": lambda: AdamW(),
}


def get(optimizer, lr=None):
    """(the optimizer instance fit uses, the learning rate of this fit) from fit's `optimizer` and `lr`.

    None is plain SGD (lr 0.1 unless given), a name a new optimizer of that kind, an instance itself.
    """
    if lr is not None:
        lr = check.check_learning_rate(lr)
    if optimizer is None:
        optimizer = SGD()
    elif isinstance(optimizer, str):
        if optimizer not in NAMES:
            raise ValueError(f"optimizer must be one of {sorted(NAMES)} or an Optimizer, got {optimizer!r}")
        optimizer = NAMES[optimizer]()
    elif not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be None, a name or an mlpcore.optimizers.Optimizer, got "
                        f"{type(optimizer).__name__}")
    return optimizer, optimizer.lr if lr is None else lr
