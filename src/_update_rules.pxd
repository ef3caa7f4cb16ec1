# Update rules: what becomes of a layer's gradient once the backward pass has it. The training loop calls
# write_weight_block once per layer and worker, for the block of that layer's weights the worker owns, and
# knows nothing of the rule: a new rule is a new kind here, with its state and its step, and nothing else
# changes. A rule with state computes the block's gradient into grads, then steps the same block of params
# from it, reading and writing its state at the same offsets (state is laid out like params), so the step
# costs one pass over the block, needs no barrier, and no worker touches another's block (see _team.pxd on
# why that matters). The formulas are PyTorch's (torch.optim.SGD with dampening 0, Adam, AdamW), except that
# weight decay never touches the bias row; mlpcore.reference writes them out.

from cython cimport floating
from libc.math cimport sqrt, pow

from _layers cimport weight_gradient, bias_gradient


cdef extern from *:
    """
    /* Subnormal numbers flushed to zero (FTZ) and read as zero (DAZ) by this thread's SSE/AVX arithmetic
       (x86-64's MXCSR), until restored; elsewhere nothing changes. */
    #if defined(__x86_64__) || defined(_M_X64)
    #include <xmmintrin.h>
    static unsigned int mlpcore_flush_subnormals(void) {
        unsigned int saved = _mm_getcsr();
        _mm_setcsr(saved | 0x8040u);  /* FTZ (bit 15) and DAZ (bit 6) */
        return saved;
    }
    /* Only FTZ and DAZ as they were: exception flags raised meanwhile stay raised. */
    static void mlpcore_restore_subnormals(unsigned int saved) {
        _mm_setcsr((_mm_getcsr() & ~0x8040u) | (saved & 0x8040u));
    }
    #else
    static unsigned int mlpcore_flush_subnormals(void) { return 0; }
    static void mlpcore_restore_subnormals(unsigned int saved) { (void)saved; }
    #endif
    """
    unsigned int mlpcore_flush_subnormals() noexcept nogil
    void mlpcore_restore_subnormals(unsigned int saved) noexcept nogil


cdef enum RuleKind:
    RULE_GRADIENTS_ONLY = 0  # write the gradient into grads, leave the weights
    RULE_SGD = 1             # W -= lr * dW, fused into the gradient product
    RULE_SGD_MOMENTUM = 2    # SGD with momentum (heavy-ball or Nesterov) and/or L2 weight decay
    RULE_ADAM = 3            # Adam (L2 weight decay added to the gradient) or AdamW (decoupled decay)


cdef struct Rule:
    RuleKind kind
    double lr               # the base learning rate
    const double* lr_factors  # the schedule: batch b of the pass steps with lr * lr_factors[b] (NULL: 1)
    double momentum
    double weight_decay
    double beta1
    double beta2
    double eps
    bint nesterov
    bint decoupled          # AdamW: W *= 1 - lr * weight_decay before the step, not L2 in the gradient
    bint eps_before_correction  # Adam: eps added to sqrt(v) before v's bias correction (scikit-learn's)
    double l2               # scikit-learn's alpha: a batch adds l2 * W / (its weight sum) to the gradient
    void* first_moment      # momentum buffer or Adam's m, laid out like params (NULL if unused)
    void* second_moment     # Adam's v
    Py_ssize_t step         # steps taken before batch 0 of the pass: batch b is step number step + b + 1


cdef enum:
    # A rule with a step computes and steps small batches' gradients this many bytes of it at a time
    # (write_weight_block): with the weights' and the moments' rows, well within a core's L2 cache.
    PANEL_BYTES = 65536


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


cdef inline bint steps_from_gradient(const Rule* rule) noexcept nogil:
    # (A rule with l2 is never RULE_SGD: the fused product has no room for it. UpdateRule sees to it.)
    """Whether the rule has a step of its own after the gradient product (momentum, weight decay, Adam),
    rather than none (GRADIENTS_ONLY) or one fused into the product (plain SGD)."""
    return rule.kind == RULE_SGD_MOMENTUM or rule.kind == RULE_ADAM


cdef inline bint flushes_subnormals(const Rule* rule) noexcept nogil:
    """Whether the workers train under mlpcore_flush_subnormals: for every rule but plain SGD (SGD with
    neither momentum nor weight decay) and the gradients alone. Moments, and weights under decay, shrink
    geometrically where the gradient is exactly 0 (an input feature
    that is always 0, a dead unit) and, rounding to nearest, stop at the smallest subnormal for good
    (0.9 * 2**-149 rounds back to 2**-149), where every operation on them takes a slow microcode path.
    Measured, Adam at batch 32: on Fashion-MNIST 6% of the first moments after one epoch, 11% after two;
    on random data 83%, and the epoch 3.1x slower. Flushed, they reach 0 (as in TensorFlow's CPU
    threads). Plain SGD and the gradients alone keep IEEE arithmetic, bit for bit. Elsewhere than on
    x86-64 nothing is flushed."""
    return steps_from_gradient(rule)


cdef inline double batch_lr(const Rule* rule, Py_ssize_t batch) noexcept nogil:
    """The learning rate of batch `batch` of the pass."""
    return rule.lr * (rule.lr_factors[batch] if rule.lr_factors != NULL else 1.0)


cdef extern from "_step_loops.h":
    # The loops themselves, in C: compiled for AVX2 and for the baseline, chosen at load time.
    void mlpcore_momentum_step_f32(float* w, const float* g, float* m, ptrdiff_t n, float lr, float wd,
                                   float mu, int nesterov) noexcept nogil
    void mlpcore_momentum_step_f64(double* w, const double* g, double* m, ptrdiff_t n, double lr, double wd,
                                   double mu, int nesterov) noexcept nogil
    void mlpcore_adam_step_f32(float* w, const float* g, float* m, float* v, ptrdiff_t n, float b1, float b2,
                               float one_minus_b1, float one_minus_b2, float wd, float decay, float step_size,
                               float eps_hat, int decoupled) noexcept nogil
    void mlpcore_adam_step_f64(double* w, const double* g, double* m, double* v, ptrdiff_t n, double b1,
                               double b2, double one_minus_b1, double one_minus_b2, double wd, double decay,
                               double step_size, double eps_hat, int decoupled) noexcept nogil


cdef inline void step_at(const Rule* rule, floating* params, const floating* grads, Py_ssize_t start,
                         Py_ssize_t count, double lr, double weight_decay, double bias_correction1,
                         double bias_correction2_sqrt) noexcept nogil:
    """Step params[start:start + count] from the same entries of grads and of the rule's moments, in the
    data's type (the loops: _step_loops.h).

    Adam's w -= (lr / c1) * m / (sqrt(v) / c2 + eps) is computed as (lr * c2 / c1) * m / (sqrt(v) +
    eps * c2): the same value, one division per weight instead of two (Kingma and Ba's own form, section
    2); the step is bound by its divisions and square root."""
    cdef floating* w = params + start
    cdef const floating* g = grads + start
    cdef floating* m = <floating*>rule.first_moment + start if rule.first_moment != NULL else NULL
    cdef floating* v = <floating*>rule.second_moment + start if rule.second_moment != NULL else NULL
    cdef floating step_size = <floating>(lr * bias_correction2_sqrt / bias_correction1)
    cdef floating eps_hat = <floating>(rule.eps if rule.eps_before_correction
                                       else rule.eps * bias_correction2_sqrt)
    if rule.kind == RULE_SGD_MOMENTUM or rule.kind == RULE_SGD:  # plain SGD: no moment, w -= lr * (g + wd w)
        if floating is float:
            mlpcore_momentum_step_f32(w, g, m, count, <float>lr, <float>weight_decay, <float>rule.momentum,
                                      rule.nesterov)
        else:
            mlpcore_momentum_step_f64(w, g, m, count, lr, weight_decay, rule.momentum, rule.nesterov)
    elif floating is float:
        mlpcore_adam_step_f32(w, g, m, v, count, <float>rule.beta1, <float>rule.beta2,
                              <float>(1.0 - rule.beta1), <float>(1.0 - rule.beta2), <float>weight_decay,
                              <float>(1.0 - lr * weight_decay), step_size, eps_hat, rule.decoupled)
    else:
        mlpcore_adam_step_f64(w, g, m, v, count, rule.beta1, rule.beta2, 1.0 - rule.beta1, 1.0 - rule.beta2,
                              weight_decay, 1.0 - lr * weight_decay, step_size, eps_hat, rule.decoupled)


cdef inline void write_weight_block(const Rule* rule, floating* params, floating* grads,
                                    const WeightBlock* block, const floating* x, Py_ssize_t m,
                                    const floating* dz, Py_ssize_t batch, double l2_decay,
                                    bint gradient_only=False) noexcept nogil:
    """Apply `rule` to `block` of a layer whose input is x (m x n_in) and whose error at the output is
    dz (m x n_out), for batch `batch` of the pass: the one place where weights are written. l2_decay
    (rule.l2 / the batch's weight sum) is added to the weight decay of the block's weight rows.
    With gradient_only, the block's gradient goes into grads and nothing is stepped: a reducer sums it
    across processes first, then step_weight_block steps it (_training.train_batch)."""
    cdef floating* dest
    cdef floating alpha, beta
    cdef double lr = batch_lr(rule, batch)
    cdef bint steps = steps_from_gradient(rule) and not gradient_only
    cdef Py_ssize_t bias_row = block.offset + block.n_in * block.n_out, first_row = block.first_row
    cdef Py_ssize_t panel_rows = block.stop_row - block.first_row
    cdef Py_ssize_t cache_rows = PANEL_BYTES // max(1, (block.stop_col - block.first_col) * <Py_ssize_t>sizeof(floating))
    cdef WeightBlock part = block[0]
    if rule.kind == RULE_SGD and not gradient_only:
        # W = W - lr * dW straight from the products (alpha = -lr, beta = 1 into W): no pass over a
        # gradient buffer, no separate axpy over all the weights each batch. Why SGD is at the floor.
        dest, alpha, beta = params, <floating>(-lr), <floating>1
    else:
        # The gradient itself: what GRADIENTS_ONLY returns, and what a rule with state steps from.
        dest, alpha, beta = grads, <floating>1, <floating>0
    if steps and 2 * m <= cache_rows:
        # Few rows: the gradient and its step a panel of weight rows at a time, each panel's gradient
        # still in the core's cache when the step reads it, rather than written out whole and read back.
        # Each panel's product packs the whole error dz again: cheaper than the trip through memory only
        # while dz is at most half the panel. Measured on the student's network, float32, two workers
        # (epochs against plain SGD's): at batch 32 Adam 1.48x -> 1.37x, momentum 1.36x -> 1.28x; at 64,
        # with panels as large as the batch, no better (1.28x -> 1.32x); at 128 and more, slower.
        panel_rows = cache_rows  # >= 2 * m
    part.first_bias = part.stop_bias = 0
    while first_row < block.stop_row:
        part.first_row, part.stop_row = first_row, min(first_row + panel_rows, block.stop_row)
        weight_gradient(x, m, block.n_in, dz, block.n_out, part.first_row, part.stop_row, block.first_col,
                        block.stop_col, dest + block.offset, alpha, beta)
        if steps:
            step_weight_block(rule, params, grads, &part, batch, l2_decay)
        first_row = part.stop_row
    bias_gradient(dest + bias_row, block.first_bias, block.stop_bias, <floating**>block.column_sums,
                  block.n_parts, alpha, beta)
    if steps:
        part = block[0]
        part.first_row = part.stop_row = 0  # the bias row alone
        step_weight_block(rule, params, grads, &part, batch, l2_decay)


cdef inline void step_weight_block(const Rule* rule, floating* params, const floating* grads,
                                   const WeightBlock* block, Py_ssize_t batch, double l2_decay) noexcept nogil:
    """Step `block` of the weights from its gradient in grads, by `rule` (plain SGD too), for batch
    `batch` of the pass (see write_weight_block)."""
    cdef double lr = batch_lr(rule, batch), bias_correction1 = 1, bias_correction2_sqrt = 1
    cdef Py_ssize_t r, bias_row = block.offset + block.n_in * block.n_out
    if rule.kind == RULE_ADAM:
        bias_correction1 = 1 - pow(rule.beta1, <double>(rule.step + batch + 1))
        bias_correction2_sqrt = sqrt(1 - pow(rule.beta2, <double>(rule.step + batch + 1)))
    if block.first_col == 0 and block.stop_col == block.n_out:  # whole rows: one run of entries
        step_at(rule, params, grads, block.offset + block.first_row * block.n_out,
                (block.stop_row - block.first_row) * block.n_out, lr, rule.weight_decay + l2_decay,
                bias_correction1, bias_correction2_sqrt)
    else:
        for r in range(block.first_row, block.stop_row):
            step_at(rule, params, grads, block.offset + r * block.n_out + block.first_col,
                    block.stop_col - block.first_col, lr, rule.weight_decay + l2_decay, bias_correction1,
                    bias_correction2_sqrt)
    # The bias row: no weight decay.
    step_at(rule, params, grads, bias_row + block.first_bias, block.stop_bias - block.first_bias, lr, 0.0,
            bias_correction1, bias_correction2_sqrt)
