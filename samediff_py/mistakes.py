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
    """Hand-built attention that reads DL4J's ``[B, H, Tk, Tq]`` layout as ``[B, H, Tq, Tk]``: the mask is
    applied on axis 2 (keys) but the softmax runs over axis 3 (queries)."""
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
