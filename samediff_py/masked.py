"""Masks done right: padded sequences as values that carry their mask.

**One convention, everywhere in samediff_py:**

- layout ``[batch, time, features...]`` (time is axis 1);
- a mask is ``[batch, time]``, float, **1 = valid token, 0 = padding**, exactly 0 or 1;
- a :class:`Masked` value pairs a ``[batch, time, ...]`` Var with the mask Var that describes it;
- ops that mix time steps (pooling, attention, losses, metrics) exist only here, take ``Masked`` values
  and read the mask from them; :mod:`samediff_py.ops` refuses ``Masked`` inputs, so a mask cannot be
  dropped silently;
- padded positions of every output are **zero**; a fully padded row gives zeros, and zero (finite)
  gradients, never NaN;
- losses and metrics are normalised by the number of counted positions; a batch with none gives 0.

>>> import numpy as np
>>> from samediff_py import Graph
>>> g = Graph()
>>> x = g.placeholder("x", ("batch", "time", 2))
>>> m = mask_placeholder(g, "mask")
>>> pooled = mean_pool(Masked(x, m))
>>> xs = np.array([[[1.0, 2.0], [3.0, 4.0], [99.0, 99.0]]])   # last step is padding
>>> g.run({"x": xs, "mask": [[1, 1, 0]]}, pooled)
array([[2., 3.]], dtype=float32)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _jvm, ops
from .graph import Graph, MaskError, Var

BIG = 1e9  # additive offset that removes padded keys / positions from a max or softmax


# ============================================================================ numpy-side mask helpers
def mask_from_lengths(lengths: Sequence[int], max_len: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """``[batch, time]`` mask with the first ``lengths[b]`` positions of row ``b`` valid (1).

    >>> mask_from_lengths([2, 0, 3], 4)
    array([[1., 1., 0., 0.],
           [0., 0., 0., 0.],
           [1., 1., 1., 0.]], dtype=float32)
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths < 0).any():
        raise ValueError(f"lengths must be a 1-d array of non-negative ints, got {lengths!r}")
    t = int(lengths.max(initial=0)) if max_len is None else int(max_len)
    if (lengths > t).any():
        raise ValueError(f"a length exceeds max_len={t}: {lengths.tolist()}")
    return (np.arange(t)[None, :] < lengths[:, None]).astype(dtype)


def mask_from_pad(tokens: np.ndarray, pad_id: int, dtype: Any = np.float32) -> np.ndarray:
    """``[batch, time]`` mask: 1 where ``tokens != pad_id`` (valid), 0 at padding.

    Only safe when ``pad_id`` never occurs as a real token (never reuse EOS as PAD).

    >>> mask_from_pad(np.array([[5, 6, 0, 0]]), pad_id=0)
    array([[1., 1., 0., 0.]], dtype=float32)
    """
    return (np.asarray(tokens) != pad_id).astype(dtype)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, max_len: int | None = None, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad variable-length token lists into ``tokens [batch, time]`` (int32) and their mask.

    ``time`` is ``max_len``, or the longest sequence rounded up to ``multiple`` (fewer distinct batch shapes:
    SameDiff does some first-run work for every new shape).

    >>> tokens, mask = pad_batch([[7, 8, 9], [4]], pad_id=0)
    >>> tokens
    array([[7, 8, 9],
           [4, 0, 0]], dtype=int32)
    >>> mask
    array([[1., 1., 1.],
           [1., 0., 0.]], dtype=float32)
    """
    lengths = [len(s) for s in sequences]
    t = -(-max(max(lengths, default=0), 1) // multiple) * multiple if max_len is None else max_len
    tokens = np.full((len(sequences), t), pad_id, dtype=np.int32)
    for i, s in enumerate(sequences):
        if len(s) > t:
            raise ValueError(f"sequence {i} has length {len(s)} > max_len {t}")
        tokens[i, : len(s)] = s
    return tokens, mask_from_lengths(lengths, t)


def shift_targets(
    tokens: np.ndarray, mask: np.ndarray, ignore_label: int = -1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Next-token prediction: inputs ``tokens[:, :-1]`` predict ``tokens[:, 1:]``; the target mask is
    shifted WITH the targets (a position counts only if both it and its target are valid), and targets
    that do not count become ``ignore_label``.

    Returns ``(inputs, input_mask, targets, target_mask)``, each ``[batch, time - 1]``.

    >>> inp, inp_mask, tgt, tgt_mask = shift_targets(np.array([[5, 6, 7, 0]]), np.array([[1, 1, 1, 0]]))
    >>> tgt, tgt_mask
    (array([[ 6,  7, -1]]), array([[1., 1., 0.]], dtype=float32))
    """
    tokens = np.asarray(tokens)
    mask = np.asarray(mask, dtype=np.float32)
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must both be [batch, time]")
    inputs, input_mask = tokens[:, :-1], mask[:, :-1]
    target_mask = mask[:, :-1] * mask[:, 1:]
    targets = np.where(target_mask > 0, tokens[:, 1:], ignore_label)
    return inputs, input_mask, targets, target_mask


def check_mask(
    mask: np.ndarray,
    name: str = "mask",
    *,
    allow_empty_rows: bool = False,
    padding: str = "right",
    tokens: np.ndarray | None = None,
    pad_id: int | None = None,
) -> None:
    """Validate a mask array; raise :class:`MaskError` naming the problem.

    Checks: rank 2, values exactly 0/1, no row without a valid position (unless ``allow_empty_rows``),
    ``padding="right"``: no valid position after a padded one (a 0 before a 1 usually means the mask is
    inverted: 1 marked padding); ``padding="left"``: the mirror image; ``"any"``: no layout check; and with
    ``tokens``/``pad_id``: no pad token marked valid.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"{name}: a mask is [batch, time], got shape {m.shape}")
    if m.dtype != np.bool_ and not np.isin(m, (0, 1)).all():
        bad = np.unique(m[~np.isin(m, (0, 1))])[:5]
        raise MaskError(f"{name}: mask values must be exactly 0 (padding) or 1 (valid), found {bad.tolist()}")
    valid = m.astype(bool)
    empty = np.flatnonzero(~valid.any(axis=1))
    if len(empty) and not allow_empty_rows:
        hint = " (every row is empty: is the mask inverted, or never filled?)" if len(empty) == len(m) else ""
        raise MaskError(
            f"{name}: row(s) {empty[:10].tolist()} have no valid position{hint}. samediff_py masks use "
            "1 = valid, 0 = padding. Pass allow_empty_rows=True to the mask placeholder if empty rows are intended."
        )
    if tokens is not None and pad_id is not None:
        tok = np.asarray(tokens)
        # fix: a tokens feed of another shape used to raise a bare numpy broadcast error, or (e.g. tokens
        # [1, time] vs mask [batch, time]) broadcast silently; the mask must describe exactly these tokens
        if tok.shape != m.shape:
            raise MaskError(f"{name}: mask shape {m.shape} differs from its tokens' shape {tok.shape}")
        marked = valid & (tok == pad_id)
        if marked.any():
            b, t = np.argwhere(marked)[0]
            raise MaskError(
                f"{name}: position (batch {b}, time {t}) holds the pad id {pad_id} but is marked valid (1); "
                "the mask may be inverted (samediff_py: 1 = valid, 0 = padding)"
            )
    if padding in ("right", "left"):
        v = valid if padding == "right" else valid[:, ::-1]
        # right padding: once a row turns 0 it stays 0, i.e. v is non-increasing along time
        holes = (~v[:, :-1]) & v[:, 1:]
        if holes.any():
            b = int(np.argwhere(holes)[0][0])
            raise MaskError(
                f"{name}: row {b} has a valid position after padding ({m[b].astype(int).tolist()[:16]}...), "
                f"which a {padding}-padded batch never has: the mask looks inverted (samediff_py: 1 = valid, "
                f"0 = padding). If the layout is intended, create the mask placeholder with padding='any'."
            )
    elif padding != "any":
        raise ValueError(f"padding must be 'right', 'left' or 'any', got {padding!r}")


# ============================================================================ graph-side masks
@dataclass(frozen=True)
class MaskSpec:
    """How a mask placeholder is validated on every feed."""

    name: str
    allow_empty_rows: bool
    padding: str
    tokens: str | None
    pad_id: int | None


def mask_placeholder(
    graph: Graph,
    name: str = "mask",
    dims: tuple[Any, Any] = ("batch", "time"),
    *,
    tokens: Var | None = None,
    pad_id: int | None = None,
    allow_empty_rows: bool = False,
    padding: str = "right",
) -> Var:
    """A ``[batch, time]`` mask placeholder (graph float dtype; 1 = valid, 0 = padding).

    Every feed is checked in Python before the JVM runs (see :func:`check_mask`). With ``tokens`` (the
    token placeholder this mask describes) and ``pad_id``, a pad token marked valid is an error too.
    """
    if tokens is not None and tokens.kind != "placeholder":
        raise MaskError("tokens= must be the token placeholder the mask describes")
    if tokens is not None and tokens.graph is not graph:
        raise MaskError("tokens= belongs to another graph")
    m = graph.placeholder(name, dims, graph.dtype)
    spec = MaskSpec(m.name, allow_empty_rows, padding, tokens.name if tokens is not None else None, pad_id)
    graph.meta.setdefault("masks", {})[m.name] = spec.__dict__.copy()
    graph.feed_checks.append(_feed_check(spec))
    return m


def _feed_check(spec: MaskSpec) -> Callable[[dict[str, np.ndarray]], None]:
    def check(feeds: dict[str, np.ndarray]) -> None:
        if spec.name in feeds:
            check_mask(
                feeds[spec.name],
                spec.name,
                allow_empty_rows=spec.allow_empty_rows,
                padding=spec.padding,
                tokens=feeds.get(spec.tokens) if spec.tokens else None,
                pad_id=spec.pad_id,
            )

    return check


def restore_feed_checks(graph: Graph) -> None:
    """Re-attach the mask validators recorded in ``graph.meta["masks"]`` (after loading a saved graph)."""
    for spec in graph.meta.get("masks", {}).values():
        graph.feed_checks.append(_feed_check(MaskSpec(**spec)))


class Masked:
    """A ``[batch, time, ...]`` value together with its ``[batch, time]`` mask (1 = valid).

    Per-position operations keep the mask: ``+ - * /`` with another ``Masked`` of the SAME mask, or with a
    number / an array / a Var that has no batch axis (bias ``[features]``, positions ``[time, features]``);
    :meth:`map` applies a per-position function. Anything that would combine two different masks, or a
    masked value with an unmasked ``[batch, ...]`` value, raises :class:`MaskError`.
    """

    __masked__ = True  # lets samediff_py.ops refuse Masked inputs without importing this module
    __array_ufunc__ = None  # np.ones(3) + masked must defer to us, not build an object array

    def __init__(self, value: Var, mask: Var):
        if not isinstance(value, Var) or not isinstance(mask, Var):
            raise TypeError("Masked(value, mask) takes two graph Vars")
        if value.graph is not mask.graph:
            raise MaskError("value and mask belong to different graphs")
        if mask.rank != 2:
            raise MaskError(f"mask {mask.name!r} must be [batch, time], has shape {mask.shape}")
        if value.rank < 2:
            raise MaskError(f"a masked value is [batch, time, ...]; {value.name!r} has shape {value.shape}")
        for axis in (0, 1):
            a, b = value.shape[axis], mask.shape[axis]
            if a is not None and b is not None and a != b:
                raise MaskError(f"value {value.shape} and mask {mask.shape} disagree on axis {axis}")
        if mask.dtype.kind != "f":
            raise MaskError(f"mask {mask.name!r} must be a float Var (1.0 = valid), got {mask.dtype}")
        if mask.kind == "placeholder" and mask.name not in value.graph.meta.get("masks", {}):
            raise MaskError(
                f"placeholder {mask.name!r} is not a mask placeholder, so its feeds would not be validated "
                "(0/1 values, polarity, empty rows): create it with masked.mask_placeholder(...)"
            )
        self.value = value
        self.mask = mask

    @property
    def graph(self) -> Graph:
        return self.value.graph

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def rank(self) -> int:
        # fix: ops.softmax/log_softmax read x.rank before refusing masked inputs, so a Masked argument
        # raised AttributeError instead of the MaskError that tells the user what to do
        return self.value.rank

    def __repr__(self) -> str:
        return f"<Masked {self.value!r} mask={self.mask.name!r}>"

    def __bool__(self) -> bool:
        raise TypeError("a graph value has no truth value")

    def map(self, fn: Callable[[Var], Var]) -> Masked:
        """Apply a per-position function (it must not mix time steps) and keep the mask."""
        out = fn(self.value)
        if not isinstance(out, Var) or out.rank < 2:
            raise MaskError("map(fn): fn must return a [batch, time, ...] Var")
        for axis in (0, 1):
            a, b = self.value.shape[axis], out.shape[axis]
            if a is not None and b is not None and a != b:
                raise MaskError(f"map(fn) changed axis {axis} from {a} to {b}: it is not a per-position op")
        return Masked(out, self.mask)

    def zeroed(self) -> Var:
        """The value with padded positions set to exactly zero (a plain Var, for export or inspection)."""
        return ops.multiply(self.value, _expand_mask(self.mask, self.value))

    def _combine(self, other: Any, fn: Callable[[Any, Any], Var], swap: bool = False) -> Masked:
        if isinstance(other, Masked):
            if other.mask is not self.mask:
                raise MaskError(
                    f"cannot combine values with different masks ({self.mask.name!r} vs {other.mask.name!r}): "
                    "the result would have no single valid set of positions. Combine values of one sequence only."
                )
            other_v = other.value
        elif isinstance(other, Var):
            self._check_unmasked_operand(other)
            other_v = other
        else:
            other_v = other
        out = fn(other_v, self.value) if swap else fn(self.value, other_v)
        return Masked(out, self.mask)

    def _check_unmasked_operand(self, v: Var) -> None:
        """An unmasked Var may join a ``[batch, time, ...]`` masked value only if it is clearly per-position:
        no batch or time axis (a bias ``[F]``), a per-time table ``[1, time, ...]``, or a per-example value
        ``[batch, 1, ...]``. A rank-1-lower ``[n, F]`` is refused: it could be ``[time, F]`` or ``[batch, F]``,
        and numpy broadcasting would line a batch axis up with time without a word."""
        r = self.value.rank
        if v.rank <= r - 2 or (v.rank == r and (v.shape[0] == 1 or v.shape[1] == 1)):
            return
        if v.rank == r - 1:
            hint = (
                f"{v.name!r} {v.shape} is ambiguous next to [batch, time, ...]: expand it to [1, time, ...] "
                "(ops.expand_dims(v, 0)) if it is per time step, or to [batch, 1, ...] (ops.expand_dims(v, 1)) "
                "if it is per example"
            )
        else:
            hint = (
                f"combining masked {self.value.name!r} {self.value.shape} with unmasked {v.name!r} {v.shape} "
                f"would drop the mask. If {v.name!r} describes the same sequence, wrap it: Masked({v.name!r}, mask)"
            )
        raise MaskError(hint)

    def __add__(self, o):
        return self._combine(o, ops.add)

    def __radd__(self, o):
        return self._combine(o, ops.add, swap=True)

    def __sub__(self, o):
        return self._combine(o, ops.subtract)

    def __rsub__(self, o):
        return self._combine(o, ops.subtract, swap=True)

    def __mul__(self, o):
        return self._combine(o, ops.multiply)

    def __rmul__(self, o):
        return self._combine(o, ops.multiply, swap=True)

    def __truediv__(self, o):
        return self._combine(o, ops.divide)

    def __rtruediv__(self, o):
        return self._combine(o, ops.divide, swap=True)

    def __matmul__(self, w: Var) -> Masked:
        if isinstance(w, Masked) or (isinstance(w, Var) and w.rank != 2):
            raise MaskError("masked @ w needs a [in, out] weight matrix (a per-position linear map)")
        return self.map(lambda v: ops.matmul(v, w))


def _expand_mask(mask: Var, like: Var) -> Var:
    """``[batch, time]`` mask reshaped to broadcast against ``like`` ``[batch, time, ...]``."""
    m = mask
    for _ in range(like.rank - 2):
        m = ops.expand_dims(m, -1)
    return m


def _require_masked(x: Any, what: str) -> Masked:
    if not isinstance(x, Masked):
        raise MaskError(
            f"{what} mixes time steps, so it needs a Masked value (Masked(value, mask)); got {type(x).__name__}. "
            "Running it on an unmasked padded batch would count padding."
        )
    return x


# ============================================================================ per-position helpers
def dense(x: Masked, w: Var, b: Var | None = None, activation: Callable[[Var], Var] | None = None) -> Masked:
    """Per-position affine map ``act(x @ w + b)``: ``[batch, time, in] -> [batch, time, out]``; keeps the mask."""

    def f(v: Var) -> Var:
        y = ops.matmul(v, w)
        if b is not None:
            y = ops.add(y, b)
        return activation(y) if activation is not None else y

    return _require_masked(x, "dense").map(f)


def layer_norm(x: Masked, gain: Var | None = None, bias: Var | None = None, eps: float = 1e-5) -> Masked:
    """Layer norm over the FEATURE axis only (per position, so padding cannot leak across time)."""
    return _require_masked(x, "layer_norm").map(lambda v: ops.layer_norm(v, -1, gain, bias, eps))


# ============================================================================ pooling over time
def _at_least_one(n: Var) -> Var:
    """``max(n, 1)`` for counts: the denominator that turns 0/0 into 0/1."""
    return ops.add(n, ops.cast(ops.less(n, 0.5), n.dtype))


def _counts(mask: Var) -> tuple[Var, Var]:
    """(valid count per row [batch, 1], safe denominator max(count, 1))."""
    count = ops.sum(mask, 1, keepdims=True)
    return count, _at_least_one(count)


def _per_row(v: Var, rank: int) -> Var:
    """A ``[batch, 1]`` per-row value shaped to broadcast against a pooled ``[batch, ...]`` of ``rank``."""
    return ops.reshape(v, (-1,) + (1,) * (rank - 1))


def sum_pool(x: Masked, name: str | None = None) -> Var:
    """Sum over time of valid positions: ``[batch, time, F] -> [batch, F]``. Fully padded rows give 0.

    Definition: ``out[b] = sum_t mask[b, t] * x[b, t]``. Padded values never reach the output or receive
    gradient (they are multiplied by exactly 0; values must be finite).
    """
    x = _require_masked(x, "sum_pool")
    return ops.sum(x.zeroed(), 1, name=name)


def mean_pool(x: Masked, name: str | None = None) -> Var:
    """Mean over the valid positions: ``[batch, time, F] -> [batch, F]``.

    Definition: ``out[b] = sum_t mask[b, t] x[b, t] / max(sum_t mask[b, t], 1)``: it divides by the valid
    count, not the padded length; a fully padded row gives zeros with zero (finite) gradients, not 0/0.
    """
    x = _require_masked(x, "mean_pool")
    _, denom = _counts(x.mask)
    return ops.divide(ops.sum(x.zeroed(), 1), _per_row(denom, x.value.rank - 1), name=name)


def max_pool(x: Masked, name: str | None = None) -> Var:
    """Maximum over the valid positions: ``[batch, time, F] -> [batch, F]``; fully padded rows give 0.

    Padded positions are replaced by ``-1e9`` before the max (exactly: valid values are untouched), and
    rows with no valid position are multiplied by 0, so their gradient is 0.
    """
    x = _require_masked(x, "max_pool")
    m = _expand_mask(x.mask, x.value)
    shifted = ops.add(ops.multiply(x.value, m), ops.multiply(ops.subtract(m, 1.0), BIG))
    count, _ = _counts(x.mask)
    has_any = ops.cast(ops.greater(count, 0.5), x.dtype)
    return ops.multiply(ops.max(shifted, 1), _per_row(has_any, x.value.rank - 1), name=name)


# ============================================================================ attention
@dataclass
class AttentionParams:
    """Weights of multi-head attention in DL4J's layout: ``wq/wk/wv [heads, head_size, d_in]``,
    ``wo [heads * head_size, d_out]``. A plain object: build it with :meth:`create` or from your own Vars."""

    wq: Var
    wk: Var
    wv: Var
    wo: Var

    @property
    def heads(self) -> int:
        return int(self.wq.shape[0])

    @classmethod
    def create(
        cls, graph: Graph, name: str, d_in: int, heads: int, head_size: int | None = None, d_out: int | None = None
    ) -> AttentionParams:
        if head_size is None and d_in % heads:
            raise ValueError(f"d_in={d_in} is not divisible by heads={heads}: pass head_size explicitly")
        hs = head_size or d_in // heads
        d_out = d_out or d_in
        with graph.scope(name):
            # fan_in of each projection is d_in; glorot over [heads*hs, d_in]
            lim = np.sqrt(6.0 / (d_in + heads * hs))
            mk = lambda n: graph.variable(n, graph.rng.uniform(-lim, lim, (heads, hs, d_in)))  # noqa: E731
            return cls(mk("wq"), mk("wk"), mk("wv"), graph.variable("wo", shape=(heads * hs, d_out)))


def multi_head_attention(
    query: Masked,
    params: AttentionParams,
    context: Masked | None = None,
    *,
    scaled: bool = True,
    return_weights: bool = False,
    name: str | None = None,
) -> Masked | tuple[Masked, Var]:
    """Multi-head dot-product attention of ``query`` over ``context`` (default: self-attention).

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

    ``weights[b, h, i, j]`` is how much query ``i`` attends to key ``j``; each row ``weights[b, h, i, :]``
    of a valid query sums to 1 over the valid keys. Padded keys get exactly 0 weight. Outputs (and weight
    rows) at padded queries are 0; a query row with no valid key gives 0 (not DL4J's uniform average).

    The fused DL4J op is used (its mask is applied to keys as ``(mask - 1) * 1e9`` before the softmax);
    ``return_weights`` adds a second, inspection-only instance (M2.1 has no gradient for that form).
    """
    query = _require_masked(query, "multi_head_attention")
    context = query if context is None else _require_masked(context, "multi_head_attention (context)")
    if query.value.rank != 3 or context.value.rank != 3:
        raise MaskError("multi_head_attention takes [batch, time, features] values")
    d_in = params.wq.shape[2]
    for what, v in (("query", query.value), ("context", context.value)):
        if v.shape[2] is not None and v.shape[2] != d_in:
            raise ValueError(f"{what} has {v.shape[2]} features but the attention weights expect {d_in}")
    g = query.graph
    heads = params.heads
    base = g.unique_name("attention", name)
    with g.scope(base.split("/")[-1]):
        q = ops.transpose(query.value, (0, 2, 1), name="q_cf")  # channels-first for DL4J
        kv = q if context is query else ops.transpose(context.value, (0, 2, 1), name="kv_cf")
        key_mask = context.mask
        parents = (q, kv, params.wq, params.wk, params.wv, params.wo, key_mask)
        d_out = params.wo.shape[1]
        b_, tq, tk = query.value.shape[0], query.value.shape[1], context.value.shape[1]

        def build(weights: bool) -> Callable[[str], Any]:
            def f(n: str) -> Any:
                outs = _jvm.bridge().attention(
                    g.sd, n, q.j, kv.j, kv.j, params.wq.j, params.wk.j, params.wv.j, params.wo.j,
                    key_mask.j, bool(scaled), weights,
                )  # fmt: skip
                return outs[1] if weights else outs[0]

            return f

        raw = g.op("dl4j_mha", None, build(False), (b_, d_out, tq), query.dtype, parents)
        out_tq = ops.transpose(raw, (0, 2, 1), name="out_raw")
        # zero padded queries, and queries that have no valid key at all (DL4J would average all keys)
        count, _ = _counts(key_mask)
        has_key = ops.cast(ops.greater(count, 0.5), query.dtype)  # [batch, 1]
        keep_q = ops.multiply(query.mask, has_key)  # [batch, Tq]
        out = ops.multiply(out_tq, ops.expand_dims(keep_q, -1), name="out")
        result = Masked(out, query.mask)
        if not return_weights:
            return result
        w_raw = g.op("dl4j_mha_weights", None, build(True), (b_, heads, tk, tq), query.dtype, parents)
        w = ops.transpose(w_raw, (0, 1, 3, 2), name="weights_qk")  # -> [batch, heads, Tq, Tk]
        km = ops.expand_dims(ops.expand_dims(keep_q, 1), -1)  # [batch, 1, Tq, 1]
        weights = ops.multiply(w, km, name="weights")
        return result, weights


def unfused_attention_core(
    q: Var, kv: Var, key_mask: Var | None, p: AttentionParams, softmax_axis: int = 2, scaled: bool = True
) -> tuple[Var, Var]:
    """Attention as a chain of plain ops, with DL4J's KEY-FIRST score layout ``[B, H, Tk, Tq]``.

    ``softmax_axis=2`` (keys) is correct; ``3`` normalises over queries, the mistake the DL4J user's axis
    question invites. Returns (``[B, Tq, d_out]`` output, ``[B, H, Tk, Tq]`` weights). Used as the
    unfused reference in benchmarks and by :mod:`samediff_py.mistakes`; prefer :func:`multi_head_attention`.
    """
    heads, hs = p.heads, int(p.wq.shape[1])

    def project(x: Var, w: Var, h: int) -> Var:  # [B, T, F] @ w[h].T -> [B, T, hs]
        return ops.matmul(x, ops.transpose(w[h]))

    per_head = []
    for h in range(heads):
        s = ops.batch_matmul(project(kv, p.wk, h), project(q, p.wq, h), transpose_b=True)  # [B, Tk, Tq]
        per_head.append(s)
    scores = ops.stack(per_head, 1)  # [B, H, Tk, Tq]
    if scaled:
        scores = ops.multiply(scores, 1.0 / float(np.sqrt(hs)))
    if key_mask is not None:
        km = ops.expand_dims(ops.expand_dims(key_mask, 1), -1)  # [B, 1, Tk, 1]
        scores = ops.add(scores, ops.multiply(ops.subtract(km, 1.0), BIG))
    weights = ops.softmax(scores, softmax_axis)
    ctx = [ops.batch_matmul(weights[:, h], project(kv, p.wv, h), transpose_a=True) for h in range(heads)]
    return ops.matmul(ops.concat(ctx, -1), p.wo), weights  # heads concatenated head-major, as DL4J does


def multi_head_attention_unfused(query: Masked, params: AttentionParams, context: Masked | None = None) -> Masked:
    """Same definition as :func:`multi_head_attention`, built from plain ops (for benchmarks and as an
    independent cross-check of the fused op)."""
    query = _require_masked(query, "multi_head_attention_unfused")
    context = query if context is None else _require_masked(context, "multi_head_attention_unfused (context)")
    out, _ = unfused_attention_core(query.value, context.value, context.mask, params)
    count, _ = _counts(context.mask)
    keep_q = ops.multiply(query.mask, ops.cast(ops.greater(count, 0.5), query.dtype))
    return Masked(ops.multiply(out, ops.expand_dims(keep_q, -1)), query.mask)


# ============================================================================ losses and metrics
def _counted(mask: Var, labels: Var, ignore_label: int) -> Var:
    """1 where a position counts: mask 1 and label != ignore_label; float [batch, time]."""
    ignores = labels.graph.meta.setdefault("ignore_labels", {}).setdefault(labels.name, [])
    if int(ignore_label) not in ignores:
        ignores.append(int(ignore_label))
    not_ignored = ops.cast(ops.not_equal(labels, ignore_label), mask.dtype)
    return ops.multiply(mask, not_ignored)


def _check_logits_labels(logits: Masked, labels: Var, what: str) -> None:
    if logits.value.rank != 3:
        raise MaskError(f"{what}: logits must be [batch, time, classes], got {logits.value.shape}")
    if not isinstance(labels, Var) or labels.dtype.kind not in "iu":
        raise TypeError(f"{what}: labels must be an integer [batch, time] Var (class ids)")
    if labels.rank != 2:
        raise ValueError(f"{what}: labels must be [batch, time], got {labels.shape}")
    if logits.value.shape[2] is None:
        raise ValueError(f"{what}: the class axis of the logits must be known when building")
    if labels.kind == "placeholder":
        _register_label_check(labels, logits.mask, int(logits.value.shape[2]))


_LABEL_CHECKS: weakref.WeakKeyDictionary[Graph, set[tuple[str, str, int]]] = weakref.WeakKeyDictionary()


def _register_label_check(labels: Var, mask: Var, classes: int) -> None:
    """Labels outside [0, classes) at counted positions would one-hot to a zero row: they would count in the
    denominator but add nothing (a silently lower loss). Refuse them at feed time; ``ignore_label`` and
    padded positions may hold anything."""
    g = labels.graph
    done = _LABEL_CHECKS.setdefault(g, set())
    if (labels.name, mask.name, classes) in done:
        return
    done.add((labels.name, mask.name, classes))

    def check(feeds: dict[str, np.ndarray]) -> None:
        lab = feeds.get(labels.name)
        if lab is None:
            return
        ignore = g.meta.get("ignore_labels", {}).get(labels.name, [])
        counted = ~np.isin(lab, ignore)
        m = feeds.get(mask.name)
        if m is not None and np.shape(m) == lab.shape:
            counted &= np.asarray(m) > 0
        bad = counted & ((lab < 0) | (lab >= classes))
        if bad.any():
            b, t = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"placeholder {labels.name!r}: label {int(lab[b, t])} at (batch {b}, time {t}) is outside "
                f"[0, {classes}) at a counted position; use the ignore label ({ignore}) for positions that "
                "must not count"
            )

    g.feed_checks.append(check)


def softmax_cross_entropy(
    logits: Masked, labels: Var, ignore_label: int = -1, name: str | None = None, fused: bool = False
) -> Var:
    """Mean softmax cross-entropy over counted positions.

    ``logits`` ``[batch, time, classes]`` (Masked), ``labels`` ``[batch, time]`` int class ids. A position
    counts if its mask is 1 and its label is not ``ignore_label``:

        loss = sum_{b,t} counted[b,t] * -log_softmax(logits[b,t])[labels[b,t]] / max(sum counted, 1)

    A batch with no counted position gives 0 and zero gradients. By default it is built from plain ops
    (log-softmax, one-hot, multiply, sum, divide) because M2.1's ``sd.loss()`` ops ignore upstream gradients
    and its sparse cross-entropy cannot be masked; so this loss can be scaled, summed and masked freely.

    ``fused=True`` uses libnd4j's fused op (weights = counted positions, mean over non-zero weights): ~10 %
    faster training for a large vocabulary (bench/RESULTS.md), same values and gradients, but only as the
    FINAL loss: the graph refuses any op that would consume it.
    """
    logits = _require_masked(logits, "softmax_cross_entropy")
    _check_logits_labels(logits, labels, "softmax_cross_entropy")
    g = logits.graph
    out_name = name or g.unique_name("xent_loss").split("/")[-1]
    with g.scope(g.unique_name("xent", name).split("/")[-1]):
        counted = _counted(logits.mask, labels, ignore_label)
        # zero padded logits first: garbage there (huge values) must not produce inf/NaN
        z = logits.zeroed()
        onehot = ops.one_hot(labels, logits.value.shape[2], logits.dtype)  # ignore_label < 0 -> zero row
        if not fused:
            logp = ops.log_softmax(z, -1)
            nll = ops.negative(ops.sum(ops.multiply(logp, onehot), -1))  # [batch, time]
            total = ops.sum(ops.multiply(nll, counted))
            denom = _at_least_one(ops.sum(counted))
    if not fused:
        return ops.divide(total, denom, name=out_name)
    loss = g.op(
        "xent_loss",
        out_name,
        lambda n: _jvm.bridge().fusedSoftmaxCrossEntropy(g.sd, n, onehot.j, z.j, counted.j),
        (),
        logits.dtype,
        (onehot, z, counted),
    )
    g.meta.setdefault("final_only", []).append(loss.name)
    return loss


def accuracy(logits: Masked, labels: Var, ignore_label: int = -1, name: str | None = None) -> Var:
    """Fraction of counted positions (mask 1, label != ignore) whose arg-max class equals the label.

    Padding never earns credit; 0 when nothing counts."""
    return top_k_accuracy(logits, labels, 1, ignore_label, name)


def top_k_accuracy(logits: Masked, labels: Var, k: int = 5, ignore_label: int = -1, name: str | None = None) -> Var:
    """Fraction of counted positions whose label is among the ``k`` highest logits.

    A label counts as in the top k if fewer than ``k`` classes have a strictly larger logit (ties are
    credited). 0 when nothing counts."""
    logits = _require_masked(logits, "top_k_accuracy")
    _check_logits_labels(logits, labels, "top_k_accuracy")
    g = logits.graph
    with g.scope(g.unique_name(f"top{k}_acc", name).split("/")[-1]):
        counted = _counted(logits.mask, labels, ignore_label)
        z = logits.zeroed()
        onehot = ops.one_hot(labels, logits.value.shape[2], logits.dtype)
        label_logit = ops.sum(ops.multiply(z, onehot), -1, keepdims=True)  # [batch, time, 1]
        # rank of the label = classes ranked before it: larger logits, and equal logits of a smaller class
        # index (numpy's argmax order), so constant logits earn credit only for class 0, not for every label
        classes = g.constant(None, np.arange(logits.value.shape[2]), logits.dtype)
        label_f = ops.expand_dims(ops.cast(labels, logits.dtype), -1)
        before = ops.add(
            ops.cast(ops.greater(z, label_logit), logits.dtype),
            ops.multiply(
                ops.cast(ops.equal(z, label_logit), logits.dtype), ops.cast(ops.less(classes, label_f), logits.dtype)
            ),
        )
        hit = ops.cast(ops.less(ops.sum(before, -1), float(k) - 0.5), logits.dtype)
        denom = _at_least_one(ops.sum(counted))
        total = ops.sum(ops.multiply(hit, counted))
    return ops.divide(total, denom, name=name or g.unique_name(f"top{k}_accuracy").split("/")[-1])
