"""Training through the compiled core's train_batches: fit's epoch loop (batches, progress, validation, the
History, the rollback to the last finished epoch) and the one-batch call of train_step and
loss_and_gradients. Called by Network only, with arguments it has checked."""
import time
from dataclasses import dataclass, field

import numpy as np

from . import _compiled, _threads

# How long one compiled call of fit may run before Python gets control back (progress, Ctrl-C).
_SECONDS_PER_CALL = 0.2
# An empty `order` tells train_batches to take the rows in their own order, in place.
_ROWS_IN_ORDER = np.empty(0, dtype=np.intp)
# train_batches copies a batch's labels into label_work only when it gathers rows.
_NO_LABEL_WORK = np.empty(0, dtype=np.intp)


@dataclass
class History:
    """What fit recorded, one entry per finished epoch.

    ``loss`` is the mean training loss over the epoch's batches (weighted by batch size), measured as the
    batches were trained. ``val_loss`` and ``val_accuracy`` are filled when fit gets ``validation_data``.
    """
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)

    def as_dict(self):
        return {name: list(values) for name, values in vars(self).items()}


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or infinite; the weights are left as they were before."""


def one_batch_of_all_rows(net, X, labels, targets, grads, rule):
    """The whole of X as one batch of `net`, through the update rule `rule`: (summed loss, batches done).

    The rows are taken in place, not gathered, so train_batches needs no label_work."""
    n = X.shape[0]
    workers, blas_threads = _threads.team(None, n)
    work = np.empty(_compiled.workspace_size(net._sizes, n, False, workers, True), dtype=net.dtype)
    with _threads.blas_threads(blas_threads):
        return _compiled.train_batches(
            net._params, grads, net._sizes, X, *net._target_args(labels, targets),
            _ROWS_IN_ORDER, n, 0, 1, rule, work, _NO_LABEL_WORK, workers)


def train_epochs(net, X, labels, targets, *, epochs, batch_size, lr, shuffle, seed, threads, validation,
                 on_epoch_end, on_progress):
    """Network.fit's loop (see its docstring), on arguments it has checked; `validation` is
    (X_val, val_labels, val_targets) or None."""
    n = X.shape[0]
    batch_size = min(batch_size, n)
    n_batches = -(-n // batch_size)
    rng = np.random.default_rng(seed)
    # Everything the batches need is allocated here, once, and reused by every batch.
    workers, blas_threads = _threads.team(threads, batch_size)
    grads = np.empty_like(net._params)
    work = np.empty(_compiled.workspace_size(net._sizes, batch_size, shuffle, workers, True),
                    dtype=net.dtype)
    label_work = np.empty(batch_size, dtype=np.intp)
    last_good = net._params.copy()
    label_args = net._target_args(labels, targets)
    rule = _compiled.UpdateRule(_compiled.SGD, lr)
    history = History()
    per_call = 1  # batches per compiled call, adapted to _SECONDS_PER_CALL from epoch to epoch

    with _threads.blas_threads(blas_threads):
        try:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                order = rng.permutation(n).astype(np.intp, copy=False) if shuffle else _ROWS_IN_ORDER
                total, batch = 0.0, 0
                while batch < n_batches:
                    stop = min(n_batches, batch + per_call)
                    call_started = time.perf_counter()
                    loss_sum, done = _compiled.train_batches(
                        net._params, grads, net._sizes, X, *label_args, order, batch_size,
                        batch, stop, rule, work, label_work, workers)
                    total += loss_sum
                    batch += done
                    if batch < stop:
                        raise TrainingDiverged(
                            f"training diverged: the loss became NaN or infinite at epoch {epoch}, "
                            f"batch {batch + 1} of {n_batches} (lr={lr:g}). Lower lr, or scale "
                            "the inputs")
                    if on_progress is not None:
                        on_progress(epoch, batch, n_batches)
                    per_call = _next_call_size(per_call, done, time.perf_counter() - call_started)
                if not np.isfinite(net._params).all():
                    raise TrainingDiverged(
                        f"training diverged: the weights became NaN or infinite in epoch {epoch} "
                        f"(lr={lr:g}). Lower lr, or scale the inputs")
                seconds = time.perf_counter() - started
                if validation is not None:
                    X_val, val_labels, val_targets = validation
                    val_loss = net._mean_loss(X_val, val_labels, val_targets, threads, team=True)
                    val_accuracy = net._accuracy(X_val, val_labels, val_targets, threads, team=True)
                    history.val_loss.append(val_loss)
                    history.val_accuracy.append(val_accuracy)
                history.epoch.append(epoch)
                history.loss.append(total / n)
                history.seconds.append(seconds)
                if on_epoch_end is not None:
                    on_epoch_end(history)
                # The epoch is finished only now: what raises before this rolls back to the last one.
                np.copyto(last_good, net._params)
        except BaseException:
            # Whatever stopped the epoch (divergence, Ctrl-C, a failing callback), the weights go back
            # to the end of the last finished epoch: never half an epoch.
            np.copyto(net._params, last_good)
            raise
    return history


def _next_call_size(per_call, done, seconds):
    """Batches for the next compiled call, from `done` batches taking `seconds` in the last one: aiming at
    _SECONDS_PER_CALL, growing at most 4x a call."""
    if seconds <= 0:
        return per_call * 4
    return max(1, min(per_call * 4, int(done * _SECONDS_PER_CALL / seconds)))
