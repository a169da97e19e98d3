"""Masked 1-d convolution over time: ``[batch, time, channels]``, stride 1.

A valid position next to padding must see exactly what it would see in the row alone, truncated, where the
convolution's own zero padding lies past the row's ends. So the input's padded positions are set to exactly zero
before the convolution (whatever they held: NaN, inf, a previous layer's output there; a select, never a
multiplication by the mask), and the output's padded positions after it. Both right and left padding are then
pad-invariant, for ``"same"`` and ``"causal"`` padding and any dilation (a stack of layers too: each one zeroes
its input again). Stride > 1 is not offered: left padding would shift the stride phase.

=========  ========================================================================================
padding    definition (k = kernel width, d = dilation; zeros outside each row's valid steps)
=========  ========================================================================================
``same``   ``y[t] = sum_j x[t + j*d - left] @ w[j] + b``, ``left = ((k-1)*d) // 2`` (an odd total puts the
           extra step on the right, TensorFlow's convention); output length = input length
``causal`` ``left = (k-1)*d``: ``y[t]`` reads only steps ``<= t``
=========  ========================================================================================

Weights ``[k, in, out]`` (DL4J's ``conv1d`` layout). Computed as ONE row gather and ONE matrix product: for each
position the rows of its k taps (a zero row for taps on padding or outside the row) side by side,
``[positions, k * in] @ [k * in, out]``. The same numbers as DL4J's ``conv1d`` in ``SAME`` / ``CAUSAL`` mode
(tests/test_sequence_ops.py), with the masking built in and no select. The gather's gradient is one gather
as well (each input row is read at most once per tap: the inverse index, then a sum over taps) instead of
libnd4j's scatter-add (~1 us per row). Measured (M2.1, 1 thread, one layer, forward + backward, op time): at
``[32, 128, 128]`` 27-54 ms vs 91-119 ms for DL4J's ``conv1d`` without any masking (its ``conv1d_bp``
dominates; before the gather gradient and the oneDNN build); at ``[16, 64, 64]`` about equal (9-10 vs 8-11 ms),
where SameDiff's per-op cost dominates both. A 3-layer training step at ``[32, 128, 128]``: 80 -> 68 ms with the
gather gradient (bench/FINDINGS.md). The row and tap indices are built once per mask.

>>> import numpy as np
>>> from samediff_py import Graph, masked
>>> g = Graph()
>>> x = g.placeholder("x", ("batch", "time", 1))
>>> m = masked.mask_placeholder(g, "mask")
>>> w = g.constant("w", np.ones((3, 1, 1), np.float32))           # a moving sum over 3 steps
>>> y = masked.conv1d(masked.Masked(x, m), w)
>>> g.run({"x": [[[1.0], [2.0], [4.0], [np.nan]]], "mask": [[1, 1, 1, 0]]}, y.value)[0, :, 0]
array([3., 7., 6., 0.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable

from .. import ops
from ..errors import MaskError
from ..graph import Var
from .rows import flat_rows, gather_rows, mark_zero_padded, record_flat, row_index, tap_index, unflatten
from .value import Masked, require_masked

__all__ = ["conv1d"]

_MODES = {"same": 1, "causal": 2}


def conv1d(
    x: Masked,
    w: Var,
    b: Var | None = None,
    *,
    dilation: int = 1,
    padding: str = "same",
    activation: Callable[[Var], Var] | None = None,
    name: str | None = None,
) -> Masked:
    """Masked 1-d convolution (cross-correlation) over time, stride 1 (see the module docstring).

    Args:
        x: Masked ``[batch, time, in]``.
        w: ``[k, in, out]`` kernel of known shape.
        b: optional ``[out]`` bias.
        dilation: spacing between kernel taps (>= 1).
        padding: ``"same"`` (centred window) or ``"causal"`` (only past and present steps).
        activation: optional elementwise (or per-row) function, applied to the ``[positions, out]`` rows
            before the padded positions are zeroed.
        name: name of the output node.

    Returns:
        Masked ``[batch, time, out]``: at valid positions, what each row gives alone (truncated); 0 at padded
        positions; a row with no valid step gives zeros and zero gradients.
    """
    x = require_masked(x, "conv1d")
    if padding not in _MODES:
        raise ValueError(f"conv1d: padding must be 'same' or 'causal', got {padding!r}")
    if not isinstance(w, Var) or w.rank != 3 or None in w.shape:
        raise ValueError(f"conv1d: the kernel must be a [k, in, out] Var of known shape, got {getattr(w, 'shape', w)}")
    if x.value.rank != 3:
        raise MaskError(f"conv1d takes a [batch, time, channels] value, got shape {x.value.shape}")
    k, c_in, c_out = w.shape
    if x.value.shape[2] is not None and x.value.shape[2] != c_in:
        raise ValueError(f"conv1d: the input has {x.value.shape[2]} channels but the kernel expects {c_in}")
    if b is not None and b.shape != (c_out,):
        raise ValueError(f"conv1d: the bias must be [{c_out}], got {b.shape}")
    if int(dilation) < 1:
        raise ValueError(f"conv1d: dilation must be >= 1, got {dilation}")
    g = x.graph
    full = g.unique_name("conv1d", name)
    stem = full.split("/")[-1]
    total = (k - 1) * int(dilation)
    left = total if padding == "causal" else total // 2
    with g.scope(stem):
        # every tap of every position, padded steps and steps outside the row reading a zero row: the input's
        # padding is never read, whatever it holds (one gather, no select, no multiplication by the mask)
        taps = tap_index(x.mask, k, int(dilation), left, total - left)
        offsets = [j * int(dilation) - left for j in range(k)]
        cols = ops.reshape(gather_rows(flat_rows(x.value, x.mask), taps, offsets=offsets), (-1, k * c_in))
        y = ops.matmul(cols, ops.reshape(w, (k * c_in, c_out)))  # [B*T, out]
        if b is not None:
            y = ops.add(y, b)
        if activation is not None:
            y = activation(y)
        flat = gather_rows(y, row_index(x.mask), offsets=[0])  # exactly 0 at padded positions
    out = unflatten(flat, x.mask, (c_out,), name=stem)
    # the next masked conv reads y's rows directly (its taps never read padded rows)
    return Masked.derived(mark_zero_padded(record_flat(out, x.mask, y), x.mask), x.mask)
