"""Data-parallel fit (comm=): with an in-process fake of mpi4py's communicator, ranks as threads. Every
rank ends with the same weights, bit for bit, equal to training on the union of the shards in the same
global batches (the reference, batch by batch); losses and validation are every rank's; a failing rank
stops every rank."""
import threading

import numpy as np
import pytest

import mlpcore
from mlpcore import optimizers, reference
from conftest import make_problem, reference_step, relative_error

SIZES = [6, 16, 12, 3]
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


class FakeWorld:
    """`size` ranks in one process: collective calls meet at a barrier; sums in rank order."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots = [None] * size
        self.calls = 0

    def comms(self):
        return [FakeComm(self, rank) for rank in range(self.size)]


class FakeComm:
    def __init__(self, world, rank):
        self.world, self.rank = world, rank

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.world.size

    def Allreduce(self, sendbuf, recvbuf):
        world = self.world
        world.slots[self.rank] = np.array(sendbuf, copy=True)
        world.barrier.wait()
        total = world.slots[0].copy()
        for other in world.slots[1:]:
            total += other
        world.calls += self.rank == 0
        world.barrier.wait()  # every rank has read the slots before they are reused
        recvbuf[...] = total

    def Bcast(self, buf, root=0):
        world = self.world
        if self.rank == root:
            world.slots[root] = np.array(buf, copy=True)
        world.barrier.wait()
        if self.rank != root:
            buf[...] = world.slots[root]
        world.barrier.wait()


def run_ranks(world, work, abort=True):
    """work(rank, comm) on a thread per rank; (results, errors) by rank. A rank that raises aborts the
    others' collective calls (as MPI_Abort would), unless `abort` is False."""
    results, errors = [None] * world.size, [None] * world.size

    def run(rank, comm):
        try:
            results[rank] = work(rank, comm)
        except BaseException as exc:  # noqa: BLE001
            errors[rank] = exc
            if abort:
                world.barrier.abort()
    threads = [threading.Thread(target=run, args=(rank, comm)) for rank, comm in enumerate(world.comms())]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


def shards(dtype, sizes_of_shards, targets="labels", seed=1):
    X, y = make_problem(SIZES, sum(sizes_of_shards), dtype, targets, seed=seed)
    bounds = np.cumsum([0] + list(sizes_of_shards))
    return [(X[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def reference_on_the_union(weights, parts, optimizer, epochs, batch_size, seed, alpha=0.0, sample_weights=None,
                           shuffle=True):
    """Training on the union of the shards, global batch by global batch (reference.distributed_batches),
    in the reference; `sample_weights` one array per shard. Returns the epochs' losses."""
    state = {"m": [np.zeros_like(W) for W in weights], "v": [np.zeros_like(W) for W in weights]}
    shard_weights = sample_weights or [np.ones(len(X)) for X, _ in parts]
    step, losses = 0, []
    for epoch in range(1, epochs + 1):
        total = 0.0
        for rows in reference.distributed_batches([len(X) for X, _ in parts], batch_size, seed, epoch, shuffle):
            X_b = np.concatenate([X[r] for (X, _), r in zip(parts, rows)])
            y_b = np.concatenate([y[r] for (_, y), r in zip(parts, rows)])
            w_b = np.concatenate([w[r] for w, r in zip(shard_weights, rows)])
            value, grads = reference.loss_and_gradients(weights, X_b, y_b, alpha=alpha,
                                                        sample_weight=w_b if sample_weights else None)
            penalty = 0.5 * alpha * sum(float((W[:-1] ** 2).sum()) for W in weights) / w_b.sum()
            total += (value - penalty) * w_b.sum()
            step += 1
            reference_step(optimizer, weights, grads, state, step, optimizer.lr)
        losses.append(total / sum(w.sum() for w in shard_weights))
    return losses


OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(lr=0.1),
    "momentum": lambda: optimizers.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.Adam(lr=0.01),
}


@pytest.mark.parametrize("team", [1, 2], ids=["1 thread a rank", "a team of 2 a rank"])
@pytest.mark.parametrize("shard_sizes", [(30, 30), (37, 21, 29)], ids=["2 equal", "3 unequal"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_rank_ends_equal_to_training_on_the_union(name, shard_sizes, team, dtype, monkeypatch):
    from conftest import fake_cores
    from mlpcore import _threads
    fake_cores(monkeypatch, 64)
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)  # batches of 4 rows shared out too
    parts = shards(dtype, shard_sizes)
    world = FakeWorld(len(parts))
    start = mlpcore.Network(SIZES, dtype=dtype, seed=3)

    def work(rank, comm):
        # Rank 0 starts from `start`'s weights, the others from weights of their own: rank 0's are broadcast.
        net = mlpcore.Network(SIZES, dtype=dtype, seed=3 if rank == 0 else 100 + rank)
        return net, net.fit(*parts[rank], epochs=3, batch_size=4, optimizer=OPTIMIZERS[name](), seed=7,
                            threads=team, comm=comm, alpha=0.01)
    results, errors = run_ranks(world, work)
    assert errors == [None] * len(parts)
    weights = [net.get_weights() for net, _ in results]
    for other in weights[1:]:
        for W, W0 in zip(other, weights[0]):
            np.testing.assert_array_equal(W, W0)  # bit for bit on every rank
    ref_weights = start.get_weights()
    losses = reference_on_the_union(ref_weights, parts, OPTIMIZERS[name](), 3, 4, 7, alpha=0.01)
    for W, ref_W in zip(weights[0], ref_weights):
        assert relative_error(W, ref_W) <= TOLERANCE[dtype]
    for _, history in results:
        np.testing.assert_allclose(history.loss, losses, rtol=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("shuffle, weighted, shard_sizes", [(True, True, (26, 18)), (False, False, (23, 17)),
                                                            (False, True, (23, 17))],
                         ids=["sample weights", "unshuffled", "unshuffled, sample weights"])
def test_sample_weights_and_unshuffled_rows_train_the_union_s_batches(shuffle, weighted, shard_sizes):
    """Sample weights scale by the global batch's weight; unshuffled, each rank trains its rows in order."""
    parts = shards(np.float64, shard_sizes)
    weights = [np.random.default_rng(rank).random(len(X)) for rank, (X, _) in enumerate(parts)]
    world = FakeWorld(2)

    def work(rank, comm):
        net = mlpcore.Network(SIZES, dtype="float64", seed=3)
        history = net.fit(*parts[rank], epochs=2, batch_size=5, lr=0.2, seed=4, threads=1, comm=comm,
                          shuffle=shuffle, sample_weight=weights[rank] if weighted else None)
        return net.get_weights(), history.loss
    results, errors = run_ranks(world, work)
    assert errors == [None, None]
    # The reference on the union: each global batch's loss is its rows' weighted mean.
    ref = mlpcore.Network(SIZES, dtype="float64", seed=3).get_weights()
    losses = reference_on_the_union(ref, parts, optimizers.SGD(lr=0.2), 2, 5, 4, shuffle=shuffle,
                                    sample_weights=weights if weighted else None)
    for W, ref_W in zip(results[0][0], ref):
        assert relative_error(W, ref_W) <= 1e-10
    np.testing.assert_allclose(results[0][1], losses, rtol=1e-10)


def test_validation_and_early_stopping_are_every_rank_s():
    parts = shards(np.float64, (40, 24))
    vals = shards(np.float64, (10, 30), seed=2)
    world = FakeWorld(2)

    def work(rank, comm):
        net = mlpcore.Network(SIZES, dtype="float64", seed=3)
        return net.fit(*parts[rank], epochs=30, batch_size=8, lr=0.5, seed=0, threads=1, comm=comm,
                       validation_data=vals[rank], early_stopping=mlpcore.EarlyStopping(patience=2))
    results, errors = run_ranks(world, work)
    assert errors == [None, None]
    h0, h1 = results
    assert h0.val_loss == h1.val_loss and h0.stopped_epoch == h1.stopped_epoch
    # The validation loss is over both ranks' rows: the row-weighted mean of each rank's own.
    union = mlpcore.Network(SIZES, dtype="float64", seed=3)
    assert h0.val_loss[0] != pytest.approx(union.loss(*vals[0]))  # not rank 0's alone


def test_a_failing_rank_stops_every_rank_and_keeps_the_last_finished_epoch():
    parts = shards(np.float64, (30, 30))
    world = FakeWorld(2)
    nets = [mlpcore.Network(SIZES, dtype="float64", seed=3) for _ in range(2)]

    def work(rank, comm):
        def fail(history):
            if rank == 1 and history.epoch[-1] == 2:
                raise RuntimeError("rank 1 failed")
        return nets[rank].fit(*parts[rank], epochs=5, batch_size=6, seed=0, threads=1, comm=comm,
                              on_epoch_end=fail)
    results, errors = run_ranks(world, work)
    assert isinstance(errors[1], RuntimeError)
    assert isinstance(errors[0], threading.BrokenBarrierError)
    for net in nets:
        assert np.isfinite(net.get_weights()[0]).all()


def test_a_shard_smaller_than_the_batches_is_refused():
    parts = shards(np.float64, (40, 3))
    world = FakeWorld(2)
    results, errors = run_ranks(world, lambda rank, comm: mlpcore.Network(SIZES, dtype="float64").fit(
        *parts[rank], epochs=1, batch_size=8, threads=1, comm=comm), abort=False)
    assert all(isinstance(e, ValueError) and "rank 1 holds 3 rows" in str(e) for e in errors)


def test_comm_must_look_like_mpi4py_s():
    X, y = make_problem(SIZES, 10, np.float64)
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        mlpcore.Network(SIZES).fit(X, y, epochs=1, comm=object())


def test_the_global_batches_cover_every_row_once_in_parts_of_at_most_batch_size():
    batches = reference.distributed_batches([37, 21, 29], 4, seed=7, epoch=2)
    assert len(batches) == 10  # ceil(37 / 4)
    for rank, n in enumerate([37, 21, 29]):
        rows = np.concatenate([b[rank] for b in batches])
        assert sorted(rows) == list(range(n))
        assert all(1 <= len(b[rank]) <= 4 for b in batches)
