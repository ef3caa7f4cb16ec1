# The Python entry points of mlpcore's compiled core: memoryviews in, pointers inside, the GIL released
# around the work. What each piece does lives in its own file:
#
#   _blas.pxd           the BLAS shim (row-major gemm over scipy.linalg.cython_blas)
#   _layers.pxd         one dense layer: forward, error passed down, weight and bias gradients
#   _activations.pxd    the hidden layers' activations and their derivatives (ReLU, tanh, logistic, identity)
#   _head.pxd           the heads: loss, the gradient at the output layer, the output (softmax and others)
#   _workspace.pxd      the parameter layout, and a call's workspace carved into buffers
#   _team.pxd           the OpenMP team: barrier, who does which rows or features, why it cannot deadlock
#   _update_rules.pxd   what becomes of a gradient (SGD, gradients only): the one place weights are written
#   _training.pxd       the training loop, both ways of sharing out a batch
#   _inference.pxd      probabilities and loss over many rows
#
# Threads: a team of OpenMP workers shares out every batch, each calling BLAS on its own share with BLAS
# itself single-threaded (Python sets that through threadpoolctl), so the two kinds of threads are never
# nested.
#
# Python (mlpcore._validation, called by mlpcore.network) validates values (finite inputs, labels in
# range); the entry points here check only what keeps the core in bounds (shapes, counts, sizes BLAS can
# take), cheaply.

from cython cimport floating
import numpy as np
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from cython.parallel cimport parallel

from _team cimport MLPCORE_OPENMP, mlpcore_member, mlpcore_team_size, mlpcore_max_threads, split_by_rows as _split_by_rows
from _team cimport MAX_TEAM, LOSS_STRIDE, share_start
from _workspace cimport (Workspace, workspace_size as _workspace_size, carve_workspace, release_workspace,
                         n_weights)
from _update_rules cimport Rule, RuleKind, RULE_GRADIENTS_ONLY, RULE_SGD, RULE_SGD_MOMENTUM, RULE_ADAM, PANEL_BYTES
from _training cimport TeamResult, Regularisation, train_member
from _inference cimport evaluate_member
from _activations cimport ACT_IDENTITY, ACT_RELU, ACT_TANH, ACT_LOGISTIC
from _head cimport HEAD_SOFTMAX, HEAD_SIGMOID, HEAD_SQUARED, HEAD_POISSON

#: Whether this build runs training on several threads (it was compiled with OpenMP).
OPENMP = bool(MLPCORE_OPENMP)
#: The largest team the entry points take.
MAX_WORKERS = MAX_TEAM
#: The largest count BLAS takes (rows of a batch or a chunk): its sizes are 32-bit ints.
MAX_BLAS_SIZE = 2**31 - 1
#: Update rule kinds.
GRADIENTS_ONLY = RULE_GRADIENTS_ONLY
SGD = RULE_SGD
SGD_MOMENTUM = RULE_SGD_MOMENTUM
ADAM = RULE_ADAM
# Small batches' gradients are computed and stepped this many bytes at a time (_update_rules.pxd).
GRADIENT_PANEL_BYTES = PANEL_BYTES
#: The hidden layers' activations (_activations.pxd), by the names Network takes.
ACTIVATIONS = {"relu": ACT_RELU, "tanh": ACT_TANH, "logistic": ACT_LOGISTIC, "identity": ACT_IDENTITY}
#: The heads (_head.pxd), by the names of their losses as Network takes them.
HEADS = {"cross_entropy": HEAD_SOFTMAX, "binary_cross_entropy": HEAD_SIGMOID, "squared_error": HEAD_SQUARED,
         "poisson": HEAD_POISSON}


def openmp_max_threads():
    """OpenMP's thread limit in force (OMP_NUM_THREADS, or omp_set_num_threads through threadpoolctl); 1
    in a build without OpenMP."""
    return mlpcore_max_threads()


def _check_kind(int activation, int head, bint use_labels):
    if activation not in ACTIVATIONS.values():
        raise ValueError(f"unknown activation {activation}")
    if head not in HEADS.values():
        raise ValueError(f"unknown head {head}")
    if use_labels and head != HEAD_SOFTMAX:
        raise ValueError("integer labels are for the softmax head only; the others take rows of targets")


cdef class UpdateRule:
    """What train_batches does with each gradient, and the state it keeps (see _update_rules.pxd).

    UpdateRule(GRADIENTS_ONLY) writes the gradients into `grads` and leaves the weights;
    UpdateRule(SGD, lr) steps W -= lr * dW; UpdateRule(SGD_MOMENTUM, lr, momentum=, nesterov=,
    weight_decay=, first_moment=) and UpdateRule(ADAM, lr, beta1=, beta2=, eps=, weight_decay=,
    decoupled=, first_moment=, second_moment=) keep their state in the given arrays, laid out like the
    parameters and of their dtype, which they update in place. `step` is the number of steps taken before
    the pass; `lr_factors` (float64, one per batch of the pass, or None) is the schedule.
    """
    cdef Rule rule
    cdef object _first_moment, _second_moment, _lr_factors  # the arrays the pointers point into

    def __init__(self, int kind, double lr=0.0, *, double momentum=0.0, bint nesterov=False,
                 double weight_decay=0.0, double beta1=0.9, double beta2=0.999, double eps=1e-8,
                 bint decoupled=False, first_moment=None, second_moment=None, double l2=0.0,
                 bint eps_before_correction=False):
        if not RULE_GRADIENTS_ONLY <= kind <= RULE_ADAM:
            raise ValueError(f"unknown update rule kind {kind}")
        if kind != RULE_GRADIENTS_ONLY and not 0 < lr < float("inf"):
            raise ValueError(f"the update rule needs a learning rate > 0, got {lr}")
        if not (0 <= momentum < float("inf") and 0 <= weight_decay < float("inf") and 0 <= beta1 < 1
                and 0 <= beta2 < 1 and 0 <= eps < float("inf")):
            raise ValueError("the update rule's settings are out of range: momentum, weight_decay and eps "
                             "must be finite and >= 0, beta1 and beta2 in [0, 1)")
        if not 0 <= l2 < float("inf"):
            raise ValueError(f"l2 must be finite and >= 0, got {l2}")
        if l2 != 0 and (kind not in (RULE_SGD_MOMENTUM, RULE_ADAM) or decoupled):
            raise ValueError("l2 is for SGD_MOMENTUM (which with momentum 0 is plain SGD) and ADAM without "
                             "decoupled decay")
        needs_first = kind == RULE_ADAM or (kind == RULE_SGD_MOMENTUM and momentum != 0)
        needs_second = kind == RULE_ADAM
        if needs_first != (first_moment is not None) or needs_second != (second_moment is not None):
            raise ValueError("the state arrays given do not match the rule: SGD with momentum takes "
                             "first_moment, Adam first_moment and second_moment, the others none")
        self.rule.kind = <RuleKind>kind
        self.rule.lr = lr
        self.rule.momentum, self.rule.nesterov, self.rule.weight_decay = momentum, nesterov, weight_decay
        self.rule.beta1, self.rule.beta2, self.rule.eps, self.rule.decoupled = beta1, beta2, eps, decoupled
        self.rule.l2, self.rule.eps_before_correction = l2, eps_before_correction
        self.rule.step = 0
        self.rule.lr_factors = NULL
        self._lr_factors = None
        self._first_moment = _state_array(first_moment)
        self._second_moment = _state_array(second_moment)
        self.rule.first_moment = _data_pointer(self._first_moment)
        self.rule.second_moment = _data_pointer(self._second_moment)

    @property
    def kind(self):
        return <int>self.rule.kind

    @property
    def lr(self):
        return self.rule.lr

    @property
    def step(self):
        return self.rule.step

    @step.setter
    def step(self, Py_ssize_t value):
        if value < 0:
            raise ValueError(f"step must be >= 0, got {value}")
        self.rule.step = value

    @property
    def lr_factors(self):
        return self._lr_factors

    @lr_factors.setter
    def lr_factors(self, factors):
        cdef double[::1] view
        if factors is None:
            self._lr_factors, self.rule.lr_factors = None, NULL
            return
        # A copy of its own: the caller's buffer may be resized or freed while the pointer is kept.
        owned = np.array(factors, dtype=np.float64, copy=True, order="C")
        if owned.ndim != 1 or owned.shape[0] == 0:
            raise ValueError(f"lr_factors must be a non-empty 1-D sequence, got shape {owned.shape}")
        if not (np.isfinite(owned).all() and (owned >= 0).all()):
            raise ValueError("lr_factors must be finite and >= 0")
        view = owned
        self._lr_factors, self.rule.lr_factors = owned, &view[0]

    cdef int check_for(self, Py_ssize_t n_params, Py_ssize_t item_size, Py_ssize_t stop_batch) except -1:
        """The state arrays fit the parameters, and the schedule covers the batches to train."""
        for state in (self._first_moment, self._second_moment):
            if state is not None and (state.size != n_params or state.itemsize != item_size):
                raise ValueError(f"the update rule's state is {state.size} entries of {state.dtype}, but "
                                 f"the parameters are {n_params} entries of {item_size} bytes")
        if self._lr_factors is not None and len(self._lr_factors) < stop_batch:
            raise ValueError(f"lr_factors has {len(self._lr_factors)} entries, fewer than the "
                             f"{stop_batch} batches")
        return 0


def _state_array(state):
    if state is None:
        return None
    if not (isinstance(state, np.ndarray) and state.ndim == 1 and state.flags.c_contiguous
            and state.flags.writeable and state.dtype in (np.float32, np.float64)):
        raise ValueError("an update rule's state must be a writeable 1-D C-contiguous float32 or float64 "
                         "array")
    return state


cdef void* _data_pointer(state):
    cdef Py_ssize_t address
    if state is None or state.size == 0:
        return NULL
    address = state.ctypes.data
    return <void*>address


def split_by_rows(Py_ssize_t m, Py_ssize_t width, Py_ssize_t item_size):
    """Whether training shares out a batch of m rows through layers up to `width` wide by rows (else by
    features), for items of item_size bytes (4: float32, 8: float64)."""
    return _split_by_rows(m, width, item_size)


def _check_sizes(const Py_ssize_t[::1] sizes):
    if sizes.shape[0] < 2:
        raise ValueError(f"sizes must hold at least 2 layer sizes, got {sizes.shape[0]}")
    for l in range(sizes.shape[0]):
        if not 1 <= sizes[l] <= MAX_BLAS_SIZE:
            raise ValueError(f"every layer size must be in [1, 2**31 - 1], got {sizes[l]}")


def _check_rows(Py_ssize_t rows, str what):
    if not 1 <= rows <= MAX_BLAS_SIZE:
        raise ValueError(f"{what} must be in [1, 2**31 - 1] (BLAS takes 32-bit sizes), got {rows}")


def _workspace_bound(const Py_ssize_t[::1] sizes, Py_ssize_t batch, Py_ssize_t workers):
    """An upper bound of every workspace size for these arguments, in Python integers; refuses one that
    C's signed sizes could not count (the C count would wrap around and pass a too-small workspace)."""
    widths = sum(sizes[l] for l in range(1, sizes.shape[0]))
    bound = (2 * widths + sizes[0]) * batch + (widths + (widths + sizes[0]) * batch) * workers
    if bound >= 2**62:
        raise ValueError(f"a workspace for batches of {batch} rows through layers {list(sizes)} would "
                         "hold more elements than memory can")
    return bound


def workspace_size(const Py_ssize_t[::1] sizes, Py_ssize_t batch, bint gather=False, Py_ssize_t workers=1,
                   bint training=False):
    """Number of elements of the workspace for batches of up to `batch` rows done by up to `workers`
    threads; `gather` adds room for copying each batch's rows (train_batches with a non-empty `order`),
    `training` room for train_batches's partial sums."""
    _check_sizes(sizes)
    _check_rows(batch, "the rows of a batch")
    if not 1 <= workers <= MAX_TEAM:
        raise ValueError(f"workers must be in [1, {MAX_TEAM}], got {workers}")
    _workspace_bound(sizes, batch, workers)
    return _workspace_size(&sizes[0], sizes.shape[0] - 1, batch, gather, workers, training)


ctypedef fused float_bits:
    uint32_t
    uint64_t


cdef float_bits _largest_magnitude_bits(const float_bits* bits, Py_ssize_t size,
                                        float_bits magnitude_mask) noexcept nogil:
    cdef float_bits largest = 0, v
    cdef Py_ssize_t i
    for i in range(size):
        v = bits[i] & magnitude_mask
        largest = v if v > largest else largest
    return largest


def max_abs(const floating[:, ::1] X, int workers=1):
    """The largest |x| in X (inf if X holds an infinity), or NaN if X holds a NaN: the input checks of
    fit in one pass, with no temporary array the size of X, shared out between `workers` threads (the
    pass is bound by memory bandwidth, which one core does not use up)."""
    # On the IEEE bit patterns with the sign cleared, the order of the unsigned integers is the order of
    # |x|, and NaNs come above infinity: one integer max, which compilers vectorise (a float max with
    # NaN checks they do not).
    cdef Py_ssize_t size = X.shape[0] * X.shape[1], first, stop
    cdef uint64_t[MAX_TEAM * LOSS_STRIDE] largest  # each worker's on its own cache line
    cdef uint64_t result = 0
    cdef uint32_t bits32
    cdef const char* data
    cdef int w, me, team
    cdef float f32
    cdef double f64
    if size == 0:
        return 0.0
    if not 1 <= workers <= MAX_TEAM:
        raise ValueError(f"workers must be in [1, {MAX_TEAM}], got {workers}")
    data = <const char*>&X[0, 0]
    with nogil:
        if workers == 1:
            result = _largest_magnitude(data, 0, size, sizeof(floating))
        else:
            # The team may be smaller than asked: the slots of members it lacks stay 0.
            memset(largest, 0, sizeof(largest))
            with parallel(num_threads=workers):
                me, team = mlpcore_member(), mlpcore_team_size()
                first, stop = share_start(size, me, team), share_start(size, me + 1, team)
                largest[me * LOSS_STRIDE] = _largest_magnitude(data, first, stop, sizeof(floating))
            for w in range(workers):
                result = max(result, largest[w * LOSS_STRIDE])
    if floating is float:
        bits32 = <uint32_t>result
        memcpy(&f32, &bits32, sizeof(float))
        return f32
    else:
        memcpy(&f64, &result, sizeof(double))
        return f64


cdef uint64_t _largest_magnitude(const char* data, Py_ssize_t first, Py_ssize_t stop,
                                 size_t item_size) noexcept nogil:
    """The largest IEEE bit pattern with the sign cleared among items first..stop-1."""
    if item_size == 4:
        return _largest_magnitude_bits(<const uint32_t*>data + first, stop - first, <uint32_t>0x7FFFFFFFu)
    return _largest_magnitude_bits(<const uint64_t*>data + first, stop - first,
                                   <uint64_t>0x7FFFFFFFFFFFFFFFull)


cdef Py_ssize_t _first_out_of_range(const Py_ssize_t[::1] values, Py_ssize_t limit) noexcept nogil:
    """The index of the first value outside [0, limit), or -1."""
    cdef Py_ssize_t i
    for i in range(values.shape[0]):
        if values[i] < 0 or values[i] >= limit:
            return i
    return -1


cdef int _check_indices(const Py_ssize_t[::1] values, Py_ssize_t limit, str what) except -1:
    """Refuse indices that would take the core out of bounds (labels into the logits, order into X)."""
    cdef Py_ssize_t bad
    with nogil:
        bad = _first_out_of_range(values, limit)
    if bad >= 0:
        raise ValueError(f"{what} has the value {values[bad]} at {bad}, outside [0, {limit})")
    return 0


cdef int _check_data(const Py_ssize_t[::1] sizes, Py_ssize_t n_params, Py_ssize_t rows, Py_ssize_t width,
                     const Py_ssize_t[::1] labels, Py_ssize_t target_rows, Py_ssize_t target_width,
                     str rows_name="targets") except -1:
    """Shapes of params, X and the targets against sizes (labels, or the rows of `rows_name` when there
    are none)."""
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1, n_labels = labels.shape[0] if labels is not None else 0
    cdef Py_ssize_t l
    _check_sizes(sizes)
    # Counted in Python integers: the C count wraps around for sizes no memory holds.
    needed = 0
    for l in range(n_layers):
        needed += (<object>sizes[l] + 1) * <object>sizes[l + 1]
    if n_params != needed:
        raise ValueError(f"params has {n_params} entries, but layer sizes {list(sizes)} need {needed}")
    if rows < 1 or width != sizes[0]:
        raise ValueError(f"X has shape ({rows}, {width}), but the network needs at least one row of "
                         f"{sizes[0]} features")
    if n_labels > 0:
        if n_labels != rows:
            raise ValueError(f"labels has {n_labels} entries for {rows} rows of X")
        _check_indices(labels, sizes[n_layers], "labels")
    elif target_rows != rows or target_width != sizes[n_layers]:
        raise ValueError(f"{rows_name} has shape ({target_rows}, {target_width}), but X has {rows} rows and "
                         f"the network {sizes[n_layers]} outputs")
    return 0


cdef double* _prepare_team(Workspace* space, floating[::1] work, const Py_ssize_t[::1] sizes,
                           Py_ssize_t batch, bint gather, int workers, bint training) except NULL:
    """Check the team size, carve the workspace, and return a zeroed slot for each worker's summed loss
    (LOSS_STRIDE apart). _release_team frees both."""
    cdef double* losses
    cdef int status
    if not 1 <= workers <= MAX_TEAM:
        raise ValueError(f"workers must be in [1, {MAX_TEAM}], got {workers}")
    _workspace_bound(sizes, batch, workers)
    status = carve_workspace(space, &work[0], work.shape[0], &sizes[0], sizes.shape[0] - 1, batch, gather,
                             workers, training)
    if status == -1:
        raise ValueError(f"the workspace has {work.shape[0]} elements, fewer than workspace_size() asks")
    if status == -2:
        raise MemoryError()
    losses = <double*>calloc(workers * LOSS_STRIDE, sizeof(double))
    if losses == NULL:
        release_workspace(space)
        raise MemoryError()
    return losses


cdef void _release_team(Workspace* space, double* losses) noexcept nogil:
    free(losses)
    release_workspace(space)


cdef double _evaluate(const floating[::1] params, const Py_ssize_t[::1] sizes, const floating[:, ::1] X,
                      floating* out, const Py_ssize_t* labels, const floating* targets, floating[::1] work,
                      Py_ssize_t chunk, int workers, bint* input_finite, int activation, int head) except? -1:
    """Run evaluate_member on a team of `workers` (see train_batches); returns the summed loss, and
    whether the first layer's pre-activations were all finite into input_finite."""
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1
    cdef double total = 0
    cdef double* losses
    cdef int w
    cdef Workspace space
    _check_rows(chunk, "chunk")
    losses = _prepare_team(&space, work, sizes, chunk, False, workers, False)
    for w in range(workers):
        # A slot whose worker OpenMP never started (a smaller team, or no OpenMP) saw nothing bad.
        losses[w * LOSS_STRIDE + 1] = 1
    with nogil:
        if workers == 1:
            evaluate_member(&params[0], &sizes[0], n_layers, &X[0, 0], X.shape[0], chunk, &space, out,
                            labels, targets, losses, 0, 1, activation, head)
        else:
            with parallel(num_threads=workers):
                evaluate_member(&params[0], &sizes[0], n_layers, &X[0, 0], X.shape[0], chunk, &space, out,
                                labels, targets, losses, mlpcore_member(), mlpcore_team_size(), activation,
                                head)
        input_finite[0] = True
        for w in range(workers):
            total += losses[w * LOSS_STRIDE]
            input_finite[0] = input_finite[0] and losses[w * LOSS_STRIDE + 1] != 0
    _release_team(&space, losses)
    return total


def predict_proba(const floating[::1] params, const Py_ssize_t[::1] sizes, const floating[:, ::1] X,
                  floating[:, ::1] out, floating[::1] work, Py_ssize_t chunk, int workers=1, *,
                  int activation=ACT_RELU, int head=HEAD_SOFTMAX):
    """out = the network's output for X (the head's: softmax, sigmoid, identity or exp), `chunk` rows at a
    time shared out between `workers` threads (BLAS must be single-threaded when workers > 1; see
    train_batches), the GIL released.

    Returns whether the first layer's pre-activations were all finite: False when X holds NaN or
    infinity (or that product overflowed), which the ReLU may hide from `out`. The caller need not scan X
    for them first."""
    cdef bint input_finite
    _check_data(sizes, params.shape[0], X.shape[0], X.shape[1], None, out.shape[0], out.shape[1], "out")
    _check_kind(activation, head, False)
    _evaluate(params, sizes, X, &out[0, 0], NULL, NULL, work, chunk, workers, &input_finite, activation, head)
    return input_finite


def mean_loss(const floating[::1] params, const Py_ssize_t[::1] sizes, const floating[:, ::1] X,
              const Py_ssize_t[::1] labels, const floating[:, ::1] targets, floating[::1] work,
              Py_ssize_t chunk, int workers=1, *, int activation=ACT_RELU, int head=HEAD_SOFTMAX):
    """(mean loss of the head over X, whether the first layer's pre-activations were all finite: see
    predict_proba), `chunk` rows at a time shared out between `workers` threads. Targets are `labels` if
    it is not empty."""
    cdef bint use_labels = labels.shape[0] > 0
    cdef bint input_finite
    cdef double total
    _check_data(sizes, params.shape[0], X.shape[0], X.shape[1], labels, targets.shape[0],
                targets.shape[1])
    _check_kind(activation, head, use_labels)
    total = _evaluate(params, sizes, X, NULL, &labels[0] if use_labels else NULL,
                      NULL if use_labels else &targets[0, 0], work, chunk, workers, &input_finite, activation,
                      head)
    return total / X.shape[0], input_finite


def train_batches(floating[::1] params, floating[::1] grads, const Py_ssize_t[::1] sizes,
                  const floating[:, ::1] X, const Py_ssize_t[::1] labels,
                  const floating[:, ::1] targets, const Py_ssize_t[::1] order,
                  Py_ssize_t batch_size, Py_ssize_t first_batch, Py_ssize_t stop_batch,
                  UpdateRule rule, floating[::1] work, Py_ssize_t[::1] label_work, int workers=1, *,
                  const floating[::1] sample_weight=None, floating[::1] weight_work=None,
                  double label_smoothing=0.0, double dropout=0.0, uint64_t dropout_key=0,
                  int activation=ACT_RELU, int head=HEAD_SOFTMAX, reducer=None,
                  const double[::1] batch_scales=None, const Py_ssize_t[::1] batch_starts=None):
    """Train batches first_batch..stop_batch-1 of one pass over X, in place, the GIL released.

    Batch b holds the rows order[b * batch_size : (b + 1) * batch_size] (the last one may be shorter);
    an empty `order` means the rows in their own order, used in place without a copy. Targets are
    `labels` if it is not empty, else the rows of `targets`. `rule` says what becomes of each gradient:
    an UpdateRule(SGD, lr) steps the weights, UpdateRule(GRADIENTS_ONLY) leaves them and writes the
    gradients into `grads`. When rows are gathered (`order` not empty) and the targets are labels,
    `label_work` holds at least batch_size labels.

    `sample_weight` (one per row of X, >= 0) weighs each row's loss and gradient: a batch's loss is the
    weighted mean; with rows gathered, `weight_work` holds at least batch_size weights. `label_smoothing`
    eps trains on (1 - eps) T + eps / K. `dropout` p drops each hidden unit's output with probability p
    (rounded to a multiple of 2**-24) and scales the others by 1 / (1 - that), the mask a hash of
    (dropout_key, batch, layer, row, unit).

    `workers` > 1 shares every batch out between that many OpenMP threads (at most MAX_WORKERS; fewer if
    OpenMP gives fewer, one if this build has no OpenMP). The caller must make BLAS single-threaded for
    the call: each worker calls it. `work` must be sized by workspace_size(..., workers=workers).

    Data-parallel training (mlpcore._distributed): `reducer(batch, loss, correct)` is called once per
    batch, with the GIL, by one worker, once the batch's gradient is whole in `grads` (scaled by
    `batch_scales[batch]`, 1 / the batch's weight across every process); it sums `grads` in place across
    processes and returns the summed (loss, correct), or None to stop before the step. `batch_starts`
    (n_batches + 1 row offsets into the pass, each batch at most batch_size rows) replaces batches of
    batch_size rows.

    Returns (the sum over the trained rows of their loss, number of batches trained, number of those
    rows whose largest logit was at the target's class). Training stops before the update of a batch
    whose loss is not finite, so that batch is not counted.
    """
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1, n = X.shape[0], n_batches
    cdef bint use_labels = labels.shape[0] > 0
    cdef bint gather = order.shape[0] > 0
    cdef const floating* X_data = &X[0, 0]
    cdef const Py_ssize_t* label_data = &labels[0] if use_labels else NULL
    cdef const floating* target_data = NULL if use_labels else &targets[0, 0]
    cdef const Py_ssize_t* order_data = &order[0] if gather else NULL
    cdef double* losses
    cdef TeamResult result
    cdef Workspace space
    cdef Regularisation extra
    _check_data(sizes, params.shape[0], n, X.shape[1], labels, targets.shape[0], targets.shape[1])
    if grads.shape[0] != params.shape[0]:
        raise ValueError(f"grads has {grads.shape[0]} entries, params {params.shape[0]}")
    rule.check_for(params.shape[0], sizeof(floating), stop_batch)
    _check_rows(batch_size, "batch_size")
    n_batches = (n + batch_size - 1) // batch_size
    if batch_starts is not None:
        n_batches = batch_starts.shape[0] - 1
        if n_batches < 0 or batch_starts[0] < 0 or batch_starts[n_batches] > n:
            raise ValueError(f"batch_starts must run from 0 <= start to <= {n} rows")
        for b in range(n_batches):
            if not 0 < batch_starts[b + 1] - batch_starts[b] <= batch_size:
                raise ValueError(f"batch {b} of batch_starts has {batch_starts[b + 1] - batch_starts[b]} rows, "
                                 f"not 1..{batch_size}")
    if reducer is not None and (not callable(reducer) or rule.rule.kind == RULE_GRADIENTS_ONLY):
        raise ValueError("reducer must be a callable, with a rule that steps")
    if batch_scales is not None and batch_scales.shape[0] < stop_batch:
        raise ValueError(f"batch_scales has {batch_scales.shape[0]} entries, fewer than the {stop_batch} batches")
    if not 0 <= first_batch <= stop_batch <= n_batches:
        raise ValueError(f"batches {first_batch}..{stop_batch - 1} are not within the {n_batches} batches "
                         f"of {n} rows in batches of {batch_size}")
    if gather and order.shape[0] != n:
        raise ValueError(f"order has {order.shape[0]} entries for {n} rows of X")
    if gather:
        _check_indices(order, n, "order")
    if gather and use_labels and label_work.shape[0] < min(batch_size, n):
        raise ValueError(f"label_work holds {label_work.shape[0]} labels, fewer than a batch's "
                         f"{min(batch_size, n)}")
    if sample_weight is not None and sample_weight.shape[0] != n:
        raise ValueError(f"sample_weight has {sample_weight.shape[0]} entries for {n} rows of X")
    if sample_weight is not None and gather and (weight_work is None or weight_work.shape[0] < min(batch_size, n)):
        raise ValueError(f"weight_work must hold at least {min(batch_size, n)} weights")
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    _check_kind(activation, head, use_labels)
    if dropout != 0 and activation != ACT_RELU:
        raise ValueError("dropout is implemented for ReLU hidden layers only")
    if label_smoothing != 0 and head != HEAD_SOFTMAX:
        raise ValueError("label smoothing is for the softmax head only")
    extra.sample_weight = &sample_weight[0] if sample_weight is not None else NULL
    extra.weight_work = &weight_work[0] if weight_work is not None and weight_work.shape[0] > 0 else NULL
    extra.label_smoothing, extra.dropout, extra.dropout_key = label_smoothing, dropout, dropout_key
    extra.reducer = <void*>reducer if reducer is not None else NULL
    extra.batch_scales = &batch_scales[0] if batch_scales is not None and batch_scales.shape[0] > 0 else NULL
    extra.batch_starts = &batch_starts[0] if batch_starts is not None else NULL
    result.total, result.done, result.correct = 0, 0, 0
    losses = _prepare_team(&space, work, sizes, batch_size, gather, workers, True)
    with nogil:
        if workers == 1:
            # No parallel region at all: the calling thread is a team of one, its barriers no-ops.
            train_member(&params[0], &grads[0], &sizes[0], n_layers, X_data, n, label_data, target_data,
                         order_data, batch_size, first_batch, stop_batch, &rule.rule, &extra, &space,
                         &label_work[0] if label_work.shape[0] > 0 else NULL, losses, &result, 0, 1,
                         activation, head)
        else:
            with parallel(num_threads=workers):
                train_member(&params[0], &grads[0], &sizes[0], n_layers, X_data, n, label_data,
                             target_data, order_data, batch_size, first_batch, stop_batch, &rule.rule,
                             &extra, &space, &label_work[0] if label_work.shape[0] > 0 else NULL, losses, &result,
                             mlpcore_member(), mlpcore_team_size(), activation, head)
    _release_team(&space, losses)
    return result.total, result.done, result.correct
