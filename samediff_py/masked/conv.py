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

Weights ``[k, in, out]`` (DL4J's ``conv1d`` layout). Computed as one matrix product of the k shifted copies of
the input side by side (``[batch, time, k * in] @ [k * in, out]``): the same numbers as DL4J's ``conv1d`` in
``SAME`` / ``CAUSAL`` mode (tests/test_sequence_ops.py), whose backward pass is ~15x slower in M2.1. Padding is
zeroed by :func:`~samediff_py.masked.rows.mask_rows` (a row gather; M2.1's element-wise select is ~200x slower).

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
from typing import Any

from .. import _jvm
from ..errors import MaskError
from ..graph import Var
from .rows import zero_padding
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
        w: ``[k, in, out]`` kernel; ``b``: optional ``[out]`` bias.
        dilation: spacing between kernel taps (>= 1).
        padding: ``"same"`` (centred window) or ``"causal"`` (only past and present steps).
        activation: optional per-position function applied before the padded positions are zeroed (so a
            stack of layers zeroes once per layer).
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
        xin = zero_padding(x.value, x.mask)  # padded steps exactly 0: what a truncated row sees past its ends

        def build(n: str) -> Any:
            return _jvm.jclass("samediffpy.Sequences").conv1dMatmul(
                g.sd, n, xin.j, w.j, b.j if b is not None else None, k, int(dilation), left, total - left, c_in, c_out
            )

        parents = (xin, w) if b is None else (xin, w, b)
        y = g.op("conv", "raw", build, (x.value.shape[0], x.value.shape[1], c_out), x.dtype, parents)
        if activation is not None:
            y = activation(y)
    return Masked.derived(zero_padding(y, x.mask, name=stem), x.mask)
