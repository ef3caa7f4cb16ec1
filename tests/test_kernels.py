"""Each compiled kernel on its own computes its operation in mlpcore.reference.

Every kernel is run the way a team shares it out: by blocks of rows (share_start) and by blocks of
features (block_start, 16-aligned, so some workers get nothing), for teams of 1, 2 and 3, over odd sizes
and a single row. The pieces assembled must be the reference's whole.
"""
import numpy as np
import pytest

from mlpcore import _kernels, reference
from conftest import RTOL, relative_error

TEAMS = [1, 2, 3]
# (rows, inputs, outputs): one row, odd sizes, a layer wider than 16 * team so that every worker gets
# features, and one narrower than 16 so that only the last does.
SHAPES = [(1, 5, 3), (7, 37, 29), (33, 70, 41), (4, 3, 12)]


def _rng_matrix(rng, shape, dtype, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(dtype)


def _row_shares(m, team):
    return [(_kernels.share_start(m, w, team), _kernels.share_start(m, w + 1, team)) for w in range(team)]


def _feature_blocks(width, team):
    return [(_kernels.block_start(width, w, team), _kernels.block_start(width, w + 1, team))
            for w in range(team)]


def test_shares_and_blocks_cover_every_row_and_feature_once():
    for count in (0, 1, 7, 16, 17, 300):
        for team in (1, 2, 3, 5):
            for parts in (_row_shares(count, team), _feature_blocks(count, team)):
                assert parts[0][0] == 0 and parts[-1][1] == count
                assert all(a[1] == b[0] and a[0] <= a[1] for a, b in zip(parts, parts[1:]))
            assert all(start % 16 == 0 for start, _ in _feature_blocks(count, team)[:-1])


def _layer(rng, shape, dtype):
    m, k, n = shape
    x = np.abs(_rng_matrix(rng, (m, k), dtype))
    x[x < 0.3] = 0  # some inputs exactly 0, as a ReLU output has
    return x, _rng_matrix(rng, (k + 1, n), dtype, 0.5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("team", TEAMS)
@pytest.mark.parametrize("relu", [True, False])
def test_dense_forward_by_rows_and_by_columns(shape, team, relu, dtype):
    rng = np.random.default_rng(1)
    x, W = _layer(rng, shape, dtype)
    expected = reference.dense_forward(x, W, relu_output=relu)
    by_rows = np.full(expected.shape, np.nan, dtype=dtype)
    for first, stop in _row_shares(shape[0], team):
        if stop > first:
            _kernels.dense_forward(x[first:stop], W, by_rows[first:stop], relu, 0, shape[2])
    by_columns = np.full(expected.shape, np.nan, dtype=dtype)
    for first, stop in _feature_blocks(shape[2], team):
        _kernels.dense_forward(x, W, by_columns, relu, first, stop)
    for result in (by_rows, by_columns):
        assert relative_error(result, expected) <= RTOL[dtype]
        if relu:
            assert (result >= 0).all()


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_dense_forward_finds_a_non_finite_input_the_relu_would_hide(relu, bad, dtype):
    # Every weight negative, one input column's weights zero: the bad value's pre-activations are -inf,
    # NaN (inf * 0), or NaN, all of which the ReLU turns into 0.
    rng = np.random.default_rng(3)
    x, W = _layer(rng, (7, 37, 29), dtype)
    W = -np.abs(W)
    W[5] = 0
    z = np.empty((7, 29), dtype)
    for first, stop in _feature_blocks(29, 2):
        assert _kernels.dense_forward(x, W, z, relu, first, stop, True)
    for where in ((0, 5), (3, 0), (6, 36)):
        bad_x = x.copy()
        bad_x[where] = bad
        assert not _kernels.dense_forward(bad_x, W, z, relu, 0, 29, True)
        if relu and (bad != -np.inf or where[1] == 5):
            assert np.isfinite(z).all()  # hidden from the output: only the check tells
        # Each block of columns finds it on its own; without the check, nothing is said.
        for first, stop in ((0, 10), (10, 29)):
            assert not _kernels.dense_forward(bad_x, W, z, relu, first, stop, True)
        assert _kernels.dense_forward(bad_x, W, z, relu, 0, 29)
    # A finite input whose product overflows is found too.
    big = np.full((1, 37), np.finfo(dtype).max / 4, dtype)
    assert not _kernels.dense_forward(big, np.abs(W) + 1, np.empty((1, 29), dtype), relu, 0, 29, True)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("team", TEAMS)
@pytest.mark.parametrize("hidden", [True, False])
def test_a_product_split_over_input_features_sums_to_the_layer(shape, team, hidden, dtype):
    # The feature scheme's later layers: each worker's input features times its weight rows, then each
    # worker sums the partials over its own output features (hidden) or its own rows (logits).
    m, k, n = shape
    rng = np.random.default_rng(2)
    x, W = _layer(rng, shape, dtype)
    partials = np.full((team, m, n), np.nan, dtype=dtype)
    for w, (first, stop) in enumerate(_feature_blocks(k, team)):
        _kernels.partial_product(x, W, first, stop, partials[w])
    out = np.full((m, n), np.nan, dtype=dtype)
    if hidden:
        for first, stop in _feature_blocks(n, team):
            _kernels.add_partial_products(partials, 0, m, first, stop, W[-1].copy(), out, True)
    else:
        for first, stop in _row_shares(m, team):
            _kernels.add_partial_products(partials, first, stop, 0, n, W[-1].copy(), out, False)
    assert relative_error(out, reference.dense_forward(x, W, relu_output=hidden)) <= RTOL[dtype]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("team", TEAMS)
@pytest.mark.parametrize("scheme", ["rows", "features"])
def test_error_passed_down_and_its_column_sums(shape, team, scheme, dtype):
    m, k, n = shape
    rng = np.random.default_rng(3)
    z_below = _rng_matrix(rng, (m, k), dtype)
    z_below[:, ::3] = 0  # the ReLU derivative at exactly 0 is 0
    x = reference.relu(z_below)  # this layer's input: the ReLU output below
    W = _rng_matrix(rng, (k + 1, n), dtype)
    dz = _rng_matrix(rng, (m, n), dtype)
    expected = reference.error_passed_down(dz, W, z_below)
    dx = np.full((m, k), np.nan, dtype=dtype)
    sums = np.zeros((team, k), dtype=dtype)
    if scheme == "rows":
        for w, (first, stop) in enumerate(_row_shares(m, team)):
            if stop > first:
                _kernels.pass_error_down(dz[first:stop], W, x[first:stop], dx[first:stop], sums[w], 0, k)
    else:
        for w, (first, stop) in enumerate(_feature_blocks(k, team)):
            _kernels.pass_error_down(dz, W, x, dx, sums[w], first, stop)
    assert relative_error(dx, expected) <= RTOL[dtype]
    assert (dx[:, ::3] == 0).all()
    # The bias gradient of the layer below: the column sums, whatever the split.
    assert relative_error(sums.sum(axis=0), expected.sum(axis=0)) <= RTOL[dtype]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("team", TEAMS)
@pytest.mark.parametrize("split", ["weight rows", "weight columns"])
def test_weight_and_bias_gradients_by_blocks(shape, team, split, dtype):
    m, k, n = shape
    rng = np.random.default_rng(4)
    x = _rng_matrix(rng, (m, k), dtype)
    dz = _rng_matrix(rng, (m, n), dtype)
    expected = reference.weight_gradient(reference.add_ones_column(x), dz)
    # The column sums of the error come in parts (each worker's rows in the row scheme).
    parts = np.stack([dz[first:stop].sum(axis=0) for first, stop in _row_shares(m, team)])
    dW = np.full((k, n), np.nan, dtype=dtype)
    db = np.full(n, np.nan, dtype=dtype)
    if split == "weight rows":
        for first, stop in _row_shares(k, team):
            _kernels.weight_gradient(x, dz, first, stop, 0, n, dW, 1.0, 0.0)
        _kernels.bias_gradient(parts, 0, n, db, 1.0, 0.0)
    else:
        for first, stop in _feature_blocks(n, team):
            _kernels.weight_gradient(x, dz, 0, k, first, stop, dW, 1.0, 0.0)
            _kernels.bias_gradient(parts, first, stop, db, 1.0, 0.0)
    assert relative_error(dW, expected[:-1]) <= RTOL[dtype]
    assert relative_error(db, expected[-1]) <= RTOL[dtype]


def test_the_sgd_form_steps_the_weights_in_place(dtype):
    # alpha = -lr, beta = 1 into the weights themselves: W - lr * dW, as train_step does.
    rng = np.random.default_rng(5)
    x, dz = _rng_matrix(rng, (9, 6), dtype), _rng_matrix(rng, (9, 4), dtype)
    W = _rng_matrix(rng, (7, 4), dtype)
    expected = W - dtype.type(0.1) * reference.weight_gradient(reference.add_ones_column(x), dz)
    dW, db = W[:-1].copy(), W[-1].copy()
    _kernels.weight_gradient(x, dz, 0, 6, 0, 4, dW, -0.1, 1.0)
    _kernels.bias_gradient(dz.sum(axis=0, keepdims=True), 0, 4, db, -0.1, 1.0)
    assert relative_error(np.vstack([dW, db]), expected) <= RTOL[dtype]


@pytest.mark.parametrize("kind", ["gradients only", "sgd"])
@pytest.mark.parametrize("split", ["weight rows", "weight columns"])
def test_write_weight_block_writes_its_block_and_nothing_else(kind, split, dtype):
    # The second layer of [5, 6, 4] params: offset 6 * 6; its block, bias, and nothing outside.
    rng = np.random.default_rng(6)
    offset, k, n = 36, 6, 4
    params = _rng_matrix(rng, offset + (k + 1) * n, dtype)
    grads = np.full_like(params, np.nan)
    x, dz = _rng_matrix(rng, (5, k), dtype), _rng_matrix(rng, (5, n), dtype)
    sums = np.stack([dz[:2].sum(axis=0), dz[2:].sum(axis=0)])
    rows, cols = ((1, 4), (0, n)) if split == "weight rows" else ((0, k), (1, 3))
    bias = (0, n) if split == "weight rows" else cols
    before = params.copy()
    _kernels.write_weight_block(0 if kind == "gradients only" else 1, 0.5, params, grads, offset, k, n,
                                *rows, *cols, *bias, sums, x, dz)
    gradient = reference.weight_gradient(reference.add_ones_column(x), dz)
    written = np.zeros((k + 1, n), dtype=bool)
    written[rows[0]:rows[1], cols[0]:cols[1]] = True
    written[k, bias[0]:bias[1]] = True
    layer = slice(offset, None)
    if kind == "gradients only":
        np.testing.assert_array_equal(params, before)
        result = grads[layer].reshape(k + 1, n)
        assert relative_error(result[written], gradient[written]) <= RTOL[dtype]
        assert np.isnan(result[~written]).all() and np.isnan(grads[:offset]).all()
    else:
        assert np.isnan(grads).all()
        result = params[layer].reshape(k + 1, n)
        expected = before[layer].reshape(k + 1, n) - dtype.type(0.5) * gradient
        assert relative_error(result[written], expected[written]) <= RTOL[dtype]
        np.testing.assert_array_equal(result[~written], before[layer].reshape(k + 1, n)[~written])
        np.testing.assert_array_equal(params[:offset], before[:offset])


@pytest.mark.parametrize("m,K", [(1, 2), (7, 10), (40, 3)])
@pytest.mark.parametrize("team", TEAMS)
@pytest.mark.parametrize("targets", ["labels", "soft"])
def test_head_by_rows(m, K, team, targets, dtype):
    rng = np.random.default_rng(7)
    logits = _rng_matrix(rng, (m, K), dtype, 3.0)
    logits[0, 0] = 80.0  # exp would overflow float32 without the row max taken out
    labels = rng.integers(0, K, size=m).astype(np.intp)
    T = reference.targets_matrix(labels, K, dtype)
    if targets == "soft":
        T = rng.dirichlet(np.ones(K), size=m).astype(dtype)
    expected_loss, expected_delta = reference.head(logits, T)
    z = logits.copy()
    sums = np.zeros((team, K), dtype=dtype)
    total = 0.0
    for w, (first, stop) in enumerate(_row_shares(m, team)):
        if stop == first:
            continue
        if targets == "labels":
            total += _kernels.softmax_cross_entropy(z[first:stop], labels[first:stop],
                                                    np.empty((0, K), dtype), 1.0 / m, sums[w])
        else:
            total += _kernels.softmax_cross_entropy(z[first:stop], np.empty(0, np.intp), T[first:stop],
                                                    1.0 / m, sums[w])
    assert total / m == pytest.approx(expected_loss, rel=RTOL[dtype])
    assert relative_error(z, expected_delta) <= RTOL[dtype]
    assert relative_error(sums.sum(axis=0), expected_delta.sum(axis=0)) <= RTOL[dtype] + 1e-6


def test_softmax_rows(dtype):
    rng = np.random.default_rng(8)
    logits = _rng_matrix(rng, (5, 7), dtype, 4.0)
    logits[1] = 200.0  # equal and large: every exp overflows without the row max taken out
    z = logits.copy()
    _kernels.softmax_rows(z)
    assert relative_error(z, reference.softmax(logits)) <= RTOL[dtype]
    np.testing.assert_allclose(z.sum(axis=1), 1.0, rtol=RTOL[dtype])


def test_kernels_refuse_blocks_out_of_range():
    x, W, z = np.ones((2, 3)), np.ones((4, 5)), np.empty((2, 5))
    with pytest.raises(ValueError, match="columns"):
        _kernels.dense_forward(x, W, z, True, 0, 6)
    with pytest.raises(ValueError, match="shapes"):
        _kernels.dense_forward(x, np.ones((3, 5)), z, True, 0, 5)


STATEFUL = {
    "momentum": dict(kind=2, momentum=0.9),
    "nesterov-decay": dict(kind=2, momentum=0.5, nesterov=True, weight_decay=0.1),
    "decay alone": dict(kind=2, weight_decay=0.1),
    "adam-l2": dict(kind=3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05),
    "adamw": dict(kind=3, weight_decay=0.1, decoupled=True),
}


@pytest.mark.parametrize("rule", STATEFUL)
@pytest.mark.parametrize("split", ["weight rows", "weight columns"])
def test_a_stateful_rule_steps_its_block_and_nothing_else(rule, split, dtype):
    # Layer 2 of [5, 6, 20, 300]: weights, moments and everything outside the block as the reference says.
    rng = np.random.default_rng(10)
    offset, k, n = 36, 20, 300
    settings = dict(STATEFUL[rule])
    kind = settings.pop("kind")
    params = _rng_matrix(rng, offset + (k + 1) * n, dtype)
    first_moment = _rng_matrix(rng, params.size, dtype, 0.1)
    second_moment = np.abs(_rng_matrix(rng, params.size, dtype, 0.1))
    x, dz = _rng_matrix(rng, (7, k), dtype), _rng_matrix(rng, (7, n), dtype)
    sums = np.stack([dz[:3].sum(axis=0), dz[3:].sum(axis=0)])
    rows, cols = ((2, 17), (0, n)) if split == "weight rows" else ((0, k), (16, 160))
    bias = (0, n) if split == "weight rows" else cols
    before = [a.copy() for a in (params, first_moment, second_moment)]
    state = {"first_moment": first_moment, "second_moment": second_moment} if kind == 3 else (
        {"first_moment": first_moment} if settings.get("momentum") else {})
    _kernels.write_weight_block(kind, 0.05, params, np.empty_like(params), offset, k, n, *rows, *cols, *bias,
                                sums, x, dz, step=4, **state, **settings)

    # The reference on the whole layer, from copies; then only the block may differ from before.
    W = before[0][offset:].reshape(k + 1, n).copy()
    m = before[1][offset:].reshape(k + 1, n).copy()
    v = before[2][offset:].reshape(k + 1, n).copy()
    gradient = reference.weight_gradient(reference.add_ones_column(x), dz)
    if kind == 3:
        reference.adam_step([W], [gradient], [m], [v], 5, 0.05, (settings.get("beta1", 0.9),
                            settings.get("beta2", 0.999)), settings.get("eps", 1e-8), settings["weight_decay"],
                            settings.get("decoupled", False))
    else:
        reference.sgd_step([W], [gradient], [m], 0.05, settings.get("momentum", 0.0),
                           settings.get("nesterov", False), settings.get("weight_decay", 0.0))
    written = np.zeros((k + 1, n), dtype=bool)
    written[rows[0]:rows[1], cols[0]:cols[1]] = True
    written[k, bias[0]:bias[1]] = True
    arrays = [(params, W, before[0])]
    if state:
        arrays.append((first_moment, m, before[1]))
    if kind == 3:
        arrays.append((second_moment, v, before[2]))
    for result, expected, old in arrays:
        layer, old_layer = result[offset:].reshape(k + 1, n), old[offset:].reshape(k + 1, n)
        assert relative_error(layer[written], expected[written]) <= RTOL[dtype]
        np.testing.assert_array_equal(layer[~written], old_layer[~written])
        np.testing.assert_array_equal(result[:offset], old[:offset])
