# The team: the OpenMP workers that share out a batch, their barrier, and the arithmetic that says which
# worker does which rows or features. Called by the training loop (_training.pxd) and inference
# (_inference.pxd); nothing here touches data.
#
# The team never deadlocks because every worker reaches every barrier, always:
# - the loops that contain barriers (batches, layers, inference chunks) run the same number of times on
#   every worker: their bounds come from the sizes, the batch and the team, never from a worker's share;
# - no barrier sits inside a branch that depends on the worker, only inside ones that depend on the batch
#   (its scheme) or the layer, which every worker sees the same;
# - a worker never leaves early on its own: the one early exit, a batch whose loss is not finite, is
#   decided after a barrier from every worker's loss, summed by each in the same order, so all leave
#   together (_training.batch_loss_is_finite).
# Whatever is added to the loop (an update rule, a reducer across processes) must keep these three true:
# an update rule is a per-worker step on the block that worker owns and never waits.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define MLPCORE_OPENMP 1
    static int mlpcore_team_size(void) { return omp_get_num_threads(); }
    static int mlpcore_member(void) { return omp_get_thread_num(); }
    /* The thread limit in force for a team started here: OMP_NUM_THREADS, or what omp_set_num_threads
       (threadpoolctl) set. */
    static int mlpcore_max_threads(void) { return omp_get_max_threads(); }
    /* An orphaned barrier: it binds to whichever parallel region the caller runs in (none: a no-op). */
    static void mlpcore_barrier(void) {
        #pragma omp barrier
    }
    #else
    #define MLPCORE_OPENMP 0
    static int mlpcore_team_size(void) { return 1; }
    static int mlpcore_member(void) { return 0; }
    static int mlpcore_max_threads(void) { return 1; }
    static void mlpcore_barrier(void) {}
    #endif
    """
    const int MLPCORE_OPENMP
    int mlpcore_team_size() noexcept nogil
    int mlpcore_member() noexcept nogil
    int mlpcore_max_threads() noexcept nogil
    void mlpcore_barrier() noexcept nogil


cdef enum:
    # The largest team the entry points take.
    MAX_TEAM = 64
    # Each worker's batch loss and count of rows classified right sit on its own cache line (8 doubles).
    LOSS_STRIDE = 8
    # Feature blocks start on multiples of 16 items: fewer cache lines shared by workers.
    BLOCK_ALIGN = 16


cdef inline void barrier(int team) noexcept nogil:
    """Wait for the team (see the top of this file for why it cannot deadlock). A team of one never calls
    OpenMP: the calling thread may belong to a team of someone else's, whose barrier this is not."""
    if team > 1:
        mlpcore_barrier()


cdef inline Py_ssize_t share_start(Py_ssize_t count, int member, int team) noexcept nogil:
    """Start of member's share when range(count) is cut into `team` near-equal consecutive parts (rows)."""
    return count * member // team


cdef inline Py_ssize_t block_start(Py_ssize_t width, int member, int team) noexcept nogil:
    """Start of member's block of `width` features: near-equal consecutive blocks starting on multiples of
    BLOCK_ALIGN (some empty when the width is small)."""
    if member >= team:
        return width
    return (width * member // team) // BLOCK_ALIGN * BLOCK_ALIGN


cdef inline bint split_by_rows(Py_ssize_t m, Py_ssize_t width, size_t item_size) noexcept nogil:
    """Whether a batch of m rows through layers up to `width` wide is shared out by rows (else by features).

    By rows from width / 3 rows in float32 and width / 9 in float64: the crossovers measured on the
    student's network (300 wide), two workers, in epochs. float32: features faster by 14% at 32 rows and
    4% at 64, rows by 3% at 128 and 17% at 600. float64: features faster by 6% at 32 (by 2% slower while
    the cores were close), rows by 8% at 48, 11% at 64 and 17% at 128. The products, not the data moving
    between cores, dominate sooner in float64, where they are twice as slow.
    """
    return m * (3 if item_size == 4 else 9) >= width
