"""Every op in samediff_py.ops against an independent numpy reference (float32), and every differentiable op's
gradient against central finite differences of the graph itself (float64).

The gradient check differentiates ``sum(op(inputs) * R)`` for a fixed random ``R`` (so every output element
gets a distinct weight) and compares SameDiff's gradient with ``(L(x + h e_i) - L(x - h e_i)) / 2h`` computed
by running the same graph: this tests the backward pass against the forward pass, while the forward tests
tie the forward pass to numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import reference  # tests/reference.py (pytest puts tests/ on sys.path)

from samediff_py import Graph, Var, _jvm, ops

RNG = np.random.default_rng(20240601)


# ---------------------------------------------------------------------------- helpers
def close(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    """float32 comparison: ``rtol`` relative, and absolute ``rtol`` times the reference's magnitude."""
    ref = np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


def forward(build: Callable[..., Var], *inputs: np.ndarray, dims: Sequence[tuple] | None = None, dtype=np.float32):
    """Run ``build(*placeholders)`` on ``inputs``; returns (numpy result, output Var).

    ``dims`` overrides the placeholders' declared shapes (e.g. ``(None, 3)``) to test unknown dimensions.
    """
    g = Graph(dtype=dtype)
    phs = [
        g.placeholder(f"in{i}", a.shape if dims is None else dims[i], a.dtype if a.dtype.kind in "biu" else dtype)
        for i, a in enumerate(inputs)
    ]
    out = build(*phs)
    return g.run({p.name: a for p, a in zip(phs, inputs, strict=True)}, out), out


def randn(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def away_from_zero(*shape: int, low: float = 0.2) -> np.ndarray:
    """Random values with |x| >= low: no kinks (relu), no near-zero denominators, no ties."""
    return RNG.uniform(low, 1.5, shape) * RNG.choice([-1.0, 1.0], shape)


def check_grad(
    build: Callable[..., Var],
    inputs: Sequence[np.ndarray],
    *,
    variables: bool = False,
    extra: dict[str, np.ndarray] | None = None,
    dims: Sequence[tuple] | None = None,
    h: float = 1e-6,
    rtol: float = 1e-6,
) -> dict[str, np.ndarray]:
    """SameDiff's d/d(inputs) of ``sum(build(*xs) * R)`` vs central differences, in float64.

    ``xs`` are trainable variables (``variables=True``) or placeholders (then a dummy variable is added:
    SameDiff M2.1 differentiates only graphs with a trainable float variable). ``build`` may make other
    placeholders on ``xs[0].graph``; their values come from ``extra``. Agreement is required to ``rtol``
    (relative, and absolute times the largest numeric gradient). Returns the analytic gradients.
    """
    g = Graph(dtype=np.float64)
    inputs = [np.asarray(a, np.float64) for a in inputs]
    if variables:
        xs = [g.variable(f"x{i}", a) for i, a in enumerate(inputs)]
    else:
        g.variable("anchor", np.zeros(1))
        xs = [g.placeholder(f"x{i}", a.shape if dims is None else dims[i]) for i, a in enumerate(inputs)]
    out = build(*xs)
    feeds: dict[str, np.ndarray] = dict(extra or {})
    if not variables:
        feeds.update({x.name: a for x, a in zip(xs, inputs, strict=True)})
    shape = g.run(feeds, out).shape
    weights = g.constant("R", np.random.default_rng(7).uniform(0.5, 1.5, shape))
    loss = ops.sum(ops.multiply(out, weights))
    analytic = g.gradients(feeds, loss, xs)

    def loss_at(x: Var, value: np.ndarray) -> float:
        if variables:
            g.set_value(x, value)
            return float(g.run(feeds, loss))
        return float(g.run({**feeds, x.name: value}, loss))

    for x, a in zip(xs, inputs, strict=True):
        numeric = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            plus, minus = a.copy(), a.copy()
            plus[i] += h
            minus[i] -= h
            numeric[i] = (loss_at(x, plus) - loss_at(x, minus)) / (2 * h)
        if variables:
            g.set_value(x, a)
        got = analytic[x.name]
        assert got.shape == a.shape, (x.name, got.shape, a.shape)
        scale = max(1.0, float(np.max(np.abs(numeric))))
        np.testing.assert_allclose(got, numeric, rtol=rtol, atol=rtol * scale, err_msg=x.name)
    return analytic


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_gelu_sigmoid(x):
    return x / (1.0 + np.exp(-1.702 * x))


_erf = np.vectorize(math.erf, otypes=[np.float64])  # the reference erf: Python's math.erf, elementwise


def np_erf(x):
    return _erf(np.asarray(x, np.float64))


def np_gelu_exact(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np_erf(x / math.sqrt(2.0)))


def np_gelu_tanh(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_log_softmax(x, axis):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def np_layer_norm(x, axes, gain=None, bias=None, eps=1e-5):
    return reference.layer_norm(x, gain, bias, eps, axes)


# ---------------------------------------------------------------------------- arithmetic and broadcasting
BROADCAST_SHAPES = [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((4, 1), (1, 5))]
BINARY = {
    "add": (ops.add, np.add),
    "subtract": (ops.subtract, np.subtract),
    "multiply": (ops.multiply, np.multiply),
    "divide": (ops.divide, np.divide),
}


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("sa, sb", BROADCAST_SHAPES, ids=str)
def test_binary_broadcasting(op, sa, sb):
    fn, ref = BINARY[op]
    a, b = randn(*sa), away_from_zero(*sb).astype(np.float32)
    got, out = forward(fn, a, b)
    close(got, ref(a, b))
    assert out.shape == np.broadcast_shapes(sa, sb)


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("sa, sb", BROADCAST_SHAPES[1:], ids=str)
def test_binary_broadcasting_gradient(op, sa, sb):
    check_grad(BINARY[op][0], [away_from_zero(*sa), away_from_zero(*sb)])


def test_python_operators_and_number_operands():
    a = randn(2, 3)
    b = np.array([1.0, 2.0, 4.0], np.float32)
    got, _ = forward(lambda x: [x + 1, 2 - x, x * 3, 1 / (x * x + 1), x / 2, -x, x @ np.eye(3, dtype=np.float32)], a)
    refs = [a + 1, 2 - a, a * 3, 1 / (a * a + 1), a / 2, -a, a]
    g, _ = forward(lambda x: x + b, a)  # a numpy array operand becomes a constant
    for r, e in zip(got, refs, strict=True):
        close(r, e)
    close(g, a + b)


def test_number_operand_takes_the_var_dtype():
    got, out = forward(lambda x: x * 0.1, np.array([1.0, 2.0]), dtype=np.float64)
    assert out.dtype == got.dtype == np.float64
    np.testing.assert_array_equal(got, np.array([1.0, 2.0]) * 0.1)  # 0.1 was not rounded to float32


def test_negative_gradient():
    check_grad(ops.negative, [randn(2, 3)])


def test_binary_errors_surface_in_python():
    g = Graph()
    x = g.placeholder("x", (2, 3))
    with pytest.raises(ValueError, match=r"do not broadcast \(axis -1: 3 vs 4\)"):
        ops.add(x, g.placeholder("y", (4,)))
    with pytest.raises(TypeError, match="dtype mismatch"):
        ops.add(x, g.placeholder("i", (3,), np.int32))
    with pytest.raises(ValueError, match="different graphs"):
        ops.add(x, Graph().placeholder("z", (3,)))
    with pytest.raises(TypeError, match="no truth value"):
        bool(x > 0)


# ---------------------------------------------------------------------------- comparisons
COMPARE = {
    "less": (ops.less, np.less),
    "less_equal": (ops.less_equal, np.less_equal),
    "greater": (ops.greater, np.greater),
    "greater_equal": (ops.greater_equal, np.greater_equal),
    "equal": (ops.equal, np.equal),
    "not_equal": (ops.not_equal, np.not_equal),
}


@pytest.mark.parametrize("op", COMPARE)
def test_comparisons(op):
    fn, ref = COMPARE[op]
    a = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, -1.0]], np.float32)
    b = np.array([1.0, 1.0, 0.0], np.float32)  # broadcast; ties included
    got, out = forward(fn, a, b)
    assert got.dtype == np.bool_ and out.dtype == np.bool_
    np.testing.assert_array_equal(got, ref(a, b))


def test_comparison_operators_with_numbers():
    a = np.array([-1, 0, 1, 2], np.int32)
    got, _ = forward(lambda x: [x < 1, x <= 1, x > 0, x >= 0, ops.equal(x, 1), ops.not_equal(x, 1)], a)
    refs = [a < 1, a <= 1, a > 0, a >= 0, a == 1, a != 1]
    for r, e in zip(got, refs, strict=True):
        np.testing.assert_array_equal(r, e)


# ---------------------------------------------------------------------------- matmul
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (2, 1, 1), (1, 1, 3), (1, 3, 1)])
def test_matmul_gradient_for_unit_dimensions(m, k, n):
    """M2.1's matmul_bp throws for [1, 1] @ [1, 1] (a batch of one through a one-feature layer); an inner
    dimension of 1 is an outer product, built as a broadcast multiply."""
    check_grad(lambda a, b: ops.matmul(a, b), [randn(m, k), randn(k, n)])
    check_grad(lambda a, b: ops.matmul(a, b), [randn(m, k), randn(k, n)], variables=True)


def test_matmul_rank2_unknown_batch():
    a, w = randn(5, 3), randn(3, 4)
    got, out = forward(lambda x, y: x @ y, a, w, dims=[(None, 3), (3, 4)])
    assert out.shape == (None, 4)
    close(got, a @ w)


def test_matmul_rank3_at_rank2_unknown_batch_and_time():
    a, w = randn(2, 5, 3), randn(3, 4)
    g = Graph()
    x = g.placeholder("x", ("batch", "time", 3))
    out = x @ g.variable("w", w)
    assert out.shape == (None, None, 4)
    close(g.run({"x": a}, out), a @ w)
    b = randn(3, 7, 3)  # other batch and time sizes through the same graph
    close(g.run({"x": b}, out), b @ w)


def test_matmul_rank4():
    a, w = randn(2, 2, 3, 4), randn(4, 2)
    got, _ = forward(ops.matmul, a, w)
    close(got, a @ w)


def test_matmul_errors():
    g = Graph()
    with pytest.raises(ValueError, match="inner dimensions differ"):
        ops.matmul(g.placeholder("a", (2, 3)), g.placeholder("b", (4, 2)))
    with pytest.raises(ValueError, match="rank >= 2"):
        ops.matmul(g.placeholder("c", (3,)), g.placeholder("d", (3, 2)))


def test_matmul_rank2_gradient():
    check_grad(ops.matmul, [randn(3, 4), randn(4, 2)])


def test_matmul_rank3_gradient_unknown_dims():
    check_grad(ops.matmul, [randn(2, 3, 4), randn(4, 2)], dims=[(None, None, 4), (4, 2)])


def test_matmul_gradient_wrt_variables():
    check_grad(ops.matmul, [randn(2, 3, 4), randn(4, 2)], variables=True)


@pytest.mark.parametrize("shape", [(5, 3), (2, 5, 3)], ids=["rank2", "rank3"])
def test_matmul_transpose_b(shape):
    a, w = randn(*shape), randn(4, 3)  # w is [n, k]: a @ w.T
    got, out = forward(lambda x, y: ops.matmul(x, y, transpose_b=True), a, w,
                       dims=[(None,) * (len(shape) - 1) + (3,), (4, 3)])  # fmt: skip
    assert out.shape == (None,) * (len(shape) - 1) + (4,)
    close(got, a @ w.T)
    check_grad(lambda x, y: ops.matmul(x, y, transpose_b=True), [randn(*shape), randn(4, 3)], variables=True)
    with pytest.raises(ValueError, match=r"inner dimensions differ: .* @ \(3, 4\).T"):
        g = Graph()
        ops.matmul(g.placeholder("p", shape), g.placeholder("q", (3, 4)), transpose_b=True)


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_batch_matmul(ta, tb):
    a, b = randn(2, 3, 4, 5), randn(2, 3, 5, 6)
    a_in = a.swapaxes(-1, -2).copy() if ta else a
    b_in = b.swapaxes(-1, -2).copy() if tb else b
    got, out = forward(lambda x, y: ops.batch_matmul(x, y, ta, tb), a_in, b_in)
    close(got, a @ b)
    assert out.shape == (2, 3, 4, 6)
    small_a, small_b = randn(1, 2, 3, 2), randn(1, 2, 2, 3)
    check_grad(
        lambda x, y: ops.batch_matmul(x, y, ta, tb),
        [small_a.swapaxes(-1, -2) if ta else small_a, small_b.swapaxes(-1, -2) if tb else small_b],
    )


# ---------------------------------------------------------------------------- reductions
REDUCE = {"sum": (ops.sum, np.sum), "mean": (ops.mean, np.mean), "max": (ops.max, np.max), "min": (ops.min, np.min)}
AXES = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(op, axis, keepdims):
    fn, ref = REDUCE[op]
    a = randn(2, 3, 4)
    got, out = forward(lambda x: fn(x, axis, keepdims), a)
    expected = ref(a, axis=axis, keepdims=keepdims)
    close(got, expected)
    assert out.shape == expected.shape


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("axis, keepdims", [(None, False), (1, False), ((0, 2), True), (-1, True)], ids=str)
def test_reduction_gradients(op, axis, keepdims):
    a = RNG.permutation(24).reshape(2, 3, 4) / 7.0  # distinct values: max/min have no ties
    check_grad(lambda x: REDUCE[op][0](x, axis, keepdims), [a])


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("shape, axis", [((1, 3), 0), ((3, 1), 1), ((1, 1), 0), ((1, 1), 1), ((1, 3), -2)], ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("known", [False, True])
def test_reduction_over_unit_axis_of_rank2(op, shape, axis, keepdims, known):
    """M2.1 throws a NullPointerException reducing [1, n] over axis 0 or [n, 1] over axis 1 (e.g. a batch
    of one); ops works around it."""
    fn, ref = REDUCE[op]
    a = randn(*shape)
    got, out = forward(lambda x: fn(x, axis, keepdims), a, dims=None if known else [(None, None)])
    close(got, ref(a, axis=axis, keepdims=keepdims))
    assert len(out.shape) == got.ndim


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("shape, axis", [((1, 3), 0), ((3, 1), 1), ((1, 1), 1)], ids=str)
def test_reduction_over_unit_axis_of_rank2_gradient(op, shape, axis):
    check_grad(lambda x: REDUCE[op][0](x, axis, True), [randn(*shape)], dims=[(None, None)])
    check_grad(lambda x: REDUCE[op][0](x, axis), [randn(*shape)], variables=True)


def test_reduction_keeps_the_requested_name():
    g = Graph()
    x = g.placeholder("x", (None, None))
    assert ops.sum(x, 0, name="s").name == "s"
    assert ops.mean(x, 1, keepdims=True, name="m").name == "m"
    assert ops.max(x, (0, 1), name="mx").name == "mx"


def test_reduction_methods_and_errors():
    a = randn(2, 3)
    got, _ = forward(lambda x: [x.sum(), x.mean(0), x.max(-1, keepdims=True)], a)
    close(got[0], a.sum())
    close(got[1], a.mean(0))
    close(got[2], a.max(-1, keepdims=True))
    g = Graph()
    x = g.placeholder("x", (2, 3))
    with pytest.raises(ValueError, match="out of range"):
        ops.sum(x, 2)
    with pytest.raises(ValueError, match="repeated axis"):
        ops.sum(x, (1, -1))


# ---------------------------------------------------------------------------- shape ops
@pytest.mark.parametrize("shape", [(6, 4), (-1, 4), (2, -1, 2), (24,), (-1,), (4, 3, 2)], ids=str)
def test_reshape(shape):
    a = randn(2, 3, 4)
    got, out = forward(lambda x: ops.reshape(x, shape), a)
    close(got, a.reshape(shape))
    assert out.shape == a.reshape(shape).shape


def test_reshape_unknown_dims_and_method():
    a = randn(2, 3, 4)
    got, out = forward(lambda x: x.reshape(-1, 4), a, dims=[(None, None, 4)])
    assert out.shape == (None, 4)
    close(got, a.reshape(-1, 4))
    got, _ = forward(lambda x: x.reshape((3, 8)), a)
    close(got, a.reshape(3, 8))


def test_reshape_errors():
    g = Graph()
    x = g.placeholder("x", (2, 3))
    with pytest.raises(ValueError, match="cannot reshape"):
        ops.reshape(x, (4, 2))
    with pytest.raises(ValueError, match="cannot reshape"):
        ops.reshape(x, (-1, 4))
    with pytest.raises(ValueError, match="at most one -1"):
        ops.reshape(x, (-1, -1))


def test_reshape_gradient():
    check_grad(lambda x: ops.reshape(x, (3, -1)), [randn(2, 3, 2)])


@pytest.mark.parametrize("axes", [None, (1, 0, 2), (2, 0, 1), (-1, 0, 1)], ids=str)
def test_transpose(axes):
    a = randn(2, 3, 4)
    got, out = forward(lambda x: ops.transpose(x, axes), a)
    close(got, np.transpose(a, axes))
    assert out.shape == np.transpose(a, axes).shape


def test_transpose_method_and_gradient():
    a = randn(2, 3, 4)
    got, _ = forward(lambda x: x.transpose(2, 0, 1), a)
    close(got, a.transpose(2, 0, 1))
    check_grad(lambda x: ops.transpose(x, (2, 0, 1)), [a])
    with pytest.raises(ValueError, match="not a permutation"):
        ops.transpose(Graph().placeholder("x", (2, 3)), (0, 0))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    parts = [randn(2, 3, 4), randn(2, 3, 4), randn(2, 3, 4)]
    got, out = forward(lambda *xs: ops.concat(xs, axis), *parts)
    close(got, np.concatenate(parts, axis))
    assert out.shape == np.concatenate(parts, axis).shape
    check_grad(lambda *xs: ops.concat(xs, axis), [p[:, :2, :2] for p in parts])


def test_concat_unequal_sizes_and_unknown_dims():
    a, b = randn(2, 3), randn(2, 5)
    got, out = forward(lambda x, y: ops.concat([x, y], 1), a, b, dims=[(None, 3), (None, 5)])
    assert out.shape == (None, 8)
    close(got, np.concatenate([a, b], 1))
    g = Graph()
    with pytest.raises(ValueError, match="axis 0 sizes differ"):
        ops.concat([g.placeholder("p", (2, 3)), g.placeholder("q", (3, 3))], 1)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis):
    parts = [randn(2, 3), randn(2, 3)]
    got, out = forward(lambda *xs: ops.stack(xs, axis), *parts)
    close(got, np.stack(parts, axis))
    assert out.shape == np.stack(parts, axis).shape
    check_grad(lambda *xs: ops.stack(xs, axis), parts)


SLICES = {
    "int": (1,),
    "neg_int": (-1,),
    "neg_int2": (-2,),
    "cols": (slice(None), slice(1, 3)),
    "step": (slice(None, None, 2),),
    "step_start": (slice(1, None, 2), slice(None), slice(0, 4, 3)),
    "ellipsis_neg": (Ellipsis, -2),
    "mixed": (slice(1, None), 0, -1),
    "neg_bounds": (slice(-2, None), slice(None, -1)),
    "neg_both": (slice(-3, -1),),
    "int_ellipsis": (0, Ellipsis),
    "full": (Ellipsis,),
    "past_end": (slice(1, 10), slice(-10, 2)),
    "empty": (slice(2, 2),),
}


@pytest.mark.parametrize("name", SLICES)
def test_slicing(name):
    index = SLICES[name]
    a = randn(3, 4, 5)
    got, out = forward(lambda x: x[index], a)
    close(got, a[index])
    assert out.shape == a[index].shape


@pytest.mark.parametrize("name", ["int", "neg_int", "step_start", "mixed", "neg_bounds"])
def test_slicing_gradient(name):
    check_grad(lambda x: x[SLICES[name]], [randn(3, 4, 5)])


def test_slicing_unknown_dims():
    a = randn(3, 4)
    got, out = forward(lambda x: x[:, 1::2], a, dims=[(None, None)])
    assert out.shape == (None, None)
    close(got, a[:, 1::2])
    got, _ = forward(lambda x: x[-1], a, dims=[(None, None)])
    close(got, a[-1])


def test_slicing_errors():
    x = Graph().placeholder("x", (3, 4))
    with pytest.raises(IndexError, match="out of bounds"):
        x[3]
    with pytest.raises(IndexError, match="out of bounds"):
        x[:, -5]
    with pytest.raises(IndexError, match="positive"):
        x[::-1]
    with pytest.raises(IndexError, match="too many"):
        x[0, 0, 0]
    with pytest.raises(IndexError, match="unsupported"):
        x[[0, 1]]


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("shape", [(2, 3), (1, 1), (1, 3), (), (1,), (1, 1, 1)], ids=str)
def test_expand_dims(axis, shape):
    """Includes [1, 1]: M2.1's expandDims returns it unchanged (rank 2), so ops uses a stack of one."""
    a = randn(*shape)
    axis = axis % (a.ndim + 1) if axis >= 0 else axis
    got, out = forward(lambda x: ops.expand_dims(x, axis), a, dims=[(None,) * a.ndim])
    close(got, np.expand_dims(a, axis))
    assert len(out.shape) == got.ndim


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_expand_dims_gradient(axis):
    check_grad(lambda x: ops.expand_dims(x, axis), [randn(2, 3)])
    check_grad(lambda x: ops.expand_dims(x, axis), [randn(1, 1)], dims=[(None, None)])


# ---------------------------------------------------------------------------- cast, one_hot, embedding
@pytest.mark.parametrize(
    "src, dst",
    [(np.float32, np.int32), (np.float32, np.int64), (np.float32, np.float64), (np.int32, np.float32)]
    + [(np.int64, np.int32), (np.float32, np.bool_), (np.bool_, np.float32), (np.int32, np.bool_)],
    ids=str,
)
def test_cast(src, dst):
    a = np.array([[0.0, 1.0, -2.0], [3.0, 0.0, 5.0]]).astype(src)
    got, out = forward(lambda x: ops.cast(x, dst), a)
    assert got.dtype == out.dtype == dst
    np.testing.assert_array_equal(got, a.astype(dst))


def test_cast_truncates_toward_zero():
    a = np.array([-2.7, -0.5, 0.5, 2.7], np.float32)
    got, _ = forward(lambda x: x.astype(np.int32), a)
    np.testing.assert_array_equal(got, a.astype(np.int32))


def test_cast_gradient_passes_through():
    # float64 -> float32 -> float64: the gradient is the upstream gradient (no FD: float32 rounding)
    r = np.random.default_rng(7).uniform(0.5, 1.5, (2, 3))
    g = Graph(dtype=np.float64)
    x = g.variable("x", randn(2, 3))
    loss = ops.sum(ops.cast(ops.cast(x, np.float32), np.float64) * r)
    np.testing.assert_allclose(g.gradients({}, loss, [x])["x"], r)


def test_cast_rejects_unsupported_dtype():
    with pytest.raises(TypeError, match="float16"):
        ops.cast(Graph().placeholder("x", (2,)), np.float16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_one_hot(dtype):
    ids = np.array([[0, 3, 1], [2, 4, -1]], np.int32)  # 4 and -1 are out of range: zero rows
    got, out = forward(lambda i: ops.one_hot(i, 4, dtype), ids)
    ref = (ids[..., None] == np.arange(4)).astype(dtype)
    assert got.dtype == out.dtype == dtype and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, ref)


def test_one_hot_int64_ids_and_errors():
    got, _ = forward(lambda i: ops.one_hot(i, 3), np.array([2, 0], np.int64))
    np.testing.assert_array_equal(got, np.eye(3, dtype=np.float32)[[2, 0]])
    with pytest.raises(TypeError, match="integer ids"):
        ops.one_hot(Graph().placeholder("x", (2,)), 3)


def test_embedding_forward():
    table = randn(5, 3)
    ids = np.array([[0, 4, 4], [2, 1, 0]], np.int32)
    g = Graph()
    i = g.placeholder("ids", ("batch", "time"), np.int32)
    e = ops.embedding(i, g.variable("table", table))
    assert e.shape == (None, None, 3)
    close(g.run({"ids": ids}, e), table[ids])


def test_embedding_duplicate_ids_gradient_is_scatter_add():
    """Repeated tokens must add their gradients: what a gather-based embedding gets wrong in M2.1."""
    vocab, d = 6, 3
    table = randn(vocab, d, dtype=np.float64)
    ids = np.array([[1, 1, 3, 1], [0, 3, 3, 5]], np.int32)
    w = np.random.default_rng(3).standard_normal((2, 4, d))
    g = Graph(dtype=np.float64)
    i = g.placeholder("ids", ("batch", "time"), np.int32)
    t = g.variable("table", table)
    loss = ops.sum(ops.embedding(i, t) * w)
    ref = np.zeros((vocab, d))
    np.add.at(ref, ids, w)
    got = g.gradients({"ids": ids}, loss, [t])["table"]
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert not got[[2, 4]].any()  # ids that do not occur get no gradient


def test_embedding_gradient_fd():
    ids = np.array([[1, 1, 3], [0, 3, 3]], np.int32)

    def build(t):
        i = t.graph.placeholder("ids", (2, 3), np.int32)
        return ops.embedding(i, t)

    check_grad(build, [randn(4, 2)], variables=True, extra={"ids": ids})


def test_gather_gradient_is_fixed_for_the_whole_jvm():
    """M2.1's gather gradient overwrites rows (wrong even for unique ids) and throws for ids >= their count;
    samediff_py registers a fixed op class for the op's hash, so even a gather built by SameDiff itself
    (``sd.gather``, not through samediff_py) differentiates correctly (scatter-add, as np.add.at)."""
    assert _jvm.jclass("samediffpy.FixedOps").classFor("gather").endswith("FixedGather")
    vocab, d = 6, 3
    ids = np.array([5, 1, 1, 3, 5, 0, 1], np.int32)  # repeats, ids >= count, the table's last row
    w = np.arange(21.0).reshape(7, 3) + 1
    g = Graph(dtype=np.float64)
    i = g.placeholder("ids", (None,), np.int32)
    t = g.variable("table", np.arange(18.0).reshape(vocab, d))
    stock = g.op("gather", None, lambda n: g.sd.gather(n, t.j, i.j, 0), (None, d), np.float64, (t, i))
    np.testing.assert_array_equal(g.run({"ids": ids}, stock), np.arange(18.0).reshape(vocab, d)[ids])
    ref = np.zeros((vocab, d))
    np.add.at(ref, ids, w)
    got = g.gradients({"ids": ids}, ops.sum(stock * w), [t])["table"]
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------- row select, reshape_like
@pytest.mark.parametrize("fill", [0.0, -np.inf])
def test_select_rows_matches_numpy_and_never_reads_the_other_row(fill):
    x = randn(6, 3, 2)
    y = np.full_like(x, fill)
    keep = np.array([True, False, True, True, False, False])
    x[~keep] = np.nan  # unchosen rows of x hold NaN: a select never reads them
    got, out = forward(lambda a, b, c: ops.select_rows(c, a, b), x, y, keep)
    np.testing.assert_array_equal(got, np.where(keep[:, None, None], x, y))
    assert out.shape == x.shape


def test_select_rows_gradient():
    keep = np.array([True, False, True, False])
    g = Graph(dtype=np.float64)
    a, b = g.variable("a", randn(4, 3)), g.variable("b", randn(4, 3))
    cond = g.constant("keep", keep)
    w = RNG.uniform(0.5, 1.5, (4, 3))
    got = g.gradients({}, ops.sum(ops.multiply(ops.select_rows(cond, a, b), w)), [a, b])
    np.testing.assert_array_equal(got["a"], np.where(keep[:, None], w, 0.0))
    np.testing.assert_array_equal(got["b"], np.where(keep[:, None], 0.0, w))


def test_select_rows_and_reshape_like_refuse_bad_inputs():
    g = Graph()
    x = g.placeholder("x", (4, 3))
    with pytest.raises(TypeError, match="1-D bool"):
        ops.select_rows(g.placeholder("c", (4, 3), "bool"), x, x)
    with pytest.raises(ValueError, match="cond has 3 entries, x has 4 rows"):
        ops.select_rows(g.placeholder("c3", (3,), "bool"), x, x)
    with pytest.raises(ValueError, match="equal shapes"):
        ops.select_rows(g.placeholder("c4", (4,), "bool"), x, g.placeholder("y", (4, 2)))


def test_reshape_like_restores_unknown_dims():
    a = randn(2, 3, 4)
    got, out = forward(lambda x: ops.reshape_like(ops.reshape(x, (-1, 4)) * 2.0, x), a, dims=[(None, None, 4)])
    np.testing.assert_array_equal(got, a * 2)
    assert out.shape == (None, None, 4)
    check_grad(lambda x: ops.reshape_like(ops.reshape(x, (-1, 2)), x), [randn(2, 3, 2)], dims=[(None, None, 2)])


# ---------------------------------------------------------------------------- activations
UNARY = {
    "relu": (ops.relu, lambda x: np.maximum(x, 0), away_from_zero),
    "gelu": (ops.gelu, np_gelu_exact, away_from_zero),
    "gelu_tanh": (lambda x: ops.gelu(x, "tanh"), np_gelu_tanh, away_from_zero),
    "gelu_sigmoid": (lambda x: ops.gelu(x, approximate="sigmoid"), np_gelu_sigmoid, away_from_zero),
    "erf": (ops.erf, np_erf, away_from_zero),
    "tanh": (ops.tanh, np.tanh, away_from_zero),
    "sigmoid": (ops.sigmoid, lambda x: 1 / (1 + np.exp(-x)), away_from_zero),
    "exp": (ops.exp, np.exp, away_from_zero),
    "log": (ops.log, np.log, lambda *s: np.abs(away_from_zero(*s))),
    "sqrt": (ops.sqrt, np.sqrt, lambda *s: np.abs(away_from_zero(*s))),
    "square": (ops.square, np.square, away_from_zero),
}


@pytest.mark.parametrize("op", UNARY)
def test_unary(op):
    fn, ref, sample = UNARY[op]
    a = (sample(3, 4) * 2).astype(np.float32)
    got, out = forward(fn, a)
    close(got, ref(a))
    assert out.shape == (3, 4) and out.dtype == np.float32


@pytest.mark.parametrize("op", UNARY)
def test_unary_gradient(op):
    fn, _, sample = UNARY[op]
    check_grad(fn, [sample(2, 3)])


def test_relu_method_and_zero():
    got, _ = forward(lambda x: x.relu(), np.array([-1.0, 0.0, 2.0], np.float32))
    np.testing.assert_array_equal(got, [0.0, 0.0, 2.0])


def test_relu_special_values_gradient_and_saved_form(tmp_path):
    """relu is libnd4j's relu op with the gradient g * (x > 0) (FixedOps.Relu: DL4J's own relu gradient,
    thresholdedrelu_bp, is ~30x slower). NaN stays NaN, -inf gives 0, the gradient is 0 at 0 and at NaN. A saved
    file holds DL4J's legacy relu instead (plain DL4J cannot load the custom op: test_train's plain Java test),
    the graph keeps its own class, and loading brings the fast class back."""
    from samediff_py import checkpoint

    fixed = _jvm.jclass("samediffpy.FixedOps")
    assert fixed.classFor("relu").endswith("FixedOps$Relu")
    g = Graph(seed=0)
    x = g.placeholder("x", (None, 7))
    v = g.variable("v", np.ones(7, np.float32))
    r = ops.relu(ops.multiply(x, v), name="r")
    ops.sum(ops.multiply(r, g.constant("c", np.arange(1.0, 8.0, dtype=np.float32))), name="loss")
    xs = np.array([[np.nan, -1.0, -0.0, 0.0, 2.0, np.inf, -np.inf]], np.float32)
    np.testing.assert_array_equal(g.run({"x": xs}, r), [[np.nan, 0.0, 0.0, 0.0, 2.0, np.inf, 0.0]])
    want = np.array([[0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 0.0]], np.float32)  # c * (x > 0), v = 1
    np.testing.assert_array_equal(g.gradients({"x": xs}, "loss", [x])["x"], want)
    path = checkpoint.save(g, tmp_path / "relu.sdz")
    assert list(fixed.opClasses(g.sd, "relu")) == ["samediffpy.FixedOps$Relu"]  # put back after the save
    g2 = checkpoint.load(path)
    assert list(fixed.opClasses(g2.sd, "relu")) == ["samediffpy.FixedOps$Relu"]
    np.testing.assert_array_equal(g2.run({"x": xs}, "r"), g.run({"x": xs}, r))
    np.testing.assert_array_equal(g2.gradients({"x": xs}, "loss", ["x"])["x"], want)


def test_gelu_sigmoid_is_dl4js_form_not_erf():
    x = np.linspace(-4, 4, 81)
    got, _ = forward(lambda v: ops.gelu(v, approximate="sigmoid"), x, dtype=np.float64)
    # libnd4j's constant is the float 1.702f even in double precision (visible at ~1e-7 relative)
    np.testing.assert_allclose(got, x / (1.0 + np.exp(-float(np.float32(1.702)) * x)), rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(got - np_gelu_exact(x))) > 1e-2  # documents which GELU this is


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-14), (np.float32, 3e-7)])
def test_erf_and_gelu_forms_over_a_wide_range(dtype, tol):
    """Many points, tails included (erf saturates; gelu -> 0 on the left, -> x on the right): float64 agrees
    with math.erf to rounding, float32 to about one ulp of the output's scale."""
    x = np.concatenate([np.linspace(-10, 10, 2001), [-30.0, -6.5, 1e-6, -1e-6, 6.5, 30.0]]).astype(dtype)
    g = Graph(dtype=dtype)
    v = g.placeholder("x", (None,))
    outs = g.run({"x": x}, [ops.erf(v), ops.gelu(v), ops.gelu(v, "tanh"), ops.gelu(v, approximate="none")])
    for got, ref in zip(outs, [np_erf(x), np_gelu_exact(x), np_gelu_tanh(x), np_gelu_exact(x)], strict=True):
        assert got.dtype == dtype
        err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
        assert err.max() <= tol, (float(err.max()), float(x[np.argmax(err)]))
    # the three forms are different functions: the defaults must not silently swap
    assert np.max(np.abs(np_gelu_tanh(x) - np_gelu_exact(x))) > 1e-4
    assert np.max(np.abs(np_gelu_sigmoid(x) - np_gelu_exact(x))) > 1e-2


@pytest.mark.parametrize("approximate", ["none", "tanh", "sigmoid"])
def test_gelu_gradient_including_tails(approximate):
    """Float64 central differences around 0, in the bend and in both tails."""
    x = np.array([[-7.0, -3.0, -1.3, -0.4, 0.05], [0.3, 0.9, 1.7, 3.2, 6.0]])
    check_grad(lambda v: ops.gelu(v, approximate), [x])


def test_erf_gradient_matches_the_analytic_derivative():
    """M2.1's Erf.doDiff is 2/sqrt(pi) exp(-x^2) times the upstream gradient: checked against the formula
    (not only finite differences) with a non-constant upstream gradient."""
    x = np.linspace(-3, 3, 25)
    w = np.random.default_rng(3).uniform(0.5, 1.5, x.shape)
    g = Graph(dtype=np.float64)
    v = g.variable("x", x)
    got = g.gradients({}, ops.sum(ops.multiply(ops.erf(v), w)), [v])["x"]
    np.testing.assert_allclose(got, w * 2.0 / math.sqrt(math.pi) * np.exp(-(x**2)), rtol=1e-13, atol=1e-15)


def test_gelu_refuses_unknown_forms_and_ints():
    g = Graph()
    x = g.placeholder("x", (2,))
    with pytest.raises(ValueError, match="approximate must be one of 'none', 'tanh', 'sigmoid'"):
        ops.gelu(x, "erf")
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(x, approximate=True)
    with pytest.raises(TypeError, match="float"):
        ops.gelu(g.placeholder("i", (2,), "int32"))
    with pytest.raises(TypeError, match="float"):
        ops.erf(g.placeholder("j", (2,), "int32"))


def test_gelu_names_are_scoped():
    g = Graph()
    x = g.placeholder("x", (2,))
    assert ops.gelu(x, name="act").name == "act"
    assert ops.gelu(x, "tanh", name="act2").name == "act2"
    assert ops.gelu(x, "sigmoid", name="act3").name == "act3"
    assert ops.gelu(x).name != ops.gelu(x).name


# ---------------------------------------------------------------------------- softmax family
@pytest.mark.parametrize("axis", [-1, 2, 1, 0])
def test_softmax(axis):
    a = randn(2, 3, 4) * 3
    got, out = forward(lambda x: ops.softmax(x, axis), a)
    close(got, np_softmax(a, axis))
    assert out.shape == a.shape


def test_softmax_over_an_inner_axis_keeps_its_name_and_shape():
    """Over an inner axis the softmax runs on the axis moved last (oneDNN's inner-axis softmax is ~80x slower);
    the node asked for by name is the result, in the input's layout."""
    g = Graph()
    x = g.placeholder("x", (2, 3, 4))
    y = ops.softmax(x, 1, name="probs")
    assert y.name == "probs" and y.shape == (2, 3, 4)
    a = randn(2, 3, 4).astype(np.float32)
    np.testing.assert_allclose(g.run({"x": a}, "probs"), np_softmax(a, 1), rtol=1e-6)


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax_gradient(axis):
    check_grad(lambda x: ops.softmax(x, axis), [randn(2, 3, 4)])


@pytest.mark.parametrize("axis", [-1, 2, 1, 0])
def test_log_softmax(axis):
    a = randn(2, 3, 4) * 3
    got, out = forward(lambda x: ops.log_softmax(x, axis), a)
    close(got, np_log_softmax(a, axis))
    assert out.shape == a.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_is_stable_far_from_zero(dtype):
    """M2.1's softmax op does not shift by the maximum: -1e9 everywhere (a fully masked attention row) was
    0/0 = NaN, and logits above ~88 overflowed in float32."""
    a = np.array([[-1e9, -1e9, -1e9, -1e9], [1000.0, 999.0, 0.0, -1e9], [-1000.0, -1001.0, -1000.0, -2000.0]])
    got, _ = forward(lambda x: ops.softmax(x, -1), a.astype(dtype), dtype=dtype)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference.softmax(a), rtol=1e-6, atol=1e-30)
    check_grad(lambda x: ops.softmax(x, -1), [a[1:] / 100.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_log_softmax_gradients_far_from_zero(dtype):
    """The shift by the row maximum carries no gradient (it is truncated to an integer, off the graph's
    float path): the gradients must still be softmax's own, from numpy's closed form, at large magnitudes."""
    a = np.array([[1000.5, 999.25, 998.0, 0.75], [-1000.7, -1001.1, -1000.2, -1003.9], [0.3, -0.2, 0.1, 0.0]])
    a = a.astype(dtype).astype(np.float64)  # the values the graph sees (float32 rounds 1000.7 by ~3e-5)
    c = np.random.default_rng(3).normal(size=a.shape).astype(dtype).astype(np.float64)
    s = reference.softmax(a)
    want_sm = s * (c - (s * c).sum(-1, keepdims=True))  # d/da sum(softmax(a) * c)
    want_lsm = c - s * c.sum(-1, keepdims=True)  # d/da sum(log_softmax(a) * c)
    for fn, want in ((ops.softmax, want_sm), (ops.log_softmax, want_lsm)):
        g = Graph(dtype=dtype)
        x = g.variable("x", a)
        loss = ops.sum(ops.multiply(fn(x, -1), g.constant("c", c)))
        got = g.gradients({}, loss, [x])["x"]
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, atol=tol, err_msg=fn.__name__)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax_is_stable_for_large_logits(dtype, axis):
    """M2.1's fused logSoftmax gives -inf here (log of an underflowed softmax); -inf * 0 is NaN in a loss."""
    a = np.array([[1000.0, 0.0, -1000.0], [3.0, 2.0, 1.0]], dtype)
    a = a if axis == -1 else a.T.copy()
    got, _ = forward(lambda x: ops.log_softmax(x, axis), a, dtype=dtype)
    assert np.isfinite(got).all()
    close(got, np_log_softmax(a, axis))
    loss, _ = forward(lambda x: ops.sum(ops.log_softmax(x, axis) * np.eye(*a.shape, dtype=dtype)), a, dtype=dtype)
    assert np.isfinite(loss)


@pytest.mark.parametrize("axis", [-1, 2, 1, 0])
@pytest.mark.parametrize("variables", [False, True])
def test_log_softmax_gradient(axis, variables):
    check_grad(lambda x: ops.log_softmax(x, axis), [randn(2, 3, 3)], variables=variables)


# ---------------------------------------------------------------------------- layer norm
@pytest.mark.parametrize("axis", [-1, 1, (1, 2)], ids=str)
def test_layer_norm(axis):
    a = randn(2, 3, 4) * 2 + 1
    got, out = forward(lambda x: ops.layer_norm(x, axis), a)
    close(got, np_layer_norm(a, axis), rtol=1e-4)
    assert out.shape == a.shape


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm_gain_bias(axis):
    a = randn(2, 3, 4)
    shape = [1, 1, 1]
    shape[axis] = a.shape[axis]
    gain, bias = randn(*shape), randn(*shape)
    got, _ = forward(lambda x, gn, b: ops.layer_norm(x, axis, gn, b), a, gain, bias)
    close(got, np_layer_norm(a, axis, gain, bias), rtol=1e-4)


def test_layer_norm_fused_path():
    a, gain, bias = randn(2, 3, 4), randn(4), randn(4)
    got, _ = forward(lambda x, gn, b: ops.layer_norm(x, -1, gn, b, eps=0.0), a, gain, bias)
    close(got, np_layer_norm(a, -1, gain, bias, eps=0.0), rtol=1e-4)


@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_layer_norm_puts_eps_inside_the_square_root(eps):
    """(x - mu) / sqrt(var + eps), not (x - mu) / (sqrt(var) + eps): rows of small variance, float64, tight
    tolerance, so the two placements (which differ by ~eps / (2 var)) cannot both pass."""
    a = randn(3, 4, 5, dtype=np.float64) * 0.05
    got, _ = forward(lambda x: ops.layer_norm(x, -1, eps=eps), a, dtype=np.float64)
    mu = a.mean(-1, keepdims=True)
    var = a.var(-1, keepdims=True)
    np.testing.assert_allclose(got, (a - mu) / np.sqrt(var + eps), rtol=1e-9, atol=1e-12)
    assert np.abs((a - mu) / (np.sqrt(var) + eps) - got).max() > 1e-2


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm_gradient(axis):
    shape = [1, 1, 1]
    shape[axis] = 3
    check_grad(lambda x, gn, b: ops.layer_norm(x, axis, gn, b), [randn(2, 3, 3), randn(*shape), randn(*shape)])


def test_layer_norm_fused_gradient():
    check_grad(lambda x, gn, b: ops.layer_norm(x, -1, gn, b, eps=0.0), [randn(2, 3, 4), randn(4), randn(4)])


def test_layer_norm_at_berts_eps_1e_12():
    """BERT's layer_norm_eps=1e-12 (the unfused form): float32 agrees with a float64 numpy reference to rounding
    on rows of ordinary scale and on a row of tiny (1e-4) spread; a constant row gives 0 (0 / sqrt(1e-12)), finite,
    with finite gradients."""
    a = np.concatenate([randn(3, 32) * 3 + 1, 5 + 1e-4 * randn(1, 32), np.full((1, 32), 2.5, np.float32)])
    gain, bias = RNG.uniform(0.5, 1.5, 32).astype(np.float32), randn(32)
    got, _ = forward(lambda x, gn, b: ops.layer_norm(x, -1, gn, b, eps=1e-12), a, gain, bias)
    ref = np_layer_norm(a.astype(np.float64), -1, gain, bias, eps=1e-12)
    np.testing.assert_allclose(got[:3], ref[:3], rtol=0, atol=2e-6)
    np.testing.assert_allclose(got[3], ref[3], rtol=0, atol=5e-2)  # 1e-4 spread around 5: float32 keeps ~3 digits
    np.testing.assert_array_equal(got[4], bias)
    check_grad(lambda x, gn, b: ops.layer_norm(x, -1, gn, b, eps=1e-12), [randn(2, 8), randn(8), randn(8)])


def test_layer_norm_names_are_scoped():
    g = Graph()
    y = ops.layer_norm(g.placeholder("x", (2, 3)), name="ln")
    assert y.name == "ln" and g["ln"] is y  # the result carries the name; its pieces live under "ln/"
    assert "ln/mean" in g.vars
    y2 = ops.layer_norm(g["x"])
    assert y2.name.split("/")[0] not in ("ln", "")


# ---------------------------------------------------------------------------- leading_rows
def test_leading_rows_forward_and_gradient():
    table = randn(6, 2)
    g = Graph()
    pos = g.variable("pos", table)
    x = g.placeholder("x", ("batch", "time"))
    rows = ops.leading_rows(pos, x)
    assert rows.shape == (None, 2)
    for t in (1, 4, 6):
        close(g.run({"x": np.zeros((2, t), np.float32)}, rows), table[:t])

    def build(p):
        return ops.leading_rows(p, p.graph.placeholder("x", ("batch", "time")))

    check_grad(build, [randn(5, 2)], variables=True, extra={"x": np.zeros((1, 3))})


def test_broadcast_shapes_with_unknown_dims():
    assert ops.broadcast_shapes((None, 3), (3,)) == (None, 3)
    assert ops.broadcast_shapes((None, 1), (1, 4)) == (None, 4)
    assert ops.broadcast_shapes((2, 1), (None,)) == (2, None)
    with pytest.raises(ValueError, match="do not broadcast"):
        ops.broadcast_shapes((2, 3), (4,))


def test_softmax_and_log_softmax_default_to_the_last_axis():
    a = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    got, _ = forward(lambda x: ops.softmax(x), a)
    np.testing.assert_allclose(got, reference.softmax(a), rtol=1e-6)
    got, _ = forward(lambda x: ops.log_softmax(x), a)
    np.testing.assert_allclose(got, np.log(reference.softmax(a)), rtol=1e-6, atol=1e-6)


def test_embedding_refuses_a_table_that_is_not_vocab_by_width():
    g = Graph()
    ids = g.placeholder("ids", ("batch", "time"), "int32")
    with pytest.raises(ValueError, match="embedding table must be"):
        ops.embedding(ids, g.variable("t3", np.zeros((4, 2, 3))))
    with pytest.raises(ValueError, match="embedding table must be"):
        ops.embedding(ids, g.placeholder("t_unknown", ("vocab", 3)))


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (2, 3, 2, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_add_values_and_gradients(shape, dtype):
    """add(x, b) with b over the last axis (every dense layer's bias): numpy's values, gradients of both inputs
    from the closed form (d/dx = upstream, d/db = upstream summed over every other axis)."""
    rng = np.random.default_rng(5)
    xs, bs, c = rng.normal(size=shape), rng.normal(size=shape[-1]), rng.normal(size=shape)
    g = Graph(dtype=dtype)
    x, b = g.variable("x", xs), g.variable("b", bs)
    y = ops.add(x, b)
    loss = ops.sum(ops.multiply(y, g.constant("c", c)))
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(g.run({}, y), xs + bs, rtol=tol, atol=tol)
    grads = g.gradients({}, loss, [x, b])
    np.testing.assert_allclose(grads["x"], c, rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["b"], c.reshape(-1, shape[-1]).sum(0), rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(g.run({}, ops.add(b, x)), xs + bs, rtol=tol, atol=tol)  # the other order


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (2, 3, 2, 4)])
@pytest.mark.parametrize("gain_shape", ["last", "trailing2", "scalar"])
def test_multiply_by_a_broadcast_gain_values_and_gradients(shape, gain_shape):
    """x * gain with gain broadcast along x's leading axes (tiled by an add inside ops.multiply) or a number
    (a scalar op): numpy's values; d/dx = upstream * gain, d/dgain = (upstream * x) summed over broadcast axes."""
    rng = np.random.default_rng(6)
    xs, c = rng.normal(size=shape), rng.normal(size=shape)
    g = Graph(dtype=np.float64)
    x = g.variable("x", xs)
    if gain_shape == "scalar":
        y, gs = ops.multiply(x, 1.75), 1.75
        want_g = None
        y2 = ops.multiply(2.0, x)
        np.testing.assert_allclose(g.run({}, y2), 2.0 * xs, rtol=1e-12)
    else:
        gshape = shape[-1:] if gain_shape == "last" else shape[-2:]
        gs = rng.normal(size=gshape)
        gain = g.variable("gain", gs)
        y = ops.multiply(x, gain) if gain_shape == "last" else ops.multiply(gain, x)
        lead = tuple(range(len(shape) - len(gshape)))
        want_g = (c * xs).sum(lead)
    np.testing.assert_allclose(g.run({}, y), xs * gs, rtol=1e-12)
    loss = ops.sum(ops.multiply(y, g.constant("c", c)))
    wrt = [x] if want_g is None else [x, g["gain"]]
    grads = g.gradients({}, loss, wrt)
    np.testing.assert_allclose(grads["x"], c * gs, rtol=1e-12, atol=1e-12)
    if want_g is not None:
        np.testing.assert_allclose(grads["gain"], want_g, rtol=1e-10, atol=1e-12)
