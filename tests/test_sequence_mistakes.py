"""Issue 12: the classic padding mistakes of sequence layers (samediff_py.mistakes) are each caught by the
pad-invariance checker (samediff_py.testing), while the correct layer built from the same weights passes."""

from __future__ import annotations

import numpy as np
import pytest

from samediff_py import Graph, masked, mistakes, ops
from samediff_py.masked import AttentionParams, LSTMParams, Masked
from samediff_py.testing import assert_pad_invariant, check_pad_invariance

D = 4


def _graph(side, seed=0):
    g = Graph(seed=seed)
    x = g.placeholder("x", ("batch", "time", D))
    m = masked.mask_placeholder(g, "mask", padding=side)
    h = Masked(x, m) @ g.variable("w_in", shape=(D, D))
    return g, x, h


def _feeds(side, seed=0):
    rng = np.random.default_rng(seed)
    m = masked.mask_from_lengths([6, 4, 2], 6, side=side)
    return {"x": rng.normal(size=(3, 6, D)).astype(np.float32), "mask": m}


def _biased(g, p):
    """Trained-looking biases: with zero biases an LSTM maps zero inputs from a zero state to exactly zero, and
    running over (zeroed) padding would change only gradients, not outputs."""
    g.set_value(p.b, np.random.default_rng(1).normal(size=p.b.shape))
    return p


def _build(kind, side, wrong):
    """(graph, outputs, loss) for the mistake (``wrong``) or its fix, with the same weights."""
    g, x, h = _graph(side)
    if kind == "absolute_positions":
        table = g.variable("pos", shape=(16, D), init="normal")
        if wrong:
            y = mistakes.absolute_positions(h, table)
        else:
            y = Masked(ops.add(h.value, ops.gather(table, masked.position_ids(h.mask))), h.mask)
        outs = [y]
    elif kind == "lstm_state_at_end":
        p = _biased(g, LSTMParams.create(g, "lstm", D, 3))
        outs = [mistakes.lstm_state_at_end(h, p) if wrong else masked.lstm(h, p).last_h]
        return g, outs, ops.sum(ops.square(outs[0]))
    elif kind == "backward_reads_pads":
        fwd, bwd = _biased(g, LSTMParams.create(g, "fwd", D, 3)), _biased(g, LSTMParams.create(g, "bwd", D, 3))
        if wrong:
            outs = [mistakes.backward_reads_pads(h, fwd, bwd)]
        else:  # the same weights as one bidirectional layer
            both = LSTMParams(ops.stack([fwd.wx, bwd.wx]), ops.stack([fwd.wr, bwd.wr]), ops.stack([fwd.b, bwd.b]))
            outs = [masked.lstm(h, both).outputs]
    elif kind == "causal_without_padding":
        p = AttentionParams.create(g, "attn", D, 2)
        outs = [mistakes.causal_without_padding(h, p) if wrong else masked.multi_head_attention(h, p, causal=True)]
    elif kind == "unmasked_conv_stack":
        layers = [(g.variable(f"w{i}", shape=(k, D, D)), g.variable(f"b{i}", np.full(D, 0.1)), d, pad)
                  for i, (k, d, pad) in enumerate(((3, 1, "same"), (2, 2, "causal"), (3, 1, "same")))]  # fmt: skip
        if wrong:
            outs = [mistakes.unmasked_conv_stack(h, layers)]
        else:
            y = h
            for w, b, d, pad in layers:
                y = masked.conv1d(y, w, b, dilation=d, padding=pad).map(ops.relu)
            outs = [y]
    else:
        raise AssertionError(kind)
    return g, outs, ops.sum(ops.square(masked.mean_pool(outs[0])))


# (kind, padding side where the mistake shows): each classic mistake, where it bites
CASES = [
    ("absolute_positions", "left"),
    ("lstm_state_at_end", "right"),
    ("lstm_state_at_end", "left"),
    ("backward_reads_pads", "right"),
    ("causal_without_padding", "left"),
    ("unmasked_conv_stack", "right"),
    ("unmasked_conv_stack", "left"),
]


@pytest.mark.parametrize("kind, side", CASES)
def test_each_sequence_mistake_is_caught_and_its_fix_passes(kind, side):
    g, outs, loss = _build(kind, side, wrong=True)
    rep = check_pad_invariance(g, _feeds(side), outs, loss=loss, grad_inputs=["x"], ks=(1, 3), fills=("random",))
    assert not rep.ok, kind
    assert {f.check for f in rep.findings} >= {"output"}
    assert max(f.max_abs_diff for f in rep.findings if f.check == "output") > 1e-3  # far outside tolerance
    assert "alone" in {f.mode for f in rep.findings}  # the row alone, unpadded, always disagrees
    g, outs, loss = _build(kind, side, wrong=False)
    rep = assert_pad_invariant(g, _feeds(side), outs, loss=loss, grad_inputs=["x"], ks=(1, 3), atol=1e-4)
    assert rep.max_drift("input-grad") == 0.0


@pytest.mark.parametrize("kind", ["absolute_positions", "causal_without_padding"])
def test_left_padding_mistakes_are_invisible_with_right_padding(kind):
    """Why the checker needs left-padded feeds: with right padding these two mistakes are pad-invariant (no
    pad precedes a valid token), so only a mask declared padding="left" (prepended pads) reveals them."""
    g, outs, loss = _build(kind, "right", wrong=True)
    assert_pad_invariant(g, _feeds("right"), outs, loss=loss, ks=(1, 3), fills=("random",), atol=1e-4)
