"""The thread policy: how many cores this process may use, how a compiled call's threads are split between a
team of workers and BLAS, and BLAS's thread limit. Called by mlpcore's own modules (the network, its training
loop, the command's `info`); nothing else sets threads."""
import os

import numpy as np

from . import _compiled

# Training shares each batch out between its threads only if each gets at least this many rows; below that,
# one thread trains and BLAS gets the threads (its products on a few rows are too small to split well).
_MIN_ROWS_PER_WORKER = 16

_blas_controller = None


def usable_cores():
    """The cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def blas_threads(threads):
    """A context manager limiting the BLAS that mlpcore calls to `threads` threads for its duration (every
    core this process may use if None)."""
    global _blas_controller
    if _blas_controller is None:
        _blas_controller = _find_blas_controller()  # inspecting the loaded libraries costs ~ms: once
    if threads is None:
        threads = usable_cores()
    return _blas_controller.limit(limits=threads, user_api="blas")


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
    threads = usable_cores() if threads is None else threads
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
    threads = usable_cores() if threads is None else threads
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
