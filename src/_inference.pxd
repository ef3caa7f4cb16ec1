# Inference: the head's output (class probabilities, predictions) or the summed loss of many rows, a
# chunk of rows at a time, each chunk's rows shared out between a team's workers. The forward pass is
# row-local, so workers wait only between chunks.

from cython cimport floating

from _team cimport barrier, share_start, LOSS_STRIDE
from _workspace cimport Workspace
from _layers cimport network_forward
from _head cimport loss_and_gradient, output_rows


cdef inline void evaluate_member(const floating* params, const Py_ssize_t* sizes, Py_ssize_t n_layers,
                                 const floating* X, Py_ssize_t n, Py_ssize_t chunk, Workspace* space,
                                 floating* out, const Py_ssize_t* labels, const floating* targets,
                                 double* losses, int me, int team, int activation, int head) noexcept nogil:
    """Worker `me`'s share of every `chunk` rows of X: with `out`, its rows of the network's output (the
    head's: softmax, sigmoid, identity or exp); else
    the summed loss of its rows, against `labels` (or the rows of `targets` if NULL), into
    losses[me * LOSS_STRIDE]; and 1 into losses[me * LOSS_STRIDE + 1] if the first layer's
    pre-activations of its rows were all finite, else 0 (see _layers.dense_forward)."""
    cdef Py_ssize_t n_classes = sizes[n_layers], c, start, m, first, rows
    cdef floating* logits
    cdef double total = 0
    cdef bint input_finite = True
    for c in range((n + chunk - 1) // chunk):
        start = c * chunk
        m = min(chunk, n - start)
        first = start + share_start(m, me, team)
        rows = start + share_start(m, me + 1, team) - first
        if out != NULL:
            # The last layer writes its logits straight into the output rows.
            input_finite &= network_forward(params, sizes, n_layers, X + start * sizes[0], first - start,
                                            rows, space.outputs, out + start * n_classes, activation)
            output_rows(head, out + first * n_classes, rows, n_classes)
        else:
            input_finite &= network_forward(params, sizes, n_layers, X + start * sizes[0], first - start,
                                            rows, space.outputs, NULL, activation)
            logits = <floating*>space.outputs[n_layers] + (first - start) * n_classes
            total += loss_and_gradient(head, logits, rows, n_classes,
                                           labels + first if labels != NULL else NULL,
                                           targets + first * n_classes if labels == NULL else NULL,
                                           <floating>0, NULL, NULL, <floating>0, NULL)
        # The next chunk's shares need not fall on the same rows of the workspace (the last chunk is
        # shorter): no one starts it before everyone has finished this one.
        barrier(team)
    losses[me * LOSS_STRIDE] = total
    losses[me * LOSS_STRIDE + 1] = input_finite
