"""Masked 1-d convolution over time: ``[batch, time, channels]``, stride 1.

A valid position next to padding must see exactly what it would see in the row alone, truncated, where the
convolution's own zero padding lies past the row's ends. So the input's padded positions are set to exactly zero
before the convolution (whatever they held: NaN, inf; ``divide_no_nan`` by the mask, never a multiplication by
it), and the output's padded positions after it. Both right and left padding are then
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

Weights ``[k, in, out]``. At dilation 1, DL4J's own ``conv1d`` (``NWC``, ``SAME`` / ``CAUSAL`` mode) runs
between the two zeroings (each one elementwise op, ``masked.rows``); over data (nothing trainable upstream) its
gradient leaves out the input's, as PyTorch's does (``Sequences.FastConv1D``). Dilation > 1 fails in M2.1's
oneDNN convolution for most kernel widths, so there the taps are laid side by side (one pad, k strided slices,
one concat) and multiplied by the ``[k * in, out]`` kernel at once. Both are checked against numpy (float32
and float64) and float64 finite differences (tests/test_sequence_ops.py). Measured (M2.1, oneDNN build, 1
thread, a 3-layer training step, JIT warm, both built in one process and taking turns): the library op takes
0.67-0.72x the time of the taps at width 128 (``[32, 128, 128]``) and 0.78x at width 256; bench/FINDINGS.md.

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

import numpy as np

from .. import _jvm, ops
from ..errors import MaskError
from ..graph import Var
from .rows import mark_shaped, shaped_by, unflatten, zero_padding
from .value import Masked, require_masked

__all__ = ["conv1d"]

_MODES = {"same": 1, "causal": 2}
# activations applied to the [batch, time, out] output as it is (elementwise: the same values as on rows)
_ELEMENTWISE = (ops.relu, ops.tanh, ops.sigmoid, ops.gelu)


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
            before the padded positions are zeroed (``ops.relu``, ``tanh``, ``sigmoid`` and ``gelu``, elementwise,
            to the ``[batch, time, out]`` output as it is: the same values, two reshapes fewer).
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
    for what, v in (("kernel", w), ("bias", b)):
        if v is not None and v.dtype != x.value.dtype:
            raise TypeError(f"conv1d: the {what} is {v.dtype} but the input is {x.value.dtype}; cast one (.astype())")
    if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 1:
        raise ValueError(f"conv1d: dilation must be an int >= 1, got {dilation!r}")
    g = x.graph
    full = g.unique_name("conv1d", name)
    stem = full.split("/")[-1]
    d = int(dilation) if k > 1 else 1
    seq = _jvm.jclass("samediffpy.Sequences")
    with g.scope(stem):
        # exact zeros at the input's padded positions (a no-op after another masked conv): a valid step next to
        # padding then reads zeros there, as the truncated row reads the convolution's zero padding
        xz = zero_padding(x.value, x.mask)
        if d == 1:
            inputs = (xz, w) if b is None else (xz, w, b)
            y = g.op(
                "conv",
                None,
                lambda n: seq.conv1d(g.sd, n, xz.j, w.j, None if b is None else b.j, k, 1, _MODES[padding]),
                (xz.shape[0], xz.shape[1], c_out),
                xz.dtype,
                inputs,
            )
        else:  # M2.1's oneDNN conv fails on most dilated shapes (Sequences.conv1d): the taps side by side
            total = (k - 1) * d
            left = total if padding == "causal" else total // 2
            spec = (k, d, left, total - left)
            wide = g.op(
                "taps",
                None,
                lambda n: seq.convColumns(g.sd, n, xz.j, *spec),
                (xz.shape[0], xz.shape[1], k * c_in),
                xz.dtype,
                (xz,),
            )
            y = ops.matmul(wide, ops.reshape(w, (k * c_in, c_out)))
            if b is not None:
                y = ops.add(y, b)
        if shaped_by(xz, x.mask):
            mark_shaped(y, x.mask)  # a stride-1 convolution keeps its input's batch and time
        if activation in _ELEMENTWISE:
            y = mark_shaped(activation(y), x.mask) if shaped_by(y, x.mask) else activation(y)
        elif activation is not None:
            y = unflatten(activation(ops.reshape(y, (-1, c_out))), x.mask, (c_out,))  # on [positions, out] rows
    # exactly 0 at padded positions (one elementwise op; no run-time check when y has the mask's batch and time)
    return Masked.derived(zero_padding(y, x.mask, name=stem), x.mask)
