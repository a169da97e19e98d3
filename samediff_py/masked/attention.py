"""Masked multi-head dot-product attention, with the axis convention written down.

Shapes (samediff_py convention, time on axis 1):

============  ===============================  ======================================
what          samediff_py                      DL4J ``multiHeadDotProductAttention``
============  ===============================  ======================================
queries       ``[batch, Tq, d_in]``            ``[batch, d_in, Tq]`` (time last)
keys/values   ``[batch, Tk, d_in]``            ``[batch, d_in, Tk]``
mask          from ``context`` ``[batch, Tk]``  ``[batch, Tk]``, 1 = keep (M2.1)
output        ``[batch, Tq, d_out]``           ``[batch, d_out, Tq]``
weights       ``[batch, heads, Tq, Tk]``       ``[batch, heads, Tk, Tq]`` (axis 2 = KEYS)
softmax over  last axis (keys)                 axis 2 (keys)
============  ===============================  ======================================

Causal attention (``multi_head_attention(..., causal=True)`` / :func:`causal_attention`): query ``i`` attends
to the VALID keys ``j <= i``. M2.1's fused attention ops take only a ``[batch, Tk]`` key mask (``[B, Tk, Tq]``
or ``[B, H, Tk, Tq]`` masks are refused), so the causal path runs the batched-heads core
(:func:`heads_attention`: plain ops, heads on a batch axis) with a per-query mask:

    scores = q k^T / sqrt(head_size) + (allowed - 1) * 1e9,   allowed[b, i, j] = (j <= i) and mask[b, j]
    weights = softmax(scores),                                out = (weights v) wo

:func:`samediff_py.ops.softmax` shifts each row by its maximum: a padded query of a left-padded row has no
allowed key, and M2.1's float64 softmax over the last axis returns NaN for rows whose entries are all below
about -745; shifted, no row is. Outputs and weight rows at padded queries are then set to exactly 0
(:func:`~samediff_py.masked.rows.zero_padding`, one elementwise op), so a fully padded row gives zeros with
zero gradients.

Causal attention is pad-invariant for right AND left padding (positions are compared by index, and padded
keys get exactly 0 weight), with the same parameters (:class:`AttentionParams`, optional biases included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _jvm, ops
from ..errors import MaskError
from ..graph import Graph, Var
from .rows import zero_padding
from .value import Masked, require_masked, select_valid, valid_counts

__all__ = [
    "DEFAULT_IMPL",
    "IMPLS",
    "AttentionParams",
    "causal_allowed",
    "causal_attention",
    "multi_head_attention",
    "multi_head_attention_unfused",
    "unfused_attention_core",
]

BIG = 1e9  # DL4J's additive key-mask offset, reproduced by the unfused formulation


@dataclass
class AttentionParams:
    """Weights of multi-head attention in DL4J's layout.

    ``wq/wk/wv [heads, head_size, d_in]``, ``wo [heads * head_size, d_out]``, and optional biases
    ``bq/bk/bv [heads, head_size]`` (added to each head's projection) and ``bo [d_out]`` (added to the output). A
    plain object: build it with :meth:`create` or from your own Vars (e.g. a loaded checkpoint).

    With biases, head ``h`` computes ``q_h = x @ wq[h].T + bq[h]`` (likewise ``k_h``, ``v_h``) and the output
    is ``concat_h(attn_h) @ wo + bo``: a Hugging Face ``nn.Linear`` ``[out, in]`` weight ``W`` of ``heads *
    head_size`` outputs is ``W.reshape(heads, head_size, d_in)`` here, its bias ``b.reshape(heads, head_size)``.
    """

    wq: Var
    wk: Var
    wv: Var
    wo: Var
    bq: Var | None = None
    bk: Var | None = None
    bv: Var | None = None
    bo: Var | None = None

    def __post_init__(self) -> None:
        for n in ("wq", "wk", "wv"):
            w = getattr(self, n)
            if w.rank != 3:
                raise ValueError(f"AttentionParams.{n} must be [heads, head_size, d_in], {w.name!r} has {w.shape}")
        if self.wo.rank != 2:
            raise ValueError(
                f"AttentionParams.wo must be [heads * head_size, d_out], {self.wo.name!r} has {self.wo.shape}"
            )
        heads, hs = self.wq.shape[0], self.wq.shape[1]
        for n in ("wk", "wv"):
            w = getattr(self, n)
            if tuple(w.shape[:2]) != (heads, hs):
                raise ValueError(
                    f"AttentionParams.{n} {w.shape} does not match wq {self.wq.shape} on [heads, head_size]"
                )
        if None not in (heads, hs) and self.wo.shape[0] not in (None, heads * hs):
            raise ValueError(f"AttentionParams.wo {self.wo.shape} must have heads * head_size = {heads * hs} rows")
        for n in ("bq", "bk", "bv"):
            b = getattr(self, n)
            if b is not None and tuple(b.shape) != (heads, hs):
                raise ValueError(
                    f"AttentionParams.{n} must be [heads, head_size] = {(heads, hs)}, {b.name!r} has {b.shape}"
                )
        if self.bo is not None and tuple(self.bo.shape) != (self.wo.shape[1],):
            raise ValueError(
                f"AttentionParams.bo must be [d_out] = ({self.wo.shape[1]},), {self.bo.name!r} has {self.bo.shape}"
            )

    @property
    def heads(self) -> int:
        """Number of heads (``wq.shape[0]``)."""
        return int(self.wq.shape[0])

    @property
    def head_size(self) -> int:
        """Size of each head's projection (``wq.shape[1]``)."""
        return int(self.wq.shape[1])

    @property
    def has_input_biases(self) -> bool:
        """True if any of ``bq``, ``bk``, ``bv`` is set."""
        return any(b is not None for b in (self.bq, self.bk, self.bv))

    def variables(self) -> list[Var]:
        """Every Var of these parameters.

        Returns:
            The weights ``wq, wk, wv, wo``, then the biases that are set.
        """
        return [v for v in (self.wq, self.wk, self.wv, self.wo, self.bq, self.bk, self.bv, self.bo) if v is not None]

    @classmethod
    def create(
        cls,
        graph: Graph,
        name: str,
        d_in: int,
        heads: int,
        head_size: int | None = None,
        d_out: int | None = None,
        *,
        biases: bool = False,
    ) -> AttentionParams:
        """Glorot-uniform weights for ``heads`` heads of ``head_size``; with ``biases``, zero ``bq, bk, bv, bo`` too.

        Args:
            graph: the graph to create the variables in.
            name: scope of the variables (``<name>/wq`` ...).
            d_in: input features.
            heads: number of heads.
            head_size: size of each head (default ``d_in // heads``; ``d_in`` must then divide evenly).
            d_out: output features (default ``d_in``).
            biases: also create zero biases.

        Returns:
            The :class:`AttentionParams`.
        """
        if head_size is None and d_in % heads:
            raise ValueError(f"d_in={d_in} is not divisible by heads={heads}: pass head_size explicitly")
        hs = head_size or d_in // heads
        d_out = d_out or d_in
        with graph.scope(name):
            # fan_in of each projection is d_in; glorot over [heads*hs, d_in]
            lim = np.sqrt(6.0 / (d_in + heads * hs))
            mk = lambda n: graph.variable(n, graph.rng.uniform(-lim, lim, (heads, hs, d_in)))  # noqa: E731
            ws = (mk("wq"), mk("wk"), mk("wv"), graph.variable("wo", shape=(heads * hs, d_out)))
            if not biases:
                return cls(*ws)
            zb = lambda n: graph.variable(n, np.zeros((heads, hs)))  # noqa: E731
            return cls(*ws, zb("bq"), zb("bk"), zb("bv"), graph.variable("bo", np.zeros(d_out)))


def _with_bias_column(g: Graph, w: Var, b: Var | None, name: str) -> Var:
    """``[heads, hs, d_in] -> [heads, hs, d_in + 1]``: the bias (or zeros) as the weight of one extra input feature.

    A projection of ``[x, 1]`` is then ``x @ w.T + b`` exactly (the fused op has no biases).
    """
    col = ops.expand_dims(b, -1) if b is not None else g.constant(None, np.zeros((w.shape[0], w.shape[1], 1)), w.dtype)
    return ops.concat([w, col], 2, name=name)


def _queries_to_keep(query_mask: Var, key_mask: Var) -> Var:
    """``[batch, Tq]`` 1 where a query is valid AND its row has at least one valid key."""
    count, _ = valid_counts(key_mask)
    has_key = ops.cast(ops.greater(count, 0.5), query_mask.dtype)  # [batch, 1]
    return ops.multiply(query_mask, has_key)


IMPLS = ("fused", "batched")
DEFAULT_IMPL = "batched"  # faster forward + backward: bench/bench_attention.py, bench/FINDINGS.md


def multi_head_attention(
    query: Masked,
    params: AttentionParams,
    context: Masked | None = None,
    *,
    scaled: bool = True,
    return_weights: bool = False,
    name: str | None = None,
    impl: str | None = None,
    causal: bool = False,
) -> Masked | tuple[Masked, Var]:
    """Multi-head dot-product attention of ``query`` over ``context`` (default: self-attention).

    Args:
        query: Masked ``[batch, Tq, d_in]``.
        params: the projections (:class:`AttentionParams`, DL4J's layout), with optional biases ``bq, bk, bv``
            (fed to the fused op as one extra input feature, equal to the mask, whose weights are the biases:
            exact) and ``bo`` (added to the output at valid queries).
        context: Masked ``[batch, Tk, d_in]`` keys/values (default ``query``); its mask masks the keys.
        scaled: divide scores by ``sqrt(head_size)``.
        return_weights: also return the attention weights ``[batch, heads, Tq, Tk]`` (inspection only:
            M2.1 has no gradient for that form of the op).
        causal: self-attention where query ``i`` sees only the valid keys ``j <= i`` (decoders); computed by
            :func:`causal_attention` from plain ops (M2.1's fused op takes no
            per-query mask); right or left padding. Not with a separate ``context``.
        name: optional name of the output node.
        impl: ``"fused"`` (DL4J's ``multiHeadDotProductAttention``; the table in this module's docstring maps
            its axes; its key mask is applied as ``(mask - 1) * 1e9`` before the softmax) or ``"batched"`` (one
            projection per Q/K/V, heads as a batch axis ``[batch, heads, time, head_size]``, batched matmuls,
            the same additive key mask, biases added after each projection; its weights output has a
            gradient). Both compute the same function (tests cross-check them); the default (``None``) is
            :data:`DEFAULT_IMPL`, the one measured faster for forward + backward.

    Returns:
        Masked ``[batch, Tq, d_out]`` (and the weights). ``weights[b, h, i, j]`` is how much query ``i``
        attends to key ``j``; each row of a valid query sums to 1 over the valid keys; padded keys get exactly
        0 weight. Outputs (and weight rows) at padded queries are 0; a query row with no valid key gives 0
        (not DL4J's uniform average). Padded positions of query and context are selected away first, so the
        result does not depend on what they hold (NaN, inf, 1e30 included).
    """
    if causal:
        if context is not None and context is not query:
            raise ValueError("causal=True is self-attention: query i attends to keys j <= i of the same sequence")
        return causal_attention(query, params, scaled=scaled, return_weights=return_weights, name=name)
    query = require_masked(query, "multi_head_attention")
    context = query if context is None else require_masked(context, "multi_head_attention (context)")
    if query.value.rank != 3 or context.value.rank != 3:
        raise MaskError("multi_head_attention takes [batch, time, features] values")
    d_in = params.wq.shape[2]
    for what, v in (("query", query.value), ("context", context.value)):
        if v.shape[2] is not None and v.shape[2] != d_in:
            raise ValueError(f"{what} has {v.shape[2]} features but the attention weights expect {d_in}")
    impl = DEFAULT_IMPL if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "batched":
        return _batched_attention(query, params, context, scaled, return_weights, name)
    g = query.graph
    heads = params.heads
    base = g.unique_name("attention", name)
    with g.scope(base.split("/")[-1]):
        key_mask = context.mask
        wq, wk, wv = params.wq, params.wk, params.wv
        if params.has_input_biases:
            # DL4J's fused op has no biases: append one feature that is 1 at valid positions (the mask itself, so
            # padded positions stay exactly 0) and put each bias in as that feature's weight column. Exact: the
            # extra product is b * 1.0 (and 0 at padding: a padded key is removed by the key mask anyway).
            def augment(v: Masked, n: str) -> Var:
                feat = ops.expand_dims(v.mask, 1)  # [batch, 1, T]
                return ops.concat([ops.transpose(v.zeroed(), (0, 2, 1)), feat], 1, name=n)

            q = augment(query, "q_cf")
            kv = q if context is query else augment(context, "kv_cf")
            wq = _with_bias_column(g, params.wq, params.bq, "wq_b")
            wk = _with_bias_column(g, params.wk, params.bk, "wk_b")
            wv = _with_bias_column(g, params.wv, params.bv, "wv_b")
        else:
            q = ops.transpose(query.zeroed(), (0, 2, 1), name="q_cf")  # channels-first for DL4J
            kv = q if context is query else ops.transpose(context.zeroed(), (0, 2, 1), name="kv_cf")
        parents = (q, kv, wq, wk, wv, params.wo, key_mask)
        d_out = params.wo.shape[1]
        b_, tq, tk = query.value.shape[0], query.value.shape[1], context.value.shape[1]

        def build(weights: bool) -> Callable[[str], Any]:
            def f(n: str) -> Any:
                outs = _jvm.bridge().attention(
                    g.sd, n, q.j, kv.j, kv.j, wq.j, wk.j, wv.j, params.wo.j, key_mask.j, bool(scaled), weights,
                )  # fmt: skip
                return outs[1] if weights else outs[0]

            return f

        raw = g.op("dl4j_mha", None, build(False), (b_, d_out, tq), query.dtype, parents)
        out_tq = ops.transpose(raw, (0, 2, 1), name="out_raw")
        if params.bo is not None:
            out_tq = ops.add(out_tq, params.bo, name="out_bias")
        # zero padded queries, and queries that have no valid key at all (DL4J would average all keys)
        keep_q = _queries_to_keep(query.mask, key_mask)  # [batch, Tq]
        out = select_valid(out_tq, keep_q)
        result = Masked.derived(out, query.mask)
        if not return_weights:
            return result
        w_raw = g.op("dl4j_mha_weights", None, build(True), (b_, heads, tk, tq), query.dtype, parents)
        w = ops.transpose(w_raw, (0, 1, 3, 2), name="weights_qk")  # -> [batch, heads, Tq, Tk]
        w_q = select_valid(ops.transpose(w, (0, 2, 1, 3)), keep_q)  # [B, Tq, H, Tk], zero rows where not kept
        return result, ops.transpose(w_q, (0, 2, 1, 3), name="weights")


def _project_heads(x: Var, w: Var, b: Var | None, heads: int, hs: int) -> Var:
    """``[B, T, d] -> [B, heads, T, hs]`` with ``w [heads, hs, d]`` (DL4J's layout) as ONE projection.

    The projection is ``[d, heads*hs]`` (plus the optional bias ``[heads, hs]``).
    """
    d = int(w.shape[2])
    y = ops.matmul(x, ops.transpose(ops.reshape(w, [heads * hs, d])))  # [B, T, heads*hs]
    if b is not None:
        y = ops.add(y, ops.reshape(b, [heads * hs]))
    return ops.transpose(ops.reshape_tail(y, 2, (heads, hs)), (0, 2, 1, 3))


def heads_attention(xq: Var, kv: Var, params: AttentionParams, scaled: bool, offset: Var) -> tuple[Var, Var]:
    """The batched-heads attention core: heads on a batch axis, batched matmuls, an additive score mask.

    Shared by :func:`multi_head_attention` (``impl="batched"``) and causal attention; the callers zero
    padding in ``xq``/``kv`` first and zero padded queries after.

    Args:
        xq: ``[B, Tq, d_in]`` queries.
        kv: ``[B, Tk, d_in]`` keys and values.
        params: the :class:`AttentionParams` (biases used when present).
        scaled: divide the scores by ``sqrt(head_size)``.
        offset: added to the ``[B, H, Tq, Tk]`` scores before the softmax (broadcast): 0 where a query may
            attend to a key, ``-1e9`` where not.

    Returns:
        (``[B, Tq, d_out]`` output, ``[B, H, Tq, Tk]`` weights; softmax over keys).
    """
    heads, hs = params.heads, int(params.wq.shape[1])
    q = _project_heads(xq, params.wq, params.bq, heads, hs)
    if scaled:
        q = ops.multiply(q, 1.0 / float(np.sqrt(hs)))
    k = _project_heads(kv, params.wk, params.bk, heads, hs)
    v = _project_heads(kv, params.wv, params.bv, heads, hs)
    scores = ops.add(ops.batch_matmul(q, k, transpose_b=True), offset)  # [B, H, Tq, Tk]
    w = ops.softmax(scores, -1, name="softmax")
    ctx = ops.transpose(ops.batch_matmul(w, v), (0, 2, 1, 3))  # [B, Tq, H, hs]
    out = ops.matmul(ops.reshape_tail(ctx, 2, (heads * hs,)), params.wo)  # heads concatenated head-major
    return (out if params.bo is None else ops.add(out, params.bo)), w


def _batched_attention(
    query: Masked, params: AttentionParams, context: Masked, scaled: bool, return_weights: bool, name: str | None
) -> Masked | tuple[Masked, Var]:
    """multi_head_attention(impl="batched"): the same masking rules as the fused path."""
    g = query.graph
    with g.scope(g.unique_name("attention", name).split("/")[-1]):
        kv = context.zeroed()  # padded keys and values selected to exactly 0 first
        xq = kv if context is query else query.zeroed()
        # DL4J's key mask: (mask - 1) * 1e9 added before the softmax (padded keys get exactly 0 weight)
        offset = ops.multiply(ops.subtract(context.mask, 1.0), BIG)  # [B, Tk]
        out, w = heads_attention(xq, kv, params, scaled, ops.expand_dims(ops.expand_dims(offset, 1), 1))
        keep_q = _queries_to_keep(query.mask, context.mask)  # [B, Tq]
        result = Masked.derived(select_valid(out, keep_q), query.mask)
        if not return_weights:
            return result
        w_q = select_valid(ops.transpose(w, (0, 2, 1, 3)), keep_q)  # [B, Tq, H, Tk], zero rows where not kept
        return result, ops.transpose(w_q, (0, 2, 1, 3), name="weights")


def unfused_attention_core(
    q: Var, kv: Var, key_mask: Var | None, p: AttentionParams, softmax_axis: int = 2, scaled: bool = True
) -> tuple[Var, Var]:
    """Attention as a chain of plain ops, with DL4J's KEY-FIRST score layout ``[B, H, Tk, Tq]``.

    ``softmax_axis=2`` (keys) is correct; ``3`` normalises over queries, the mistake the DL4J user's axis
    question invites. Used as the unfused reference in benchmarks and by :mod:`samediff_py.mistakes`; prefer
    :func:`multi_head_attention`.

    Args:
        q: ``[B, Tq, d_in]`` queries (padding already zeroed).
        kv: ``[B, Tk, d_in]`` keys/values (padding already zeroed).
        key_mask: optional ``[B, Tk]`` float key mask (1 = valid), applied as ``(mask - 1) * 1e9``.
        p: the :class:`AttentionParams`.
        softmax_axis: axis of the ``[B, H, Tk, Tq]`` scores the softmax runs over.
        scaled: divide scores by ``sqrt(head_size)``.

    Returns:
        (``[B, Tq, d_out]`` output, ``[B, H, Tk, Tq]`` weights); nothing is zeroed at padded queries.
    """
    heads, hs = p.heads, int(p.wq.shape[1])

    def project(x: Var, w: Var, h: int, b: Var | None = None) -> Var:  # [B, T, F] @ w[h].T (+ b[h]) -> [B, T, hs]
        y = ops.matmul(x, ops.transpose(w[h]))
        return y if b is None else ops.add(y, b[h])

    per_head = []
    for h in range(heads):
        s = ops.batch_matmul(project(kv, p.wk, h, p.bk), project(q, p.wq, h, p.bq), transpose_b=True)  # [B, Tk, Tq]
        per_head.append(s)
    scores = ops.stack(per_head, 1)  # [B, H, Tk, Tq]
    if scaled:
        scores = ops.multiply(scores, 1.0 / float(np.sqrt(hs)))
    if key_mask is not None:
        km = ops.expand_dims(ops.expand_dims(key_mask, 1), -1)  # [B, 1, Tk, 1]
        scores = ops.add(scores, ops.multiply(ops.subtract(km, 1.0), BIG))
    weights = ops.softmax(scores, softmax_axis)
    ctx = [ops.batch_matmul(weights[:, h], project(kv, p.wv, h, p.bv), transpose_a=True) for h in range(heads)]
    out = ops.matmul(ops.concat(ctx, -1), p.wo)  # heads concatenated head-major, as DL4J does
    return (out if p.bo is None else ops.add(out, p.bo)), weights


def multi_head_attention_unfused(query: Masked, params: AttentionParams, context: Masked | None = None) -> Masked:
    """Same definition as :func:`multi_head_attention`, built from plain ops.

    For benchmarks and as an independent cross-check of the fused op.

    Args:
        query: Masked ``[batch, Tq, d_in]``.
        params: the :class:`AttentionParams`.
        context: Masked ``[batch, Tk, d_in]`` keys/values (default ``query``).

    Returns:
        Masked ``[batch, Tq, d_out]``; 0 at padded queries and at queries with no valid key.
    """
    query = require_masked(query, "multi_head_attention_unfused")
    context = query if context is None else require_masked(context, "multi_head_attention_unfused (context)")
    kv = query.zeroed() if context is query else context.zeroed()
    q = kv if context is query else query.zeroed()
    out, _ = unfused_attention_core(q, kv, context.mask, params)
    return Masked.derived(select_valid(out, _queries_to_keep(query.mask, context.mask)), query.mask)


# ------------------------------------------------------------------------------------------ causal
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
        w_q = zero_padding(ops.transpose(p, (0, 2, 1, 3)), mask)  # [B, Tq, H, Tk], zero rows at padded queries
        weights = ops.transpose(w_q, (0, 2, 1, 3), name="weights")
    return result, weights
