"""Issue 12: masked LSTM and GRU. Outputs and final states against an independent numpy implementation
(tests/reference.py, row by row over the valid steps only), gradients against float64 central finite
differences, pad-invariance (appended pads, refilled padding, each row alone), right and left padding, both
directions, saved models; and one test per M2.1 bug worked around (each fails if the bug is fixed upstream or
if our fix is removed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference as R

from samediff_py import FeedError, Graph, MaskError, _jvm, checkpoint, masked, ops, train
from samediff_py.masked import GRUParams, LSTMParams, Masked
from samediff_py.testing import assert_pad_invariant

D, N, T = 3, 4, 5
LENGTHS = [5, 3, 1, 0]  # a full row, two shorter ones, an empty one


def _feeds(side, lengths=LENGTHS, t=T, seed=0, filler=np.nan):
    rng = np.random.default_rng(seed)
    m = masked.mask_from_lengths(lengths, t, dtype=np.float64, side=side)
    x = rng.normal(size=(len(lengths), t, D))
    x[m == 0] = filler  # whatever padding holds must never matter
    return x, m


def _layer(kind, side, bi, dtype=np.float64, seed=1, max_len=7, allow_empty=True):
    """(graph, RecurrentOutput, params, numpy weights) with random non-zero biases."""
    g = Graph(seed=seed, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", D))
    m = masked.mask_placeholder(g, "mask", padding=side, allow_empty_rows=allow_empty)
    rng = np.random.default_rng(seed + 10)
    if kind.startswith("lstm"):
        p = LSTMParams.create(g, "p", D, N, bidirectional=bi)
        g.set_value(p.b, rng.normal(size=p.b.shape))
        out = masked.lstm(Masked(x, m), p, name="rnn", method="lengths" if kind == "lstm_lengths" else "gates")
        weights = [g.get_value(v) for v in (p.wx, p.wr, p.b)]
    else:
        p = GRUParams.create(g, "p", D, N, bidirectional=bi)
        for v in (p.b, p.bh):
            g.set_value(v, rng.normal(size=v.shape))
        out = masked.gru(Masked(x, m), p, max_len=max_len, name="rnn")
        weights = [g.get_value(v) for v in (p.wx, p.wh, p.b, p.bh)]
    return g, out, p, weights


def _outputs(out):
    return [out.outputs.value, out.last_h] + ([out.last_c] if out.last_c is not None else [])


# lstm: method="gates" (the default); lstm_lengths: method="lengths" (libnd4j's sequence-length input)
CASES = [(k, s, bi) for k in ("lstm", "lstm_lengths", "gru") for s in ("right", "left") for bi in (False, True)]


def _ref_kind(kind):
    return "lstm" if kind.startswith("lstm") else kind


# ============================================================================ forward vs numpy
@pytest.mark.parametrize("kind, side, bi", CASES)
def test_matches_numpy_reference(kind, side, bi):
    g, out, p, w = _layer(kind, side, bi)
    xs, ms = _feeds(side)
    got = g.run({"x": xs, "mask": ms}, _outputs(out))
    ref = R.masked_rnn(_ref_kind(kind), np.nan_to_num(xs), ms, w, bi)
    width = 2 * N if bi else N
    assert got[0].shape == (4, T, width) and got[1].shape == (4, width)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(got[0][ms == 0], 0.0)  # padded positions are exactly zero
    for a in got[1:]:
        np.testing.assert_array_equal(a[3], 0.0)  # the empty row: zero final state
    # the final state is the output at the row's last valid step, not at the padded end
    last = np.flatnonzero(ms[1])[-1]
    np.testing.assert_allclose(got[1][1, :N], got[0][1, last, :N], atol=1e-15)
    if bi:  # the backward direction ends at the row's FIRST valid step
        first = np.flatnonzero(ms[1])[0]
        np.testing.assert_allclose(got[1][1, N:], got[0][1, first, N:], atol=1e-15)
    assert np.abs(got[1][1] - got[0][1, -1]).max() > 1e-3 or side == "left"


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_matches_numpy_reference(kind):
    g, out, p, w = _layer(kind, "right", True, dtype=np.float32)
    xs, ms = _feeds("right")
    got = g.run({"x": xs, "mask": ms}, _outputs(out))
    ref = R.masked_rnn(kind, np.nan_to_num(xs), ms, [v.astype(np.float64) for v in w], True)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_gru_handles_holes_in_the_mask():
    """padding='any': the GRU's state carry skips every padded step, wherever it is."""
    g = Graph(seed=3, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", D))
    m = masked.mask_placeholder(g, "mask", padding="any")
    p = GRUParams.create(g, "p", D, N, bidirectional=True)
    out = masked.gru(Masked(x, m), p, max_len=T)
    ms = np.array([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]], np.float64)
    xs = np.random.default_rng(4).normal(size=(2, T, D))
    got = g.run({"x": xs, "mask": ms}, _outputs(out))
    ref = R.masked_rnn("gru", xs, ms, [g.get_value(v) for v in (p.wx, p.wh, p.b, p.bh)], True)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_lstm_refuses_masks_with_holes():
    g = Graph()
    x = g.placeholder("x", ("batch", "time", D))
    m = masked.mask_placeholder(g, "mask", padding="any")
    with pytest.raises(MaskError, match="right- or left-padded.*masked.gru"):
        masked.lstm(Masked(x, m), LSTMParams.create(g, "p", D, N))


def test_gru_max_len_is_checked_when_fed_and_built():
    g, out, _, _ = _layer("gru", "right", False, max_len=4)
    xs, ms = _feeds("right", [4, 2], t=4)
    assert g.run({"x": xs, "mask": ms}, out.outputs.value).shape == (2, 4, N)
    xs, ms = _feeds("right", [5, 2], t=5)
    with pytest.raises(FeedError, match="'mask': size 5 on axis 1 exceeds 4 .*GRU's max_len"):
        g.run({"x": xs, "mask": ms}, out.outputs.value)
    g2 = Graph()
    x = g2.placeholder("x", (2, 6, D))
    with pytest.raises(ValueError, match="6 steps, more than max_len=4"):
        masked.gru(Masked(x, masked.mask_placeholder(g2, "mask", (2, 6))), GRUParams.create(g2, "p", D, N), max_len=4)


def test_params_and_inputs_are_validated():
    g = Graph()
    x = g.placeholder("x", ("batch", "time", D))
    m = masked.mask_placeholder(g, "mask")
    with pytest.raises(ValueError, match="2 features but the weights expect 3|has 3 features but the weights"):
        masked.lstm(Masked(x, m), LSTMParams.create(g, "p", 2, N))
    bad = LSTMParams(g.variable("wx", np.zeros((D, 4 * N))), g.variable("wr", np.zeros((N, 3 * N))))
    with pytest.raises(ValueError, match=r"LSTMParams.wr 'wr' has shape \(4, 12\), expected \(4, 16\)"):
        masked.lstm(Masked(x, m), bad)
    with pytest.raises(MaskError, match="needs a Masked value"):
        masked.gru(x, GRUParams.create(g, "q", D, N), max_len=4)
    with pytest.raises(ValueError, match="plain name"):
        masked.lstm(Masked(x, m), LSTMParams.create(g, "r", D, N), name="a/b")


# ============================================================================ gradients
def _weighted_loss(g, outs, rng):
    """sum_i sum(out_i * C_i): its gradient w.r.t. out_i is C_i (random constants)."""
    cs = [g.constant(None, rng.normal(size=s)) for s in _shapes(outs)]
    total = None
    for o, c in zip(outs, cs):
        term = ops.sum(ops.multiply(o, c))
        total = term if total is None else ops.add(total, term)
    return total, [g.get_value(c) for c in cs]


def _shapes(outs):
    return [(4, T, o.shape[2]) if o.rank == 3 else (4, o.shape[1]) for o in outs]


def _fd(f, a, eps=1e-6, entries=None):
    """Central differences of f at every entry of a (or at ``entries``)."""
    out = np.zeros_like(a)
    for i in entries if entries is not None else np.ndindex(*a.shape):
        ap, am = a.copy(), a.copy()
        ap[i] += eps
        am[i] -= eps
        out[i] = (f(ap) - f(am)) / (2 * eps)
    return out


@pytest.mark.parametrize("kind, side, bi", CASES)
def test_gradients_match_finite_differences(kind, side, bi):
    g, out, p, w = _layer(kind, side, bi)
    outs = _outputs(out)
    rng = np.random.default_rng(5)
    loss, cs = _weighted_loss(g, outs, rng)
    xs, ms = _feeds(side)
    x0 = np.nan_to_num(xs)
    names = ["wx", "wr", "b"] if kind.startswith("lstm") else ["wx", "wh", "b", "bh"]
    params = [getattr(p, n) for n in names]
    grads = g.gradients({"x": xs, "mask": ms}, loss, [g["x"], *params])

    def ref_loss(x, weights):
        refs = R.masked_rnn(_ref_kind(kind), x, ms, weights, bi)
        return sum(float((r * c).sum()) for r, c in zip(refs, cs) if r is not None)

    gx = grads["x"]
    assert np.isfinite(gx).all()
    np.testing.assert_array_equal(gx[ms == 0], 0.0)  # nothing flows into padding (NaN there included)
    num = _fd(lambda a: ref_loss(a, w), x0)
    np.testing.assert_allclose(gx, num, atol=1e-8 * max(1.0, np.abs(num).max()))
    for k, v in enumerate(params):
        num = _fd(lambda a, k=k: ref_loss(x0, [*w[:k], a, *w[k + 1 :]]), w[k])
        np.testing.assert_allclose(grads[v.name], num, atol=1e-8 * max(1.0, np.abs(num).max()), err_msg=v.name)
        assert np.abs(num).max() > 1e-3
    # and a few entries against finite differences of the graph itself
    picks = [tuple(i) for i in np.argwhere(ms > 0)[:3]]
    picks = [(*i, 0) for i in picks]
    num = _fd(lambda a: float(g.run({"x": a, "mask": ms}, loss)), x0, entries=picks)
    for i in picks:
        assert gx[i] == pytest.approx(num[i], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kind", ["lstm", "lstm_lengths", "gru"])
def test_fully_padded_batch_gives_zeros_and_zero_gradients(kind):
    g, out, p, _ = _layer(kind, "right", True)
    loss, _ = _weighted_loss(g, _outputs(out), np.random.default_rng(6))
    xs, ms = _feeds("right", [0, 0, 0, 0])
    vals = g.run({"x": xs, "mask": ms}, _outputs(out))
    for v in vals:
        np.testing.assert_array_equal(v, 0.0)
    grads = g.gradients({"x": xs, "mask": ms}, loss, [g["x"], p.wx])
    for v in grads.values():
        assert np.isfinite(v).all()
    np.testing.assert_array_equal(grads["x"], 0.0)


# ============================================================================ pad-invariance
@pytest.mark.parametrize("kind, side, bi", CASES)
def test_pad_invariant(kind, side, bi):
    """samediff_py.testing: each row alone (truncated), pads appended (right) or prepended (left), padding
    refilled with random values, NaN, inf and 1e30; outputs, final states, loss, gradients."""
    g, out, p, _ = _layer(kind, side, bi, dtype=np.float32, max_len=12, allow_empty=False)
    xs, ms = _feeds(side, [5, 3, 1])
    feeds = {"x": xs.astype(np.float32), "mask": ms.astype(np.float32)}
    outputs = [out.outputs, *_outputs(out)[1:]]
    loss = ops.add(ops.sum(ops.square(masked.mean_pool(out.outputs))), ops.sum(ops.square(out.last_h)))
    rep = assert_pad_invariant(g, feeds, outputs, loss=loss, grad_inputs=[g["x"]], ks=(1, 7))
    assert rep.max_drift("input-grad") == 0.0
    for o in _outputs(out):
        for row in range(3):
            assert ("output", "alone", row, o.name) in rep.drift
    assert ("output", "append", 7, out.last_h.name) in rep.drift


# ============================================================================ saved models
def test_saved_model_with_lstm_and_gru_loads_runs_and_trains(tmp_path):
    g = Graph(seed=8)
    x = g.placeholder("x", ("batch", "time", D))
    m = masked.mask_placeholder(g, "mask", padding="left")
    h = masked.lstm(Masked(x, m), LSTMParams.create(g, "l", D, N, bidirectional=True), name="lstm").outputs
    r = masked.gru(h, GRUParams.create(g, "gr", 2 * N, N), max_len=6, name="gru")
    pooled = ops.add(masked.mean_pool(r.outputs), r.last_h, name="pooled")
    loss = ops.mean(ops.square(pooled), name="loss")
    xs, ms = _feeds("left", [5, 2], seed=9, filler=0.0)
    feeds = {"x": xs.astype(np.float32), "mask": ms.astype(np.float32)}
    t = train.Trainer(g, loss, "adam", lr=0.01)
    t.step(feeds)
    before = g.run(feeds, ["pooled", "lstm/last_h", "gru/last_h"])
    grads = g.gradients(feeds, loss)
    path = checkpoint.save(g, tmp_path / "rnn.sdz")
    g2 = checkpoint.load(path)
    after = g2.run(feeds, ["pooled", "lstm/last_h", "gru/last_h"])
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=1e-6)
    grads2 = g2.gradients(feeds, "loss")
    for k, v in grads.items():
        np.testing.assert_allclose(grads2[k], v, atol=1e-6, err_msg=k)
    with pytest.raises(MaskError, match="padding after a valid position"):  # the contract came back too
        g2.run({"x": feeds["x"], "mask": [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]}, "pooled")
    t2 = train.Trainer.restore(g2)
    assert np.isfinite(t2.step(feeds))


# ============================================================================ M2.1 bugs worked around
def test_lstm_layer_class_is_the_fixed_one():
    g = Graph()  # starts the JVM and the registration
    assert g is not None
    assert _jvm.jclass("samediffpy.Sequences").lstmClass() == "samediffpy.Sequences$FixedLstm"


def test_m21_stock_lstm_and_cumsum_bugs():
    """In a fresh JVM without our registered classes: the stock lstmLayer's gradient leaks into padded steps
    (its gradient ignores the lengths, though the forward output there is exactly 0); a saved graph holding
    it cannot be loaded; cumsum's gradient sums over a wrong axis. tests/m21_stock_probe.py."""
    probe = Path(__file__).with_name("m21_stock_probe.py")
    res = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["lstm_class"] == "org.nd4j.linalg.api.ops.impl.layers.recurrent.LSTMLayer"
    assert out["lstm_out_at_padding"] == 0.0
    assert out["lstm_grad_at_padding"] > 0.1  # must be exactly 0 (masked.lstm: test_gradients_...)
    assert "NullPointerException" in out["lstm_load"] and "inputsForOp" in out["lstm_load"]
    assert out["cumsum_grad"] == [222.0, 221.0, 211.0, 111.0, 110.0, 100.0]  # right: [111, 110, 100] twice


def test_m21_fused_gru_op_has_the_formula_but_a_wrong_gradient():
    """M2.1's gru op computes masked.gru's formula (reset after the matmul, no candidate recurrent bias), but its
    gradient (gru_bp) is wrong in the reset gate: why masked.gru is unrolled from plain ops."""
    g = Graph(seed=10, dtype=np.float64)
    x = g.placeholder("x", (T, 2, D))  # time-major, as the op wants
    rng = np.random.default_rng(11)
    shapes = {"wx": (D, 3 * N), "wh": (N, 3 * N), "b": (3 * N,)}
    wx, wh, b = (g.variable(n, rng.normal(size=s)) for n, s in shapes.items())
    h0 = g.constant("h0", np.zeros((2, N)))
    seq = _jvm.jclass("samediffpy.Sequences")
    y = g.op("gru", None, lambda n: seq.stockGru(g.sd, n, x.j, h0.j, wx.j, wh.j, b.j), (T, 2, N), np.float64, (x,))
    c = rng.normal(size=(T, 2, N))
    loss = ops.sum(ops.multiply(y, c))
    xs = rng.normal(size=(T, 2, D))
    w = [g.get_value(v) for v in (wx, wh, b)]
    ref = np.stack([R.gru_steps(xs[:, r], *w, None)[0] for r in range(2)], 1)
    np.testing.assert_allclose(g.run({"x": xs}, y), ref, atol=1e-12)  # the forward formula agrees
    grads = g.gradients({"x": xs}, loss, [x, wh])

    def f(a, k):
        ww = [*w[:k], a, *w[k + 1 :]] if k is not None else w
        xx = a if k is None else xs
        return float((np.stack([R.gru_steps(xx[:, r], *ww, None)[0] for r in range(2)], 1) * c).sum())

    num_wh = _fd(lambda a: f(a, 1), w[1])
    rel = np.abs(grads["wh"] - num_wh).max() / np.abs(num_wh).max()
    assert rel > 0.01, f"M2.1's gru gradient now agrees with finite differences (rel {rel:.2g})"
    reset = np.abs(grads["wh"][:, :N] - num_wh[:, :N]).max()
    candidate = np.abs(grads["wh"][:, 2 * N :] - num_wh[:, 2 * N :]).max()
    assert reset > 1e3 * max(candidate, 1e-12) or reset > 0.01  # the reset-gate block is the wrong one


def test_m21_gru_cell_has_no_gradient():
    g = Graph(seed=12, dtype=np.float64)
    x = g.placeholder("x", (2, D))
    rng = np.random.default_rng(13)
    h = g.constant("h", rng.normal(size=(2, N)))
    wru = g.variable("wru", rng.normal(size=(D + N, 2 * N)))
    wc = g.variable("wc", rng.normal(size=(D + N, N)))
    bru, bc = g.variable("bru", np.zeros(2 * N)), g.variable("bc", np.zeros(N))
    seq = _jvm.jclass("samediffpy.Sequences")
    out = g.op(
        "gru_cell", None, lambda n: seq.stockGruCell(g.sd, n, x.j, h.j, wru.j, wc.j, bru.j, bc.j), (2, N),
        np.float64, (x, h, wru, wc, bru, bc),
    )  # fmt: skip
    assert g.run({"x": np.ones((2, D))}, out).shape == (2, N)
    with pytest.raises(_jvm.JavaError, match="Not yet implemented|UnsupportedOperation"):
        g.gradients({"x": np.ones((2, D))}, ops.sum(out))
