"""Zeroing padded positions exactly and fast, and the row gathers masked layers are built from.

``zero_padding(value, mask)`` is one elementwise op, libnd4j's ``divide_no_nan(value, factor)`` with the mask as
a ``[batch, time, 1...]`` factor: ``x / 1`` is ``x`` (NaN, inf and -0.0 included, bit for bit; only a signalling
NaN comes out quiet) and a padded position is exactly +0.0 whatever it held (``x * mask`` gives NaN for NaN or
inf there). The mask must hold exactly 0 and 1 (feeds are checked; a derived mask must keep to it: 0.5 would
double the value). Its gradient (registered for the JVM, ``FixedOps.ZeroPadded``) is the same op on the upstream
gradient: exactly 0 into padding, even for a NaN upstream, and none into the mask. At ``[32, 128, 128]``
float32 it takes ~0.35 ms forward, where the row gather it replaces took ~1 ms in four ops (libnd4j's
elementwise ``select``: 39 ms); bench/FINDINGS.md.

``mask_rows(value, mask, fill)`` (a filler other than 0) gathers the ``[batch * time, F]`` rows of ``value`` and
one filler row, padded positions reading the filler; its gradient is a gather too: each row is read by its own
position or by none, so row ``r`` gets position ``r``'s upstream gradient if ``r`` is valid, else exactly 0,
with no scatter-add (``gather_rows(offsets=...)``).
This module also records which values are already zero at padding (zeroing them again is skipped) and which
were reshaped to their mask's own batch and time (their zeroing needs no run-time check).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _jvm, arrays, ops
from ..errors import MaskError
from ..graph import Var

__all__ = ["mask_factor", "mask_rows", "zero_padding"]


def _memo(graph, kind: str) -> dict:
    """One of the graph's records (``Graph.memo``), keyed by Var (identity).

    ``row_index``: mask -> its row index; ``zero``: value -> the mask whose padded positions it holds as exact
    0; ``shape``: (mask, rest) -> the ``[batch, time, *rest]`` shape Var; ``shaped``: value -> the mask whose
    batch and time it has (reshaped to them, or checked against them); ``factor``: (mask, rank, dtype) -> the
    mask as a factor for such values (:func:`mask_factor`).
    """
    return graph.memo.setdefault("masked." + kind, {})


def _seq():
    return _jvm.jclass("samediffpy.Sequences")


def row_index(mask: Var) -> Var:
    """Each valid position's own row, ``batch * time`` (the zero row) at padding; built once per mask.

    Args:
        mask: ``[batch, time]`` float mask (1 = valid).

    Returns:
        ``[batch * time]`` int32 Var.
    """
    g = mask.graph
    memo = _memo(g, "row_index")
    idx = memo.get(mask)
    if idx is None:
        idx = g.op("mask_row_index", None, lambda n: _seq().maskRowIndex(g.sd, n, mask.j), (None,), np.int32, (mask,))
        memo[mask] = idx
    return idx


def gather_rows(
    flat: Var,
    index: Var,
    name: str | None = None,
    fill: float = 0.0,
    offsets: Sequence[int] | None = None,
    check_length: bool = True,
) -> Var:
    """``[rows of flat; a filler row][index]``: an index equal to ``n`` reads ``fill``.

    Args:
        flat: ``[n, F]`` Var.
        index: ``[m]`` int32 row indices in ``[0, n]``.
        name: optional name of the output node.
        fill: the filler row's value.
        offsets: the caller's promise about ``index`` (``k = len(offsets)``, ``m = n * k``): ``index[p*k + j]``
            is ``p + offsets[j]`` or ``n``, as :func:`row_index` builds it (``[0]``). Each row
            is then read at most once per ``j``, and the gradient is a gather by the inverse index instead of
            libnd4j's scatter-add (~1 us per row). None: any index.
        check_length: with ``offsets``, check ``m == n * k`` at run time (an error instead of wrong rows when a
            value's batch x time differs from its mask's). False only where ``flat``'s rows are those of a value
            reshaped to the index's mask's own ``[batch, time]`` (:func:`shaped_by`): four fewer op executions.

    Returns:
        ``[m, F]`` Var of ``flat``'s dtype.
    """
    g = flat.graph
    if flat.rank != 2 or index.rank != 1:
        raise ValueError(f"gather_rows takes [n, F] rows and an [m] index, got shapes {flat.shape} and {index.shape}")
    if offsets is None:
        build = lambda nm: _seq().gatherRows(g.sd, nm, flat.j, index.j, float(fill))  # noqa: E731
    else:
        shifts = [int(o) for o in offsets]
        check = bool(check_length)
        build = lambda nm: _seq().gatherRowsShifted(g.sd, nm, flat.j, index.j, float(fill), shifts, check)  # noqa: E731
    return g.op("gather_rows", name, build, (index.shape[0], flat.shape[1]), flat.dtype, (flat, index))


def unflatten(flat: Var, mask: Var, rest: tuple[int, ...], name: str | None = None) -> Var:
    """``[batch * time, prod(rest)] -> [batch, time, *rest]`` (batch and time from the mask at run time).

    The target shape is built once per mask and ``rest`` (three op executions), then each unflatten is one
    reshape.

    Args:
        flat: ``[batch * time, prod(rest)]`` Var.
        mask: ``[batch, time]`` mask giving the sizes.
        rest: the trailing sizes.
        name: optional name of the output node.

    Returns:
        ``[batch, time, *rest]`` Var of ``flat``'s dtype.
    """
    g = flat.graph
    rest = tuple(int(r) for r in rest)
    shapes = _memo(g, "shape")
    shape = shapes.get((mask, rest))
    if shape is None:
        build = lambda n: _seq().maskedShape(g.sd, mask.j, list(rest))  # noqa: E731
        shape = shapes[mask, rest] = g.op("masked_shape", None, build, (2 + len(rest),), np.int64, (mask,))
    out = g.op(
        "unflatten",
        name,
        lambda n: g.sd.reshape(n, flat.j, shape.j),
        (mask.shape[0], mask.shape[1], *rest),
        flat.dtype,
        (flat, shape),
    )
    return mark_shaped(out, mask)


def shaped_by(value: Var, mask: Var) -> bool:
    """Whether ``value``'s batch and time are known to be ``mask``'s (:func:`mark_shaped`).

    Reshaped to them (:func:`unflatten`), checked against them (:func:`zero_padding`), or passed on by an op
    that keeps them (a stride-1 convolution, an elementwise activation).

    Args:
        value: a Var.
        mask: a ``[batch, time]`` mask.

    Returns:
        True if so.
    """
    return _memo(value.graph, "shaped").get(value) is mask


def mark_zero_padded(value: Var, mask: Var) -> Var:
    """Record that ``value`` holds exact zeros at ``mask``'s padded positions (so zeroing it again is skipped).

    Args:
        value: ``[batch, time, ...]`` Var.
        mask: its ``[batch, time]`` mask.

    Returns:
        ``value``.
    """
    _memo(value.graph, "zero")[value] = mask
    return value


def is_zero_padded(value: Var, mask: Var) -> bool:
    """Whether ``value`` was recorded as holding exact zeros at ``mask``'s padded positions.

    Args:
        value: ``[batch, time, ...]`` Var.
        mask: a ``[batch, time]`` mask.

    Returns:
        True if :func:`mark_zero_padded` recorded this pair.
    """
    return _memo(value.graph, "zero").get(value) is mask


def mask_rows(value: Var, mask: Var, name: str | None = None, fill: float = 0.0) -> Var:
    """``value`` with its padded positions (``mask == 0``) set to exactly ``fill``.

    Args:
        value: ``[batch, time, F...]`` Var with ``F...`` known when building.
        mask: ``[batch, time]`` mask (0/1).
        name: optional name of the output node.
        fill: the value at padded positions.

    Returns:
        Var of ``value``'s shape and dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph, masked
    >>> g = Graph()
    >>> x = g.placeholder("x", ("batch", "time", 2))
    >>> m = masked.mask_placeholder(g, "mask")
    >>> g.run({"x": [[[1.0, 2.0], [np.nan, np.inf]]], "mask": [[1, 0]]}, mask_rows(x, m))
    array([[[1., 2.],
            [0., 0.]]], dtype=float32)
    """
    if value.rank < 2 or mask.rank != 2:
        raise MaskError(f"mask_rows takes a [batch, time, ...] value and a [batch, time] mask, got {value.shape}")
    rest = value.shape[2:]
    if None in rest:
        raise ValueError(f"mask_rows needs the feature dims of {value.name!r} known when building, got {value.shape}")
    if not shaped_by(value, mask):
        # the gather's own length check compares batch x time only: check the dims exactly first (the divide
        # changes nothing the gather reads: valid positions stay bit for bit, padded ones read the filler)
        value = _divide(value, mask)
    rows = ops.reshape(value, (-1, int(np.prod(rest)) if rest else 1))
    flat = gather_rows(rows, row_index(mask), fill=fill, offsets=[0], check_length=False)
    out = unflatten(flat, mask, tuple(rest), name=name)
    return out if fill != 0.0 else mark_zero_padded(out, mask)


def valid_condition(mask: Var, like: Var) -> Var:
    """A bool Var of ``like``'s shape: True at valid positions (libnd4j's select does not broadcast).

    The mask is first reshaped to ``like``'s own batch and time, so a mask of batch or time 1 against a larger
    value fails at run time instead of being broadcast (a mask for other rows).

    Args:
        mask: ``[batch, time]`` float mask (1 = valid).
        like: ``[batch, time, ...]`` Var whose shape the result takes.

    Returns:
        bool Var of ``like``'s shape.
    """
    g = mask.graph
    build = lambda n: _seq().maskAs(g.sd, n, mask.j, like.j)  # noqa: E731
    m = g.op("mask_must_match_value", None, build, (like.shape[0], like.shape[1]), mask.dtype, (mask, like))
    for _ in range(like.rank - 2):
        m = ops.expand_dims(m, -1)
    return ops.greater(ops.add(m, ops.zeros_like(like, dtype=mask.dtype)), 0.5)


def select_where(value: Var, mask: Var, fill: float = 0.0) -> Var:
    """``value`` at valid positions, ``fill`` at padded ones, by libnd4j's elementwise select.

    ~15x slower than :func:`mask_rows`; for values whose feature dims are unknown when building.

    Args:
        value: ``[batch, time, ...]`` Var.
        mask: ``[batch, time]`` float mask (1 = valid).
        fill: the value at padded positions.

    Returns:
        Var of ``value``'s shape and dtype.
    """
    filler = ops.zeros_like(value) if fill == 0.0 else ops.add(ops.zeros_like(value), fill)
    return ops.where(valid_condition(mask, value), value, filler, same_shape=True)


def mask_factor(mask: Var, like: Var) -> Var:
    """The mask as a ``[batch, time, 1...]`` factor of ``like``'s rank and dtype (1 = valid).

    Checked against ``like``'s own batch and time at run time: a mask of batch or time 1 against a larger value,
    or one of the same size with other dims, fails there (the op ``mask_must_match_value`` is named in the
    error) instead of being broadcast over other rows or read in another order. For a value :func:`shaped_by`
    the mask, the factor is built once per mask, rank and dtype.

    Args:
        mask: ``[batch, time]`` float mask (1 = valid).
        like: ``[batch, time, ...]`` Var.

    Returns:
        Var of rank ``like.rank`` and ``like``'s dtype.
    """
    g = mask.graph
    dtype = _jvm.dtype_enum(arrays.ND4J_DTYPES[np.dtype(like.dtype)])
    shape = (like.shape[0], like.shape[1]) + (1,) * (like.rank - 2)
    if not shaped_by(like, mask):
        build = lambda n: _seq().maskFactor(g.sd, n, mask.j, like.j, like.rank, dtype)  # noqa: E731
        return g.op("mask_must_match_value", None, build, shape, like.dtype, (mask, like))
    key = (mask, like.rank, np.dtype(like.dtype).name)
    factors = _memo(g, "factor")
    if key not in factors:
        build = lambda n: _seq().maskFactor(g.sd, n, mask.j, None, like.rank, dtype)  # noqa: E731
        factors[key] = g.op("mask_factor", None, build, shape, like.dtype, (mask,))
    return factors[key]


def mark_shaped(value: Var, mask: Var) -> Var:
    """Record that ``value``'s batch and time are ``mask``'s own (see :func:`shaped_by`).

    Args:
        value: ``[batch, time, ...]`` Var.
        mask: its ``[batch, time]`` mask.

    Returns:
        ``value``.
    """
    _memo(value.graph, "shaped")[value] = mask
    return value


def zero_padding(value: Var, mask: Var, name: str | None = None) -> Var:
    """``value`` with exact zeros at padded positions, and exactly its own values (NaN, inf, -0.0) elsewhere.

    ``value`` itself if it is already known to hold them (and no ``name`` is asked for); else one
    ``divide_no_nan(value, factor)`` (:func:`mask_factor`; the module docstring). The gradient into padded
    positions is exactly 0; the mask (exactly 0/1) gets none.

    Args:
        value: ``[batch, time, ...]`` Var (its trailing dims may be unknown).
        mask: ``[batch, time]`` mask (0/1).
        name: optional name of the output node.

    Returns:
        Var of ``value``'s shape and dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph, masked
    >>> g = Graph()
    >>> x = g.placeholder("x", ("batch", "time", 2))
    >>> m = masked.mask_placeholder(g, "mask")
    >>> g.run({"x": [[[1.0, -0.0], [np.nan, np.inf]]], "mask": [[1, 0]]}, zero_padding(x, m))
    array([[[ 1., -0.],
            [ 0.,  0.]]], dtype=float32)
    """
    if name is None and is_zero_padded(value, mask):
        return value
    if value.rank < 2 or mask.rank != 2:
        raise MaskError(f"zero_padding takes a [batch, time, ...] value and a [batch, time] mask, got {value.shape}")
    return _divide(value, mask, name)


def _divide(value: Var, mask: Var, name: str | None = None) -> Var:
    """``divide_no_nan(value, mask_factor(mask, value))``, marked zero-padded and shaped by the mask."""
    g = value.graph
    factor = mask_factor(mask, value)
    fixed = _jvm.jclass("samediffpy.FixedOps")
    out = g.op(
        "zero_padding",
        name,
        lambda n: fixed.zeroPadded(g.sd, n, value.j, factor.j),
        value.shape,
        value.dtype,
        (value, factor),
    )
    return mark_zero_padded(mark_shaped(out, mask), mask)
