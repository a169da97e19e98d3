"""Counted rows: the positions a loss counts, gathered out of a padded ``[batch, time, ...]`` value.

An MLM head needs the vocabulary projection only where a label counts (mask 1, label not ignored: ~15 % of
the tokens). :func:`counted_rows` gathers those positions of the hidden states into rows, so the projection,
the loss and the metrics run on ``[n, d]`` instead of ``[batch, time, d]``: at a BERT vocabulary that is
the difference between a ``[2048, 30522]`` and a ``[300, 30522]`` logits array, forward and backward.

The row indices are computed INSIDE the graph (libnd4j's ``Where`` over the flattened counted positions), so
nothing changes for whoever feeds the graph: the same ``tokens`` / ``mask`` / ``labels`` feeds drive it, in
Python, after ``checkpoint.load``, in pad-invariance tests and from plain Java. One extra row always follows
the counted ones: a zero row with label 0 and weight 0, so the row set is never empty (M2.1 cannot run a
batch with no counted position otherwise: ``Where`` of nothing yields an empty array that later ops refuse).
Losses and metrics weight it 0, so it changes no value and no gradient.

>>> import numpy as np
>>> from samediff_py import Graph, masked
>>> g = Graph()
>>> x = g.placeholder("x", ("batch", "time", 2))
>>> labels = g.placeholder("labels", ("batch", "time"), "int32")
>>> m = masked.mask_placeholder(g, "mask")
>>> r = counted_rows(masked.Masked(x, m), labels)
>>> xs = np.arange(12.0).reshape(2, 3, 2)
>>> rows, lab, w = g.run({"x": xs, "labels": [[5, -1, 7], [-1, 4, 9]], "mask": [[1, 1, 1], [1, 1, 0]]},
...                      [r.rows, r.labels, r.weights])
>>> rows            # positions (0, 0), (0, 2), (1, 1), then the zero row
array([[0., 1.],
       [4., 5.],
       [8., 9.],
       [0., 0.]], dtype=float32)
>>> lab, w
(array([5, 7, 4, 0], dtype=int32), array([1., 1., 1., 0.], dtype=float32))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .. import _jvm, ops
from ..errors import MaskError
from ..graph import Var
from .value import Masked, require_masked

__all__ = ["CountedRows", "counted_rows"]


def counted_positions(mask: Var, labels: Var, ignore_label: int) -> Var:
    """1 where a position counts: mask 1 and label != ignore_label.

    Args:
        mask: ``[batch, time]`` float mask (1 = valid).
        labels: ``[batch, time]`` integer labels.
        ignore_label: the label of positions that do not count.

    Returns:
        ``[batch, time]`` Var of the mask's dtype.
    """
    not_ignored = ops.cast(ops.not_equal(labels, ignore_label), mask.dtype)
    return ops.multiply(mask, not_ignored)


@dataclass(frozen=True)
class CountedRows:
    """The counted positions of a masked ``[batch, time, ...]`` value, as rows (see :func:`counted_rows`).

    Attributes:
        rows: ``[n + 1, ...]``: the value at each counted position (row-major order: batch, then time),
            then one zero row.
        labels: ``[n + 1]`` int: each row's label; 0 for the extra row (a valid class id, weighted 0).
        weights: ``[n + 1]`` float: 1 for counted rows, 0 for the extra row.
        index: ``[n + 1]`` int64: each row's position in the flattened ``[batch * time]`` axis (the extra row's
            is ``batch * time``).
        mask, source_labels, ignore_label: what the rows were selected from (losses check they match).
    """

    rows: Var
    labels: Var
    weights: Var
    index: Var
    mask: Var
    source_labels: Var
    ignore_label: int

    @property
    def graph(self):
        """The graph the rows belong to."""
        return self.rows.graph

    @property
    def dtype(self):
        """The rows' dtype."""
        return self.rows.dtype

    def map(self, fn: Callable[[Var], Var]) -> CountedRows:
        """Apply a per-row function (e.g. the vocabulary projection) and keep labels and weights.

        Args:
            fn: ``[n + 1, ...] -> [n + 1, ...]`` function of Vars; must not change the number of rows.

        Returns:
            :class:`CountedRows` with ``fn``'s result as ``rows``.
        """
        out = fn(self.rows)
        if not isinstance(out, Var) or out.rank < 1:
            raise MaskError("CountedRows.map(fn): fn must return an [n, ...] Var")
        if out.shape[0] is not None and self.rows.shape[0] is not None and out.shape[0] != self.rows.shape[0]:
            raise MaskError("CountedRows.map(fn) changed the number of rows: it is not a per-row op")
        return replace(self, rows=out)

    def __matmul__(self, w: Var) -> CountedRows:
        return self.map(lambda r: ops.matmul(r, w))

    def __repr__(self) -> str:
        return f"<CountedRows {self.rows!r} mask={self.mask.name!r} labels={self.source_labels.name!r}>"


def counted_rows(x: Masked, labels: Var, ignore_label: int = -1, name: str | None = None) -> CountedRows:
    """Gather the positions of ``x`` that count (mask 1 and label != ``ignore_label``) into rows.

    Args:
        x: Masked ``[batch, time, ...]`` (e.g. an encoder's hidden states); feature sizes known when building.
        labels: ``[batch, time]`` integer labels.
        ignore_label: the label of positions that do not count.
        name: scope of the ops built here (default ``counted_rows``).

    Returns:
        :class:`CountedRows` (``rows [n + 1, ...]``, ``labels``, ``weights``, ``index``): run the per-position
        head on ``rows`` (``CountedRows.map`` / ``@``) and pass the result to
        :func:`~samediff_py.masked.softmax_cross_entropy`, :func:`~samediff_py.masked.accuracy` or
        :func:`~samediff_py.masked.top_k_accuracy`, which give exactly what they give on the full
        ``[batch, time, classes]`` logits (same loss, same gradients), at the cost of the counted rows only.
        The gradient into ``x`` is a scatter-add into the counted positions (zero at every other position).
    """
    x = require_masked(x, "counted_rows")
    if not isinstance(labels, Var) or labels.dtype.kind not in "iu" or labels.rank != 2:
        raise TypeError("counted_rows: labels must be an integer [batch, time] Var")
    if x.value.rank < 3:
        raise MaskError(f"counted_rows takes a [batch, time, features...] value, got {x.value.shape}")
    for axis in (0, 1):
        a, b = x.value.shape[axis], labels.shape[axis]
        if a is not None and b is not None and a != b:
            raise MaskError(f"counted_rows: value {x.value.shape} and labels {labels.shape} disagree on axis {axis}")
    g = x.graph
    feat = [int(d) if d is not None else -1 for d in x.value.shape[2:]]
    if feat.count(-1):
        raise ValueError(f"counted_rows: the feature axes of {x.value.name!r} must be known when building")
    with g.scope(g.unique_name("counted_rows", name).split("/")[-1]):
        counted_bt = counted_positions(x.mask, labels, ignore_label)  # [B, T]
        counted = ops.reshape(counted_bt, [-1], name="counted")  # [B*T]
        one = g.constant("one", np.ones(1), counted.dtype)
        # one more true entry (the extra row, at index B*T), so Where never returns an empty array
        cond = ops.greater(ops.concat([counted, one], 0), 0.5)
        index = g.op("index", None, lambda n: _jvm.bridge().nonzero(g.sd, n, cond.j), (None,), np.int64, (cond,))
        weights = ops.gather(ops.concat([counted, ops.multiply(one, 0.0)], 0), index, name="weights")
        keep = ops.cast(weights, np.int64)  # 1 = counted row, 0 = the extra row
        # the counted rows of the flattened value (the extra row reads row 0, whatever it holds)...
        raw = ops.gather(ops.reshape(x.value, [-1, *feat]), ops.multiply(index, keep))  # [n + 1, ...]
        # ...then the extra row replaced by zeros with a second (small) gather: behind a zero row, pick
        # 1..n, then 0. The extra row's raw value is never read, and its gradient is exactly 0, so NaN or inf
        # at row 0 (padding) cannot leak. Cheaper than a zero row behind the whole [B*T, ...] value (a copy
        # of all of it: 250 MB for [16 x 128, 30522] logits).
        pick = ops.multiply(ops.add(ops.range_like(keep), 1), keep)
        zero_row = g.constant(None, np.zeros((1, *feat)), x.dtype)
        rows = ops.gather(ops.concat([zero_row, raw], 0), pick, name="rows")
        safe = ops.multiply(labels, ops.cast(counted_bt, labels.dtype))  # ignored labels -> 0
        zero = g.constant("zero", np.zeros(1, labels.dtype))
        row_labels = ops.gather(ops.concat([ops.reshape(safe, [-1]), zero], 0), index, name="labels")
    return CountedRows(rows, row_labels, weights, index, x.mask, labels, int(ignore_label))
