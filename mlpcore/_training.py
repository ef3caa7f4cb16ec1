"""Training through the compiled core's train_batches: fit's epoch loop (batches, progress, validation, the
History, the rollback to the last finished epoch) and the one-batch call of train_step and
loss_and_gradients. Called by Network only, with arguments it has checked."""
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _compiled, _distributed, _threads

# How long one compiled call of fit may run before Python gets control back (progress, Ctrl-C).
_SECONDS_PER_CALL = 0.2
# An empty `order` tells train_batches to take the rows in their own order, in place.
_ROWS_IN_ORDER = np.empty(0, dtype=np.intp)
# train_batches copies a batch's labels into label_work only when it gathers rows.
_NO_LABEL_WORK = np.empty(0, dtype=np.intp)


@dataclass
class History:
    """What fit recorded, one entry per finished epoch.

    ``loss`` is the mean training loss over the epoch's batches (weighted by batch size), and ``accuracy``
    the share of its rows classified right, both measured as the batches were trained. ``lr`` is the
    learning rate of the epoch's last batch. ``val_loss`` and ``val_accuracy`` are filled when fit has
    validation data. ``best_epoch`` is the epoch whose monitored value was best, and ``stopped_epoch`` the
    epoch after which early stopping ended the fit (None if it did not).
    """
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    best_epoch: object = None
    stopped_epoch: object = None

    def as_dict(self):
        return {name: (list(values) if isinstance(values, list) else values)
                for name, values in vars(self).items()}


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or infinite; the weights are left as they were before.
    ``history`` is the History of the epochs that finished (None outside fit)."""

    def __init__(self, message, history=None):
        super().__init__(message)
        self.history = history


class TrainingWarning(UserWarning):
    """fit's warning that training goes wrong while staying finite: the loss far above where it started
    or chance, or stuck at chance."""


#: The loss growing to above this many times its lowest so far is divergence that stays finite.
DIVERGING_FACTOR = 10
#: Epochs with the loss within 1% of ln K (chance) before fit warns that the network does not learn.
CHANCE_EPOCHS = 5


def stuck_at_chance(losses, n_classes, epochs):
    """Whether the last `epochs` losses are all within 1% of ln K, chance (fit's warning and
    doctor.Monitor's not-learning)."""
    chance = np.log(n_classes)
    recent = losses[-epochs:]
    return len(recent) == epochs and all(abs(v - chance) <= 0.01 * chance for v in recent)


def _warn_if_unhealthy(history, n_classes, warned):
    """Warn (once per kind and fit) when the epochs so far show divergence that stays finite, or a loss
    stuck at chance. (stacklevel 5: the user's call of fit, through train_epochs, Network._fit, fit.)"""
    chance, losses = np.log(n_classes), history.loss
    # Only a loss that grows: one that starts high (large initial weights) and falls is training.
    if ("diverging" not in warned and len(losses) > 1 and losses[-1] > losses[-2]
            and losses[-1] > DIVERGING_FACTOR * min(min(losses), chance)):
        warned.add("diverging")
        warnings.warn(f"training is diverging: the loss is {losses[-1]:.4g} after epoch {history.epoch[-1]} (epoch "
                      f"1: {losses[0]:.4g}; chance: ln {n_classes} = {chance:.3f}). Lower the learning rate "
                      "(10x), or scale the inputs", TrainingWarning, stacklevel=5)
    if "chance" not in warned and stuck_at_chance(losses, n_classes, CHANCE_EPOCHS):
        warned.add("chance")
        warnings.warn(f"the network is not learning: the loss has stayed at chance (ln {n_classes} = {chance:.3f}) "
                      f"for {CHANCE_EPOCHS} epochs. Check the data and gradients (mlpcore.doctor), use He "
                      "initialisation, or raise the learning rate", TrainingWarning, stacklevel=5)


def all_rows_workspace(net, n, threads):
    """The workspace of one_batch_of_all_rows on n rows and `threads`."""
    workers = _threads.team(threads, n)[0]
    return np.empty(_compiled.workspace_size(net._sizes, n, False, workers, True), dtype=net.dtype)


def one_batch_of_all_rows(net, X, labels, targets, grads, rule, writes=False, sample_weight=None, threads=None,
                          work=None):
    """The whole of X as one batch of `net`, through the update rule `rule`: (summed loss, batches done).

    The rows are taken in place, not gathered, so train_batches needs no label_work. With `writes` (the
    rule steps the weights), a step whose loss or weights are not finite is undone (batches done: 0),
    under the network's lock, so no reader sees it. `work`: all_rows_workspace's, or None for a new one."""
    n = X.shape[0]
    workers, blas_threads = _threads.team(threads, n)
    if work is None:
        work = all_rows_workspace(net, n, threads)
    with _threads.blas_threads(blas_threads, strict=True), (net._lock.writing() if writes else net._lock.reading()):
        before = net._params.copy() if writes else None
        total, done, right = _compiled.train_batches(
            net._params, grads, net._sizes, X, *net._target_args(labels, targets),
            _ROWS_IN_ORDER, n, 0, 1, rule, work, _NO_LABEL_WORK, workers, sample_weight=sample_weight,
            **net._kind())
        if writes and (done == 0 or not np.isfinite(net._params).all()):
            net._params[...] = before
            done = 0
    return total, done, right


def train_epochs(net, X, labels, targets, *, epochs, batch_size, optimizer, lr, schedule, dropout,
                 label_smoothing, sample_weight, alpha, shuffle, seed, threads, validation, early_stopping,
                 on_epoch_end, on_progress, comm=None):
    """Network.fit's loop (see its docstring), on arguments it has checked; `validation` is
    (X_val, val_labels, val_targets) or None; `comm` makes it data-parallel (mlpcore._distributed)."""
    n = X.shape[0]
    plan = (_distributed.Plan(comm, n, batch_size, sample_weight, seed) if comm is not None
            else _LocalPlan(n, batch_size, sample_weight, seed))
    if threads is None:
        threads = plan.threads
    batch_size, n_batches = plan.batch_size, plan.n_batches
    # Everything the batches need is allocated here, once, and reused by every batch.
    workers, blas_threads = _threads.team(threads, batch_size)
    grads = np.empty_like(net._params)
    work = np.empty(_compiled.workspace_size(net._sizes, batch_size, shuffle, workers, True),
                    dtype=net.dtype)
    label_work = np.empty(batch_size, dtype=np.intp)
    label_args = net._target_args(labels, targets)
    # What the plain loss gets besides, if anything (train_batches's keyword arguments).
    extra = net._kind()
    if label_smoothing > 0:
        extra["label_smoothing"] = label_smoothing
    if dropout > 0:
        extra["dropout"] = dropout
    if sample_weight is not None:
        extra.update(sample_weight=sample_weight, weight_work=np.empty(batch_size, dtype=net.dtype))
    reducer = None
    if comm is not None:
        reducer = _distributed.Reducer(comm, grads)
        extra.update(batch_starts=plan.batch_starts, reducer=reducer)
    # Dropout's masks: a key per epoch from the seed (its own stream, apart from the shuffling's).
    if dropout > 0:
        dropout_keys = np.random.default_rng([0x6D6C70, plan.seed if plan.seed is not None
                                              else np.random.SeedSequence().entropy])
    # Every epoch's schedule, computed (and so checked) before anything trains: a factor that goes bad in
    # a late epoch must not be found after the early ones have changed the weights.
    epoch_factors = [schedule.factors(epoch, epochs, n_batches) for epoch in range(1, epochs + 1)]
    optimizer._bind(net._params.size, net.dtype)
    if comm is not None:
        with net._lock.writing():
            _distributed.broadcast_state(comm, net, optimizer)
    rule = optimizer._update_rule(lr, alpha)
    # What a rollback restores: the weights and the optimizer's state at the end of the last finished epoch.
    last_good = net._params.copy(), optimizer._snapshot()
    stopping = early_stopping._start(net) if early_stopping is not None else None
    history = History()
    warned = set()  # _warn_if_unhealthy's kinds already warned in this fit
    per_call = 1  # batches per compiled call, adapted to _SECONDS_PER_CALL from epoch to epoch
    if hasattr(on_epoch_end, "on_fit_begin"):
        on_epoch_end.on_fit_begin(net, X, labels if labels is not None else targets, n_batches)

    with _threads.blas_threads(blas_threads, strict=True):
        try:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                order = plan.order(epoch) if shuffle else _ROWS_IN_ORDER
                if comm is not None:
                    extra["batch_scales"] = plan.batch_scales(order)
                factors = epoch_factors[epoch - 1]
                rule.lr_factors, rule.step = factors, optimizer.step
                if dropout > 0:
                    extra["dropout_key"] = int(dropout_keys.integers(0, 2**63, dtype=np.uint64))
                total, correct, batch = 0.0, 0, 0
                while batch < n_batches:
                    stop = min(n_batches, batch + per_call)
                    call_started = time.perf_counter()
                    with net._lock.writing():
                        loss_sum, done, right = _compiled.train_batches(
                            net._params, grads, net._sizes, X, *label_args, order, batch_size,
                            batch, stop, rule, work, label_work, workers, **extra)
                    total += loss_sum
                    correct += right
                    batch += done
                    if reducer is not None and reducer.error is not None:
                        raise reducer.error
                    if batch < stop:
                        raise TrainingDiverged(
                            f"training diverged: the loss became NaN or infinite at epoch {epoch}, "
                            f"batch {batch + 1} of {n_batches} (lr={lr:g}). Lower lr, or scale "
                            "the inputs", history)
                    if on_progress is not None:
                        on_progress(epoch, batch, n_batches)
                    per_call = _next_call_size(per_call, done, time.perf_counter() - call_started)
                optimizer.step += n_batches
                if not np.isfinite(net._params).all():
                    raise TrainingDiverged(
                        f"training diverged: the weights became NaN or infinite in epoch {epoch} "
                        f"(lr={lr:g}). Lower lr, or scale the inputs", history)
                seconds = time.perf_counter() - started
                if validation is not None:
                    X_val, val_labels, val_targets = validation
                    val_loss = net._mean_loss(X_val, val_labels, val_targets, threads, team=True)
                    val_accuracy = net._accuracy(X_val, val_labels, val_targets, threads, team=True)
                    if comm is not None:
                        val_loss, val_accuracy = _distributed.reduce_validation(comm, val_loss, val_accuracy,
                                                                                len(X_val))
                    history.val_loss.append(val_loss)
                    history.val_accuracy.append(val_accuracy)
                history.epoch.append(epoch)
                history.loss.append(total / plan.total_weight)
                history.accuracy.append(correct / plan.total_rows if net.classifies else float("nan"))
                history.lr.append(float(lr * factors[-1]))
                history.seconds.append(seconds)
                stop_now = stopping is not None and stopping.after_epoch(history, net._params)
                if on_epoch_end is not None:
                    on_epoch_end(history)
                if net.loss_function == "cross_entropy":
                    _warn_if_unhealthy(history, net.n_classes, warned)  # after the epoch's own report
                # The epoch is finished only now: what raises before this rolls back to the last one.
                np.copyto(last_good[0], net._params)
                last_good = last_good[0], optimizer._snapshot()
                if stop_now:
                    history.stopped_epoch = epoch
                    break
        except BaseException:
            # Whatever stopped the epoch (divergence, Ctrl-C, a failing callback), the weights and the
            # optimizer's state go back to the end of the last finished epoch: never half an epoch.
            with net._lock.writing():
                np.copyto(net._params, last_good[0])
            optimizer._restore(last_good[1])
            raise
    if stopping is not None:
        history.best_epoch = stopping.best_epoch
        with net._lock.writing():
            stopping.finish(net)
    return history


class _LocalPlan:
    """One process's batches: _distributed.Plan's answers when every row is this process's."""
    threads = None  # fit's default: every core

    def __init__(self, n_rows, batch_size, sample_weight, seed):
        self.batch_size = min(batch_size, n_rows)
        self.n_batches = -(-n_rows // self.batch_size)
        self.seed = seed
        self.total_rows = n_rows
        self.total_weight = float(sample_weight.sum(dtype=np.float64)) if sample_weight is not None else n_rows
        self._rng = np.random.default_rng(seed)

    def order(self, epoch):
        """The epoch's shuffled order of the rows (epochs asked in turn: one stream from the seed)."""
        return self._rng.permutation(self.total_rows).astype(np.intp, copy=False)


def hold_out(X, labels, targets, sample_weight, fraction, seed, stratify=True):
    """Split off `fraction` of the rows for validation, the same fraction of every class (the class of a
    target row: its largest entry) if `stratify` (the softmax head's targets), drawn with default_rng(seed):
    (X, labels, targets, sample_weight) of the rows left for training, and (X_val, val_labels,
    val_targets)."""
    if not stratify:
        classes = np.zeros(len(X), dtype=np.intp)  # one "class": a plain random split
    else:
        classes = labels if labels is not None else targets.argmax(axis=1)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(classes):
        rows = np.flatnonzero(classes == c)
        count = int(round(fraction * len(rows)))
        if count == len(rows):
            raise ValueError(f"validation_split={fraction:g} holds out every row of class {c} "
                             f"({len(rows)} rows): training would never see it")
        held.append(rng.permutation(rows)[:count])
    held = np.sort(np.concatenate(held))
    if held.size == 0:
        raise ValueError(f"validation_split={fraction:g} holds out no row of {len(X)}: use a larger fraction")
    kept = np.setdiff1d(np.arange(len(X)), held, assume_unique=True)

    def rows_of(index):
        return (X[index], None if labels is None else labels[index], None if targets is None else targets[index])

    weights = None if sample_weight is None else sample_weight[kept]
    if weights is not None and not weights.any():
        raise ValueError(f"validation_split={fraction:g} leaves only rows of weight 0 for training")
    return (*rows_of(kept), weights, rows_of(held))


def _next_call_size(per_call, done, seconds):
    """Batches for the next compiled call, from `done` batches taking `seconds` in the last one: aiming at
    _SECONDS_PER_CALL, growing at most 4x a call."""
    if seconds <= 0:
        return per_call * 4
    return max(1, min(per_call * 4, int(done * _SECONDS_PER_CALL / seconds)))
