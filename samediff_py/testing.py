"""Pad-invariance assertions for your own test suite.

A model is pad-invariant when padding (mask 0) changes nothing at the valid positions: not the outputs, not
the loss, not any parameter gradient; and no gradient flows into padded inputs. These helpers check exactly
that, numerically, on a real graph, in three modes:

- **alone** (the true reference): each row is run by itself, truncated to its valid positions (a batch of
  one, no padding at all), and compared with the padded batch at the valid positions. An effect that is
  already present with one pad is caught here (the other modes compare padded runs with each other);
- **append**: ``k`` pad positions are added along the ``time`` dimension of every placeholder that has it,
  on the padding side of the mask (appended for right padding, PREPENDED for masks declared
  ``padding="left"``); masks get 0 there, other inputs get filler;
- **fill**: positions already padded in your feed are refilled with each filler in turn: random values,
  NaN, inf and 1e30 for float inputs (random ids, or ``pad_values[name]``, for integer inputs).

Outputs are compared at valid positions (for :class:`~samediff_py.masked.Masked` outputs) or in full (for
pooled values, losses, metrics). In "append" and "fill" modes the loss and every trainable variable's
gradient are compared too, and the gradient into ``grad_inputs`` must be exactly 0 at padded positions.

>>> import numpy as np
>>> from samediff_py import Graph, masked
>>> g = Graph()
>>> x = g.placeholder("x", ("batch", "time", 2))
>>> m = masked.mask_placeholder(g, "mask")
>>> w = g.variable("w", np.ones((2, 2), np.float32))
>>> h = masked.Masked(x, m) @ w
>>> feeds = {"x": np.ones((2, 3, 2)), "mask": [[1, 1, 0], [1, 1, 1]]}
>>> assert_pad_invariant(g, feeds, [h, masked.mean_pool(h)]).ok
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PadInvarianceError
from .graph import Graph, Var
from .masked import Masked

__all__ = ["FILLS", "Finding", "PadInvarianceError", "PadReport", "assert_pad_invariant", "check_pad_invariance"]

FILLS: tuple[Any, ...] = ("random", "nan", "inf", 1e30)  # float filler at padded positions, one run each


@dataclass
class Finding:
    """One difference found by :func:`check_pad_invariance`.

    ``check`` ('output', 'loss', 'grad', 'input-grad'), ``mode`` ('alone', 'append', 'fill:<filler>'), ``k`` pads (or
    the row, for 'alone'), which ``output``, the first offending ``position`` (index tuple), the max |difference|, and
    the values there (reference vs padded run).
    """

    check: str
    mode: str
    k: int
    output: str
    position: tuple[int, ...]
    max_abs_diff: float
    expected: float
    got: float

    def __str__(self) -> str:
        what = f"row {self.k} alone" if self.mode == "alone" else f"{self.mode}, k={self.k}"
        return (
            f"{self.check} {self.output!r} ({what}): max |diff| {self.max_abs_diff:.3g} "
            f"at {self.position}: expected {self.expected:.6g}, got {self.got:.6g}"
        )


@dataclass
class PadReport:
    """All findings plus the max drift per (check, mode, k, output) whether or not it failed."""

    findings: list[Finding] = field(default_factory=list)
    drift: dict[tuple[str, str, int, str], float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True if nothing differed."""
        return not self.findings

    def max_drift(self, check: str | None = None, mode: str | None = None) -> float:
        """The largest difference seen for ``check`` (and ``mode``, matched by prefix), passed or not."""
        vals = [
            v
            for (c, md, *_), v in self.drift.items()
            if (check is None or c == check) and (mode is None or md.startswith(mode))
        ]
        return max(vals, default=0.0)

    def __str__(self) -> str:
        if self.ok:
            return f"pad-invariant (max drift {self.max_drift():.3g} over {len(self.drift)} comparisons)"
        lines = [f"NOT pad-invariant: {len(self.findings)} difference(s)"]
        lines += [f"  - {f}" for f in self.findings[:20]]
        if len(self.findings) > 20:
            lines.append(f"  ... and {len(self.findings) - 20} more")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- feeds
def _axes(graph: Graph, names: Sequence[str], dim: str) -> dict[str, int]:
    """Map placeholder name -> axis of the named dimension ``dim``, for the fed placeholders that have it."""
    out = {}
    for n in names:
        spec = graph.placeholders[n]
        if dim in spec.dims:
            out[n] = spec.dims.index(dim)
    return out


def _filler(a: np.ndarray, shape: tuple[int, ...], fill: Any, pad_value: Any, rng: np.random.Generator) -> np.ndarray:
    if pad_value is not None:
        return np.full(shape, pad_value, a.dtype)
    if a.dtype.kind in "iu":
        hi = int(a.max(initial=0)) + 1
        return rng.integers(0, max(hi, 1), shape).astype(a.dtype)
    if a.dtype == np.bool_:
        return rng.random(shape) < 0.5
    if fill == "random":
        return rng.normal(0.0, 10.0, shape).astype(a.dtype)
    if fill == "huge":
        return (rng.choice([-1.0, 1.0], shape) * 1e4).astype(a.dtype)
    if fill == "nan":
        return np.full(shape, np.nan, a.dtype)
    if fill == "inf":
        return (rng.choice([-1.0, 1.0], shape) * np.inf).astype(a.dtype)
    if isinstance(fill, (int, float)):
        return (rng.choice([-1.0, 1.0], shape) * float(fill)).astype(a.dtype)
    raise ValueError(f"unknown filler {fill!r}: use 'random', 'huge', 'nan', 'inf' or a number")


def _pad_side(graph: Graph, mask: str) -> str:
    return graph.meta.get("masks", {}).get(mask, {}).get("padding", "right")


def _add_pads(
    feeds: dict[str, np.ndarray], axes: dict[str, int], masks: set[str], k: int, side: str, fill: Any,
    pad_values: Mapping[str, Any], rng: np.random.Generator,
) -> dict[str, np.ndarray]:  # fmt: skip
    """``k`` pad positions on the time axis of every placeholder that has one (before them for left padding)."""
    out = dict(feeds)
    for n, ax in axes.items():
        a = feeds[n]
        shape = list(a.shape)
        shape[ax] = k
        extra = np.zeros(shape, a.dtype) if n in masks else _filler(a, tuple(shape), fill, pad_values.get(n), rng)
        out[n] = np.concatenate([extra, a] if side == "left" else [a, extra], axis=ax)
    return out


def _refill(
    feeds: dict[str, np.ndarray], axes: dict[str, int], masks: set[str], mask_name: str, fill: Any,
    pad_values: Mapping[str, Any], rng: np.random.Generator,
) -> dict[str, np.ndarray] | None:  # fmt: skip
    pad = np.asarray(feeds[mask_name]) == 0  # [batch, time]
    if not pad.any():
        return None
    out = dict(feeds)
    for n, ax in axes.items():
        if n in masks or ax != 1 or feeds[n].shape[:2] != pad.shape:
            continue
        a = feeds[n].copy()
        sel = np.broadcast_to(pad.reshape(pad.shape + (1,) * (a.ndim - 2)), a.shape)
        a[sel] = _filler(a, a.shape, fill, pad_values.get(n), rng)[sel]
        out[n] = a
    return out


def _alone(
    graph: Graph, feeds: dict[str, np.ndarray], mask: str, b: int, valid: np.ndarray, time_dim: str, batch_dim: str
) -> dict[str, np.ndarray]:
    """Row ``b`` by itself: a batch of one holding only its valid time positions."""
    out = {}
    for n, a in feeds.items():
        dims = graph.placeholders[n].dims
        if batch_dim in dims:
            a = np.take(a, [b], axis=dims.index(batch_dim))
        if time_dim in dims:
            a = np.take(a, valid, axis=dims.index(time_dim))
        out[n] = a
    return out


# ----------------------------------------------------------------------------------------------- compare
def _compare(report: PadReport, check: str, mode: str, k: int, name: str, ref: np.ndarray, got: np.ndarray,
             sel: np.ndarray | None, atol: float, rtol: float) -> None:  # fmt: skip
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"{name}: shape changed from {ref.shape} to {got.shape} under padding ({mode})")
    sel = np.ones(ref.shape, bool) if sel is None else np.broadcast_to(sel, ref.shape)
    diff = np.where(sel, np.abs(ref - got), 0.0)
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN where a finite value was expected is the worst case
    report.drift[(check, mode, k, name)] = float(diff.max(initial=0.0))
    bad = sel & ~np.isclose(got, ref, rtol=rtol, atol=atol)
    if bad.any():
        pos = tuple(int(i) for i in np.unravel_index(np.argmax(np.where(bad, diff, -1.0)), ref.shape))
        report.findings.append(Finding(check, mode, k, name, pos, float(diff.max()), float(ref[pos]), float(got[pos])))


def _valid_sel(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    m = np.asarray(mask) > 0
    return m.reshape(m.shape + (1,) * (like.ndim - 2))


def _shift(a: np.ndarray, k: int, side: str) -> np.ndarray:
    """The original time positions of an output of a run with ``k`` pads added on ``side``."""
    return a[:, k:] if side == "left" else a[:, : a.shape[1] - k]


def check_pad_invariance(
    graph: Graph,
    feeds: Mapping[str, Any],
    outputs: Sequence[Var | Masked],
    *,
    loss: Var | None = None,
    grad_inputs: Sequence[Var | str] = (),
    mask: str = "mask",
    time_dim: str = "time",
    batch_dim: str = "batch",
    ks: Sequence[int] = (1, 3, 16),
    modes: Sequence[str] = ("alone", "append", "fill"),
    fills: Sequence[Any] = FILLS,
    fill: Any = None,
    pad_values: Mapping[str, Any] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    seed: int = 0,
) -> PadReport:
    """Run the checks described in the module docstring and return a :class:`PadReport`.

    Never raises for differences (see :func:`assert_pad_invariant`).

    Args:
        graph: the graph.
        feeds: a padded batch for it (numpy arrays by placeholder name).
        outputs: ``Masked`` values (compared at valid positions of their own mask) and plain ``Var`` (compared
            in full: pooled values, metrics; in "alone" mode per row if their leading axis is the batch).
        loss: if given, its value and every trainable variable's gradient are compared too ("append", "fill").
        grad_inputs: float placeholders whose gradient from ``loss`` must be exactly 0 at padded positions.
        mask: the mask placeholder that describes the padded time axis (its declared padding side decides
            where "append" adds pads: after the tokens, or before them for ``padding="left"``).
        time_dim: the name of the time dimension in the placeholders' dims.
        batch_dim: the name of the batch dimension in the placeholders' dims.
        ks: numbers of added pad positions ("append").
        modes: any of ``"alone"``, ``"append"``, ``"fill"``.
        fills: fillers for float inputs at padded positions: ``"random"`` (N(0, 10)), ``"huge"`` (±1e4),
            ``"nan"``, ``"inf"`` (±inf) or a number (±number); "fill" runs once per filler, "append" uses
            them in turn. Integer inputs get random ids from their observed range, unless ``pad_values[name]``
            is given.
        fill: one filler; overrides ``fills``.
        pad_values: fixed values for integer inputs at padded positions, by placeholder name.
        atol: absolute tolerance of every comparison.
        rtol: relative tolerance of every comparison.
        seed: seed of the random fillers and ids.

    Returns:
        The :class:`PadReport`.
    """
    rng = np.random.default_rng(seed)
    pad_values = dict(pad_values or {})
    fills = (fill,) if fill is not None else tuple(fills)
    unknown = set(modes) - {"alone", "append", "fill"}
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}: use 'alone', 'append', 'fill'")
    base = graph.check_feeds(feeds)
    if mask not in base:
        raise ValueError(f"feeds have no mask placeholder {mask!r}")
    axes = _axes(graph, list(base), time_dim)
    if not axes:
        raise ValueError(f"no fed placeholder has a dimension named {time_dim!r}; name it in graph.placeholder(...)")
    masks = set(graph.meta.get("masks", {})) | {mask}
    side = _pad_side(graph, mask)
    report = PadReport()

    flat: list[Var] = []
    kinds: list[tuple[str, bool]] = []
    for o in outputs:
        if isinstance(o, Masked):
            flat += [o.value, o.mask]
            kinds.append((o.value.name, True))
        else:
            flat.append(o)
            kinds.append((o.name, False))

    def evaluate(fd: dict[str, np.ndarray], grads: bool = True):
        vals = graph.run(fd, flat + ([loss] if loss is not None else []))  # one forward pass for all
        lval = float(vals.pop()) if loss is not None else None
        g = graph.gradients(fd, loss, [*graph.trainable(), *grad_inputs]) if loss is not None and grads else {}
        return vals, lval, g

    ref_vals, ref_loss, ref_grads = evaluate(base)
    trainable = {v.name for v in graph.trainable()}
    mask_now = np.asarray(base[mask])

    if "alone" in modes:
        batch = mask_now.shape[0]
        for b in range(batch):
            valid = np.flatnonzero(mask_now[b] > 0)
            if len(valid) == 0:
                continue  # a fully padded row has no unpadded version (zeros by contract; tested on its own)
            vals, _, _ = evaluate(_alone(graph, base, mask, b, valid, time_dim, batch_dim), grads=False)
            i = 0
            for name, is_masked in kinds:
                if is_masked:
                    ref_row = ref_vals[i][b : b + 1][:, valid]
                    sel = _valid_sel(ref_vals[i + 1][b : b + 1][:, valid], ref_row)
                    _compare(report, "output", "alone", b, name, ref_row, vals[i], sel, atol, rtol)
                    i += 2
                else:
                    if np.ndim(ref_vals[i]) and np.shape(ref_vals[i])[0] == batch and np.shape(vals[i])[0] == 1:
                        _compare(report, "output", "alone", b, name, ref_vals[i][b : b + 1], vals[i], None, atol, rtol)
                    i += 1

    runs: list[tuple[str, int, dict[str, np.ndarray]]] = []
    if "append" in modes:
        for j, k in enumerate(ks):
            f = fills[j % len(fills)]
            runs.append(("append", k, _add_pads(base, axes, masks, k, side, f, pad_values, rng)))
    if "fill" in modes:
        # integer inputs (token ids) ignore the float filler: one refill is enough for them
        floats = [n for n in axes if n not in masks and base[n].dtype.kind == "f"]
        for f in fills if floats else fills[:1]:
            refilled = _refill(base, axes, masks, mask, f, pad_values, rng)
            if refilled is not None:
                runs.append((f"fill:{f}", 0, refilled))

    for mode, k, fd in runs:
        vals, lval, grads = evaluate(fd)
        i = 0
        for name, is_masked in kinds:
            if is_masked:
                got = _shift(vals[i], k, side) if k else vals[i]
                _compare(report, "output", mode, k, name, ref_vals[i], got, _valid_sel(ref_vals[i + 1], got),
                         atol, rtol)  # fmt: skip
                i += 2
            else:
                _compare(report, "output", mode, k, name, ref_vals[i], vals[i], None, atol, rtol)
                i += 1
        if loss is not None:
            _compare(report, "loss", mode, k, loss.name, np.array(ref_loss), np.array(lval), None, atol, rtol)
            for n in trainable:
                _compare(report, "grad", mode, k, n, ref_grads[n], grads[n], None, atol, rtol)
            pad_now = np.asarray(fd[mask]) == 0
            for gi in grad_inputs:
                n = gi if isinstance(gi, str) else gi.name
                g = grads[n]
                sel = np.broadcast_to(pad_now.reshape(pad_now.shape + (1,) * (g.ndim - 2)), g.shape)
                leaked = np.where(sel, np.abs(g), 0.0)
                report.drift[("input-grad", mode, k, n)] = float(leaked.max(initial=0.0))
                if leaked.max(initial=0.0) != 0.0:
                    pos = tuple(int(j) for j in np.unravel_index(np.argmax(leaked), g.shape))
                    report.findings.append(
                        Finding("input-grad", mode, k, n, pos, float(leaked.max()), 0.0, float(g[pos]))
                    )
    return report


def assert_pad_invariant(
    graph: Graph, feeds: Mapping[str, Any], outputs: Sequence[Var | Masked], **kwargs: Any
) -> PadReport:
    """Run :func:`check_pad_invariance`, raising :class:`PadInvarianceError` if anything differs.

    The error is an ``AssertionError`` that names the output, position and amount. Returns the report when all is well.

    Args:
        graph: as for :func:`check_pad_invariance`.
        feeds: as for :func:`check_pad_invariance`.
        outputs: as for :func:`check_pad_invariance`.
        **kwargs: its keyword options.

    Returns:
        The :class:`PadReport` (``.max_drift()`` tells how close the comparisons came).
    """
    report = check_pad_invariance(graph, feeds, outputs, **kwargs)
    if not report.ok:
        raise PadInvarianceError(report)
    return report
