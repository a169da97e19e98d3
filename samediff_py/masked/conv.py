"""Masked 1-d convolution over time: ``[batch, time, channels]``, stride 1.

A valid position next to padding must see exactly what it would see in the row alone, truncated, where the
convolution's own zero padding lies past the row's ends. So the input's padded positions are SELECTED to zero
before the convolution (whatever they held: NaN, inf, a previous layer's output there), and the output's padded
positions are selected to zero after it. Both right and left padding are then pad-invariant, for ``"same"`` and
``"causal"`` padding and any dilation (a stack of layers too: each one zeroes its input again). Stride > 1 is
not offered: left padding would shift the stride phase.

=========  ========================================================================================
padding    definition (k = kernel width, d = dilation; zeros outside each row's valid steps)
=========  ========================================================================================
``same``   ``y[t] = sum_j x[t + j*d - left] @ w[j] + b``, ``left = ((k-1)*d) // 2`` (an odd total puts the
           extra step on the right, TensorFlow's convention); output length = input length
``causal`` ``left = (k-1)*d``: ``y[t]`` reads only steps ``<= t``
=========  ========================================================================================

Computed by DL4J's ``conv1d`` (NWC layout, weights ``[k, in, out]``, M2.1's ``SAME`` / ``CAUSAL`` modes).

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

from typing import Any

from .. import _jvm, ops
from ..errors import MaskError
from ..graph import Var
from .value import Masked, require_masked, valid_condition

__all__ = ["conv1d"]

_MODES = {"same": 1, "causal": 2}


def conv1d(
    x: Masked,
    w: Var,
    b: Var | None = None,
    *,
    dilation: int = 1,
    padding: str = "same",
    name: str | None = None,
) -> Masked:
    """Masked 1-d convolution (cross-correlation) over time, stride 1 (see the module docstring).

    Args:
        x: Masked ``[batch, time, in]``.
        w: ``[k, in, out]`` kernel; ``b``: optional ``[out]`` bias.
        dilation: spacing between kernel taps (>= 1).
        padding: ``"same"`` (centred window) or ``"causal"`` (only past and present steps).
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
    with g.scope(stem):
        xin = x.zeroed()  # padded steps are exactly 0: the conv's own zero padding, seen from a truncated row

        def build(n: str) -> Any:
            seq = _jvm.jclass("samediffpy.Sequences")
            return seq.conv1d(g.sd, n, xin.j, w.j, b.j if b is not None else None, k, int(dilation), _MODES[padding])

        parents = (xin, w) if b is None else (xin, w, b)
        raw = g.op("conv", "raw", build, (x.value.shape[0], x.value.shape[1], c_out), x.dtype, parents)
        keep, zeros = valid_condition(x.mask, raw), ops.zeros_like(raw)
    return Masked.derived(ops.where(keep, raw, zeros, name=stem, same_shape=True), x.mask)
