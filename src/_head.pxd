# The heads: what turns the last layer's pre-activations z into the loss and the gradient at z, and into
# the network's output at inference. The one place to add one: its enum value, its loss and gradient in
# loss_and_gradient, its output in output_rows. Every head here pairs an output with its canonical loss,
# so the gradient at z is always (output - target), scaled: softmax with cross-entropy (classes), sigmoid
# with binary cross-entropy (independent labels), identity with squared error and exp with Poisson
# deviance (regression). On raw row-major pointers; rows are independent: any block of rows can be done
# on its own. Called by the training loop and inference.
from cython cimport floating
from libc.math cimport exp, expf, log, logf, log1p, log1pf, fabs
from libc.string cimport memset

from _activations cimport activate, ACT_LOGISTIC


cdef inline floating exp_of(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating log_of(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating row_max(const floating* row, Py_ssize_t n) noexcept nogil:
    cdef floating largest = row[0]
    cdef Py_ssize_t j
    for j in range(1, n):
        if row[j] > largest:
            largest = row[j]
    return largest


cdef inline Py_ssize_t row_argmax(const floating* row, Py_ssize_t n) noexcept nogil:
    """The first index of the row's largest entry."""
    cdef Py_ssize_t j, best = 0
    for j in range(1, n):
        if row[j] > row[best]:
            best = j
    return best


cdef inline void clear_counts(floating* column_sums, Py_ssize_t n_outputs, Py_ssize_t* n_correct) noexcept nogil:
    """Zero what a head accumulates over its rows (either may be NULL: not wanted)."""
    if column_sums != NULL:
        memset(column_sums, 0, n_outputs * sizeof(floating))
    if n_correct != NULL:
        n_correct[0] = 0


cdef inline floating exp_shifted(floating* row, Py_ssize_t n, floating shift) noexcept nogil:
    """Replace row with exp(row - shift); return its sum."""
    cdef floating total = 0
    cdef Py_ssize_t j
    for j in range(n):
        row[j] = exp_of(row[j] - shift)
        total += row[j]
    return total


cdef inline double softmax_cross_entropy(floating* z, Py_ssize_t m, Py_ssize_t n_classes,
                                         const Py_ssize_t* labels, const floating* targets,
                                         floating grad_scale, floating* column_sums,
                                         Py_ssize_t* n_correct, floating smoothing,
                                         const floating* row_weights) noexcept nogil:
    """One pass per row over the logits z (m x K): returns the summed cross-entropy of the rows and
    overwrites z with grad_scale * (P - T), the gradient at the logits (P = softmax(z)), whose column
    sums go to column_sums unless it is NULL. Unless n_correct is NULL, it gets the number of rows whose
    largest logit is at the target's class (the largest target of a distribution).

    The targets are integer labels when `labels` is not NULL, else the rows of `targets` (m x K); with
    label smoothing eps, T becomes (1 - eps) T + eps / K (PyTorch's definition). With row_weights, row i's
    loss counts w_i times and its gradient is scaled by w_i.
    Loss of a row: sum_j t_j * (logsumexp(z) - z_j), computed as (sum t) * log(s) - sum_j t_j (z_j - max)
    with s = sum_j exp(z_j - max): subtracting the row max keeps every exp <= 1.
    """
    cdef double total = 0
    cdef floating zmax, s, inv_s, weighted_shift, target_sum, shift_sum, scale, t_j
    cdef floating uniform = smoothing / n_classes, keep = 1 - smoothing
    cdef floating* row
    cdef const floating* t = NULL
    cdef Py_ssize_t i, j, y = 0
    clear_counts(column_sums, n_classes, n_correct)
    for i in range(m):
        row = z + i * n_classes
        zmax = row_max(row, n_classes)
        if n_correct != NULL:
            n_correct[0] += row_argmax(row, n_classes) == (
                labels[i] if labels != NULL else row_argmax(targets + i * n_classes, n_classes))
        if labels != NULL:
            y = labels[i]
            weighted_shift = row[y] - zmax
            if smoothing != 0:
                shift_sum = 0
                for j in range(n_classes):
                    shift_sum += row[j] - zmax
                weighted_shift = keep * weighted_shift + uniform * shift_sum
            target_sum = 1
        else:
            t = targets + i * n_classes
            weighted_shift = 0
            target_sum = 0
            for j in range(n_classes):
                t_j = t[j] if smoothing == 0 else keep * t[j] + uniform
                weighted_shift += t_j * (row[j] - zmax)
                target_sum += t_j
        s = exp_shifted(row, n_classes, zmax)
        if row_weights == NULL:
            total += target_sum * log_of(s) - weighted_shift
            scale = grad_scale
        else:
            total += row_weights[i] * (target_sum * log_of(s) - weighted_shift)
            scale = grad_scale * row_weights[i]
        inv_s = 1 / s
        if labels != NULL:
            if smoothing == 0:
                for j in range(n_classes):
                    row[j] = row[j] * inv_s * scale
                row[y] -= scale
            else:
                for j in range(n_classes):
                    row[j] = (row[j] * inv_s - uniform) * scale
                row[y] -= keep * scale
        else:
            for j in range(n_classes):
                t_j = t[j] if smoothing == 0 else keep * t[j] + uniform
                row[j] = (row[j] * inv_s - t_j) * scale
        if column_sums != NULL:
            for j in range(n_classes):
                column_sums[j] += row[j]
    return total


cdef inline void softmax_rows(floating* z, Py_ssize_t m, Py_ssize_t n_classes) noexcept nogil:
    """Replace each row of the logits z (m x K) with its softmax, in place."""
    cdef floating inv_s
    cdef floating* row
    cdef Py_ssize_t i, j
    for i in range(m):
        row = z + i * n_classes
        inv_s = 1 / exp_shifted(row, n_classes, row_max(row, n_classes))
        for j in range(n_classes):
            row[j] *= inv_s


cdef enum Head:
    HEAD_SOFTMAX = 0    # softmax output, cross-entropy against labels or distributions over the classes
    HEAD_SIGMOID = 1    # sigmoid on each output, binary cross-entropy against targets in [0, 1]
    HEAD_SQUARED = 2    # identity output, half the squared error summed over the outputs
    HEAD_POISSON = 3    # exp output, Poisson deviance / 2: exp(z) - t z + t log t - t, summed over outputs


cdef inline floating log1p_of(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline double elementwise_loss_and_gradient(int head, floating* z, Py_ssize_t m, Py_ssize_t n_outputs,
                                                 const floating* targets, floating grad_scale,
                                                 floating* column_sums, Py_ssize_t* n_correct,
                                                 const floating* row_weights) noexcept nogil:
    """The heads whose outputs are independent of each other (all but softmax): as
    softmax_cross_entropy, with targets always rows. A row counts as right (sigmoid only) when every
    output is on the target's side of 1/2."""
    cdef double total = 0, row_loss
    cdef floating v, t, out, scale
    cdef floating* row
    cdef const floating* t_row
    cdef Py_ssize_t i, j, wrong
    clear_counts(column_sums, n_outputs, n_correct)
    for i in range(m):
        row = z + i * n_outputs
        t_row = targets + i * n_outputs
        row_loss = 0
        wrong = 0
        for j in range(n_outputs):
            v, t = row[j], t_row[j]
            if head == HEAD_SIGMOID:
                # log(1 + exp(v)) - t v without overflow: max(v, 0) - t v + log(1 + exp(-|v|)).
                row_loss += (v if v > 0 else 0) - t * v + log1p_of(exp_of(-fabs(v)))
                out = activate(v, ACT_LOGISTIC)
                wrong += (v > 0) != (t > <floating>0.5)
            elif head == HEAD_SQUARED:
                out = v
                row_loss += <floating>0.5 * (v - t) * (v - t)
            else:
                out = exp_of(v)
                row_loss += out - t * v + (t * log_of(t) - t if t > 0 else 0)
            row[j] = out - t
        scale = grad_scale
        if row_weights != NULL:
            row_loss *= row_weights[i]
            scale = grad_scale * row_weights[i]
        total += row_loss
        for j in range(n_outputs):
            row[j] *= scale
        if column_sums != NULL:
            for j in range(n_outputs):
                column_sums[j] += row[j]
        if n_correct != NULL and head == HEAD_SIGMOID:
            n_correct[0] += wrong == 0
    return total


cdef inline double loss_and_gradient(int head, floating* z, Py_ssize_t m, Py_ssize_t n_outputs,
                                     const Py_ssize_t* labels, const floating* targets, floating grad_scale,
                                     floating* column_sums, Py_ssize_t* n_correct, floating smoothing,
                                     const floating* row_weights) noexcept nogil:
    """The head's summed loss over the rows of z (m x n_outputs), z overwritten with grad_scale * (output
    - target) (times the row's weight), its column sums into column_sums unless NULL: see
    softmax_cross_entropy. Integer labels and label smoothing are the softmax head's alone."""
    if head == HEAD_SOFTMAX:
        return softmax_cross_entropy(z, m, n_outputs, labels, targets, grad_scale, column_sums, n_correct,
                                     smoothing, row_weights)
    return elementwise_loss_and_gradient(head, z, m, n_outputs, targets, grad_scale, column_sums, n_correct,
                                         row_weights)


cdef inline void output_rows(int head, floating* z, Py_ssize_t m, Py_ssize_t n_outputs) noexcept nogil:
    """Replace the rows of z (m x n_outputs) with the head's output: softmax, sigmoid, z itself or exp."""
    cdef Py_ssize_t i
    if head == HEAD_SOFTMAX:
        softmax_rows(z, m, n_outputs)
    elif head == HEAD_SIGMOID:
        for i in range(m * n_outputs):
            z[i] = activate(z[i], ACT_LOGISTIC)
    elif head == HEAD_POISSON:
        for i in range(m * n_outputs):
            z[i] = exp_of(z[i])
