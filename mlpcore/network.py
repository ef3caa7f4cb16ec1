"""The model: Network (weights, inference, loss_and_gradients, train_step, fit) and load, the public API
that mlpcore re-exports. A thin layer: each method checks its arguments with _validation, then calls the
compiled core (for training through _training); threads come from _threads, initial weights from
_initialisation, files from _model_files."""
import contextlib
import threading

import numpy as np

from . import _compiled, _distributed, _model_files, _threads, _training, optimizers, schedules
from ._early_stopping import check_early_stopping
from . import _validation as check
from ._initialisation import INITS, initial_weights  # noqa: F401  (INITS stays importable from here)
from ._training import History, TrainingDiverged, TrainingWarning  # noqa: F401  (importable from here)

# Rows per block for predict_proba and loss: large enough for BLAS to run at full speed, small enough that
# the workspace stays a few MiB whatever the size of X.
_CHUNK_ROWS = 2048


class Network:
    """A multilayer perceptron: dense hidden layers (ReLU unless told otherwise) and a head, by default a
    softmax output trained on cross-entropy.

    Parameters
    ----------
    layer_sizes : sequence of int
        Sizes of every layer, input and output included: ``[784, 300, 300, 10]`` is the student's
        network, ``[784, 10]`` softmax regression.
    dtype : {"float32", "float64"}
        The dtype of the weights and of every computation.
    init : {"he", "glorot", "normal"}
        "he": N(0, 2 / n_in) weights (suited to ReLU), zero biases. "glorot": U(+-sqrt(6 / (n_in + n_out)))
        weights, zero biases. "normal": every entry, biases included, from N(0, 0.01^2), as the student did.
    seed : int or None
        Seed for the initial weights; the same seed gives the same weights.
    activation : {"relu", "tanh", "logistic", "identity"}
        Of every hidden layer.
    loss : {"cross_entropy", "binary_cross_entropy", "squared_error", "poisson"}
        The head, an output paired with its loss (the gradient at the last pre-activations z is output -
        target): "cross_entropy" a softmax over classes (labels or probability rows; PyTorch's
        CrossEntropyLoss); "binary_cross_entropy" a sigmoid per output against targets in [0, 1] (binary
        and multi-label; BCEWithLogitsLoss); "squared_error" the identity output, ``0.5 * sum((z - t)**2)``
        per row (regression); "poisson" the output exp(z), ``exp(z) - t * z + t * log(t) - t`` per output
        (counts; half the Poisson deviance, as scikit-learn's). The loss of a batch is the mean over rows.

    Attributes
    ----------
    weights : list of ndarray
        One C-contiguous array per layer of shape ``(n_in + 1, n_out)``, the last row being the bias. The
        arrays are views of the network's parameters; assign a list to replace them all.
    metadata : dict
        Free-form JSON-serialisable information saved with the model (training settings, metrics).
    """

    def __init__(self, layer_sizes, *, dtype="float32", init="he", seed=None, activation="relu",
                 loss="cross_entropy"):
        self.activation = check.check_activation(activation)
        self.loss_function = check.check_loss(loss)
        self.layer_sizes = check.check_layer_sizes(layer_sizes, self.loss_function)
        self.dtype = check.check_dtype(dtype)
        check.check_init(init)
        self._sizes = np.array(self.layer_sizes, dtype=np.intp)
        self._shapes = [(n_in + 1, n_out)
                        for n_in, n_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:])]
        self._params = np.empty(sum(r * c for r, c in self._shapes), dtype=self.dtype)
        self._new_locks()
        self.weights = initial_weights(self._shapes, init, np.random.default_rng(seed))
        self.metadata = {}

    def _new_locks(self):
        # Compiled calls read _params under _lock, training writes them under it alone (see _threads);
        # _trained_now (under _state_lock) refuses a second training at once.
        self._lock = _threads.ReadWriteLock()
        self._state_lock = threading.Lock()
        self._trained_now = False

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_state_lock", "_trained_now")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._new_locks()

    # ---------------------------------------------------------------------------------------------
    # Weights

    @property
    def weights(self):
        return _split(self._params, self._shapes)

    @weights.setter
    def weights(self, new_weights):
        checked = check.check_weights(new_weights, self.layer_sizes, self.dtype)
        # Every array is checked before any is copied: a rejected list leaves the network as it was.
        with self._lock.writing():
            for view, W in zip(self.weights, checked):
                view[...] = W

    def get_weights(self):
        """Copies of the weights, taken as one consistent set (under the network's lock): what to use
        while another thread trains, since ``weights`` gives views that training keeps writing."""
        with self._lock.reading():
            return [W.copy() for W in self.weights]

    @property
    def n_features_in(self):
        return self.layer_sizes[0]

    @property
    def n_classes(self):
        return self.layer_sizes[-1]

    @property
    def n_params(self):
        return self._params.size

    @property
    def classifies(self):
        """Whether the head gives class probabilities (cross-entropy, binary cross-entropy)."""
        return self.loss_function in ("cross_entropy", "binary_cross_entropy")

    def _kind(self):
        """The activation and head, as the compiled calls take them."""
        return {"activation": _compiled.ACTIVATIONS[self.activation], "head": _compiled.HEADS[self.loss_function]}

    def __repr__(self):
        kind = "".join(f", {name}={value!r}" for name, value in
                       (("activation", self.activation), ("loss", self.loss_function))
                       if value != _model_files.DEFAULT_KIND[name])
        return f"Network({list(self.layer_sizes)}, dtype={self.dtype.name!r}{kind})"

    # ---------------------------------------------------------------------------------------------
    # Inference

    def output(self, X, *, threads=None):
        """The head's output, shape (n_samples, n_outputs): class probabilities (softmax or sigmoid), or
        the regression's predictions (identity or exp).

        X is processed 2048 rows at a time, BLAS on `threads` threads (None: every core this process may
        use)."""
        X = check.check_X(X, self.n_features_in, self.dtype, finite=False)
        return self._proba(X, check.check_threads(threads), checked=False)

    def predict_proba(self, X, *, threads=None):
        """Class probabilities, shape (n_samples, n_classes): softmax rows, or with
        loss="binary_cross_entropy" each output's own probability."""
        if not self.classifies:
            raise ValueError(f"predict_proba is for classifying networks; this one's loss is "
                             f"{self.loss_function!r}: use output() or predict()")
        return self.output(X, threads=threads)

    def predict(self, X, *, threads=None):
        """Predicted class labels, shape (n_samples,) (cross-entropy); 0/1 per output, shape (n_samples,
        n_outputs) (binary cross-entropy); the predictions themselves (regression)."""
        out = self.output(X, threads=threads)
        if self.loss_function == "cross_entropy":
            return out.argmax(axis=1)
        if self.loss_function == "binary_cross_entropy":
            return (out > 0.5).astype(np.intp)
        return out

    def score(self, X, y, *, threads=None):
        """Accuracy of predict(X) against y (the fraction of rows with every output right, for binary
        cross-entropy); for regression, the coefficient of determination R^2 (averaged over outputs)."""
        X, labels, targets = self._check_data(X, y, finite=False)
        return self._accuracy(X, labels, targets, check.check_threads(threads), checked=False)

    def loss(self, X, y, *, threads=None):
        """Mean loss of the network's head on (X, y) (cross-entropy unless made with another loss)."""
        X, labels, targets = self._check_data(X, y, finite=False)
        return self._mean_loss(X, labels, targets, check.check_threads(threads), checked=False)

    # Inference on X that `checked` says was scanned for NaN and infinity, or else whose first layer's
    # pre-activations the compiled pass checks: only when they are not all finite is X scanned, to refuse
    # it with the usual message (finite X whose product overflowed goes on as before).

    def _proba(self, X, threads, team=False, checked=True):
        out = np.empty((X.shape[0], self.n_classes), dtype=self.dtype)
        self._infer(_compiled.predict_proba, X, (out,), threads, team, checked)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            self._overflow("the outputs overflow" if self.loss_function == "poisson" else "the logits overflow",
                           f"in {np.count_nonzero(bad)} of {X.shape[0]} rows (the first: row {np.argmax(bad)})")
        return out

    def _accuracy(self, X, labels, targets, threads, team=False, checked=True):
        """Accuracy, or R^2 for a regression head (History.val_accuracy, score)."""
        out = self._proba(X, threads, team, checked)
        if self.loss_function == "cross_entropy":
            if labels is None:
                labels = targets.argmax(axis=1)
            return float((out.argmax(axis=1) == labels).mean())
        if self.loss_function == "binary_cross_entropy":
            return float(((out > 0.5) == (targets > 0.5)).all(axis=1).mean())
        residual = ((targets - out) ** 2).sum(axis=0, dtype=np.float64)
        spread = ((targets - targets.mean(axis=0, dtype=np.float64)) ** 2).sum(axis=0, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(spread > 0, 1 - residual / np.where(spread > 0, spread, 1),
                          np.where(residual == 0, 1.0, 0.0))
        return float(r2.mean())

    def _mean_loss(self, X, labels, targets, threads, team=False, checked=True):
        value = self._infer(_compiled.mean_loss, X, self._target_args(labels, targets), threads, team,
                            checked)[0]
        if not np.isfinite(value):
            self._overflow("the loss overflows", f"on these {X.shape[0]} rows")
        return value

    def _overflow(self, what, where):
        """Finite X whose logits (or loss) overflowed the dtype: an error that says so, never NaN as an
        answer."""
        raise ValueError(f"{what} {self.dtype.name} {where}: the weights are too large for these inputs. "
                         "Scale the inputs"
                         + (", or use float64" if self.dtype == np.float32 else ""))

    def _infer(self, entry, X, args, threads, team, checked):
        """entry(params, sizes, X, *args, workspace, chunk, workers), an inference entry point, over X in
        chunks on the threads inference uses; X refused if it holds NaN or infinity."""
        chunk = min(X.shape[0], _CHUNK_ROWS)
        workers, blas_threads = _threads.inference_team(threads, chunk, team)
        work = self._chunk_workspace(chunk, workers)
        with _threads.blas_threads(blas_threads), self._lock.reading():
            result = entry(self._params, self._sizes, X, *args, work, chunk, workers, **self._kind())
        input_finite = result[-1] if isinstance(result, tuple) else result
        if not (input_finite or checked):
            check.check_finite(X, "X")
        return result

    def _chunk_workspace(self, chunk, workers):
        return np.empty(_compiled.workspace_size(self._sizes, chunk, False, workers), dtype=self.dtype)

    # ---------------------------------------------------------------------------------------------
    # Training

    def loss_and_gradients(self, X, y, *, sample_weight=None, alpha=0.0, threads=None):
        """Mean loss on (X, y) and its gradient for every weight array (same shapes), all rows one batch.

        With `sample_weight`, the weighted mean. `alpha` adds scikit-learn's L2 penalty, ``0.5 * alpha *
        sum ||W[:-1]||^2 / weight_sum`` to the loss and ``alpha * W[:-1] / weight_sum`` to each gradient
        (the bias rows apart), weight_sum the rows' weight sum (their count without weights). `threads` as
        fit's."""
        threads = check.check_threads(threads)
        X, labels, targets = self._check_data(X, y, one_batch=True)
        sample_weight = check.check_sample_weight(sample_weight, X.shape[0], self.dtype)
        alpha = check.check_real(alpha, "alpha", low=0)
        loss, grads = self._loss_and_flat_gradients(X, labels, targets, sample_weight, alpha, threads)
        return loss, _split(grads, self._shapes)

    def _all_rows_buffers(self, n, threads):
        """(gradient, workspace) for _loss_and_flat_gradients on n rows: allocated once by a caller that
        evaluates many times."""
        return np.empty_like(self._params), _training.all_rows_workspace(self, n, threads)

    def _loss_and_flat_gradients(self, X, labels, targets, sample_weight, alpha, threads, buffers=None):
        """loss_and_gradients on checked arguments, the gradient one flat array laid out like the parameters
        (what an optimizer of the flat vector takes: mlpcore.sklearn's L-BFGS, which checks X once), into
        `buffers` (_all_rows_buffers's; None: new ones)."""
        grads, work = buffers if buffers is not None else self._all_rows_buffers(X.shape[0], threads)
        total, done, _ = _training.one_batch_of_all_rows(
            self, X, labels, targets, grads, _compiled.UpdateRule(_compiled.GRADIENTS_ONLY),
            sample_weight=sample_weight, threads=threads, work=work)
        if done == 0:
            raise TrainingDiverged(
                "the loss is not finite for these weights and inputs: the outputs overflow "
                f"{self.dtype.name}; the weights are too large or the inputs unscaled")
        weight_sum = X.shape[0] if sample_weight is None else float(sample_weight.sum(dtype=np.float64))
        loss = total / weight_sum
        if alpha > 0:
            with self._lock.reading():
                for W, G in zip(self.weights, _split(grads, self._shapes)):
                    loss += 0.5 * alpha * float(np.dot(W[:-1].ravel(), W[:-1].ravel())) / weight_sum
                    G[:-1] += (alpha / weight_sum) * W[:-1]
        return loss, grads

    def _set_flat_params(self, flat):
        """Every weight from one flat array laid out like the parameters (finite, checked by the caller)."""
        with self._lock.writing():
            np.copyto(self._params, flat, casting="same_kind")

    def train_step(self, X, y, lr):
        """One step of gradient descent on the batch (X, y), in place. Returns the loss before the step."""
        X, labels, targets = self._check_data(X, y, one_batch=True)
        lr = check.check_learning_rate(lr)
        with self._training():
            total, done, _ = _training.one_batch_of_all_rows(
                self, X, labels, targets, np.empty_like(self._params), _compiled.UpdateRule(_compiled.SGD, lr),
                writes=True)
        if done == 0:
            raise TrainingDiverged(
                f"the step produced a non-finite loss or weights (lr={lr:g}); the weights were "
                "left as they were. Lower lr, or scale the inputs")
        return total / X.shape[0]

    def fit(self, X, y, *, epochs, batch_size=600, optimizer=None, lr=None, schedule=None, dropout=0.0,
            label_smoothing=0.0, sample_weight=None, validation_data=None, validation_split=0.0,
            early_stopping=None, shuffle=True, seed=None, threads=None, on_epoch_end=None, on_progress=None,
            alpha=0.0, comm=None):
        """Train on minibatches with an optimizer (plain SGD unless told otherwise).

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        y : integer labels of shape (n_samples,) or target rows of shape (n_samples, n_classes)
        epochs : int
            Passes over the data.
        batch_size : int
            Rows per batch; a last partial batch is trained, not dropped.
        optimizer : None, "sgd", "momentum", "nesterov", "adam", "adamw" or an mlpcore.optimizers.Optimizer
            None is plain SGD, ``W -= lr * dW``, at lr 0.1 unless `lr` is given. A name starts a new
            optimizer of that kind ("momentum" and "nesterov": SGD with momentum 0.9); an instance keeps
            its state (moments, step count) from fit to fit, as a PyTorch optimizer does.
        lr : float or None
            The learning rate of this fit, in place of the optimizer's own.
        schedule : None, an mlpcore.schedules.Schedule, or a callable progress -> factor
            Scales the learning rate batch by batch (see mlpcore.schedules); None keeps it constant.
        dropout : float in [0, 1)
            Inverted dropout on every hidden layer's output while training (none at inference): each unit
            is zeroed with this probability (to a multiple of 2**-24), the others scaled by 1 / (1 - p).
            The masks follow from (seed, epoch, batch, layer, row, unit), whatever the thread count.
        label_smoothing : float in [0, 1]
            Train on (1 - eps) * T + eps / K instead of the targets T (PyTorch's definition).
        sample_weight : array of shape (n_samples,) or None
            Non-negative weights per row: a batch's loss is the weighted mean of its rows', and the gradient
            follows; ``History.loss`` is the weighted mean over the epoch.
        alpha : float >= 0
            scikit-learn's L2 penalty: each batch adds ``alpha * W[:-1] / (its weight sum)`` to the weight
            gradient (never to the bias row), the gradient of ``0.5 * alpha * ||W[:-1]||^2 / weight_sum``
            (its row count without sample weights). ``History.loss`` does not include that term.
        validation_data : (X_val, y_val) or None
            Evaluated after each epoch into ``History.val_loss`` and ``History.val_accuracy``.
        validation_split : float in [0, 1)
            Without validation_data, this fraction of the rows is held out for validation before
            training, stratified by class and drawn with `seed`.
        early_stopping : mlpcore.EarlyStopping or None
            Ends training when its monitored value stops improving (see EarlyStopping).
        shuffle : bool
            Visit the rows in a new random order each epoch (X and y with the same permutation).
        seed : int or None
            Seed of the shuffling: epoch e uses the e-th ``permutation(n)`` of ``default_rng(seed)``.
        threads : int or None
            Threads for this call; None means every core this process may use, within the OpenMP limit (OMP_NUM_THREADS). Each batch is shared out
            between them when it has at least 16 rows per thread; otherwise BLAS gets them. BLAS's own
            thread count is restored afterwards.
        on_epoch_end : callable(history) or None
            Called after each epoch with the History so far. If it has a method
            ``on_fit_begin(network, X, y, batches_per_epoch)`` (as ``mlpcore.doctor.Monitor`` has), that
            is called first, once, with the rows and targets that will be trained on.
        on_progress : callable(epoch, batches_done, n_batches) or None
            Called a few times per second at most, from between batches.
        comm : an mpi4py communicator or None
            Data-parallel training across its processes, each calling fit on its own shard (X, y): rank 0's
            weights and optimizer state are broadcast first, every batch's gradients are summed across
            the ranks, and every rank takes the same step (see mlpcore._distributed for the batches).
            History's losses and validation metrics are every rank's, so all stop together.

        Returns
        -------
        History

        Raises
        ------
        TrainingDiverged (a ValueError)
            If the loss becomes NaN or infinite. On this, on KeyboardInterrupt and on any exception from a
            callback, the weights and the optimizer's state are restored to the end of the last epoch that
            finished (trained, validated and passed to on_epoch_end).
        """
        threads = check.check_threads(threads)
        with self._training():
            return self._fit(X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                             schedule=schedule, dropout=dropout, label_smoothing=label_smoothing,
                             sample_weight=sample_weight, validation_data=validation_data,
                             validation_split=validation_split, early_stopping=early_stopping, shuffle=shuffle,
                             seed=seed, threads=threads, on_epoch_end=on_epoch_end, on_progress=on_progress,
                             alpha=alpha, comm=comm)

    @contextlib.contextmanager
    def _training(self):
        """Marks the network as being trained; a second fit or train_step meanwhile (another thread, or a
        callback of this fit) is refused: interleaved, their batches and rollbacks would undo each other."""
        with self._state_lock:
            if self._trained_now:
                raise RuntimeError(f"{self!r} is already being trained (by another thread, or by the fit whose "
                                   "callback this is): train it again once that fit has returned")
            self._trained_now = True
        try:
            yield
        finally:
            self._trained_now = False

    def _fit(self, X, y, *, epochs, batch_size, optimizer, lr, schedule, dropout, label_smoothing, sample_weight,
             validation_data, validation_split, early_stopping, shuffle, seed, threads, on_epoch_end, on_progress,
             alpha, comm):
        X, largest = check.check_X(X, self.n_features_in, self.dtype, return_max_abs=True,
                                   workers=_threads.pass_workers(threads))
        labels, targets = check.check_targets(y, X.shape[0], self.n_classes, self.dtype, self.loss_function)
        epochs = check.check_positive_int(epochs, "epochs")
        batch_size = check.check_positive_int(batch_size, "batch_size")
        sample_weight = check.check_sample_weight(sample_weight, X.shape[0], self.dtype)
        dropout = check.check_real(dropout, "dropout", low=0, high=1, high_open=True)
        label_smoothing = check.check_real(label_smoothing, "label_smoothing", low=0, high=1)
        if dropout > 0 and self.activation != "relu":
            raise ValueError(f"dropout is implemented for ReLU hidden layers only, not activation={self.activation!r}")
        if label_smoothing > 0 and self.loss_function != "cross_entropy":
            raise ValueError(f"label_smoothing is for loss='cross_entropy' only, not {self.loss_function!r}")
        alpha = check.check_real(alpha, "alpha", low=0)
        if comm is not None:
            _distributed.check_comm(comm)
        optimizer, lr = optimizers.get(optimizer, lr)
        schedule = schedules.get(schedule)
        validation_split = check.check_real(validation_split, "validation_split", low=0, high=1,
                                            high_open=True)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
        seed = check.check_seed(seed)
        validation = None
        if validation_data is not None:
            validation = self._check_data(*check.check_validation_pair(validation_data))
        elif validation_split > 0:
            X, labels, targets, sample_weight, validation = _training.hold_out(
                X, labels, targets, sample_weight, validation_split, seed,
                stratify=self.loss_function == "cross_entropy")
        early_stopping = check_early_stopping(early_stopping, validation is not None)
        check.check_callback(on_epoch_end, "on_epoch_end")
        check.check_callback(on_progress, "on_progress")
        check.warn_if_unscaled(largest)
        return _training.train_epochs(
            self, X, labels, targets, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
            schedule=schedule, dropout=dropout, label_smoothing=label_smoothing, sample_weight=sample_weight,
            alpha=alpha, comm=comm, shuffle=shuffle, seed=seed, threads=threads, validation=validation,
            early_stopping=early_stopping, on_epoch_end=on_epoch_end, on_progress=on_progress)

    # ---------------------------------------------------------------------------------------------
    # Files

    def save(self, path):
        """Write the network to `path` as a .npz file (no pickle), atomically.

        The file holds the layer sizes, the dtype, the weights and ``metadata`` (with the mlpcore
        version added); ``mlpcore.load(path)`` gives back bit-identical weights.
        """
        _model_files.write(path, self.layer_sizes, self.dtype, self.get_weights(), self.metadata,
                           {"activation": self.activation, "loss": self.loss_function})

    # ---------------------------------------------------------------------------------------------

    def _check_data(self, X, y, one_batch=False, finite=True):
        X = check.check_X(X, self.n_features_in, self.dtype, one_batch=one_batch, finite=finite)
        labels, targets = check.check_targets(y, X.shape[0], self.n_classes, self.dtype, self.loss_function)
        return X, labels, targets

    def _target_args(self, labels, targets):
        """The (labels, targets) pair the core takes: the unused one is empty."""
        if labels is not None:
            return labels, np.empty((0, self.n_classes), dtype=self.dtype)
        return _NO_LABELS, targets


# Empty `labels` tell the compiled calls that the targets are rows of probabilities.
_NO_LABELS = np.empty(0, dtype=np.intp)


def _split(flat, shapes):
    arrays, offset = [], 0
    for rows, cols in shapes:
        arrays.append(flat[offset:offset + rows * cols].reshape(rows, cols))
        offset += rows * cols
    return arrays


def load(path):
    """Read a network written by ``Network.save``.

    Raises FileNotFoundError if `path` does not exist, and ValueError naming the file if it is not a
    complete, consistent mlpcore model file.
    """
    layer_sizes, dtype, weights, metadata, kind = _model_files.read(path)
    net = Network(layer_sizes, dtype=dtype, **kind)
    net.weights = weights
    net.metadata = metadata
    return net
