# The kernels of one bias-augmented dense layer, on raw row-major pointers: the forward product with
# the bias and the activation (_activations.pxd) fused in, the error passed down through the weights and
# the activation below, the weight gradient product and the bias gradient. Each can do any block of rows or columns on its own, which is
# how a team shares out the work (_training.pxd); each calls BLAS only through the shim (_blas.pxd).
#
# A layer's weights W (n_in + 1, n_out) are stored with the bias as the last row, so W[:n_in] is a
# contiguous prefix: no column of ones is ever built.

from cython cimport floating
from libc.stdint cimport uint64_t
from libc.string cimport memset

from _blas cimport gemm_ld, NO_TRANS, TRANS
from _activations cimport ACT_IDENTITY, ACT_RELU, activate, derivative_from_output


cdef inline bint dense_forward(const floating* x, Py_ssize_t m, Py_ssize_t k, const floating* w,
                               Py_ssize_t n, floating* z, int activation, Py_ssize_t first_col,
                               Py_ssize_t stop_col, bint check_finite=False) noexcept nogil:
    """Columns first_col..stop_col-1 of z(m x n) = f(x(m x k) . w[:k] + w[k]), f the activation.
    With check_finite, returns whether every one of those pre-activations (before the ReLU) was finite;
    else True.

    Any block of rows (offset x and z) or of columns can be done on its own.

    A NaN or infinity in a row of x makes every pre-activation of that row NaN or infinite (inf * 0 is
    NaN), which the ReLU would hide (NaN > 0 is false): so the check finds any non-finite input in the
    pass that adds the bias, at a fraction of the cost of a pass over x (n columns instead of k, in
    cache). It also finds a product that overflowed."""
    cdef const floating* bias = w + k * n
    cdef floating* row
    cdef floating v
    cdef Py_ssize_t i, j
    # Flags in the data's own type, one per row and one for all: the loops then vectorise in both types.
    cdef floating row_nonfinite, nonfinite = 0
    gemm_ld(NO_TRANS, NO_TRANS, <int>m, <int>(stop_col - first_col), <int>k, <floating>1, x, <int>max(1, k),
            w + first_col, <int>n, <floating>0, z + first_col, <int>n)
    # The bias and the activation in one pass over the product, while it is still in cache. ReLU and
    # the identity have loops of their own, which the compiler vectorises.
    for i in range(m):
        row = z + i * n
        row_nonfinite = 0
        if activation == ACT_RELU and check_finite:
            for j in range(first_col, stop_col):
                v = row[j] + bias[j]
                # v - v is NaN exactly when v is NaN or infinite.
                row_nonfinite = 1 if (v - v) != <floating>0 else row_nonfinite
                row[j] = v if v > 0 else 0
        elif activation == ACT_RELU:
            for j in range(first_col, stop_col):
                v = row[j] + bias[j]
                row[j] = v if v > 0 else 0
        elif activation == ACT_IDENTITY:
            for j in range(first_col, stop_col):
                v = row[j] + bias[j]
                if check_finite:
                    row_nonfinite = 1 if (v - v) != <floating>0 else row_nonfinite
                row[j] = v
        else:
            for j in range(first_col, stop_col):
                v = row[j] + bias[j]
                if check_finite:
                    row_nonfinite = 1 if (v - v) != <floating>0 else row_nonfinite
                row[j] = activate(v, activation)
        nonfinite += row_nonfinite
    return nonfinite == 0


cdef inline void partial_product(const floating* x, Py_ssize_t m, Py_ssize_t k, const floating* w,
                                 Py_ssize_t n, Py_ssize_t first_feature, Py_ssize_t stop_feature,
                                 floating* partial) noexcept nogil:
    """partial(m x n) = x[:, f0:f1] . w[f0:f1] for f0..f1 = first_feature..stop_feature-1: one block of
    input features' share of the product x(m x k) . w[:k] (no bias). The sum of the partials of blocks
    that cover every feature is the product (add_partial_products)."""
    if stop_feature > first_feature:
        gemm_ld(NO_TRANS, NO_TRANS, <int>m, <int>n, <int>(stop_feature - first_feature), <floating>1,
                x + first_feature, <int>k, w + first_feature * n, <int>n, <floating>0, partial, <int>n)
    else:
        memset(partial, 0, m * n * sizeof(floating))


cdef inline void add_partial_products(floating** partials, int n_parts, Py_ssize_t n, Py_ssize_t first_row,
                                      Py_ssize_t stop_row, Py_ssize_t first_col, Py_ssize_t stop_col,
                                      const floating* bias, floating* out, int activation) noexcept nogil:
    """out[i, j] = f(sum over p of partials[p][i, j] + bias[j]), f the activation, for the given rows
    and columns of m x n matrices: the forward pass of a layer whose product was split over its input
    features (partial_product)."""
    cdef floating* out_row
    cdef const floating* part_row
    cdef floating v
    cdef Py_ssize_t i, j
    cdef int p
    for i in range(first_row, stop_row):
        out_row = out + i * n
        part_row = partials[0] + i * n
        for j in range(first_col, stop_col):
            out_row[j] = part_row[j] + bias[j]
        for p in range(1, n_parts):
            part_row = partials[p] + i * n
            for j in range(first_col, stop_col):
                out_row[j] += part_row[j]
        if activation == ACT_RELU:
            for j in range(first_col, stop_col):
                v = out_row[j]
                out_row[j] = v if v > 0 else 0
        elif activation != ACT_IDENTITY:
            for j in range(first_col, stop_col):
                out_row[j] = activate(out_row[j], activation)


cdef inline void pass_error_down(const floating* dz, Py_ssize_t m, Py_ssize_t n, const floating* w,
                                 Py_ssize_t k, const floating* x, floating* dx, floating* dx_column_sums,
                                 Py_ssize_t first_col, Py_ssize_t stop_col, floating keep_scale,
                                 int activation) noexcept nogil:
    """The error at the layer below, from dz (m x n), the error at this layer's pre-activation: columns
    first_col..stop_col-1 of dx = (dz . w[:k]^T) * f'(z below) * keep_scale, and their column sums (the
    gradient of the bias below) into dx_column_sums, which is zero elsewhere.

    x is this layer's input, the layer below's output f(z), from which f'(z) follows
    (_activations.derivative_from_output); for ReLU x > 0 is exactly the derivative (0 at z <= 0). With
    dropout on that output, a dropped unit's x is 0 too, and a kept one was scaled by keep_scale =
    1 / (1 - p), which its error is scaled by (1 without dropout).
    The bias row of w passes no error down: it has no input. Any block of rows (offset dz, x and dx) or of
    columns can be done on its own; a block of columns reads only those rows of w.
    """
    cdef const floating* x_row
    cdef floating* dx_row
    cdef floating v
    cdef Py_ssize_t i, j
    gemm_ld(NO_TRANS, TRANS, <int>m, <int>(stop_col - first_col), <int>n, <floating>1, dz, <int>max(1, n),
            w + first_col * n, <int>max(1, n), <floating>0, dx + first_col, <int>k)
    # The derivative and the column sums in one pass.
    memset(dx_column_sums, 0, k * sizeof(floating))
    for i in range(m):
        x_row = x + i * k
        dx_row = dx + i * k
        if activation == ACT_RELU:
            # A select the compiler vectorises (given -fno-trapping-math, setup.py).
            for j in range(first_col, stop_col):
                v = dx_row[j] * keep_scale if x_row[j] > 0 else 0
                dx_row[j] = v
                dx_column_sums[j] += v
        else:
            for j in range(first_col, stop_col):
                v = dx_row[j] * derivative_from_output(x_row[j], activation) * keep_scale
                dx_row[j] = v
                dx_column_sums[j] += v


cdef inline void weight_gradient(const floating* x, Py_ssize_t m, Py_ssize_t k, const floating* dz,
                                 Py_ssize_t n, Py_ssize_t first_row, Py_ssize_t stop_row,
                                 Py_ssize_t first_col, Py_ssize_t stop_col, floating* dw, floating alpha,
                                 floating beta) noexcept nogil:
    """dw[r, c] = beta * dw[r, c] + alpha * (x^T . dz)[r, c] over the block of rows first_row..stop_row-1
    and columns first_col..stop_col-1, for x (m x k), dz (m x n) and dw (k x n): a block of the weight
    gradient, or (with dw the weights, alpha = -lr and beta = 1) of the SGD step itself. Disjoint blocks
    can be done at the same time."""
    gemm_ld(TRANS, NO_TRANS, <int>(stop_row - first_row), <int>(stop_col - first_col), <int>m, alpha,
            x + first_row, <int>max(1, k), dz + first_col, <int>max(1, n), beta,
            dw + first_row * n + first_col, <int>max(1, n))


cdef inline void bias_gradient(floating* db, Py_ssize_t first, Py_ssize_t stop, floating** column_sums,
                               int n_parts, floating alpha, floating beta) noexcept nogil:
    """db[j] = beta * db[j] + alpha * (the sum of the n_parts partial column sums of the error at j), for
    j in first..stop-1: the bias row's gradient is the column sums of the error (its input is 1)."""
    cdef Py_ssize_t j
    cdef int p
    cdef floating total
    for j in range(first, stop):
        total = 0
        for p in range(n_parts):
            total += column_sums[p][j]
        db[j] = (beta * db[j] if beta != 0 else 0) + alpha * total


cdef inline bint network_forward(const floating* params, const Py_ssize_t* sizes, Py_ssize_t n_layers,
                                 const floating* x, Py_ssize_t first_row, Py_ssize_t m, void** outputs,
                                 floating* logits, int activation) noexcept nogil:
    """Rows first_row..first_row+m-1 of every layer's output, outputs[1..n_layers - 1], and of the logits
    (into outputs[n_layers], or `logits` if not NULL), from the same rows of the input x. Returns whether
    the first layer's pre-activations were all finite: False if those rows of x hold NaN or infinity
    (see dense_forward). Row-local: any block of rows can be done on its own."""
    cdef const floating* w = params
    cdef const floating* layer_in = x
    cdef floating* layer_out
    cdef Py_ssize_t l
    cdef bint input_finite = True
    for l in range(n_layers):
        layer_out = logits if l == n_layers - 1 and logits != NULL else <floating*>outputs[l + 1]
        if not dense_forward(layer_in + first_row * sizes[l], m, sizes[l], w, sizes[l + 1],
                             layer_out + first_row * sizes[l + 1],
                             activation if l < n_layers - 1 else ACT_IDENTITY, 0, sizes[l + 1], l == 0):
            input_finite = False
        layer_in = layer_out
        w += (sizes[l] + 1) * sizes[l + 1]
    return input_finite


cdef inline uint64_t splitmix64(uint64_t z) noexcept nogil:
    """A 64-bit mix (Steele, Lea and Flood's SplitMix64 finaliser): a counter-based random generator."""
    z = z + <uint64_t>0x9E3779B97F4A7C15ull
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ull
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBull
    return z ^ (z >> 31)


cdef inline void dropout(floating* out, Py_ssize_t n, Py_ssize_t first_row, Py_ssize_t stop_row,
                         Py_ssize_t first_col, Py_ssize_t stop_col, uint64_t key, uint64_t threshold,
                         floating keep_scale) noexcept nogil:
    """Inverted dropout on the given block of a layer's output out (rows of n): unit j of row i is dropped
    (set to 0) when splitmix64(key ^ (i * n + j)) >> 40 < threshold (p = threshold / 2**24), kept and
    scaled by keep_scale = 1 / (1 - p) otherwise. The mask depends on the key (seed, epoch, batch, layer)
    and the unit's place only, never on which worker draws it."""
    cdef Py_ssize_t i, j
    cdef floating* row
    for i in range(first_row, stop_row):
        row = out + i * n
        for j in range(first_col, stop_col):
            if (splitmix64(key ^ <uint64_t>(i * n + j)) >> 40) < threshold:
                row[j] = 0
            else:
                row[j] = row[j] * keep_scale
