"""Issue 3: pad invariance of every masked op and of a small encoder, checked with
samediff_py.testing; and proof that the checker catches each classic mistake of samediff_py.mistakes.

Pad-invariant means: appending k padded steps (mask 0) or refilling padded steps with other values changes
no output at valid positions, not the loss, no parameter gradient, and puts exactly zero gradient on padded
inputs."""

from __future__ import annotations

import numpy as np
import pytest

from samediff_py import Graph, masked, mistakes, ops, testing
from samediff_py.masked import AttentionParams, Masked
from samediff_py.models import Block, Encoder, EncoderConfig
from samediff_py.testing import PadInvarianceError, assert_pad_invariant, check_pad_invariance

D, V = 4, 5
KS = (1, 3, 40)


def _base(dtype=np.float32, seed=0):
    """x [batch, time, D] float placeholder, its mask, labels, and a first per-position layer."""
    g = Graph(seed=seed, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", D))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask")
    h = Masked(x, m) @ g.variable("w_in", shape=(D, D))  # linear: huge filler reaches the op under test
    return g, x, labels, h


def _feeds(seed=0, lengths=(6, 4, 2), t=6):
    rng = np.random.default_rng(seed)
    mask = masked.mask_from_lengths(list(lengths), t)
    x = rng.normal(size=(len(lengths), t, D)).astype(np.float32)
    labels = rng.integers(0, V, (len(lengths), t)).astype(np.int32)
    labels[0, 1] = -1
    return {"x": x, "labels": labels, "mask": mask}


def _square_sum(v):
    return ops.sum(ops.square(v))


def _pool(fn):
    def build(g, h, labels):
        out = fn(h)
        return [out], _square_sum(out)

    return build


def _attention(g, h, labels):
    a = masked.multi_head_attention(h, AttentionParams.create(g, "attn", D, 2))
    return [a], _square_sum(masked.mean_pool(a))


def _dense_ln(g, h, labels):
    f = masked.dense(h, g.variable("w1", shape=(D, 8)), g.variable("b1", np.full(8, 0.1)), ops.relu)
    f = masked.layer_norm(f, g.variable("gain", np.ones(8)), g.variable("bias", np.zeros(8)))
    f = masked.dense(f, g.variable("w2", shape=(8, D)))
    f = masked.layer_norm(f, g.variable("gain2", np.ones(D)), g.variable("bias2", np.zeros(D)), eps=0.0)
    return [f], _square_sum(masked.sum_pool(f))


def _logits(g, h):
    return masked.dense(h, g.variable("w_out", shape=(D, V)), g.variable("b_out", np.zeros(V)))


def _xent(g, h, labels):
    z = _logits(g, h)
    loss = masked.softmax_cross_entropy(z, labels)
    return [z, loss], loss


def _accuracy(g, h, labels):
    z = _logits(g, h)
    return [masked.accuracy(z, labels), masked.top_k_accuracy(z, labels, 2)], masked.softmax_cross_entropy(z, labels)


OPS = {
    "mean_pool": _pool(masked.mean_pool),
    "sum_pool": _pool(masked.sum_pool),
    "max_pool": _pool(masked.max_pool),
    "attention": _attention,
    "dense_layer_norm": _dense_ln,
    "cross_entropy": _xent,
    "accuracy": _accuracy,
}


def _assert_all_checks_ran(rep, outputs, loss_name, ks=KS, fills=testing.FILLS):
    """The report must hold a comparison for every k, every filler (NaN, inf, 1e30 included), every output,
    the loss and the input; and every row alone for the outputs."""
    names = {o.value.name if isinstance(o, Masked) else o.name for o in outputs}
    for mode, k in [("append", k) for k in ks] + [(f"fill:{f}", 0) for f in fills]:
        for n in names:
            assert ("output", mode, k, n) in rep.drift
        assert ("loss", mode, k, loss_name) in rep.drift
        assert ("input-grad", mode, k, "x") in rep.drift
    for o in outputs:
        if isinstance(o, Masked):
            assert ("output", "alone", 0, o.value.name) in rep.drift
    assert any(c == "grad" for c, *_ in rep.drift)


@pytest.mark.parametrize("op", list(OPS))
def test_masked_op_is_pad_invariant(op):
    """Every filler at padded inputs (random, NaN, +-inf, +-1e30), appended pads, and each row alone."""
    g, x, labels, h = _base()
    outputs, loss = OPS[op](g, h, labels)
    rep = assert_pad_invariant(g, _feeds(), outputs, loss=loss, grad_inputs=[x], ks=KS)
    _assert_all_checks_ran(rep, outputs, loss.name)
    assert rep.max_drift("input-grad") == 0.0
    assert rep.max_drift() <= 1e-5


@pytest.mark.parametrize("op", ["mean_pool", "max_pool", "attention", "cross_entropy"])
def test_masked_op_is_pad_invariant_float64(op):
    g, x, labels, h = _base(np.float64)
    outputs, loss = OPS[op](g, h, labels)
    rep = assert_pad_invariant(g, _feeds(1), outputs, loss=loss, grad_inputs=[x], ks=(2, 40), fill="huge",
                               atol=1e-10, rtol=1e-10)  # fmt: skip
    assert rep.max_drift() <= 1e-10


# ------------------------------------------------------------------------------------------- encoder
def _token_feeds(seed=0, t=10):
    rng = np.random.default_rng(seed)
    tok = rng.integers(1, 12, (3, t)).astype(np.int32)
    m = masked.mask_from_lengths([t, 7, 3], t)
    tok[m == 0] = 0
    lab = np.where(rng.random((3, t)) < 0.4, tok, -1).astype(np.int32)
    return {"tokens": tok, "labels": lab, "mask": m}


@pytest.mark.parametrize("layers, fill", [(1, "huge"), (2, "random")])
def test_encoder_is_pad_invariant(layers, fill):
    g = Graph(seed=layers)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0)
    enc = Encoder(g, EncoderConfig(vocab=12, d_model=16, heads=2, d_ff=32, layers=layers, max_len=64))
    logits = enc(tokens, mask)
    loss = masked.softmax_cross_entropy(logits, labels)
    acc = masked.accuracy(logits, labels)
    # padded token slots get random real ids (not only the pad id): the mask alone must hide them
    rep = assert_pad_invariant(g, _token_feeds(layers), [logits, acc], loss=loss, ks=KS, fill=fill, atol=1e-4)
    assert ("grad", "append", 40, "encoder/tok_emb") in rep.drift
    assert ("loss", f"fill:{fill}", 0, loss.name) in rep.drift  # token-only feeds still get one refill run
    assert rep.max_drift("output") < 1e-4


@pytest.mark.parametrize("fill", ["nan", 1e30])
def test_encoder_blocks_input_gradient_is_zero_at_padding(fill):
    g, x, labels, h = _base(seed=3)
    cfg = EncoderConfig(vocab=V, d_model=D, heads=2, d_ff=8, layers=2)
    for i in range(cfg.layers):
        h = Block.create(g, f"block{i}", cfg)(h)
    outputs, loss = _xent(g, h, labels)
    rep = assert_pad_invariant(g, _feeds(2), outputs, loss=loss, grad_inputs=[x], ks=KS, fill=fill, atol=1e-4)
    _assert_all_checks_ran(rep, outputs, loss.name, fills=(fill,))
    assert rep.max_drift("input-grad") == 0.0


# ------------------------------------------------------------------------------------------- mistakes
def _mistake(kind):
    """A small graph with one classic mistake; returns (graph, outputs, loss, x)."""
    g, x, labels, h = _base(seed=4)
    p = AttentionParams.create(g, "attn", D, 2)
    if kind in ("inverted_mask", "no_mask", "softmax_over_queries"):
        a = getattr(mistakes, kind)(h, p)
        return g, [a], _square_sum(masked.mean_pool(a)), x
    if kind == "norm_over_time":
        a = mistakes.norm_over_time(h, g.variable("gain", np.ones(D)), g.variable("bias", np.zeros(D)))
        return g, [a], _square_sum(masked.mean_pool(a)), x
    if kind == "unmasked_mean":
        pooled = mistakes.unmasked_mean(h)
        return g, [pooled], _square_sum(pooled), x
    if kind == "loss_over_padding":
        z = _logits(g, h)
        return g, [z], mistakes.loss_over_padding(z, labels), x
    raise AssertionError(kind)


# which checks each mistake must trip (at least). No mistake can move the gradient into padded INPUTS:
# Masked(x, mask) selects valid positions on entry, so padding reaches the mistakes as exact zeros, and
# every mistake shows in outputs, loss and parameter gradients instead (test_input_gradient_... below).
EXPECTED = {
    "inverted_mask": {"output", "loss", "grad"},
    "no_mask": {"output", "loss", "grad"},
    "softmax_over_queries": {"output", "loss", "grad"},
    "norm_over_time": {"output", "loss", "grad"},
    "unmasked_mean": {"output", "loss", "grad"},
    "loss_over_padding": {"loss", "grad"},
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_classic_mistake_is_detected(kind):
    g, outputs, loss, x = _mistake(kind)
    rep = check_pad_invariance(g, _feeds(), outputs, loss=loss, grad_inputs=[x], ks=(1, 3))
    assert not rep.ok
    checks = {f.check for f in rep.findings}
    assert EXPECTED[kind] <= checks, (kind, checks)
    if kind == "loss_over_padding":  # its logits are fine: only the loss counts padding
        assert "output" not in checks
    assert rep.max_drift("input-grad") == 0.0  # the entry select: padded input values never matter
    # far outside the tolerance, not a rounding effect (the scenario: 3-5 orders of magnitude)
    worst = max(f.max_abs_diff for f in rep.findings if f.check == "output" or kind == "loss_over_padding")
    assert worst > 1e-3


def test_pad_invariance_error_names_output_position_and_amount():
    g, outputs, loss, x = _mistake("no_mask")
    feeds = _feeds()
    with pytest.raises(PadInvarianceError) as info:
        assert_pad_invariant(g, feeds, outputs, ks=(3,), modes=("append",))
    rep = info.value.report
    msg = str(info.value)
    assert isinstance(info.value, AssertionError) and not rep.ok
    f = rep.findings[0]
    assert f.check == "output" and f.mode == "append" and f.k == 3
    assert f.output == outputs[0].value.name and repr(f.output) in msg
    b, t, _ = f.position
    assert feeds["mask"][b, t] == 1  # reported at a valid position
    assert str(f.position) in msg and f"max |diff| {f.max_abs_diff:.3g}" in msg
    assert f"expected {f.expected:.6g}, got {f.got:.6g}" in msg
    assert f.max_abs_diff == pytest.approx(abs(f.expected - f.got))
    assert f.max_abs_diff > 1e-3 and msg.startswith("NOT pad-invariant")


# ------------------------------------------------------------------------------- the checker's own power
def _raw_graph(build):
    """A graph whose output is ``build(x placeholder, mask placeholder)`` on the RAW padded input (bypassing
    Masked, as a user of plain ops would), plus a Masked wrapper so outputs are compared at valid positions."""
    g = Graph(seed=0)
    x = g.placeholder("x", ("batch", "time", D))
    m = masked.mask_placeholder(g, "mask")
    return g, build(g, x, m)


def _x_feeds(seed=0, lengths=(6, 4, 2)):
    fd = _feeds(seed, lengths)
    return {"x": fd["x"], "mask": fd["mask"]}


def test_alone_mode_catches_an_effect_already_present_with_one_pad():
    """max over time of x * mask: padding contributes 0 to the max. With all-negative valid values a padded
    row's max is 0 whatever the number of pads, so padded runs agree with each other (append/fill pass); only
    the row run alone, unpadded, shows the error."""

    def build(g, x, m):
        return ops.max(ops.multiply(x, ops.expand_dims(m, -1)), 1)  # [batch, D]: the mistake

    g, out = _raw_graph(build)
    caught = 0
    for seed in range(10):
        fd = _x_feeds(seed, lengths=(5, 4, 2))  # every row padded
        fd["x"] = -np.abs(fd["x"]) - 0.5  # valid values all negative
        padded_only = check_pad_invariance(g, fd, [out], modes=("append", "fill"), fills=("random",))
        assert padded_only.ok  # invisible to padded-vs-padded comparisons
        alone = check_pad_invariance(g, fd, [out], modes=("alone",))
        caught += not alone.ok
        assert {f.mode for f in alone.findings} <= {"alone"}
    assert caught == 10


def test_fill_mode_catches_a_graph_that_reads_a_padded_position():
    def build(g, x, m):
        return ops.sum(x[:, 3], -1, keepdims=True)  # position 3 is padding in rows 1 and 2 of _feeds()

    g, out = _raw_graph(build)
    rep = check_pad_invariance(g, _x_feeds(), [out], modes=("fill",), fills=("random",))
    assert not rep.ok and {f.mode for f in rep.findings} == {"fill:random"}


def _multiplied_mask(g, x, m):
    """Sum over time of x * mask: right for every finite filler, but NaN * 0 and inf * 0 are NaN."""
    return ops.sum(ops.multiply(x, ops.expand_dims(m, -1)), 1)


def _additive_mask(g, x, m):
    """Max over time of x + (mask - 1) * 1e9: pushes normal filler below every valid value, not 1e30."""
    return ops.max(ops.add(x, ops.multiply(ops.subtract(ops.expand_dims(m, -1), 1.0), 1e9)), 1)


@pytest.mark.parametrize(
    "filler, build", [("nan", _multiplied_mask), ("inf", _multiplied_mask), (1e30, _additive_mask)]
)
def test_non_finite_and_huge_filler_is_used_and_caught_when_it_leaks(filler, build):
    """Two classic ways to mask by arithmetic: each is right for ordinary filler and wrong for one of NaN,
    inf, 1e30. The checker must feed that filler and report the damage at valid outputs."""
    g, out = _raw_graph(build)
    assert check_pad_invariance(g, _x_feeds(), [out], modes=("fill",), fills=("random",)).ok
    rep = check_pad_invariance(g, _x_feeds(), [out], modes=("fill",), fills=(filler,))
    assert not rep.ok and rep.max_drift() > 1e20


def test_left_padding_prepends_pads_and_compares_rows_alone():
    g = Graph(seed=0)
    x = g.placeholder("x", ("batch", "time", D))
    m = masked.mask_placeholder(g, "mask", padding="left")
    h = masked.dense(Masked(x, m), g.variable("w", shape=(D, D)))
    outs = [h, masked.mean_pool(h), masked.max_pool(h)]
    rng = np.random.default_rng(0)
    fd = {
        "x": rng.normal(size=(3, 6, D)).astype(np.float32),
        "mask": masked.mask_from_lengths([6, 4, 2], 6, side="left"),
    }
    rep = assert_pad_invariant(g, fd, outs, ks=(1, 5))
    assert rep.max_drift(mode="alone") <= 1e-6 and ("output", "append", 5, h.value.name) in rep.drift
    # reading the first time step (a pad in left-padded rows) is caught: prepended pads carry new filler there
    first = ops.sum(x[:, 0], -1, keepdims=True)
    bad = check_pad_invariance(g, fd, [first], modes=("append",), ks=(2,))
    assert not bad.ok
