"""Issue 3, masks as first-class values: helpers, feed validation, Masked arithmetic, masked pooling,
attention, loss and metrics. Every numeric check compares against tests/reference.py (numpy, written from
the definitions) or against central finite differences of the graph itself (float64), never against
samediff_py's own code."""

from __future__ import annotations

import numpy as np
import pytest
import reference as R
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from samediff_py import FeedError, Graph, MaskError, masked, ops
from samediff_py.masked import AttentionParams, Masked

HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HUGE = 1e30  # filler at padded positions: it must never reach an output (NaN and inf: see "garbage" below)


# =============================================================================== helpers
def fd_check(f, x: np.ndarray, grad: np.ndarray, n: int = 12, seed: int = 0, eps: float = 1e-6) -> None:
    """Compare grad with central finite differences of the scalar f at n random entries of x (each graph
    run costs milliseconds; the analytic references cover every entry)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(x.size, size=min(n, x.size), replace=False)
    for i in (np.unravel_index(j, x.shape) for j in flat):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num = (f(xp) - f(xm)) / (2 * eps)
        assert grad[i] == pytest.approx(num, rel=1e-6, abs=1e-7), f"entry {i}: analytic {grad[i]}, numeric {num}"


def padded(rng, lengths, t, f, huge=HUGE):
    """[B,T,F] normal values with `huge` at padded positions, and the matching right-padded mask."""
    m = masked.mask_from_lengths(lengths, t, dtype=np.float64)
    x = rng.normal(size=(len(lengths), t, f))
    x[m == 0] = huge
    return x, m


# =============================================================================== 1. numpy mask helpers
@HYP
@given(st.lists(st.integers(0, 12), min_size=1, max_size=8), st.integers(0, 4))
def test_mask_from_lengths_properties(lengths, extra):
    t = max(lengths) + extra
    m = masked.mask_from_lengths(lengths, t)
    assert m.shape == (len(lengths), t) and m.dtype == np.float32
    for b, n in enumerate(lengths):  # row b: exactly n ones, then zeros
        assert m[b].tolist() == [1.0] * n + [0.0] * (t - n)
    assert masked.mask_from_lengths(lengths).shape == (len(lengths), max(lengths))  # default max_len
    assert masked.mask_from_lengths(lengths, t, dtype=np.float64).dtype == np.float64


def test_mask_from_lengths_rejects_bad_lengths():
    with pytest.raises(ValueError, match="exceeds max_len"):
        masked.mask_from_lengths([3, 5], 4)
    with pytest.raises(ValueError, match="non-negative"):
        masked.mask_from_lengths([2, -1], 4)


@HYP
@given(hnp.arrays(np.int32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6), elements=st.integers(0, 3)))
def test_mask_from_pad_marks_non_pad_valid(tokens):
    m = masked.mask_from_pad(tokens, pad_id=0)
    assert m.dtype == np.float32 and m.shape == tokens.shape
    for idx in np.ndindex(*tokens.shape):
        assert m[idx] == (0.0 if tokens[idx] == 0 else 1.0)


@HYP
@given(st.lists(st.lists(st.integers(1, 50), max_size=7), min_size=1, max_size=6), st.integers(0, 3))
def test_pad_batch_right_pads(seqs, extra):
    t = max(len(s) for s in seqs) + extra
    tokens, m = masked.pad_batch(seqs, pad_id=0, max_len=t)
    assert tokens.shape == m.shape == (len(seqs), t) and tokens.dtype == np.int32
    for b, s in enumerate(seqs):
        assert tokens[b].tolist() == list(s) + [0] * (t - len(s))
        assert m[b].tolist() == [1.0] * len(s) + [0.0] * (t - len(s))
    masked.check_mask(m, allow_empty_rows=True, tokens=tokens, pad_id=0)  # consistent with its tokens


def test_pad_batch_rejects_too_long():
    with pytest.raises(ValueError, match="max_len"):
        masked.pad_batch([[1, 2, 3]], pad_id=0, max_len=2)


@HYP
@given(st.lists(st.integers(0, 6), min_size=1, max_size=5), st.integers(0, 2), st.integers(-100, -1))
def test_shift_targets_shifts_mask_with_targets(lengths, extra, ignore):
    t = max(max(lengths), 1) + 1 + extra
    rng = np.random.default_rng(len(lengths) * 31 + t)
    m = masked.mask_from_lengths(lengths, t)
    tokens = np.where(m > 0, rng.integers(1, 9, m.shape), 0)
    inp, inp_mask, tgt, tgt_mask = masked.shift_targets(tokens, m, ignore_label=ignore)
    assert inp.tolist() == tokens[:, :-1].tolist() and inp_mask.tolist() == m[:, :-1].tolist()
    for b, n in enumerate(lengths):
        for i in range(t - 1):
            counts = i + 1 < n  # input i and its target i+1 both real tokens
            assert tgt_mask[b, i] == float(counts)
            assert tgt[b, i] == (tokens[b, i + 1] if counts else ignore)


def test_shift_targets_last_real_token_has_no_target():
    # the classic mistake keeps mask[:, :-1] as target mask: then position 2 would predict the pad
    _, inp_mask, tgt, tgt_mask = masked.shift_targets(np.array([[5, 6, 7, 0, 0]]), np.array([[1, 1, 1, 0, 0]]))
    assert inp_mask.tolist() == [[1, 1, 1, 0]]
    assert tgt_mask.tolist() == [[1, 1, 0, 0]] and tgt.tolist() == [[6, 7, -1, -1]]


# ------------------------------------------------------------------------------- check_mask
def _is_padded(row: np.ndarray, side: str) -> bool:
    """Reference: a row of the form 1..10..0 (right) or 0..01..1 (left), written independently."""
    r = row.tolist() if side == "right" else row.tolist()[::-1]
    n = int(sum(r))
    return r == [1] * n + [0] * (len(r) - n)


def _masks():
    rand = hnp.arrays(np.int8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6), elements=st.integers(0, 1))

    @st.composite
    def from_lengths(draw):  # mostly valid masks, sometimes with one bit flipped
        t = draw(st.integers(1, 6))
        lens = draw(st.lists(st.integers(0, t), min_size=1, max_size=5))
        m = masked.mask_from_lengths(lens, t).astype(np.int8)
        if draw(st.booleans()):
            b, i = draw(st.integers(0, len(lens) - 1)), draw(st.integers(0, t - 1))
            m[b, i] = 1 - m[b, i]
        return m

    return st.one_of(rand, from_lengths())


@HYP
@given(_masks(), st.booleans(), st.sampled_from(["right", "left", "any"]))
def test_check_mask_accepts_exactly_the_padded_masks(m, allow_empty, side):
    nonempty = bool(m.any(axis=1).all())
    layout_ok = side == "any" or all(_is_padded(row, side) for row in m)
    ok = (nonempty or allow_empty) and layout_ok
    if ok:
        masked.check_mask(m, allow_empty_rows=allow_empty, padding=side)
        masked.check_mask(m.astype(bool), allow_empty_rows=allow_empty, padding=side)
    else:
        with pytest.raises(MaskError, match="no valid position|looks inverted"):
            masked.check_mask(m, allow_empty_rows=allow_empty, padding=side)


@pytest.mark.parametrize(
    "m, kwargs, match",
    [
        ([[1, 0.5, 0]], {}, r"exactly 0 \(padding\) or 1 \(valid\), found \[0.5\]"),
        ([[1, 2, 0]], {}, r"found \[2"),
        ([[1, -1, 0]], {}, r"found \[-1"),
        ([[1, np.nan, 0]], {}, "exactly 0"),
        ([[1, 1, 0], [0, 0, 0]], {}, r"row\(s\) \[1\] have no valid position.*allow_empty_rows"),
        ([[0, 0, 0], [0, 0, 0]], {}, "inverted, or never filled"),
        (
            [[0, 0, 0], [0, 0, 0]],
            {"allow_empty_rows": True, "padding": "any", "tokens": [[5, 6, 7]] * 2, "pad_id": 0},
            None,
        ),
        ([[1, 1, 0], [0, 1, 1]], {}, r"row 1 has a valid position after padding.*looks inverted"),
        ([[0, 1, 1]], {"padding": "left"}, None),
        ([[1, 1, 0]], {"padding": "left"}, "left-padded"),
        ([[1, 1, 0]], {"tokens": [[4, 0, 0]], "pad_id": 0}, r"\(batch 0, time 1\) holds the pad id 0"),
        ([[1, 1, 0]], {"tokens": [[4, 5, 0]], "pad_id": 0}, None),
        ([[1, 1, 0]], {"tokens": [[4, 5]], "pad_id": 0}, "differs from its tokens' shape"),
        ([[1, 1, 0]] * 2, {"tokens": [[4, 5, 0]], "pad_id": 0}, "differs from its tokens' shape"),  # no broadcast
        ([1, 1, 0], {}, r"\[batch, time\]"),
    ],
)
def test_check_mask_messages(m, kwargs, match):
    if match is None:
        masked.check_mask(np.array(m), **kwargs)
    else:
        with pytest.raises(MaskError, match=match):
            masked.check_mask(np.array(m), **kwargs)


# ------------------------------------------------------------------------------- feed validation in a graph
@pytest.fixture
def tok_graph():
    g = Graph()
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    x = g.placeholder("x", ("batch", "time", 2))
    m = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0)
    pooled = masked.sum_pool(Masked(x, m) + Masked(ops.cast(ops.expand_dims(tokens, -1), "float32"), m))
    return g, pooled


GOOD = {"tokens": [[3, 4, 0], [5, 0, 0]], "x": np.ones((2, 3, 2)), "mask": [[1, 1, 0], [1, 0, 0]]}


@pytest.mark.parametrize(
    "change, exc, match",
    [
        ({"mask": [[1, 1, 0], [1, 0.5, 0]]}, MaskError, "exactly 0"),
        ({"mask": [[1, 1, 0, 0], [1, 0, 0, 0]]}, ValueError, "'time' is 4 here but 3"),  # named dims
        ({"mask": [[1, 1, 0], [0, 0, 0]]}, MaskError, "no valid position"),
        ({"mask": [[0, 0, 0], [0, 0, 0]]}, MaskError, "inverted, or never filled"),
        ({"mask": [[0, 0, 1], [0, 1, 1]], "tokens": [[0, 0, 3], [0, 5, 6]]}, MaskError, "looks inverted"),
        ({"mask": [[1, 1, 1], [1, 0, 0]]}, MaskError, r"\(batch 0, time 2\) holds the pad id 0"),
    ],
)
def test_feed_validation_raises_before_the_jvm(tok_graph, monkeypatch, change, exc, match):
    g, pooled = tok_graph
    np.testing.assert_allclose(g.run(GOOD, pooled), [[9, 9], [6, 6]])  # the good feed runs
    reached = []
    monkeypatch.setattr(g, "_java_feeds", lambda feeds: reached.append(1) or 1 / 0)
    with pytest.raises(exc, match=match):
        g.run({**GOOD, **change}, pooled)
    with pytest.raises(exc, match=match):
        g.gradients({**GOOD, **change}, ops.sum(pooled), wrt=[g["x"]])
    assert not reached


def test_mask_and_tokens_without_shared_dim_names_are_still_checked():
    g = Graph()
    tokens = g.placeholder("tokens", ("batch", "seq"), "int32")  # no named dim ties it to the mask
    m = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0)
    out = ops.sum(m)
    assert float(g.run({"tokens": [[3, 0, 0]], "mask": [[1, 0, 0]]}, out)) == 1.0
    with pytest.raises(MaskError, match=r"mask shape \(2, 3\) differs from its tokens' shape \(2, 4\)"):
        g.run({"tokens": [[3, 4, 0, 0], [5, 0, 0, 0]], "mask": [[1, 1, 0], [1, 0, 0]]}, out)


def test_mask_placeholder_allow_empty_rows():
    g = Graph()
    x = g.placeholder("x", ("batch", "time", 2))
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    out = g.run({"x": np.ones((2, 3, 2)), "mask": [[1, 1, 0], [0, 0, 0]]}, masked.mean_pool(Masked(x, m)))
    np.testing.assert_array_equal(out, [[1, 1], [0, 0]])


def test_mask_placeholder_rejects_non_placeholder_tokens():
    g = Graph()
    t = g.placeholder("tokens", ("batch", "time"), "int32")
    with pytest.raises(MaskError, match="token placeholder"):
        masked.mask_placeholder(g, "mask", tokens=ops.add(t, 1))


# =============================================================================== 2. Masked values
@pytest.fixture
def seq():
    g = Graph(seed=3, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", 4))
    y = g.placeholder("y", ("batch", "time", 4))
    m = masked.mask_placeholder(g, "mask")
    rng = np.random.default_rng(5)
    xs, ms = padded(rng, [5, 2], 5, 4, huge=3.0)
    feeds = {"x": xs, "y": rng.normal(size=xs.shape), "mask": ms}
    return g, Masked(x, m), Masked(y, m), feeds


def test_per_position_ops_keep_mask_and_values(seq):
    g, x, y, fd = seq
    rng = np.random.default_rng(0)
    bias = g.variable("bias", rng.normal(size=4))
    pos_np = rng.normal(size=(5, 4))
    pos = g.constant("pos", pos_np)
    w, b = g.variable("w", rng.normal(size=(4, 3))), g.variable("b", rng.normal(size=3))
    gain, beta = g.variable("gain", rng.normal(size=3)), g.variable("beta", rng.normal(size=3))
    outs = {
        "sum": x + y,
        "diff": x - y,
        "prod": x * y,
        "bias": x + bias,
        "rbias": 1.0 + x,
        "pos": x + ops.expand_dims(pos, 0),  # a per-time table [1, T, F]
        "scaled": 2.0 * x - 1.0,
        "map": x.map(ops.tanh),
        "matmul": x @ w,
        "dense": masked.dense(x, w, b, ops.relu),
        "ln": masked.layer_norm(masked.dense(x, w, b), gain, beta),
        "ln_fused": masked.layer_norm(masked.dense(x, w, b), gain, beta, eps=0.0),
    }
    for o in outs.values():
        assert isinstance(o, Masked) and o.mask is x.mask
    got = g.run(fd, {k: v.value for k, v in outs.items()})
    # Masked(value, mask) selects valid positions on entry: padded inputs are exactly 0 from then on
    valid = fd["mask"][..., None] > 0
    X, Y = np.where(valid, fd["x"], 0.0), np.where(valid, fd["y"], 0.0)
    bv, wv, bb = g.get_value(bias), g.get_value(w), g.get_value(b)
    lin = X @ wv + bb
    want = {
        "sum": X + Y,
        "diff": X - Y,
        "prod": X * Y,
        "bias": X + bv,
        "rbias": X + 1,
        "pos": X + pos_np,
        "scaled": 2 * X - 1,
        "map": np.tanh(X),
        "matmul": X @ wv,
        "dense": np.maximum(lin, 0),
        "ln": R.layer_norm(lin, g.get_value(gain), g.get_value(beta), 1e-5),
        "ln_fused": R.layer_norm(lin, g.get_value(gain), g.get_value(beta), 0.0),
    }
    for k in outs:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-9, err_msg=k)


def test_per_position_var_on_the_left(seq):
    g, x, _, fd = seq
    bias = g.variable("bias", np.arange(4.0))
    out = bias + x
    assert isinstance(out, Masked) and out.mask is x.mask
    want = np.where(fd["mask"][..., None] > 0, fd["x"], 0.0) + np.arange(4.0)  # padding enters as 0
    np.testing.assert_allclose(g.run(fd, out.value), want)


def test_layer_norm_is_over_features_not_time(seq):
    g, x, _, fd = seq
    out = g.run(fd, masked.layer_norm(x).value)
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-9)  # each position normalised over its 4 features
    assert np.abs(out.mean(1)).max() > 0.1  # not over time


def test_zeroed_sets_padding_to_zero(seq):
    g, x, _, fd = seq
    np.testing.assert_array_equal(g.run(fd, x.zeroed()), fd["x"] * fd["mask"][..., None])


def test_combining_two_masks_raises(seq):
    g, x, _, _ = seq
    other = masked.mask_placeholder(g, "mask2")
    z = Masked(g.placeholder("z", ("batch", "time", 4)), other)
    for combine in (lambda: x + z, lambda: z * x, lambda: x - z, lambda: x / z):
        with pytest.raises(MaskError, match=r"different masks \('mask' vs 'mask2'\)|different masks \('mask2' vs"):
            combine()


def test_masked_with_unmasked_batch_var_raises(seq):
    g, x, _, _ = seq
    raw = g.placeholder("raw", ("batch", "time", 4))
    with pytest.raises(MaskError, match=r"unmasked 'raw'.*drop the mask.*Masked\('raw', mask\)"):
        x + raw
    with pytest.raises(MaskError, match=r"unmasked 'raw'.*drop the mask"):
        raw + x  # Var on the left defers to the Masked operand, which refuses the same way
    with pytest.raises(MaskError, match="ops cannot take the masked value"):
        ops.add(raw, x)  # the functional form refuses the Masked operand


@pytest.mark.parametrize(
    "fn",
    [
        lambda v: ops.mean(v, 1),
        lambda v: ops.sum(v, 1),
        lambda v: ops.max(v, 1),
        lambda v: ops.softmax(v, 1),
        lambda v: ops.log_softmax(v, -1),
        lambda v: ops.layer_norm(v, 1),
        lambda v: ops.add(v, 1.0),
        lambda v: ops.transpose(v, (0, 2, 1)),
        lambda v: ops.reshape(v, (-1, 4)),
        lambda v: ops.relu(v),
        lambda v: ops.concat([v, v], 1),
    ],
)
def test_plain_ops_refuse_masked(seq, fn):
    _, x, _, _ = seq
    with pytest.raises(MaskError, match="samediff_py.masked"):
        fn(x)


@pytest.mark.parametrize(
    "fn",
    [masked.mean_pool, masked.sum_pool, masked.max_pool, lambda v: masked.layer_norm(v), lambda v: masked.dense(v, v)],
)
def test_masked_ops_refuse_plain_values(seq, fn):
    g, _, _, _ = seq
    with pytest.raises(MaskError, match="needs a Masked value"):
        fn(g["x"])


def test_masked_constructor_and_map_validate(seq):
    g, x, _, _ = seq
    v = g["x"]
    with pytest.raises(MaskError, match="must be \\[batch, time\\]"):
        Masked(v, g.placeholder("m3", ("batch", "time", 1)))
    with pytest.raises(MaskError, match="must be a float Var"):
        Masked(v, g.placeholder("mi", ("batch", "time"), "int32"))
    with pytest.raises(MaskError, match="disagree on axis 1"):
        Masked(g.placeholder("x5", ("batch", 5, 4)), g.placeholder("m6", ("batch", 6)))
    with pytest.raises(MaskError, match="not a mask placeholder"):
        Masked(v, g.placeholder("plain", ("batch", "time")))  # its feeds would never be validated
    fixed = Masked(g.placeholder("x5b", ("batch", 5, 4)), masked.mask_placeholder(g, "m5", ("batch", 5)))
    with pytest.raises(MaskError, match="changed axis 1 from 5 to 4: it is not a per-position op"):
        fixed.map(lambda t: ops.transpose(t, (0, 2, 1)))  # (only detectable when time is static)
    with pytest.raises(MaskError, match="weight matrix"):
        x @ g.variable("w3", np.ones((2, 4, 4)))
    with pytest.raises(TypeError):
        bool(x)


# =============================================================================== 3. masked pooling
POOLS = {"mean": (masked.mean_pool, R.masked_mean_pool), "sum": (masked.sum_pool, R.masked_sum_pool),
         "max": (masked.max_pool, R.masked_max_pool)}  # fmt: skip


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_pooling_matches_numpy_and_padding_does_not_leak(dtype, tol):
    g = Graph(dtype=dtype)
    x = g.placeholder("x", ("batch", "time", 3))
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    outs = {k: fn(Masked(x, m)) for k, (fn, _) in POOLS.items()}
    rng = np.random.default_rng(7)
    xs, ms = padded(rng, [4, 2, 1, 0], 4, 3)  # includes a fully padded row
    xs[:, :, 0] -= 5.0  # all-negative feature: max must not return the 0 of a masked-out position
    got = g.run({"x": xs, "mask": ms}, outs)
    for k, (_, ref) in POOLS.items():
        np.testing.assert_allclose(got[k], ref(xs, ms), rtol=tol, atol=tol, err_msg=k)
        np.testing.assert_array_equal(got[k][3], 0.0)  # fully padded row: zeros, not NaN
    # dividing by the padded length (the classic bug) would differ: row 1 has 2 of 4 valid steps
    assert np.abs(got["mean"][1] - xs[1, :2].sum(0) / 4).max() > 0.1


def test_mean_pool_rank4():
    g = Graph(dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", 2, 3))
    m = masked.mask_placeholder(g, "mask")
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(2, 3, 2, 3))
    ms = masked.mask_from_lengths([3, 1], 3, np.float64)
    xs[ms == 0] = HUGE
    for fn, ref in POOLS.values():
        np.testing.assert_allclose(g.run({"x": xs, "mask": ms}, fn(Masked(x, m))), ref(xs, ms), atol=1e-12)


@pytest.mark.parametrize("kind", list(POOLS))
def test_pooling_gradients_match_finite_differences(kind):
    g = Graph(seed=2, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", 3))
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    rng = np.random.default_rng(11)
    w = g.variable("w", rng.uniform(0.5, 1.5, 3))  # trainable, so SameDiff can differentiate
    c = rng.normal(size=(3, 3))
    loss = ops.sum(ops.multiply(POOLS[kind][0](Masked(x, m) * w), g.constant("c", c)))
    xs, ms = padded(rng, [4, 2, 0], 4, 3)  # row 2 fully padded
    fd = {"x": xs, "mask": ms}
    grads = g.gradients(fd, loss, wrt=[x, w])
    # every valid input, plus a few padded ones
    ref = POOLS[kind][1]
    wv = g.get_value(w)
    f_x = lambda a: float((ref(a * wv, ms) * c).sum())  # noqa: E731  # the numpy definition ...
    fd_check(f_x, xs, grads["x"], n=xs.size)
    fd_check(lambda a: float(g.run({"x": a, "mask": ms}, loss)), xs, grads["x"], n=8)  # ... and the graph

    def f_w(a):
        g.set_value(w, a)
        return float(g.run(fd, loss))

    fd_check(f_w, wv, grads["w"], n=3)
    g.set_value(w, wv)
    assert np.isfinite(grads["x"]).all()
    np.testing.assert_array_equal(grads["x"][ms == 0], 0.0)  # padded inputs (and the empty row) get exactly 0
    assert np.abs(grads["x"][ms == 1]).min() > 0 or kind == "max"  # valid inputs do get gradient


# =============================================================================== 4. attention
def _attn_graph(dtype, d=6, heads=2, seed=1):
    g = Graph(seed=seed, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", d))
    m = masked.mask_placeholder(g, "mask")
    p = AttentionParams.create(g, "p", d, heads)
    g.set_value(p.wo, np.random.default_rng(seed).normal(size=p.wo.shape) * 0.5)
    return g, Masked(x, m), p


def _weights(g, p):
    return [g.get_value(v) for v in (p.wq, p.wk, p.wv, p.wo)]


@pytest.mark.parametrize("impl", masked.attention.IMPLS)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_attention_matches_reference(dtype, tol, impl):
    g, x, p = _attn_graph(dtype)
    out, w = masked.multi_head_attention(x, p, return_weights=True, name="att", impl=impl)
    rng = np.random.default_rng(3)
    xs, ms = padded(rng, [5, 3, 1], 5, 6)  # huge values at padded keys
    o, wt = g.run({"x": xs, "mask": ms}, [out.value, w])
    ro, rw = R.attention(xs, xs, ms, ms, *_weights(g, p))
    assert o.shape == (3, 5, 6) and wt.shape == (3, 2, 5, 5)
    np.testing.assert_allclose(o, ro, atol=tol, rtol=tol)
    np.testing.assert_allclose(wt, rw, atol=tol, rtol=tol)
    # [batch, heads, query, key]: each valid query's row sums to 1 over keys; padded keys get exactly 0
    sums = wt.sum(-1)
    np.testing.assert_allclose(sums[ms[:, None, :].repeat(2, 1) == 1], 1.0, atol=tol)
    np.testing.assert_array_equal(wt * (1 - ms)[:, None, None, :], 0.0)
    # padded queries: zero outputs and zero weight rows
    np.testing.assert_array_equal(o[ms == 0], 0.0)
    np.testing.assert_array_equal(wt.transpose(0, 2, 1, 3)[ms == 0], 0.0)
    if impl != "fused":
        return
    # the raw DL4J node is [batch, heads, KEY, QUERY]: the transpose, softmax over axis 2
    raw = g.run({"x": xs, "mask": ms}, "att/dl4j_mha_weights")
    assert raw.shape == (3, 2, 5, 5)
    valid_q = (ms == 1)[:, None, None, :]
    np.testing.assert_allclose(np.where(valid_q, raw, 0), rw.transpose(0, 1, 3, 2), atol=tol, rtol=tol)
    np.testing.assert_allclose(raw.sum(2), 1.0, atol=tol)
    assert np.abs(raw.sum(3) - 1.0).max() > 0.1  # not normalised over queries


def test_attention_mask_polarity_is_1_keep():
    """Fails if the backend flips the mask formula (upstream master, 2023): compare the outputs with
    the reference under both polarities."""
    g, x, p = _attn_graph(np.float64)
    out = masked.multi_head_attention(x, p, name="att", impl="fused")  # the raw DL4J node is checked
    rng = np.random.default_rng(4)
    xs, ms = padded(rng, [6, 4, 2], 6, 6, huge=1.0)  # ordinary values at padding: polarity alone decides
    xs[ms == 0] = rng.normal(size=xs[ms == 0].shape)
    o, raw = g.run({"x": xs, "mask": ms}, [out.value, "att/dl4j_mha"])
    W = _weights(g, p)
    right, _ = R.attention(xs, xs, ms, ms, *W)
    inv = 1 - ms
    inv[0, 0] = 1  # keep every row non-empty so the inverted reference is a real attention too
    wrong, _ = R.attention(xs, xs, np.ones_like(ms), inv, *W)
    np.testing.assert_allclose(o, right, atol=1e-10)
    raw_q = raw.transpose(0, 2, 1)  # unguarded DL4J output, [batch, Tq, d]
    np.testing.assert_allclose(raw_q[ms == 1], right[ms == 1], atol=1e-10)
    assert np.abs(raw_q[ms == 1] - wrong[ms == 1]).max() > 0.1  # the flipped formula would be far off


@pytest.mark.parametrize("impl", masked.attention.IMPLS)
def test_cross_attention_empty_context_row_gives_zeros(impl):
    g = Graph(seed=5, dtype=np.float64)
    xq = g.placeholder("xq", ("batch", "tq", 4))
    xc = g.placeholder("xc", ("batch", "tk", 4))
    mq = masked.mask_placeholder(g, "mq", ("batch", "tq"))
    mc = masked.mask_placeholder(g, "mc", ("batch", "tk"), allow_empty_rows=True)
    p = AttentionParams.create(g, "p", 4, 2)
    g.set_value(p.wo, np.random.default_rng(0).normal(size=p.wo.shape))
    out, w = masked.multi_head_attention(
        Masked(xq, mq), p, Masked(xc, mc), return_weights=True, name="x_att", impl=impl
    )
    loss = ops.sum(ops.square(out.value))
    rng = np.random.default_rng(6)
    q, mqs = padded(rng, [3, 2], 3, 4)
    c, mcs = padded(rng, [4, 0], 5, 4)  # row 1: no valid key at all
    fd = {"xq": q, "xc": c, "mq": mqs, "mc": mcs}
    o, wt = g.run(fd, [out.value, w])
    ro, rw = R.attention(q, c, mqs, mcs, *_weights(g, p))
    assert wt.shape == (2, 2, 3, 5)  # [batch, heads, Tq, Tk] with Tq != Tk
    np.testing.assert_allclose(o, ro, atol=1e-10)
    np.testing.assert_allclose(wt, rw, atol=1e-10)
    np.testing.assert_array_equal(o[1], 0.0)
    np.testing.assert_array_equal(wt[1], 0.0)
    if impl == "fused":
        raw = g.run(fd, "x_att/dl4j_mha_weights")
        np.testing.assert_allclose(raw[1], 1 / 5)  # DL4J alone: a uniform average over all (padded) keys
    grads = g.gradients(fd, loss, wrt=[xq, xc])
    for n in ("xq", "xc"):
        assert np.isfinite(grads[n]).all()
        np.testing.assert_array_equal(grads[n][1], 0.0)
    assert np.abs(grads["xq"][0, :3]).max() > 0


@pytest.mark.parametrize("impl", masked.attention.IMPLS)
def test_attention_gradients_match_finite_differences(impl):
    g, x, p = _attn_graph(np.float64, d=4, heads=2, seed=8)
    out = masked.multi_head_attention(x, p, impl=impl)
    rng = np.random.default_rng(9)
    c = g.constant("c", rng.normal(size=(2, 4, 4)))
    loss = ops.sum(ops.multiply(out.value, c))
    xs, ms = padded(rng, [4, 2], 4, 4)
    fd = {"x": xs, "mask": ms}
    grads = g.gradients(fd, loss, wrt=[g["x"], p.wq, p.wk, p.wv, p.wo])
    W = _weights(g, p)
    cv = g.get_value(c)
    # every entry against finite differences of the numpy reference, a sample against the graph itself
    fd_check(lambda a: float((R.attention(a, a, ms, ms, *W)[0] * cv).sum()), xs, grads["x"], n=xs.size)
    fd_check(lambda a: float(g.run({"x": a, "mask": ms}, loss)), xs, grads["x"], n=8)
    np.testing.assert_array_equal(grads["x"][ms == 0], 0.0)
    for i, v in enumerate((p.wq, p.wk, p.wv, p.wo)):
        val = W[i]

        def f_ref(a, i=i):
            return float((R.attention(xs, xs, ms, ms, *W[:i], a, *W[i + 1 :])[0] * cv).sum())

        def f(a, v=v):
            g.set_value(v, a)
            return float(g.run(fd, loss))

        fd_check(f_ref, val, grads[v.name], n=val.size, seed=i)
        fd_check(f, val, grads[v.name], n=4, seed=i)
        g.set_value(v, val)
        assert np.abs(grads[v.name]).max() > 1e-3


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_fused_batched_and_unfused_attention_agree(dtype, tol):
    """The three formulations (DL4J's fused op, batched heads, per-head plain ops) on one graph: same
    outputs and gradients, an empty row included (allow_empty_rows)."""
    g = Graph(seed=12, dtype=dtype)
    x = Masked(g.placeholder("x", ("batch", "time", 6)), masked.mask_placeholder(g, "mask", allow_empty_rows=True))
    p = AttentionParams.create(g, "p", 6, 2)
    g.set_value(p.wo, np.random.default_rng(12).normal(size=p.wo.shape) * 0.5)
    outs = {
        "fused": masked.multi_head_attention(x, p, impl="fused"),
        "batched": masked.multi_head_attention(x, p, impl="batched"),
        "unfused": masked.multi_head_attention_unfused(x, p),
    }
    losses = {k: ops.sum(ops.square(v.value)) for k, v in outs.items()}
    rng = np.random.default_rng(13)
    xs, ms = padded(rng, [5, 4, 1, 0], 5, 6)
    fd = {"x": xs, "mask": ms}
    got = g.run(fd, {k: v.value for k, v in outs.items()})
    grads = {k: g.gradients(fd, v) for k, v in losses.items()}
    for other in ("batched", "unfused"):
        np.testing.assert_allclose(got[other], got["fused"], atol=tol, rtol=tol, err_msg=other)
        for k in grads["fused"]:
            assert np.isfinite(grads[other][k]).all(), (other, k)
            np.testing.assert_allclose(grads[other][k], grads["fused"][k], atol=10 * tol, rtol=10 * tol, err_msg=k)
    np.testing.assert_array_equal(got["batched"][3], 0.0)  # the empty row


@pytest.mark.parametrize("impl", masked.attention.IMPLS)
def test_attention_biases_against_numpy(impl):
    """bq, bk, bv (after each projection) and bo (after the output projection), in both formulations."""
    g, x, p = _attn_graph(np.float64, d=4, heads=2, seed=3)
    rng = np.random.default_rng(4)
    bq, bk, bv = (g.variable(n, rng.normal(size=(2, 2))) for n in ("bq", "bk", "bv"))  # [heads, head_size]
    bo = g.variable("bo", rng.normal(size=4))
    bp = AttentionParams(p.wq, p.wk, p.wv, p.wo, bq, bk, bv, bo)
    out, w = masked.multi_head_attention(x, bp, return_weights=True, impl=impl)
    xs, ms = padded(rng, [4, 2], 4, 4)
    o, wt = g.run({"x": xs, "mask": ms}, [out.value, w])
    wq, wk, wv, wo = _weights(g, p)
    xz = np.where(ms[..., None] > 0, xs, 0.0)
    q = np.einsum("btf,hsf->bhts", xz, wq) + g.get_value(bq)[None, :, None, :]
    k = np.einsum("btf,hsf->bhts", xz, wk) + g.get_value(bk)[None, :, None, :]
    v = np.einsum("btf,hsf->bhts", xz, wv) + g.get_value(bv)[None, :, None, :]
    s = np.einsum("bhqs,bhks->bhqk", q, k) / np.sqrt(2) + ((ms - 1) * 1e9)[:, None, None, :]
    ref_w = R.softmax(s) * (ms > 0)[:, None, :, None]
    ctx = np.einsum("bhqk,bhks->bqhs", ref_w, v).reshape(2, 4, 4)
    ref_o = (ctx @ wo + g.get_value(bo)) * (ms > 0)[..., None]
    np.testing.assert_allclose(o, ref_o, atol=1e-10)
    np.testing.assert_allclose(wt, ref_w, atol=1e-10)
    grads = g.gradients({"x": xs, "mask": ms}, ops.sum(ops.square(out.value)), [bq, bk, bv, bo])
    assert all(np.abs(v).max() > 0 for k, v in grads.items() if k != "bk")  # bk shifts every score equally
    np.testing.assert_allclose(grads["bk"], 0.0, atol=1e-10)


# ---------------------------------------------------------------------------- attention with biases
BIAS_SETS = {"all": ("bq", "bk", "bv", "bo"), "qkv": ("bq", "bk", "bv"), "k_only": ("bk",), "o_only": ("bo",)}


def _biased_params(g, d, heads, which, rng, d_out=None):
    """AttentionParams with random weights and the named biases set to large random values (a dropped or
    misplaced bias changes the numbers)."""
    p = AttentionParams.create(g, f"p{len(g.vars)}", d, heads, d_out=d_out)
    g.set_value(p.wo, rng.normal(size=p.wo.shape) * 0.5)
    hs = d // heads
    bias = {
        n: g.variable(f"{p.wq.name.split('/')[0]}/{n}", rng.normal(size=(d_out or d,) if n == "bo" else (heads, hs)))
        for n in which
    }
    return AttentionParams(p.wq, p.wk, p.wv, p.wo, **bias)


def _ref_args(g, p):
    return {n: (g.get_value(getattr(p, n)) if getattr(p, n) is not None else None) for n in ("bq", "bk", "bv", "bo")}


@pytest.mark.parametrize("which", BIAS_SETS)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-10)])
def test_attention_with_biases_matches_reference(which, dtype, tol):
    """Fused (biases as an extra input column of the fused op's weights) and unfused paths, self-attention,
    huge values at padded positions, a row with a single valid key."""
    g = Graph(seed=2, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", 6))
    m = masked.mask_placeholder(g, "mask")
    rng = np.random.default_rng(21)
    p = _biased_params(g, 6, 2, BIAS_SETS[which], rng)
    out, w = masked.multi_head_attention(Masked(x, m), p, return_weights=True, name="att")
    unf = masked.multi_head_attention_unfused(Masked(x, m), p)
    xs, ms = padded(rng, [5, 3, 1], 5, 6)
    o, wt, ou = g.run({"x": xs, "mask": ms}, [out.value, w, unf.value])
    ro, rw = R.attention(xs, xs, ms, ms, *_weights(g, p), **_ref_args(g, p))
    np.testing.assert_allclose(o, ro, atol=tol, rtol=tol)
    np.testing.assert_allclose(ou, ro, atol=tol, rtol=tol)
    np.testing.assert_allclose(wt, rw, atol=tol, rtol=tol)
    np.testing.assert_array_equal(o[ms == 0], 0.0)  # padded queries give 0, not bo
    np.testing.assert_array_equal(ou[ms == 0], 0.0)
    np.testing.assert_array_equal(wt * (1 - ms)[:, None, None, :], 0.0)  # a biased padded key still gets 0
    # the biases matter (the same weights without them give other numbers), except a key bias alone: it adds
    # q . bk to all of a query's scores, which the softmax ignores
    plain, _ = R.attention(xs, xs, ms, ms, *_weights(g, p))
    assert np.abs(plain - ro).max() > 1e-2 if which != "k_only" else np.abs(plain - ro).max() < 1e-9


def test_cross_attention_with_biases_and_an_empty_context_row():
    g = Graph(seed=5, dtype=np.float64)
    xq = g.placeholder("xq", ("batch", "tq", 4))
    xc = g.placeholder("xc", ("batch", "tk", 4))
    mq = masked.mask_placeholder(g, "mq", ("batch", "tq"))
    mc = masked.mask_placeholder(g, "mc", ("batch", "tk"), allow_empty_rows=True)
    rng = np.random.default_rng(22)
    p = _biased_params(g, 4, 2, BIAS_SETS["all"], rng, d_out=3)
    out, w = masked.multi_head_attention(Masked(xq, mq), p, Masked(xc, mc), return_weights=True)
    unf = masked.multi_head_attention_unfused(Masked(xq, mq), p, Masked(xc, mc))
    q, mqs = padded(rng, [3, 2], 3, 4)
    c, mcs = padded(rng, [4, 0], 5, 4)  # row 1: no valid key at all
    fd = {"xq": q, "xc": c, "mq": mqs, "mc": mcs}
    o, wt, ou = g.run(fd, [out.value, w, unf.value])
    ro, rw = R.attention(q, c, mqs, mcs, *_weights(g, p), **_ref_args(g, p))
    assert o.shape == (2, 3, 3)
    np.testing.assert_allclose(o, ro, atol=1e-10)
    np.testing.assert_allclose(ou, ro, atol=1e-10)
    np.testing.assert_allclose(wt, rw, atol=1e-10)
    np.testing.assert_array_equal(o[1], 0.0)  # no key: 0, not bo
    for loss_out in (out, unf):
        grads = g.gradients(fd, ops.sum(ops.square(loss_out.value)), wrt=[xq, xc, *p.variables()])
        assert all(np.isfinite(a).all() for a in grads.values())
        np.testing.assert_array_equal(grads["xq"][1], 0.0)
        np.testing.assert_array_equal(grads["xc"][1], 0.0)


@pytest.mark.parametrize("fused", [True, False])
def test_attention_bias_gradients_match_finite_differences(fused):
    g = Graph(seed=8, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", 4))
    m = masked.mask_placeholder(g, "mask")
    rng = np.random.default_rng(23)
    p = _biased_params(g, 4, 2, BIAS_SETS["all"], rng)
    att = masked.multi_head_attention if fused else masked.multi_head_attention_unfused
    out = att(Masked(x, m), p)
    c = g.constant("c", rng.normal(size=(2, 4, 4)))
    loss = ops.sum(ops.multiply(out.value, c))
    xs, ms = padded(rng, [4, 2], 4, 4)
    fd = {"x": xs, "mask": ms}
    grads = g.gradients(fd, loss, wrt=[g["x"], *p.variables()])
    W, B, cv = _weights(g, p), _ref_args(g, p), g.get_value(c)
    fd_check(lambda a: float((R.attention(a, a, ms, ms, *W, **B)[0] * cv).sum()), xs, grads["x"], n=xs.size)
    np.testing.assert_array_equal(grads["x"][ms == 0], 0.0)
    for i, v in enumerate((p.wq, p.wk, p.wv, p.wo)):
        f = lambda a, i=i: float((R.attention(xs, xs, ms, ms, *W[:i], a, *W[i + 1 :], **B)[0] * cv).sum())  # noqa: E731
        fd_check(f, W[i], grads[v.name], n=W[i].size, seed=i)
    for n in ("bq", "bk", "bv", "bo"):
        v = getattr(p, n)
        f = lambda a, n=n: float((R.attention(xs, xs, ms, ms, *W, **{**B, n: a})[0] * cv).sum())  # noqa: E731
        fd_check(f, B[n], grads[v.name], n=B[n].size)
        if n != "bk":
            assert np.abs(grads[v.name]).max() > 1e-3, n
    # a key bias adds q . bk to every key's score of a query: softmax ignores it, so its gradient is 0
    np.testing.assert_allclose(grads[p.bk.name], 0.0, atol=1e-12)


def test_attention_params_check_bias_shapes():
    g = Graph()
    p = AttentionParams.create(g, "p", 6, 2)
    assert p.bq is None and p.bo is None and not p.has_input_biases
    ok = AttentionParams(p.wq, p.wk, p.wv, p.wo, bk=g.variable("bk", np.zeros((2, 3))))
    assert ok.has_input_biases and ok.head_size == 3 and len(ok.variables()) == 5
    with pytest.raises(ValueError, match=r"bq must be \[heads, head_size\] = \(2, 3\)"):
        AttentionParams(p.wq, p.wk, p.wv, p.wo, bq=g.variable("bq", np.zeros(6)))
    with pytest.raises(ValueError, match=r"bo must be \[d_out\]"):
        AttentionParams(p.wq, p.wk, p.wv, p.wo, bo=g.variable("bo", np.zeros(5)))
    with pytest.raises(ValueError, match="wk"):
        AttentionParams(p.wq, g.variable("wk2", np.zeros((3, 2, 6))), p.wv, p.wo)
    full = AttentionParams.create(g, "q", 6, 2, biases=True)
    assert [v.shape for v in full.variables()[4:]] == [(2, 3), (2, 3), (2, 3), (6,)]


# =============================================================================== 5. cross-entropy
def _xent_graph(ignore=-1, allow_empty=False):
    g = Graph(seed=0, dtype=np.float64)
    lp = g.placeholder("logits", ("batch", "time", 5))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=allow_empty)
    b = g.variable("b", np.zeros(5))  # logits sit next to a trainable variable
    loss = masked.softmax_cross_entropy(Masked(lp, m) + b, labels, ignore_label=ignore)
    return g, loss


def _xent_data(ignore, seed=0):
    rng = np.random.default_rng(seed)
    logits, ms = padded(rng, [4, 3, 1], 4, 5)
    logits *= 3.0
    logits[ms == 0] = HUGE
    labels = rng.integers(0, 5, (3, 4)).astype(np.int32)  # padded labels are real classes: the mask must act
    labels[0, 1] = labels[1, 2] = ignore
    return logits, labels, ms


@pytest.mark.parametrize("ignore", [-1, -100, 2])
def test_cross_entropy_matches_reference(ignore):
    g, loss = _xent_graph(ignore)
    logits, labels, ms = _xent_data(ignore)
    got = float(g.run({"logits": logits, "labels": labels, "mask": ms}, loss))
    assert got == pytest.approx(R.masked_xent(logits, labels, ms, ignore), rel=1e-12)
    # counting padding or ignored labels would give a different number
    assert abs(got - R.masked_xent(logits, labels, np.ones_like(ms), ignore)) > 1e-3


@pytest.mark.parametrize("ignore", [-1, 3])
def test_cross_entropy_gradient(ignore):
    g, loss = _xent_graph(ignore)
    logits, labels, ms = _xent_data(ignore, seed=1)
    fd = {"logits": logits, "labels": labels, "mask": ms}
    grads = g.gradients(fd, loss, wrt=[g["logits"], g["b"]])
    fd_check(lambda a: R.masked_xent(a, labels, ms, ignore), logits, grads["logits"], n=logits.size)
    fd_check(lambda a: float(g.run({**fd, "logits": a}, loss)), logits, grads["logits"], n=10)
    np.testing.assert_allclose(grads["logits"], R.masked_xent_grad(logits, labels, ms, ignore), atol=1e-12)
    dead = (ms == 0) | (labels == ignore)
    assert dead.sum() >= 4
    np.testing.assert_array_equal(grads["logits"][dead], 0.0)
    assert (np.abs(grads["logits"][~dead]).sum(-1) > 0).all()
    np.testing.assert_allclose(grads["b"], grads["logits"].sum((0, 1)), atol=1e-12)


def test_cross_entropy_nothing_counted_gives_zero():
    g, loss = _xent_graph(allow_empty=True)
    logits, labels, ms = _xent_data(-1)
    for lab, mk in ((np.full_like(labels, -1), ms), (labels, np.zeros_like(ms))):
        fd = {"logits": logits, "labels": lab, "mask": mk}
        assert float(g.run(fd, loss)) == 0.0
        grads = g.gradients(fd, loss, wrt=[g["logits"], g["b"]])
        for v in grads.values():
            assert np.isfinite(v).all()
            np.testing.assert_array_equal(v, 0.0)


def test_cross_entropy_validates_inputs():
    g = Graph()
    x = Masked(g.placeholder("l", ("batch", "time", 3)), masked.mask_placeholder(g, "mask"))
    with pytest.raises(TypeError, match="integer"):
        masked.softmax_cross_entropy(x, g.placeholder("fl", ("batch", "time")))
    with pytest.raises(MaskError, match="needs a Masked value"):
        masked.softmax_cross_entropy(x.value, g.placeholder("lab", ("batch", "time"), "int32"))


# =============================================================================== 6. metrics
@pytest.fixture
def acc_graph():
    g = Graph(dtype=np.float32)
    lp = g.placeholder("logits", ("batch", "time", 6))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    z = Masked(lp, m)
    outs = {"acc": masked.accuracy(z, labels), "acc_ign": masked.accuracy(z, labels, ignore_label=4)}
    outs.update({f"top{k}": masked.top_k_accuracy(z, labels, k) for k in (1, 2, 3, 6)})
    return g, outs


def test_accuracy_and_top_k_match_numpy(acc_graph):
    g, outs = acc_graph
    rng = np.random.default_rng(21)
    ms = masked.mask_from_lengths([7, 5, 2, 6], 7)
    logits = rng.normal(size=(4, 7, 6)).astype(np.float32)
    labels = rng.integers(0, 6, (4, 7)).astype(np.int32)
    labels[rng.random((4, 7)) < 0.2] = -1
    fd = {"logits": logits, "labels": labels, "mask": ms}
    with pytest.raises(FeedError, match="label -1 .* ignore label \\(\\[4\\]\\)"):
        g.run(fd, outs["acc_ign"])  # -1 is not acc_ign's ignore label: it would count, as a zero one-hot row
    got = g.run(fd, {k: v for k, v in outs.items() if k != "acc_ign"})
    assert got["acc"] == pytest.approx(R.top_k_accuracy(logits, labels, ms, 1), abs=1e-6)
    relabelled = np.where(labels == -1, 4, labels).astype(np.int32)  # custom ignore value 4
    acc_ign = g.run({"logits": logits, "labels": relabelled, "mask": ms}, outs["acc_ign"])
    assert acc_ign == pytest.approx(R.top_k_accuracy(logits, relabelled, ms, 1, ignore=4), abs=1e-6)
    for k in (1, 2, 3, 6):
        assert got[f"top{k}"] == pytest.approx(R.top_k_accuracy(logits, labels, ms, k), abs=1e-6)
    assert got["top6"] == 1.0 and 0 < got["top1"] < got["top3"] < 1


def test_padding_never_earns_credit(acc_graph):
    g, outs = acc_graph
    rng = np.random.default_rng(22)
    ms = masked.mask_from_lengths([5, 2, 3], 5)
    labels = rng.integers(0, 6, (3, 5)).astype(np.int32)
    base = rng.normal(size=(3, 5, 6)).astype(np.float32)
    right, wrong = base.copy(), base.copy()
    onehot = np.eye(6, dtype=np.float32)[labels] * 100.0
    right[ms == 0] = onehot[ms == 0]  # padded logits predict their labels perfectly
    wrong[ms == 0] = -onehot[ms == 0]  # ... or never
    a = g.run({"logits": right, "labels": labels, "mask": ms}, outs)
    b = g.run({"logits": wrong, "labels": labels, "mask": ms}, outs)
    for k in outs:
        assert a[k] == b[k], k
    assert a["acc"] == pytest.approx(R.top_k_accuracy(base, labels, ms, 1), abs=1e-6)
    # counting padding would have changed the score (the test can fail)
    assert R.top_k_accuracy(right, labels, np.ones_like(ms), 1) != R.top_k_accuracy(wrong, labels, np.ones_like(ms), 1)


def test_accuracy_nothing_counted_and_ties(acc_graph):
    g, outs = acc_graph
    z = np.zeros((2, 3, 6), np.float32)  # all classes tie: ranked by class index, like np.argmax
    labels = np.array([[1, 2, 3], [4, 5, 0]], np.int32)
    got = g.run({"logits": z, "labels": labels, "mask": [[1, 1, 0], [1, 0, 0]]}, outs)
    assert got["acc"] == 0.0  # a collapsed model (constant logits) earns nothing for labels 1, 2, 4
    assert got["top2"] == pytest.approx(1 / 3)  # label 1 is second in index order
    got = g.run({"logits": z, "labels": np.zeros_like(labels), "mask": [[1, 1, 0], [1, 0, 0]]}, outs)
    assert got["acc"] == 1.0  # ...and argmax (class 0) is right where the label is 0
    no_ign = {k: v for k, v in outs.items() if k != "acc_ign"}  # acc_ign ignores 4, not -1: it would refuse
    got = g.run({"logits": z, "labels": np.full_like(labels, -1), "mask": [[1, 1, 0], [1, 0, 0]]}, no_ign)
    assert all(v == 0.0 for v in got.values())
    got = g.run({"logits": z, "labels": labels, "mask": np.zeros((2, 3))}, outs)
    assert all(v == 0.0 for v in got.values())


# =============================================================================== fused= (deprecated)
def _fused_xent_graph(fused: bool | None, dtype=np.float64):
    g = Graph(seed=0, dtype=dtype)
    logits = g.variable("logits", np.random.default_rng(3).normal(size=(2, 4, 5)) * 3)
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    if fused is None:
        return g, logits, masked.softmax_cross_entropy(Masked(logits, m), labels)
    with pytest.warns(DeprecationWarning, match="fused"):
        return g, logits, masked.softmax_cross_entropy(Masked(logits, m), labels, fused=fused)


def test_cross_entropy_matches_reference_and_finite_differences_on_a_variable():
    g, logits, loss = _fused_xent_graph(fused=None)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float64)
    labels = np.array([[1, -1, 4, 2], [0, 3, 7, 7]], np.int32)  # an ignored label, junk at padding
    fd = {"mask": mask, "labels": labels}
    z = g.get_value(logits)
    assert float(g.run(fd, loss)) == pytest.approx(R.masked_xent(z, labels, mask), abs=1e-12)
    grad = g.gradients(fd, loss, [logits])["logits"]
    num = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        for sign in (1, -1):
            zz = z.copy()
            zz[idx] += sign * 1e-6
            g.set_value(logits, zz)
            num[idx] += sign * float(g.run(fd, loss)) / 2e-6
    g.set_value(logits, z)
    np.testing.assert_allclose(grad, num, atol=1e-7)
    assert (grad[mask == 0] == 0).all() and (grad[0, 1] == 0).all()  # padding and the ignored label


@pytest.mark.parametrize("fused", [True, False])
def test_fused_argument_is_deprecated_gives_the_same_loss_and_composes(fused):
    """fused= selected libnd4j's one-hot loss op (final loss only: it ignored upstream gradients). It is
    accepted, warns, and changes nothing: the result is the sparse loss, which can be scaled or combined."""
    (gf, _, lf), (gp, _, lp) = _fused_xent_graph(fused), _fused_xent_graph(None)
    fd = {"mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.float64), "labels": np.array([[4, 0, 1, 1], [2, 1, 1, 1]])}
    assert float(gf.run(fd, lf)) == float(gp.run(fd, lp))
    np.testing.assert_array_equal(gf.gradients(fd, lf)["logits"], gp.gradients(fd, lp)["logits"])
    scaled = ops.multiply(lf, 3.0)  # the old fused loss refused this
    np.testing.assert_allclose(gf.gradients(fd, scaled)["logits"], 3 * gp.gradients(fd, lp)["logits"], rtol=1e-12)
    empty = {"mask": np.zeros((2, 4)), "labels": np.full((2, 4), -1, np.int32)}
    assert float(gf.run(empty, lf)) == 0.0
    grad = gf.gradients(empty, lf)["logits"]
    assert np.isfinite(grad).all() and (grad == 0).all()


# =============================================================================== 7. garbage at padding
GARBAGE = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e9, 3e38]


def _garbage_graph():
    """Every masked op on one padded input; returns (graph, outputs dict, loss)."""
    g = Graph(seed=3, dtype=np.float32)
    x = g.placeholder("x", ("batch", "time", 4))
    q = g.placeholder("q", ("batch", "tq", 4))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask")
    mq = masked.mask_placeholder(g, "mq", ("batch", "tq"))
    h = Masked(x, m)
    p = AttentionParams.create(g, "p", 4, 2)
    att = masked.multi_head_attention(h, p)
    cross = masked.multi_head_attention(Masked(q, mq), p, h)
    unfused = masked.multi_head_attention_unfused(h, p)
    logits = masked.dense(h, g.variable("w", shape=(4, 5)))
    outs = {
        "mean": masked.mean_pool(h),
        "sum": masked.sum_pool(h),
        "max": masked.max_pool(h),
        "att": att.value,
        "cross": cross.value,
        "unfused": unfused.value,
        "xent": masked.softmax_cross_entropy(logits, labels),
        "acc": masked.accuracy(logits, labels),
    }
    loss = ops.add(outs["xent"], ops.sum(ops.square(masked.mean_pool(cross))))
    return g, outs, loss


@pytest.mark.parametrize("junk", GARBAGE, ids=str)
def test_garbage_at_padded_positions_changes_nothing(junk):
    """NaN/inf at padding used to turn pooling, attention and the loss into NaN (x * 0 keeps NaN), and 1e9 at
    padded KEYS moved valid attention outputs by 1e8 (DL4J's additive -1e9 key mask). Masked values select:
    outputs and gradients must be bit-identical to zeros at padding."""
    g, outs, loss = _garbage_graph()
    rng = np.random.default_rng(0)
    ms = masked.mask_from_lengths([5, 3, 1], 5)
    mqs = masked.mask_from_lengths([2, 3, 1], 3)
    clean = {
        "x": np.where(ms[..., None] > 0, rng.normal(size=(3, 5, 4)), 0.0).astype(np.float32),
        "q": np.where(mqs[..., None] > 0, rng.normal(size=(3, 3, 4)), 0.0).astype(np.float32),
        "labels": rng.integers(0, 5, (3, 5)).astype(np.int32),
        "mask": ms,
        "mq": mqs,
    }
    dirty = dict(clean)
    dirty["x"] = np.where(ms[..., None] > 0, clean["x"], np.float32(junk)).astype(np.float32)
    dirty["q"] = np.where(mqs[..., None] > 0, clean["q"], np.float32(junk)).astype(np.float32)
    a, b = g.run(clean, outs), g.run(dirty, outs)
    for k in outs:
        assert np.isfinite(b[k]).all(), k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ga = g.gradients(clean, loss, [*g.trainable(), g["x"], g["q"]])
    gb = g.gradients(dirty, loss, [*g.trainable(), g["x"], g["q"]])
    for k in ga:
        assert np.isfinite(gb[k]).all(), k
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
    np.testing.assert_array_equal(gb["x"][ms == 0], 0.0)


def test_cross_entropy_selects_padded_logits_made_inside_the_graph():
    """Padded logits produced by per-position ops (here a per-time table holding 3e38 where rows are padded)
    must be selected away by the loss itself: log-softmax of 3e38 gives -inf, times a zero one-hot is NaN."""
    g = Graph(seed=0, dtype=np.float32)
    x = g.placeholder("x", ("batch", "time", 5))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask")
    table = np.zeros((1, 4, 5), np.float32)
    table[0, 2:, 1:] = 3e38  # positions 2, 3 are padded in the fed rows
    logits = Masked(x, m) + g.constant("table", table)
    loss = masked.softmax_cross_entropy(logits, labels)
    acc = masked.accuracy(logits, labels)
    rng = np.random.default_rng(1)
    fd = {
        "x": rng.normal(size=(2, 4, 5)).astype(np.float32),
        "labels": rng.integers(0, 5, (2, 4)).astype(np.int32),
        "mask": masked.mask_from_lengths([2, 2], 4),
    }
    got_loss, got_acc = g.run(fd, [loss, acc])
    ref = R.masked_xent(fd["x"].astype(np.float64), fd["labels"], fd["mask"])
    assert got_loss == pytest.approx(ref, rel=1e-5)
    assert got_acc == pytest.approx(R.top_k_accuracy(fd["x"], fd["labels"], fd["mask"], 1))


def test_reflected_operators_keep_their_order():
    """1 - masked is not masked - 1, 2 / masked is not masked / 2 (a swapped operand passed every test)."""
    g = Graph(seed=0, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", 2))
    m = masked.mask_placeholder(g, "mask")
    h = Masked(x, m)
    outs = {"rsub": 1.0 - h, "rdiv": 2.0 / (h + 3.0), "rmul": 3.0 * h, "radd": 4.0 + h}
    xs = np.arange(1.0, 7.0).reshape(1, 3, 2)
    got = g.run({"x": xs, "mask": [[1, 1, 1]]}, {k: v.value for k, v in outs.items()})
    np.testing.assert_allclose(got["rsub"], 1.0 - xs)
    np.testing.assert_allclose(got["rdiv"], 2.0 / (xs + 3.0))
    np.testing.assert_allclose(got["rmul"], 3.0 * xs)
    np.testing.assert_allclose(got["radd"], 4.0 + xs)


def test_unfused_attention_matches_the_numpy_reference_directly():
    g, x, p = _attn_graph(np.float64, seed=21)
    out = masked.multi_head_attention_unfused(x, p)
    rng = np.random.default_rng(22)
    xs, ms = padded(rng, [5, 2, 4], 5, 6)
    got = g.run({"x": xs, "mask": ms}, out.value)
    clean = np.where(ms[..., None] > 0, xs, 0.0)
    ref, _ = R.attention(clean, clean, ms, ms, *_weights(g, p))
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_cross_attention_gradients_match_finite_differences_with_tq_not_tk():
    g = Graph(seed=9, dtype=np.float64)
    xq = g.placeholder("xq", ("batch", "tq", 4))
    xc = g.placeholder("xc", ("batch", "tk", 4))
    mq = masked.mask_placeholder(g, "mq", ("batch", "tq"))
    mc = masked.mask_placeholder(g, "mc", ("batch", "tk"))
    p = AttentionParams.create(g, "p", 4, 2)
    g.set_value(p.wo, np.random.default_rng(0).normal(size=p.wo.shape))
    out = masked.multi_head_attention(Masked(xq, mq), p, Masked(xc, mc))
    rng = np.random.default_rng(10)
    c = rng.normal(size=(2, 3, 4))
    loss = ops.sum(ops.multiply(out.value, g.constant("c", c)))
    q, mqs = padded(rng, [3, 2], 3, 4)
    k, mcs = padded(rng, [5, 2], 5, 4)
    fd = {"xq": q, "xc": k, "mq": mqs, "mc": mcs}
    W = _weights(g, p)
    grads = g.gradients(fd, loss, wrt=[xq, xc, p.wq, p.wk, p.wv, p.wo])

    def ref(qa, ka, *w):
        o, _ = R.attention(np.where(mqs[..., None] > 0, qa, 0), np.where(mcs[..., None] > 0, ka, 0), mqs, mcs, *w)
        return float((o * c).sum())

    fd_check(lambda a: ref(a, k, *W), q, grads["xq"], n=q.size)
    fd_check(lambda a: ref(q, a, *W), k, grads["xc"], n=k.size)
    for i, v in enumerate((p.wq, p.wk, p.wv, p.wo)):
        fd_check(lambda a, i=i: ref(q, k, *W[:i], a, *W[i + 1 :]), W[i], grads[v.name], n=W[i].size, seed=i)
    np.testing.assert_array_equal(grads["xq"][mqs == 0], 0.0)
    np.testing.assert_array_equal(grads["xc"][mcs == 0], 0.0)


def test_attention_output_width_is_wo_s_not_the_input_s():
    """d_out != d_in: the output's static and run-time shapes follow wo [heads * head_size, d_out]."""
    g = Graph(seed=0, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", 6))
    m = masked.mask_placeholder(g, "mask")
    p = AttentionParams.create(g, "p", 6, 2, head_size=5, d_out=3)
    out = masked.multi_head_attention(Masked(x, m), p)
    assert out.shape == (None, None, 3)
    rng = np.random.default_rng(0)
    xs, ms = padded(rng, [4, 2], 4, 6)
    got = g.run({"x": xs, "mask": ms}, out.value)
    ref, _ = R.attention(np.where(ms[..., None] > 0, xs, 0), np.where(ms[..., None] > 0, xs, 0), ms, ms,
                         *_weights(g, p))  # fmt: skip
    assert got.shape == (2, 4, 3)
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_map_to_a_per_position_scalar_keeps_the_mask():
    g = Graph(dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", 3))
    m = masked.mask_placeholder(g, "mask")
    s = Masked(x, m).map(lambda v: ops.sum(v, -1))  # [batch, time]: still one value per position
    assert isinstance(s, Masked) and s.shape == (None, None) and s.mask is m
    xs = np.arange(12.0).reshape(2, 2, 3)
    np.testing.assert_allclose(g.run({"x": xs, "mask": [[1, 1], [1, 0]]}, s.value), [[3, 12], [21, 0]])
    with pytest.raises(MaskError, match="must return a \\[batch, time, ...\\] Var"):
        Masked(x, m).map(lambda v: ops.sum(v, (1, 2)))


@pytest.mark.parametrize("impl", ["fused", "batched"])
def test_attention_output_has_the_static_shape_of_its_inputs(impl):
    """[batch, Tq, d_out] from a [batch, Tq, d_in] query and a [batch, Tk, d_in] context, known sizes kept."""
    g = Graph()
    q = g.placeholder("q", (2, 5, 4))
    c = g.placeholder("c", (2, 7, 4))
    mq, mc = masked.mask_placeholder(g, "mq", (2, 5)), masked.mask_placeholder(g, "mc", (2, 7))
    p = AttentionParams.create(g, "p", 4, 2, d_out=6)
    out, w = masked.multi_head_attention(Masked(q, mq), p, Masked(c, mc), return_weights=True, impl=impl)
    assert out.value.shape == (2, 5, 6)
    assert w.shape == (2, 2, 5, 7)
    got = g.run(
        {"q": np.ones((2, 5, 4)), "c": np.ones((2, 7, 4)), "mq": np.ones((2, 5)), "mc": np.ones((2, 7))}, [out.value, w]
    )
    assert got[0].shape == (2, 5, 6) and got[1].shape == (2, 2, 5, 7)
