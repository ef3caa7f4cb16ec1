"""The `mlpcore` command: train the student's network on Fashion-MNIST, evaluate a saved model, show setup."""
# The docstring above is also --help's description. Run as `mlpcore` or `python -m mlpcore`. Beside the
# public API it uses _validation's rules for its arguments, INITS for --init, _threads for `info`.
import argparse
import csv
import datetime
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from . import _validation as check
from ._files import atomic_write
from ._initialisation import INITS
from .optimizers import NAMES
from .schedules import NAMES as SCHEDULES

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "seconds")
DEFAULT_HIDDEN = (300, 300)
# The training recipe of `mlpcore train` without flags: the one that took the student's network highest
# within about 25 s of training on a 2-core machine (README, "Recipes"). Every entry is a flag's default.
RECIPE = {"optimizer": "nesterov", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
          "warmup": 0.03, "batch_size": 128, "epochs": 30, "init": "he", "dropout": 0.0, "label_smoothing": 0.0,
          "val_split": 0.0, "patience": None}
# --preset NAME: settings to compare with, which the flags given alongside override.
PRESETS = {
    # The original post's: plain SGD at lr 0.001 on N(0, 0.01) weights, batches of 600.
    "student": {"optimizer": "sgd", "lr": 0.001, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
                "warmup": 0.0, "batch_size": 600, "epochs": 20, "init": "normal", "dropout": 0.0,
                "label_smoothing": 0.0, "val_split": 0.0, "patience": None},
}


class UsageError(Exception):
    """A bad argument or missing file: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


# The argparse types: the rules are _validation's, the messages the command's own (they quote what was
# typed).

def _argument(convert, rule, what, what_if_wrong=None):
    """An argparse type: `convert` the text (int, float), then apply _validation's `rule`; errors say what
    was expected (`what`, or `what_if_wrong` when the text converted but broke the rule)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            return rule(value)
        except ValueError:
            shown = value if convert is int else text  # an integer as read ("-01" is -1), a number as typed
            raise argparse.ArgumentTypeError(f"expected {what_if_wrong or what}, got {shown}") from None
    return parse


def _integer_at_least(minimum, what):
    """An argparse type: an integer >= minimum, described as `what` in errors."""
    return _argument(int, lambda value: check.check_integer_at_least(value, what, minimum), what)


def _number_in(low, high, what, high_open=False):
    """An argparse type: a real number in [low, high] ([low, high) with high_open), `what` in errors."""
    return _argument(float, lambda value: check.check_real(value, what, low=low, high=high,
                                                           high_open=high_open), what)


_positive_int = _integer_at_least(1, "a positive integer")
_threads_count = _argument(int, check.check_threads, "a positive integer",
                           f"a positive integer up to {check.MAX_THREADS}")
_seed = _integer_at_least(0, "a non-negative integer")
_learning_rate = _argument(float, check.check_learning_rate, "a positive number", "a finite number > 0")


def _build_parser():
    parser = _Parser(prog="mlpcore", description=__doc__)
    defaults = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--version", action="version", version=f"mlpcore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data_help = ("folder with the four IDX files (train-images-idx3-ubyte[.gz] ...): Fashion-MNIST or any "
                 "data set in its format, e.g. MNIST; checked for structure, not checksums. Default: "
                 "search the usual places (see `mlpcore info`)")
    threads_help = "threads (default: every core this process may use)"

    train = commands.add_parser("train", help="train a network on Fashion-MNIST", formatter_class=defaults,
                                description="Train a network on Fashion-MNIST and save it with its history.")
    recipe = "default: the recipe's (see --preset and README, Recipes)"
    train.add_argument("--preset", choices=sorted(PRESETS),
                       help="start from a preset's settings (student: the original post's plain SGD, lr 0.001, "
                            "N(0, 0.01) weights, batches of 600); the flags given override it")
    train.add_argument("--epochs", type=_positive_int, help=f"passes over the data ({recipe}: "
                                                            f"{RECIPE['epochs']})")
    train.add_argument("--optimizer", choices=sorted(NAMES), help=f"{recipe}: {RECIPE['optimizer']}")
    train.add_argument("--lr", type=_learning_rate, help=f"learning rate ({recipe}: {RECIPE['lr']})")
    train.add_argument("--momentum", type=_number_in(0, None, "a number >= 0"),
                       help="momentum of sgd, momentum and nesterov (default: 0 for sgd, 0.9 for the others)")
    train.add_argument("--weight-decay", type=_number_in(0, None, "a number >= 0"),
                       help=f"L2 weight decay, decoupled for adamw; never on biases ({recipe}: "
                            f"{RECIPE['weight_decay']})")
    train.add_argument("--schedule", choices=sorted(SCHEDULES),
                       help=f"learning-rate schedule, per batch ({recipe}: {RECIPE['schedule']})")
    train.add_argument("--warmup", type=_number_in(0, 1, "a fraction in [0, 1)", high_open=True),
                       help="fraction of training spent warming the cosine schedule up from 0")
    train.add_argument("--dropout", type=_number_in(0, 1, "a fraction in [0, 1)", high_open=True),
                       help=f"dropout on the hidden layers' outputs while training ({recipe}: "
                            f"{RECIPE['dropout']})")
    train.add_argument("--label-smoothing", type=_number_in(0, 1, "a fraction in [0, 1]"),
                       help=f"train on (1 - eps) one-hot + eps / 10 ({recipe}: {RECIPE['label_smoothing']})")
    train.add_argument("--val-split", type=_number_in(0, 1, "a fraction in [0, 1)", high_open=True),
                       help="fraction of the training images held out for validation (stratified)")
    train.add_argument("--patience", type=_positive_int,
                       help="stop after this many epochs without a better validation loss (training loss "
                            "without --val-split), keeping the best epoch's model")
    train.add_argument("--batch-size", type=_positive_int, help=f"rows per step ({recipe}: "
                                                                f"{RECIPE['batch_size']})")
    train.add_argument("--hidden", type=_positive_int, nargs="*", default=list(DEFAULT_HIDDEN),
                       metavar="N", help="hidden layer sizes (default: 300 300; none: softmax regression)")
    train.add_argument("--dtype", choices=[dtype.name for dtype in check.SUPPORTED_DTYPES], default="float32")
    train.add_argument("--init", choices=INITS, help=f"initial weights ({recipe}: {RECIPE['init']})")
    train.add_argument("--seed", type=_seed, default=0, help="seed of the initial weights and shuffling")
    train.add_argument("--data", type=Path, help=data_help)
    train.add_argument("--out", type=Path, help="output folder (default: a new folder under runs/)")
    train.add_argument("--force", action="store_true", help="replace a model already in --out")
    train.add_argument("--threads", type=_threads_count, help=threads_help)
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training on MPI, started as `mpiexec -n N mlpcore train --distributed`: "
                            "each rank trains on its share of the rows, rank 0 alone prints and saves "
                            "(pip install 'mlpcore[mpi]')")
    train.add_argument("--monitor", action="store_true",
                       help="watch training's health after each epoch (mlpcore.doctor.Monitor): dead ReLUs, "
                            "update-to-weight ratios, a loss stuck at chance or growing")

    evaluate = commands.add_parser("evaluate", help="evaluate a saved model on the test set",
                                   description="Test loss, accuracy, per-class accuracy and confusion "
                                               "matrix of a saved model.")
    evaluate.add_argument("model", type=Path, help="a model.npz written by `mlpcore train`")
    evaluate.add_argument("--data", type=Path, help=data_help)
    evaluate.add_argument("--threads", type=_threads_count, help=threads_help)

    doctor = commands.add_parser(
        "doctor", help="find the bug in a hand-written backprop, batch maker or data set",
        description="Run mlpcore.doctor's checks and print what they find, each with its fix. FUNCTION(W, X, Y) "
                    "must return (loss, grads) for a ReLU network with a softmax output: W a list of "
                    "(n_in + 1, n_out) arrays whose last row is the bias (a column of ones appended to each "
                    "layer's input), X of shape (m, n_in), Y one-hot rows (or integer labels with --targets "
                    "labels); loss the mean cross-entropy over the batch, grads its gradients, shaped as W. "
                    "Exit status: 0 when nothing is wrong, 1 when something is, 2 when the check could not run.",
        epilog="examples: mlpcore doctor examples/student.py:backprop --sizes 784 300 300 10;  "
               "mlpcore doctor --batches examples/student.py:make_batches;  "
               "mlpcore doctor --data /usr/share/datasets/fashion-mnist")
    doctor.add_argument("function", nargs="?", metavar="FILE.py:FUNCTION",
                        help="a function (weights, X, Y) -> (loss, grads) to check against the exact gradients")
    doctor.add_argument("--sizes", type=_positive_int, nargs="+", default=[784, 300, 300, 10], metavar="N",
                        help="the network's layer sizes, input and output included (default: 784 300 300 10)")
    doctor.add_argument("--targets", choices=["onehot", "labels"], default="onehot",
                        help="what the function (or the batch maker) gets as Y: one-hot rows or integer labels")
    doctor.add_argument("--batches", metavar="FILE.py:FUNCTION",
                        help="a batch maker (X, Y) -> iterable of (Xb, Yb) for one epoch, to check instead")
    doctor.add_argument("--rows", type=_positive_int, default=6000,
                        help="rows given to the batch maker (default: 6000, of --sizes[0] features)")
    doctor.add_argument("--data", type=Path, metavar="DIR|FILE.npz",
                        help="check a data set instead: a folder of IDX files (as stored: raw pixels), or an "
                             ".npz with arrays X and y (and X_test)")
    doctor.add_argument("--seed", type=_seed, default=0, help="seed of the doctor's probes")

    commands.add_parser("info", help="version, BLAS and where the data is",
                        description="Show the mlpcore version, the BLAS in use and where Fashion-MNIST is.")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (unscaled inputs, training that diverges) as one line each, without a source location (rank
    0's alone in a distributed run)."""
    if not _OUTPUT["quiet"]:
        print(f"mlpcore: warning: {message}", file=sys.stderr, flush=True)


def main(argv=None):
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv):
    args = None
    try:
        args = _build_parser().parse_args(argv)
        code = {"train": _train, "evaluate": _evaluate, "doctor": _doctor, "info": _info}[args.command](args)
    except BaseException as exc:
        if getattr(args, "comm", None) is None:
            return _report(exc)
        try:
            code = _report(exc)
        except BaseException:
            traceback.print_exc()
            code = 1
    comm = getattr(args, "comm", None)
    if comm is not None and code != 0:
        # One rank that stops early would leave the others waiting in their next all-reduce forever:
        # end every rank (what `python -m mpi4py` does for an uncaught exception).
        comm.Abort(code)
    return code


def _report(exc):
    """Say what went wrong (no traceback for the user's mistakes); the exit status. Anything else is
    raised again."""
    try:
        raise exc
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        # Missing or unreadable files, folders that cannot be written, bad models and data: what went
        # wrong, without a traceback.
        print(f"mlpcore: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"mlpcore: error: not enough memory{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlpcore: interrupted", file=sys.stderr)
        return 130


# -------------------------------------------------------------------------------------------------
# Data

def _load_data(data_dir, dtype):
    from .datasets import DatasetNotFoundError, load_fashion_mnist

    # A folder named with --data may hold another data set in the same format (MNIST): its structure is
    # checked, but not the Fashion-MNIST checksums. Data found otherwise is verified, as by the library.
    try:
        return load_fashion_mnist(data_dir, dtype=dtype, verify=data_dir is None)
    except DatasetNotFoundError as exc:
        if data_dir is None and not os.environ.get("MLPCORE_DATA"):
            raise  # the full message: every place looked in, and how to get the data
        first_line = str(exc).splitlines()[0].replace("given by path argument", "given by --data")
        raise UsageError(f"mlpcore: error: {first_line}") from None


# -------------------------------------------------------------------------------------------------
# train

def _mpi_world():
    """mpi4py's COMM_WORLD, or a UsageError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise UsageError("mlpcore train: --distributed needs mpi4py: pip install 'mlpcore[mpi]'") from None
    except RuntimeError as exc:  # mpi4py's wheel without an MPI library to load
        raise UsageError(f"mlpcore train: --distributed found no MPI library ({exc}): pip install 'mlpcore[mpi]' "
                         "(MPICH from PyPI), or load your cluster's MPI") from None
    return MPI.COMM_WORLD


def _shard(arrays, rank, size):
    """Rank `rank`'s share of every array's rows: consecutive, near-equal (rows n * r // size onwards; unlike
    numpy.array_split, the larger shares come last)."""
    n = len(arrays[0])
    start, stop = n * rank // size, n * (rank + 1) // size
    return [a[start:stop] for a in arrays]


def _new_run_dir():
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / stamp
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{stamp}-{n}")
    return path


def _settings(args):
    """The training settings: the preset's (or the recipe's), overridden by the flags given. A flag
    --optimizer resets the learning rate, momentum and weight decay not given to that optimizer's own."""
    settings = dict(PRESETS[args.preset] if args.preset else RECIPE)
    given = {name: getattr(args, name) for name in settings if getattr(args, name, None) is not None}
    if "optimizer" in given:
        settings.update(lr=None, momentum=None, weight_decay=None)
    settings.update(given)
    return settings


def _optimizer(settings):
    from . import optimizers

    name, lr, weight_decay = settings["optimizer"], settings["lr"], settings["weight_decay"]
    if name in ("sgd", "momentum", "nesterov"):
        momentum = settings["momentum"]
        if momentum is None:
            momentum = 0.0 if name == "sgd" else 0.9
        return optimizers.SGD(lr=lr or 0.1, momentum=momentum, nesterov=name == "nesterov",
                              weight_decay=weight_decay or 0.0)
    kind = optimizers.AdamW if name == "adamw" else optimizers.Adam
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    return kind(lr=lr or 0.001, **extra)


def _train(args):
    from . import EarlyStopping, Network, TrainingDiverged, _distributed, schedules

    comm, rank, size = None, 0, 1
    if args.distributed:
        comm = args.comm = _mpi_world()
        rank, size = comm.Get_rank(), comm.Get_size()
    _OUTPUT["quiet"] = rank != 0  # rank 0 alone prints and saves
    out = None  # rank 0 alone writes
    if rank == 0:
        out = args.out if args.out is not None else _new_run_dir()
        if out.exists() and not out.is_dir():
            raise UsageError(f"mlpcore train: --out {out} exists and is not a folder")
        if (out / "model.npz").exists() and not args.force:
            raise UsageError(f"mlpcore train: {out} already holds a model: choose another --out, or add "
                             "--force to replace it")
    chosen = _settings(args)
    optimizer = _optimizer(chosen)
    schedule = schedules.Cosine(warmup=chosen["warmup"]) if chosen["schedule"] == "cosine" else None
    epochs, batch_size, val_split = chosen["epochs"], chosen["batch_size"], chosen["val_split"]
    early_stopping = None
    if chosen["patience"] is not None:
        early_stopping = EarlyStopping(monitor="val_loss" if val_split > 0 else "loss",
                                       patience=chosen["patience"])
    (X_train, y_train), (X_test, y_test) = _load_data(args.data, args.dtype)
    n_train = len(X_train)
    if comm is not None:
        X_train, y_train = _shard([X_train, y_train], rank, size)
        X_test, y_test = _shard([X_test, y_test], rank, size)
    sizes = [X_train.shape[1], *args.hidden, 10]
    net = Network(sizes, dtype=args.dtype, init=chosen["init"], seed=args.seed)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    settings = {"layer_sizes": sizes, "epochs": epochs, "optimizer": repr(optimizer), "lr": optimizer.lr,
                "schedule": repr(schedule or schedules.Constant()), "batch_size": batch_size,
                "dropout": chosen["dropout"], "label_smoothing": chosen["label_smoothing"],
                "val_split": val_split, "patience": chosen["patience"], "preset": args.preset,
                "dtype": args.dtype, "init": chosen["init"], "seed": args.seed,
                "data": str(args.data) if args.data else None, "n_train": n_train, "ranks": size}
    _say(f"mlpcore {__version__}: training {'-'.join(map(str, sizes))} ({args.dtype}) on "
          f"{round(n_train * (1 - val_split))} images, batches of {batch_size}"
          + (f" per rank on {size} ranks" if comm is not None else "")
          + f", {optimizer}, {settings['schedule']} schedule, {epochs} epochs")

    rows = []
    progress = _EpochProgress()
    width = len(str(epochs))

    def on_epoch_end(history):
        progress.close()
        if val_split > 0:
            test_loss, test_accuracy = net.loss(X_test, y_test), net.score(X_test, y_test)
            if comm is not None:
                test_loss, test_accuracy = _distributed.reduce_validation(comm, test_loss, test_accuracy,
                                                                          len(X_test))
        else:
            test_loss, test_accuracy = history.val_loss[-1], history.val_accuracy[-1]
        row = dict(zip(HISTORY_FIELDS, (history.epoch[-1], history.loss[-1], history.accuracy[-1], test_loss,
                                        test_accuracy, history.lr[-1], history.seconds[-1])))
        validation = (f"  val loss {history.val_loss[-1]:.4f}  val accuracy "
                      f"{100 * history.val_accuracy[-1]:.2f}%" if val_split > 0 else "")
        _say(f"epoch {row['epoch']:>{width}}/{epochs}  train loss {row['train_loss']:.4f}{validation}  "
              f"test loss {row['test_loss']:.4f}  test accuracy {100 * row['test_accuracy']:.2f}%  "
              f"{row['seconds']:.1f} s", flush=True)
        rows.append(row)  # last: an epoch interrupted before this is not kept (fit rolls it back)

    if args.monitor:
        on_epoch_end = _Monitored(on_epoch_end)
    stopped = None  # why training ended early, if it did
    history = None
    # From here until the model and history are written, Ctrl-C, SIGTERM and SIGHUP only set a flag; fit
    # stops at the next batch boundary (its callbacks raise KeyboardInterrupt), and one more signal
    # during the save cannot cut it short.
    signalled = _StopOnSignals()
    progress_update = progress.update

    def on_progress(*args):
        signalled.check()
        try:
            progress_update(*args)
        except OSError:
            pass  # the terminal has gone (SIGHUP): the bar is not worth losing the model for

    def on_epoch_end_checked(history, report=on_epoch_end):
        signalled.check()
        report(history)

    if hasattr(on_epoch_end, "on_fit_begin"):
        on_epoch_end_checked.on_fit_begin = on_epoch_end.on_fit_begin
    try:
        history = net.fit(X_train, y_train, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                          schedule=schedule, dropout=chosen["dropout"],
                          label_smoothing=chosen["label_smoothing"], seed=args.seed, threads=args.threads,
                          validation_data=None if val_split > 0 else (X_test, y_test),
                          validation_split=val_split, early_stopping=early_stopping,
                          on_epoch_end=on_epoch_end_checked, on_progress=on_progress, comm=comm)
    except KeyboardInterrupt:
        stopped = "interrupted"
    except TrainingDiverged as exc:
        stopped = f"diverged: {exc}"
    except BaseException:
        signalled.restore()
        raise
    try:
        if rank != 0:
            return 0 if stopped is None else 1
        return _finish_training(args, out, net, settings, rows, history, stopped, signalled, progress,
                                on_epoch_end, early_stopping)
    finally:
        signalled.restore()


def _finish_training(args, out, net, settings, rows, history, stopped, signalled, progress, on_epoch_end,
                     early_stopping):
    """Save the model and history (first: nothing printed may stop that), then say what happened."""
    if stopped == "interrupted" and signalled.number not in (None, signal.SIGINT):
        stopped = f"interrupted by {signal.Signals(signalled.number).name}"
    if stopped is not None:
        progress.close()
    kept = rows[-1] if rows else None
    if history is not None and history.best_epoch is not None:
        kept = rows[history.best_epoch - 1]
    interrupted = stopped is not None and stopped.startswith("interrupted")
    net.metadata = {"settings": settings, "epochs_trained": len(rows), "final": kept,
                    "interrupted": interrupted, "diverged": stopped is not None and not interrupted}
    net.save(out / "model.npz")
    _write_history(out, rows)
    plotted = _plot(out / "curves.png", rows)
    if stopped is not None:
        _say(f"\n{stopped}\nkeeping the model of the last finished epoch ({len(rows)})", file=sys.stderr)
    if args.monitor:
        findings = on_epoch_end.monitor.findings
        _say(f"monitor: {len(findings)} finding(s)" + (": " + ", ".join(
            f.code + ("" if f.layer is None else f" (layer {f.layer})") for f in findings) if findings else ""))
    if history is not None and history.best_epoch is not None:
        ended = f"stopped after epoch {history.stopped_epoch}" if history.stopped_epoch else "ran every epoch"
        _say(f"early stopping: {ended}; keeping epoch {history.best_epoch}, the best by "
             f"{early_stopping.monitor}")
    if kept is not None:
        _say(f"final test accuracy {100 * kept['test_accuracy']:.2f}% after {len(rows)} "
             f"epoch{'s' if len(rows) > 1 else ''} ({sum(r['seconds'] for r in rows):.1f} s of training)")
    _say(f"saved model.npz, history.json, history.csv{', curves.png' if plotted else ''} in {out}")
    if not plotted:
        _say("curves.png not drawn: matplotlib is not installed (pip install 'mlpcore[plot]')")
    if stopped is None:
        return 0
    if not interrupted:
        return 1
    # The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
    return 128 + (signalled.number or signal.SIGINT)


# quiet: a rank but 0 of a distributed run, which prints nothing.
_OUTPUT = {"quiet": False}


def _say(*args, **kwargs):
    """print, except that an output that has gone (a closed terminal after SIGHUP, a closed pipe) is not an
    error: training's results are in its files."""
    if _OUTPUT["quiet"]:
        return
    try:
        print(*args, **dict(kwargs, flush=True))
    except OSError:
        pass


class _StopOnSignals:
    """While training and saving, Ctrl-C, SIGTERM and SIGHUP (a batch scheduler's time-out or preemption,
    `timeout`, a closed terminal) only note the signal; check() raises KeyboardInterrupt at the next batch
    boundary, so fit rolls back to the last finished epoch and train saves it, and a second signal cannot
    cut the save short. A signal ignored when training starts (SIGHUP under nohup) stays ignored.
    `number` is the first signal received, if one was."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.number = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (main() called from another thread)
        for number in self.SIGNALS:
            if signal.getsignal(number) is not signal.SIG_IGN:
                self._previous[number] = signal.signal(number, self._note)

    def _note(self, number, frame):
        if self.number is None:
            self.number = number

    def check(self):
        if self.number is not None:
            raise KeyboardInterrupt

    def restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


class _Monitored:
    """train's on_epoch_end followed by a doctor.Monitor, whose record is printed under each epoch's line and
    whose findings are printed once, as they come."""

    def __init__(self, on_epoch_end):
        from .doctor import Monitor

        self.on_epoch_end, self.monitor, self._shown = on_epoch_end, Monitor(warn=False), 0

    def on_fit_begin(self, *args):
        self.monitor.on_fit_begin(*args)

    def __call__(self, history):
        self.on_epoch_end(history)
        self.monitor(history)
        layers = self.monitor.records[-1]["layers"]
        dead = "/".join(f"{100 * r['dead_relus']:.0f}%" for r in layers[:-1] if r["dead_relus"] is not None) or "-"
        updates = "/".join(f"{r['update_ratio']:.1e}" for r in layers)
        gradients = "/".join(f"{r['gradient_norm']:.2g}" for r in layers)
        _say(f"  monitor: dead ReLUs {dead}  update/weight per step {updates}  gradient norm {gradients}")
        for finding in self.monitor.findings[self._shown:]:
            _say(f"  doctor: {finding}".replace("\n", "\n  "))
        self._shown = len(self.monitor.findings)


class _EpochProgress:
    """A tqdm bar for the batches of an epoch, shown only once the epoch has lasted a second."""

    def __init__(self):
        self._bar = None

    def update(self, epoch, done, total):
        if _OUTPUT["quiet"]:
            return
        if self._bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            # disable=None: no bar when stderr is not a terminal (logs, pipes).
            self._bar = tqdm(total=total, desc=f"epoch {epoch}", unit="batch", delay=1.0, leave=False,
                             disable=None)
        self._bar.update(done - self._bar.n)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _write_history(out, rows):
    with atomic_write(out / "history.json", "w") as f:
        json.dump(rows, f, indent=1)
    with atomic_write(out / "history.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _plot(path, rows):
    """Draw loss and accuracy per epoch; False if matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    epochs = [r["epoch"] for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    loss_ax.plot(epochs, [r["test_loss"] for r in rows], "o-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [100 * r["test_accuracy"] for r in rows], "o-", color="C2")
    acc_ax.set(xlabel="epoch", ylabel="%", title="Test accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True


# -------------------------------------------------------------------------------------------------
# evaluate

def _evaluate(args):
    from . import load
    from .datasets import FASHION_MNIST_CLASSES

    net = load(args.model)
    if net.loss_function != "cross_entropy":
        raise UsageError(f"mlpcore evaluate: {args.model} is a network with loss={net.loss_function!r}; evaluate "
                         "scores classifiers with a softmax output (what mlpcore train makes)")
    _, (X_test, y_test) = _load_data(args.data, net.dtype)
    data_classes = int(y_test.max()) + 1
    if net.n_features_in != X_test.shape[1] or net.n_classes < data_classes:
        raise UsageError(f"mlpcore evaluate: {args.model} is a {'-'.join(map(str, net.layer_sizes))} network; the "
                         f"test set has {X_test.shape[1]} features and {data_classes} classes")
    proba = net.predict_proba(X_test, threads=args.threads)
    predicted = proba.argmax(axis=1)
    n_classes = net.n_classes
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_test, predicted), 1)
    names = FASHION_MNIST_CLASSES if n_classes == len(FASHION_MNIST_CLASSES) else range(n_classes)

    print(f"{args.model}: {net!r}, {len(X_test)} test images")
    print(f"test loss {net.loss(X_test, y_test, threads=args.threads):.4f}  "
          f"test accuracy {100 * (predicted == y_test).mean():.2f}%")
    print("\nper-class accuracy:")
    for k, name in enumerate(names):
        support = confusion[k].sum()
        accuracy = confusion[k, k] / support if support else float("nan")
        print(f"  {k} {str(name):<12} {100 * accuracy:6.2f}%  ({support} images)")
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    print("     " + "".join(f"{k:>6}" for k in range(n_classes)))
    for k in range(n_classes):
        print(f"  {k:>2} " + "".join(f"{c:>6}" for c in confusion[k]))
    return 0


# -------------------------------------------------------------------------------------------------
# doctor

def _doctor(args):
    import time

    from . import doctor

    chosen = [name for name, given in (("FILE.py:FUNCTION", args.function), ("--batches", args.batches),
                                       ("--data", args.data)) if given is not None]
    if len(chosen) != 1:
        raise UsageError("mlpcore doctor: give one of FILE.py:FUNCTION, --batches FILE.py:FUNCTION or --data "
                         f"DIR{'' if not chosen else ' (got ' + ' and '.join(chosen) + ')'} "
                         "(see mlpcore doctor --help)")
    started = time.perf_counter()
    if args.data is not None:
        X, y, X_test, what = _doctor_data(args.data)
        print(f"mlpcore doctor: checking {what}")
        report = _user_check(f"--data {args.data}", doctor.check_data, X, y, X_test)
    elif args.batches is not None:
        make_batches = _user_function(args.batches)
        n, K = args.rows, args.sizes[-1]
        Y = np.eye(K)[np.arange(n) % K] if args.targets == "onehot" else np.arange(n) % K
        print(f"mlpcore doctor: running {args.batches} on {n} rows of {args.sizes[0]} features for 2 epochs")
        report = _user_check(args.batches, doctor.check_batches, make_batches, np.zeros((n, args.sizes[0])), Y,
                             seed=args.seed)
    else:
        if len(args.sizes) < 2 or args.sizes[-1] < 2:
            raise UsageError("mlpcore doctor: --sizes needs the input and output sizes at least, with >= 2 "
                             "classes (e.g. --sizes 784 300 300 10)")
        func = _user_function(args.function)
        print(f"mlpcore doctor: checking the gradients of {args.function} on a "
              f"{'-'.join(map(str, args.sizes))} network ({args.targets} targets)")
        report = _user_check(args.function, doctor.check_backprop, func, args.sizes, targets=args.targets,
                             seed=args.seed)
    print(report)
    print(f"({time.perf_counter() - started:.2f} s)")
    return 0 if report.ok else 1


def _user_check(spec, check, *args, **kwargs):
    """check(*args, **kwargs); its ValueError (the user's function raised, or returned the wrong things)
    as a one-line UsageError naming the function."""
    try:
        return check(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"mlpcore doctor: {spec}: {exc}") from None


def _user_function(spec):
    """The function FUNCTION of FILE.py, from "FILE.py:FUNCTION"; UsageError saying what is wrong."""
    import importlib.util

    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise UsageError(f"mlpcore doctor: expected FILE.py:FUNCTION, got {spec!r}")
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"mlpcore doctor: {path} is not a file")
    module_name = f"_mlpcore_doctor_{path.stem}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None:
        raise UsageError(f"mlpcore doctor: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader)
    sys.path.insert(0, str(path.resolve().parent))  # the file may import its neighbours
    try:
        loader.loader.exec_module(module)
    except SystemExit as exc:
        raise UsageError(f"mlpcore doctor: {path} called sys.exit({exc.code!r}) when loaded: put its top-level "
                         "code (argument parsing, training) under if __name__ == \"__main__\":") from None
    except Exception as exc:
        raise UsageError(f"mlpcore doctor: {path} raised {type(exc).__name__} when loaded: {exc}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    func = getattr(module, name, None)
    if not callable(func):
        raise UsageError(f"mlpcore doctor: {path} has no function {name!r}"
                         + ("" if func is None else f" ({name} is a {type(func).__name__})"))
    return func


def _doctor_data(path):
    """(X, y, X_test, description) from a folder of IDX files, as stored, or an .npz of X, y, X_test."""
    if path.is_dir():
        from .datasets import load_fashion_mnist

        (X, y), (X_test, _) = load_fashion_mnist(path, scale=False, verify=False, download=False)
        return X, y, X_test, f"the data in {path} as stored ({X.dtype} images, {len(X)} for training, " \
                             f"{len(X_test)} for testing)"
    if not path.is_file():
        raise UsageError(f"mlpcore doctor: --data {path}: no such file or folder")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in ("X", "y") if name not in arrays.files]
            if missing:
                raise UsageError(f"mlpcore doctor: {path} has no array {missing[0]!r}: it must hold X and y "
                                 f"(and optionally X_test); it holds {', '.join(arrays.files) or 'nothing'}")
            X, y = arrays["X"], arrays["y"]
            X_test = arrays["X_test"] if "X_test" in arrays.files else None
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"mlpcore doctor: cannot read {path} as an .npz of arrays: {exc}") from None
    return X, y, X_test, f"{path} ({X.shape[0]} rows{'' if X_test is None else f', {len(X_test)} test rows'})"


# -------------------------------------------------------------------------------------------------
# info

def _info(args):
    import scipy
    from threadpoolctl import threadpool_info

    from .datasets import fashion_mnist_search_paths, find_fashion_mnist

    print(f"mlpcore {__version__} (numpy {np.__version__}, scipy {scipy.__version__}, "
          f"Python {sys.version.split()[0]})")
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS, the one the compiled core calls)
    print("BLAS libraries loaded (mlpcore calls scipy's):")
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            print(f"  {lib['internal_api']} {lib.get('version')} ({lib.get('architecture')}), "
                  f"{lib['num_threads']} threads: {lib['filepath']}")
    from . import _compiled, _threads
    print(f"cores this process may use: {_threads.usable_cores()}")
    print("training threads: " + (
        "an OpenMP team, one per core by default, each calling BLAS on one thread" if _compiled.OPENMP else
        "BLAS's (built without OpenMP)") + "; inference: BLAS's threads")
    found = find_fashion_mnist()
    print(f"Fashion-MNIST: {found if found else 'not found (mlpcore train would download it)'}")
    print("searched, in order:")
    for description, folder in fashion_mnist_search_paths():
        print(f"  {description}: {folder}")
    return 0
