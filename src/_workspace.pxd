# Where the data lives: the layout of the parameters, and the workspace of a compiled call carved into its
# per-layer and per-worker buffers. Sized once per call from Python (once per fit), reused by every batch;
# nothing is allocated per batch.
#
# params (and grads, and any optimizer state laid out like them): every weight matrix concatenated, layer
# l being W_l of shape (sizes[l] + 1, sizes[l + 1]) with the bias as its last row, at offset
# layer_offset(sizes, l).

from cython cimport floating
from libc.stdlib cimport malloc, free


cdef struct Workspace:
    # Pointers into the workspace. outputs and deltas have n_layers + 1 entries: outputs[0] is unused (the
    # input is the data or gathered rows), outputs[l] the output of layer l (ReLU applied for hidden
    # layers, which is all backward needs: relu(z) > 0 exactly when z > 0; logits, then the logit
    # gradient, for the last); deltas[l] is the error at layer l's pre-activation (deltas[n_layers] is
    # outputs[n_layers]). Per worker w, at [l * n_workers + w] so that one layer's are an array in worker
    # order (see of_layer): column_sums, worker w's share of the column sums of deltas[l], from which
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


cdef inline Py_ssize_t layer_offset(const Py_ssize_t* sizes, Py_ssize_t layer) noexcept nogil:
    """Where layer `layer`'s weights start in params."""
    cdef Py_ssize_t l, total = 0
    for l in range(layer):
        total += (sizes[l] + 1) * sizes[l + 1]
    return total


cdef inline Py_ssize_t n_weights(const Py_ssize_t* sizes, Py_ssize_t n_layers) noexcept nogil:
    """Entries of params: every layer's (n_in + 1) x n_out."""
    return layer_offset(sizes, n_layers)


cdef inline Py_ssize_t widest(const Py_ssize_t* sizes, Py_ssize_t n_layers) noexcept nogil:
    """The widest layer output."""
    cdef Py_ssize_t l, largest = 0
    for l in range(1, n_layers + 1):
        largest = max(largest, sizes[l])
    return largest


cdef inline Py_ssize_t partial_rows(const Py_ssize_t* sizes, Py_ssize_t n_layers,
                                    Py_ssize_t batch) noexcept nogil:
    """Rows of each partial sum and private input copy: a batch shared out by features has fewer than
    widest / 3 rows in any dtype (see _team.split_by_rows)."""
    return min(batch, widest(sizes, n_layers) // 3 + 1)


cdef inline Py_ssize_t workspace_size(const Py_ssize_t* sizes, Py_ssize_t n_layers, Py_ssize_t batch,
                                      bint gather, Py_ssize_t n_workers, bint training) noexcept nogil:
    """Elements of the workspace for batches of up to `batch` rows done by n_workers; `gather` adds room
    for copying each batch's rows, `training` for a team's partial sums."""
    cdef Py_ssize_t l, per_row = 0, per_worker = 0, widths = 0
    for l in range(1, n_layers + 1):
        widths += sizes[l]
    per_row = 2 * widths - sizes[n_layers]  # outputs, and deltas of the hidden layers
    per_worker = widths
    if gather:
        per_row += sizes[0] + sizes[n_layers]
    if training and n_workers > 1:
        per_worker += partial_rows(sizes, n_layers, batch) * (sizes[0] + widths - sizes[1])
    return per_row * batch + per_worker * n_workers


cdef inline int carve_workspace(Workspace* space, floating* work, Py_ssize_t work_size,
                                const Py_ssize_t* sizes, Py_ssize_t n_layers, Py_ssize_t batch,
                                bint gather, int n_workers, bint training) noexcept nogil:
    """Carve `work` into per-layer buffers (and the gather buffers if asked). Returns -1 if the workspace
    is too small, -2 if the pointer arrays cannot be allocated; release_workspace frees them."""
    cdef Py_ssize_t l, per_worker = (n_layers + 1) * n_workers
    cdef int w
    if work_size < workspace_size(sizes, n_layers, batch, gather, n_workers, training):
        return -1
    # One allocation for the pointer arrays.
    space.outputs = <void**>malloc((2 * (n_layers + 1) + 2 * per_worker) * sizeof(void*))
    if space.outputs == NULL:
        return -2
    space.n_workers = n_workers
    space.deltas = space.outputs + (n_layers + 1)
    space.column_sums = space.deltas + (n_layers + 1)
    space.partials = space.column_sums + per_worker
    space.outputs[0] = space.deltas[0] = NULL
    for l in range(1, n_layers + 1):
        space.outputs[l] = work
        work += batch * sizes[l]
    for l in range(1, n_layers):
        space.deltas[l] = work
        work += batch * sizes[l]
    space.deltas[n_layers] = space.outputs[n_layers]
    for w in range(n_workers):
        space.column_sums[w] = NULL
        for l in range(1, n_layers + 1):
            space.column_sums[l * n_workers + w] = work
            work += sizes[l]
        for l in range(n_layers + 1):
            space.partials[l * n_workers + w] = NULL
            if training and n_workers > 1 and l != 1:
                space.partials[l * n_workers + w] = work
                work += partial_rows(sizes, n_layers, batch) * sizes[l]
    space.input_rows = space.target_rows = NULL
    if gather:
        space.input_rows = work
        work += batch * sizes[0]
        space.target_rows = work
    return 0


cdef inline void release_workspace(Workspace* space) noexcept nogil:
    free(space.outputs)
    space.outputs = space.deltas = space.column_sums = space.partials = NULL


cdef inline void** of_layer(const Workspace* space, void** per_worker, Py_ssize_t layer) noexcept nogil:
    """Every worker's buffer of `layer` in space.column_sums or space.partials, in worker order."""
    return per_worker + layer * space.n_workers
