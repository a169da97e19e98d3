"""Causal (decoder) self-attention with padding: query ``i`` attends to the VALID keys ``j <= i``.

DL4J 1.0.0-M2.1's fused attention ops take only a ``[batch, Tk]`` key mask (the op reshapes the mask to one
value per batch row and key: ``[B, Tk, Tq]`` or ``[B, H, Tk, Tq]`` masks are refused), so a per-query mask
such as the causal one cannot go through them. This module runs the batched-heads core of
:func:`~samediff_py.masked.multi_head_attention` (plain ops, heads on a batch axis) with a per-query mask:

    scores = q k^T / sqrt(head_size) + (allowed - 1) * 1e9,   allowed[b, i, j] = (j <= i) and mask[b, j]
    weights = softmax(scores),                                out = (weights v) wo

:func:`samediff_py.ops.softmax` shifts each row by its maximum: a padded query of a left-padded row has no
allowed key, and M2.1's float64 softmax over the last axis returns NaN for rows whose entries are all below
about -745; shifted, no row is. Outputs and weight rows at padded queries are then set to
0 (a row gather, :func:`~samediff_py.masked.rows.mask_rows`, and a select for the weights), so a fully padded
row gives zeros with zero gradients.

Pad-invariant for right AND left padding (positions are compared by index, and padded keys get exactly 0
weight). Weights use the same parameters as :func:`~samediff_py.masked.multi_head_attention`
(:class:`~samediff_py.masked.AttentionParams`, DL4J's layout), including its optional biases ``bq``, ``bk``,
``bv`` (``[heads, head_size]``) and ``bo`` (``[d_out]``).
"""

from __future__ import annotations

from .. import ops
from ..errors import MaskError
from ..graph import Var
from .attention import BIG, AttentionParams, heads_attention
from .rows import valid_condition, zero_padding
from .value import Masked, require_masked

__all__ = ["causal_attention", "causal_allowed"]


def causal_allowed(mask: Var) -> Var:
    """``[batch, Tq, Tk]`` float, 1 where query ``i`` may attend to key ``j``: ``j <= i`` and key ``j`` valid.

    Built at run time from the mask (any time length); nothing on it needs a gradient.

    Args:
        mask: ``[batch, time]`` float mask (1 = valid).

    Returns:
        ``[batch, time, time]`` Var of the mask's dtype.
    """
    ones = ops.add(ops.zeros_like(mask), 1.0)
    index = ops.cumsum(ones, 1)  # [B, T]: 1, 2, ..., T
    causal = ops.less_equal(ops.expand_dims(index, 1), ops.expand_dims(index, 2))  # [B, Tq, Tk]: j <= i
    return ops.multiply(ops.cast(causal, mask.dtype), ops.expand_dims(mask, 1))


def causal_attention(
    query: Masked,
    params: AttentionParams,
    *,
    scaled: bool = True,
    return_weights: bool = False,
    name: str | None = None,
) -> Masked | tuple[Masked, Var]:
    """Causal multi-head self-attention over a padded batch (see the module docstring).

    Args:
        query: Masked ``[batch, time, d_in]``; right- or left-padded.
        params: :class:`~samediff_py.masked.AttentionParams` (``wq/wk/wv [heads, head_size, d_in]``,
            ``wo [heads * head_size, d_out]``; optional ``bq/bk/bv/bo``).
        scaled: divide scores by ``sqrt(head_size)``.
        return_weights: also return the weights ``[batch, heads, query, key]`` (0 for later keys, padded
            keys and padded queries; each valid query's row sums to 1).
        name: name of the output node.

    Returns:
        Masked ``[batch, time, d_out]`` (0 at padded positions), and the weights if asked.

    >>> import numpy as np
    >>> from samediff_py import Graph, masked
    >>> g = Graph(seed=0)
    >>> x = g.placeholder("x", ("batch", "time", 4))
    >>> m = masked.mask_placeholder(g, "mask", padding="left")
    >>> p = masked.AttentionParams.create(g, "attn", 4, 2)
    >>> out, w = masked.multi_head_attention(masked.Masked(x, m), p, causal=True, return_weights=True)
    >>> wt = g.run({"x": np.ones((1, 3, 4)), "mask": [[0, 1, 1]]}, w)
    >>> wt[0, 0]                        # head 0: query 1 sees key 1 only, query 2 sees keys 1 and 2
    array([[0. , 0. , 0. ],
           [0. , 1. , 0. ],
           [0. , 0.5, 0.5]], dtype=float32)
    """
    query = require_masked(query, "causal attention")
    x_val = query.value
    if x_val.rank != 3:
        raise MaskError("causal attention takes [batch, time, features] values")
    d_in = int(params.wq.shape[2])
    if x_val.shape[2] is not None and x_val.shape[2] != d_in:
        raise ValueError(f"query has {x_val.shape[2]} features but the attention weights expect {d_in}")
    g = query.graph
    mask = query.mask
    full = g.unique_name("causal_attention", name)
    stem = full.split("/")[-1]
    with g.scope(stem):
        x = zero_padding(query.value, mask)
        allowed = ops.expand_dims(causal_allowed(mask), 1)  # [B, 1, Tq, Tk]
        out, p = heads_attention(x, x, params, scaled, ops.multiply(ops.subtract(allowed, 1.0), BIG))
    result = Masked.derived(zero_padding(out, mask, name=stem), mask)
    if not return_weights:
        return result
    with g.scope(stem):
        q_valid = ops.transpose(valid_condition(mask, ops.transpose(p, (0, 2, 1, 3))), (0, 2, 1, 3))
        weights = ops.where(q_valid, p, ops.zeros_like(p), name="weights", same_shape=True)
    return result, weights
