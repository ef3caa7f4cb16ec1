"""The thread policy: how many cores this process may use, how a compiled call's threads are split between a
team of workers and BLAS, and BLAS's thread limit. Called by mlpcore's own modules (the network, its training
loop, the command's `info`); nothing else sets threads."""
import collections
import contextlib
import os
import threading

import numpy as np

from . import _compiled

# Training shares each batch out between its threads only if each gets at least this many rows; below that,
# one thread trains and BLAS gets the threads (its products on a few rows are too small to split well).
_MIN_ROWS_PER_WORKER = 16

_blas_controller = None


def usable_cores():
    """The cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def default_threads():
    """What threads=None means: every core this process may use, but no more than the OpenMP thread limit
    in force (OMP_NUM_THREADS, or a limit set through threadpoolctl). That limit is how joblib's loky
    workers and Dask's are told how many threads each may run: two parallel fits on two cores then run
    one thread each, not two."""
    if _compiled.OPENMP:
        limit = _compiled.openmp_max_threads()
    else:  # BLAS gets the threads: the same variable, as OpenMP would read it
        try:
            limit = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
        except ValueError:
            limit = usable_cores()
    return max(1, min(usable_cores(), limit))


def blas_threads(threads, strict=False):
    """A context manager holding the process-wide BLAS thread limit for its duration: `threads` (every core
    this process may use if None) is this call's wish.

    One limit is in force while any mlpcore call runs: the smallest wish of the `strict` calls running
    (training: its results depend on BLAS's thread count, and a team needs BLAS on one thread), or when
    none runs, the smallest wish of the others (inference). No call ever waits for another (so none can
    deadlock or stall the rest); a call may run at a smaller limit than it wished while others run (a
    predict during a team's fit runs on one BLAS thread). The thread counts from before the first call
    are restored when the last one ends, whichever thread it runs in."""
    return _BLAS_LIMIT.hold(default_threads() if threads is None else threads, strict)


class _BlasLimit:
    """The one BLAS thread limit in force while any mlpcore call runs (see blas_threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._wishes = collections.Counter()   # (strict, threads) of the calls running
        self._limit = None                     # the limit in force while any runs
        self._saved = None                     # each library's thread count before the first

    def _in_force(self):
        strict = [threads for (is_strict, threads), n in self._wishes.items() if is_strict and n]
        return min(strict or [threads for (_, threads), n in self._wishes.items() if n])

    @contextlib.contextmanager
    def hold(self, threads, strict):
        global _blas_controller
        wish, entered = (bool(strict), threads), False
        try:
            with self._lock:
                if _blas_controller is None:
                    _blas_controller = _find_blas_controller()  # inspecting the libraries costs ~ms: once
                if not +self._wishes:
                    self._saved = [lib.num_threads for lib in _blas_controller.lib_controllers]
                self._wishes[wish] += 1
                entered = True  # no call between the count and this: an interrupt cannot split them
                self._apply()
            yield self._limit
        finally:
            if entered:
                with self._lock:
                    self._wishes[wish] -= 1
                    self._apply()

    def _apply(self):
        """Put the limit in force (or, when no call runs, what was there before) into the libraries."""
        if not +self._wishes:
            if self._saved is not None:
                _set_threads(_blas_controller, self._saved)
            self._limit = self._saved = None
            return
        limit = self._in_force()
        if limit != self._limit:
            _set_threads(_blas_controller, [limit] * len(_blas_controller.lib_controllers))
            self._limit = limit

    def _forget(self):
        """In a forked child: the parent's calls do not run here."""
        self.__init__()


_BLAS_LIMIT = _BlasLimit()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_BLAS_LIMIT._forget)


def _set_threads(controller, counts):
    """Set each BLAS library's thread count, from whichever thread calls (under _BlasLimit's lock).

    threadpoolctl (>= 3.6) ignores OpenBLAS's set_num_threads from any thread but the first that called
    it, to keep threads from fighting over the process-wide setting; so a limit restored by the last
    mlpcore call, made in another thread, was dropped and OpenBLAS stayed at 1 thread. Here one lock
    already serialises every change, so its unguarded setter is used where it has one."""
    for lib, count in zip(controller.lib_controllers, counts):
        getattr(lib, "_real_set_num_threads", lib.set_num_threads)(count)


class ReadWriteLock:
    """A Network's lock: compiled calls that read its weights share it, those that write them (training)
    hold it alone, so a reader sees the weights between two compiled calls, never half-written. Writers
    go first: a reader arriving while one waits waits too. A forked child starts with it free (the
    parent's holders do not run there)."""

    def __init__(self):
        self._pid = os.getpid()
        self._changed = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    def _check_process(self):
        if self._pid != os.getpid():
            self.__init__()

    @contextlib.contextmanager
    def reading(self):
        self._check_process()
        entered = False
        try:
            with self._changed:
                while self._writing or self._writers_waiting:
                    self._changed.wait()
                self._readers += 1
                entered = True  # no call in between: an interrupt cannot leave a reader counted
            yield
        finally:
            if entered:
                with self._changed:
                    self._readers -= 1
                    if self._readers == 0:
                        self._changed.notify_all()

    @contextlib.contextmanager
    def writing(self):
        self._check_process()
        entered = False
        try:
            with self._changed:
                self._writers_waiting += 1
                try:
                    while self._writing or self._readers:
                        self._changed.wait()
                finally:
                    self._writers_waiting -= 1
                self._writing = entered = True
            yield
        finally:
            if entered:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()


def _find_blas_controller():
    """A threadpoolctl controller for the BLAS behind scipy.linalg.cython_blas.

    NumPy's wheels bundle a private BLAS that mlpcore never calls; setting its thread count wakes its
    idle threads, which then compete for the cores with the BLAS mlpcore does call. So every BLAS except
    one inside NumPy's own folders is selected (all of them, should NumPy's be the only one).
    """
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    numpy_dir = os.path.dirname(os.path.realpath(np.__file__))
    numpy_dirs = (numpy_dir + os.sep, numpy_dir + ".libs" + os.sep)
    others = [lib.filepath for lib in controller.lib_controllers
              if lib.user_api == "blas" and not os.path.realpath(lib.filepath).startswith(numpy_dirs)]
    return controller.select(filepath=others) if others else controller.select(user_api="blas")


# GNU libgomp is not fork-safe: a child forked after this process has run a team hangs in its own first
# team. So such a child runs one worker (with BLAS's threads) from then on.
_teams_forbidden = False
_team_started = False


def _after_fork_in_child():
    global _teams_forbidden
    _teams_forbidden = _teams_forbidden or _team_started


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def team(threads, batch_size):
    """(workers, BLAS threads) for a compiled call on batches of `batch_size` rows, on `threads` threads
    (None: every usable core).

    The threads are a team of workers that share out each batch's work, each calling BLAS on its share
    with BLAS itself on one thread: the gather, the elementwise passes and the head run in parallel too,
    not only the products, and the work is split so that little data moves between cores (see _compiled).
    The two kinds of threads are never nested. When the batch is too small to share out, one worker runs
    and BLAS gets the threads. There are never more workers than usable cores: a worker waiting at a
    barrier spins, and one without a core of its own stalls the others.
    """
    global _team_started
    threads = default_threads() if threads is None else threads
    if not _compiled.OPENMP or _teams_forbidden:
        return 1, threads
    workers = min(threads, usable_cores(), _compiled.MAX_WORKERS, max(1, batch_size // _MIN_ROWS_PER_WORKER))
    if workers > 1:
        _team_started = True
        return workers, 1
    return 1, threads


def pass_workers(threads):
    """Workers for one pass over memory (fit's check of X), on `threads` threads (None: every usable
    core): a team when it can run one, since one core does not use up the memory bandwidth (2 threads
    checked Fashion-MNIST's 60,000 x 784 float32 in 7 ms here, one in 14)."""
    global _team_started
    threads = default_threads() if threads is None else threads
    if not _compiled.OPENMP or _teams_forbidden:
        return 1
    workers = min(threads, usable_cores(), _compiled.MAX_WORKERS)
    _team_started = _team_started or workers > 1
    return workers


def inference_team(threads, chunk, on_fits_team):
    """(workers, BLAS threads) for inference: BLAS's threads, except inside fit (on_fits_team), on fit's
    team.

    Measured: a team started within ~0.1 s after a multi-threaded BLAS call shares the cores with
    OpenBLAS's worker thread, still spinning, and a 10,000-row predict_proba then takes twice as long;
    standalone, the team gains nothing over BLAS's own threads on the forward pass. Inside a fit that
    trains on a team, BLAS stays single-threaded throughout, so its threads never wake to slow the next
    epoch.
    """
    return team(threads, chunk) if on_fits_team else (1, threads)
