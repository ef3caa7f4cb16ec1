# The compiled core of mlpcore: forward and backward passes of bias-augmented dense ReLU layers, the fused
# softmax-cross-entropy head, the update rule, and whole training epochs, for float32 and float64.
#
# Data layout (everything row-major, C-contiguous):
# - params: every weight matrix, concatenated. Layer l is W_l of shape (sizes[l] + 1, sizes[l + 1]); its
#   last row is the bias, so W_l[:-1] is a contiguous prefix and no column of ones is ever built.
# - grads: the same layout as params.
# - work: one buffer holding, for a batch of up to `batch` rows, each layer's output (hidden outputs after
#   ReLU, which is all backward needs: relu(z) > 0 exactly when z > 0), the hidden layers' deltas, the
#   gathered input rows and the gathered target rows. Sized by workspace_size(); allocated once per call
#   from Python (once per fit) and reused by every batch.
#
# Python (mlpcore.network) validates every argument; nothing here checks shapes or values again.

from cython cimport floating
from libc.math cimport exp, expf, log, logf, isfinite
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from _blas cimport gemm, NO_TRANS, TRANS


# ---------------------------------------------------------------------------------------------------------
# Elementwise pieces

cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline Py_ssize_t _n_weights(const Py_ssize_t* sizes, Py_ssize_t n_layers) noexcept nogil:
    cdef Py_ssize_t l, total = 0
    for l in range(n_layers):
        total += (sizes[l] + 1) * sizes[l + 1]
    return total


# ---------------------------------------------------------------------------------------------------------
# Layers

cdef void dense_forward(const floating* x, Py_ssize_t m, Py_ssize_t k, const floating* w, Py_ssize_t n,
                        floating* z, bint relu) noexcept nogil:
    """z(m x n) = x(m x k) . w[:k] + w[k], then ReLU in place if asked."""
    cdef const floating* bias = w + k * n
    cdef floating* row
    cdef floating v
    cdef Py_ssize_t i, j
    gemm(NO_TRANS, NO_TRANS, <int>m, <int>n, <int>k, <floating>1, x, w, <floating>0, z)
    # The bias and the ReLU in one pass over the product, while it is still in cache.
    for i in range(m):
        row = z + i * n
        if relu:
            for j in range(n):
                v = row[j] + bias[j]
                row[j] = v if v > 0 else 0
        else:
            for j in range(n):
                row[j] += bias[j]


cdef void dense_backward(const floating* x, Py_ssize_t m, Py_ssize_t k, const floating* w, Py_ssize_t n,
                         const floating* dz, const floating* dz_column_sums, floating* dw,
                         floating alpha, floating beta, floating* dx,
                         floating* dx_column_sums) noexcept nogil:
    """From dz (m x n), the error at this layer's pre-activation, and its column sums:
    first, unless dx is NULL, dx = (dz . w[:k]^T) * (x > 0) and its column sums; then
    dw[:k] = beta * dw[:k] + alpha * x^T . dz and dw[k] = beta * dw[k] + alpha * dz_column_sums.

    With alpha = 1, beta = 0, dw is the gradient. With dw == w, alpha = -lr, beta = 1, it is the SGD step
    itself, folded into the product; dx is computed first, from the weights before the step.
    x is the layer's input, which for a hidden layer is the previous layer's ReLU output: x > 0 is exactly
    the ReLU derivative at the previous pre-activation (0 at z <= 0).
    """
    cdef floating* db = dw + k * n
    cdef const floating* x_row
    cdef floating* dx_row
    cdef floating v
    cdef Py_ssize_t i, j
    if dx != NULL:
        gemm(NO_TRANS, TRANS, <int>m, <int>k, <int>n, <floating>1, dz, w, <floating>0, dx)
        # The ReLU mask and the column sums the layer below needs for its bias, in one pass.
        memset(dx_column_sums, 0, k * sizeof(floating))
        for i in range(m):
            x_row = x + i * k
            dx_row = dx + i * k
            # Branch-free, so that the compiler vectorises it.
            for j in range(k):
                v = dx_row[j] if x_row[j] > 0 else 0
                dx_row[j] = v
                dx_column_sums[j] += v
    gemm(TRANS, NO_TRANS, <int>k, <int>n, <int>m, alpha, x, dz, beta, dw)
    for j in range(n):
        db[j] = (beta * db[j] if beta != 0 else 0) + alpha * dz_column_sums[j]


# ---------------------------------------------------------------------------------------------------------
# Softmax-cross-entropy head

cdef double softmax_cross_entropy(floating* z, Py_ssize_t m, Py_ssize_t n_classes,
                                  const Py_ssize_t* labels, const floating* targets,
                                  floating grad_scale, floating* column_sums) noexcept nogil:
    """One pass per row over the logits z (m x K): returns the summed cross-entropy of the rows and
    overwrites z with grad_scale * (P - T), the gradient at the logits (P = softmax(z)), whose column
    sums go to column_sums unless it is NULL.

    The targets are integer labels when `labels` is not NULL, else the rows of `targets` (m x K).
    Loss of a row: sum_j t_j * (logsumexp(z) - z_j), computed as (sum t) * log(s) - sum_j t_j (z_j - max)
    with s = sum_j exp(z_j - max): subtracting the row max keeps every exp <= 1.
    """
    cdef double total = 0
    cdef floating zmax, s, inv_s, weighted_shift, target_sum
    cdef floating* row
    cdef const floating* t
    cdef Py_ssize_t i, j, y
    if column_sums != NULL:
        memset(column_sums, 0, n_classes * sizeof(floating))
    for i in range(m):
        row = z + i * n_classes
        zmax = row[0]
        for j in range(1, n_classes):
            if row[j] > zmax:
                zmax = row[j]
        if labels != NULL:
            y = labels[i]
            weighted_shift = row[y] - zmax
            target_sum = 1
        else:
            t = targets + i * n_classes
            weighted_shift = 0
            target_sum = 0
            for j in range(n_classes):
                weighted_shift += t[j] * (row[j] - zmax)
                target_sum += t[j]
        s = 0
        for j in range(n_classes):
            row[j] = _exp(row[j] - zmax)
            s += row[j]
        total += target_sum * _log(s) - weighted_shift
        inv_s = 1 / s
        if labels != NULL:
            for j in range(n_classes):
                row[j] = row[j] * inv_s * grad_scale
            row[y] -= grad_scale
        else:
            for j in range(n_classes):
                row[j] = (row[j] * inv_s - t[j]) * grad_scale
        if column_sums != NULL:
            for j in range(n_classes):
                column_sums[j] += row[j]
    return total


cdef void softmax_rows(floating* z, Py_ssize_t m, Py_ssize_t n_classes) noexcept nogil:
    """Replace each row of the logits z (m x K) with its softmax, in place."""
    cdef floating zmax, s, inv_s
    cdef floating* row
    cdef Py_ssize_t i, j
    for i in range(m):
        row = z + i * n_classes
        zmax = row[0]
        for j in range(1, n_classes):
            if row[j] > zmax:
                zmax = row[j]
        s = 0
        for j in range(n_classes):
            row[j] = _exp(row[j] - zmax)
            s += row[j]
        inv_s = 1 / s
        for j in range(n_classes):
            row[j] *= inv_s


# ---------------------------------------------------------------------------------------------------------
# Whole network

cdef struct Layout:
    # Pointers into the workspace; arrays of n_layers + 1 entries. outputs[0] is the input batch,
    # outputs[l] the output of layer l (ReLU applied for hidden layers; logits, then the logit gradient,
    # for the last). deltas[l] is the error at layer l's pre-activation (deltas[n_layers] is
    # outputs[n_layers]) and column_sums[l] its column sums, the gradient of layer l's bias.
    void** outputs
    void** deltas
    void** column_sums
    void* input_rows      # batch x sizes[0], for gathered rows
    void* target_rows     # batch x n_classes, for gathered target distributions


cdef Py_ssize_t _workspace_size(const Py_ssize_t* sizes, Py_ssize_t n_layers, Py_ssize_t batch,
                                bint gather) noexcept nogil:
    cdef Py_ssize_t l, per_row = 0, fixed = 0
    for l in range(1, n_layers + 1):
        per_row += sizes[l]
        fixed += sizes[l]
    for l in range(1, n_layers):
        per_row += sizes[l]
    if gather:
        per_row += sizes[0] + sizes[n_layers]
    return per_row * batch + fixed


cdef int _layout(Layout* lay, floating* work, Py_ssize_t work_size, const Py_ssize_t* sizes,
                 Py_ssize_t n_layers, Py_ssize_t batch, bint gather) noexcept nogil:
    """Carve the workspace into per-layer buffers (and the gather buffers if asked). Returns -1 if the
    workspace is too small, -2 if the pointer arrays cannot be allocated."""
    cdef Py_ssize_t l
    if work_size < _workspace_size(sizes, n_layers, batch, gather):
        return -1
    # One allocation for the three pointer arrays.
    lay.outputs = <void**>malloc(3 * (n_layers + 1) * sizeof(void*))
    if lay.outputs == NULL:
        return -2
    lay.deltas = lay.outputs + (n_layers + 1)
    lay.column_sums = lay.deltas + (n_layers + 1)
    lay.outputs[0] = lay.deltas[0] = lay.column_sums[0] = NULL
    for l in range(1, n_layers + 1):
        lay.outputs[l] = work
        work += batch * sizes[l]
    for l in range(1, n_layers):
        lay.deltas[l] = work
        work += batch * sizes[l]
    lay.deltas[n_layers] = lay.outputs[n_layers]
    for l in range(1, n_layers + 1):
        lay.column_sums[l] = work
        work += sizes[l]
    lay.input_rows = lay.target_rows = NULL
    if gather:
        lay.input_rows = work
        work += batch * sizes[0]
        lay.target_rows = work
    return 0


cdef int _layout_or_raise(Layout* lay, floating[::1] work, const Py_ssize_t[::1] sizes, Py_ssize_t batch,
                          bint gather) except -1:
    cdef int status = _layout(lay, &work[0], work.shape[0], &sizes[0], sizes.shape[0] - 1, batch, gather)
    if status == -1:
        raise ValueError(f"the workspace has {work.shape[0]} elements, fewer than workspace_size() asks")
    if status == -2:
        raise MemoryError()
    return 0


cdef void _free_layout(Layout* lay) noexcept nogil:
    free(lay.outputs)
    lay.outputs = lay.deltas = lay.column_sums = NULL


cdef void network_forward(const floating* params, const Py_ssize_t* sizes, Py_ssize_t n_layers,
                          Py_ssize_t m, Layout* lay) noexcept nogil:
    """Fill lay.outputs[1..n_layers] from lay.outputs[0] (m rows); the last holds the logits."""
    cdef const floating* w = params
    cdef Py_ssize_t l
    for l in range(n_layers):
        dense_forward(<floating*>lay.outputs[l], m, sizes[l], w, sizes[l + 1],
                      <floating*>lay.outputs[l + 1], l < n_layers - 1)
        w += (sizes[l] + 1) * sizes[l + 1]


cdef void network_backward(const floating* params, floating* out, const Py_ssize_t* sizes,
                           Py_ssize_t n_layers, Py_ssize_t m, Layout* lay, floating alpha,
                           floating beta) noexcept nogil:
    """From the logit gradient in lay.deltas[n_layers] and its column sums, walk the layers backwards:
    out = beta * out + alpha * gradient, for every layer (see dense_backward)."""
    cdef Py_ssize_t offset = _n_weights(sizes, n_layers)
    cdef Py_ssize_t l
    for l in range(n_layers - 1, -1, -1):
        offset -= (sizes[l] + 1) * sizes[l + 1]
        # The first layer's input is the data: no error is propagated into it.
        dense_backward(<floating*>lay.outputs[l], m, sizes[l], params + offset, sizes[l + 1],
                       <floating*>lay.deltas[l + 1], <floating*>lay.column_sums[l + 1],
                       out + offset, alpha, beta,
                       <floating*>lay.deltas[l] if l > 0 else NULL,
                       <floating*>lay.column_sums[l])


# ---------------------------------------------------------------------------------------------------------
# Update rules: chosen once per fit; the training loop calls backward_and_update and knows no rule itself.
# A rule with state (momentum, Adam) computes the gradient into `grads`, then steps from it.

cdef enum RuleKind:
    RULE_GRADIENT_ONLY = 0   # compute the gradient into grads, leave the weights
    RULE_SGD = 1


cdef struct UpdateRule:
    RuleKind kind
    double lr


cdef void backward_and_update(const UpdateRule* rule, floating* params, floating* grads,
                              const Py_ssize_t* sizes, Py_ssize_t n_layers, Py_ssize_t m,
                              Layout* lay) noexcept nogil:
    if rule.kind == RULE_SGD:
        # W = W - lr * dW straight from the products (alpha = -lr, beta = 1 into W): no pass over a
        # gradient buffer, no separate axpy over all the weights each batch.
        network_backward(params, params, sizes, n_layers, m, lay, <floating>(-rule.lr), <floating>1)
    else:
        network_backward(params, grads, sizes, n_layers, m, lay, <floating>1, <floating>0)


# ---------------------------------------------------------------------------------------------------------
# Python entry points. Arguments are validated by mlpcore.network; memoryviews in, pointers inside.

def workspace_size(const Py_ssize_t[::1] sizes, Py_ssize_t batch, bint gather=False):
    """Number of elements of the workspace for batches of up to `batch` rows; `gather` adds room for
    copying each batch's rows (train_batches with a non-empty `order`)."""
    return _workspace_size(&sizes[0], sizes.shape[0] - 1, batch, gather)


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


def max_abs(const floating[:, ::1] X):
    """The largest |x| in X (inf if X holds an infinity), or NaN if X holds a NaN: the input checks of
    fit in one pass, with no temporary array the size of X."""
    # On the IEEE bit patterns with the sign cleared, the order of the unsigned integers is the order of
    # |x|, and NaNs come above infinity: one integer max, which compilers vectorise (a float max with
    # NaN checks they do not).
    cdef Py_ssize_t size = X.shape[0] * X.shape[1]
    cdef uint32_t bits32
    cdef uint64_t bits64
    cdef float f32
    cdef double f64
    if floating is float:
        with nogil:
            bits32 = _largest_magnitude_bits(<const uint32_t*>&X[0, 0], size, <uint32_t>0x7FFFFFFFu)
        memcpy(&f32, &bits32, sizeof(float))
        return f32
    else:
        with nogil:
            bits64 = _largest_magnitude_bits(<const uint64_t*>&X[0, 0], size,
                                             <uint64_t>0x7FFFFFFFFFFFFFFFull)
        memcpy(&f64, &bits64, sizeof(double))
        return f64


def predict_proba(const floating[::1] params, const Py_ssize_t[::1] sizes, const floating[:, ::1] X,
                  floating[:, ::1] out, floating[::1] work, Py_ssize_t chunk):
    """out = softmax(network(X)), `chunk` rows at a time, the GIL released."""
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1
    cdef Py_ssize_t n = X.shape[0], n_classes = sizes[n_layers]
    cdef Py_ssize_t c, start, m
    cdef Layout lay
    _layout_or_raise(&lay, work, sizes, chunk, False)
    with nogil:
        for c in range((n + chunk - 1) // chunk):
            start = c * chunk
            m = min(chunk, n - start)
            lay.outputs[0] = <void*>&X[start, 0]
            # The last layer writes its logits straight into the output rows.
            lay.outputs[n_layers] = <void*>&out[start, 0]
            network_forward(&params[0], &sizes[0], n_layers, m, &lay)
            softmax_rows(&out[start, 0], m, n_classes)
    _free_layout(&lay)


def mean_loss(const floating[::1] params, const Py_ssize_t[::1] sizes, const floating[:, ::1] X,
              const Py_ssize_t[::1] labels, const floating[:, ::1] targets, floating[::1] work,
              Py_ssize_t chunk):
    """Mean cross-entropy over X, `chunk` rows at a time. Targets are `labels` if it is not empty."""
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1
    cdef Py_ssize_t n = X.shape[0], n_classes = sizes[n_layers]
    cdef Py_ssize_t c, start, m
    cdef double total = 0
    cdef bint use_labels = labels.shape[0] > 0
    cdef Layout lay
    _layout_or_raise(&lay, work, sizes, chunk, False)
    with nogil:
        for c in range((n + chunk - 1) // chunk):
            start = c * chunk
            m = min(chunk, n - start)
            lay.outputs[0] = <void*>&X[start, 0]
            network_forward(&params[0], &sizes[0], n_layers, m, &lay)
            total += softmax_cross_entropy(
                <floating*>lay.outputs[n_layers], m, n_classes,
                &labels[start] if use_labels else NULL,
                NULL if use_labels else &targets[start, 0], <floating>0, NULL)
    _free_layout(&lay)
    return total / n


def train_batches(floating[::1] params, floating[::1] grads, const Py_ssize_t[::1] sizes,
                  const floating[:, ::1] X, const Py_ssize_t[::1] labels,
                  const floating[:, ::1] targets, const Py_ssize_t[::1] order,
                  Py_ssize_t batch_size, Py_ssize_t first_batch, Py_ssize_t stop_batch,
                  double lr, floating[::1] work, Py_ssize_t[::1] label_work):
    """Train batches first_batch..stop_batch-1 of one pass over X, in place, the GIL released.

    Batch b holds the rows order[b * batch_size : (b + 1) * batch_size] (the last one may be shorter);
    an empty `order` means the rows in their own order, used in place without a copy. Targets are
    `labels` if it is not empty, else the rows of `targets`. `lr` <= 0 computes gradients without
    updating the weights.

    Returns (the sum over the trained rows of their loss, number of batches trained). Training stops
    before the update of a batch whose loss is not finite, so that batch is not counted.
    """
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], n_classes = sizes[n_layers]
    cdef bint use_labels = labels.shape[0] > 0
    cdef bint gather = order.shape[0] > 0
    cdef Py_ssize_t b, i, start, m, row
    cdef double total = 0, batch_loss
    cdef Py_ssize_t done = 0
    cdef floating* input_rows
    cdef floating* target_rows
    cdef const Py_ssize_t* batch_labels
    cdef const floating* batch_targets
    cdef UpdateRule rule
    cdef Layout lay
    rule.kind = RULE_SGD if lr > 0 else RULE_GRADIENT_ONLY
    rule.lr = lr
    _layout_or_raise(&lay, work, sizes, batch_size, gather)
    input_rows = <floating*>lay.input_rows
    target_rows = <floating*>lay.target_rows
    with nogil:
        for b in range(first_batch, stop_batch):
            start = b * batch_size
            m = min(batch_size, n - start)
            if gather:
                for i in range(m):
                    row = order[start + i]
                    memcpy(input_rows + i * d, &X[row, 0], d * sizeof(floating))
                    if use_labels:
                        label_work[i] = labels[row]
                    else:
                        memcpy(target_rows + i * n_classes, &targets[row, 0],
                               n_classes * sizeof(floating))
                lay.outputs[0] = input_rows
                batch_labels = &label_work[0]
                batch_targets = target_rows
            else:
                lay.outputs[0] = <void*>&X[start, 0]
                batch_labels = &labels[start] if use_labels else NULL
                batch_targets = NULL if use_labels else &targets[start, 0]
            network_forward(&params[0], &sizes[0], n_layers, m, &lay)
            batch_loss = softmax_cross_entropy(
                <floating*>lay.outputs[n_layers], m, n_classes,
                batch_labels if use_labels else NULL,
                NULL if use_labels else batch_targets, <floating>(1.0 / m),
                <floating*>lay.column_sums[n_layers])
            if not isfinite(batch_loss):
                break
            backward_and_update(&rule, &params[0], &grads[0], &sizes[0], n_layers, m, &lay)
            total += batch_loss
            done += 1
    _free_layout(&lay)
    return total, done
