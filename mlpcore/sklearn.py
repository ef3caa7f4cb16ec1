"""scikit-learn estimators trained by mlpcore's compiled core: MLPClassifier and MLPRegressor, drop-in
replacements for ``sklearn.neural_network``'s (scikit-learn 1.9: same parameters, defaults, parameter rules,
attributes, training loop and messages).

The only module of mlpcore that imports scikit-learn; ``import mlpcore`` does not import this one. It checks
its input as scikit-learn does (``validate_data``, ``_parameter_constraints``), then trains a
``mlpcore.Network``: "sgd" and "adam" one epoch per ``Network.fit`` call with an optimizer kept across calls
(as scikit-learn keeps ``_optimizer``), "lbfgs" through SciPy's L-BFGS-B on ``Network.loss_and_gradients``.
"""
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _validation as check
from . import optimizers
from .network import Network, TrainingDiverged

try:  # scikit-learn's own switch for L-BFGS-B's `iprint` (deprecated in SciPy 1.15)
    from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
except ImportError:  # pragma: no cover - other scikit-learn versions
    def _get_additional_lbfgs_options_dict(key, value):
        return {}

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC_SOLVERS = ("sgd", "adam")
# What each estimator's output layer is called (out_activation_) and which Network head computes it.
_HEADS = {"softmax": "cross_entropy", "logistic": "binary_cross_entropy", "identity": "squared_error",
          "exp": "poisson"}
_NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large values and "
               "need to be preprocessed.")
# Seeds of the epochs' shuffling are drawn from the estimator's RandomState below this bound.
_SEED_BOUND = np.iinfo(np.int32).max


def _fit_one_epoch(net, *args, **kwargs):
    """Network.fit, without its warning about unscaled inputs: scikit-learn's estimators never warn of
    that (and here fit is called once per epoch)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X has values as large as", category=UserWarning)
        return net.fit(*args, **kwargs)


def _dense(X):
    return X.toarray() if hasattr(X, "toarray") else X


def _squared_norm(net):
    """sum ||W[:-1]||^2 over the layers (the L2 term's sum), in float64 (inf for weights that large)."""
    with np.errstate(over="ignore"):
        return float(sum(np.dot(W[:-1].ravel(), W[:-1].ravel()) for W in net.weights))


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, training and the forward pass."""

    # scikit-learn 1.9's BaseMultilayerPerceptron._parameter_constraints, and mlpcore's two own.
    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"}), Options(type, {np.float32, np.float64})],
        "threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, hidden_layer_sizes, activation, *, solver, alpha, batch_size, learning_rate,
                 learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
                 momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon,
                 n_iter_no_change, max_fun, dtype, threads):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype
        self.threads = threads

    # ---------------------------------------------------------------------------------------------
    # scikit-learn's layout of the network's weights: views of network_'s bias-augmented arrays

    @property
    def coefs_(self):
        """coefs_[i]: the weights of layer i, shape (n_in, n_out): a view of ``network_.weights[i][:-1]``."""
        return [W[:-1] for W in self.network_.weights]

    @coefs_.setter
    def coefs_(self, coefs):
        self._set_rows(coefs, slice(None, -1), "coefs_")

    @property
    def intercepts_(self):
        """intercepts_[i]: the biases of layer i, shape (n_out,): a view of ``network_.weights[i][-1]``."""
        return [W[-1] for W in self.network_.weights]

    @intercepts_.setter
    def intercepts_(self, intercepts):
        self._set_rows(intercepts, -1, "intercepts_")

    def _set_rows(self, arrays, rows, name):
        weights = self.network_.get_weights()
        if len(arrays) != len(weights):
            raise ValueError(f"{name} needs {len(weights)} arrays, one per layer, got {len(arrays)}")
        for W, new in zip(weights, arrays):
            W[rows] = new
        self.network_.weights = weights

    # ---------------------------------------------------------------------------------------------
    # Fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data. A sparse X is converted to a dense array (the compiled core is dense).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The target values (class labels in classification, real numbers in regression).
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights.

        Returns
        -------
        self : object
            The trained model.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError("partial_fit is only available for stochastic optimizers. %s is not "
                                 "stochastic." % self.solver)
        return True

    def _call_threads(self):
        """The threads every compiled call of this estimator is given. None is mlpcore's default: every
        usable core within the OpenMP limit in force, which joblib's loky workers (OMP_NUM_THREADS = cores
        / n_jobs) and dask's nannies (1) set, so the fits of a parallel grid search share the cores."""
        return self.threads

    def _fit(self, X, y, sample_weight, incremental):
        hidden_layer_sizes = self.hidden_layer_sizes
        if not hasattr(hidden_layer_sizes, "__iter__"):
            hidden_layer_sizes = [hidden_layer_sizes]
        hidden_layer_sizes = list(hidden_layer_sizes)
        if np.any(np.array(hidden_layer_sizes) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % hidden_layer_sizes)
        first_pass = not hasattr(self, "network_") or (not self.warm_start and not incremental)
        dtype = np.dtype(self.dtype) if first_pass else self.network_.dtype

        X, y = self._validate_input(X, y, incremental, reset=first_pass, dtype=dtype)
        X = _dense(X)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=dtype)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        layer_units = [X.shape[1]] + hidden_layer_sizes + [y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, dtype)
        elif list(self.network_.layer_sizes) != layer_units:
            raise ValueError(
                f"the network has layer sizes {list(self.network_.layer_sizes)}, but hidden_layer_sizes and "
                f"y now give {layer_units}: continuing its training (warm_start or partial_fit) needs the "
                "same sizes. Fit with warm_start=False to start a new network")

        try:
            if self.solver in _STOCHASTIC_SOLVERS:
                self._fit_stochastic(X, y, sample_weight, incremental)
            else:
                self._fit_lbfgs(X, y, sample_weight)
        except TrainingDiverged as exc:
            raise ValueError(_NON_FINITE) from exc
        if not all(np.isfinite(W).all() for W in self.network_.weights):
            raise ValueError(_NON_FINITE)
        return self

    def _initialize(self, y, layer_units, dtype):
        """A new network with scikit-learn's initial weights, and the bookkeeping of a first fit."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        net = Network(layer_units, dtype=dtype, seed=0, activation=self.activation,
                      loss=_HEADS[self.out_activation_])
        # scikit-learn's _init_coef, layer by layer (weights, then biases) from the estimator's RandomState.
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights = []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
            intercept = self._random_state.uniform(-bound, bound, fan_out)
            weights.append(np.vstack([coef, intercept]))
        net.weights = weights
        self.network_ = net
        self._best_weights = net.get_weights()
        if self.solver in _STOCHASTIC_SOLVERS:
            self._start_curves()

    def _start_curves(self):
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _targets(self, y):
        """What the network trains on for the (n, n_outputs) targets y: class indices for softmax, float
        rows of the network's dtype otherwise."""
        if self.out_activation_ == "softmax":
            return np.ascontiguousarray(y.argmax(axis=1), dtype=np.intp)
        return np.ascontiguousarray(y, dtype=self.network_.dtype)

    def _new_optimizer(self):
        if self.solver == "sgd":
            return optimizers.SGD(lr=self.learning_rate_init, momentum=self.momentum,
                                  nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        opt = optimizers.Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        opt.eps_form = "sklearn"  # lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); step -lr_t m / (sqrt(v) + eps)
        return opt

    def _fit_stochastic(self, X, y, sample_weight, incremental):
        net = self.network_
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        if not hasattr(self, "loss_curve_"):  # the first fits were lbfgs's
            self._start_curves()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        targets = self._targets(y)
        if early_stopping:
            # scikit-learn's split (the same rows: it depends only on n, the strates and the RandomState);
            # stratified for binary classification only, as there.
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            train, val = train_test_split(np.arange(X.shape[0]), random_state=self._random_state,
                                          test_size=self.validation_fraction, stratify=stratify)
            if val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the "
                                 "size of your dataset.")
            X_train, targets_train, X_val, y_val = X[train], targets[train], X[val], y[val]
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
            sample_weight_train = sample_weight_val = None
            if sample_weight is not None:
                sample_weight_train, sample_weight_val = sample_weight[train], sample_weight[val]
        else:
            X_train, targets_train, sample_weight_train = X, targets, sample_weight
            X_val = y_val = sample_weight_val = None

        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                              "clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        n_batches = -(-n_samples // batch_size)
        weight_sum = n_samples if sample_weight_train is None else float(sample_weight_train.sum())
        # Network.fit's loss is the data loss; scikit-learn's adds each batch's L2 term (see _epoch_loss).
        norm = _squared_norm(net) if self.alpha else 0.0
        threads = self._call_threads()
        diverged = False  # with early stopping: the weights went non-finite (scikit-learn goes on with NaN)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                seed = int(self._random_state.randint(_SEED_BOUND)) if self.shuffle else None
                if not diverged:
                    try:
                        history = _fit_one_epoch(
                            net, X_train, targets_train, epochs=1, batch_size=batch_size, optimizer=self._optimizer,
                            shuffle=bool(self.shuffle), seed=seed, threads=threads,
                            sample_weight=sample_weight_train, alpha=self.alpha)
                    except TrainingDiverged:
                        if not early_stopping:
                            raise
                        # scikit-learn's weights would be NaN from here on, every loss and validation score
                        # NaN (the count of epochs without improvement resets on NaN, so its fit runs to
                        # max_iter), and the best weights restored. Network.fit has put back the last
                        # epoch's weights: the NaN epochs are counted without training.
                        diverged = True
                if diverged:
                    self.loss_ = np.nan
                else:
                    norm_before, norm = norm, (_squared_norm(net) if self.alpha else 0.0)
                    self.loss_ = self._epoch_loss(history.loss[-1], norm_before, norm, n_batches, weight_sum)
                self.n_iter_ += 1
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, y_val, sample_weight_val, diverged)
                self._iteration_ends()
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    if self._trigger_stopping(msg):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization "
                                  "hasn't converged yet." % self.max_iter, ConvergenceWarning)
        except KeyboardInterrupt:
            # Network.fit has put back the weights and optimizer state of the last finished epoch.
            warnings.warn("Training interrupted by user.")
        if early_stopping:
            net.weights = self._best_weights

    def _epoch_loss(self, data_loss, norm_before, norm_after, n_batches, weight_sum):
        """scikit-learn's loss of an epoch from Network.fit's mean data loss.

        scikit-learn adds to each batch's loss its L2 term, 0.5 alpha ||W_b||^2 / (the batch's weight sum),
        W_b the weights before batch b, and weights the batches by their row counts: without sample
        weights, sum_b 0.5 alpha ||W_b||^2 / n. Only the weights at the epoch's ends are known here, so
        ||W_b||^2 is interpolated linearly between them, at b / n_batches of the way: an approximation,
        exact with one batch per epoch and whenever the norm changes linearly over the epoch. (The mean
        of the two ends, taken as every ||W_b||^2, would be wrong even with one batch.) With sample
        weights, n is their sum (exact when they are equal), and the data loss is the weighted mean over
        the epoch, where scikit-learn's is the mean over batches of each batch's weighted mean.
        scikit-learn averages the squared error over the outputs; the core sums it.
        """
        if self.out_activation_ == "identity":
            data_loss /= self.n_outputs_
        # sum_{b < B} (N0 + (N1 - N0) b / B) = B N0 + (N1 - N0) (B - 1) / 2
        norms = n_batches * norm_before + (norm_after - norm_before) * (n_batches - 1) / 2
        return float(data_loss + 0.5 * self.alpha * norms / weight_sum)

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sample_weight_val, diverged=False):
        if early_stopping:
            score = np.nan if diverged else self._score(X_val, y_val, sample_weight=sample_weight_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % self.validation_scores_[-1])
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_weights = self.network_.get_weights()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    # scikit-learn's SGDOptimizer.iteration_ends and trigger_stopping (Adam has no schedule: it stops).

    def _iteration_ends(self):
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            self._set_sgd_lr(float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t)

    def _trigger_stopping(self, msg):
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if self._optimizer.lr <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._set_sgd_lr(self._optimizer.lr / 5.0)
        if self.verbose:
            print(msg + " Setting learning rate to %f" % self._optimizer.lr)
        return False

    def _set_sgd_lr(self, lr):
        """Change the SGD learning rate as scikit-learn's does. Its velocity holds the steps taken,
        v = momentum v - lr g; mlpcore's buffer (PyTorch's) holds the gradients, b = momentum b + g, and
        steps by -lr b: equal at one lr (v = -lr b). Rescaling b by old_lr / new_lr keeps v, so the
        updates stay scikit-learn's through every change of lr."""
        buffer = self._optimizer.state.get("momentum_buffer")
        if buffer is not None:
            buffer *= buffer.dtype.type(self._optimizer.lr / lr)
        self._optimizer.lr = lr

    def _fit_lbfgs(self, X, y, sample_weight):
        net = self.network_
        # Checked once, not at each of up to max_fun evaluations; the parameters and their gradient go to
        # and from L-BFGS as one flat vector, the network's own layout (each W, bias row last).
        X, labels, targets = net._check_data(X, self._targets(y), one_batch=True)
        sample_weight = check.check_sample_weight(sample_weight, X.shape[0], net.dtype)
        weight_sum = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        outputs_mean = self.out_activation_ == "identity" and self.n_outputs_ > 1
        threads = self._call_threads()
        buffers = net._all_rows_buffers(X.shape[0], threads)  # every evaluation's, reused

        def loss_and_gradient(packed):
            if not np.isfinite(packed).all():
                return np.inf, np.zeros_like(packed)  # the line search steps back
            net._set_flat_params(packed)
            try:
                loss, grads = net._loss_and_flat_gradients(X, labels, targets, sample_weight, self.alpha,
                                                           threads, buffers)
            except TrainingDiverged:
                return np.inf, np.zeros_like(packed)
            if outputs_mean:
                # scikit-learn's value (not its gradient) averages the squared error over the outputs.
                l2 = 0.5 * self.alpha * _squared_norm(net) / weight_sum
                loss = (loss - l2) / self.n_outputs_ + l2
            return float(loss), grads.astype(np.float64)  # a copy: the buffer is the next evaluation's

        iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
        result = scipy.optimize.minimize(
            loss_and_gradient, net._params.astype(np.float64),
            method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol,
                     **_get_additional_lbfgs_options_dict("iprint", iprint)})
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = result.fun
        if not np.isfinite(result.x).all():
            raise ValueError(_NON_FINITE)
        net._set_flat_params(result.x)

    # ---------------------------------------------------------------------------------------------
    # Inference

    def _forward_pass_fast(self, X, check_input=True):
        """The output layer's values (softmax or sigmoid probabilities, identity, exp), (n, n_outputs)."""
        if check_input:
            X = _dense(validate_data(self, X, accept_sparse=["csr", "csc"], dtype=self.network_.dtype,
                                     reset=False))
        return self.network_.output(X, threads=self._call_threads())

    def _score_with_function(self, X, y, sample_weight, score_function):
        """scikit-learn's validation score of early stopping: NaN when the outputs are not finite."""
        try:
            y_pred = self._predict(X, check_input=False)
        except ValueError:  # the core refuses outputs that overflow
            return np.nan
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


_SHARED_DOC = """
    hidden_layer_sizes : array-like of shape (n_layers - 2,) or int, default=(100,)
        The ith element is the number of neurons in the ith hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Activation of every hidden layer.
    solver : {"lbfgs", "sgd", "adam"}, default="adam"
        "sgd" and "adam" train on minibatches through ``Network.fit``, one epoch per call, with an
        optimizer kept from call to call; "lbfgs" runs SciPy's L-BFGS-B on the full-batch loss.
    alpha : float, default=0.0001
        Strength of the L2 penalty 0.5 * alpha * sum ||W||^2 / (weight sum of the batch): not on biases.
    batch_size : int or "auto", default="auto"
        Rows per minibatch; "auto" is min(200, n_samples). Clipped (with a warning) to n_samples.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        SGD's schedule: "invscaling" sets lr = learning_rate_init / (t_ + 1) ** power_t after each epoch,
        "adaptive" divides lr by 5 each time training stops improving (stopping once lr <= 1e-6).
    learning_rate_init : float, default=0.001
    power_t : float, default=0.5
    max_iter : int, default=200
        Epochs for "sgd" and "adam", iterations for "lbfgs".
    shuffle : bool, default=True
        Shuffle the rows every epoch ("sgd", "adam").
    random_state : int, RandomState instance or None, default=None
        Draws the initial weights, the early-stopping split and every epoch's shuffling seed.
    tol : float, default=1e-4
        Training stops when the loss (or validation score) has not improved by tol for n_iter_no_change
        epochs; L-BFGS-B's gtol.
    verbose : bool, default=False
    warm_start : bool, default=False
        Start fit from the weights of the last fit.
    momentum : float in [0, 1], default=0.9
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
        Hold out validation_fraction of the rows (stratified for binary classification) and stop on the
        validation score; the best epoch's weights are kept.
    validation_fraction : float in [0, 1), default=0.1
    beta_1, beta_2 : float in [0, 1), default=0.9, 0.999
    epsilon : float, default=1e-8
        Adam's, in scikit-learn's form: step -lr_t m / (sqrt(v) + epsilon).
    n_iter_no_change : int or inf, default=10
    max_fun : int, default=15000
        L-BFGS-B's limit on loss evaluations.
    dtype : {"float32", "float64"}, default="float64"
        mlpcore's: the dtype of the weights and of every computation. X is converted to it.
    threads : int or None, default=None
        mlpcore's: threads for training and prediction. None: every core the process may use, within the
        OpenMP limit in force (OMP_NUM_THREADS; joblib's loky workers and dask's nannies set it, so the
        fits of a parallel grid search do not oversubscribe the cores)."""

_DIFFERENCES_DOC = """
    Differences from scikit-learn
    -----------------------------
    - Sparse X is accepted and converted to a dense array.
    - The weights and outputs have the dtype of the `dtype` parameter (float64 by default), whatever X's
      dtype (scikit-learn's follow X: float32 X trains in float32).
    - The epochs' shuffling uses its own random stream (seeded from random_state): with the same
      random_state the initial weights and the early-stopping split are scikit-learn's, the batches not,
      so the results are statistically equal, not identical. (With shuffle=False the batches are the same,
      and so are the weights after training, to rounding.)
    - ``loss_curve_`` holds scikit-learn's loss with its per-batch L2 term approximated from the weights
      at the epoch's ends; with unequal sample weights its data part is the weighted mean over the epoch
      (see ``_BaseMLP._epoch_loss``).
    - partial_fit exists only for the stochastic solvers, for the regressor too (scikit-learn's regressor
      always has one).
    - Continuing a fit (warm_start, partial_fit) with other layer sizes raises a ValueError.
    - Training that diverges (non-finite loss) without early stopping raises scikit-learn's "Solver
      produced non-finite parameter weights" ValueError at once, not after max_iter epochs of NaN.
    - Negative sample weights are refused (a ValueError; scikit-learn accepts them): they make the loss
      unbounded below.
    - predict and predict_proba raise a ValueError when an output overflows the dtype (a Poisson model's
      exp on inputs far outside its training data), where scikit-learn returns inf."""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = ("""Multi-layer perceptron classifier trained by mlpcore: scikit-learn's ``MLPClassifier``
    with the same parameters, attributes and training loop.

    Binary targets get one sigmoid output (out_activation_ "logistic"), multiclass targets a softmax,
    multilabel indicator targets one sigmoid per label; the loss is the log-loss, plus the L2 penalty.

    Parameters
    ----------""" + _SHARED_DOC + """

    Attributes
    ----------
    classes_ : ndarray or list of ndarray
    loss_ : float
    best_loss_ : float or None
    loss_curve_ : list of float
    validation_scores_ : list of float or None
    best_validation_score_ : float or None
    t_ : int
        Training rows seen by the stochastic solvers.
    coefs_, intercepts_ : list of ndarray
        Views of ``network_.weights``: coefs_[i] is ``network_.weights[i][:-1]``, intercepts_[i] its last row.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
    n_iter_ : int
    n_layers_ : int
    n_outputs_ : int
    out_activation_ : str
    network_ : mlpcore.Network
        The trained network.
""" + _DIFFERENCES_DOC + "\n    ")

    loss = "log_loss"  # scikit-learn's classifier has this attribute too (not a parameter)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dtype="float64",
                 threads=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
            batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
            beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, dtype=dtype,
            threads=threads)

    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset, dtype):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, dtype=dtype,
                             order="C", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        # As scikit-learn: a new LabelBinarizer on a fresh fit; else y's classes checked against classes_
        # (all of them for warm_start, a subset for partial_fit, whose first call set them).
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def predict(self, X):
        """Predicted classes, shape (n_samples,) or (n_samples, n_classes) for multilabel targets."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y) ("sgd" and "adam" only).

        classes : array of shape (n_classes,), required on the first call: every class of all the calls.
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in the order of classes_."""
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = ("""Multi-layer perceptron regressor trained by mlpcore: scikit-learn's ``MLPRegressor`` with
    the same parameters, attributes and training loop.

    Parameters
    ----------
    loss : {"squared_error", "poisson"}, default="squared_error"
        Half the squared error (identity outputs), or half the Poisson deviance with a log link (exp
        outputs; y must be >= 0).""" + _SHARED_DOC + """

    Attributes
    ----------
    As MLPClassifier's, without classes_; out_activation_ is "identity" or "exp".
""" + _DIFFERENCES_DOC + """
    - loss="poisson" refuses negative y (scikit-learn trains on them, to a NaN loss).
    """)

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, dtype="float64", threads=None):
        self.loss = loss
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
            batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
            beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, dtype=dtype,
            threads=threads)

    def _out_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset, dtype):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=dtype, order="C", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("Some value(s) of y are negative, which is not allowed for loss='poisson'.")
        return X, y

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y) ("sgd" and "adam" only)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
