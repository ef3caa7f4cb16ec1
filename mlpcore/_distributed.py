"""Data-parallel training across processes (Network.fit's `comm`): synchronous SGD as in Horovod and
PyTorch's DDP. Every process (rank) holds a shard of the rows; each batch, every rank computes the gradient
of its part of the global batch, the reducer sums the gradients across ranks in place, and every rank
applies the same update, so all hold the same weights.

`comm` is anything with mpi4py's Allreduce, Bcast, Get_rank and Get_size (duck-typed: tests pass an
in-process fake); mpi4py itself is never imported here. The compiled core calls the reducer once per
batch (src/_training.pxd) and knows nothing of processes.

The batches: every rank trains the same number of batches per epoch, n_batches = ceil(largest shard /
batch_size); rank r cuts its shard (shuffled with a seed of (seed, epoch, rank)) into n_batches parts of
near-equal size (numpy.array_split's), so a rank with fewer rows trains shorter batches, never repeated
rows: global batch b is the union of every rank's part b, and training equals training on the union of
the shards batch by batch, the gradient scaled by the global batch's weight (its row count without
sample weights). A shard with fewer rows than n_batches is refused.
"""
import numpy as np

REQUIRED = ("Allreduce", "Bcast", "Get_rank", "Get_size")


def check_comm(comm):
    missing = [name for name in REQUIRED if not callable(getattr(comm, name, None))]
    if missing:
        raise TypeError(f"comm must be an mpi4py communicator (or have its {', '.join(REQUIRED)}); "
                        f"{type(comm).__name__} has no {', '.join(missing)}")
    return comm


def _is_mpi4py(comm):
    """Whether comm is mpi4py's (whose module is loaded then), not a duck-typed stand-in."""
    return type(comm).__module__.startswith("mpi4py")


def _mpi_in_place(comm):
    """mpi4py's MPI.IN_PLACE for an mpi4py communicator, else None."""
    if _is_mpi4py(comm):
        from mpi4py import MPI
        return MPI.IN_PLACE
    return None


def allreduce_sum(comm, values):
    """The sum across ranks of a float64 array (a copy)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    total = np.empty_like(values)
    comm.Allreduce(values, total)
    return total


class Reducer:
    """What the compiled loop calls once per batch: sums `grads` in place across ranks, and the batch's
    (loss, correct). Never raises into the core: a failure is kept in `error` (and None returned, which
    stops the pass before the step), for train_epochs to raise."""

    def __init__(self, comm, grads):
        self.comm, self.grads = comm, grads
        self.in_place = _mpi_in_place(comm)
        self.received = None if self.in_place is not None else np.empty_like(grads)
        # The batch's (loss, correct) and their sums: float64 apart from the gradient's dtype, allocated once.
        self.scalars, self.summed = np.zeros(2), np.zeros(2)
        self.error = None

    def __call__(self, batch, loss, correct):
        try:
            if self.in_place is not None:
                self.comm.Allreduce(self.in_place, self.grads)
            else:
                self.comm.Allreduce(self.grads, self.received)
                np.copyto(self.grads, self.received)
            self.scalars[:] = loss, correct
            self.comm.Allreduce(self.scalars, self.summed)
            return float(self.summed[0]), float(self.summed[1])
        except BaseException as exc:  # noqa: BLE001  (raised again by train_epochs, with its traceback)
            self.error = exc
            return None


class Plan:
    """The batches of each epoch on this rank, and what their gradients are scaled by."""

    def __init__(self, comm, n_rows, batch_size, sample_weight, seed):
        self.comm, self.rank, self.size = comm, int(comm.Get_rank()), int(comm.Get_size())
        self.n_rows = n_rows
        self._unweighted_scales = None
        counts = np.zeros(self.size)
        counts[self.rank] = n_rows
        self.shards = allreduce_sum(comm, counts).astype(np.int64)
        self.n_batches = -(-int(self.shards.max()) // batch_size)
        if self.shards.min() < self.n_batches:
            raise ValueError(f"rank {int(self.shards.argmin())} holds {int(self.shards.min())} rows, fewer than the "
                             f"{self.n_batches} batches every rank trains per epoch (the largest shard, "
                             f"{int(self.shards.max())} rows, in batches of {batch_size}): give it more rows, or "
                             "use a larger batch_size")
        self.batch_size = -(-n_rows // self.n_batches)  # the largest part: the workspace's bound
        parts = np.full(self.n_batches, n_rows // self.n_batches)
        parts[:n_rows % self.n_batches] += 1
        self.batch_starts = np.concatenate([[0], np.cumsum(parts)]).astype(np.intp)
        self.sample_weight = sample_weight
        # Every rank shuffles with the same seed's stream of its own: rank 0's seed, told to all.
        chosen = np.array([seed if seed is not None else np.random.SeedSequence().entropy % 2**63],
                          dtype=np.int64)
        comm.Bcast(chosen, root=0)
        self.seed = int(chosen[0])
        self.total_rows = int(self.shards.sum())
        self.threads = threads_per_rank(comm)
        self.total_weight = (float(allreduce_sum(comm, [sample_weight.sum(dtype=np.float64)])[0])
                             if sample_weight is not None else float(self.total_rows))

    def order(self, epoch):
        """This rank's rows in the epoch's shuffled order: shuffled by (seed, epoch, rank)."""
        return np.random.default_rng([self.seed, epoch, self.rank]).permutation(self.n_rows).astype(np.intp)

    def batch_scales(self, order):
        """1 / the weight of each global batch (its rows' count without sample weights), for this rank's
        rows in `order` (empty: in their own order). Without sample weights the same every epoch."""
        if self.sample_weight is None:
            if self._unweighted_scales is None:
                self._unweighted_scales = _inverse(allreduce_sum(self.comm, np.diff(self.batch_starts)))
            return self._unweighted_scales
        weights = self.sample_weight[order] if order.size else self.sample_weight
        return _inverse(allreduce_sum(self.comm, np.add.reduceat(weights.astype(np.float64),
                                                                 self.batch_starts[:-1])))


def _inverse(totals):
    """1 / each total, 0 where it is 0 (a batch that weighs nothing)."""
    return np.where(totals > 0, 1 / np.where(totals > 0, totals, 1), 0.0)


def threads_per_rank(comm):
    """fit's threads=None on a rank: its share of this machine's cores, usable cores // the ranks on this
    machine (mpiexec starts every rank with all the cores in view: 2 ranks of 2 threads on 2 cores ran
    10x slower here than 2 of 1), within OMP_NUM_THREADS; None (every core) for a communicator that cannot
    tell its ranks on this machine (not mpi4py's)."""
    from . import _threads
    if not _is_mpi4py(comm):
        return None
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return max(1, _threads.default_threads() // local.Get_size())
    finally:
        local.Free()


def broadcast_state(comm, net, optimizer):
    """Rank 0's weights and optimizer state (moments, step count) on every rank."""
    comm.Bcast(net._params, root=0)
    for name in sorted(optimizer.state):
        comm.Bcast(optimizer.state[name], root=0)
    step = np.array([optimizer.step], dtype=np.int64)
    comm.Bcast(step, root=0)
    optimizer.step = int(step[0])


def reduce_validation(comm, loss, accuracy, n_rows):
    """(loss, accuracy) over every rank's validation rows, from each rank's means over its n_rows."""
    total = allreduce_sum(comm, [loss * n_rows, accuracy * n_rows, n_rows])
    return float(total[0] / total[2]), float(total[1] / total[2])
