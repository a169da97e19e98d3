"""Ops on graph values: one function per op, validation at the top, the SameDiff call at the bottom.

Every function takes :class:`~samediff_py.graph.Var` inputs (numbers and numpy arrays are promoted to
constants of the other operand's dtype), an optional ``name``, and returns a new ``Var`` whose static
``shape`` is computed here, so shape errors surface in Python while the graph is built.

These ops know nothing of masks. Ops that mix time steps of padded sequences (pooling, attention, losses)
live in :mod:`samediff_py.masked`, which refuses to run them on values whose mask it cannot see.

>>> import numpy as np
>>> from samediff_py import Graph, ops
>>> g = Graph()
>>> x = g.placeholder("x", (2, 3))
>>> g.run({"x": np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])}, ops.softmax(x, axis=-1)).round(3)
array([[0.09 , 0.245, 0.665],
       [0.333, 0.333, 0.333]], dtype=float32)
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _jvm, arrays
from .graph import Graph, MaskError, Shape, Var

Operand = Any  # a Var, a Python number or a numpy array


# ---------------------------------------------------------------------------- helpers
def _graph_of(*xs: Operand) -> Graph:
    graphs = {id(x.graph): x.graph for x in xs if isinstance(x, Var)}
    if not graphs:
        raise TypeError("at least one operand must be a graph Var")
    if len(graphs) > 1:
        raise ValueError("operands belong to different graphs")
    return next(iter(graphs.values()))


def _plain(*xs: Any) -> None:
    """Refuse masked values: these ops cannot see masks, and would silently count padding."""
    for x in xs:
        if getattr(x, "__masked__", False):
            raise MaskError(
                f"samediff_py.ops cannot take the masked value {x!r}: it would ignore its mask. Use the op from "
                "samediff_py.masked, Masked.map(fn) for per-position functions, or .value to drop the mask explicitly."
            )


def _lift(x: Operand, like: Var) -> Var:
    """``x`` as a Var of ``like``'s graph; numbers and arrays become constants of ``like``'s dtype."""
    _plain(x)
    if isinstance(x, Var):
        return x
    value = np.asarray(x)
    if value.dtype.kind not in "biuf":
        raise TypeError(f"cannot use {type(x).__name__} {x!r} as a graph operand")
    cast = value.astype(like.dtype)
    if not np.array_equal(cast, value) and not (like.dtype.kind == "f" and value.dtype.kind in "biuf"):
        raise TypeError(f"{x!r} does not fit {like.name!r}'s dtype {like.dtype}; cast the Var first (.astype)")
    return like.graph.constant(None, cast)


def _pair(a: Operand, b: Operand) -> tuple[Var, Var]:
    _plain(a, b)
    like = a if isinstance(a, Var) else b
    if not isinstance(like, Var):
        raise TypeError("at least one operand must be a graph Var")
    _graph_of(a, b)
    a, b = _lift(a, like), _lift(b, like)
    if a.dtype != b.dtype:
        raise TypeError(f"dtype mismatch: {a.name!r} is {a.dtype}, {b.name!r} is {b.dtype}; cast one with .astype()")
    return a, b


def broadcast_shapes(a: Shape, b: Shape) -> Shape:
    """Numpy broadcasting of two static shapes, with ``None`` for unknown sizes.

    Args:
        a: a shape (tuple of ints or ``None``).
        b: another shape.

    Returns:
        The broadcast shape; an unknown size broadcasts to the other operand's size unless that is 1.

    Raises:
        ValueError: if known sizes differ and neither is 1.
    """
    out: list[int | None] = []
    for i in range(builtins.max(len(a), len(b))):
        x = a[len(a) - 1 - i] if i < len(a) else 1
        y = b[len(b) - 1 - i] if i < len(b) else 1
        if x == 1:
            out.append(y)
        elif y == 1 or y is None:
            out.append(x)
        elif x is None:
            out.append(y)
        elif x == y:
            out.append(x)
        else:
            raise ValueError(f"shapes {_fmt(a)} and {_fmt(b)} do not broadcast (axis {-1 - i}: {x} vs {y})")
    return tuple(reversed(out))


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _axis(a: int, rank: int, what: str) -> int:
    """``a`` normalised to ``[0, rank)``; out of range is an error (numpy's rule), never a silent wrap."""
    if not isinstance(a, (int, np.integer)) or not -rank <= a < rank:
        raise ValueError(f"axis {a!r} is out of range for {what} of rank {rank}")
    return int(a) % rank


def _axes(x: Var, axis: int | Sequence[int] | None) -> list[int]:
    if axis is None:
        return list(range(x.rank))
    items = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    out = [_axis(a, x.rank, repr(x.name)) for a in items]
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis!r}")
    return sorted(out)


def _dt(dtype: Any) -> Any:
    return _jvm.dtype_enum(arrays.ND4J_DTYPES[arrays.check_dtype(dtype)])


def _binary(base: str, a: Operand, b: Operand, method: str, name: str | None, result_dtype=None) -> Var:
    a, b = _pair(a, b)
    shape = broadcast_shapes(a.shape, b.shape)
    return a.graph.op(base, name, lambda n: getattr(a.j, method)(n, b.j), shape, result_dtype or a.dtype, (a, b))


def _float_and_number(a: Operand, b: Operand) -> tuple[Var, float] | None:
    """``(var, number)`` if one operand is a floating-point Var and the other a Python number (either order)."""
    for v, c in ((a, b), (b, a)):
        if isinstance(v, Var) and v.dtype.kind == "f" and isinstance(c, (int, float)) and not isinstance(c, bool):
            return v, float(c)
    return None


def _unary(base: str, x: Var, build, name: str | None) -> Var:
    _plain(x)
    if not isinstance(x, Var):
        raise TypeError(f"{base} expects a graph Var, got {type(x).__name__}")
    return x.graph.op(base, name, build, x.shape, x.dtype, (x,))


# ---------------------------------------------------------------------------- arithmetic
def add(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a + b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        Var of the broadcast shape, in the operands' dtype.
    """
    _plain(a, b)
    scalar = _float_and_number(a, b)
    if scalar is not None:
        # a scalar op: its gradient is the upstream one as it is, where M2.1's add_bp against a constant also
        # reduces the whole upstream gradient for the constant (0.4 ms at [4096, 128])
        v, c = scalar
        return v.graph.op("add", name, lambda n: v.j.add(n, c), v.shape, v.dtype, (v,))
    return _binary("add", a, b, "add", name)


def subtract(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a - b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        Var of the broadcast shape, in the operands' dtype.
    """
    return _binary("sub", a, b, "sub", name)


def multiply(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a * b`` with numpy broadcasting.

    A number is applied as a scalar op, and an operand that broadcasts along the other's leading axes (a gain
    ``[features]``) is tiled to its shape first: M2.1's broadcasting ``mul_bp`` is slow (a BERT training step
    is 10-20 % faster this way); values and gradients are the same.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        Var of the broadcast shape, in the operands' dtype.
    """
    _plain(a, b)
    scalar = _float_and_number(a, b)
    if scalar is not None:
        # a scalar op: M2.1's broadcasting mul_bp also reduces the upstream gradient for the constant
        v, c = scalar
        return v.graph.op("mul", name, lambda n: v.j.mul(n, c), v.shape, v.dtype, (v,))
    a, b = _pair(a, b)
    if a.rank < b.rank:
        a, b = b, a
    if 1 <= b.rank < a.rank and a.dtype.kind == "f":
        # b broadcasts along a's leading axes (a gain [features] on [batch, time, features]): M2.1's mul_bp
        # reduces that broadcast slowly (8 ms for [4096, 128] * [128]), add_bp quickly, so b is tiled to a's
        # shape by an add first (2.5 ms in all; same values and gradients: tests/test_ops.py)
        b = add(zeros_like(a), b)
    return _binary("mul", a, b, "mul", name)


def divide(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a / b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        Var of the broadcast shape, in the operands' dtype.
    """
    return _binary("div", a, b, "div", name)


def negative(x: Var, name: str | None = None) -> Var:
    """Elementwise ``-x``.

    Args:
        x: Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    return _unary("neg", x, lambda n: x.j.neg(n), name)


def less(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a < b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        bool Var of the broadcast shape.
    """
    return _binary("lt", a, b, "lt", name, np.bool_)


def less_equal(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a <= b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        bool Var of the broadcast shape.
    """
    return _binary("lte", a, b, "lte", name, np.bool_)


def greater(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a > b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        bool Var of the broadcast shape.
    """
    return _binary("gt", a, b, "gt", name, np.bool_)


def greater_equal(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a >= b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        bool Var of the broadcast shape.
    """
    return _binary("gte", a, b, "gte", name, np.bool_)


def equal(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a == b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        bool Var of the broadcast shape.
    """
    return _binary("eq", a, b, "eq", name, np.bool_)


def not_equal(a: Operand, b: Operand, name: str | None = None) -> Var:
    """Elementwise ``a != b`` with numpy broadcasting.

    Args:
        a: Var, number or numpy array (numbers and arrays become constants of the other operand's dtype).
        b: the same; at least one of ``a``, ``b`` must be a Var, and two Vars must share a dtype.
        name: optional name of the output node.

    Returns:
        bool Var of the broadcast shape.
    """
    return _binary("neq", a, b, "neq", name, np.bool_)


def matmul(a: Var, b: Var, name: str | None = None, *, transpose_b: bool = False) -> Var:
    """Matrix product ``[m, k] @ [k, n] -> [m, n]``, or ``[..., k] @ [k, n] -> [..., n]`` for any rank of ``a``.

    SameDiff's ``mmul`` does not accept the second form (e.g. ``[batch, time, d] @ [d, e]``) directly.
    ``transpose_b=True`` multiplies by ``b.T`` for a ``b`` of shape ``[n, k]`` (e.g. a tied ``[vocab, d]``
    embedding as an output projection) without materialising the transpose.

    Args:
        a: ``[..., k]`` Var of rank >= 2.
        b: ``[k, n]`` Var (``[n, k]`` with ``transpose_b``), same dtype; its shape must be known when ``a`` has
            rank > 2.
        name: optional name of the output node.
        transpose_b: multiply by ``b.T``.

    Returns:
        ``[..., n]`` Var of ``a``'s dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", ("batch", "time", 2))
    >>> emb = g.constant("emb", np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))  # [vocab, d]
    >>> g.run({"x": [[[2.0, 3.0]]]}, matmul(x, emb, transpose_b=True))
    array([[[2., 3., 5.]]], dtype=float32)
    """
    a, b = _pair(a, b)
    if b.rank != 2 or a.rank < 2:
        raise ValueError(f"matmul needs a of rank >= 2 and b of rank 2, got {_fmt(a.shape)} @ {_fmt(b.shape)}")
    k, n = b.shape[::-1] if transpose_b else b.shape
    if a.shape[-1] is not None and k is not None and a.shape[-1] != k:
        bt = f"{_fmt(b.shape)}.T" if transpose_b else _fmt(b.shape)
        raise ValueError(f"matmul: inner dimensions differ: {_fmt(a.shape)} @ {bt}")
    shape = (*a.shape[:-1], n)
    if k == 1:
        # an inner dimension of 1 is an outer product: [..., 1] * [1, n] broadcasts to [..., n]. Not mmul:
        # M2.1's matmul_bp throws for [1, 1] @ [1, 1] (a one-row batch through a one-feature layer)
        return multiply(a, b, name=name)
    if a.rank == 2:
        if transpose_b:
            return a.graph.op("matmul", name, lambda nm: _jvm.bridge().matmulT(a.graph.sd, nm, a.j, b.j), shape,
                              a.dtype, (a, b))  # fmt: skip
        return a.graph.op("matmul", name, lambda nm: a.j.mmul(nm, b.j), shape, a.dtype, (a, b))
    if k is None or n is None:
        raise ValueError("matmul of rank > 2 needs the weight's shape known when building")
    fn = _jvm.bridge().matmulLastT if transpose_b else _jvm.bridge().matmulLast
    return a.graph.op(
        "matmul",
        name,
        lambda nm: fn(a.graph.sd, nm, a.j, b.j, a.rank, k, n),
        shape,
        a.dtype,
        (a, b),
    )


# ---------------------------------------------------------------------------- reductions
def _reduce(op: str, x: Var, axis, keepdims: bool, name: str | None) -> Var:
    _plain(x)
    if axis is not None and not isinstance(axis, (int, np.integer)) and len(axis) == 0:
        return x  # numpy: reducing over no axis is the identity (SameDiff would reduce over all)
    axes = _axes(x, axis)
    shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keepdims or i not in axes)
    if x.rank == 2 and len(axes) == 1:
        (ax,) = axes
        size, other = x.shape[ax], x.shape[1 - ax]
        if size in (None, 1) and other != 1:
            # M2.1 bug: reducing a [1, n] array over axis 0, or [n, 1] over axis 1 (n > 1), throws a
            # NullPointerException at run time (nd4j treats the row/column as a vector). Rank 3 is fine, so
            # reduce [a, b, 1] over (ax, 2) instead. Taken whenever the sizes are not known to be safe (e.g. a
            # batch of one): tests/test_ops.py::test_reduction_over_unit_axis_of_rank2.
            g = x.graph
            x3 = g.op(f"{op}_in", None, lambda n: _jvm.bridge().stack(g.sd, n, 2, [x.j]), (*x.shape, 1), x.dtype, (x,))
            flat = g.op(
                f"{op}_flat" if keepdims else op,
                None if keepdims else name,
                lambda n: _jvm.bridge().reduce(g.sd, op, n, x3.j, False, [ax, 2]),
                (other,),
                x.dtype,
                (x3,),
            )
            if not keepdims:
                return flat
            return g.op(op, name, lambda n: _jvm.bridge().stack(g.sd, n, ax, [flat.j]), shape, x.dtype, (flat,))
    return x.graph.op(
        op, name, lambda n: _jvm.bridge().reduce(x.graph.sd, op, n, x.j, bool(keepdims), axes), shape, x.dtype, (x,)
    )


def sum(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False, name: str | None = None) -> Var:  # noqa: A001
    """Sum over ``axis`` (all axes if ``None``).

    Args:
        x: Var to reduce.
        axis: an axis, a sequence of axes, or ``None`` for all axes (``()`` returns ``x`` unchanged, as in numpy).
        keepdims: keep the reduced axes with size 1.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s dtype and shape without ``axis`` (size 1 there with ``keepdims``).
    """
    return _reduce("sum", x, axis, keepdims, name)


def mean(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False, name: str | None = None) -> Var:
    """Arithmetic mean over ``axis`` (all axes if ``None``).

    For padded sequences use :func:`samediff_py.masked.mean_pool`, which divides by the valid count.

    Args:
        x: Var to reduce.
        axis: an axis, a sequence of axes, or ``None`` for all axes (``()`` returns ``x`` unchanged, as in numpy).
        keepdims: keep the reduced axes with size 1.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s dtype and shape without ``axis`` (size 1 there with ``keepdims``).
    """
    return _reduce("mean", x, axis, keepdims, name)


def max(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False, name: str | None = None) -> Var:  # noqa: A001
    """Maximum over ``axis`` (all axes if ``None``).

    Args:
        x: Var to reduce.
        axis: an axis, a sequence of axes, or ``None`` for all axes (``()`` returns ``x`` unchanged, as in numpy).
        keepdims: keep the reduced axes with size 1.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s dtype and shape without ``axis`` (size 1 there with ``keepdims``).
    """
    return _reduce("max", x, axis, keepdims, name)


def min(x: Var, axis: int | Sequence[int] | None = None, keepdims: bool = False, name: str | None = None) -> Var:  # noqa: A001
    """Minimum over ``axis`` (all axes if ``None``).

    Args:
        x: Var to reduce.
        axis: an axis, a sequence of axes, or ``None`` for all axes (``()`` returns ``x`` unchanged, as in numpy).
        keepdims: keep the reduced axes with size 1.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s dtype and shape without ``axis`` (size 1 there with ``keepdims``).
    """
    return _reduce("min", x, axis, keepdims, name)


def cumsum(x: Var, axis: int, exclusive: bool = False, reverse: bool = False, name: str | None = None) -> Var:
    """Cumulative sum along ``axis`` (``np.cumsum``).

    Args:
        x: Var of any shape.
        axis: the axis to sum along.
        exclusive: start from 0 (``[0, x0, x0+x1, ...]``).
        reverse: sum from the end.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> m = g.placeholder("m", (1, 4))
    >>> g.run({"m": [[0.0, 1.0, 1.0, 1.0]]}, cumsum(m, 1))
    array([[0., 1., 2., 3.]], dtype=float32)
    """
    _plain(x)
    ax = _axis(axis, x.rank, repr(x.name))
    g = x.graph
    return g.op(
        "cumsum",
        name,
        lambda n: _jvm.jclass("samediffpy.Sequences").cumsum(g.sd, n, x.j, bool(exclusive), bool(reverse), ax),
        x.shape,
        x.dtype,
        (x,),
    )


# ---------------------------------------------------------------------------- shape ops
def reshape(x: Var, shape: Sequence[int], name: str | None = None) -> Var:
    """Reshape (C order); one entry may be -1.

    Args:
        x: Var; input dims unknown when building must map to -1.
        shape: the new shape (ints, at most one -1).
        name: optional name of the output node.

    Returns:
        Var of ``shape`` (the -1 resolved when ``x``'s shape is known) and ``x``'s dtype.
    """
    _plain(x)
    shape = [int(s) for s in shape]
    if negative_dims := [s for s in shape if s < 0]:
        if len(negative_dims) > 1 or negative_dims[0] != -1:
            raise ValueError(f"reshape: at most one -1 allowed, got {shape}")
    known = None not in x.shape
    if known:
        total = int(np.prod(x.shape))
        fixed = int(np.prod([s for s in shape if s >= 0]))
        if -1 in shape:
            if fixed == 0 or total % fixed:
                raise ValueError(f"cannot reshape {_fmt(x.shape)} into {shape}")
        elif fixed != total:
            raise ValueError(f"cannot reshape {_fmt(x.shape)} ({total} elements) into {shape}")
        out = tuple(total // fixed if s == -1 else s for s in shape)
    else:
        out = tuple(None if s == -1 else s for s in shape)
    return x.graph.op("reshape", name, lambda n: _jvm.bridge().reshape(x.graph.sd, n, x.j, shape), out, x.dtype, (x,))


def reshape_tail(x: Var, keep: int, tail: Sequence[int], name: str | None = None) -> Var:
    """Keep the first ``keep`` axes of ``x`` and reshape the rest to ``tail``.

    The kept sizes are read at run time, so they may be unknown when building: ``[B, T, H * hs] -> [B, T, H, hs]``
    is ``reshape_tail(x, 2, (H, hs))``.

    Args:
        x: Var whose trailing axes hold ``prod(tail)`` elements.
        keep: number of leading axes kept, in ``[0, x.rank]``.
        tail: the new trailing sizes (each >= 1).
        name: optional name of the output node.

    Returns:
        ``[*x.shape[:keep], *tail]`` Var of ``x``'s dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", (None, None, 4))
    >>> reshape_tail(x, 2, (2, 2)).shape
    (None, None, 2, 2)
    >>> g.run({"x": np.arange(8.0).reshape(1, 2, 4)}, reshape_tail(x, 1, (8,)))
    array([[0., 1., 2., 3., 4., 5., 6., 7.]], dtype=float32)
    """
    _plain(x)
    keep = int(keep)
    tail = [int(t) for t in tail]
    if not 0 <= keep <= x.rank or any(t < 1 for t in tail):
        raise ValueError(f"reshape_tail: keep must be in [0, {x.rank}] and tail sizes >= 1, got {keep}, {tail}")
    rest = x.shape[keep:]
    if None not in rest and int(np.prod(rest)) != int(np.prod(tail)):
        raise ValueError(f"reshape_tail: cannot reshape the trailing axes {_fmt(rest)} of {x.name!r} into {tail}")
    g = x.graph
    return g.op("reshape", name, lambda n: _jvm.bridge().reshapeTail(g.sd, n, x.j, keep, tail),
                (*x.shape[:keep], *tail), x.dtype, (x,))  # fmt: skip


def transpose(x: Var, axes: Sequence[int] | None = None, name: str | None = None) -> Var:
    """Permute axes, like ``np.transpose``.

    Args:
        x: Var of any rank.
        axes: a permutation of ``range(x.rank)``; ``None`` reverses the axes.
        name: optional name of the output node.

    Returns:
        Var with ``shape[i] = x.shape[axes[i]]``, ``x``'s dtype.
    """
    _plain(x)
    perm = list(range(x.rank))[::-1] if axes is None else [_axis(a, x.rank, repr(x.name)) for a in axes]
    if sorted(perm) != list(range(x.rank)):
        raise ValueError(f"transpose: {axes!r} is not a permutation of {x.rank} axes")
    shape = tuple(x.shape[p] for p in perm)
    return x.graph.op("permute", name, lambda n: _jvm.bridge().permute(x.graph.sd, n, x.j, perm), shape, x.dtype, (x,))


def concat(xs: Sequence[Var], axis: int = 0, name: str | None = None) -> Var:
    """Join along an existing axis.

    Args:
        xs: Vars of one rank and dtype, equal sizes except along ``axis``.
        axis: the axis to join along.
        name: optional name of the output node.

    Returns:
        Var whose ``axis`` size is the sum of the inputs' sizes.
    """
    xs = list(xs)
    _plain(*xs)
    g = _graph_of(*xs)
    r = xs[0].rank
    if any(v.rank != r for v in xs) or len({v.dtype for v in xs}) != 1:
        raise ValueError("concat: all inputs need the same rank and dtype")
    axis = _axis(axis, r, "concat inputs")
    shape = []
    for i in range(r):
        dims = [v.shape[i] for v in xs]
        if i == axis:
            shape.append(None if None in dims else int(np.sum(dims)))
        else:
            known = {d for d in dims if d is not None}
            if len(known) > 1:
                raise ValueError(f"concat: axis {i} sizes differ: {dims}")
            shape.append(known.pop() if known else None)
    return g.op(
        "concat", name, lambda n: _jvm.bridge().concat(g.sd, n, axis, [v.j for v in xs]), shape, xs[0].dtype, xs
    )


def stack(xs: Sequence[Var], axis: int = 0, name: str | None = None) -> Var:
    """Join along a new axis.

    Args:
        xs: Vars of one shape and dtype.
        axis: position of the new axis in the result.
        name: optional name of the output node.

    Returns:
        Var of ``x.shape`` with ``len(xs)`` inserted at ``axis``.
    """
    xs = list(xs)
    _plain(*xs)
    g = _graph_of(*xs)
    base = xs[0].shape
    if any(v.shape != base or v.dtype != xs[0].dtype for v in xs):
        raise ValueError("stack: all inputs need the same shape and dtype")
    axis = _axis(axis, len(base) + 1, "the stacked result")
    shape = (*base[:axis], len(xs), *base[axis:])
    return g.op("stack", name, lambda n: _jvm.bridge().stack(g.sd, n, axis, [v.j for v in xs]), shape, xs[0].dtype, xs)


def slice_(x: Var, index: Any, name: str | None = None) -> Var:
    """Basic numpy indexing: ints, slices (any step > 0), ``...``. Used by ``x[...]``.

    Args:
        x: Var of any rank.
        index: an int, slice, ``...`` or a tuple of them; slices are clamped to the size like numpy's.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s dtype, without the int-indexed axes.
    """
    _plain(x)
    idx = index if isinstance(index, tuple) else (index,)
    if builtins.sum(1 for i in idx if i is Ellipsis) > 1:
        raise IndexError("only one ... allowed")
    if Ellipsis in idx:
        k = idx.index(Ellipsis)
        fill = x.rank - (len(idx) - 1)
        idx = idx[:k] + (slice(None),) * fill + idx[k + 1 :]
    if len(idx) > x.rank:
        raise IndexError(f"too many indices for {x.name!r} of rank {x.rank}")
    idx = idx + (slice(None),) * (x.rank - len(idx))
    begin, end, strides, shape = [], [], [], []
    begin_mask = end_mask = shrink = 0
    for axis, (i, n) in enumerate(zip(idx, x.shape)):
        if isinstance(i, (int, np.integer)):
            if n is not None and not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {axis} of size {n}")
            begin.append(int(i))
            end.append(int(i) + 1 if i != -1 else 0)
            if i == -1:
                end_mask |= 1 << axis
            strides.append(1)
            shrink |= 1 << axis
        elif isinstance(i, slice):
            step = 1 if i.step is None else int(i.step)
            if step <= 0:
                raise IndexError("slice steps must be positive")
            start, stop = i.start, i.stop
            if n is not None:  # clamp like numpy: M2.1's stridedSlice throws for an end past the dimension
                start, stop, _ = i.indices(n)
            begin.append(0 if start is None else int(start))
            end.append(0 if stop is None else int(stop))
            strides.append(step)
            begin_mask |= (i.start is None) << axis
            end_mask |= (i.stop is None) << axis
            shape.append(len(range(*i.indices(n))) if n is not None else None)
        else:
            raise IndexError(f"unsupported index {i!r}: use ints, slices and ...")
    return x.graph.op(
        "slice",
        name,
        lambda nm: _jvm.bridge().stridedSlice(x.graph.sd, nm, x.j, begin, end, strides, begin_mask, end_mask, shrink),
        tuple(shape),
        x.dtype,
        (x,),
    )


def expand_dims(x: Var, axis: int, name: str | None = None) -> Var:
    """Insert an axis of size 1.

    Args:
        x: Var of any rank.
        axis: position of the new axis in the result (``-1``: last).
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape with a 1 inserted at ``axis``.
    """
    _plain(x)
    axis = _axis(axis, x.rank + 1, "the expanded result")
    shape = (*x.shape[:axis], 1, *x.shape[axis:])
    # A stack of one array, not M2.1's expandDims: that returns a [1, 1] input unchanged (rank 2, whatever the
    # axis), so e.g. a batch of one [1, 1] mask silently lost its new axis (tests/test_ops.py::test_expand_dims).
    g = x.graph
    return g.op("expand_dims", name, lambda n: _jvm.bridge().stack(g.sd, n, axis, [x.j]), shape, x.dtype, (x,))


def cast(x: Var, dtype: Any, name: str | None = None) -> Var:
    """Convert to ``dtype``.

    Args:
        x: Var of any shape.
        dtype: float32, float64, int32, int64 or bool (numpy dtype or name).
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape in ``dtype``.
    """
    _plain(x)
    dt = arrays.check_dtype(dtype)
    return x.graph.op("cast", name, lambda n: _jvm.bridge().cast(x.graph.sd, n, x.j, _dt(dt)), x.shape, dt, (x,))


def one_hot(ids: Var, depth: int, dtype: Any = None, name: str | None = None) -> Var:
    """One-hot encode integer ids: ``[...]`` -> ``[..., depth]``; ids outside ``[0, depth)`` give all-zero rows.

    Args:
        ids: integer Var ``[...]``.
        depth: number of classes.
        dtype: the result's dtype (default: the graph's float dtype).
        name: optional name of the output node.

    Returns:
        ``[..., depth]`` Var.
    """
    _plain(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"one_hot needs integer ids, got {ids.dtype} for {ids.name!r}")
    dt = arrays.check_dtype(ids.graph.dtype if dtype is None else dtype)
    return ids.graph.op(
        "one_hot",
        name,
        lambda n: _jvm.bridge().oneHot(ids.graph.sd, n, ids.j, int(depth), _dt(dt)),
        (*ids.shape, int(depth)),
        dt,
        (ids,),
    )


def gather(x: Var, ids: Var, axis: int = 0, name: str | None = None) -> Var:
    """Rows of ``x`` picked by integer ``ids``: ``out[i...] = x[ids[i...]]`` (axis 0).

    Like ``np.take(x, ids, axis=0)``. The gradient w.r.t. ``x`` sums the upstream rows of every occurrence of an id
    (``np.add.at``); M2.1's own gather gradient is wrong even for unique ids, so samediff_py registers a fixed op
    class for the whole JVM (``samediffpy.FixedOps``; files still hold a plain ``gather``). Ids must lie in
    ``[0, x.shape[0])``: libnd4j does not check and would read arbitrary memory, so a placeholder's feeds are
    checked in Python.

    Args:
        x: ``[n, ...]`` table, rank >= 1.
        ids: integer Var ``[...]`` of row indices.
        axis: must be 0 (M2.1's gather along other axes fails at run time).
        name: optional name of the output node.

    Returns:
        ``[*ids.shape, *x.shape[1:]]`` Var of ``x``'s dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> table = g.constant("table", np.arange(6.0).reshape(3, 2))
    >>> ids = g.placeholder("ids", ("batch",), "int32")
    >>> g.run({"ids": [2, 0, 2]}, gather(table, ids))
    array([[4., 5.],
           [0., 1.],
           [4., 5.]], dtype=float32)
    """
    _plain(x, ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"gather needs integer ids, got {ids.dtype} for {ids.name!r}")
    if x.rank < 1:
        raise ValueError(f"gather needs a table of rank >= 1, got {_fmt(x.shape)}")
    if _axis(axis, x.rank, repr(x.name)) != 0:
        raise ValueError("gather supports axis=0 only (M2.1's gather along other axes fails at run time)")
    g = _graph_of(x, ids)
    if ids.kind == "placeholder" and x.shape[0] is not None:
        g.add_check("ids", placeholder=ids.name, size=int(x.shape[0]), what=f"{x.name!r} (gather)")
    shape = (*ids.shape, *x.shape[1:])
    return g.op("gather", name, lambda n: _jvm.bridge().gather(g.sd, n, x.j, ids.j, 0), shape, x.dtype, (x, ids))


def embedding(ids: Var, table: Var, name: str | None = None) -> Var:
    """Rows of ``table [vocab, d]`` for integer ``ids [...]`` -> ``[..., d]``.

    A :func:`gather`, whose gradient is sparse in cost (O(tokens x d), not O(tokens x vocab)). Ids outside
    ``[0, vocab)`` fed to a placeholder are refused before the JVM runs, naming the placeholder, position and id.

    Args:
        ids: integer Var ``[...]``, e.g. ``[batch, time]`` tokens.
        table: ``[vocab, d]`` Var with ``vocab`` known when building.
        name: optional name of the output node.

    Returns:
        ``[..., d]`` Var of ``table``'s dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> emb = g.variable("emb", np.eye(3, dtype=np.float32))
    >>> tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    >>> g.run({"tokens": [[3, 1]]}, embedding(tokens, emb))
    Traceback (most recent call last):
    ...
    samediff_py.errors.FeedError: placeholder 'tokens': id 3 at (0, 0) is outside [0, 3) of 'emb' (gather)
    """
    _plain(ids, table)
    if table.rank != 2 or table.shape[0] is None:
        raise ValueError(f"embedding table must be [vocab, d] with known vocab, got {_fmt(table.shape)}")
    return gather(table, ids, 0, name=name)


def range_like(x: Var, step: int = 1, name: str | None = None) -> Var:
    """``[0, step, 2 * step, ...]``: one int64 entry per element of ``x`` (its size read at run time).

    Args:
        x: Var of any shape (only its size is read).
        step: the increment.
        name: optional name of the output node.

    Returns:
        ``[x.size]`` int64 Var.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", (None, None))
    >>> g.run({"x": np.zeros((2, 3))}, range_like(x, 10))
    array([ 0, 10, 20, 30, 40, 50])
    """
    _plain(x)
    like = x if x.dtype == np.int64 else cast(x, np.int64)
    n = None if None in x.shape else int(np.prod(x.shape))
    g = x.graph
    return g.op("range", name, lambda nm: _jvm.bridge().rowOffsets(g.sd, nm, like.j, int(step)), (n,), np.int64,
                (like,))  # fmt: skip


def take_along_last_axis(x: Var, ids: Var, name: str | None = None) -> Var:
    """One entry per row of ``x [..., n]`` picked by integer ``ids [...]``: ``out[i...] = x[i..., ids[i...]]``.

    Like ``np.take_along_axis(x, ids[..., None], -1)[..., 0]``. A :func:`gather` from the flattened ``x`` at
    ``row * n + id`` (no ``[..., n]`` one-hot), so its gradient is ``x``-shaped with the upstream gradient at the
    picked entries and zeros elsewhere. Ids must lie in ``[0, n)`` (not checked at run time for computed ids; a
    placeholder's feeds are checked in Python).

    Args:
        x: ``[..., n]`` Var with ``n`` known when building.
        ids: integer Var ``[...]`` (``x``'s shape without the last axis).
        name: optional name of the output node.

    Returns:
        ``[...]`` Var of ``x``'s dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x = g.constant("x", np.arange(6.0).reshape(2, 3))
    >>> ids = g.placeholder("ids", ("batch",), "int32")
    >>> g.run({"ids": [2, 0]}, take_along_last_axis(x, ids))
    array([2., 3.], dtype=float32)
    """
    _plain(x, ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"take_along_last_axis needs integer ids, got {ids.dtype} for {ids.name!r}")
    if x.rank != ids.rank + 1:
        raise ValueError(f"take_along_last_axis: x {_fmt(x.shape)} must have one axis more than ids {_fmt(ids.shape)}")
    n = x.shape[-1]
    if n is None:
        raise ValueError("take_along_last_axis: the last axis of x must be known when building")
    g = _graph_of(x, ids)
    if ids.kind == "placeholder":
        g.add_check(
            "ids", placeholder=ids.name, size=int(n), what=f"the last axis of {x.name!r} (take_along_last_axis)"
        )
    flat_ids = ids if ids.rank == 1 else reshape(ids, [-1])
    if flat_ids.dtype != np.int64:  # row * n + id overflows int32 beyond 2**31 entries (e.g. 70k rows x 30k)
        flat_ids = cast(flat_ids, np.int64)
    offsets = range_like(flat_ids, int(n))
    flat_x = reshape(x, [-1])
    if ids.rank == 1:
        return gather(flat_x, add(offsets, flat_ids), name=name)
    return reshape_like(gather(flat_x, add(offsets, flat_ids)), ids, name=name)


def sparse_softmax_cross_entropy(logits: Var, labels: Var, name: str | None = None) -> Var:
    """Per-position softmax cross-entropy with integer labels: ``-log_softmax(logits)[..., labels]``.

    No reduction, no one-hot. libnd4j's fused ``sparse_softmax_cross_entropy_loss_with_logits`` (stable for any
    logits), with the gradient samediff_py registers for the whole JVM (``samediffpy.FixedOps``): the op's own
    backward output times the upstream gradient, so the result can be weighted, masked, averaged and combined like
    any value (M2.1's own gradient ignored what consumed the loss). Labels must lie in ``[0, classes)`` everywhere
    (libnd4j reads out of bounds otherwise): a placeholder's feeds are checked in Python; for masked losses use
    :func:`samediff_py.masked.softmax_cross_entropy`, which replaces ignored labels first.

    Args:
        logits: ``[..., classes]`` float Var.
        labels: integer Var ``[...]`` (rank >= 1) of class ids.
        name: optional name of the output node.

    Returns:
        Var of ``labels.shape``, ``logits``' dtype: the loss at each position.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> z = g.constant("z", np.log([[1.0, 1.0, 2.0], [1.0, 3.0, 4.0]]))
    >>> y = g.placeholder("y", ("batch",), "int32")
    >>> np.exp(-g.run({"y": [2, 1]}, sparse_softmax_cross_entropy(z, y))).round(3)   # softmax at the label
    array([0.5  , 0.375], dtype=float32)
    """
    _plain(logits, labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"sparse_softmax_cross_entropy needs integer labels, got {labels.dtype} for {labels.name!r}")
    if logits.dtype.kind != "f":
        raise TypeError(f"sparse_softmax_cross_entropy needs float logits, got {logits.dtype}")
    if logits.rank != labels.rank + 1 or labels.rank < 1:
        raise ValueError(
            f"sparse_softmax_cross_entropy: logits {_fmt(logits.shape)} must be labels {_fmt(labels.shape)} "
            "plus a class axis"
        )
    classes = logits.shape[-1]
    g = _graph_of(logits, labels)
    if labels.kind == "placeholder" and classes is not None:
        g.add_check("ids", placeholder=labels.name, size=int(classes), what=f"the classes of {logits.name!r}")
    shape = broadcast_shapes(logits.shape[:-1], labels.shape)
    return g.op(
        "xent",
        name,
        lambda n: _jvm.bridge().sparseSoftmaxCrossEntropy(g.sd, n, logits.j, labels.j),
        shape,
        logits.dtype,
        (logits, labels),
    )


def zeros_like(x: Var, dtype: Any = None, name: str | None = None) -> Var:
    """Zeros of ``x``'s (run-time) shape; reads only ``x``'s shape.

    Args:
        x: Var of any shape.
        dtype: the result's dtype (default ``x``'s).
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape, all 0.
    """
    _plain(x)
    dt = x.dtype if dtype is None else arrays.check_dtype(dtype)
    g = x.graph
    z = g.op("zeros_like", None if dt != x.dtype else name, lambda n: _jvm.bridge().zerosLike(g.sd, n, x.j),
             x.shape, x.dtype, (x,))  # fmt: skip
    return z if dt == x.dtype else cast(z, dt, name=name)


def where(cond: Var, x: Operand, y: Operand, name: str | None = None, same_shape: bool = False) -> Var:
    """``x`` where ``cond`` is true, else ``y`` (numpy's ``where``, with broadcasting).

    A SELECT: the unchosen operand is never read, so NaN or inf there cannot leak into the result (unlike
    ``cond * x``), and its gradient is exactly 0 there.

    Args:
        cond: bool Var (e.g. ``x > 0``).
        x: Var, number or array; at least one of ``x``, ``y`` must be a Var.
        y: the same.
        name: optional name of the output node.
        same_shape: skip the broadcasting ops when ``cond``, ``x`` and ``y`` are known to have equal run-time
            shapes (libnd4j refuses the op otherwise: an error, never a wrong result).

    Returns:
        Var of the broadcast shape of ``cond``, ``x`` and ``y``, in their dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", (3,))
    >>> g.run({"x": [1.0, np.nan, -2.0]}, where(x > 0.0, x, 0.0))
    array([1., 0., 0.], dtype=float32)
    """
    _plain(cond, x, y)
    if not isinstance(cond, Var) or cond.dtype != np.bool_:
        raise TypeError("where: cond must be a bool Var (e.g. x > 0)")
    like = x if isinstance(x, Var) else y
    if not isinstance(like, Var):
        like = None
    if like is None:
        raise TypeError("where: x or y must be a graph Var")
    x, y = _pair(x, y)
    g = _graph_of(cond, x, y)
    shape = broadcast_shapes(broadcast_shapes(cond.shape, x.shape), y.shape)
    # libnd4j's select needs equal shapes: broadcast each operand against zeros of the result's shape
    if not same_shape and not (cond.shape == x.shape == y.shape and None not in shape):
        zero = add(zeros_like(x), zeros_like(y))
        zero = add(zero, zeros_like(cond, dtype=x.dtype))
        x, y = add(x, zero), add(y, zero)
        cond = greater(add(cast(cond, x.dtype), zero), 0.5)
    return g.op("where", name, lambda n: _jvm.bridge().select(g.sd, n, cond.j, x.j, y.j), shape, x.dtype, (cond, x, y))


def select_rows(cond: Var, x: Var, y: Var, name: str | None = None) -> Var:
    """Row ``i`` of ``x`` where ``cond[i]`` is true, else row ``i`` of ``y``.

    A SELECT like :func:`where` (the unchosen row is never read; its gradient is exactly 0), but one vector copy
    per row: libnd4j's elementwise select reads and writes element by element (~80 ns each: 40 ms for a
    ``[16, 128, 256]`` activation), its row form copies whole rows. (The masked ops zero padding with one
    ``divide_no_nan`` by the mask instead, :func:`samediff_py.masked.rows.zero_padding`, which is faster still.)

    Args:
        cond: 1-D bool Var of length ``x.shape[0]``.
        x: ``[n, ...]`` Var of rank >= 2.
        y: Var of ``x``'s shape and dtype.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", (3, 2))
    >>> keep = g.placeholder("keep", (3,), "bool")
    >>> g.run({"x": [[1, 2], [np.nan, np.inf], [5, 6]], "keep": [True, False, True]},
    ...       select_rows(keep, x, zeros_like(x)))
    array([[1., 2.],
           [0., 0.],
           [5., 6.]], dtype=float32)
    """
    _plain(cond, x, y)
    if not isinstance(cond, Var) or cond.dtype != np.bool_ or cond.rank != 1:
        raise TypeError("select_rows: cond must be a 1-D bool Var")
    x, y = _pair(x, y)
    g = _graph_of(cond, x, y)
    if x.rank < 2:
        raise ValueError(f"select_rows needs rows: x of rank >= 2, got {_fmt(x.shape)} (use where)")
    if x.shape != y.shape:
        raise ValueError(f"select_rows: x {_fmt(x.shape)} and y {_fmt(y.shape)} must have equal shapes")
    n, c = x.shape[0], cond.shape[0]
    if n is not None and c is not None and n != c:
        raise ValueError(f"select_rows: cond has {c} entries, x has {n} rows")
    # libnd4j's select takes this row form whenever cond's length is x's first dimension and cond's shape
    # differs from x's (rank >= 2 guarantees it)
    return g.op("select_rows", name, lambda nm: _jvm.bridge().select(g.sd, nm, cond.j, x.j, y.j), x.shape, x.dtype,
                (cond, x, y))  # fmt: skip


def reshape_like(x: Var, like: Var, name: str | None = None) -> Var:
    """``x`` reshaped (C order) to ``like``'s run-time shape.

    For shapes with several dimensions unknown when building (e.g. ``[batch * time, d] -> [batch, time, d]``). The
    element counts must agree at run time.

    Args:
        x: Var of any shape.
        like: Var whose run-time shape is used (its values are not read).
        name: optional name of the output node.

    Returns:
        Var of ``like``'s shape and ``x``'s dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x, like = g.placeholder("x", (None,)), g.placeholder("like", (None, None))
    >>> g.run({"x": np.arange(4.0), "like": np.zeros((2, 2))}, reshape_like(x, like))
    array([[0., 1.],
           [2., 3.]], dtype=float32)
    """
    _plain(x, like)
    g = _graph_of(x, like)
    return g.op("reshape_like", name, lambda n: _jvm.bridge().reshapeLike(g.sd, n, x.j, like.j), like.shape, x.dtype,
                (x, like))  # fmt: skip


# ---------------------------------------------------------------------------- activations
def relu(x: Var, name: str | None = None) -> Var:
    """Elementwise ``max(x, 0)``; its gradient is 1 where ``x > 0``, else 0.

    libnd4j's ``relu`` op (NaN stays NaN, ``-inf`` gives 0, ``-0.0`` stays ``-0.0``) with the gradient
    ``g * step(x)`` (``FixedOps.Relu``): DL4J's own relu is a legacy scalar op whose gradient
    (``thresholdedrelu_bp``) takes 5.7 ms for a ``[4096, 128]`` float32 array, against ~0.2 ms here.

    Args:
        x: Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", (4,))
    >>> g.run({"x": [-1.0, 0.0, 2.0, np.nan]}, relu(x))
    array([ 0.,  0.,  2., nan], dtype=float32)
    """
    _plain(x)
    if not isinstance(x, Var):
        raise TypeError(f"relu expects a graph Var, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"relu takes a float Var, got {x.dtype} ({x.name!r})")
    g = x.graph
    return g.op("relu", name, lambda n: _jvm.jclass("samediffpy.FixedOps").relu(g.sd, n, x.j), x.shape, x.dtype, (x,))


GELU_FORMS = ("none", "tanh", "sigmoid")


def gelu(x: Var, approximate: str = "none", name: str | None = None) -> Var:
    """Gaussian error linear unit, in one of three forms.

    The forms are named like PyTorch's ``approximate`` argument, plus DL4J's own:

    - ``"none"`` (default): the exact form ``0.5 x (1 + erf(x / sqrt(2)))``: PyTorch's ``gelu``, Hugging Face
      ``hidden_act="gelu"`` (BERT). Built from plain ops around libnd4j's ``erf``.
    - ``"tanh"``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``: PyTorch ``approximate="tanh"``, Hugging
      Face ``"gelu_new"`` / ``"gelu_pytorch_tanh"`` (GPT-2). Built from plain ops.
    - ``"sigmoid"``: ``x * sigmoid(1.702 x)``: what DL4J M2.1 calls ``gelu`` (``sd.nn().gelu``, one fused op;
      libnd4j's constant is the float ``1.702f`` even in double precision). Differs from the exact form by up
      to ~0.02. (M2.1's ``precise_gelu`` op matches neither of the other two forms and is not used.)

    Args:
        x: float Var of any shape.
        approximate: ``"none"``, ``"tanh"`` or ``"sigmoid"``.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph(dtype=np.float64)
    >>> x = g.placeholder("x", (3,))
    >>> for form in ("none", "tanh", "sigmoid"):
    ...     print(form, g.run({"x": [-1.0, 0.0, 1.0]}, gelu(x, form)).round(6))
    none [-0.158655  0.        0.841345]
    tanh [-0.158808  0.        0.841192]
    sigmoid [-0.154204  0.        0.845796]
    """
    _plain(x)
    if approximate not in GELU_FORMS:
        raise ValueError(f"gelu: approximate must be one of {', '.join(map(repr, GELU_FORMS))}, got {approximate!r}")
    if not isinstance(x, Var):
        raise TypeError(f"gelu expects a graph Var, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"gelu needs a float Var, got {x.dtype} for {x.name!r}")
    if approximate == "sigmoid":
        return _unary("gelu", x, lambda n: x.graph.sd.nn().gelu(n, x.j), name)
    g = x.graph
    out_name = name or g.unique_name(f"gelu_{approximate}").split("/")[-1]
    with g.scope(out_name):  # the pieces live under "<name>/", the result is "<name>" itself
        if approximate == "none":
            inner = erf(multiply(x, float(1.0 / np.sqrt(2.0)), name="scaled"), name="erf")
        else:
            cube = multiply(multiply(square(x, name="sq"), x, name="cube"), 0.044715, name="cube_scaled")
            inner = tanh(multiply(add(x, cube, name="poly"), float(np.sqrt(2.0 / np.pi)), name="arg"), name="tanh")
        half = multiply(x, 0.5, name="half")
    return add(half, multiply(half, inner), name=out_name)  # 0.5 x + 0.5 x * inner = 0.5 x (1 + inner)


def erf(x: Var, name: str | None = None) -> Var:
    """The error function ``erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt``.

    libnd4j's ``erf``: within ~1 float32 ulp of ``math.erf``, exact in float64; its M2.1 gradient
    ``2/sqrt(pi) exp(-x^2)`` is correct.

    Args:
        x: float Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph(dtype=np.float64)
    >>> x = g.placeholder("x", (3,))
    >>> g.run({"x": [-1.0, 0.0, 2.0]}, erf(x))  # doctest: +NUMBER
    array([-0.84270079,  0.        ,  0.99532227])
    """
    _plain(x)
    if isinstance(x, Var) and x.dtype.kind != "f":
        raise TypeError(f"erf needs a float Var, got {x.dtype} for {x.name!r}")
    return _unary("erf", x, lambda n: x.graph.sd.math().erf(n, x.j), name)


def tanh(x: Var, name: str | None = None) -> Var:
    """Hyperbolic tangent, elementwise.

    Args:
        x: Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    return _unary("tanh", x, lambda n: x.graph.sd.math().tanh(n, x.j), name)


def sigmoid(x: Var, name: str | None = None) -> Var:
    """Elementwise ``1 / (1 + exp(-x))``.

    Args:
        x: Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    return _unary("sigmoid", x, lambda n: x.graph.sd.nn().sigmoid(n, x.j), name)


def exp(x: Var, name: str | None = None) -> Var:
    """Elementwise ``e ** x``.

    Args:
        x: Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    return _unary("exp", x, lambda n: x.graph.sd.math().exp(n, x.j), name)


def log(x: Var, name: str | None = None) -> Var:
    """Natural logarithm, elementwise.

    Args:
        x: Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    return _unary("log", x, lambda n: x.graph.sd.math().log(n, x.j), name)


def sqrt(x: Var, name: str | None = None) -> Var:
    """Square root, elementwise.

    Args:
        x: Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    return _unary("sqrt", x, lambda n: x.graph.sd.math().sqrt(n, x.j), name)


def square(x: Var, name: str | None = None) -> Var:
    """Elementwise ``x * x``.

    Args:
        x: Var of any shape.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    return _unary("square", x, lambda n: x.graph.sd.math().square(n, x.j), name)


def softmax(x: Var, axis: int = -1, name: str | None = None) -> Var:
    """``exp(x) / sum(exp(x), axis)``, computed stably.

    For attention over padded keys use :mod:`samediff_py.masked`. The input is shifted by its maximum along
    ``axis`` first: M2.1's softmax op is not, so a row whose entries all lie ~745 (float64) / ~88 (float32) below
    zero gives 0/0 = NaN (a fully masked attention row, ``-1e9`` everywhere), and entries above ~88 (float32)
    overflow (tests/test_ops.py::test_softmax_is_stable_far_from_zero). The shift (the maximum truncated to an
    integer) carries no gradient: softmax is shift-invariant, and the max's backward would be a full pass over
    ``x`` (6 % of an encoder training step).

    Args:
        x: float Var of any shape.
        axis: the axis to normalise over.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype; sums to 1 along ``axis``.
    """
    _plain(x)
    (ax,) = _axes(x, axis)
    if ax != x.rank - 1:
        # over an inner axis, the oneDNN helper's softmax takes 91 ms forward and 201 ms backward for a
        # [32, 4, 128, 128] float32 array (1.2 and 2.2 ms over the last axis; libnd4j's own 14 and 18 ms):
        # the axis is moved last and back (two copies each way, ~1-2 ms each)
        perm = tuple(i for i in range(x.rank) if i != ax) + (ax,)
        back = tuple(int(i) for i in np.argsort(perm))
        return transpose(softmax(transpose(x, perm), -1), back, name=name)
    shifted = subtract(x, _detached_max(x, ax))
    return _unary("softmax", shifted, lambda n: _jvm.bridge().softmax(x.graph.sd, n, shifted.j, ax), name)


def _detached_max(x: Var, axis: int) -> Var:
    """The max of ``x`` over ``axis`` (kept), truncated to an integer, with no gradient path.

    A shift for softmax / log-softmax (shift-invariant), whose max backward would cost a full pass over ``x``.
    """
    shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
    return x.graph.op(
        "row_max", None, lambda n: _jvm.bridge().detachedMax(x.graph.sd, n, x.j, axis), shape, x.dtype, (x,)
    )


def log_softmax(x: Var, axis: int = -1, name: str | None = None) -> Var:
    """``x - log(sum(exp(x), axis))``, computed stably.

    Args:
        x: float Var of any shape.
        axis: the axis to normalise over.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    _plain(x)
    (ax,) = _axes(x, axis)
    # Not M2.1's fused logSoftmax: it computes log(softmax(x)), which underflows to -inf wherever x is more
    # than ~88 (float32) / ~745 (float64) below the row's max, and -inf * 0 (a one-hot label) is NaN in a
    # cross-entropy (tests/test_ops.py::test_log_softmax_is_stable_for_large_logits). Its explicit-axis
    # overload also has a broken gradient. The shifted form costs 5 more ops (~6 % of an MLM training step).
    shifted = subtract(x, _detached_max(x, ax))  # log-softmax is shift-invariant: the shift needs no gradient
    return subtract(shifted, log(sum(exp(shifted), ax, keepdims=True)), name=name)


def layer_norm(
    x: Var,
    axis: int | Sequence[int] = -1,
    gain: Var | None = None,
    bias: Var | None = None,
    eps: float = 1e-5,
    name: str | None = None,
) -> Var:
    """``(x - mean) / sqrt(var + eps) * gain + bias`` with mean and (biased) variance over ``axis``.

    With ``eps=0``, ``axis=-1``, and both ``gain`` and ``bias`` given, libnd4j's fused op is used (one op instead
    of nine, and one backward op: much faster in SameDiff, whose per-op cost dominates small models); it maps a
    constant row to 0 with zero gradient instead of dividing by zero.

    For ``[batch, time, features]`` normalise over features (``axis=-1``): normalising over time mixes padded
    steps into valid ones (the classic mistake that breaks pad-invariance).

    Args:
        x: float Var, e.g. ``[batch, time, features]``.
        axis: the axis or axes to normalise over.
        gain: optional scale, broadcast against ``x`` (e.g. ``[features]``).
        bias: optional offset, broadcast against ``x``.
        eps: added to the variance.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    _plain(x)
    axes = _axes(x, axis)
    g = x.graph
    if eps == 0.0 and axes == [x.rank - 1] and gain is not None and bias is not None:
        return g.op(
            "layer_norm",
            name,
            lambda n: _jvm.bridge().layerNorm(g.sd, n, x.j, gain.j, bias.j, axes),
            x.shape,
            x.dtype,
            (x, gain, bias),
        )
    out_name = name or g.unique_name("layer_norm").split("/")[-1]
    with g.scope(out_name):  # the pieces live under "<name>/", the result is "<name>" itself
        mu = mean(x, axes, keepdims=True, name="mean")
        centred = subtract(x, mu, name="centred")
        var = mean(square(centred), axes, keepdims=True, name="var")
        y = divide(centred, sqrt(add(var, eps)), name="normed")
        if gain is not None:
            y = multiply(y, gain, name="scaled")
    return add(y, bias, name=out_name) if bias is not None else multiply(y, 1.0, name=out_name)


def leading_rows(table: Var, like: Var, axis: int = 1, name: str | None = None) -> Var:
    """``table[:n]`` with ``n = like.shape[axis]`` known only at run time (e.g. positions for length T).

    Args:
        table: ``[rows, ...]`` Var.
        like: Var whose run-time size along ``axis`` is ``n`` (its values are not read).
        axis: the axis of ``like`` to read.
        name: optional name of the output node.

    Returns:
        ``[n, *table.shape[1:]]`` Var of ``table``'s dtype.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> pos = g.constant("pos", np.arange(8.0).reshape(4, 2))
    >>> x = g.placeholder("x", ("batch", "time"))
    >>> g.run({"x": np.zeros((1, 3))}, leading_rows(pos, x))
    array([[0., 1.],
           [2., 3.],
           [4., 5.]], dtype=float32)
    """
    _plain(table, like)
    axis = _axis(axis, like.rank, repr(like.name))
    shape = (like.shape[axis], *table.shape[1:])
    return table.graph.op(
        "leading_rows",
        name,
        lambda n: _jvm.bridge().leadingRows(table.graph.sd, n, table.j, like.j, axis, table.rank),
        shape,
        table.dtype,
        (table, like),
    )


def batch_matmul(a: Var, b: Var, transpose_a: bool = False, transpose_b: bool = False, name: str | None = None) -> Var:
    """Matrix product over the last two axes, batched over the leading ones: ``[..., m, k] @ [..., k, n]``.

    Equal ranks, equal batch dims, no broadcasting.

    Args:
        a: ``[..., m, k]`` Var of rank >= 3 (``[..., k, m]`` with ``transpose_a``).
        b: ``[..., k, n]`` Var of ``a``'s rank and dtype (``[..., n, k]`` with ``transpose_b``).
        transpose_a: use ``a``'s last two axes swapped.
        transpose_b: use ``b``'s last two axes swapped.
        name: optional name of the output node.

    Returns:
        ``[..., m, n]`` Var of ``a``'s dtype.
    """
    a, b = _pair(a, b)
    if a.rank != b.rank or a.rank < 3:
        raise ValueError(f"batch_matmul needs equal ranks >= 3, got {_fmt(a.shape)} and {_fmt(b.shape)}")
    m, ka = (a.shape[-1], a.shape[-2]) if transpose_a else (a.shape[-2], a.shape[-1])
    kb, n = (b.shape[-1], b.shape[-2]) if transpose_b else (b.shape[-2], b.shape[-1])
    if ka is not None and kb is not None and ka != kb:
        raise ValueError(f"batch_matmul: inner dimensions differ ({ka} vs {kb})")
    lead = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return a.graph.op(
        "batch_matmul",
        name,
        lambda nm: _jvm.bridge().batchMatmul(a.graph.sd, nm, a.j, b.j, bool(transpose_a), bool(transpose_b)),
        (*lead, m, n),
        a.dtype,
        (a, b),
    )
