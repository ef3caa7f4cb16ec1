# The one BLAS shim of mlpcore: row-major, fused float/double wrappers over scipy.linalg.cython_blas.
#
# Fortran BLAS is column-major. A C-ordered (row-major) m x n matrix is, read column-major, its n x m
# transpose, so C = op(A) . op(B) is computed as C^T = op(B)^T . op(A)^T: swap the operands, swap m and
# n, and pass row lengths as leading dimensions. No kernel spells out Fortran argument order itself.
#
# cython_blas takes every argument by pointer and is not const-qualified: const is cast away here only.

from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef enum Transpose:
    NO_TRANS = 0
    TRANS = 1


cdef inline void gemm_ld(Transpose trans_a, Transpose trans_b, int m, int n, int k,
                         floating alpha, const floating* a, int lda, const floating* b, int ldb,
                         floating beta, floating* c, int ldc) noexcept nogil:
    """C(m x n) = alpha * op(A) . op(B) + beta * C, all row-major, with the row length of each stored matrix
    given (so that a block of columns of a wider matrix can be an operand).

    op(A) is m x k: A is stored m x k, or k x m when transposed; likewise op(B) is k x n.
    """
    cdef char ta = b'T' if trans_a == TRANS else b'N'
    cdef char tb = b'T' if trans_b == TRANS else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef inline void gemm(Transpose trans_a, Transpose trans_b, int m, int n, int k,
                      floating alpha, const floating* a, const floating* b,
                      floating beta, floating* c) noexcept nogil:
    """gemm_ld on packed matrices (each leading dimension is the stored row length)."""
    # BLAS wants every leading dimension >= 1.
    gemm_ld(trans_a, trans_b, m, n, k, alpha, a, max(1, m if trans_a == TRANS else k),
            b, max(1, k if trans_b == TRANS else n), beta, c, max(1, n))
