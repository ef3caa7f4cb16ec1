# Each compiled kernel on its own, behind a Python function, so that the tests can hold every kernel to
# its operation in mlpcore.reference (tests/test_kernels.py). These are the very inline functions the
# training loop and inference compile in (from the same .pxd files); nothing else calls this module.
# Shapes are checked here, as every entry point does, so that a wrong call raises instead of corrupting
# memory.

from cython cimport floating

from _layers cimport (dense_forward as _dense_forward, partial_product as _partial_product,
                      add_partial_products as _add_partial_products, pass_error_down as _pass_error_down,
                      weight_gradient as _weight_gradient, bias_gradient as _bias_gradient,
                      dropout as _dropout, splitmix64 as _splitmix64)
from _training cimport dropout_threshold, dropout_keep_scale
from libc.stdint cimport uint64_t
from _head cimport (softmax_cross_entropy as _softmax_cross_entropy, softmax_rows as _softmax_rows,
                    loss_and_gradient as _loss_and_gradient, output_rows as _output_rows)
from _team cimport share_start as _share_start, block_start as _block_start
from _activations cimport ACT_IDENTITY, ACT_RELU, ACT_LOGISTIC
from _head cimport HEAD_SOFTMAX, HEAD_POISSON
from _update_rules cimport (Rule, RuleKind, WeightBlock, write_weight_block as _write_weight_block,
                            RULE_GRADIENTS_ONLY, RULE_ADAM)

from libc.stdlib cimport malloc, free


def _require(bint condition, str message):
    if not condition:
        raise ValueError(message)


def _check_range(Py_ssize_t first, Py_ssize_t stop, Py_ssize_t size, str what):
    _require(0 <= first <= stop <= size, f"{what} {first}..{stop} is not within 0..{size}")


def dropout(floating[:, ::1] out, Py_ssize_t first_row, Py_ssize_t stop_row, Py_ssize_t first_col,
            Py_ssize_t stop_col, uint64_t key, double p):
    """Inverted dropout, probability p, on a block of out with the given key (see _layers.dropout)."""
    _check_range(first_row, stop_row, out.shape[0], "rows")
    _check_range(first_col, stop_col, out.shape[1], "columns")
    _require(0 <= p < 1, "p")
    _dropout(&out[0, 0], out.shape[1], first_row, stop_row, first_col, stop_col, key, dropout_threshold(p),
             <floating>dropout_keep_scale(p))


def splitmix64(uint64_t z):
    return _splitmix64(z)


def share_start(Py_ssize_t count, int member, int team):
    return _share_start(count, member, team)


def block_start(Py_ssize_t width, int member, int team):
    return _block_start(width, member, team)


def dense_forward(const floating[:, ::1] x, const floating[:, ::1] w, floating[:, ::1] z, int activation,
                  Py_ssize_t first_col, Py_ssize_t stop_col, bint check_finite=False):
    """Columns first_col..stop_col-1 of z = f(x . w[:-1] + w[-1]), f the activation (0 identity, 1 ReLU,
    2 tanh, 3 logistic: mlpcore._compiled.ACTIVATIONS). Returns whether
    those pre-activations were all finite (with check_finite; else True)."""
    _require(w.shape[0] == x.shape[1] + 1 and z.shape[0] == x.shape[0] and z.shape[1] == w.shape[1],
             "shapes")
    _check_range(first_col, stop_col, z.shape[1], "columns")
    _require(ACT_IDENTITY <= activation <= ACT_LOGISTIC, "activation")
    return _dense_forward(&x[0, 0], x.shape[0], x.shape[1], &w[0, 0], w.shape[1], &z[0, 0], activation, first_col,
                          stop_col, check_finite)


def partial_product(const floating[:, ::1] x, const floating[:, ::1] w, Py_ssize_t first_feature,
                    Py_ssize_t stop_feature, floating[:, ::1] partial):
    """partial = x[:, f0:f1] . w[f0:f1] (w's bias row unused)."""
    _require(w.shape[0] == x.shape[1] + 1 and partial.shape[0] == x.shape[0]
             and partial.shape[1] == w.shape[1], "shapes")
    _check_range(first_feature, stop_feature, x.shape[1], "features")
    _partial_product(&x[0, 0], x.shape[0], x.shape[1], &w[0, 0], w.shape[1], first_feature, stop_feature,
                     &partial[0, 0])


def add_partial_products(floating[:, :, ::1] partials, Py_ssize_t first_row, Py_ssize_t stop_row,
                         Py_ssize_t first_col, Py_ssize_t stop_col, const floating[::1] bias,
                         floating[:, ::1] out, int activation):
    """out[rows, cols] = f(sum of the partials + bias), f the activation."""
    cdef Py_ssize_t p, n_parts = partials.shape[0]
    cdef floating** parts
    _require(n_parts >= 1 and partials.shape[1] == out.shape[0] and partials.shape[2] == out.shape[1]
             and bias.shape[0] == out.shape[1], "shapes")
    _check_range(first_row, stop_row, out.shape[0], "rows")
    _check_range(first_col, stop_col, out.shape[1], "columns")
    _require(ACT_IDENTITY <= activation <= ACT_LOGISTIC, "activation")
    parts = <floating**>malloc(n_parts * sizeof(floating*))
    for p in range(n_parts):
        parts[p] = &partials[p, 0, 0]
    _add_partial_products(parts, <int>n_parts, out.shape[1], first_row, stop_row, first_col, stop_col,
                          &bias[0], &out[0, 0], activation)
    free(parts)


def pass_error_down(const floating[:, ::1] dz, const floating[:, ::1] w, const floating[:, ::1] x,
                    floating[:, ::1] dx, floating[::1] dx_column_sums, Py_ssize_t first_col,
                    Py_ssize_t stop_col, double keep_scale=1.0, int activation=ACT_RELU):
    """Columns first_col..stop_col-1 of dx = (dz . w[:-1]^T) * f'(z below) * keep_scale, f' from x = f(z
    below) (for ReLU, x > 0), and their column sums."""
    _require(w.shape[1] == dz.shape[1] and w.shape[0] == x.shape[1] + 1 and x.shape[0] == dz.shape[0]
             and dx.shape[0] == x.shape[0] and dx.shape[1] == x.shape[1]
             and dx_column_sums.shape[0] == x.shape[1], "shapes")
    _check_range(first_col, stop_col, x.shape[1], "columns")
    _pass_error_down(&dz[0, 0], dz.shape[0], dz.shape[1], &w[0, 0], x.shape[1], &x[0, 0], &dx[0, 0],
                     &dx_column_sums[0], first_col, stop_col, <floating>keep_scale, activation)


def weight_gradient(const floating[:, ::1] x, const floating[:, ::1] dz, Py_ssize_t first_row,
                    Py_ssize_t stop_row, Py_ssize_t first_col, Py_ssize_t stop_col, floating[:, ::1] dw,
                    double alpha, double beta):
    """dw[block] = beta * dw[block] + alpha * (x^T . dz)[block], for dw of x's width x dz's width."""
    _require(x.shape[0] == dz.shape[0] and dw.shape[0] == x.shape[1] and dw.shape[1] == dz.shape[1],
             "shapes")
    _check_range(first_row, stop_row, dw.shape[0], "rows")
    _check_range(first_col, stop_col, dw.shape[1], "columns")
    _weight_gradient(&x[0, 0], x.shape[0], x.shape[1], &dz[0, 0], dz.shape[1], first_row, stop_row,
                     first_col, stop_col, &dw[0, 0], <floating>alpha, <floating>beta)


def bias_gradient(floating[:, ::1] column_sums, Py_ssize_t first, Py_ssize_t stop, floating[::1] db,
                  double alpha, double beta):
    """db[j] = beta * db[j] + alpha * sum over rows p of column_sums[p, j], for j in first..stop-1."""
    cdef Py_ssize_t p, n_parts = column_sums.shape[0]
    cdef floating** parts
    _require(n_parts >= 1 and column_sums.shape[1] == db.shape[0], "shapes")
    _check_range(first, stop, db.shape[0], "columns")
    parts = <floating**>malloc(n_parts * sizeof(floating*))
    for p in range(n_parts):
        parts[p] = &column_sums[p, 0]
    _bias_gradient(&db[0], first, stop, parts, <int>n_parts, <floating>alpha, <floating>beta)
    free(parts)


def softmax_cross_entropy(floating[:, ::1] z, const Py_ssize_t[::1] labels, const floating[:, ::1] targets,
                          double grad_scale, floating[::1] column_sums, double smoothing=0.0,
                          const floating[::1] row_weights=None):
    """The summed loss of the rows of the logits z; z becomes grad_scale * (P - T), its column sums go to
    column_sums (if not empty). Targets are `labels` if not empty, else the rows of `targets`."""
    cdef Py_ssize_t j, K = z.shape[1]
    _require(z.shape[0] >= 1 and K >= 1, "shapes")
    if labels.shape[0] > 0:
        _require(labels.shape[0] == z.shape[0], "shapes")
        for j in range(labels.shape[0]):
            _require(0 <= labels[j] < K, "labels out of range")
    else:
        _require(targets.shape[0] == z.shape[0] and targets.shape[1] == K, "shapes")
    _require(column_sums.shape[0] in (0, K), "shapes")
    _require(row_weights is None or row_weights.shape[0] == z.shape[0], "shapes")
    return _softmax_cross_entropy(&z[0, 0], z.shape[0], K, &labels[0] if labels.shape[0] > 0 else NULL,
                                  &targets[0, 0] if labels.shape[0] == 0 else NULL, <floating>grad_scale,
                                  &column_sums[0] if column_sums.shape[0] > 0 else NULL, NULL,
                                  <floating>smoothing, &row_weights[0] if row_weights is not None else NULL)


def head_loss_and_gradient(int head, floating[:, ::1] z, const floating[:, ::1] targets, double grad_scale,
                           floating[::1] column_sums, const floating[::1] row_weights=None):
    """The head's (mlpcore._compiled.HEADS) summed loss of the rows of z against the rows of targets; z
    becomes grad_scale * (output - targets) (times the row weights), its column sums go to column_sums (if
    not empty)."""
    _require(HEAD_SOFTMAX <= head <= HEAD_POISSON, "head")
    _require(z.shape[0] >= 1 and z.shape[1] >= 1 and targets.shape[0] == z.shape[0]
             and targets.shape[1] == z.shape[1] and column_sums.shape[0] in (0, z.shape[1]), "shapes")
    _require(row_weights is None or row_weights.shape[0] == z.shape[0], "shapes")
    return _loss_and_gradient(head, &z[0, 0], z.shape[0], z.shape[1], NULL, &targets[0, 0],
                              <floating>grad_scale, &column_sums[0] if column_sums.shape[0] > 0 else NULL,
                              NULL, <floating>0, &row_weights[0] if row_weights is not None else NULL)


def head_output(int head, floating[:, ::1] z):
    """Each row of z replaced by the head's output."""
    _require(HEAD_SOFTMAX <= head <= HEAD_POISSON, "head")
    _require(z.shape[0] >= 1 and z.shape[1] >= 1, "shapes")
    _output_rows(head, &z[0, 0], z.shape[0], z.shape[1])


def softmax_rows(floating[:, ::1] z):
    """Each row of z replaced by its softmax."""
    _require(z.shape[0] >= 1 and z.shape[1] >= 1, "shapes")
    _softmax_rows(&z[0, 0], z.shape[0], z.shape[1])


def write_weight_block(int kind, double lr, floating[::1] params, floating[::1] grads, Py_ssize_t offset,
                       Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t first_row, Py_ssize_t stop_row,
                       Py_ssize_t first_col, Py_ssize_t stop_col, Py_ssize_t first_bias,
                       Py_ssize_t stop_bias, floating[:, ::1] column_sums, const floating[:, ::1] x,
                       const floating[:, ::1] dz, *, double momentum=0.0, bint nesterov=False,
                       double weight_decay=0.0, double beta1=0.9, double beta2=0.999, double eps=1e-8,
                       bint decoupled=False, Py_ssize_t step=0, floating[::1] first_moment=None,
                       floating[::1] second_moment=None, double l2_decay=0.0,
                       bint eps_before_correction=False):
    """The update rule `kind` (0: gradients only, 1: SGD, 2: SGD with momentum or weight decay, 3: Adam or
    AdamW, with the state arrays laid out like params) on one block of the layer whose weights are
    params[offset : offset + (n_in + 1) * n_out], as batch 0 of a pass that follows `step` steps."""
    cdef Rule rule
    cdef WeightBlock block
    cdef Py_ssize_t p
    _require(RULE_GRADIENTS_ONLY <= kind <= RULE_ADAM, "kind")
    _require(params.shape[0] == grads.shape[0] and 0 <= offset
             and offset + (n_in + 1) * n_out <= params.shape[0] and x.shape[1] == n_in
             and dz.shape[1] == n_out and x.shape[0] == dz.shape[0] and column_sums.shape[1] == n_out
             and 1 <= column_sums.shape[0] <= 16, "shapes")
    _require(first_moment is None or first_moment.shape[0] == params.shape[0], "shapes")
    _require(second_moment is None or second_moment.shape[0] == params.shape[0], "shapes")
    _require(kind != 3 or (first_moment is not None and second_moment is not None), "state")
    _require(kind != 2 or momentum == 0 or first_moment is not None, "state")
    _check_range(first_row, stop_row, n_in, "rows")
    _check_range(first_col, stop_col, n_out, "columns")
    _check_range(first_bias, stop_bias, n_out, "bias")
    rule.kind, rule.lr, rule.lr_factors, rule.step = <RuleKind>kind, lr, NULL, step
    rule.momentum, rule.nesterov, rule.weight_decay = momentum, nesterov, weight_decay
    rule.beta1, rule.beta2, rule.eps, rule.decoupled = beta1, beta2, eps, decoupled
    rule.l2, rule.eps_before_correction = 0.0, eps_before_correction
    rule.first_moment = rule.second_moment = NULL
    if first_moment is not None:
        rule.first_moment = <void*>&first_moment[0]
    if second_moment is not None:
        rule.second_moment = <void*>&second_moment[0]
    block.offset, block.n_in, block.n_out = offset, n_in, n_out
    block.first_row, block.stop_row, block.first_col, block.stop_col = first_row, stop_row, first_col, stop_col
    block.first_bias, block.stop_bias = first_bias, stop_bias
    block.n_parts = <int>column_sums.shape[0]
    block.column_sums = <void**>malloc(block.n_parts * sizeof(void*))
    for p in range(block.n_parts):
        block.column_sums[p] = &column_sums[p, 0]
    _write_weight_block(&rule, &params[0], &grads[0], &block, &x[0, 0], x.shape[0], &dz[0, 0], 0, l2_decay)
    free(block.column_sums)
