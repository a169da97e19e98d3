"""Pad-invariance assertions for your own test suite.

A model is pad-invariant when adding padding (mask 0) changes nothing at the valid positions: not the
outputs, not the loss, not any parameter gradient; and no gradient flows into padded inputs. These helpers
check exactly that, numerically, on a real graph:

- **append**: k positions are appended along the ``time`` dimension of every placeholder that has it (the
  named dim, e.g. ``("batch", "time")``); masks get 0 there, other inputs get filler (random ids / huge or
  random floats);
- **fill**: positions already padded in your feed are refilled with different filler;

and outputs are compared at valid positions (for :class:`~samediff_py.masked.Masked` outputs) or in full
(for pooled values, losses, metrics).

>>> import numpy as np
>>> from samediff_py import Graph, masked
>>> g = Graph()
>>> x = g.placeholder("x", ("batch", "time", 2))
>>> m = masked.mask_placeholder(g, "mask")
>>> w = g.variable("w", np.ones((2, 2), np.float32))
>>> h = masked.Masked(x, m) @ w
>>> feeds = {"x": np.ones((1, 3, 2)), "mask": [[1, 1, 0]]}
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

__all__ = ["Finding", "PadInvarianceError", "PadReport", "assert_pad_invariant", "check_pad_invariance"]


@dataclass
class Finding:
    """One difference: ``check`` ('output', 'loss', 'grad', 'input-grad'), ``mode`` ('append'/'fill'), ``k``
    pads, which ``output``, the first offending ``position`` (index tuple), the max |difference|, and the
    values there (reference vs padded run)."""

    check: str
    mode: str
    k: int
    output: str
    position: tuple[int, ...]
    max_abs_diff: float
    expected: float
    got: float

    def __str__(self) -> str:
        return (
            f"{self.check} {self.output!r} ({self.mode}, k={self.k}): max |diff| {self.max_abs_diff:.3g} "
            f"at {self.position}: expected {self.expected:.6g}, got {self.got:.6g}"
        )


@dataclass
class PadReport:
    """All findings plus the max drift per (check, mode, k, output) whether or not it failed."""

    findings: list[Finding] = field(default_factory=list)
    drift: dict[tuple[str, str, int, str], float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def max_drift(self, check: str | None = None) -> float:
        vals = [v for (c, *_), v in self.drift.items() if check is None or c == check]
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
def _time_axes(graph: Graph, names: Sequence[str], time_dim: str) -> dict[str, int]:
    out = {}
    for n in names:
        spec = graph.placeholders[n]
        if time_dim in spec.dims:
            out[n] = spec.dims.index(time_dim)
    if not out:
        raise ValueError(f"no fed placeholder has a dimension named {time_dim!r}; name it in graph.placeholder(...)")
    return out


def _filler(a: np.ndarray, shape: tuple[int, ...], fill: str, pad_value: Any, rng: np.random.Generator) -> np.ndarray:
    if pad_value is not None:
        return np.full(shape, pad_value, a.dtype)
    if a.dtype.kind in "iu":
        hi = int(a.max(initial=0)) + 1
        return rng.integers(0, max(hi, 1), shape).astype(a.dtype)
    if a.dtype == np.bool_:
        return rng.random(shape) < 0.5
    if fill == "huge":
        return (rng.choice([-1.0, 1.0], shape) * 1e4).astype(a.dtype)
    return (rng.normal(0.0, 10.0, shape)).astype(a.dtype)


def _append(
    graph: Graph, feeds: dict[str, np.ndarray], axes: dict[str, int], masks: set[str], k: int, fill: str,
    pad_values: Mapping[str, Any], rng: np.random.Generator,
) -> dict[str, np.ndarray]:  # fmt: skip
    out = dict(feeds)
    for n, ax in axes.items():
        a = feeds[n]
        shape = list(a.shape)
        shape[ax] = k
        extra = np.zeros(shape, a.dtype) if n in masks else _filler(a, tuple(shape), fill, pad_values.get(n), rng)
        out[n] = np.concatenate([a, extra], axis=ax)
    return out


def _refill(
    feeds: dict[str, np.ndarray], axes: dict[str, int], masks: set[str], mask_name: str, fill: str,
    pad_values: Mapping[str, Any], rng: np.random.Generator,
) -> dict[str, np.ndarray] | None:  # fmt: skip
    pad = np.asarray(feeds[mask_name]) == 0  # [batch, time]
    if not pad.any():
        return None
    out = dict(feeds)
    for n, ax in axes.items():
        if n in masks or ax != 1:
            continue
        a = feeds[n].copy()
        sel = pad.reshape(pad.shape + (1,) * (a.ndim - 2))
        sel = np.broadcast_to(sel, a.shape)
        filler = _filler(a, a.shape, fill, pad_values.get(n), rng)
        a[sel] = filler[sel]
        out[n] = a
    return out


# ----------------------------------------------------------------------------------------------- compare
def _compare(report: PadReport, check: str, mode: str, k: int, name: str, ref: np.ndarray, got: np.ndarray,
             valid: np.ndarray | None, atol: float, rtol: float) -> None:  # fmt: skip
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if valid is not None:
        t = ref.shape[1]
        got = got[:, :t]
        sel = np.broadcast_to(valid.reshape(valid.shape + (1,) * (ref.ndim - 2)) > 0, ref.shape)
    else:
        sel = np.ones(ref.shape, bool)
    if ref.shape != got.shape:
        raise ValueError(f"{name}: shape changed from {ref.shape} to {got.shape} under padding")
    diff = np.where(sel, np.abs(ref - got), 0.0)
    diff = np.where(np.isnan(diff), np.inf, diff)
    report.drift[(check, mode, k, name)] = float(diff.max(initial=0.0))
    bad = sel & ~np.isclose(got, ref, rtol=rtol, atol=atol)
    if bad.any():
        pos = tuple(int(i) for i in np.unravel_index(np.argmax(np.where(bad, diff, -1.0)), ref.shape))
        report.findings.append(Finding(check, mode, k, name, pos, float(diff.max()), float(ref[pos]), float(got[pos])))


def check_pad_invariance(
    graph: Graph,
    feeds: Mapping[str, Any],
    outputs: Sequence[Var | Masked],
    *,
    loss: Var | None = None,
    grad_inputs: Sequence[Var | str] = (),
    mask: str = "mask",
    time_dim: str = "time",
    ks: Sequence[int] = (1, 3, 16),
    modes: Sequence[str] = ("append", "fill"),
    fill: str = "random",
    pad_values: Mapping[str, Any] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    seed: int = 0,
) -> PadReport:
    """Run the checks described in the module docstring and return a :class:`PadReport` (never raises for
    differences; see :func:`assert_pad_invariant`).

    Args:
        outputs: ``Masked`` values (compared at valid positions of their own mask) and plain ``Var``
            (compared in full: pooled values, metrics).
        loss: if given, its value and every trainable variable's gradient are compared too.
        grad_inputs: float placeholders (or intermediate nodes) whose gradient from ``loss`` must be exactly
            0 at padded positions (in the padded run).
        mask: the mask placeholder that describes the padded time axis.
        ks: numbers of appended pad positions.
        modes: ``"append"`` and/or ``"fill"``.
        fill: filler for float inputs at padded positions, ``"random"`` (N(0, 10)) or ``"huge"`` (±1e4);
            integer inputs get random ids from their observed range, unless ``pad_values[name]`` is given.
    """
    rng = np.random.default_rng(seed)
    pad_values = dict(pad_values or {})
    base = graph.check_feeds(feeds)
    if mask not in base:
        raise ValueError(f"feeds have no mask placeholder {mask!r}")
    axes = _time_axes(graph, list(base), time_dim)
    masks = set(graph.meta.get("masks", {})) | {mask}
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

    def evaluate(fd: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float | None, dict[str, np.ndarray]]:
        vals = graph.run(fd, flat + ([loss] if loss is not None else []))  # one forward pass for all
        lval = float(vals.pop()) if loss is not None else None
        grads = graph.gradients(fd, loss, [*graph.trainable(), *grad_inputs]) if loss is not None else {}
        return vals, lval, grads

    ref_vals, ref_loss, ref_grads = evaluate(base)
    trainable = {v.name for v in graph.trainable()}
    runs: list[tuple[str, int, dict[str, np.ndarray]]] = []
    if "append" in modes:
        runs += [("append", k, _append(graph, base, axes, masks, k, fill, pad_values, rng)) for k in ks]
    if "fill" in modes:
        refilled = _refill(base, axes, masks, mask, fill, pad_values, rng)
        if refilled is not None:
            runs.append(("fill", 0, refilled))

    for mode, k, fd in runs:
        vals, lval, grads = evaluate(fd)
        i = 0
        for name, is_masked in kinds:
            if is_masked:
                _compare(report, "output", mode, k, name, ref_vals[i], vals[i], ref_vals[i + 1], atol, rtol)
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
    """:func:`check_pad_invariance`, raising :class:`PadInvarianceError` (an ``AssertionError`` that names
    the output, position and amount) if anything differs. Returns the report when all is well."""
    report = check_pad_invariance(graph, feeds, outputs, **kwargs)
    if not report.ok:
        raise PadInvarianceError(report)
    return report
