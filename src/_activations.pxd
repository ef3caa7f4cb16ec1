# The hidden layers' activations: the one place to add one. Each is a function of the pre-activation z
# (the forward pass) and a derivative written in terms of its own output h = f(z), which is what the
# backward pass keeps (scikit-learn's DERIVATIVES are written the same way). The output layer's is
# ACT_IDENTITY: its pre-activations go to the head (_head.pxd) as they are.
from cython cimport floating
from libc.math cimport exp, expf, tanh, tanhf


cdef enum Activation:
    ACT_IDENTITY = 0
    ACT_RELU = 1       # max(z, 0); its derivative at 0 is 0
    ACT_TANH = 2
    ACT_LOGISTIC = 3   # 1 / (1 + exp(-z))


cdef inline floating activate(floating z, int activation) noexcept nogil:
    """f(z)."""
    if activation == ACT_RELU:
        return z if z > 0 else 0
    if activation == ACT_TANH:
        return tanhf(z) if floating is float else tanh(z)
    if activation == ACT_LOGISTIC:
        # exp(-z) overflows to inf for z very negative: 1 / inf = 0, the right limit.
        return 1 / (1 + (expf(-z) if floating is float else exp(-z)))
    return z


cdef inline floating derivative_from_output(floating h, int activation) noexcept nogil:
    """f'(z) from h = f(z)."""
    if activation == ACT_RELU:
        return 1 if h > 0 else 0
    if activation == ACT_TANH:
        return 1 - h * h
    if activation == ACT_LOGISTIC:
        return h * (1 - h)
    return 1
