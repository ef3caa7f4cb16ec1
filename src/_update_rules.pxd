# Update rules: what becomes of a layer's gradient once the backward pass has it. The training loop calls
# write_weight_block once per layer and worker, for the block of that layer's weights the worker owns, and
# knows nothing of the rule: a new rule (momentum, Adam) is a new kind here, with its state and its step,
# and nothing else changes. A rule with state computes the block's gradient into grads, then steps the
# same block of params from it, reading and writing its state at the same offsets (state is laid out like
# params), so the step costs one pass over the block, needs no barrier, and no worker touches another's
# block (see _team.pxd on why that matters).

from cython cimport floating

from _layers cimport weight_gradient, bias_gradient


cdef enum RuleKind:
    RULE_GRADIENTS_ONLY = 0  # write the gradient into grads, leave the weights
    RULE_SGD = 1             # W -= lr * dW


cdef struct Rule:
    RuleKind kind
    double lr               # the learning rate of this call (a schedule sets it per call)
    void* state             # the rule's state, laid out like params (NULL for plain SGD)
    Py_ssize_t step         # steps taken before this call (for rules whose step depends on it)


cdef struct WeightBlock:
    # The part of one layer's weights W (n_in + 1, n_out) that one worker writes for one batch: a block
    # of W[:n_in] and a range of the bias row, whose gradient is the sum of the given partial column sums
    # of the error at the layer's output.
    Py_ssize_t offset       # of W in params, grads and state
    Py_ssize_t n_in
    Py_ssize_t n_out
    Py_ssize_t first_row
    Py_ssize_t stop_row
    Py_ssize_t first_col
    Py_ssize_t stop_col
    Py_ssize_t first_bias
    Py_ssize_t stop_bias
    void** column_sums      # n_parts arrays of n_out partial sums
    int n_parts


cdef inline void write_weight_block(const Rule* rule, floating* params, floating* grads,
                                    const WeightBlock* block, const floating* x, Py_ssize_t m,
                                    const floating* dz) noexcept nogil:
    """Apply `rule` to `block` of a layer whose input is x (m x n_in) and whose error at the output is
    dz (m x n_out): the one place where weights are written."""
    cdef floating* dest
    cdef floating alpha, beta
    if rule.kind == RULE_SGD:
        # W = W - lr * dW straight from the products (alpha = -lr, beta = 1 into W): no pass over a
        # gradient buffer, no separate axpy over all the weights each batch. Why SGD is at the floor.
        dest, alpha, beta = params, <floating>(-rule.lr), <floating>1
    else:
        dest, alpha, beta = grads, <floating>1, <floating>0
    weight_gradient(x, m, block.n_in, dz, block.n_out, block.first_row, block.stop_row, block.first_col,
                    block.stop_col, dest + block.offset, alpha, beta)
    bias_gradient(dest + block.offset + block.n_in * block.n_out, block.first_bias, block.stop_bias,
                  <floating**>block.column_sums, block.n_parts, alpha, beta)
