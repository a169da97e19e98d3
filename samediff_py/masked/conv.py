"""Masked 1-d convolution over time: ``[batch, time, channels]``, stride 1.

A valid position next to padding must see exactly what it would see in the row alone, truncated, where the
convolution's own zero padding lies past the row's ends. So the input's padded positions are set to exactly zero
before the convolution (whatever they held: NaN, inf; a row gather that reads a zero row there, never a
multiplication by the mask), and the output's padded positions after it. Both right and left padding are then
pad-invariant, for ``"same"`` and ``"causal"`` padding and any dilation (a stack of layers too: each layer's
output is already zero at padding, so the next one reads it as it is). Stride > 1 is not offered: left
padding would shift the stride phase.

=========  ========================================================================================
padding    definition (k = kernel width, d = dilation; zeros outside each row's valid steps)
=========  ========================================================================================
``same``   ``y[t] = sum_j x[t + j*d - left] @ w[j] + b``, ``left = ((k-1)*d) // 2`` (an odd total puts the
           extra step on the right, TensorFlow's convention); output length = input length
``causal`` ``left = (k-1)*d``: ``y[t]`` reads only steps ``<= t``
=========  ========================================================================================

Weights ``[k, in, out]`` (DL4J's ``conv1d`` layout). Computed as the k taps side by side and ONE matrix product:
the zeroed input is padded along time, k strided slices (tap j starts ``j*d`` steps later) are concatenated to
``[batch, time, k * in]``, and ``[positions, k * in] @ [k * in, out]`` gives every position at once. The same
numbers as DL4J's ``conv1d`` in ``SAME`` / ``CAUSAL`` mode (tests/test_sequence_ops.py), with the masking built
in. Its gradient is the same ops' own (concat, strided slice, pad backward): no scatter. Measured (M2.1,
oneDNN build, 1 thread, a 3-layer training step, JIT warm): 51 ms at ``[32, 128, 128]`` and 11 ms at
``[16, 64, 64]``, against 52-56 and 14.5 ms for the previous formulation (one row gather of every tap, with
a gather as its gradient); DL4J's own ``conv1d`` is slower than either (its ``conv1d_bp`` dominates;
bench/FINDINGS.md).

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

from .. import _jvm, ops
from ..errors import MaskError
from ..graph import Var
from .rows import (
    gather_rows,
    mark_zero_padded,
    record_flat,
    row_index,
    unflatten,
    zero_padding,
)
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
        # the input with exact zeros at padded positions (a no-op after another masked conv), its taps side by
        # side: a valid step next to padding reads zeros there, as the truncated row reads the zero padding
        xz = zero_padding(x.value, x.mask)
        spec = (k, int(dilation), left, total - left)
        wide = g.op(
            "taps",
            None,
            lambda n: _jvm.jclass("samediffpy.Sequences").convColumns(g.sd, n, xz.j, *spec),
            (xz.shape[0], xz.shape[1], k * c_in),
            xz.dtype,
            (xz,),
        )
        cols = ops.reshape(wide, (-1, k * c_in))
        y = ops.matmul(cols, ops.reshape(w, (k * c_in, c_out)))  # [B*T, out]
        if b is not None:
            y = ops.add(y, b)
        if activation is not None:
            y = activation(y)
        flat = gather_rows(y, row_index(x.mask), offsets=[0])  # exactly 0 at padded positions
    out = unflatten(flat, x.mask, (c_out,), name=stem)
    return Masked.derived(mark_zero_padded(record_flat(out, x.mask, y), x.mask), x.mask)
