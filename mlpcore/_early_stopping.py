"""EarlyStopping: end fit when a monitored value has stopped improving, and keep the best epoch's weights.
Used by fit's epoch loop (_training), which calls _start, after_epoch and finish."""
import numpy as np

from . import _validation as check

_MONITORS = {"val_loss": "min", "val_accuracy": "max", "loss": "min", "accuracy": "max"}


class EarlyStopping:
    """Stop training when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    Parameters
    ----------
    monitor : {"val_loss", "val_accuracy", "loss", "accuracy"}
        The History entry watched; the validation ones need validation_data or validation_split.
    patience : int >= 1
        Epochs without improvement after which fit stops.
    min_delta : float >= 0
        The least change that counts as an improvement.
    restore_best : bool
        Leave the weights of the best epoch when fit ends (else those of the last epoch).

    As Keras's ``EarlyStopping(restore_best_weights=...)``, except that the best weights are restored
    whether or not training stopped early.
    """

    def __init__(self, monitor="val_loss", patience=10, min_delta=0.0, restore_best=True):
        if monitor not in _MONITORS:
            raise ValueError(f"monitor must be one of {sorted(_MONITORS)}, got {monitor!r}")
        self.monitor = monitor
        self.patience = check.check_positive_int(patience, "patience")
        self.min_delta = check.check_real(min_delta, "min_delta", low=0)
        if not isinstance(restore_best, (bool, np.bool_)):
            raise TypeError(f"restore_best must be True or False, got {restore_best!r}")
        self.restore_best = bool(restore_best)
        self.best_epoch = None

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta!r}, restore_best={self.restore_best})")

    # What fit calls ----------------------------------------------------------------------------------------

    def _start(self, net):
        self._best, self._wait, self.best_epoch = None, 0, None
        self._best_params = net._params.copy() if self.restore_best else None
        return self

    def after_epoch(self, history, params):
        """Record the epoch just finished (its History entries, its weights); True if training should stop
        now."""
        value = getattr(history, self.monitor)[-1]
        improved = self._best is None or (
            value < self._best - self.min_delta if _MONITORS[self.monitor] == "min"
            else value > self._best + self.min_delta)
        if improved:
            self._best, self._wait, self.best_epoch = value, 0, history.epoch[-1]
            if self._best_params is not None:
                np.copyto(self._best_params, params)
        else:
            self._wait += 1
        return self._wait >= self.patience

    def finish(self, net):
        if self.restore_best and self._best_params is not None:
            np.copyto(net._params, self._best_params)


def check_early_stopping(early_stopping, has_validation):
    if early_stopping is None:
        return None
    if not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"early_stopping must be an mlpcore.EarlyStopping or None, got "
                        f"{type(early_stopping).__name__}")
    if early_stopping.monitor.startswith("val_") and not has_validation:
        raise ValueError(f"early stopping monitors {early_stopping.monitor!r}, which needs validation_data "
                         "or validation_split")
    return early_stopping
