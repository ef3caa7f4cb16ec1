"""fit with momentum, Nesterov, Adam, AdamW, weight decay and schedules computes what the reference
computes, batch by batch, on one thread and on teams sharing batches out by rows and by features; the
optimizer's state carries over between fits and is rolled back with the weights."""
import platform

import numpy as np
import pytest

import mlpcore
from mlpcore import _compiled, _threads, optimizers, reference, schedules
from conftest import fake_cores, make_problem, reference_fit, relative_error

SIZES = [12, 40, 20, 4]
# Batches of 4 (the last of each epoch 2 rows) go by features on a team, 40 wide, in both dtypes.
N_ROWS, BATCH, EPOCHS = 50, 4, 5
STEPS_PER_EPOCH = -(-N_ROWS // BATCH)  # 13: 65 steps in all
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

OPTIMIZERS = {
    "momentum": lambda: optimizers.SGD(lr=0.05, momentum=0.9),
    "nesterov": lambda: optimizers.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "sgd-weight-decay": lambda: optimizers.SGD(lr=0.05, weight_decay=0.01),
    "momentum-weight-decay": lambda: optimizers.SGD(lr=0.05, momentum=0.5, weight_decay=0.01),
    "adam": lambda: optimizers.Adam(lr=0.01),
    "adam-l2": lambda: optimizers.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
    "adamw": lambda: optimizers.AdamW(lr=0.01, weight_decay=0.1),
}
SCHEDULES = {
    "constant": (None, lambda p: 1.0),
    "cosine": (schedules.Cosine(warmup=0.1, final=0.05), lambda p: reference.cosine_factor(p, 0.1, 0.05)),
    "callable": (lambda p: 1 - 0.5 * p, lambda p: 1 - 0.5 * p),
}


def _reference_fit(weights, X, y, optimizer, factor, epochs=EPOCHS, batch_size=BATCH, **kwargs):
    return reference_fit(weights, X, y, optimizer, factor, epochs=epochs, batch_size=batch_size, **kwargs)


def _zeros_like(weights):
    return {"m": [np.zeros_like(W) for W in weights], "v": [np.zeros_like(W) for W in weights]}


def test_the_batches_go_by_features_on_a_team():
    # What the `threads` fixture's teams then exercise: the feature scheme, in both dtypes.
    assert not any(_compiled.split_by_rows(m, 40, size) for m in (BATCH, N_ROWS % BATCH) for size in (4, 8))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fit_with_an_optimizer_matches_the_reference(name, schedule, threads, dtype):
    X, y = make_problem(SIZES, N_ROWS, dtype, seed=1)
    net = mlpcore.Network(SIZES, dtype=dtype, init="glorot", seed=2)
    ref_weights = [W.copy() for W in net.weights]
    optimizer = OPTIMIZERS[name]()
    history = net.fit(X, y, epochs=EPOCHS, batch_size=BATCH, optimizer=optimizer,
                      schedule=SCHEDULES[schedule][0], seed=0, threads=threads)
    losses, accuracies = _reference_fit(ref_weights, X, y, OPTIMIZERS[name](), SCHEDULES[schedule][1],
                                        state=_zeros_like(ref_weights))
    tolerance = TOLERANCE[dtype]
    np.testing.assert_allclose(history.loss, losses, rtol=tolerance)
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= tolerance
    if dtype == np.float64:  # a float32 logit may round onto a tie the reference breaks the other way
        np.testing.assert_array_equal(history.accuracy, accuracies)
    assert optimizer.step == EPOCHS * STEPS_PER_EPOCH


def test_rows_scheme_with_adam_matches_the_reference(monkeypatch):
    # Batches of 25 rows on a team of 2, 40 wide: shared out by rows.
    monkeypatch.setattr(_threads, "_MIN_ROWS_PER_WORKER", 1)
    fake_cores(monkeypatch, 2)
    X, y = make_problem(SIZES, N_ROWS, np.float64, "soft", seed=1)
    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    ref_weights = [W.copy() for W in net.weights]
    net.fit(X, y, epochs=4, batch_size=25, optimizer=optimizers.Adam(lr=0.01, weight_decay=0.01), seed=0,
            threads=2)
    _reference_fit(ref_weights, X, y, optimizers.Adam(lr=0.01, weight_decay=0.01), lambda p: 1.0, epochs=4,
                   batch_size=25, state=_zeros_like(ref_weights))
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= 1e-10


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam-l2"])
def test_small_batches_stepped_panel_by_panel_match_the_reference(name, threads, dtype):
    # Batches of 8 rows: a rule with a step computes and steps the first layer's gradient a cache-sized
    # panel of weight rows at a time; 600 input rows make two or more panels of every worker's block (a
    # team shares batches of 8 out by features, 96 wide: blocks of 96 / team columns).
    sizes = [600, 96, 10]
    assert not _compiled.split_by_rows(8, sizes[1], dtype.itemsize)
    block_columns = sizes[1] // threads
    panel_rows = _compiled.GRADIENT_PANEL_BYTES // (block_columns * dtype.itemsize)
    assert 2 * 8 <= panel_rows < sizes[0]
    X, y = make_problem(sizes, 40, dtype, seed=3)
    net = mlpcore.Network(sizes, dtype=dtype, init="glorot", seed=4)
    ref_weights = [W.copy() for W in net.weights]
    net.fit(X, y, epochs=3, batch_size=8, optimizer=OPTIMIZERS[name](), seed=0, threads=threads)
    _reference_fit(ref_weights, X, y, OPTIMIZERS[name](), lambda p: 1.0, epochs=3, batch_size=8,
                   state=_zeros_like(ref_weights))
    for W, ref_W in zip(net.weights, ref_weights):
        assert relative_error(W, ref_W) <= TOLERANCE[dtype]


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_rules_with_state_flush_subnormals_and_plain_sgd_keeps_them(name, threads, dtype):
    # Input feature 0 is always 0, so its weights' gradient is exactly 0: what a step leaves in their
    # state is the state's own decay, which IEEE arithmetic would keep at a subnormal value for good.
    if name != "sgd" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("subnormals are flushed on x86-64 only")
    X, y = make_problem(SIZES, N_ROWS, dtype, seed=1)
    X[:, 0] = 0
    subnormal = dtype.type(np.finfo(dtype).tiny / 4)
    assert subnormal != 0 and subnormal * dtype.type(0.9) != 0  # the calling thread: IEEE arithmetic
    n_out = SIZES[1]
    net = mlpcore.Network(SIZES, dtype=dtype, seed=2)
    if name == "sgd":
        weights = net.weights
        weights[0][0] = subnormal
        net.weights = weights
        net.fit(X, y, epochs=2, batch_size=BATCH, lr=0.05, seed=0, threads=threads)
        np.testing.assert_array_equal(net.weights[0][0], subnormal)  # plain SGD: IEEE, bit for bit
    else:
        optimizer, first_moment = {
            "momentum": (optimizers.SGD(lr=0.05, momentum=0.9), "momentum_buffer"),
            "adam": (optimizers.Adam(lr=0.01), "exp_avg"),
            "adamw": (optimizers.AdamW(lr=0.01), "exp_avg"),
        }[name]
        net.fit(X, y, epochs=1, batch_size=BATCH, optimizer=optimizer, seed=0, threads=threads)
        state = optimizer.state[first_moment]
        assert (state[:n_out] == 0).all()
        state[:n_out] = subnormal
        net.fit(X, y, epochs=1, batch_size=BATCH, optimizer=optimizer, seed=1, threads=threads)
        assert (state[:n_out] == 0).all()
        assert np.isfinite(net.weights[0]).all()
    # The threads that trained, the calling one among them, have their own arithmetic back.
    assert subnormal * dtype.type(0.9) != 0


def test_schedules_give_a_factor_per_batch():
    step = schedules.Step(every=2, gamma=0.5)
    assert [step.factors(e, 6, 3)[0] for e in range(1, 7)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    # Cosine over 2 epochs of 4 batches, warm-up over the first quarter: progress 1/8 ... 8/8.
    cosine = schedules.Cosine(warmup=0.25, final=0.1)
    factors = np.concatenate([cosine.factors(e, 2, 4) for e in (1, 2)])
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (p / 8 - 0.25) / 0.75)) for p in range(3, 9)]
    np.testing.assert_allclose(factors, expected)
    assert factors[-1] == pytest.approx(0.1)
    np.testing.assert_array_equal(schedules.Constant().factors(3, 5, 7), np.ones(7))


def test_history_records_the_lr_of_each_epochs_last_batch():
    X, y = make_problem(SIZES, 20, np.float64)
    net = mlpcore.Network(SIZES, dtype="float64", seed=0)
    history = net.fit(X, y, epochs=3, batch_size=10, optimizer="momentum", lr=0.2,
                      schedule=schedules.Step(every=1, gamma=0.1))
    np.testing.assert_allclose(history.lr, [0.2, 0.02, 0.002])


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_an_instance_carries_its_state_from_fit_to_fit(name):
    X, y = make_problem(SIZES, N_ROWS, np.float64, seed=1)
    whole = mlpcore.Network(SIZES, dtype="float64", seed=2)
    parts = mlpcore.Network(SIZES, dtype="float64", seed=2)
    whole.fit(X, y, epochs=4, batch_size=BATCH, optimizer=OPTIMIZERS[name](), shuffle=False)
    optimizer = OPTIMIZERS[name]()
    for _ in range(2):
        parts.fit(X, y, epochs=2, batch_size=BATCH, optimizer=optimizer, shuffle=False)
    assert optimizer.step == 4 * STEPS_PER_EPOCH
    for a, b in zip(whole.weights, parts.weights):
        np.testing.assert_array_equal(a, b)
    # A name starts afresh: a second fit by name is not the continuation.
    fresh = mlpcore.Network(SIZES, dtype="float64", seed=2)
    for _ in range(2):
        fresh.fit(X, y, epochs=2, batch_size=BATCH, optimizer=name, shuffle=False)
    assert any(not np.array_equal(a, b) for a, b in zip(whole.weights, fresh.weights))


@pytest.mark.parametrize("stop", ["callback", "divergence"])
def test_an_interrupted_fit_rolls_back_weights_and_state_and_can_continue(stop):
    X, y = make_problem(SIZES, N_ROWS, np.float64, seed=1)
    whole = mlpcore.Network(SIZES, dtype="float64", seed=2)
    whole.fit(X, y, epochs=4, batch_size=BATCH, optimizer=optimizers.Adam(lr=0.01), shuffle=False)

    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    optimizer = optimizers.Adam(lr=0.01)

    def fail_in_epoch_3(history):
        if history.epoch[-1] == 3:
            raise RuntimeError("stop")

    if stop == "callback":
        with pytest.raises(RuntimeError):
            net.fit(X, y, epochs=4, batch_size=BATCH, optimizer=optimizer, shuffle=False,
                    on_epoch_end=fail_in_epoch_3)
    else:
        net.fit(X, y, epochs=2, batch_size=BATCH, optimizer=optimizer, shuffle=False)
        X_bad = X.copy()
        X_bad[N_ROWS // 2] = np.finfo(np.float64).max  # a batch in the middle of the epoch overflows
        with pytest.raises(mlpcore.TrainingDiverged), pytest.warns(UserWarning, match="unscaled"):
            net.fit(X_bad, y, epochs=1, batch_size=BATCH, optimizer=optimizer, shuffle=False)
    assert optimizer.step == 2 * STEPS_PER_EPOCH
    net.fit(X, y, epochs=2, batch_size=BATCH, optimizer=optimizer, shuffle=False)
    for a, b in zip(whole.weights, net.weights):
        np.testing.assert_array_equal(a, b)


def test_lr_alone_is_plain_sgd_bit_for_bit():
    X, y = make_problem(SIZES, N_ROWS, np.float32, seed=1)
    a = mlpcore.Network(SIZES, seed=2)
    b = mlpcore.Network(SIZES, seed=2)
    a.fit(X, y, epochs=3, batch_size=BATCH, lr=0.3, seed=0)
    b.fit(X, y, epochs=3, batch_size=BATCH, optimizer=optimizers.SGD(lr=0.3), seed=0)
    ref = [W.copy() for W in mlpcore.Network(SIZES, seed=2).weights]
    c = mlpcore.Network(SIZES, seed=2)
    c.fit(X, y, epochs=3, batch_size=BATCH, optimizer="sgd", lr=0.3, seed=0)
    for Wa, Wb, Wc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(Wa, Wb)
        np.testing.assert_array_equal(Wa, Wc)
    assert any(not np.array_equal(W, R) for W, R in zip(a.weights, ref))


def test_mlpcore_steps_as_pytorch_does():
    torch = pytest.importorskip("torch")
    X, y = make_problem(SIZES, 20, np.float64, seed=3)
    net = mlpcore.Network(SIZES, dtype="float64", init="glorot", seed=4)
    layers = []
    for W in net.weights:
        linear = torch.nn.Linear(W.shape[0] - 1, W.shape[1]).double()
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W[:-1].T.copy()))
            linear.bias.copy_(torch.from_numpy(W[-1].copy()))
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    weights = [p for i, p in enumerate(model.parameters()) if i % 2 == 0]
    biases = [p for i, p in enumerate(model.parameters()) if i % 2 == 1]
    # Weight decay on the weights only, as mlpcore does.
    torch_optimizer = torch.optim.AdamW([{"params": weights, "weight_decay": 0.1},
                                         {"params": biases, "weight_decay": 0.0}], lr=0.01)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    for start in range(0, 20, 5):
        torch_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(X_t[start:start + 5]), y_t[start:start + 5]).backward()
        torch_optimizer.step()
    net.fit(X, y, epochs=1, batch_size=5, optimizer=optimizers.AdamW(lr=0.01, weight_decay=0.1),
            shuffle=False)
    for W, linear in zip(net.weights, [m for m in model if isinstance(m, torch.nn.Linear)]):
        expected = np.vstack([linear.weight.detach().numpy().T, linear.bias.detach().numpy()])
        assert relative_error(W, expected) <= 1e-12


@pytest.mark.parametrize("make,message", [
    (lambda: optimizers.SGD(momentum=-0.1), "momentum must be >= 0"),
    (lambda: optimizers.SGD(nesterov=True), "nesterov=True needs a momentum > 0"),
    (lambda: optimizers.SGD(weight_decay=float("nan")), "weight_decay must be finite"),
    (lambda: optimizers.SGD(lr=0), "lr must be a finite number > 0"),
    (lambda: optimizers.Adam(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\)"),
    (lambda: optimizers.Adam(betas=(0.9, -0.1)), r"betas\[1\] must be in \[0, 1\)"),
    (lambda: optimizers.Adam(eps=-1e-8), "eps must be >= 0"),
    (lambda: schedules.Cosine(warmup=1.0), r"warmup must be in \[0, 1\)"),
    (lambda: schedules.Cosine(final=1.5), r"final must be in \[0, 1\]"),
    (lambda: schedules.Step(every=0, gamma=0.5), "every must be >= 1"),
    (lambda: schedules.Step(every=1, gamma=0), "gamma must be > 0"),
    (lambda: mlpcore.EarlyStopping(patience=0), "patience must be >= 1"),
    (lambda: mlpcore.EarlyStopping(monitor="val_los"), "monitor must be one of"),
    (lambda: mlpcore.EarlyStopping(min_delta=-1), "min_delta must be >= 0"),
])
def test_bad_hyperparameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("kwargs,error,message", [
    ({"optimizer": "adagrad"}, ValueError, "optimizer must be one of"),
    ({"optimizer": 3}, TypeError, "optimizer must be None, a name"),
    ({"lr": -1.0}, ValueError, "lr must be a finite number > 0"),
    ({"schedule": "linear"}, ValueError, "schedule must be one of"),
    ({"schedule": 0.5}, TypeError, "schedule must be None"),
    ({"schedule": lambda p: -1.0}, ValueError, "the schedule gave the learning-rate factor -1"),
    ({"validation_split": 1.0}, ValueError, r"validation_split must be in \[0, 1\)"),
    ({"validation_split": 0.001}, ValueError, "holds out no row"),
    ({"early_stopping": mlpcore.EarlyStopping()}, ValueError, "needs validation_data or validation_split"),
    ({"early_stopping": "val_loss"}, TypeError, "early_stopping must be an mlpcore.EarlyStopping"),
])
def test_bad_fit_arguments_leave_weights_and_optimizer_state_unchanged(kwargs, error, message):
    X, y = make_problem(SIZES, 40, np.float64, seed=1)
    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    optimizer = optimizers.Adam(lr=0.01)
    net.fit(X, y, epochs=1, batch_size=10, optimizer=optimizer)
    weights, (step, state) = net._params.copy(), optimizer._snapshot()
    kwargs = {"optimizer": optimizer, **kwargs}
    with pytest.raises(error, match=message):
        net.fit(X, y, epochs=1, batch_size=10, **kwargs)
    np.testing.assert_array_equal(net._params, weights)
    assert optimizer.step == step
    for name, array in optimizer.state.items():
        np.testing.assert_array_equal(array, state[name])


@pytest.mark.parametrize("schedule", [lambda p: 1 - 2 * p, schedules.Step(every=1, gamma=1e300)])
def test_a_schedule_that_goes_bad_late_is_refused_before_training(schedule):
    X, y = make_problem(SIZES, 40, np.float64, seed=1)
    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    optimizer = optimizers.SGD(lr=0.1, momentum=0.9)
    before = net._params.copy()
    with pytest.raises(ValueError, match="the schedule gave the learning-rate factor"):
        net.fit(X, y, epochs=4, batch_size=10, optimizer=optimizer, schedule=schedule)
    np.testing.assert_array_equal(net._params, before)
    assert optimizer.step == 0


def test_an_optimizer_refuses_another_networks_shape():
    X, y = make_problem(SIZES, 20, np.float64)
    optimizer = optimizers.Adam()
    mlpcore.Network(SIZES, dtype="float64").fit(X, y, epochs=1, optimizer=optimizer)
    other = mlpcore.Network([12, 5, 4], dtype="float64")
    before = other._params.copy()
    with pytest.raises(ValueError, match="use a new optimizer for another network"):
        other.fit(X, y, epochs=1, optimizer=optimizer)
    np.testing.assert_array_equal(other._params, before)


def test_validation_split_is_stratified_and_seeded():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2, 3], [40, 20, 20, 20])
    X = rng.normal(size=(100, SIZES[0]))
    seen = []

    def record(history):
        seen.append(history.val_accuracy[-1])

    for _ in range(2):
        net = mlpcore.Network(SIZES, dtype="float64", seed=0)
        net.fit(X, y, epochs=1, validation_split=0.25, seed=5, on_epoch_end=record)
    assert seen[0] == seen[1]  # the same rows held out for the same seed
    from mlpcore._training import hold_out
    X_train, labels, _, _, (X_val, val_labels, _) = hold_out(X, y, None, None, 0.25, 5)
    assert np.bincount(val_labels).tolist() == [10, 5, 5, 5]
    assert len(X_train) == 75 and len(X_val) == 25
    with pytest.raises(ValueError, match="holds out every row of class 3"):
        hold_out(X[:61], np.r_[np.zeros(60, int), [3]], None, None, 0.6, 0)


def test_early_stopping_stops_and_restores_the_best_epoch():
    X, y = make_problem(SIZES, 60, np.float64, seed=1)
    X_val, y_val = make_problem(SIZES, 30, np.float64, seed=9)  # noise: validation loss soon rises
    net = mlpcore.Network(SIZES, dtype="float64", seed=2)
    snapshots = []
    history = net.fit(X, y, epochs=100, batch_size=10, optimizer="adam", lr=0.02,
                      validation_data=(X_val, y_val), early_stopping=mlpcore.EarlyStopping(patience=3),
                      on_epoch_end=lambda h: snapshots.append(net._params.copy()))
    best = int(np.argmin(history.val_loss)) + 1
    assert history.best_epoch == best
    assert history.stopped_epoch == best + 3 == len(history.epoch) < 100
    np.testing.assert_array_equal(net._params, snapshots[best - 1])
    assert net.loss(X_val, y_val) == pytest.approx(history.val_loss[best - 1], rel=1e-12)
