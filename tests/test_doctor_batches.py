"""mlpcore.doctor.check_batches runs a batch maker on rows that carry their index and names what it does
wrong: the student's misaligned labels, rows dropped or repeated, no reshuffle between epochs."""
import numpy as np
import pytest

from mlpcore import doctor

N, D, K, BATCH = 100, 5, 4, 30


def _data(onehot=False):
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, N)
    return rng.random((N, D)), (np.eye(K)[y] if onehot else y)


def shuffled(X, Y, rng=np.random.default_rng(1)):
    order = rng.permutation(len(X))
    for start in range(0, len(X), BATCH):
        rows = order[start:start + BATCH]
        yield X[rows], Y[rows]


def students(X, Y, rng=np.random.default_rng(2)):
    # The student's bug: the labels from the shuffled array, the inputs from the unshuffled one.
    order = rng.permutation(len(X))
    X_shuffled, Y_shuffled = X[order], Y[order]
    for start in range(0, len(X), BATCH):
        yield X[start:start + BATCH], Y_shuffled[start:start + BATCH]


def full_batches_only(X, Y, rng=np.random.default_rng(3)):
    order = rng.permutation(len(X))
    for start in range(0, len(X) - BATCH + 1, BATCH):
        rows = order[start:start + BATCH]
        yield X[rows], Y[rows]


def half_the_data(X, Y, rng=np.random.default_rng(4)):
    order = rng.permutation(len(X))[:len(X) // 2]
    for start in range(0, len(order), 10):
        yield X[order[start:start + 10]], Y[order[start:start + 10]]


def with_replacement(X, Y, rng=np.random.default_rng(5)):
    for _ in range(len(X) // BATCH + 1):
        rows = rng.integers(0, len(X), BATCH)
        yield X[rows], Y[rows]


def reseeded(X, Y):
    order = np.random.default_rng(0).permutation(len(X))  # the same order every epoch
    for start in range(0, len(X), BATCH):
        yield X[order[start:start + BATCH]], Y[order[start:start + BATCH]]


def in_order(X, Y):
    for start in range(0, len(X), BATCH):
        yield X[start:start + BATCH], Y[start:start + BATCH]


@pytest.mark.parametrize("onehot", [False, True])
def test_a_correct_batch_maker_has_no_finding(onehot):
    X, Y = _data(onehot)
    report = doctor.check_batches(shuffled, X, Y)
    assert report.findings == [] and report.ok


@pytest.mark.parametrize("onehot", [False, True])
def test_the_students_shuffle_bug_is_named(onehot):
    X, Y = _data(onehot)
    report = doctor.check_batches(students, X, Y)
    # Its inputs also come in X's own order every epoch: only the labels were shuffled.
    assert report.codes() == ["labels-misaligned", "no-reshuffle"] and not report.ok
    assert "same permutation" in report.findings[0].fix
    assert "X's own" in report.findings[1].message


@pytest.mark.parametrize("maker,code,severity", [
    (full_batches_only, "rows-dropped", "warning"),  # 10 rows: a last partial batch left out
    (half_the_data, "rows-dropped", "error"),
    (reseeded, "no-reshuffle", "warning"),
    (in_order, "no-reshuffle", "warning"),
])
def test_rows_dropped_and_no_reshuffle(maker, code, severity):
    X, Y = _data()
    report = doctor.check_batches(maker, X, Y)
    assert report.codes() == [code]
    assert report.findings[0].severity == severity


def test_rows_drawn_with_replacement_are_repeated_and_dropped():
    X, Y = _data()
    report = doctor.check_batches(with_replacement, X, Y)
    assert "rows-repeated" in report.codes() and "rows-dropped" in report.codes()


def test_in_order_says_it_is_xs_own_order():
    X, Y = _data()
    assert "X's own" in doctor.check_batches(in_order, X, Y).findings[0].message


@pytest.mark.parametrize("maker,message", [
    (lambda X, Y: [(X / 255, Y)], "changed the values of X"),
    (lambda X, Y: 1 / 0, "make_batches raised ZeroDivisionError"),
    (lambda X, Y: [X], "must yield pairs"),
    (lambda X, Y: [(X[:, :2], Y)], r"Xb has shape \(100, 2\)"),
    (lambda X, Y: [], "no batch in epoch 1"),
])
def test_a_batch_maker_that_breaks_the_contract_gets_a_clear_error(maker, message):
    X, Y = _data()
    with pytest.raises(ValueError, match=message):
        doctor.check_batches(maker, X, Y)


def test_an_endless_batch_maker_is_refused_not_followed():
    def forever(X, Y):
        while True:
            yield X[:10], Y[:10]
    with pytest.raises(ValueError, match="without ending"):
        doctor.check_batches(forever, np.zeros((50, 3)), np.arange(50) % 5)


def test_batches_with_no_targets_are_a_value_error():
    def no_targets(X, Y):
        yield X, None
    with pytest.raises(ValueError, match="expected"):
        doctor.check_batches(no_targets, np.zeros((50, 3)), np.arange(50) % 5)


def test_a_batch_maker_shuffling_with_numpys_global_generator_gives_the_same_report_every_time():
    def misaligned(X, Y):
        order = np.random.permutation(len(X))
        for start in range(0, len(X), 10):
            yield X[start:start + 10], Y[order[start:start + 10]]
    state = np.random.get_state()
    first = str(doctor.check_batches(misaligned, np.zeros((200, 3)), np.arange(200) % 5))
    assert str(doctor.check_batches(misaligned, np.zeros((200, 3)), np.arange(200) % 5)) == first
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global generator is put back
