"""Zeroing padded positions fast: a row gather instead of libnd4j's element-wise ``select``.

``mask_rows(value, mask)`` gives exactly what ``select_valid(value, mask)`` gives (the value at valid positions,
0 at padded ones, whatever they held: NaN, inf, 1e30; no gradient into padding), for ``[batch, time, F...]``
values with static trailing dimensions: the rows of ``value`` (one per position) followed by one zero row are
gathered, padded positions reading the zero row. Its gradient is the gather's scatter-add, which sends padded
positions' upstream gradients to that zero row, where they are dropped (NaN there included).

Measured in M2.1 at ``[16, 64, 128]`` float32 (op time, 1 thread): forward 0.06 ms for the gather vs 13 ms for
``select`` (which reads and writes element by element); forward + backward 5 ms vs 19 ms.
"""

from __future__ import annotations

import numpy as np

from .. import _jvm
from ..errors import MaskError
from ..graph import Var

__all__ = ["mask_rows", "zero_padding"]


def mask_rows(value: Var, mask: Var, name: str | None = None) -> Var:
    """``value`` with its padded positions (``mask == 0``) set to exactly 0; ``value`` is ``[batch, time, F...]``
    with ``F...`` known when building, ``mask`` ``[batch, time]`` (0/1).

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
    row = int(np.prod(rest)) if rest else 1
    g = value.graph
    return g.op(
        "mask_rows",
        name,
        lambda n: _jvm.jclass("samediffpy.Sequences").maskRows(g.sd, n, value.j, mask.j, row),
        value.shape,
        value.dtype,
        (value, mask),
    )


def zero_padding(value: Var, mask: Var, name: str | None = None) -> Var:
    """:func:`mask_rows` where the feature dims are known, else :func:`~samediff_py.masked.value.select_valid`."""
    if value.rank >= 2 and None not in value.shape[2:]:
        return mask_rows(value, mask, name=name)
    from .value import select_valid

    out = select_valid(value, mask)
    return (
        out
        if name is None
        else value.graph.op(
            "zero_padding", name, lambda n: value.graph.sd.identity(n, out.j), out.shape, out.dtype, (out,)
        )
    )
