"""Masked recurrent layers: LSTM (libnd4j's fused ``lstmLayer``) and GRU (unrolled plain ops).

Both take a :class:`~samediff_py.masked.Masked` ``[batch, time, d_in]`` value and return a
:class:`RecurrentOutput`: the per-position outputs (Masked ``[batch, time, hidden]``, or ``2 * hidden`` for a
bidirectional layer, forward half first; exactly 0 at padded positions) and the final state **taken at each
row's last valid step** (not at the padded end). A bidirectional layer's backward direction starts at each
row's last VALID step, so it never reads padding first; its final state is the state after the row's first
valid step (PyTorch's ``h_n`` convention). A row with no valid step gives zero outputs and a zero final state,
with zero (finite) gradients.

Right and left padding are both supported: the side is the one declared on the mask placeholder
(``mask_placeholder(..., padding="left")``), and the feed is checked against it. Every layer is pad-invariant:
a padded batch gives, at valid positions, what each row gives alone, truncated.

=========  =============================================================================================
layer      how (DL4J 1.0.0-M2.1)
=========  =============================================================================================
``lstm``   libnd4j's ``lstmLayer``, kept off padding by saturating its forget gate (1) and input gate (0) at
           padded steps through one extra input feature (``method="gates"``, the default), or by per-row
           lengths ``sum(mask, 1)`` (``method="lengths"``, 3.5x / 4.4x slower forward / backward in M2.1;
           left-padded rows are moved to the front and back). The stock M2.1 Java class ignores the lengths
           in its gradient and cannot be loaded from a file: ``samediffpy.Sequences.FixedLstm`` (registered
           JVM-wide, files stay plain DL4J) fixes both. Any time length, no unrolling.
``gru``    unrolled over a static ``max_len`` steps from plain ops (M2.1's ``gru`` op has a wrong gradient
           in its reset gate and ``gruCell`` has none); the mask is a state carry (a padded step keeps the
           state), so any padding layout works. Costs ~15 ops per step and direction: prefer ``lstm`` for
           long sequences.
=========  =============================================================================================

Weights (gate blocks along the last axis):

- LSTM: ``wx [d_in, 4n]``, ``wr [n, 4n]``, ``b [4n]``, gate order **i, f, g, o** (PyTorch's order:
  ``wx = weight_ih.T``, ``wr = weight_hh.T``, ``b = bias_ih + bias_hh``); bidirectional: a leading axis of 2
  (0 = forward, 1 = backward).
- GRU: ``wx [d_in, 3n]``, ``wh [n, 3n]``, ``b [3n]``, ``bh [n]``, gate order **r, u, c** with the reset gate
  applied after the recurrent matmul: ``c = tanh(x wx_c + b_c + r * (h wh_c + bh))``,
  ``h' = u * h + (1 - u) * c`` (PyTorch ``nn.GRU``: ``b = bias_ih + [bias_hh_r, bias_hh_z, 0]``,
  ``bh = bias_hh_n``); bidirectional: a leading axis of 2.

>>> import numpy as np
>>> from samediff_py import Graph, masked
>>> g = Graph(seed=0)
>>> x = g.placeholder("x", ("batch", "time", 3))
>>> m = masked.mask_placeholder(g, "mask")
>>> out = masked.lstm(masked.Masked(x, m), masked.LSTMParams.create(g, "lstm", 3, 4))
>>> y, h = g.run({"x": np.ones((2, 3, 3)), "mask": [[1, 1, 1], [1, 0, 0]]}, [out.outputs.value, out.last_h])
>>> y.shape, bool(np.allclose(h[1], y[1, 0])), bool((y[1, 1:] == 0).all())
((2, 3, 4), True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _jvm, ops
from ..errors import MaskError
from ..graph import Graph, Var
from .rows import mark_zero_padded, zero_padding
from .value import Masked, mask_padding, require_masked

__all__ = ["GRUParams", "LSTMParams", "RecurrentOutput", "gru", "lstm"]

_FWD, _BIDIR_CONCAT = 0, 3  # libnd4j lstmLayer direction modes


def _recurrent() -> Any:
    return _jvm.jclass("samediffpy.Sequences")


@dataclass
class RecurrentOutput:
    """What a masked recurrent layer returns.

    Attributes:
        outputs: Masked ``[batch, time, hidden]`` (``2 * hidden`` if bidirectional, forward half first);
            0 at padded positions.
        last_h: ``[batch, hidden]`` (``2 * hidden``: forward final state, then backward final state): the
            state at each row's last valid step (backward direction: after its first valid step); 0 for a
            row with no valid step.
        last_c: the LSTM's cell state, same layout (``None`` for a GRU).
    """

    outputs: Masked
    last_h: Var
    last_c: Var | None = None


def _glorot(graph: Graph, name: str, shape: tuple[int, ...], fan_in: int, fan_out: int) -> Var:
    lim = np.sqrt(6.0 / (fan_in + fan_out))
    return graph.variable(name, graph.rng.uniform(-lim, lim, shape))


@dataclass
class LSTMParams:
    """LSTM weights in libnd4j's layout (gate order i, f, g, o).

    ``wx [d_in, 4n]``, ``wr [n, 4n]``, ``b [4n]`` or ``None``; bidirectional: ``[2, ...]`` each (0 = forward,
    1 = backward).
    """

    wx: Var
    wr: Var
    b: Var | None = None

    @property
    def bidirectional(self) -> bool:
        """True if the weights have a leading direction axis of 2."""
        return self.wx.rank == 3

    @property
    def hidden(self) -> int:
        """The hidden size ``n``."""
        return int(self.wr.shape[-2])

    @property
    def d_in(self) -> int:
        """The input features ``d_in``."""
        return int(self.wx.shape[-2])

    @classmethod
    def create(
        cls, graph: Graph, name: str, d_in: int, hidden: int, *, bidirectional: bool = False, bias: bool = True
    ) -> LSTMParams:
        """Glorot-uniform weights, zero bias except 1 on the forget gate.

        Args:
            graph: the graph to create the variables in.
            name: scope of the variables (``<name>/wx`` ...).
            d_in: input features.
            hidden: hidden size ``n``.
            bidirectional: a leading axis of 2 on every weight.
            bias: create ``b``.

        Returns:
            The :class:`LSTMParams`.
        """
        lead = (2,) if bidirectional else ()
        with graph.scope(name):
            wx = _glorot(graph, "wx", (*lead, d_in, 4 * hidden), d_in, hidden)
            wr = _glorot(graph, "wr", (*lead, hidden, 4 * hidden), hidden, hidden)
            b = None
            if bias:
                b0 = np.zeros((*lead, 4 * hidden))
                b0[..., hidden : 2 * hidden] = 1.0
                b = graph.variable("b", b0)
        return cls(wx, wr, b)

    def check(self) -> None:
        """Raise ValueError unless every weight has the shape its layout needs."""
        n, lead = self.hidden, (2,) if self.bidirectional else ()
        want = {"wx": (*lead, self.d_in, 4 * n), "wr": (*lead, n, 4 * n), "b": (*lead, 4 * n)}
        for k, shape in want.items():
            v = getattr(self, k)
            if v is not None and v.shape != shape:
                raise ValueError(f"LSTMParams.{k} {v.name!r} has shape {v.shape}, expected {shape}")


@dataclass
class GRUParams:
    """GRU weights (gate order r, u, c; reset after the recurrent matmul).

    ``wx [d_in, 3n]``, ``wh [n, 3n]``, ``b [3n]`` or ``None``, ``bh [n]`` (recurrent bias of the candidate) or
    ``None``; bidirectional: ``[2, ...]`` each (0 = forward, 1 = backward).
    """

    wx: Var
    wh: Var
    b: Var | None = None
    bh: Var | None = None

    @property
    def bidirectional(self) -> bool:
        """True if the weights have a leading direction axis of 2."""
        return self.wx.rank == 3

    @property
    def hidden(self) -> int:
        """The hidden size ``n``."""
        return int(self.wh.shape[-2])

    @property
    def d_in(self) -> int:
        """The input features ``d_in``."""
        return int(self.wx.shape[-2])

    @classmethod
    def create(
        cls, graph: Graph, name: str, d_in: int, hidden: int, *, bidirectional: bool = False, bias: bool = True
    ) -> GRUParams:
        """Glorot-uniform weights, zero biases.

        Args:
            graph: the graph to create the variables in.
            name: scope of the variables (``<name>/wx`` ...).
            d_in: input features.
            hidden: hidden size ``n``.
            bidirectional: a leading axis of 2 on every weight.
            bias: create ``b`` and ``bh``.

        Returns:
            The :class:`GRUParams`.
        """
        lead = (2,) if bidirectional else ()
        with graph.scope(name):
            wx = _glorot(graph, "wx", (*lead, d_in, 3 * hidden), d_in, hidden)
            wh = _glorot(graph, "wh", (*lead, hidden, 3 * hidden), hidden, hidden)
            b = graph.variable("b", np.zeros((*lead, 3 * hidden))) if bias else None
            bh = graph.variable("bh", np.zeros((*lead, hidden))) if bias else None
        return cls(wx, wh, b, bh)

    def check(self) -> None:
        """Raise ValueError unless every weight has the shape its layout needs."""
        n, lead = self.hidden, (2,) if self.bidirectional else ()
        want = {"wx": (*lead, self.d_in, 3 * n), "wh": (*lead, n, 3 * n), "b": (*lead, 3 * n), "bh": (*lead, n)}
        for k, shape in want.items():
            v = getattr(self, k)
            if v is not None and v.shape != shape:
                raise ValueError(f"GRUParams.{k} {v.name!r} has shape {v.shape}, expected {shape}")


# ============================================================================ helpers
def _check_input(x: Masked, d_in: int, what: str) -> Masked:
    x = require_masked(x, what)
    if x.value.rank != 3:
        raise MaskError(f"{what} takes a [batch, time, features] value, got shape {x.value.shape}")
    if x.value.shape[2] is not None and x.value.shape[2] != d_in:
        raise ValueError(f"{what}: the input has {x.value.shape[2]} features but the weights expect {d_in}")
    if x.value.dtype.kind != "f":
        raise TypeError(f"{what}: the input must be floating point, got {x.value.dtype}")
    return x


def lengths_from_mask(mask: Var, name: str | None = None) -> Var:
    """Number of valid steps per row: ``sum(mask, 1)``.

    Args:
        mask: ``[batch, time]`` float mask (1 = valid).
        name: optional name of the output node.

    Returns:
        ``[batch]`` int32 Var.
    """
    return ops.cast(ops.sum(mask, 1), np.int32, name=name)


def reverse_time(x: Var, name: str | None = None) -> Var:
    """``x[:, ::-1]``: the time axis (1) reversed.

    Args:
        x: ``[batch, time, ...]`` Var.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    g = x.graph
    return g.op("reverse", name, lambda n: _recurrent().reverse(g.sd, n, x.j, 1), x.shape, x.dtype, (x,))


def reverse_valid(x: Var, lengths: Var, name: str | None = None) -> Var:
    """Each row's first ``lengths[b]`` steps reversed along time, the rest kept (``reverseSequence``).

    Args:
        x: ``[batch, time, ...]`` Var.
        lengths: ``[batch]`` int32 lengths.
        name: optional name of the output node.

    Returns:
        Var of ``x``'s shape and dtype.
    """
    g = x.graph
    return g.op(
        "reverse_sequence",
        name,
        lambda n: _recurrent().reverseSequence(g.sd, n, x.j, lengths.j),
        x.shape,
        x.dtype,
        (x, lengths),
    )


def _extra_output(g: Graph, base: str, java: Any, shape: tuple, dtype: Any, parent: Var) -> Var:
    """A further output of a multi-output op already built (``java``), registered under ``base``."""
    return g.op(base, base, lambda n: java, shape, dtype, (parent,))


def _join_directions(last: Var, name: str) -> Var:
    """``[2, batch, n]`` (forward, backward) -> ``[batch, 2n]``."""
    return ops.concat([last[0], last[1]], -1, name=name)


# ============================================================================ LSTM
def _layer_name(g: Graph, base: str, name: str | None) -> tuple[str, str]:
    """(full name, last component) of a layer's output node; its internals live under ``<last>/``."""
    if name is not None and "/" in name:
        raise ValueError(f"name {name!r}: give a plain name (use graph.scope(...) for prefixes)")
    full = g.unique_name(base, name)
    return full, full.split("/")[-1]


SATURATE = 1e4  # added to the forget gate's and subtracted from the input gate's pre-activation at padding


def _pad_gate_rows(params: LSTMParams, g: Graph) -> Var:
    """Constant rows for the pad-indicator input feature: ``[1, 4n]`` (``[2, 1, 4n]`` bidirectional).

    ``-SATURATE`` on the input gate, ``+SATURATE`` on the forget gate, 0 elsewhere.
    """
    n = params.hidden
    row = np.zeros(4 * n)
    row[:n], row[n : 2 * n] = -SATURATE, SATURATE
    rows = np.stack([row[None], row[None]]) if params.bidirectional else row[None]
    return g.constant("pad_gate_rows", rows.astype(g.dtype if params.wx.dtype == g.dtype else params.wx.dtype))


def _edge_weights(mask: Var, last: bool) -> Var:
    """``[batch, time, 1]``: 1 at each row's last (``last``) or first valid step, else 0 (contiguous masks).

    Where the running count of valid steps equals the row's count (last) or 1 (first). Not from shifted slices
    of the mask (``mask[:, 1:]``): for a sequence of length 1 that slice is empty, and M2.1's strided slice to an
    empty result is undefined (measured: a wrong shape, "Unknown exception", or a JVM crash).
    """
    count = ops.cumsum(mask, 1)
    target = ops.sum(mask, 1, keepdims=True) if last else 1.0
    at = ops.cast(ops.equal(count, ops.add(ops.zeros_like(count), target)), mask.dtype)
    return ops.expand_dims(ops.multiply(mask, at), -1)


def lstm(x: Masked, params: LSTMParams, *, name: str | None = None, method: str = "gates") -> RecurrentOutput:
    """Masked LSTM (sigmoid gates, tanh candidate and output) over ``x``; direction from ``params``.

    Args:
        x: Masked ``[batch, time, d_in]``; its mask must be right- or left-padded (declared on the mask
            placeholder; a mask declared ``padding="any"`` is refused: use :func:`gru` for it).
        params: :class:`LSTMParams` (bidirectional if its weights have a leading axis of 2).
        name: name of the outputs node (the final states are ``<name>/last_h`` and ``<name>/last_c``).
        method: how libnd4j's ``lstmLayer`` is kept off the padding (both exact, same results):

            - ``"gates"`` (default): one extra input feature, 1 at padded steps, whose fixed weights saturate
              the forget gate to exactly 1 and the input gate to exactly 0 there: a padded step keeps the cell
              state exactly, and a state that is still zero (leading padding) stays exactly zero, so every
              row and direction sees its valid steps as if alone. The final cell state comes from the op; the
              final hidden state is read at the row's last (backward: first) valid step. No lengths: the fast
              path (M2.1's lstmLayer is 3.5x slower forward and 4.4x slower backward with lengths, measured);
            - ``"lengths"``: the op's sequence-length input ``sum(mask, 1)``; left-padded rows are moved to the
              front and back with ``reverse`` + ``reverseSequence``.

    Returns:
        :class:`RecurrentOutput` with ``last_c`` set. Definition per row and direction, over its valid steps
        only (``z = x_t wx + h_{t-1} wr + b`` split into i, f, g, o)::

            i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_g)
            c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t);    h_0 = c_0 = 0

    >>> import numpy as np
    >>> from samediff_py import Graph, masked
    >>> g = Graph(seed=1)
    >>> x = g.placeholder("x", ("batch", "time", 2))
    >>> m = masked.mask_placeholder(g, "mask", padding="left")
    >>> out = masked.lstm(masked.Masked(x, m), masked.LSTMParams.create(g, "bi", 2, 3, bidirectional=True))
    >>> xs = np.random.default_rng(0).normal(size=(2, 4, 2))
    >>> y = g.run({"x": xs, "mask": [[1, 1, 1, 1], [0, 0, 1, 1]]}, out.outputs.value)
    >>> alone = g.run({"x": xs[1:, 2:], "mask": [[1, 1]]}, out.outputs.value)   # row 1 unpadded
    >>> y.shape, bool(np.allclose(y[1, 2:], alone[0], atol=1e-6)), bool((y[1, :2] == 0).all())
    ((2, 4, 6), True, True)
    """
    params.check()
    x = _check_input(x, params.d_in, "lstm")
    if method not in ("gates", "lengths"):
        raise ValueError(f"lstm: method must be 'gates' or 'lengths', got {method!r}")
    g = x.graph
    side = mask_padding(g, x.mask)
    if side not in ("right", "left"):
        raise MaskError(
            f"lstm needs a right- or left-padded mask; {x.mask.name!r} is declared padding={side!r}. libnd4j's "
            "lstmLayer takes per-row lengths, not holes: use masked.gru (the mask as a state carry) for such masks"
        )
    n, bi = params.hidden, params.bidirectional
    b_, t_ = x.value.shape[0], x.value.shape[1]
    full, stem = _layer_name(g, "lstm", name)
    built: dict[str, Any] = {}
    mode = _BIDIR_CONCAT if bi else _FWD
    bj = params.b.j if params.b is not None else None
    shape = (b_, t_, 2 * n if bi else n)
    last_shape = (2, b_, n) if bi else (b_, n)

    if method == "gates":
        with g.scope(stem):
            pad = ops.expand_dims(ops.subtract(1.0, x.mask), -1)  # [B, T, 1]: 1 at padding
            xin = ops.concat([zero_padding(x.value, x.mask), pad], -1, name="gated_input")
            wx = ops.concat([params.wx, _pad_gate_rows(params, g)], params.wx.rank - 2, name="gated_wx")

            def build(nm: str) -> Any:
                outs = _recurrent().lstm(g.sd, nm, xin.j, None, wx.j, params.wr.j, bj, mode)
                built["outs"] = outs
                return outs[0]

            parents = tuple(v for v in (xin, wx, params.wr, params.b) if v is not None)
            raw = g.op("lstm", "raw", build, shape, x.dtype, parents)
            cl = _extra_output(g, "last_c_dirs" if bi else "last_c", built["outs"][2], last_shape, x.dtype, raw)
            # the hidden state moves at padded steps (o * tanh(c)): read it at the row's last valid step
            # (backward direction: its first), where the op's outputs are exact
            h_fwd = ops.sum(ops.multiply(raw[..., :n] if bi else raw, _edge_weights(x.mask, True)), 1)
            if bi:
                h_bwd = ops.sum(ops.multiply(raw[..., n:], _edge_weights(x.mask, False)), 1)
                hl = ops.concat([h_fwd, h_bwd], -1, name="last_h")
                cl = _join_directions(cl, "last_c")
            else:
                hl = ops.multiply(h_fwd, 1.0, name="last_h")
        h = zero_padding(raw, x.mask, name=stem)  # exactly 0 at padding
        return RecurrentOutput(Masked.derived(h, x.mask), hl, cl)

    def build_len(nm: str) -> Any:
        outs = _recurrent().lstm(g.sd, nm, xin.j, lengths.j, params.wx.j, params.wr.j, bj, mode)
        built["outs"] = outs
        return outs[0]

    with g.scope(stem):
        lengths = lengths_from_mask(x.mask, name="lengths")
        xin = zero_padding(x.value, x.mask)  # exact zeros at padding (skipped steps; finite values keep it that way)
        if side == "left":
            xin = reverse_valid(reverse_time(xin), lengths, name="valid_first")
    parents = tuple(v for v in (xin, lengths, params.wx, params.wr, params.b) if v is not None)
    if side == "right":
        h = g.op("lstm", stem, build_len, shape, x.dtype, parents)
    with g.scope(stem):
        if side == "left":
            raw = g.op("lstm", "raw", build_len, shape, x.dtype, parents)
        src = h if side == "right" else raw
        hl = _extra_output(g, "last_h_dirs" if bi else "last_h", built["outs"][1], last_shape, x.dtype, src)
        cl = _extra_output(g, "last_c_dirs" if bi else "last_c", built["outs"][2], last_shape, x.dtype, src)
        if bi:
            hl, cl = _join_directions(hl, "last_h"), _join_directions(cl, "last_c")
        if side == "left":
            back = reverse_valid(raw, lengths, name="back")
    if side == "left":
        h = reverse_time(back, name=stem)
    return RecurrentOutput(Masked.derived(mark_zero_padded(h, x.mask), x.mask), hl, cl)  # the op writes 0 there


# ============================================================================ GRU
def gru(x: Masked, params: GRUParams, *, max_len: int, name: str | None = None) -> RecurrentOutput:
    """Masked GRU over ``x``, unrolled over ``max_len`` steps; direction from ``params``.

    Args:
        x: Masked ``[batch, time, d_in]`` with ``time <= max_len`` (checked when fed, for a mask
            placeholder); any padding layout (right, left, even holes: padded steps keep the state).
        params: :class:`GRUParams` (bidirectional if its weights have a leading axis of 2).
        max_len: the number of unrolled steps; shorter feeds are padded to it inside the graph, so every
            run costs ``max_len`` steps (about 15 SameDiff ops per step and direction, forward; 4-6x the
            fused LSTM's training time at equal length).
        name: name of the outputs node (the final state is ``<name>/last_h``).

    Returns:
        :class:`RecurrentOutput` (``last_c`` is ``None``). Definition per row and direction, over its valid
        steps only (``zx = x_t wx + b``, ``zh = h_{t-1} wh``, each split into r, u, c)::

            r = sigmoid(zx_r + zh_r);  u = sigmoid(zx_u + zh_u);  c = tanh(zx_c + r * (zh_c + bh))
            h_t = u * h_{t-1} + (1 - u) * c;   h_0 = 0

    >>> import numpy as np
    >>> from samediff_py import Graph, masked
    >>> g = Graph(seed=2)
    >>> x = g.placeholder("x", ("batch", "time", 2))
    >>> m = masked.mask_placeholder(g, "mask")
    >>> out = masked.gru(masked.Masked(x, m), masked.GRUParams.create(g, "gru", 2, 3), max_len=4)
    >>> xs = np.random.default_rng(0).normal(size=(2, 3, 2))
    >>> y, h = g.run({"x": xs, "mask": [[1, 1, 1], [1, 1, 0]]}, [out.outputs.value, out.last_h])
    >>> y.shape, bool(np.allclose(h[1], y[1, 1])), bool((y[1, 2] == 0).all())
    ((2, 3, 3), True, True)
    """
    params.check()
    x = _check_input(x, params.d_in, "gru")
    g = x.graph
    max_len = int(max_len)
    if max_len < 1:
        raise ValueError(f"gru: max_len must be >= 1, got {max_len}")
    if x.value.shape[1] is not None and x.value.shape[1] > max_len:
        raise ValueError(f"gru: the input has {x.value.shape[1]} steps, more than max_len={max_len}")
    if x.mask.kind == "placeholder":
        g.add_check("length", placeholder=x.mask.name, axis=1, max=max_len, what=f"the GRU's max_len ({max_len})")
    n, d_in, bi = params.hidden, params.d_in, params.bidirectional
    b_, t_ = x.value.shape[0], x.value.shape[1]
    full, stem = _layer_name(g, "gru", name)
    dirs = (False, True) if bi else (False,)

    def pick(v: Var | None, k: int) -> Var | None:
        return None if v is None else (v[k] if bi else v)

    with g.scope(stem):
        xin = zero_padding(x.value, x.mask)
        ys, lasts = [], []
        for k, reverse in enumerate(dirs):
            wx, wh, b, bh = (pick(v, k) for v in (params.wx, params.wh, params.b, params.bh))
            built: dict[str, Any] = {}

            def build(nm: str, wx=wx, wh=wh, b=b, bh=bh, reverse=reverse, built=built) -> Any:
                outs = _recurrent().gru(
                    g.sd, nm, xin.j, x.mask.j, wx.j, wh.j, None if b is None else b.j, None if bh is None else bh.j,
                    max_len, d_in, n, reverse,
                )  # fmt: skip
                built["outs"] = outs
                return outs[0]

            parents = tuple(v for v in (xin, x.mask, wx, wh, b, bh) if v is not None)
            label = ("backward" if reverse else "forward") if bi else None
            if label is None:
                y = None  # the single direction's output is the layer's node itself, named below
            else:
                y = g.op("gru", label, build, (b_, t_, n), x.dtype, parents)
                lasts.append(_extra_output(g, f"{label}_last_h", built["outs"][1], (b_, n), x.dtype, y))
            ys.append((y, build, parents, built))
        if bi:
            last = ops.concat(lasts, -1, name="last_h")
    if bi:
        h = ops.concat([ys[0][0], ys[1][0]], -1, name=stem)
    else:
        _, build, parents, built = ys[0]
        h = g.op("gru", stem, build, (b_, t_, n), x.dtype, parents)
        with g.scope(stem):
            last = _extra_output(g, "last_h", built["outs"][1], (b_, n), x.dtype, h)
    return RecurrentOutput(Masked.derived(mark_zero_padded(h, x.mask), x.mask), last)  # selected in the graph
