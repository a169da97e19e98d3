"""Deliberately WRONG building blocks: the classic padding mistakes, reproduced on purpose.

They exist so that the MLM demo can show each mistake's signature and the test suite can prove that
:mod:`samediff_py.testing` detects every one of them. Each bypasses samediff_py's guards the way a user
of raw DL4J would (working on ``.value`` and the raw op). Never use them in a model.

=========================  ====================================================================
mistake                    what it does
=========================  ====================================================================
``inverted_mask``          DL4J attention fed ``1 - mask`` (a mask built from ``tokens == PAD``)
``no_mask``                DL4J attention with no mask: padded keys are attended to
``softmax_over_queries``   hand-built attention with key-first scores, softmax over the QUERY axis
``norm_over_time``         layer norm over the time axis instead of features
``unmasked_mean``          ``ops.mean`` over time, counting padding
``loss_over_padding``      cross-entropy that ignores the mask (labels at padding count)
``absolute_positions``     position ``t`` = time index ``t``, also under LEFT padding (a left-padded
                           row's first token gets position #pads instead of 0)
``lstm_state_at_end``      LSTM run over every step, final state read at the padded end (``h[:, -1]``)
``backward_reads_pads``    bidirectional LSTM whose backward half runs over the reversed PADDED sequence,
                           so it starts on the padding instead of the row's last valid token
``causal_without_padding`` causal attention masking later keys only: padded keys before a query count
                           (harmless with right padding, wrong with left padding)
``unmasked_conv_stack``    1-d convolutions on ``.value`` with no zeroing between layers: padding (and
                           what the previous layer wrote there) reaches valid steps near the edge
=========================  ====================================================================
"""

from __future__ import annotations

from . import _jvm, masked, ops
from .graph import Var
from .masked import AttentionParams, Masked


def _raw_dl4j_attention(x: Masked, p: AttentionParams, key_mask: Var | None) -> Masked:
    """DL4J's op on ``x`` with whatever key mask is given, WITHOUT zeroing padded queries."""
    g = x.graph
    xcf = ops.transpose(x.value, (0, 2, 1))
    parents = (xcf, p.wq, p.wk, p.wv, p.wo) + ((key_mask,) if key_mask is not None else ())
    raw = g.op(
        "raw_mha",
        None,
        lambda n: _jvm.bridge().attention(
            g.sd, n, xcf.j, xcf.j, xcf.j, p.wq.j, p.wk.j, p.wv.j, p.wo.j,
            key_mask.j if key_mask is not None else None, True, False,
        )[0],
        (x.shape[0], p.wo.shape[1], x.shape[1]),
        x.dtype,
        parents,
    )  # fmt: skip
    return Masked.derived(ops.transpose(raw, (0, 2, 1)), x.mask)


def inverted_mask(x: Masked, p: AttentionParams) -> Masked:
    """The DL4J user's bug: the attention mask is 1 at padding and 0 at real tokens."""
    return _raw_dl4j_attention(x, p, ops.subtract(1.0, x.mask))


def no_mask(x: Masked, p: AttentionParams) -> Masked:
    """Attention that never sees the mask."""
    return _raw_dl4j_attention(x, p, None)


def softmax_over_queries(x: Masked, p: AttentionParams) -> Masked:
    """Hand-built attention that reads DL4J's ``[B, H, Tk, Tq]`` layout as ``[B, H, Tq, Tk]``.

    The mask is applied on axis 2 (keys) but the softmax runs over axis 3 (queries).
    """
    out, _ = masked.unfused_attention_core(x.value, x.value, x.mask, p, softmax_axis=3)
    return Masked.derived(out, x.mask)


def norm_over_time(x: Masked, gain: Var, bias: Var) -> Masked:
    """Layer norm whose statistics are taken over time (axis 1): padded steps shift every valid step."""
    return Masked.derived(ops.layer_norm(x.value, 1, gain, bias), x.mask)


def unmasked_mean(x: Masked) -> Var:
    """Mean over time that divides by the padded length and includes padded values."""
    return ops.mean(x.value, 1)


def loss_over_padding(logits: Masked, labels: Var) -> Var:
    """Cross-entropy that treats every position as valid (only the ignore label is skipped)."""
    everything = ops.add(ops.multiply(logits.mask, 0.0), 1.0)
    return masked.softmax_cross_entropy(Masked.derived(logits.value, everything), labels)


# ---------------------------------------------------------------------------- sequence layers (issue 12)
def absolute_positions(x: Masked, pos_table: Var) -> Masked:
    """Adds ``pos_table[t]`` at time index ``t`` whatever the padding.

    Right only for right padding. Under left padding a row's tokens get positions shifted by its number of pads (the
    fix: positions from the mask, :func:`samediff_py.masked.position_ids` / ``EncoderConfig(positions="from_mask")``).
    """
    pos = ops.expand_dims(ops.leading_rows(pos_table, x.value), 0)  # [1, time, d]
    return x + pos


def _raw_lstm(v: Var, params: masked.LSTMParams) -> Var:
    """libnd4j's forward lstmLayer on ``v`` with NO lengths: every step, padding included, is processed."""
    g = v.graph
    b = params.b
    return g.op(
        "raw_lstm",
        None,
        lambda n: _jvm.jclass("samediffpy.Sequences").lstm(
            g.sd, n, v.j, None, params.wx.j, params.wr.j, b.j if b is not None else None, 0
        )[0],
        (v.shape[0], v.shape[1], params.hidden),
        v.dtype,
        tuple(p for p in (v, params.wx, params.wr, b) if p is not None),
    )


def lstm_state_at_end(x: Masked, params: masked.LSTMParams) -> Var:
    """The "final state" of an LSTM taken at the last time index of the padded batch.

    For a short row it is the state after running over its padding (the fix: :func:`samediff_py.masked.lstm`'s
    ``last_h``).
    """
    h = _raw_lstm(x.zeroed(), params)
    return h[:, -1]


def backward_reads_pads(x: Masked, fwd: masked.LSTMParams, bwd: masked.LSTMParams) -> Masked:
    """Bidirectional LSTM whose backward direction runs over ``x`` reversed along time, padding included.

    The backward direction is a forward LSTM over ``x`` reversed along time, padding included: on a right-padded row it
    starts on the pads and reaches the last valid token with a state that depends on how many there are (the fix:
    ``masked.lstm`` with bidirectional params).
    """
    rec = masked.lstm(x, fwd).outputs
    rev = masked.recurrent.reverse_time(x.zeroed())
    back = masked.recurrent.reverse_time(_raw_lstm(rev, bwd))
    return Masked(ops.concat([rec.value, back], -1), x.mask)


def causal_without_padding(x: Masked, p: AttentionParams) -> Masked:
    """Causal attention given only the causal mask (as if no position were padding).

    A query attends to the padded keys before it. Invisible with right padding (pads come after every valid query),
    wrong with left padding (the fix: ``masked.multi_head_attention(x, p, causal=True)``, which combines both masks).
    """
    everything = ops.add(ops.multiply(x.mask, 0.0), 1.0)
    out = masked.causal_attention(Masked.derived(x.value, everything), p)
    return Masked.derived(out.value, x.mask)


def unmasked_conv_stack(x: Masked, layers: list[tuple[Var, Var | None, int, str]]) -> Masked:
    """A stack of 1-d convolutions with ReLUs that does not zero padded steps between layers.

    The layers are ``(w, b, dilation, padding)`` tuples, computed on ``.value`` without zeroing padded steps between
    layers (the fix: ``masked.conv1d``, which selects before and after).
    """
    g = x.graph
    v = x.value
    seq = _jvm.jclass("samediffpy.Sequences")
    for w, b, d, pad in layers:
        mode = {"same": 1, "causal": 2}[pad]
        v_in = v

        def build(n: str, v_in: Var = v_in, w: Var = w, b: Var | None = b, d: int = d, mode: int = mode):
            return seq.conv1d(g.sd, n, v_in.j, w.j, b.j if b is not None else None, w.shape[0], d, mode)

        parents = (v_in, w) if b is None else (v_in, w, b)
        v = ops.relu(g.op("raw_conv", None, build, (v.shape[0], v.shape[1], w.shape[2]), v.dtype, parents))
    return Masked.derived(v, x.mask)
