# The compiled core of mlpcore: forward and backward passes of bias-augmented dense ReLU layers, the fused
# softmax-cross-entropy head, the update rule, and whole training epochs, for float32 and float64.
#
# Data layout (everything row-major, C-contiguous):
# - params: every weight matrix, concatenated. Layer l is W_l of shape (sizes[l] + 1, sizes[l + 1]); its
#   last row is the bias, so W_l[:-1] is a contiguous prefix and no column of ones is ever built.
# - grads: the same layout as params.
# - work: one buffer holding, for a batch of up to `batch` rows, each layer's output (hidden outputs after
#   ReLU, which is all backward needs: relu(z) > 0 exactly when z > 0), the hidden layers' deltas, the
#   gathered input rows and the gathered target rows, and each worker's column sums. Sized by
#   workspace_size(); allocated once per call from Python (once per fit) and reused by every batch.
#
# Threads: training splits every batch between a team of OpenMP workers, each calling BLAS on its own
# share with BLAS itself single-threaded (Python sets that through threadpoolctl), so the two kinds of
# threads are never nested. See train_batches.
#
# Python (mlpcore.network) validates every argument; nothing here checks shapes or values again.

from cython cimport floating
from libc.math cimport exp, expf, log, logf, isfinite
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memset

from cython.parallel cimport parallel

from _blas cimport gemm, gemm_ld, NO_TRANS, TRANS


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define MLPCORE_OPENMP 1
    static int mlpcore_team_size(void) { return omp_get_num_threads(); }
    static int mlpcore_member(void) { return omp_get_thread_num(); }
    /* An orphaned barrier: it binds to whichever parallel region the caller runs in (none: a no-op). */
    static void mlpcore_barrier(void) {
        #pragma omp barrier
    }
    #else
    #define MLPCORE_OPENMP 0
    static int mlpcore_team_size(void) { return 1; }
    static int mlpcore_member(void) { return 0; }
    static void mlpcore_barrier(void) {}
    #endif
    """
    const int MLPCORE_OPENMP
    int mlpcore_team_size() noexcept nogil
    int mlpcore_member() noexcept nogil
    void mlpcore_barrier() noexcept nogil

#: Whether this build runs training on several threads (it was compiled with OpenMP).
OPENMP = bool(MLPCORE_OPENMP)


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
                        floating* z, bint relu, Py_ssize_t first_col, Py_ssize_t stop_col) noexcept nogil:
    """Columns first_col..stop_col-1 of z(m x n) = x(m x k) . w[:k] + w[k], then ReLU in place if asked.

    Any block of rows (offset x and z) or of columns can be done on its own."""
    cdef const floating* bias = w + k * n
    cdef floating* row
    cdef floating v
    cdef Py_ssize_t i, j
    gemm_ld(NO_TRANS, NO_TRANS, <int>m, <int>(stop_col - first_col), <int>k, <floating>1, x, <int>max(1, k),
            w + first_col, <int>n, <floating>0, z + first_col, <int>n)
    # The bias and the ReLU in one pass over the product, while it is still in cache.
    for i in range(m):
        row = z + i * n
        if relu:
            for j in range(first_col, stop_col):
                v = row[j] + bias[j]
                row[j] = v if v > 0 else 0
        else:
            for j in range(first_col, stop_col):
                row[j] += bias[j]


cdef void propagate_error(const floating* dz, Py_ssize_t m, Py_ssize_t n, const floating* w, Py_ssize_t k,
                          const floating* x, floating* dx, floating* dx_column_sums,
                          Py_ssize_t first_col, Py_ssize_t stop_col) noexcept nogil:
    """The error at the layer below, from dz (m x n), the error at this layer's pre-activation: columns
    first_col..stop_col-1 of dx = (dz . w[:k]^T) * (x > 0), and their column sums (the gradient of the
    bias below) into dx_column_sums, which is zero elsewhere.

    x is this layer's input, the layer below's ReLU output: x > 0 is exactly the ReLU derivative at the
    pre-activation below (0 at z <= 0). Any block of rows (offset dz, x and dx) or of columns can be done
    on its own; a block of columns reads only those rows of w.
    """
    cdef const floating* x_row
    cdef floating* dx_row
    cdef floating v
    cdef Py_ssize_t i, j
    gemm_ld(NO_TRANS, TRANS, <int>m, <int>(stop_col - first_col), <int>n, <floating>1, dz, <int>max(1, n),
            w + first_col * n, <int>max(1, n), <floating>0, dx + first_col, <int>k)
    # The ReLU mask and the column sums in one pass.
    memset(dx_column_sums, 0, k * sizeof(floating))
    for i in range(m):
        x_row = x + i * k
        dx_row = dx + i * k
        # Branch-free, so that the compiler vectorises it.
        for j in range(first_col, stop_col):
            v = dx_row[j] if x_row[j] > 0 else 0
            dx_row[j] = v
            dx_column_sums[j] += v


cdef void update_weight_rows(const floating* x, Py_ssize_t m, Py_ssize_t k, const floating* dz,
                             Py_ssize_t n, Py_ssize_t first, Py_ssize_t stop, floating* dw,
                             floating alpha, floating beta) noexcept nogil:
    """dw[first:stop] = beta * dw[first:stop] + alpha * x[:, first:stop]^T . dz, for x (m x k), dz (m x n)
    and dw (k x n): the rows first..stop-1 of the weight gradient (or, with dw the weights, alpha = -lr
    and beta = 1, of the SGD step itself). Disjoint row ranges can be done at the same time."""
    gemm_ld(TRANS, NO_TRANS, <int>(stop - first), <int>n, <int>m, alpha, x + first, <int>k,
            dz, <int>max(1, n), beta, dw + first * n, <int>max(1, n))


cdef void update_weight_columns(const floating* x, Py_ssize_t m, Py_ssize_t k, const floating* dz,
                                Py_ssize_t n, Py_ssize_t first, Py_ssize_t stop, floating* dw,
                                floating alpha, floating beta) noexcept nogil:
    """dw[:, first:stop] = beta * dw[:, first:stop] + alpha * x^T . dz[:, first:stop], for x (m x k),
    dz (m x n) and dw (k x n): columns of the weight gradient (or of the SGD step). Disjoint column ranges
    can be done at the same time."""
    gemm_ld(TRANS, NO_TRANS, <int>k, <int>(stop - first), <int>m, alpha, x, <int>max(1, k), dz + first,
            <int>n, beta, dw + first, <int>n)


cdef void update_bias(floating* db, Py_ssize_t first, Py_ssize_t stop, floating** partial_sums, int n_parts,
                      floating alpha, floating beta) noexcept nogil:
    """db[j] = beta * db[j] + alpha * (the sum of the n_parts partial column sums of the error at j), for
    j in first..stop-1."""
    cdef Py_ssize_t j
    cdef int p
    cdef floating total
    for j in range(first, stop):
        total = 0
        for p in range(n_parts):
            total += partial_sums[p][j]
        db[j] = (beta * db[j] if beta != 0 else 0) + alpha * total


# ---------------------------------------------------------------------------------------------------------
# Softmax-cross-entropy head

cdef inline floating _row_max(const floating* row, Py_ssize_t n) noexcept nogil:
    cdef floating largest = row[0]
    cdef Py_ssize_t j
    for j in range(1, n):
        if row[j] > largest:
            largest = row[j]
    return largest


cdef inline floating _exp_shifted(floating* row, Py_ssize_t n, floating shift) noexcept nogil:
    """Replace row with exp(row - shift); return its sum."""
    cdef floating total = 0
    cdef Py_ssize_t j
    for j in range(n):
        row[j] = _exp(row[j] - shift)
        total += row[j]
    return total


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
        zmax = _row_max(row, n_classes)
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
        s = _exp_shifted(row, n_classes, zmax)
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
    cdef floating inv_s
    cdef floating* row
    cdef Py_ssize_t i, j
    for i in range(m):
        row = z + i * n_classes
        inv_s = 1 / _exp_shifted(row, n_classes, _row_max(row, n_classes))
        for j in range(n_classes):
            row[j] *= inv_s


# ---------------------------------------------------------------------------------------------------------
# Whole network

cdef struct Layout:
    # Pointers into the workspace. outputs and deltas have n_layers + 1 entries: outputs[0] is the input
    # batch, outputs[l] the output of layer l (ReLU applied for hidden layers; logits, then the logit
    # gradient, for the last); deltas[l] is the error at layer l's pre-activation (deltas[n_layers] is
    # outputs[n_layers]). Per worker w, at [l * n_workers + w] so that one layer's are an array in worker
    # order (see _of_layer): column_sums, worker w's share of the column sums of deltas[l], from which
    # layer l's bias gradient is summed; and, for a batch shared out by features (training by a team
    # only, else NULL), partials: for l >= 2 worker w's partial sum of layer l's output, for l = 0 its own
    # copy of the batch's input rows.
    void** outputs
    void** deltas
    void** column_sums
    void** partials
    void* input_rows      # batch x sizes[0], for gathered rows
    void* target_rows     # batch x n_classes, for gathered target distributions
    int n_workers


cdef Py_ssize_t _widest(const Py_ssize_t* sizes, Py_ssize_t n_layers) noexcept nogil:
    """The widest layer output."""
    cdef Py_ssize_t l, widest = 0
    for l in range(1, n_layers + 1):
        widest = max(widest, sizes[l])
    return widest


cdef inline Py_ssize_t _partial_rows(const Py_ssize_t* sizes, Py_ssize_t n_layers,
                                     Py_ssize_t batch) noexcept nogil:
    """Rows of each partial sum and private input copy: a batch shared out by features has fewer than
    widest / 3 rows in any dtype (see _split_by_rows)."""
    return min(batch, _widest(sizes, n_layers) // 3 + 1)


cdef Py_ssize_t _workspace_size(const Py_ssize_t* sizes, Py_ssize_t n_layers, Py_ssize_t batch,
                                bint gather, Py_ssize_t n_workers, bint training) noexcept nogil:
    cdef Py_ssize_t l, per_row = 0, per_worker = 0, widths = 0
    for l in range(1, n_layers + 1):
        widths += sizes[l]
    per_row = 2 * widths - sizes[n_layers]  # outputs, and deltas of the hidden layers
    per_worker = widths
    if gather:
        per_row += sizes[0] + sizes[n_layers]
    if training and n_workers > 1:
        per_worker += _partial_rows(sizes, n_layers, batch) * (sizes[0] + widths - sizes[1])
    return per_row * batch + per_worker * n_workers


cdef int _layout(Layout* lay, floating* work, Py_ssize_t work_size, const Py_ssize_t* sizes,
                 Py_ssize_t n_layers, Py_ssize_t batch, bint gather, int n_workers,
                 bint training) noexcept nogil:
    """Carve the workspace into per-layer buffers (and the gather buffers if asked). Returns -1 if the
    workspace is too small, -2 if the pointer arrays cannot be allocated."""
    cdef Py_ssize_t l, per_worker = (n_layers + 1) * n_workers
    cdef int w
    if work_size < _workspace_size(sizes, n_layers, batch, gather, n_workers, training):
        return -1
    # One allocation for the pointer arrays.
    lay.outputs = <void**>malloc((2 * (n_layers + 1) + 2 * per_worker) * sizeof(void*))
    if lay.outputs == NULL:
        return -2
    lay.n_workers = n_workers
    lay.deltas = lay.outputs + (n_layers + 1)
    lay.column_sums = lay.deltas + (n_layers + 1)
    lay.partials = lay.column_sums + per_worker
    lay.outputs[0] = lay.deltas[0] = NULL
    for l in range(1, n_layers + 1):
        lay.outputs[l] = work
        work += batch * sizes[l]
    for l in range(1, n_layers):
        lay.deltas[l] = work
        work += batch * sizes[l]
    lay.deltas[n_layers] = lay.outputs[n_layers]
    for w in range(n_workers):
        lay.column_sums[w] = NULL
        for l in range(1, n_layers + 1):
            lay.column_sums[l * n_workers + w] = work
            work += sizes[l]
        for l in range(n_layers + 1):
            lay.partials[l * n_workers + w] = NULL
            if training and n_workers > 1 and l != 1:
                lay.partials[l * n_workers + w] = work
                work += _partial_rows(sizes, n_layers, batch) * sizes[l]
    lay.input_rows = lay.target_rows = NULL
    if gather:
        lay.input_rows = work
        work += batch * sizes[0]
        lay.target_rows = work
    return 0


cdef int _layout_or_raise(Layout* lay, floating[::1] work, const Py_ssize_t[::1] sizes, Py_ssize_t batch,
                          bint gather, int n_workers, bint training) except -1:
    cdef int status = _layout(lay, &work[0], work.shape[0], &sizes[0], sizes.shape[0] - 1, batch, gather,
                              n_workers, training)
    if status == -1:
        raise ValueError(f"the workspace has {work.shape[0]} elements, fewer than workspace_size() asks")
    if status == -2:
        raise MemoryError()
    return 0


cdef void _free_layout(Layout* lay) noexcept nogil:
    free(lay.outputs)
    lay.outputs = lay.deltas = lay.column_sums = lay.partials = NULL


cdef inline void** _of_layer(const Layout* lay, void** per_worker, Py_ssize_t layer) noexcept nogil:
    """Every worker's buffer of `layer` in lay.column_sums or lay.partials, in worker order."""
    return per_worker + layer * lay.n_workers


cdef void network_forward(const floating* params, const Py_ssize_t* sizes, Py_ssize_t n_layers,
                          const floating* x, Py_ssize_t first_row, Py_ssize_t m, Layout* lay,
                          floating* logits) noexcept nogil:
    """Rows first_row..first_row+m-1 of lay.outputs[1..n_layers - 1] and of the logits (lay.outputs[n_layers]
    if `logits` is NULL) from the same rows of the input x. Row-local: any block of rows can be done on
    its own."""
    cdef const floating* w = params
    cdef const floating* layer_in = x
    cdef floating* layer_out
    cdef Py_ssize_t l
    for l in range(n_layers):
        layer_out = logits if l == n_layers - 1 and logits != NULL else <floating*>lay.outputs[l + 1]
        dense_forward(layer_in + first_row * sizes[l], m, sizes[l], w, sizes[l + 1],
                      layer_out + first_row * sizes[l + 1], l < n_layers - 1, 0, sizes[l + 1])
        layer_in = layer_out
        w += (sizes[l] + 1) * sizes[l + 1]


# ---------------------------------------------------------------------------------------------------------
# Update rules: chosen once per fit; the training loop knows no rule itself, only where the products of
# the backward pass go and with which alpha and beta. A rule with state (momentum, Adam) computes the
# gradient into `grads`, then steps from it.

cdef enum RuleKind:
    RULE_GRADIENTS_ONLY = 0  # compute the gradient into grads, leave the weights
    RULE_SGD = 1


cdef struct UpdateRuleC:
    RuleKind kind
    double lr


cdef floating* rule_destination(const UpdateRuleC* rule, floating* params, floating* grads,
                                floating* alpha, floating* beta) noexcept nogil:
    """Where the backward pass writes each layer's weight product, as dest = beta * dest + alpha * dW."""
    if rule.kind == RULE_SGD:
        # W = W - lr * dW straight from the products (alpha = -lr, beta = 1 into W): no pass over a
        # gradient buffer, no separate axpy over all the weights each batch.
        alpha[0], beta[0] = <floating>(-rule.lr), <floating>1
        return params
    alpha[0], beta[0] = <floating>1, <floating>0
    return grads


#: Rule kinds for UpdateRule.
GRADIENTS_ONLY = RULE_GRADIENTS_ONLY
SGD = RULE_SGD


cdef class UpdateRule:
    """What train_batches does with each gradient: UpdateRule(SGD, lr) steps W -= lr * dW,
    UpdateRule(GRADIENTS_ONLY) writes the gradients and leaves the weights."""
    cdef UpdateRuleC rule

    def __init__(self, int kind, double lr=0.0):
        if kind == RULE_SGD:
            if not lr > 0:
                raise ValueError(f"SGD needs a learning rate > 0, got {lr}")
        elif kind != RULE_GRADIENTS_ONLY:
            raise ValueError(f"unknown update rule kind {kind}")
        self.rule.kind = <RuleKind>kind
        self.rule.lr = lr


# ---------------------------------------------------------------------------------------------------------
# The training loop, run by every worker of a team (or by the calling thread alone).
#
# A batch is shared out between the workers in one of two ways:
# - by rows (_rows_batch), when it has many rows: each worker does the forward pass, the head and the
#   error passed down on its own rows, with no waiting. A weight product sums over every row: each worker
#   computes a block of the layer's weight rows (the last worker also the bias) after a barrier, which
#   also makes sure every worker has read the weights before anyone updates them. Every worker packs
#   all the weights for its rows, and reads in the next batch the weight rows the others updated.
# - by features (_features_batch), when it has few rows: each worker owns a block of every hidden layer's
#   output features, which is its block of the next layer's input features and weight rows. The first
#   layer is split by those output columns (each worker reads whole input rows); a later layer's forward
#   product is split over its input features: each worker multiplies its input columns by its weight rows
#   into a partial sum, and after a barrier sums the partials over its own block of output columns. The
#   error passed down and the weight update use only the worker's own weights too. So the weights never
#   move between cores, and of the activations and errors only those of the layers after the first do;
#   no large operand is packed twice. That matters on small batches, where the weights outweigh the
#   activations, and on machines where data moving between cores is slow (on this project's VM a cache
#   line's round trip between the two vCPUs goes from ~55 ns to ~350 ns for seconds at a time).
# A last barrier per batch keeps the next batch from overwriting buffers still being read.

cdef struct TeamResult:
    double total        # summed loss of the batches trained
    Py_ssize_t done     # batches trained


cdef enum:
    LOSS_STRIDE = 8     # each worker's batch loss sits on its own cache line (8 doubles apart)
    BLOCK_ALIGN = 16    # feature blocks start on multiples of 16 items: fewer cache lines shared by workers


cdef struct Batch:
    # What every worker knows of the batch it trains; the arrays' element type is in the functions' args.
    const Py_ssize_t* sizes
    Py_ssize_t n_layers
    Py_ssize_t start        # the batch is rows start..start+m-1 of the pass: of X, or of order
    Py_ssize_t m
    const Py_ssize_t* order # NULL: X's rows in place
    const Py_ssize_t* labels  # NULL: the targets are rows of a target array
    Py_ssize_t* label_work
    double* losses
    int me
    int team


cdef inline void _barrier(int team) noexcept nogil:
    """Wait for the team. A team of one never calls OpenMP: the calling thread may belong to a team of
    someone else's, whose barrier this is not."""
    if team > 1:
        mlpcore_barrier()


cdef inline Py_ssize_t _share_start(Py_ssize_t count, int member, int team) noexcept nogil:
    """Start of member's share when range(count) is cut into `team` near-equal consecutive parts."""
    return count * member // team


cdef inline Py_ssize_t _block_start(Py_ssize_t width, int member, int team) noexcept nogil:
    """Start of member's block of `width` features: near-equal consecutive blocks starting on multiples of
    BLOCK_ALIGN (some empty when the width is small)."""
    if member >= team:
        return width
    return (width * member // team) // BLOCK_ALIGN * BLOCK_ALIGN


cdef inline bint _split_by_rows(Py_ssize_t m, Py_ssize_t width, size_t item_size) noexcept nogil:
    """Whether a batch of m rows through layers up to `width` wide is shared out by rows (else by features).

    By rows from width / 3 rows in float32 and width / 9 in float64: the crossovers measured on the
    student's network (300 wide), two workers, in epochs. float32: features faster by 14% at 32 rows and
    4% at 64, rows by 3% at 128 and 17% at 600. float64: features faster by 6% at 32 (by 2% slower while
    the cores were close), rows by 8% at 48, 11% at 64 and 17% at 128. The products, not the data moving
    between cores, dominate sooner in float64, where they are twice as slow.
    """
    return m * (3 if item_size == 4 else 9) >= width


cdef void _sum_partials(floating** partials, int team, Py_ssize_t n, Py_ssize_t first_row,
                        Py_ssize_t stop_row, Py_ssize_t first_col, Py_ssize_t stop_col,
                        const floating* bias, floating* out, bint relu) noexcept nogil:
    """out[i, j] = sum over workers of partials[w][i, j] + bias[j], ReLU applied if asked, for the given
    rows and columns of m x n matrices."""
    cdef floating* out_row
    cdef const floating* part_row
    cdef floating v
    cdef Py_ssize_t i, j
    cdef int w
    for i in range(first_row, stop_row):
        out_row = out + i * n
        part_row = partials[0] + i * n
        for j in range(first_col, stop_col):
            out_row[j] = part_row[j] + bias[j]
        for w in range(1, team):
            part_row = partials[w] + i * n
            for j in range(first_col, stop_col):
                out_row[j] += part_row[j]
        if relu:
            for j in range(first_col, stop_col):
                v = out_row[j]
                out_row[j] = v if v > 0 else 0


cdef void _gather_rows(const Batch* bt, const floating* X, Py_ssize_t first_row, Py_ssize_t stop_row,
                       floating* dest) noexcept nogil:
    """Copy the batch's rows first_row..stop_row-1 of X (through bt.order) into the same rows of dest."""
    cdef Py_ssize_t d = bt.sizes[0], i
    for i in range(first_row, stop_row):
        memcpy(dest + i * d, X + bt.order[bt.start + i] * d, d * sizeof(floating))


cdef void _gather_targets(const Batch* bt, const floating* targets, Py_ssize_t first_row,
                          Py_ssize_t stop_row, Layout* lay) noexcept nogil:
    """Copy the targets of the batch's rows first_row..stop_row-1 into label_work or lay.target_rows."""
    cdef Py_ssize_t n_classes = bt.sizes[bt.n_layers], i, row
    for i in range(first_row, stop_row):
        row = bt.order[bt.start + i]
        if bt.labels != NULL:
            bt.label_work[i] = bt.labels[row]
        else:
            memcpy(<floating*>lay.target_rows + i * n_classes, targets + row * n_classes,
                   n_classes * sizeof(floating))


cdef void _head(const Batch* bt, const floating* targets, Py_ssize_t first_row, Py_ssize_t stop_row,
                Layout* lay, floating* column_sums) noexcept nogil:
    """The softmax-cross-entropy head on rows first_row..stop_row-1 of the batch's logits: their summed loss
    into this worker's slot of bt.losses, the logit gradient in their place, its column sums."""
    cdef Py_ssize_t n_classes = bt.sizes[bt.n_layers]
    cdef const Py_ssize_t* labels
    cdef const floating* target_rows
    if bt.order != NULL:
        _gather_targets(bt, targets, first_row, stop_row, lay)
        labels = bt.label_work if bt.labels != NULL else NULL
        target_rows = <floating*>lay.target_rows
    else:
        labels = bt.labels + bt.start if bt.labels != NULL else NULL
        target_rows = targets + bt.start * n_classes if bt.labels == NULL else NULL
    bt.losses[bt.me * LOSS_STRIDE] = softmax_cross_entropy(
        <floating*>lay.outputs[bt.n_layers] + first_row * n_classes, stop_row - first_row, n_classes,
        labels + first_row if labels != NULL else NULL,
        target_rows + first_row * n_classes if labels == NULL else NULL, <floating>(1.0 / bt.m),
        column_sums)


cdef bint _batch_loss_is_finite(const Batch* bt, double* batch_loss) noexcept nogil:
    """Sum every worker's loss: called past a barrier since the head by every worker, which all sum the
    same losses in the same order, so all stop together, before any update of a non-finite batch."""
    cdef int w
    batch_loss[0] = 0
    for w in range(bt.team):
        batch_loss[0] += bt.losses[w * LOSS_STRIDE]
    return isfinite(batch_loss[0])


cdef void _update_bias(const Batch* bt, Layout* lay, Py_ssize_t layer, floating* db, floating alpha,
                       floating beta) noexcept nogil:
    """The last worker updates layer `layer`'s bias from every worker's column sums of its error."""
    if bt.me == bt.team - 1:
        update_bias(db, 0, bt.sizes[layer + 1], <floating**>_of_layer(lay, lay.column_sums, layer + 1),
                    bt.team, alpha, beta)


cdef bint _rows_batch(const Batch* bt, const floating* params, floating* dest, floating alpha,
                      floating beta, const floating* X, const floating* targets, Layout* lay,
                      double* batch_loss) noexcept nogil:
    """Train one batch shared out by rows. Returns False, having updated nothing, if its loss is not
    finite."""
    cdef const Py_ssize_t* sizes = bt.sizes
    cdef Py_ssize_t n_layers = bt.n_layers, d = sizes[0]
    cdef Py_ssize_t first = _share_start(bt.m, bt.me, bt.team)
    cdef Py_ssize_t rows = _share_start(bt.m, bt.me + 1, bt.team) - first
    cdef Py_ssize_t l, k, n_out, offset = _n_weights(sizes, n_layers)
    cdef const floating* x
    cdef const floating* layer_in
    if bt.order != NULL:
        x = <floating*>lay.input_rows
        _gather_rows(bt, X, first, first + rows, <floating*>x)  # this worker's rows
    else:
        x = X + bt.start * d

    network_forward(params, sizes, n_layers, x, first, rows, lay, NULL)
    _head(bt, targets, first, first + rows, lay, (<floating**>_of_layer(lay, lay.column_sums, n_layers))[bt.me])

    for l in range(n_layers - 1, -1, -1):
        k, n_out = sizes[l], sizes[l + 1]
        offset -= (k + 1) * n_out
        layer_in = x if l == 0 else <floating*>lay.outputs[l]
        if l > 0:  # the first layer's input is the data: no error is passed into it
            propagate_error(<floating*>lay.deltas[l + 1] + first * n_out, rows, n_out, params + offset, k,
                            layer_in + first * k, <floating*>lay.deltas[l] + first * k,
                            (<floating**>_of_layer(lay, lay.column_sums, l))[bt.me], 0, k)
        _barrier(bt.team)
        if l == n_layers - 1 and not _batch_loss_is_finite(bt, batch_loss):
            return False
        update_weight_rows(layer_in, bt.m, k, <floating*>lay.deltas[l + 1], n_out,
                           _share_start(k, bt.me, bt.team), _share_start(k, bt.me + 1, bt.team),
                           dest + offset, alpha, beta)
        _update_bias(bt, lay, l, dest + offset + k * n_out, alpha, beta)
    return True


cdef bint _features_batch(const Batch* bt, const floating* params, floating* dest, floating alpha,
                          floating beta, const floating* X, const floating* targets, Layout* lay,
                          double* batch_loss) noexcept nogil:
    """Train one batch shared out by features (a network with a hidden layer). Returns False, having
    updated nothing, if its loss is not finite.

    The first layer is split by its output columns, which are this worker's block of the next layer's
    input features: each worker reads whole input rows (its own copy when gathered) and only its own
    columns of the first layer's weights, output, error and update, so nothing of that layer moves
    between cores and it needs no barrier. Later layers are split over their input features."""
    cdef const Py_ssize_t* sizes = bt.sizes
    cdef Py_ssize_t n_layers = bt.n_layers, d = sizes[0], m = bt.m
    cdef int me = bt.me, team = bt.team
    cdef Py_ssize_t first = _share_start(m, me, team), stop_row = _share_start(m, me + 1, team)
    cdef Py_ssize_t l, k, n_out, offset, f0, f1
    cdef floating** partials
    cdef const floating* x
    cdef const floating* layer_in
    if bt.order != NULL:
        x = (<floating**>_of_layer(lay, lay.partials, 0))[me]  # this worker's own copy of every row
        _gather_rows(bt, X, 0, m, <floating*>x)
    else:
        x = X + bt.start * d

    # First layer: this worker's output columns, from whole rows.
    dense_forward(x, m, d, params, sizes[1], <floating*>lay.outputs[1], True,
                  _block_start(sizes[1], me, team), _block_start(sizes[1], me + 1, team))
    offset = (d + 1) * sizes[1]
    for l in range(1, n_layers):
        k, n_out = sizes[l], sizes[l + 1]
        f0, f1 = _block_start(k, me, team), _block_start(k, me + 1, team)
        layer_in = <floating*>lay.outputs[l]
        partials = <floating**>_of_layer(lay, lay.partials, l + 1)
        if f1 > f0:
            gemm_ld(NO_TRANS, NO_TRANS, <int>m, <int>n_out, <int>(f1 - f0), <floating>1, layer_in + f0, <int>k,
                    params + offset + f0 * n_out, <int>n_out, <floating>0, partials[me], <int>n_out)
        else:
            memset(partials[me], 0, m * n_out * sizeof(floating))
        _barrier(team)
        if l < n_layers - 1:
            # This worker's block of the next layer's input features: all it will read of it.
            _sum_partials(partials, team, n_out, 0, m, _block_start(n_out, me, team),
                          _block_start(n_out, me + 1, team), params + offset + k * n_out,
                          <floating*>lay.outputs[l + 1], True)
        else:
            # The head needs whole rows of logits: this worker's rows.
            _sum_partials(partials, team, n_out, first, stop_row, 0, n_out, params + offset + k * n_out,
                          <floating*>lay.outputs[l + 1], False)
        offset += (k + 1) * n_out
    _head(bt, targets, first, stop_row, lay, (<floating**>_of_layer(lay, lay.column_sums, n_layers))[me])
    _barrier(team)
    if not _batch_loss_is_finite(bt, batch_loss):
        return False

    for l in range(n_layers - 1, 0, -1):
        k, n_out = sizes[l], sizes[l + 1]
        offset -= (k + 1) * n_out
        f0, f1 = _block_start(k, me, team), _block_start(k, me + 1, team)
        layer_in = <floating*>lay.outputs[l]
        # Both read this worker's weight rows f0..f1 only, every row and column of the error (whole since
        # the last barrier), and the input's columns f0..f1 (this worker's own).
        propagate_error(<floating*>lay.deltas[l + 1], m, n_out, params + offset, k, layer_in,
                        <floating*>lay.deltas[l], (<floating**>_of_layer(lay, lay.column_sums, l))[me], f0, f1)
        update_weight_rows(layer_in, m, k, <floating*>lay.deltas[l + 1], n_out, f0, f1, dest + offset,
                           alpha, beta)
        _update_bias(bt, lay, l, dest + offset + k * n_out, alpha, beta)
        if l > 1:
            _barrier(team)  # the error passed down is whole for the next layer down
    # First layer: this worker's columns of the weights and bias, from its columns of the error (and
    # their sums, whole for those columns).
    f0, f1 = _block_start(sizes[1], me, team), _block_start(sizes[1], me + 1, team)
    update_weight_columns(x, m, d, <floating*>lay.deltas[1], sizes[1], f0, f1, dest, alpha, beta)
    update_bias(dest + d * sizes[1], f0, f1, <floating**>_of_layer(lay, lay.column_sums, 1) + me, 1, alpha,
                beta)
    return True


cdef void _train_member(floating* params, floating* grads, const Py_ssize_t* sizes, Py_ssize_t n_layers,
                        const floating* X, Py_ssize_t n, const Py_ssize_t* labels, const floating* targets,
                        const Py_ssize_t* order, Py_ssize_t batch_size, Py_ssize_t first_batch,
                        Py_ssize_t stop_batch, const UpdateRuleC* rule, Layout* lay,
                        Py_ssize_t* label_work, double* losses, TeamResult* result, int me,
                        int team) noexcept nogil:
    """Worker `me` of `team`'s part of training batches first_batch..stop_batch-1 (see train_batches)."""
    cdef Batch bt
    cdef Py_ssize_t b, widest = _widest(sizes, n_layers)
    # The feature scheme needs a team, a hidden layer, and fits at most _partial_rows rows (always so
    # when _split_by_rows says features; the bound of its buffers all the same).
    cdef Py_ssize_t feature_rows = _partial_rows(sizes, n_layers, batch_size) if team > 1 and n_layers > 1 else 0
    cdef double batch_loss = 0
    cdef bint trained
    cdef floating alpha, beta
    cdef floating* dest = rule_destination(rule, params, grads, &alpha, &beta)
    bt.sizes, bt.n_layers, bt.order, bt.labels = sizes, n_layers, order, labels
    bt.label_work, bt.losses = label_work, losses
    bt.me, bt.team = me, team
    for b in range(first_batch, stop_batch):
        bt.start = b * batch_size
        bt.m = min(batch_size, n - bt.start)
        if bt.m <= feature_rows and not _split_by_rows(bt.m, widest, sizeof(floating)):
            trained = _features_batch(&bt, params, dest, alpha, beta, X, targets, lay, &batch_loss)
        else:
            trained = _rows_batch(&bt, params, dest, alpha, beta, X, targets, lay, &batch_loss)
        if not trained:
            break
        if bt.me == 0:
            result.total += batch_loss
            result.done += 1
        _barrier(bt.team)


# ---------------------------------------------------------------------------------------------------------
# Python entry points. Arguments are validated by mlpcore.network; memoryviews in, pointers inside.

#: The largest team train_batches takes.
MAX_WORKERS = 64


def split_by_rows(Py_ssize_t m, Py_ssize_t width, Py_ssize_t item_size):
    """Whether training shares out a batch of m rows through layers up to `width` wide by rows (else by
    features), for items of item_size bytes (4: float32, 8: float64)."""
    return _split_by_rows(m, width, item_size)


def workspace_size(const Py_ssize_t[::1] sizes, Py_ssize_t batch, bint gather=False, Py_ssize_t workers=1,
                   bint training=False):
    """Number of elements of the workspace for batches of up to `batch` rows done by up to `workers`
    threads; `gather` adds room for copying each batch's rows (train_batches with a non-empty `order`),
    `training` room for train_batches's partial sums."""
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


cdef double* _prepare_team(Layout* lay, floating[::1] work, const Py_ssize_t[::1] sizes, Py_ssize_t batch,
                           bint gather, int workers, bint training) except NULL:
    """Check the team size, lay out the workspace, and return a zeroed slot for each worker's summed loss
    (LOSS_STRIDE apart). _release_team frees both."""
    cdef double* losses
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be in [1, {MAX_WORKERS}], got {workers}")
    _layout_or_raise(lay, work, sizes, batch, gather, workers, training)
    losses = <double*>calloc(workers * LOSS_STRIDE, sizeof(double))
    if losses == NULL:
        _free_layout(lay)
        raise MemoryError()
    return losses


cdef void _release_team(Layout* lay, double* losses) noexcept nogil:
    free(losses)
    _free_layout(lay)


cdef void _evaluate_member(const floating* params, const Py_ssize_t* sizes, Py_ssize_t n_layers,
                           const floating* X, Py_ssize_t n, Py_ssize_t chunk, Layout* lay, floating* out,
                           const Py_ssize_t* labels, const floating* targets, double* losses, int me,
                           int team) noexcept nogil:
    """One worker's share of every `chunk` rows of X: with `out`, its rows of softmax(network(X)); else
    the summed loss of its rows, against `labels` (or the rows of `targets` if NULL), into
    losses[member * LOSS_STRIDE]. The forward pass is row-local: workers wait only between chunks."""
    cdef Py_ssize_t n_classes = sizes[n_layers], c, start, m, first, rows
    cdef floating* logits
    cdef double total = 0
    for c in range((n + chunk - 1) // chunk):
        start = c * chunk
        m = min(chunk, n - start)
        first = start + _share_start(m, me, team)
        rows = start + _share_start(m, me + 1, team) - first
        if out != NULL:
            # The last layer writes its logits straight into the output rows.
            network_forward(params, sizes, n_layers, X + start * sizes[0], first - start, rows, lay,
                            out + start * n_classes)
            softmax_rows(out + first * n_classes, rows, n_classes)
        else:
            network_forward(params, sizes, n_layers, X + start * sizes[0], first - start, rows, lay, NULL)
            logits = <floating*>lay.outputs[n_layers] + (first - start) * n_classes
            total += softmax_cross_entropy(logits, rows, n_classes,
                                           labels + first if labels != NULL else NULL,
                                           targets + first * n_classes if labels == NULL else NULL,
                                           <floating>0, NULL)
        # The next chunk's shares need not fall on the same rows of the workspace (the last chunk is
        # shorter): no one starts it before everyone has finished this one.
        _barrier(team)
    losses[me * LOSS_STRIDE] = total


cdef double _evaluate(const floating[::1] params, const Py_ssize_t[::1] sizes, const floating[:, ::1] X,
                      floating* out, const Py_ssize_t* labels, const floating* targets, floating[::1] work,
                      Py_ssize_t chunk, int workers) except? -1:
    """Run _evaluate_member on a team of `workers` (see train_batches); returns the summed loss."""
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1
    cdef double total = 0
    cdef double* losses
    cdef int w
    cdef Layout lay
    losses = _prepare_team(&lay, work, sizes, chunk, False, workers, False)
    with nogil:
        if workers == 1:
            _evaluate_member(&params[0], &sizes[0], n_layers, &X[0, 0], X.shape[0], chunk, &lay, out,
                             labels, targets, losses, 0, 1)
        else:
            with parallel(num_threads=workers):
                _evaluate_member(&params[0], &sizes[0], n_layers, &X[0, 0], X.shape[0], chunk, &lay, out,
                                 labels, targets, losses, mlpcore_member(), mlpcore_team_size())
        for w in range(workers):
            total += losses[w * LOSS_STRIDE]
    _release_team(&lay, losses)
    return total


def predict_proba(const floating[::1] params, const Py_ssize_t[::1] sizes, const floating[:, ::1] X,
                  floating[:, ::1] out, floating[::1] work, Py_ssize_t chunk, int workers=1):
    """out = softmax(network(X)), `chunk` rows at a time shared out between `workers` threads (BLAS must
    be single-threaded when workers > 1; see train_batches), the GIL released."""
    _evaluate(params, sizes, X, &out[0, 0], NULL, NULL, work, chunk, workers)


def mean_loss(const floating[::1] params, const Py_ssize_t[::1] sizes, const floating[:, ::1] X,
              const Py_ssize_t[::1] labels, const floating[:, ::1] targets, floating[::1] work,
              Py_ssize_t chunk, int workers=1):
    """Mean cross-entropy over X, `chunk` rows at a time shared out between `workers` threads. Targets
    are `labels` if it is not empty."""
    cdef bint use_labels = labels.shape[0] > 0
    return _evaluate(params, sizes, X, NULL, &labels[0] if use_labels else NULL,
                     NULL if use_labels else &targets[0, 0], work, chunk, workers) / X.shape[0]


def train_batches(floating[::1] params, floating[::1] grads, const Py_ssize_t[::1] sizes,
                  const floating[:, ::1] X, const Py_ssize_t[::1] labels,
                  const floating[:, ::1] targets, const Py_ssize_t[::1] order,
                  Py_ssize_t batch_size, Py_ssize_t first_batch, Py_ssize_t stop_batch,
                  UpdateRule rule, floating[::1] work, Py_ssize_t[::1] label_work, int workers=1):
    """Train batches first_batch..stop_batch-1 of one pass over X, in place, the GIL released.

    Batch b holds the rows order[b * batch_size : (b + 1) * batch_size] (the last one may be shorter);
    an empty `order` means the rows in their own order, used in place without a copy. Targets are
    `labels` if it is not empty, else the rows of `targets`. `rule` says what becomes of each gradient:
    an UpdateRule(SGD, lr) steps the weights, UpdateRule(GRADIENTS_ONLY) leaves them and writes the
    gradients into `grads`. `label_work` holds at least batch_size labels.

    `workers` > 1 shares every batch out between that many OpenMP threads (at most MAX_WORKERS; fewer if
    OpenMP gives fewer, one if this build has no OpenMP). The caller must make BLAS single-threaded for
    the call: each worker calls it. `work` must be sized by workspace_size(..., workers=workers).

    Returns (the sum over the trained rows of their loss, number of batches trained). Training stops
    before the update of a batch whose loss is not finite, so that batch is not counted.
    """
    cdef Py_ssize_t n_layers = sizes.shape[0] - 1
    cdef bint use_labels = labels.shape[0] > 0
    cdef bint gather = order.shape[0] > 0
    cdef const floating* X_data = &X[0, 0]
    cdef const Py_ssize_t* label_data = &labels[0] if use_labels else NULL
    cdef const floating* target_data = NULL if use_labels else &targets[0, 0]
    cdef const Py_ssize_t* order_data = &order[0] if gather else NULL
    cdef double* losses
    cdef TeamResult result
    cdef Layout lay
    result.total, result.done = 0, 0
    losses = _prepare_team(&lay, work, sizes, batch_size, gather, workers, True)
    with nogil:
        if workers == 1:
            # No parallel region at all: the calling thread is a team of one, its barriers no-ops.
            _train_member(&params[0], &grads[0], &sizes[0], n_layers, X_data, X.shape[0], label_data,
                          target_data, order_data, batch_size, first_batch, stop_batch, &rule.rule, &lay,
                          &label_work[0], losses, &result, 0, 1)
        else:
            with parallel(num_threads=workers):
                _train_member(&params[0], &grads[0], &sizes[0], n_layers, X_data, X.shape[0], label_data,
                              target_data, order_data, batch_size, first_batch, stop_batch, &rule.rule, &lay,
                              &label_work[0], losses, &result, mlpcore_member(),
                              mlpcore_team_size())
    _release_team(&lay, losses)
    return result.total, result.done
