"""Issue 12: masked 1-d convolution, causal attention, position ids from the mask, cumsum; a causal language
model that trains on shifted targets. Against numpy references (tests/reference.py) and float64 finite
differences; pad-invariance under right and left padding; the M2.1 facts that decided the design."""

from __future__ import annotations

import numpy as np
import pytest
import reference as R
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samediff_py import Graph, _jvm, masked, ops, padding, train
from samediff_py.errors import JavaError
from samediff_py.masked import AttentionParams, Masked
from samediff_py.models import Encoder, EncoderConfig
from samediff_py.testing import assert_pad_invariant

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
C = 3


def _feeds(side, lengths, t, d=C, seed=0, filler=np.nan):
    rng = np.random.default_rng(seed)
    m = masked.mask_from_lengths(lengths, t, dtype=np.float64, side=side)
    x = rng.normal(size=(len(lengths), t, d))
    x[m == 0] = filler
    return x, m


def _fd(f, a, eps=1e-6):
    out = np.zeros_like(a)
    for i in np.ndindex(*a.shape):
        ap, am = a.copy(), a.copy()
        ap[i] += eps
        am[i] -= eps
        out[i] = (f(ap) - f(am)) / (2 * eps)
    return out


# ============================================================================ conv1d
CONV = [(p, k, d) for p in ("same", "causal") for k, d in ((3, 1), (2, 1), (4, 1), (2, 3), (4, 2), (1, 1))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pad, k, d", CONV)
def test_conv1d_matches_numpy(pad, k, d, side, dtype):
    """float64 and float32: the oneDNN build runs float32 convolutions through oneDNN (dilation 1), not float64."""
    g = Graph(seed=1, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", C))
    m = masked.mask_placeholder(g, "mask", padding=side, allow_empty_rows=True)
    rng = np.random.default_rng(2)
    w, b = g.variable("w", rng.normal(size=(k, C, 2))), g.variable("b", rng.normal(size=2))
    y = masked.conv1d(Masked(x, m), w, b, dilation=d, padding=pad)
    xs, ms = _feeds(side, [7, 4, 1, 0], 7)
    got = g.run({"x": xs.astype(dtype), "mask": ms}, y.value)
    ww, bb = g.get_value(w).astype(np.float64), g.get_value(b).astype(np.float64)
    xr = np.nan_to_num(xs.astype(dtype).astype(np.float64))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, R.masked_conv1d(xr, ms, ww, bb, d, pad), atol=tol)
    np.testing.assert_array_equal(got[ms == 0], 0.0)
    # the unmasked conv of a full row is plain numpy conv (the reference's own check)
    np.testing.assert_allclose(got[0], R.conv1d(xr[0], ww, bb, d, pad), atol=tol)


@pytest.mark.parametrize("upstream", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k, dilation", [(3, 1), (2, 1), (4, 1), (3, 2)])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pad", ["same", "causal"])
def test_conv1d_gradients_match_finite_differences(pad, side, k, dilation, dtype, upstream):
    """vs float64 central differences of the numpy reference, at dilation 1 (the library op) and 2 (the taps).
    At dilation 1 over data (nothing trainable upstream), the gradient is FastConv1D's own (the kernel's from
    the taps and one matmul; the input's, asked for here, a convolution with the mirrored kernel: odd and even
    widths, both SAME branches and CAUSAL); with a trainable scale upstream, M2.1's conv1d_bp (oneDNN in
    float32)."""
    g = Graph(seed=3, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", C))
    m = masked.mask_placeholder(g, "mask", padding=side)
    rng = np.random.default_rng(4)
    w, b = g.variable("w", rng.normal(size=(k, C, 2))), g.variable("b", rng.normal(size=2))
    xin = ops.multiply(x, g.variable("scale", np.ones(C))) if upstream else x  # x * 1: the same reference
    y = masked.conv1d(Masked(xin, m), w, b, dilation=dilation, padding=pad)
    c = rng.normal(size=(3, 6, 2))
    loss = ops.sum(ops.multiply(y.value, g.constant("c", c)))
    xs, ms = _feeds(side, [6, 4, 2], 6, seed=5)
    xs = xs.astype(dtype)
    grads = g.gradients({"x": xs, "mask": ms}, loss, [x, w, b])
    x0, W, B = (np.nan_to_num(a).astype(np.float64) for a in (xs, g.get_value(w), g.get_value(b)))
    tol = 1e-8 if dtype == np.float64 else 1e-4

    def f(xx=x0, ww=W, bb=B):
        return float((R.masked_conv1d(xx, ms, ww, bb, dilation, pad) * c).sum())

    np.testing.assert_allclose(grads["x"], _fd(lambda a: f(xx=a), x0), atol=tol)
    np.testing.assert_array_equal(grads["x"][ms == 0], 0.0)
    np.testing.assert_allclose(grads["w"], _fd(lambda a: f(ww=a), W), atol=tol)
    np.testing.assert_allclose(grads["b"], _fd(lambda a: f(bb=a), B), atol=tol)


def test_conv1d_skips_the_input_gradient_over_data_and_survives_save_load(tmp_path):
    """conv1d's registered class (Sequences.FastConv1D): over data the gradient function holds no conv1d_bp
    (the input's gradient is not computed), after a trainable layer it does; a saved model loads with the
    class and computes the same outputs and gradients, NaN padding included."""
    from samediff_py import checkpoint

    g = Graph(seed=7)
    x = g.placeholder("x", ("batch", "time", C))
    m = masked.mask_placeholder(g, "mask")
    w0, b0 = g.variable("w0", shape=(3, C, 4)), g.variable("b0", np.full(4, 0.1))
    h = masked.conv1d(Masked(x, m), w0, b0, activation=ops.relu)
    h = masked.conv1d(h, g.variable("w1", shape=(2, 4, 4)), padding="causal", name="top")
    loss = ops.mean(ops.square(masked.mean_pool(h)), name="loss")
    xs, ms = _feeds("right", [6, 3], 6, seed=8)
    feeds = {"x": xs.astype(np.float32), "mask": ms.astype(np.float32)}
    train.Trainer(g, loss, "adam", lr=0.01).step(feeds)
    fixed = _jvm.jclass("samediffpy.FixedOps")
    assert set(fixed.opClasses(g.sd, "conv1d")) == {"samediffpy.Sequences$FastConv1D"}
    assert len(fixed.opClasses(g.sd.getFunction("grad"), "conv1d_bp")) == 1  # the second layer's only
    grads = g.gradients(feeds, "loss")
    g2 = checkpoint.load(checkpoint.save(g, tmp_path / "conv.sdz"))
    assert set(fixed.opClasses(g2.sd, "conv1d")) == {"samediffpy.Sequences$FastConv1D"}
    assert set(fixed.opClasses(g2.sd, "divide_no_nan")) == {"samediffpy.FixedOps$ZeroPadded"}  # the zeroings
    np.testing.assert_array_equal(g2.run(feeds, "top"), g.run(feeds, "top"))
    grads2 = g2.gradients(feeds, "loss")
    assert sorted(grads2) == sorted(grads) == ["b0", "w0", "w1"]
    for k in grads:
        np.testing.assert_array_equal(grads2[k], grads[k], err_msg=k)


@pytest.mark.parametrize("mask_shape", [(1, 4), (2, 1)])
def test_conv1d_refuses_a_mask_of_another_batch_or_time_with_unknown_features(mask_shape):
    """A mask of batch or time 1 against a larger input fails instead of being broadcast over other rows (it
    once read another row's values as a padded step's: found by review): the zeroing reshapes the mask to the
    value's own batch and time."""
    g = Graph(seed=0)
    x = g.placeholder("x", (None, None, None))
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    y = masked.conv1d(Masked(x, m), g.variable("w", np.ones((1, 3, 1), np.float32)))
    ms = np.ones(mask_shape, np.float32)
    ms[..., -1] = 0
    with pytest.raises(JavaError, match="Reshape|reshape"):
        g.run({"x": np.ones((2, 4, 3), np.float32), "mask": ms}, y.value)


@pytest.mark.parametrize("mask", [[[1, 1, 1, 0]], [[1], [0]]])
def test_zeroing_refuses_a_mask_of_batch_or_time_one(mask):
    """The zeroing (here with the feature size unknown when building) reshapes the mask to the value's own
    batch and time, so a mask of batch or time 1 fails instead of being broadcast over other rows (found by
    review); a matching mask gives the exact zeros."""
    from samediff_py.masked.rows import zero_padding

    g = Graph(seed=0)
    x = g.placeholder("x", (None, None, None))
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    z = zero_padding(x, m)
    xs = np.full((2, 4, 3), np.nan, np.float32)
    with pytest.raises(JavaError, match="mask_must_match_value"):
        g.run({"x": xs, "mask": np.array(mask, np.float32)}, z)
    ok = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    out = g.run({"x": np.ones_like(xs), "mask": ok}, z)
    np.testing.assert_array_equal(out, np.broadcast_to(ok[..., None], (2, 4, 3)))


def test_graphs_with_masked_ops_are_freed():
    """What masked ops record per graph (row indices, shapes, zero-padded values) lives on the graph: in
    module-level weak dicts, values pointing back at the graph kept every such graph alive."""
    import gc
    import weakref

    def build():
        g = Graph(seed=0)
        x = g.placeholder("x", ("batch", "time", C))
        m = masked.mask_placeholder(g, "mask")
        h = masked.conv1d(Masked(x, m), g.variable("w", shape=(3, C, 2)), activation=ops.relu)
        masked.mean_pool(h)
        return weakref.ref(g)

    ref = build()
    gc.collect()
    assert ref() is None


def _conv_stack(side, dtype=np.float32):
    """Three masked conv layers (same k3, causal k2 d2, same k3 d3) with ReLUs, on a linear input layer."""
    g = Graph(seed=6, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", C))
    m = masked.mask_placeholder(g, "mask", padding=side)
    h = Masked(x, m) @ g.variable("w_in", shape=(C, 4))
    for i, (k, d, pad) in enumerate(((3, 1, "same"), (2, 2, "causal"), (3, 3, "same"))):
        w = g.variable(f"w{i}", shape=(k, 4, 4))
        h = masked.conv1d(h, w, g.variable(f"b{i}", np.full(4, 0.1)), dilation=d, padding=pad)
        h = h.map(ops.relu) + 0.5  # non-zero at padding again: the next conv must zero it itself
    return g, x, h


@pytest.mark.parametrize("side", ["right", "left"])
def test_conv_stack_is_pad_invariant(side):
    """Three layers, each zeroing its input's padding: rows alone, appended/prepended pads, every filler."""
    g, x, h = _conv_stack(side)
    xs, ms = _feeds(side, [9, 5, 2], 9)
    feeds = {"x": xs.astype(np.float32), "mask": ms.astype(np.float32)}
    loss = ops.sum(ops.square(masked.mean_pool(h)))
    rep = assert_pad_invariant(g, feeds, [h], loss=loss, grad_inputs=[x], ks=(1, 8), atol=1e-4)
    assert rep.max_drift("input-grad") == 0.0
    assert ("output", "alone", 2, h.value.name) in rep.drift


@pytest.mark.parametrize("offsets", [None, [0], [-1, 0, 1], [-4, -2, 0], [0, 3]], ids=str)
@pytest.mark.parametrize("side", ["right", "left"])
def test_structured_row_gather_gradient_equals_scatter_add(tmp_path, offsets, side):
    """Structured row gathers promise an index structure (``index[p*k + j]`` is
    ``p + offsets[j]`` or the filler row) and get a gradient by one gather of the inverse index instead of
    libnd4j's scatter-add: the same table gradient as numpy's ``np.add.at`` over the index, before and after a
    save / load (the promise travels in the op's integer arguments). None: a mask's row index (what the masked
    ops use); offsets: a convolution's taps (the general case, built in numpy here)."""
    from samediff_py.masked import rows

    rng = np.random.default_rng(4)
    g = Graph(seed=3, dtype=np.float64)
    table = rng.normal(size=(4 * 6, 4))
    flat = g.variable("flat", table)  # SameDiff differentiates graphs with a variable
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True, padding=side)
    mask = masked.mask_from_lengths([6, 3, 0, 5], t := 6, side=side)
    if offsets is None:
        offsets, idx = [0], rows.row_index(m)
    else:  # taps as a convolution would read them: step p + o if it is a valid step of p's row, else the filler
        idx = g.placeholder("idx", (None,), np.int32)
        valid = mask.reshape(-1) > 0
        fed = [p + o if 0 <= p % t + o < t and valid[p + o] else mask.size for p in range(mask.size) for o in offsets]
    k, f = len(offsets), 4
    out = rows.gather_rows(flat, idx, offsets=offsets, name="out")
    c = g.placeholder("c", (None, f))
    loss = ops.sum(ops.multiply(out, c), name="loss")
    fd = {"mask": mask, "c": rng.normal(size=(4 * t * k, f))}
    if idx.kind == "placeholder":
        fd["idx"] = np.array(fed, np.int32)
    ids = g.run(fd, idx)
    n = 4 * t
    for p in range(n):  # the promise holds
        for j, o in enumerate(offsets):
            assert ids[p * k + j] in (p + o, n)
    ref = np.zeros((n + 1, f))
    np.add.at(ref, ids, fd["c"])
    got = g.gradients(fd, loss, [flat])["flat"]
    np.testing.assert_allclose(got, ref[:n], rtol=0, atol=1e-12)
    grad_ops = {op.getOp().opName() for op in g.sd.getFunction("grad").getOps().values().toArray()}
    assert "scatter_add" not in grad_ops  # the gather gradient ran, not the general fallback
    np.testing.assert_allclose(g.run(fd, out), np.vstack([table, np.zeros((1, f))])[ids], rtol=0, atol=0)
    g2 = train.load(train.save(g, tmp_path / "m.sdz"))
    marked = ",".join(str(a) for a in (0, 7_530_000_001, k, *offsets))
    assert marked in list(_jvm.jclass("samediffpy.FixedOps").gatherArgs(g2.sd))
    np.testing.assert_allclose(g2.gradients(fd, "loss", ["flat"])["flat"], ref[:n], rtol=0, atol=1e-12)


def test_masked_gather_refuses_a_value_whose_rows_differ_from_its_masks():
    """A value whose batch x time differs from its mask's at run time (dims the graph could not check when
    building) used to gather wrong rows silently; the structured gathers now fail with an error instead (and
    their gradient can never index past the upstream rows: that crashed the process in a review's probe)."""
    from samediff_py.errors import JavaError

    g = Graph(seed=5)
    x = g.placeholder("x", (None, None, 4))  # no named dims: nothing ties x to the mask
    m = masked.mask_placeholder(g, "mask")
    w0 = g.variable("w0", shape=(4, 4))
    h = Masked(ops.reshape(ops.matmul(ops.reshape(x, (-1, 4)), w0), (-1, 20, 4)), m)
    y = masked.conv1d(h, g.variable("w", shape=(3, 4, 4)))
    rng = np.random.default_rng(6)
    fd = {"x": rng.normal(size=(4, 20, 4)).astype(np.float32), "mask": np.ones((4, 2), np.float32)}
    with pytest.raises(JavaError):
        g.run(fd, y.value)
    with pytest.raises(JavaError):
        g.gradients(fd, ops.sum(y.value), [w0])
    fd["mask"] = np.ones((4, 20), np.float32)  # consistent: runs
    assert g.run(fd, y.value).shape == (4, 20, 4)


def test_conv1d_validates_arguments():
    g = Graph()
    x = g.placeholder("x", ("batch", "time", C))
    m = masked.mask_placeholder(g, "mask")
    w = g.variable("w", shape=(3, C, 2))
    with pytest.raises(ValueError, match="'same' or 'causal'"):
        masked.conv1d(Masked(x, m), w, padding="valid")
    with pytest.raises(ValueError, match="kernel expects 2"):
        masked.conv1d(Masked(x, m), g.variable("w2", shape=(3, 2, 2)))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="dilation must be an int >= 1"):
            masked.conv1d(Masked(x, m), w, dilation=bad)
    with pytest.raises(masked.MaskError, match="needs a Masked value"):
        masked.conv1d(x, w)
    # a kernel or bias of another dtype is refused while building (the library op would read a float64 bias
    # as float32 words), at every dilation
    w64 = g.variable("w64", shape=(3, C, 2), dtype=np.float64)
    b64 = g.variable("b64", np.ones(2), dtype=np.float64)
    for d in (1, 2):
        with pytest.raises(TypeError, match="the kernel is float64 but the input is float32"):
            masked.conv1d(Masked(x, m), w64, dilation=d)
        with pytest.raises(TypeError, match="the bias is float64 but the input is float32"):
            masked.conv1d(Masked(x, m), w, b64, dilation=d)


@pytest.mark.parametrize("d", [1, 2])
def test_conv1d_activation_sees_rows(d):
    """The activation gets the [positions, out] rows at every dilation: axis -1 / 1 is the channels, never time."""
    g = Graph(seed=4, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", C))
    m = masked.mask_placeholder(g, "mask")
    seen = []

    def act(v):
        seen.append(v.shape)
        return ops.softmax(v, axis=1)

    rng = np.random.default_rng(5)
    w = g.variable("w", rng.normal(size=(3, C, 2)))
    y = masked.conv1d(Masked(x, m), w, dilation=d, activation=act)
    assert seen == [(None, 2)]
    xs, ms = _feeds("right", [5, 3], 5)
    got = g.run({"x": xs, "mask": ms}, y.value)
    ref = R.masked_conv1d(np.nan_to_num(xs), ms, g.get_value(w), None, d, "same")
    e = np.exp(ref - ref.max(-1, keepdims=True))
    np.testing.assert_allclose(got, np.where(ms[..., None] > 0, e / e.sum(-1, keepdims=True), 0.0), atol=1e-12)


# ============================================================================ causal attention
def _causal_graph(dtype, side, biases=False, seed=7, d=6, heads=2, d_out=5, allow_empty=True):
    g = Graph(seed=seed, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", d))
    masked.mask_placeholder(g, "mask", padding=side, allow_empty_rows=allow_empty)
    p = AttentionParams.create(g, "a", d, heads, d_out=d_out, biases=biases)
    g.set_value(p.wo, np.random.default_rng(seed).normal(size=p.wo.shape))
    if biases:  # AttentionParams' optional biases (bq/bk/bv [heads, head_size], bo [d_out]), non-zero
        rng = np.random.default_rng(seed + 1)
        for b in (p.bq, p.bk, p.bv, p.bo):
            g.set_value(b, rng.normal(size=b.shape))
    return g, x, p


def _np_params(g, p):
    w = [g.get_value(v) for v in (p.wq, p.wk, p.wv, p.wo)]
    b = tuple(g.get_value(getattr(p, a)) if getattr(p, a, None) is not None else None for a in ("bq", "bk", "bv", "bo"))
    return w, b


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_causal_attention_matches_reference(dtype, tol, side, biases):
    g, x, p = _causal_graph(dtype, side, biases)
    out, w = masked.multi_head_attention(Masked(x, g["mask"]), p, causal=True, return_weights=True)
    xs, ms = _feeds(side, [5, 3, 1, 0], 5, d=6)
    o, wt = g.run({"x": xs, "mask": ms}, [out.value, w])
    W, B = _np_params(g, p)
    ro, rw = R.causal_attention(np.nan_to_num(xs), ms, *W, biases=B)
    np.testing.assert_allclose(o, ro, atol=tol)
    np.testing.assert_allclose(wt, rw, atol=tol)
    # [batch, heads, query, key]: valid queries' rows sum to 1; later keys, padded keys and queries get 0
    valid = ms > 0
    np.testing.assert_allclose(wt.sum(-1).transpose(0, 2, 1)[valid], 1.0, atol=tol)
    np.testing.assert_array_equal(np.triu(wt, 1), 0.0)
    np.testing.assert_array_equal(wt.transpose(0, 3, 1, 2)[~valid], 0.0)
    np.testing.assert_array_equal(wt.transpose(0, 2, 1, 3)[~valid], 0.0)
    np.testing.assert_array_equal(o[~valid], 0.0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_attention_gradients_match_finite_differences(side):
    """float64, left padding: padded queries have no allowed key; without the row shift before the softmax,
    M2.1's float64 softmax returns NaN there and the gradients become NaN."""
    g, x, p = _causal_graph(np.float64, side, biases=True)
    out = masked.multi_head_attention(Masked(x, g["mask"]), p, causal=True)
    rng = np.random.default_rng(8)
    c = rng.normal(size=(3, 5, 5))
    loss = ops.sum(ops.multiply(out.value, g.constant("c", c)))
    xs, ms = _feeds(side, [5, 3, 1], 5, d=6)
    grads = g.gradients({"x": xs, "mask": ms}, loss, [x, p.wq, p.wk, p.wv, p.wo, p.bq, p.bo])
    for v in grads.values():
        assert np.isfinite(v).all()
    np.testing.assert_array_equal(grads["x"][ms == 0], 0.0)
    x0 = np.nan_to_num(xs)
    W, B = _np_params(g, p)

    def f(xx=x0, k=None, a=None):
        ww = [*W[:k], a, *W[k + 1 :]] if k is not None and k < 4 else W
        bb = B if k is None or k < 4 else tuple(a if i == k - 4 else v for i, v in enumerate(B))
        return float((R.causal_attention(xx, ms, *ww, biases=bb)[0] * c).sum())

    np.testing.assert_allclose(grads["x"], _fd(lambda a: f(xx=a), x0), atol=1e-8)
    for k, v in enumerate((p.wq, p.wk, p.wv, p.wo, p.bq, None, None, p.bo)):
        if v is None:
            continue
        val = W[k] if k < 4 else B[k - 4]
        num = _fd(lambda a, k=k: f(k=k, a=a), val)
        np.testing.assert_allclose(grads[v.name], num, atol=1e-8, err_msg=v.name)
        assert np.abs(num).max() > 1e-4 or v.name == "bk"


def test_causal_attention_fully_padded_row_and_refusals():
    g, x, p = _causal_graph(np.float64, "left")
    out = masked.multi_head_attention(Masked(x, g["mask"]), p, causal=True)
    loss = ops.sum(ops.square(out.value))
    xs, ms = _feeds("left", [0, 2], 4, d=6)
    np.testing.assert_array_equal(g.run({"x": xs, "mask": ms}, out.value)[0], 0.0)
    grads = g.gradients({"x": xs, "mask": ms}, loss, [x, p.wq])
    assert all(np.isfinite(v).all() for v in grads.values())
    np.testing.assert_array_equal(grads["x"][0], 0.0)
    ctx = Masked(g.placeholder("c", ("batch", "tk", 6)), masked.mask_placeholder(g, "mc", ("batch", "tk")))
    with pytest.raises(ValueError, match="causal=True is self-attention"):
        masked.multi_head_attention(Masked(x, g["mask"]), p, ctx, causal=True)


def test_m21_fused_attention_takes_no_per_query_mask():
    """Why causal attention is built from plain ops: DL4J's fused op refuses a [B, Tq, Tk] mask."""
    g, x, p = _causal_graph(np.float32, "right")
    xcf = ops.transpose(x, (0, 2, 1))
    m3 = g.placeholder("m3", ("batch", "time", "time"))
    raw = g.op(
        "mha", None,
        lambda n: _jvm.bridge().attention(g.sd, n, xcf.j, xcf.j, xcf.j, p.wq.j, p.wk.j, p.wv.j, p.wo.j, m3.j, True,
                                          False)[0],
        (None, 5, None), np.float32, (xcf, m3),
    )  # fmt: skip
    xs = np.ones((2, 4, 6), np.float32)
    causal = np.tril(np.ones((4, 4), np.float32))[None].repeat(2, 0)
    with pytest.raises(_jvm.JavaError, match="reshape|shape"):
        g.run({"x": xs, "m3": causal}, raw)


def test_m21_float64_softmax_is_nan_for_rows_far_below_zero():
    """M2.1's float64 softmax op over the last axis of a multi-row array does not subtract the row maximum when
    every entry is negative: rows below about -745 give NaN (float32 and shifted rows are right). ops.softmax
    shifts first, so it is right for both dtypes."""
    from samediff_py import _jvm

    rows = np.array([[-800.0, -801.0, -802.0], [1.0, 2.0, 3.0]])
    for dtype in (np.float64, np.float32):
        g = Graph(dtype=dtype)
        s = g.placeholder("s", (2, 3))
        stock = ops._unary("softmax", s, lambda n, g=g, s=s: _jvm.bridge().softmax(g.sd, n, s.j, 1), None)
        got = g.run({"s": rows}, [stock, ops.softmax(s, -1)])
        np.testing.assert_allclose(got[1], R.softmax(rows), atol=1e-6)
        if dtype == np.float64:
            assert np.isnan(got[0][0]).all(), "M2.1's float64 softmax now handles very negative rows"
        else:
            np.testing.assert_allclose(got[0], R.softmax(rows), atol=1e-6)


# ============================================================================ positions and cumsum
@st.composite
def _masks(draw):
    t = draw(st.integers(1, 7))
    rows = draw(st.lists(st.lists(st.integers(0, 1), min_size=t, max_size=t), min_size=1, max_size=4))
    return np.array(rows, np.float32)


@HYP
@given(_masks())
def test_position_ids_match_numpy(m):
    g = _pos_graph()
    got = g.run({"mask": m}, g["pos"])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, padding.positions_from_mask(m))


_POS: dict[str, Graph] = {}


def _pos_graph() -> Graph:
    if "g" not in _POS:
        g = Graph()
        masked.position_ids(masked.mask_placeholder(g, "mask", padding="any", allow_empty_rows=True), name="pos")
        _POS["g"] = g
    return _POS["g"]


@pytest.mark.parametrize("exclusive, reverse", [(False, False), (True, False), (False, True), (True, True)])
def test_cumsum_matches_numpy_and_finite_differences(exclusive, reverse):
    """The gradient is samediff_py's FixedCumSum (M2.1's sums over a wrong axis: test_recurrent.py)."""
    g = Graph(seed=9, dtype=np.float64)
    x = g.placeholder("x", ("b", "t"))
    w = g.variable("w", np.arange(1.0, 6.0))
    y = ops.cumsum(ops.multiply(x, w), 1, exclusive=exclusive, reverse=reverse)
    rng = np.random.default_rng(10)
    c = rng.normal(size=(3, 5))
    loss = ops.sum(ops.multiply(y, g.constant("c", c)))
    xs = rng.normal(size=(3, 5))

    def ref(a):
        v = a * np.arange(1.0, 6.0)
        v = v[:, ::-1] if reverse else v
        s = np.cumsum(v, 1) - (v if exclusive else 0.0)
        return s[:, ::-1] if reverse else s

    np.testing.assert_allclose(g.run({"x": xs}, y), ref(xs), atol=1e-12)
    grads = g.gradients({"x": xs}, loss, [x, w])
    np.testing.assert_allclose(grads["x"], _fd(lambda a: float((ref(a) * c).sum()), xs), atol=1e-8)


def _encoder_graph(positions, side, seed=11):
    g = Graph(seed=seed)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0, padding=side)
    enc = Encoder(g, EncoderConfig(vocab=9, d_model=8, heads=2, d_ff=16, layers=1, max_len=16, positions=positions))
    return g, enc(tokens, mask)


def test_encoder_positions_from_mask_make_left_padding_invisible():
    toks, mask = padding.pad_batch([[3, 4, 5, 6], [7, 8]], pad_id=0, side="left")
    g, logits = _encoder_graph("from_mask", "left")
    assert_pad_invariant(g, {"tokens": toks, "mask": mask}, [logits], ks=(1, 3), atol=1e-5, pad_values={"tokens": 0})
    # right padding: from_mask positions equal absolute ones
    rt, rm = padding.pad_batch([[3, 4, 5, 6], [7, 8]], pad_id=0)
    ga, la = _encoder_graph("absolute", "right")
    gm, lm = _encoder_graph("from_mask", "right")
    a, b = ga.run({"tokens": rt, "mask": rm}, la.value), gm.run({"tokens": rt, "mask": rm}, lm.value)
    np.testing.assert_allclose(a[rm > 0], b[rm > 0], atol=1e-6)
    with pytest.raises(ValueError, match="positions must be one of"):
        EncoderConfig(vocab=9, positions="relative")


# ============================================================================ a causal language model
VOCAB, PAD = 8, 0


def _lm(side, seed=12, d=16):
    """Embeddings + positions from the mask + causal attention + a dense head; masked cross-entropy."""
    g = Graph(seed=seed)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    targets = g.placeholder("targets", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=PAD, padding=side)
    emb = g.variable("emb", shape=(VOCAB, d), init="normal", scale=0.5)
    pos = g.variable("pos", shape=(32, d), init="normal", scale=0.1)
    x = Masked(ops.add(ops.embedding(tokens, emb), ops.gather(pos, masked.position_ids(mask))), mask)
    a = masked.multi_head_attention(x, AttentionParams.create(g, "attn", d, 2), causal=True)
    h = masked.layer_norm(x + a, g.variable("ln_g", np.ones(d)), g.variable("ln_b", np.zeros(d)))
    logits = masked.dense(h, g.variable("out_w", shape=(d, VOCAB)), g.variable("out_b", np.zeros(VOCAB)))
    loss = masked.softmax_cross_entropy(logits, targets)
    return g, logits, loss


def _lm_batch(rng, side, n=6):
    """Counting sequences (next = current + 1, wrapping in 1..7) of random lengths, shifted for next-token
    prediction with their mask."""
    seqs = []
    for _ in range(n):
        start, length = rng.integers(1, VOCAB), rng.integers(2, 9)
        seqs.append([(start - 1 + i) % (VOCAB - 1) + 1 for i in range(length)])
    toks, mask = padding.pad_batch(seqs, pad_id=PAD, side=side)
    inp, inp_mask, tgt, _ = padding.shift_targets(toks, mask)
    inp = np.where(inp_mask > 0, inp, PAD).astype(np.int32)
    return {"tokens": inp, "mask": inp_mask, "targets": tgt.astype(np.int32)}


@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_lm_trains_on_shifted_targets_and_is_pad_invariant(side):
    g, logits, loss = _lm(side)
    rng = np.random.default_rng(13)
    t = train.Trainer(g, loss, "adam", lr=0.05)
    first = t.step(_lm_batch(rng, side))
    for _ in range(25):
        last = t.step(_lm_batch(rng, side))
    assert last < 0.5 * first, (first, last)
    feeds = _lm_batch(np.random.default_rng(14), side)
    rep = assert_pad_invariant(g, feeds, [logits], loss=loss, ks=(1, 5), atol=1e-4, pad_values={"tokens": PAD})
    assert rep.max_drift("output") < 1e-4
    assert ("loss", "append", 5, loss.name) in rep.drift and ("output", "alone", 5, logits.value.name) in rep.drift


# ============================================================================ fast zeroing and the conv form
@pytest.mark.parametrize("fill", [0.0, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 4), (3, 5, 2, 3)])
def test_mask_rows_equals_select(shape, dtype, fill):
    """masked.rows.mask_rows (a row gather) gives exactly libnd4j's elementwise select's values and gradients
    (and numpy's values), NaN/inf at padding included, for any trailing shape and filler (max_pool fills
    with -inf); a fully padded row gives the filler."""
    from samediff_py.masked.rows import mask_rows, select_where

    g = Graph(seed=15, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", *shape[2:]))
    m = masked.mask_placeholder(g, "mask", padding="any", allow_empty_rows=True)
    w = g.variable("w", np.random.default_rng(16).normal(size=shape[2:] or ()))
    h = ops.multiply(x, w)
    a, b = mask_rows(h, m, fill=fill), select_where(h, m, fill)
    rng = np.random.default_rng(17)
    c = g.constant("c", rng.normal(size=shape))
    la, lb = ops.sum(ops.multiply(a, c)), ops.sum(ops.multiply(b, c))
    ms = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype)
    xs = rng.normal(size=shape)
    xs[0, 1], xs[0, 4] = np.nan, np.inf
    xs[1] = -np.inf
    fd = {"x": xs, "mask": ms}
    va, vb = g.run(fd, [a, b])
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(va[ms == 0], fill)
    np.testing.assert_allclose(va[ms == 1], (xs * g.get_value("w"))[ms == 1], rtol=1e-6)
    xs = np.nan_to_num(xs, posinf=1e30, neginf=-1e30)  # gradients w.r.t. w need finite x at padding
    ga, gb = g.gradients({"x": xs, "mask": ms}, la, [x, w]), g.gradients({"x": xs, "mask": ms}, lb, [x, w])
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, known", [((3, 5), True), ((3, 5, 4), True), ((3, 5, 2, 3), True), ((3, 5, 4), False)])
def test_zero_padding_is_exact_with_an_exact_gradient(shape, known, dtype):
    """masked.rows.zero_padding (divide_no_nan by the mask, FixedOps.ZeroPadded): valid values bit for bit
    (NaN, inf, -0.0 included), exactly +0.0 at padding whatever it held, a fully padded row all zeros; the
    gradient is the upstream one at valid positions and exactly 0 at padded ones even where the upstream is
    NaN (x * mask would give NaN there); the same values and gradients as libnd4j's select (select_where)."""
    from samediff_py.masked.rows import select_where, zero_padding

    g = Graph(seed=15, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", *shape[2:]) if known else (None, None, None))
    m = masked.mask_placeholder(g, "mask", padding="any", allow_empty_rows=True)
    w = g.variable("w", np.ones(shape[2:] or ()))
    h = ops.multiply(x, w)  # x * 1: a trainable path for the gradient w.r.t. w
    z, s = zero_padding(h, m), select_where(h, m)
    assert len(_jvm.jclass("samediffpy.FixedOps").opClasses(g.sd, "divide_no_nan")) == 1
    rng = np.random.default_rng(17)
    ms = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype)
    xs = rng.normal(size=shape).astype(dtype)
    xs[0, 0], xs[0, 2], xs[2, 4] = np.nan, -np.inf, -0.0  # valid
    xs[0, 1], xs[0, 4], xs[1] = np.nan, np.inf, -0.0  # padded
    vz, vs = g.run({"x": xs, "mask": ms}, [z, s])
    assert vz.tobytes() == np.where(ms.reshape(ms.shape + (1,) * (len(shape) - 2)) > 0, xs, 0.0).astype(dtype).tobytes()
    np.testing.assert_array_equal(vz, vs)
    c = rng.normal(size=shape)
    c[ms == 0] = np.nan  # a NaN upstream gradient at every padded position
    loss = ops.sum(ops.multiply(z, g.constant("c", c)))
    xf = np.nan_to_num(xs, posinf=3.0, neginf=-3.0)
    grads = g.gradients({"x": xf, "mask": ms}, loss, [x, w])
    want = np.where(ms.reshape(ms.shape + (1,) * (len(shape) - 2)) > 0, c, 0.0)
    np.testing.assert_array_equal(grads["x"], want.astype(dtype))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(grads["w"], (want * xf).sum((0, 1)), rtol=tol, atol=tol)
    cs = np.nan_to_num(c)  # the select's gradient on a finite upstream: the same
    ls_, lz = (ops.sum(ops.multiply(v, g.constant(f"c{i}", cs))) for i, v in enumerate((s, z)))
    gs, gz = g.gradients({"x": xf, "mask": ms}, ls_, [x, w]), g.gradients({"x": xf, "mask": ms}, lz, [x, w])
    for k in gs:
        np.testing.assert_array_equal(gz[k], gs[k], err_msg=k)


def test_divide_no_nan_keeps_its_own_gradient_unless_it_is_a_mask_zeroing():
    """The registered class changes the gradient only of the masks' zeroing (the marker argument): a plain
    divide_no_nan (DL4J's class, no marker) keeps M2.1's gradient, which reaches a trainable divisor
    (d(x / v) / dv = -x / v^2; a divisor of the value's shape: M2.1's is not right for a broadcast one)."""
    plain = _jvm.jclass("org.nd4j.linalg.api.ops.custom.DivideNoNan")
    g = Graph(seed=1, dtype=np.float64)
    x = g.placeholder("x", (2, 3, 2))
    v = g.variable("v", np.full((2, 3, 2), 2.0))
    out = g.op("div", None, lambda n: g.sd.updateVariableNameAndReference(plain(g.sd, x.j, v.j).outputVariable(), n),
               x.shape, x.dtype, (x, v))  # fmt: skip
    loss = ops.sum(out)
    xs = np.arange(12.0).reshape(2, 3, 2)
    grads = g.gradients({"x": xs}, loss, [x, v])
    np.testing.assert_allclose(grads["x"], np.full_like(xs, 0.5))
    np.testing.assert_allclose(grads["v"], -xs / 4.0)


def test_a_mask_derived_from_a_trainable_value_gets_no_gradient_and_its_value_an_exact_one():
    """A mask computed from something with a trainable variable upstream (through greater and cast: no
    derivative) still gets the exact zeroing gradient: M2.1's division gradient gave inf at every padded
    position, and inf in the variables' gradients (found by review)."""
    g = Graph(seed=0, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", 3))
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    w, v = g.variable("w", np.ones(3)), g.variable("v", np.array(1.0))
    derived = ops.cast(ops.greater(ops.add(m, ops.multiply(ops.sum(v), 0.0)), 0.5), np.float64)
    loss = ops.sum(masked.mean_pool(Masked(ops.multiply(x, w), derived)))
    xs, ms = np.ones((2, 3, 3)), np.array([[1, 1, 0], [1, 0, 0]], np.float64)
    grads = g.gradients({"x": xs, "mask": ms}, loss, [w, x])
    np.testing.assert_array_equal(grads["w"], [2.0, 2.0, 2.0])  # the mean over each row's valid steps, twice
    np.testing.assert_array_equal(grads["x"], (ms / ms.sum(1, keepdims=True))[..., None] * np.ones(3))


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("x_shape, mask_shape", [((4, 1, 3), (1, 4)), ((3, 2, 3), (2, 3))])
def test_a_filler_select_refuses_a_mask_of_the_same_size_but_other_dims(x_shape, mask_shape, known):
    """The selects with a filler other than 0 (a row gather where the feature dims are known, libnd4j's select
    where not; max_pool's -inf) check the mask's dims exactly too: they compared batch x time only, and read
    rows in another order or returned the mask's shape (found by a second review)."""
    from samediff_py.masked.value import select_valid

    g = Graph(seed=0)
    x = g.placeholder("x", (None, None, 3) if known else (None, None, None))
    m = masked.mask_placeholder(g, "mask", padding="any", allow_empty_rows=True)
    outs = [select_valid(x, m, fill=-1.0), masked.max_pool(Masked.derived(x, m))]
    xs = np.arange(np.prod(x_shape), dtype=np.float32).reshape(x_shape)
    for out in outs:
        with pytest.raises(JavaError, match="mask_must_match_value"):
            g.run({"x": xs, "mask": np.ones(mask_shape, np.float32)}, out)
    ok = np.ones(x_shape[:2], np.float32)
    ok[-1, -1] = 0
    got, pooled = g.run({"x": xs, "mask": ok}, outs)
    np.testing.assert_array_equal(got, np.where(ok[..., None] > 0, xs, -1.0))
    want = np.where(ok[..., None] > 0, xs, -np.inf).max(1)
    np.testing.assert_array_equal(pooled, np.where(ok.any(1)[:, None], want, 0.0))  # a fully padded row gives 0


@pytest.mark.parametrize("x_shape, mask_shape", [((4, 1, 3), (1, 4)), ((3, 2, 3), (2, 3))])
def test_a_mask_of_the_same_size_but_other_dims_is_refused(x_shape, mask_shape):
    """A mask whose batch x time equals the value's but whose dims differ (batch and time swapped, or a batch-1
    mask for a time-1 value) fails, naming the op, instead of being read in another order or broadcast over the
    conv's output (found by review: a [1, 4] mask against a [4, 1, 3] value gave a [4, 4, 2] output)."""
    g = Graph(seed=0)
    x = g.placeholder("x", (None, None, None))
    m = masked.mask_placeholder(g, "mask", padding="any", allow_empty_rows=True)
    y = masked.conv1d(Masked(x, m), g.variable("w", np.ones((1, 3, 2), np.float32)))
    ms = np.ones(mask_shape, np.float32)
    ms.flat[-1] = 0
    with pytest.raises(JavaError, match="mask_must_match_value") as err:
        g.run({"x": np.ones(x_shape, np.float32), "mask": ms}, y.value)
    assert "hint: a mask's [batch, time] must equal the first two dims" in str(err.value)
    ok = np.ones(x_shape[:2], np.float32)
    assert g.run({"x": np.ones(x_shape, np.float32), "mask": ok}, y.value).shape == (*x_shape[:2], 2)


@pytest.mark.parametrize("pad, k, d", [("same", 3, 1), ("same", 4, 2), ("causal", 2, 3)])
def test_masked_conv1d_equals_dl4j_conv1d_on_full_rows(pad, k, d):
    """masked.conv1d computes DL4J's conv1d (SAME / CAUSAL): the library op itself at dilation 1, its taps side
    by side and one matmul at dilation > 1. On rows without padding, the library op's values and gradients."""
    seq = _jvm.jclass("samediffpy.Sequences")
    g = Graph(seed=18, dtype=np.float64)
    x = g.placeholder("x", ("batch", "time", C))
    m = masked.mask_placeholder(g, "mask")
    rng = np.random.default_rng(19)
    w, b = g.variable("w", rng.normal(size=(k, C, 2))), g.variable("b", rng.normal(size=2))
    mine = masked.conv1d(Masked(x, m), w, b, dilation=d, padding=pad).value
    lib = g.op("lib", None, lambda n: seq.conv1d(g.sd, n, x.j, w.j, b.j, k, d, {"same": 1, "causal": 2}[pad]),
               (None, None, 2), np.float64, (x, w, b))  # fmt: skip
    fd = {"x": rng.normal(size=(2, 7, C)), "mask": np.ones((2, 7))}
    va, vb = g.run(fd, [mine, lib])
    np.testing.assert_allclose(va, vb, atol=1e-13)
    c = g.constant("c", rng.normal(size=(2, 7, 2)))
    ga = g.gradients(fd, ops.sum(ops.multiply(mine, c)), [x, w, b])
    gb = g.gradients(fd, ops.sum(ops.multiply(lib, c)), [x, w, b])
    for n in ga:
        np.testing.assert_allclose(ga[n], gb[n], atol=1e-12, err_msg=n)
