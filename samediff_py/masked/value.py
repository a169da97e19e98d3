"""The ``Masked`` value, mask placeholders, per-position maps and pooling over time.

**One convention, everywhere in samediff_py:**

- layout ``[batch, time, features...]`` (time is axis 1);
- a mask is ``[batch, time]``, float, **1 = valid token, 0 = padding**, exactly 0 or 1;
- a :class:`Masked` value pairs a ``[batch, time, ...]`` Var with the mask Var that describes it; creating
  one SELECTS the valid positions (padding becomes exactly 0, whatever was there: NaN, inf, 1e30);
- ops that mix time steps (pooling, attention, losses, metrics) take ``Masked`` values, read the mask from
  them and select valid positions again before they mix anything; :mod:`samediff_py.ops` refuses
  ``Masked`` inputs, so a mask cannot be dropped silently;
- padded positions of every output are **zero**; a fully padded row gives zeros, and zero (finite)
  gradients, never NaN;
- losses and metrics are normalised by the number of counted positions; a batch with none gives 0.

>>> import numpy as np
>>> from samediff_py import Graph
>>> g = Graph()
>>> x = g.placeholder("x", ("batch", "time", 2))
>>> m = mask_placeholder(g, "mask")
>>> pooled = mean_pool(Masked(x, m))
>>> xs = np.array([[[1.0, 2.0], [3.0, 4.0], [np.nan, np.inf]]])   # last step is padding
>>> g.run({"x": xs, "mask": [[1, 1, 0]]}, pooled)
array([[2., 3.]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import ops
from ..errors import MaskError
from ..graph import Graph, Var
from ..padding import SIDES
from .rows import mask_rows, select_where, zero_padding

__all__ = [
    "Masked",
    "dense",
    "layer_norm",
    "mask_placeholder",
    "max_pool",
    "mean_pool",
    "sum_pool",
]


# ============================================================================ mask placeholders
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

    Every feed is checked in Python before the JVM runs (see :func:`samediff_py.padding.check_mask`):
    values exactly 0/1, no empty row unless ``allow_empty_rows``, the ``padding`` side (``"right"``,
    ``"left"`` or ``"any"``), and, with ``tokens`` (the token placeholder this mask describes) and
    ``pad_id``, no pad token marked valid. The contract is saved with the model.

    Args:
        graph: the graph to add the placeholder to.
        name: the placeholder's name.
        dims: names (or sizes) of its two dimensions.
        tokens: the token placeholder this mask describes (with ``pad_id``: pad tokens must be masked 0).
        pad_id: the padding token id checked against ``tokens``.
        allow_empty_rows: accept rows with no valid position.
        padding: the side padding is on: ``"right"``, ``"left"`` or ``"any"`` (holes allowed).

    Returns:
        The ``[batch, time]`` float placeholder Var.

    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> m = mask_placeholder(g, "mask", padding="left")
    >>> g.run({"mask": [[0, 1, 1]]}, m)
    array([[0., 1., 1.]], dtype=float32)
    """
    if tokens is not None and tokens.kind != "placeholder":
        raise MaskError("tokens= must be the token placeholder the mask describes")
    if tokens is not None and tokens.graph is not graph:
        raise MaskError("tokens= belongs to another graph")
    if padding not in (*SIDES, "any"):
        raise ValueError(f"padding must be 'right', 'left' or 'any', got {padding!r}")
    m = graph.placeholder(name, dims, graph.dtype)
    spec = {
        "name": m.name,
        "allow_empty_rows": bool(allow_empty_rows),
        "padding": padding,
        "tokens": tokens.name if tokens is not None else None,
        "pad_id": None if pad_id is None else int(pad_id),
    }
    graph.meta.setdefault("masks", {})[m.name] = spec
    graph.add_check("mask", **spec)
    return m


def mask_padding(graph: Graph, mask: Var) -> str:
    """The declared padding side of a mask placeholder (``"right"`` for derived masks).

    Args:
        graph: the mask's graph.
        mask: a ``[batch, time]`` mask Var.

    Returns:
        ``"right"``, ``"left"`` or ``"any"``.
    """
    return graph.meta.get("masks", {}).get(mask.name, {}).get("padding", "right")


# ============================================================================ selecting valid positions
def select_valid(value: Var, mask: Var, fill: float = 0.0) -> Var:
    """``value`` at valid positions, ``fill`` at padded ones.

    A SELECT, so NaN/inf at padding never leaks (``x * 0`` is NaN for x = NaN or inf); the gradient into padded
    positions is exactly 0.

    With ``fill == 0`` (the masked ops' case) it is :func:`samediff_py.masked.rows.zero_padding`: one
    ``divide_no_nan`` by the mask (``x / 1`` is ``x``, NaN and inf included; the divisor 0 gives exactly 0),
    ~0.35 ms for a ``[32, 128, 128]`` float32 value. Another ``fill`` is a row gather
    (:func:`samediff_py.masked.rows.mask_rows`: the ``[batch * time, features]`` rows of ``value`` and one filler
    row, padded positions picking the filler; ~1 ms there), or, where the feature shape is unknown when
    building, libnd4j's elementwise ``select`` (39 ms there: it reads every element through a generic
    per-element accessor; bench/FINDINGS.md).

    Args:
        value: ``[batch, time, ...]`` Var.
        mask: ``[batch, time]`` float mask (1 = valid).
        fill: the value at padded positions.

    Returns:
        Var of ``value``'s shape and dtype.
    """
    if fill == 0.0:
        return zero_padding(value, mask)  # itself if already zero at padding (e.g. the value of a Masked)
    if value.rank < 2 or None in value.shape[2:]:
        return select_where(value, mask, fill)
    return mask_rows(value, mask, fill=fill)


class Masked:
    """A ``[batch, time, ...]`` value together with its ``[batch, time]`` mask (1 = valid).

    Creating one selects the valid positions: padded positions of ``value`` become exactly 0 (whatever
    the feed held there), so no NaN/inf/huge filler can reach a valid result or a gradient. The mask must hold
    exactly 0 and 1: a placeholder's feeds are checked; a mask computed in the graph must keep to it (the
    zeroing divides by it: 0.5 would double a value), and it gets no gradient (soft masks are not supported).

    Per-position operations keep the mask: ``+ - * /`` with another ``Masked`` of the SAME mask, or with a
    number / an array / a Var that has no batch axis (bias ``[features]``, positions ``[1, time, features]``);
    :meth:`map` applies a per-position function. Anything that would combine two different masks, or a
    masked value with an unmasked ``[batch, ...]`` value, raises :class:`MaskError`.
    """

    __masked__ = True  # lets samediff_py.ops refuse Masked inputs without importing this module
    __array_ufunc__ = None  # np.ones(3) + masked must defer to us, not build an object array

    def __init__(self, value: Var, mask: Var, *, _selected: bool = False):
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
        if not _selected and value.dtype.kind == "f":
            value = select_valid(value, mask)
        self.value = value
        self.mask = mask

    @classmethod
    def derived(cls, value: Var, mask: Var) -> Masked:
        """A Masked computed per position from an already-masked value.

        No new select: it was selected at its source, and masked ops select again before they mix time steps.

        Args:
            value: ``[batch, time, ...]`` Var computed per position from a Masked value.
            mask: that value's ``[batch, time]`` mask.

        Returns:
            The :class:`Masked` pair.
        """
        return cls(value, mask, _selected=True)

    @property
    def graph(self) -> Graph:
        """The graph the value belongs to."""
        return self.value.graph

    @property
    def shape(self):
        """The value's static shape ``[batch, time, ...]``."""
        return self.value.shape

    @property
    def dtype(self):
        """The value's dtype."""
        return self.value.dtype

    @property
    def rank(self) -> int:
        # ops.softmax/log_softmax read x.rank before refusing masked inputs: a Masked argument must get
        # there to receive the MaskError that says what to do
        """The value's rank (>= 2)."""
        return self.value.rank

    def __repr__(self) -> str:
        return f"<Masked {self.value!r} mask={self.mask.name!r}>"

    def __bool__(self) -> bool:
        raise TypeError("a graph value has no truth value")

    def map(self, fn: Callable[[Var], Var]) -> Masked:
        """Apply a per-position function (it must not mix time steps) and keep the mask.

        ``fn`` also runs at padded positions, on exact zeros (whatever the feed held), and its backward runs
        there with a zero upstream gradient: ``fn``'s derivative at 0 must be finite (``sqrt``, ``log`` and
        dividing by the value are not: ``0 * inf`` is NaN, and it would reach the weights). Use
        ``sqrt(v + eps)`` / ``log(v + eps)``, or a masked op.

        Args:
            fn: ``[batch, time, ...] -> [batch, time, ...]`` function of Vars.

        Returns:
            Masked result of ``fn``, with this mask.

        Raises:
            MaskError: if ``fn`` changes the batch or time axis.
        """
        out = fn(self.value)
        if not isinstance(out, Var) or out.rank < 2:
            raise MaskError("map(fn): fn must return a [batch, time, ...] Var")
        for axis in (0, 1):
            a, b = self.value.shape[axis], out.shape[axis]
            if a is not None and b is not None and a != b:
                raise MaskError(f"map(fn) changed axis {axis} from {a} to {b}: it is not a per-position op")
        return Masked.derived(out, self.mask)

    def zeroed(self) -> Var:
        """The value with padded positions set to exactly zero (a plain Var, for export or inspection).

        Returns:
            Var of the value's shape and dtype.
        """
        return select_valid(self.value, self.mask)

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
        return Masked.derived(out, self.mask)

    def _check_unmasked_operand(self, v: Var) -> None:
        """Refuse an unmasked Var that is not clearly per-position.

        An unmasked Var may join a ``[batch, time, ...]`` masked value only if it is clearly per-position: no batch or
        time axis (a bias ``[F]``), a per-time table ``[1, time, ...]``, or a per-example value ``[batch, 1, ...]``. A
        rank-1-lower ``[n, F]`` is refused: it could be ``[time, F]`` or ``[batch, F]``, and numpy broadcasting would
        line a batch axis up with time without a word.
        """
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


def require_masked(x: Any, what: str) -> Masked:
    """``x`` if it is :class:`Masked`, else a :class:`MaskError` saying why ``what`` needs one.

    Args:
        x: the argument to check.
        what: the op's name, for the message.

    Returns:
        ``x``.
    """
    if not isinstance(x, Masked):
        raise MaskError(
            f"{what} mixes time steps, so it needs a Masked value (Masked(value, mask)); got {type(x).__name__}. "
            "Running it on an unmasked padded batch would count padding."
        )
    return x


# ============================================================================ per-position helpers
def dense(x: Masked, w: Var, b: Var | None = None, activation: Callable[[Var], Var] | None = None) -> Masked:
    """Per-position affine map ``act(x @ w + b)``: ``[batch, time, in] -> [batch, time, out]``; keeps the mask.

    Args:
        x: Masked ``[batch, time, in]``.
        w: ``[in, out]`` weights.
        b: optional ``[out]`` bias.
        activation: optional per-position op.

    Returns:
        Masked ``[batch, time, out]`` (padded positions hold whatever the map gives for a zero input; every
        masked op selects valid positions before it mixes time steps).
    """

    def f(v: Var) -> Var:
        y = ops.matmul(v, w)
        if b is not None:
            y = ops.add(y, b)
        return activation(y) if activation is not None else y

    return require_masked(x, "dense").map(f)


def layer_norm(x: Masked, gain: Var | None = None, bias: Var | None = None, eps: float = 1e-5) -> Masked:
    """Layer norm over the FEATURE axis only (per position, so padding cannot leak across time).

    See :func:`samediff_py.ops.layer_norm` for the definition (``eps=0`` with gain and bias selects libnd4j's
    fused op).

    Args:
        x: Masked ``[batch, time, F]``.
        gain: optional ``[F]`` scale.
        bias: optional ``[F]`` offset.
        eps: added to the variance.

    Returns:
        Masked ``[batch, time, F]``.
    """
    return require_masked(x, "layer_norm").map(lambda v: ops.layer_norm(v, -1, gain, bias, eps))


# ============================================================================ pooling over time
def at_least_one(n: Var) -> Var:
    """``max(n, 1)`` for counts: the denominator that turns 0/0 into 0/1.

    Args:
        n: float Var of counts (whole numbers >= 0).

    Returns:
        Var of ``n``'s shape and dtype.
    """
    return ops.add(n, ops.cast(ops.less(n, 0.5), n.dtype))


def valid_counts(mask: Var) -> tuple[Var, Var]:
    """The valid count per row and the safe denominator ``max(count, 1)``.

    Args:
        mask: ``[batch, time]`` float mask (1 = valid).

    Returns:
        ``(count, denominator)``, both ``[batch, 1]`` Vars of the mask's dtype.
    """
    count = ops.sum(mask, 1, keepdims=True)
    return count, at_least_one(count)


def _per_row(v: Var, rank: int) -> Var:
    """A ``[batch, 1]`` per-row value shaped to broadcast against a pooled ``[batch, ...]`` of ``rank``."""
    return ops.reshape(v, (-1,) + (1,) * (rank - 1))


def sum_pool(x: Masked, name: str | None = None) -> Var:
    """Sum over the valid time steps: ``[batch, time, F...] -> [batch, F...]``.

    Definition: ``out[b] = sum_{t: mask[b,t]=1} x[b, t]``. Padded values are selected away (not multiplied
    by 0), so NaN or inf there cannot reach the output; they receive exactly zero gradient. A fully padded
    row gives 0.

    Args:
        x: Masked ``[batch, time, F...]``.
        name: optional name of the output node.

    Returns:
        ``[batch, F...]`` Var.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x, m = g.placeholder("x", ("batch", "time", 1)), mask_placeholder(g, allow_empty_rows=True)
    >>> g.run({"x": [[[1.0], [2.0], [np.nan]], [[5.0], [6.0], [7.0]]], "mask": [[1, 1, 0], [0, 0, 0]]},
    ...       sum_pool(Masked(x, m)))
    array([[3.],
           [0.]], dtype=float32)
    """
    x = require_masked(x, "sum_pool")
    return ops.sum(x.zeroed(), 1, name=name)


def mean_pool(x: Masked, name: str | None = None) -> Var:
    """Mean over the valid time steps: ``[batch, time, F...] -> [batch, F...]``.

    Definition: ``out[b] = sum_{t: mask[b,t]=1} x[b, t] / max(count_b, 1)``: it divides by the valid count,
    not the padded length; padded values are selected away (NaN/inf there is harmless); a fully padded row
    gives zeros with zero (finite) gradients, not 0/0.

    Args:
        x: Masked ``[batch, time, F...]``.
        name: optional name of the output node.

    Returns:
        ``[batch, F...]`` Var.
    """
    x = require_masked(x, "mean_pool")
    _, denom = valid_counts(x.mask)
    return ops.divide(ops.sum(x.zeroed(), 1), _per_row(denom, x.value.rank - 1), name=name)


def max_pool(x: Masked, name: str | None = None) -> Var:
    """Maximum over the valid time steps: ``[batch, time, F...] -> [batch, F...]``; a fully padded row gives 0.

    Padded positions are replaced by ``-inf`` (a select: valid values are untouched, padded ones are never
    read), and rows with no valid position are selected to 0, so their gradient is 0.

    Args:
        x: Masked ``[batch, time, F...]``.
        name: optional name of the output node.

    Returns:
        ``[batch, F...]`` Var.
    """
    x = require_masked(x, "max_pool")
    pooled = ops.max(select_valid(x.value, x.mask, fill=-np.inf), 1)  # [batch, F...]
    count, _ = valid_counts(x.mask)  # [batch, 1]
    has_any = ops.greater(ops.add(_per_row(count, pooled.rank), ops.zeros_like(pooled)), 0.5)
    return ops.where(has_any, pooled, ops.zeros_like(pooled), name=name, same_shape=True)
