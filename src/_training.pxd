# The training loop, run by every worker of a team (or by the calling thread alone): batches of one pass
# over X, each a forward pass, the head, and a backward pass that hands each layer's gradient to the
# update rule (_update_rules.write_weight_block, the one place weights are written).
#
# A batch is shared out between the workers in one of two schemes; they differ only in which rows,
# features and weights each worker does (forward_layer, pass_error_down_share, weight_block), not in what
# a layer does:
# - by rows, when it has many rows: each worker does the forward pass, the head and the error passed down
#   on its own rows, with no waiting. A weight product sums over every row: each worker computes a block
#   of the layer's weight rows (the last worker also the bias) after a barrier, which also makes sure
#   every worker has read the weights before anyone updates them. Every worker packs all the weights for
#   its rows, and reads in the next batch the weight rows the others updated.
# - by features, when it has few rows: each worker owns a block of every hidden layer's output features,
#   which is its block of the next layer's input features and weight rows. The first layer is split by
#   those output columns (each worker reads whole input rows); a later layer's forward product is split
#   over its input features: each worker multiplies its input columns by its weight rows into a partial
#   sum, and after a barrier sums the partials over its own block of output columns. The error passed
#   down and the weight update use only the worker's own weights too. So the weights never move between
#   cores, and of the activations and errors only those of the layers after the first do; no large
#   operand is packed twice. That matters on small batches, where the weights outweigh the activations,
#   and on machines where data moving between cores is slow (on this project's VM a cache line's round
#   trip between the two vCPUs goes from ~55 ns to ~350 ns for seconds at a time).
# A last barrier per batch keeps the next batch from overwriting buffers still being read. Every barrier
# here is reached by every worker (see _team.pxd).

from cython cimport floating
from libc.math cimport isfinite
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from _team cimport barrier, share_start, block_start, split_by_rows, LOSS_STRIDE
from _workspace cimport Workspace, of_layer, layer_offset, widest, partial_rows
from _layers cimport dense_forward, partial_product, add_partial_products, pass_error_down, dropout, splitmix64
from _activations cimport ACT_IDENTITY
from _head cimport loss_and_gradient
from _update_rules cimport (Rule, WeightBlock, write_weight_block, step_weight_block, flushes_subnormals,
                            mlpcore_flush_subnormals, mlpcore_restore_subnormals)


cdef struct TeamResult:
    double total        # summed loss of the batches trained
    Py_ssize_t done     # batches trained
    Py_ssize_t correct  # rows of those batches whose largest logit was at the target's class


cdef struct Regularisation:
    # What a fit adds to the plain loss: per-row weights, label smoothing, dropout on hidden outputs.
    const void* sample_weight # NULL, or one weight per row of X (the params' dtype)
    void* weight_work         # batch_size weights, for the gathered rows' (when rows are gathered)
    double label_smoothing
    double dropout            # the probability of dropping a hidden unit (0: none)
    uint64_t dropout_key      # from the fit's seed and the epoch
    # Data-parallel training: `reducer` (a Python callable, NULL for none) is called once per batch by
    # worker 0, with the GIL, once every worker has written its blocks of the gradient into grads:
    # reducer(batch, loss, correct) sums grads in place across processes and returns the batch's
    # (loss, correct) summed too, or None on failure; then every worker steps its blocks. `batch_scales`
    # (NULL: 1 / the batch's own weight sum) scales each batch's gradient instead: 1 / the weight sum of
    # the batch across every process. `batch_starts` (NULL: batches of batch_size rows) are the first
    # rows of the pass's batches, and its last entry the end.
    void* reducer
    const double* batch_scales
    const Py_ssize_t* batch_starts


cdef inline uint64_t dropout_threshold(double p) noexcept nogil:
    """A unit is dropped when the top 24 bits of its hash are below this: probability threshold / 2**24."""
    return <uint64_t>(p * 16777216.0 + 0.5)


cdef inline double dropout_keep_scale(double p) noexcept nogil:
    """What a kept unit is scaled by: 1 / (1 - the probability actually drawn), 1 when none is dropped."""
    cdef uint64_t threshold = dropout_threshold(p)
    return 16777216.0 / (16777216.0 - <double>threshold) if threshold > 0 else 1.0


cdef struct Batch:
    # What every worker knows of the batch it trains; the arrays' element type is in the functions' args.
    const Py_ssize_t* sizes
    Py_ssize_t n_layers
    int activation            # of the hidden layers (_activations.pxd)
    int head                  # _head.pxd
    Py_ssize_t index          # the batch's number in the pass
    Py_ssize_t start          # the batch is rows start..start+m-1 of the pass: of X, or of order
    Py_ssize_t m
    bint by_rows              # the scheme: shared out by rows, else by features
    Py_ssize_t first_row      # this worker's rows of the batch (for the head in both schemes)
    Py_ssize_t stop_row
    const Py_ssize_t* order   # NULL: X's rows in place
    const Py_ssize_t* labels  # NULL: the targets are rows of a target array
    Py_ssize_t* label_work
    const void* sample_weight # NULL: every row weighs 1; else one weight per row of X (the params' dtype)
    void* weight_work         # the batch's gathered weights (when rows are gathered)
    double label_smoothing
    uint64_t dropout_key      # the pass's dropout key (0 threshold: no dropout)
    uint64_t dropout_threshold
    double keep_scale         # 1 / (1 - dropout)
    void* reducer             # see Regularisation
    const double* batch_scales
    double* losses
    int me
    int team


cdef inline void gather_rows(const Batch* batch, const floating* X, Py_ssize_t first_row,
                             Py_ssize_t stop_row, floating* dest) noexcept nogil:
    """Copy the batch's rows first_row..stop_row-1 of X (through batch.order) into the same rows of dest."""
    cdef Py_ssize_t d = batch.sizes[0], i
    for i in range(first_row, stop_row):
        memcpy(dest + i * d, X + batch.order[batch.start + i] * d, d * sizeof(floating))


cdef inline const floating* batch_input(const Batch* batch, const floating* X,
                                        Workspace* space) noexcept nogil:
    """The batch's input rows, all m of them, as the worker will read them: X's own rows in place, or
    gathered through order, by rows each worker its own rows of a shared copy, by features each worker
    every row into a copy of its own."""
    cdef floating* rows
    if batch.order == NULL:
        return X + batch.start * batch.sizes[0]
    if batch.by_rows:
        rows = <floating*>space.input_rows
        gather_rows(batch, X, batch.first_row, batch.stop_row, rows)
    else:
        rows = (<floating**>of_layer(space, space.partials, 0))[batch.me]
        gather_rows(batch, X, 0, batch.m, rows)
    return rows


cdef inline void forward_layer(const Batch* batch, Py_ssize_t l, const floating* params,
                               const floating* layer_in, Workspace* space) noexcept nogil:
    """This worker's part of layer l's output (activated in hidden layers) from its input."""
    cdef Py_ssize_t k = batch.sizes[l], n = batch.sizes[l + 1]
    cdef const floating* w = params + layer_offset(batch.sizes, l)
    cdef floating* out = <floating*>space.outputs[l + 1]
    cdef bint hidden = l < batch.n_layers - 1
    cdef int activation = batch.activation if hidden else ACT_IDENTITY
    cdef int me = batch.me, team = batch.team
    cdef floating** partials
    cdef Py_ssize_t first_row = 0, stop_row = batch.m, first_col = 0, stop_col = n
    if batch.by_rows:
        first_row, stop_row = batch.first_row, batch.stop_row
        dense_forward(layer_in + batch.first_row * k, batch.stop_row - batch.first_row, k, w, n,
                      out + batch.first_row * n, activation, 0, n)
    elif l == 0:
        # Its output columns, from whole rows: its block of the next layer's input features.
        dense_forward(layer_in, batch.m, k, w, n, out, activation, block_start(n, me, team),
                      block_start(n, me + 1, team))
    else:
        # Its input features' share of the product, then, once every share is in, the sum over its own
        # block of output features (hidden: all the next layer reads of it) or its own rows (the head
        # needs whole rows of logits).
        partials = <floating**>of_layer(space, space.partials, l + 1)
        partial_product(layer_in, batch.m, k, w, n, block_start(k, me, team), block_start(k, me + 1, team),
                        partials[me])
        barrier(team)
        if hidden:
            add_partial_products(partials, team, n, 0, batch.m, block_start(n, me, team),
                                 block_start(n, me + 1, team), w + k * n, out, activation)
        else:
            add_partial_products(partials, team, n, batch.first_row, batch.stop_row, 0, n, w + k * n, out,
                                 ACT_IDENTITY)
    if not batch.by_rows:
        first_col, stop_col = block_start(n, me, team), block_start(n, me + 1, team)
    if hidden and batch.dropout_threshold > 0:
        # This worker's block of the output just computed, with the key of (pass, batch, layer).
        dropout(out, n, first_row, stop_row, first_col, stop_col,
                splitmix64(splitmix64(batch.dropout_key ^ <uint64_t>batch.index) ^ <uint64_t>l),
                batch.dropout_threshold, <floating>batch.keep_scale)


cdef inline void pass_error_down_share(const Batch* batch, Py_ssize_t l, const floating* params,
                                       const floating* layer_in, Workspace* space) noexcept nogil:
    """This worker's part of the error at layer l's input (deltas[l]) and its column sums: by rows its
    rows, all features; by features every row, its own features (it reads only its own weight rows)."""
    cdef Py_ssize_t k = batch.sizes[l], n = batch.sizes[l + 1], first_row, stop_row, first_col, stop_col
    if batch.by_rows:
        first_row, stop_row, first_col, stop_col = batch.first_row, batch.stop_row, 0, k
    else:
        first_row, stop_row = 0, batch.m
        first_col, stop_col = block_start(k, batch.me, batch.team), block_start(k, batch.me + 1, batch.team)
    pass_error_down(<floating*>space.deltas[l + 1] + first_row * n, stop_row - first_row, n,
                    params + layer_offset(batch.sizes, l), k, layer_in + first_row * k,
                    <floating*>space.deltas[l] + first_row * k,
                    (<floating**>of_layer(space, space.column_sums, l))[batch.me], first_col, stop_col,
                    <floating>batch.keep_scale, batch.activation)


cdef inline WeightBlock weight_block(const Batch* batch, Py_ssize_t l, Workspace* space) noexcept nogil:
    """The block of layer l's weights this worker writes: by rows a share of the weight rows, by features
    its own weight rows (its own columns in the first layer). The bias, from every worker's column sums of
    the error, is the last worker's; in the first layer by features each worker's own columns, from its
    own sums, which are whole for those columns."""
    cdef WeightBlock block
    cdef int me = batch.me, team = batch.team
    block.offset = layer_offset(batch.sizes, l)
    block.n_in, block.n_out = batch.sizes[l], batch.sizes[l + 1]
    block.first_row, block.stop_row = 0, block.n_in
    block.first_col, block.stop_col = 0, block.n_out
    block.first_bias, block.stop_bias = 0, (block.n_out if me == team - 1 else 0)
    block.column_sums = of_layer(space, space.column_sums, l + 1)
    block.n_parts = team
    if batch.by_rows:
        block.first_row, block.stop_row = share_start(block.n_in, me, team), share_start(block.n_in, me + 1, team)
    elif l > 0:
        block.first_row, block.stop_row = block_start(block.n_in, me, team), block_start(block.n_in, me + 1, team)
    else:
        block.first_col, block.stop_col = block_start(block.n_out, me, team), block_start(block.n_out, me + 1, team)
        block.first_bias, block.stop_bias = block.first_col, block.stop_col
        block.column_sums, block.n_parts = block.column_sums + me, 1
    return block


cdef inline void gather_targets(const Batch* batch, const floating* targets, Workspace* space) noexcept nogil:
    """Copy the targets of this worker's rows of the batch into label_work or space.target_rows."""
    cdef Py_ssize_t n_classes = batch.sizes[batch.n_layers], i, row
    for i in range(batch.first_row, batch.stop_row):
        row = batch.order[batch.start + i]
        if batch.labels != NULL:
            batch.label_work[i] = batch.labels[row]
        else:
            memcpy(<floating*>space.target_rows + i * n_classes, targets + row * n_classes,
                   n_classes * sizeof(floating))


cdef inline const floating* batch_row_weights(const Batch* batch, floating* grad_scale) noexcept nogil:
    """This worker's rows' weights (gathered if the rows are), or NULL when every row weighs 1, and the
    scale of the gradient at the logits: 1 / the batch's summed weight (its row count without weights),
    0 for a batch that weighs nothing. Every worker sums the whole batch's weights, in the same order."""
    cdef const floating* weights = <const floating*>batch.sample_weight
    cdef floating* gathered = <floating*>batch.weight_work
    cdef double total = batch.m  # every row weighs 1 without weights
    cdef Py_ssize_t i
    if batch.batch_scales != NULL:  # data-parallel: the scale is the batch's across every process
        grad_scale[0] = <floating>batch.batch_scales[batch.index]
    else:
        if weights != NULL:
            total = 0
            for i in range(batch.m):
                total += weights[batch.order[batch.start + i] if batch.order != NULL else batch.start + i]
        grad_scale[0] = <floating>(1.0 / total) if total > 0 else 0
    if weights == NULL:
        return NULL
    if batch.order == NULL:
        return weights + batch.start
    for i in range(batch.first_row, batch.stop_row):
        gathered[i] = weights[batch.order[batch.start + i]]
    return gathered


cdef inline floating head(const Batch* batch, const floating* targets, Workspace* space) noexcept nogil:
    """The head (_head.pxd) on this worker's rows of the batch's output pre-activations: their summed
    loss and how many it classified right into its slot of batch.losses, the gradient in their place,
    its column sums. Returns 1 / the batch's weight sum (see batch_row_weights)."""
    cdef Py_ssize_t n_classes = batch.sizes[batch.n_layers], first = batch.first_row, correct = 0
    cdef const Py_ssize_t* labels
    cdef const floating* target_rows
    cdef floating grad_scale
    cdef const floating* row_weights = batch_row_weights(batch, &grad_scale)
    if batch.order != NULL:
        gather_targets(batch, targets, space)
        labels = batch.label_work if batch.labels != NULL else NULL
        target_rows = <floating*>space.target_rows
    else:
        labels = batch.labels + batch.start if batch.labels != NULL else NULL
        target_rows = targets + batch.start * n_classes if batch.labels == NULL else NULL
    batch.losses[batch.me * LOSS_STRIDE] = loss_and_gradient(
        batch.head, <floating*>space.outputs[batch.n_layers] + first * n_classes, batch.stop_row - first, n_classes,
        labels + first if labels != NULL else NULL,
        target_rows + first * n_classes if labels == NULL else NULL, grad_scale,
        (<floating**>of_layer(space, space.column_sums, batch.n_layers))[batch.me], &correct,
        <floating>batch.label_smoothing, row_weights + first if row_weights != NULL else NULL)
    batch.losses[batch.me * LOSS_STRIDE + 1] = <double>correct
    return grad_scale


cdef inline bint batch_loss_is_finite(const Batch* batch, double* batch_loss,
                                      double* batch_correct) noexcept nogil:
    """Sum every worker's loss (and rows classified right): called past a barrier since the head by every
    worker, which all sum the same losses in the same order, so all stop together, before any update of
    a non-finite batch."""
    cdef int w
    batch_loss[0] = batch_correct[0] = 0
    for w in range(batch.team):
        batch_loss[0] += batch.losses[w * LOSS_STRIDE]
        batch_correct[0] += batch.losses[w * LOSS_STRIDE + 1]
    return isfinite(batch_loss[0])


cdef inline bint train_batch(const Batch* batch, floating* params, floating* grads, const Rule* rule,
                             const floating* X, const floating* targets, Workspace* space,
                             double* batch_loss, double* batch_correct) noexcept nogil:
    """This worker's part of one batch. Returns False, every worker together and with nothing written,
    if the batch's loss is not finite."""
    cdef Py_ssize_t n_layers = batch.n_layers, l
    cdef const floating* x = batch_input(batch, X, space)
    cdef const floating* layer_in
    cdef WeightBlock block
    cdef floating inverse_weight_sum
    for l in range(n_layers):
        forward_layer(batch, l, params, x if l == 0 else <floating*>space.outputs[l], space)
    inverse_weight_sum = head(batch, targets, space)
    if not batch.by_rows:
        barrier(batch.team)  # below, every worker reads every row of the error at the logits
    for l in range(n_layers - 1, -1, -1):
        layer_in = x if l == 0 else <floating*>space.outputs[l]
        if l > 0:  # the first layer's input is the data: no error is passed into it
            pass_error_down_share(batch, l, params, layer_in, space)
        if batch.by_rows:
            # Every worker has read these weights before anyone writes them, and the error at this
            # layer's output is whole (the weight product sums over every row).
            barrier(batch.team)
        if batch.reducer == NULL and l == n_layers - 1 and not batch_loss_is_finite(batch, batch_loss,
                                                                                   batch_correct):
            return False
        block = weight_block(batch, l, space)
        write_weight_block(rule, params, grads, &block, layer_in, batch.m, <floating*>space.deltas[l + 1],
                           batch.index, rule.l2 * inverse_weight_sum, batch.reducer != NULL)
        if not batch.by_rows and l > 1:
            barrier(batch.team)  # the error passed down is whole for the layer below
    if batch.reducer == NULL:
        return True
    # Data-parallel: the gradient is whole in grads; summed across processes, then stepped.
    barrier(batch.team)
    if batch.me == 0:
        batch_loss_is_finite(batch, batch_loss, batch_correct)  # this process's sums
        reduce_batch(batch.reducer, batch.index, batch_loss[0], batch_correct[0], batch.losses)
    barrier(batch.team)
    batch_loss[0], batch_correct[0] = batch.losses[REDUCED_LOSS], batch.losses[REDUCED_CORRECT]
    if batch.losses[REDUCED_OK] == 0 or not isfinite(batch_loss[0]):
        return False  # every worker of every process alike, before any weight is written
    for l in range(n_layers):
        block = weight_block(batch, l, space)
        step_weight_block(rule, params, grads, &block, batch.index, rule.l2 * inverse_weight_sum)
    return True


# Worker 0's slots (of LOSS_STRIDE) where it leaves what the reducer returned for every worker to read.
cdef enum:
    REDUCED_LOSS = 2
    REDUCED_CORRECT = 3
    REDUCED_OK = 4


cdef inline void reduce_batch(void* reducer, Py_ssize_t index, double loss, double correct,
                              double* slots) noexcept nogil:
    with gil:
        _call_reducer(<object>reducer, index, loss, correct, slots)


cdef inline void _call_reducer(object reducer, Py_ssize_t index, double loss, double correct, double* slots):
    """slots[REDUCED_*] from reducer(index, loss, correct): (loss, correct) summed across processes, or
    None (a failure the reducer keeps to raise after the call)."""
    slots[REDUCED_OK] = 0
    try:
        result = reducer(index, loss, correct)
        if result is not None:
            slots[REDUCED_LOSS], slots[REDUCED_CORRECT] = result
            slots[REDUCED_OK] = 1
    except BaseException:
        pass  # the reducer of mlpcore._distributed never raises; any other failure stops the pass


cdef inline void train_member(floating* params, floating* grads, const Py_ssize_t* sizes,
                              Py_ssize_t n_layers, const floating* X, Py_ssize_t n,
                              const Py_ssize_t* labels, const floating* targets, const Py_ssize_t* order,
                              Py_ssize_t batch_size, Py_ssize_t first_batch, Py_ssize_t stop_batch,
                              const Rule* rule, const Regularisation* extra, Workspace* space,
                              Py_ssize_t* label_work, double* losses, TeamResult* result, int me,
                              int team, int activation, int head) noexcept nogil:
    """Worker `me` of `team`'s part of training batches first_batch..stop_batch-1 (see train_batches)."""
    cdef Batch batch
    cdef Py_ssize_t b, width = widest(sizes, n_layers)
    # The feature scheme needs a team, a hidden layer, and fits at most partial_rows rows (always so
    # when split_by_rows says features; the bound of its buffers all the same).
    cdef Py_ssize_t feature_rows = partial_rows(sizes, n_layers, batch_size) if team > 1 and n_layers > 1 else 0
    cdef double batch_loss = 0, batch_correct = 0
    cdef bint flush = flushes_subnormals(rule)
    cdef unsigned int saved_fp_state = mlpcore_flush_subnormals() if flush else 0
    batch.sizes, batch.n_layers, batch.order, batch.labels = sizes, n_layers, order, labels
    batch.label_work, batch.losses = label_work, losses
    batch.me, batch.team = me, team
    batch.activation, batch.head = activation, head
    batch.sample_weight, batch.weight_work = extra.sample_weight, extra.weight_work
    batch.label_smoothing, batch.dropout_key = extra.label_smoothing, extra.dropout_key
    batch.dropout_threshold = dropout_threshold(extra.dropout)
    batch.keep_scale = dropout_keep_scale(extra.dropout)
    batch.reducer, batch.batch_scales = extra.reducer, extra.batch_scales
    for b in range(first_batch, stop_batch):
        batch.index = b
        if extra.batch_starts != NULL:
            batch.start, batch.m = extra.batch_starts[b], extra.batch_starts[b + 1] - extra.batch_starts[b]
        else:
            batch.start = b * batch_size
            batch.m = min(batch_size, n - batch.start)
        batch.by_rows = batch.m > feature_rows or split_by_rows(batch.m, width, sizeof(floating))
        batch.first_row = share_start(batch.m, me, team)
        batch.stop_row = share_start(batch.m, me + 1, team)
        if not train_batch(&batch, params, grads, rule, X, targets, space, &batch_loss, &batch_correct):
            break
        if me == 0:
            result.total += batch_loss
            result.done += 1
            result.correct += <Py_ssize_t>batch_correct
        barrier(team)
    if flush:
        mlpcore_restore_subnormals(saved_fp_state)
