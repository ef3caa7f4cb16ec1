"""Learning-rate schedules for Network.fit: a factor on the optimizer's learning rate for every batch.

A schedule is given the fit's progress, the fraction of its batches done counting the one about to be
trained (1 / total for the first batch, 1.0 for the last), and returns the factor for that batch. fit's
``schedule`` may be one of these or any callable ``progress -> factor``.
"""
import math
import numbers

import numpy as np

from . import _validation as check

__all__ = ["Schedule", "Constant", "Cosine", "Step", "get"]


class Schedule:
    """Base class: ``factor(progress)``; ``factors`` gives a whole epoch's."""

    def factor(self, progress):
        raise NotImplementedError

    def factors(self, epoch, epochs, n_batches):
        """The factors of the n_batches batches of epoch `epoch` (from 1) of a fit of `epochs` epochs, as
        float64: what fit hands to the compiled core. Refuses any that is not finite and >= 0."""
        total = epochs * n_batches
        done = (epoch - 1) * n_batches + np.arange(1, n_batches + 1)
        return _checked(np.array([self.factor(d / total) for d in done], dtype=np.float64))


class Constant(Schedule):
    """The optimizer's learning rate throughout."""

    def factor(self, progress):
        return 1.0

    def factors(self, epoch, epochs, n_batches):
        return np.ones(n_batches)

    def __repr__(self):
        return "Constant()"


class Cosine(Schedule):
    """Linear warm-up from 0 over the first `warmup` of training, then half a cosine from 1 down to
    `final` (both fractions): SGDR without restarts, as ``torch.optim.lr_scheduler.CosineAnnealingLR``
    after ``LinearLR`` warm-up, per batch."""

    def __init__(self, warmup=0.0, final=0.0):
        self.warmup = check.check_real(warmup, "warmup", low=0, high=1, high_open=True)
        self.final = check.check_real(final, "final", low=0, high=1)

    def factor(self, progress):
        if progress <= self.warmup:
            return progress / self.warmup
        q = (progress - self.warmup) / (1.0 - self.warmup)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * q))

    def factors(self, epoch, epochs, n_batches):
        # factor() on every batch at once: a fit of many small batches calls this every epoch.
        total = epochs * n_batches
        progress = ((epoch - 1) * n_batches + np.arange(1, n_batches + 1)) / total
        q = np.clip((progress - self.warmup) / (1.0 - self.warmup), 0.0, 1.0)
        cosine = self.final + (1.0 - self.final) * 0.5 * (1.0 + np.cos(np.pi * q))
        warm = progress / self.warmup if self.warmup > 0 else cosine
        return _checked(np.where(progress <= self.warmup, warm, cosine))

    def __repr__(self):
        return f"Cosine(warmup={self.warmup!r}, final={self.final!r})"


class Step(Schedule):
    """The learning rate times gamma every `every` epochs, as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, every, gamma):
        if isinstance(every, (bool, np.bool_)) or not isinstance(every, numbers.Integral):
            raise TypeError(f"every must be a whole number of epochs, got {every!r}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self.gamma = check.check_real(gamma, "gamma", low=0, low_open=True)

    def factor(self, progress):  # only through factors: Step counts epochs
        raise TypeError("Step counts epochs: use factors(epoch, epochs, n_batches)")

    def factors(self, epoch, epochs, n_batches):
        with np.errstate(over="ignore", under="ignore"):
            factor = np.float64(self.gamma) ** ((epoch - 1) // self.every)
        return _checked(np.full(n_batches, factor))

    def __repr__(self):
        return f"Step(every={self.every!r}, gamma={self.gamma!r})"


class _Function(Schedule):
    def __init__(self, function):
        self.function = function

    def factor(self, progress):
        value = self.function(progress)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"the schedule must return a number, got {value!r}")
        return float(value)

    def __repr__(self):
        return f"schedule {self.function!r}"


def _checked(values):
    if not (np.isfinite(values).all() and (values >= 0).all()):
        bad = values[~(np.isfinite(values) & (values >= 0))][0]
        raise ValueError(f"the schedule gave the learning-rate factor {bad}: it must be finite and >= 0")
    return values


#: The names the command line takes.
NAMES = {"constant": Constant, "cosine": Cosine}


def get(schedule):
    """The Schedule fit uses: Constant for None, a Schedule as it is, a callable wrapped."""
    if schedule is None:
        return Constant()
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str):
        if schedule not in NAMES:
            raise ValueError(f"schedule must be one of {sorted(NAMES)}, a Schedule or a callable, got "
                             f"{schedule!r}")
        return NAMES[schedule]()
    if callable(schedule):
        return _Function(schedule)
    raise TypeError(f"schedule must be None, a Schedule or a callable progress -> factor, got "
                    f"{type(schedule).__name__}")
