"""Masked losses and metrics over ``[batch, time, classes]`` logits, or over the counted rows only.

A position COUNTS when its mask is 1 and its label is not ``ignore_label``; losses and metrics are means over
counted positions (0, with zero gradients, when none counts). Labels outside ``[0, classes)`` at counted
positions are refused at feed time (the contract is saved with the model).

Nothing here builds a ``[..., classes]`` one-hot: the cross-entropy is libnd4j's sparse (integer-label) op
with samediff_py's fixed gradient (:func:`samediff_py.ops.sparse_softmax_cross_entropy`), and the metrics
gather each label's logit (:func:`samediff_py.ops.take_along_last_axis`). Every function takes either
Masked ``[batch, time, classes]`` logits with ``[batch, time]`` labels, or :class:`CountedRows` logits
(see :func:`samediff_py.masked.counted_rows`), which carry their labels: same values, same gradients.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import ops
from ..errors import MaskError
from ..graph import Var
from .counted import CountedRows, counted_rows
from .value import Masked, at_least_one

__all__ = ["accuracy", "softmax_cross_entropy", "top_k_accuracy"]

Logits = Masked | CountedRows


class _Flat:
    """What every loss/metric needs, whichever form the logits came in.

    ``z [..., classes]`` (padding selected away), ``labels [...]`` (a valid class id everywhere), ``counted [...]``
    (1 = counts).
    """

    def __init__(self, z: Var, labels: Var, counted: Var, mask: Var, source_labels: Var, ignore: int):
        self.z, self.labels, self.counted = z, labels, counted
        self.mask, self.source_labels, self.ignore = mask, source_labels, ignore

    @property
    def classes(self) -> int:
        return int(self.z.shape[-1])


def _safe_labels(labels: Var, keep: Var, classes: int) -> Var:
    """``labels`` where ``keep`` and in ``[0, classes)``, else 0.

    libnd4j's sparse ops read out of bounds for other values. Placeholder labels at counted positions are checked
    at feed time (a FeedError); this only guards the positions that do not count and labels computed in the graph.
    """
    in_range = ops.multiply(
        ops.cast(ops.greater_equal(labels, 0), keep.dtype), ops.cast(ops.less(labels, classes), keep.dtype)
    )
    return ops.multiply(labels, ops.cast(ops.multiply(keep, in_range), labels.dtype))


def _prepare(logits: Logits, labels: Var | None, ignore_label: int | None, what: str) -> _Flat:
    if isinstance(logits, CountedRows):
        if labels is not None and labels is not logits.source_labels:
            raise MaskError(
                f"{what}: these counted rows were selected with labels {logits.source_labels.name!r}, not "
                f"{labels.name if isinstance(labels, Var) else labels!r}"
            )
        if ignore_label is not None and int(ignore_label) != logits.ignore_label:
            raise MaskError(
                f"{what}: these counted rows were selected with ignore_label={logits.ignore_label}, not {ignore_label}"
            )
        z = logits.rows
        if z.rank != 2 or z.shape[1] is None:
            raise ValueError(f"{what}: counted-row logits must be [rows, classes] with known classes, got {z.shape}")
        if z.dtype.kind != "f":
            raise TypeError(f"{what}: logits must be floating point, got {z.dtype}")
        safe = _safe_labels(logits.labels, logits.weights, int(z.shape[1]))
        return _Flat(z, safe, logits.weights, logits.mask, logits.source_labels, logits.ignore_label)
    if not isinstance(logits, Masked):
        raise MaskError(
            f"{what} mixes time steps, so it needs a Masked value (Masked(value, mask)) or CountedRows; got "
            f"{type(logits).__name__}. Running it on an unmasked padded batch would count padding."
        )
    ignore = -1 if ignore_label is None else int(ignore_label)
    if logits.value.rank != 3:
        raise MaskError(f"{what}: logits must be [batch, time, classes], got {logits.value.shape}")
    if not isinstance(labels, Var) or labels.dtype.kind not in "iu":
        raise TypeError(f"{what}: labels must be an integer [batch, time] Var (class ids)")
    if labels.rank != 2:
        raise ValueError(f"{what}: labels must be [batch, time], got {labels.shape}")
    if logits.value.shape[2] is None:
        raise ValueError(f"{what}: the class axis of the logits must be known when building")
    # the counted positions' rows: padded (and ignored) logits are never read, so NaN/inf/1e38 there never
    # reach a value or a gradient, and the loss costs O(counted x classes) beyond the logits themselves
    return _prepare(counted_rows(logits, labels, ignore), labels, ignore, what)


def _declare_weight(out: Var, count: Var) -> None:
    """Record that ``out`` is a mean over ``count`` positions.

    Batches are then combined by count (an epoch's loss, evaluate) instead of by rows, which over-weights short
    batches.
    """
    out.graph.meta.setdefault("mean_over", {})[out.name] = count.name


def _declare_label_range(out: Var, f: _Flat) -> Var:
    """Refuse, at feed time, a label outside [0, classes) at a counted position.

    Such a label has no logit: refusing it beats counting it with a made-up value. Declared for ``out``: enforced
    whenever it is computed (with this op's own ignore label).
    """
    if f.source_labels.kind == "placeholder":
        out.graph.add_check(
            "labels",
            labels=f.source_labels.name,
            mask=f.mask.name if f.mask.kind == "placeholder" else None,
            classes=f.classes,
            ignore=[int(f.ignore)],
            node=out.name,
        )
    return out


def _sum_over_counted(per_position: Var, counted: Var) -> tuple[Var, Var]:
    """(``sum(per_position where counted)``, ``#counted`` named ``count``).

    A SELECT, so whatever the uncounted positions hold never reaches the value (and their gradient is exactly 0).
    """
    kept = ops.where(ops.greater(counted, 0.5), per_position, ops.zeros_like(per_position), same_shape=True)
    return ops.sum(kept), ops.sum(counted, name="count")


def softmax_cross_entropy(
    logits: Logits,
    labels: Var | None = None,
    ignore_label: int | None = None,
    name: str | None = None,
    fused: bool | None = None,
) -> Var:
    """Mean softmax cross-entropy over counted positions.

    Args:
        logits: Masked ``[batch, time, classes]``, or :class:`CountedRows` ``[rows, classes]`` (from
            :func:`samediff_py.masked.counted_rows`, which carry their labels and ignore label).
        labels: ``[batch, time]`` integer class ids (optional with counted rows: must be the ones they were
            selected with).
        ignore_label: marks positions that do not count (default -1; with counted rows, the one they were
            selected with).
        name: optional name of the output node.
        fused: deprecated, ignored (same result either way). It selected libnd4j's one-hot loss op, which
            ignores upstream gradients; the sparse op used now is faster and composes like any value.

    Returns:
        A scalar: ``sum_{counted} -log_softmax(logits[b,t])[labels[b,t]] / max(#counted, 1)``; 0 (and zero
        gradients) when nothing counts. Padded logits are selected away first, so NaN/inf or huge values
        there never reach the loss. Its gradient honours whatever consumes it (scaled, summed with other
        losses, ...).

    >>> import numpy as np
    >>> from samediff_py import Graph, masked
    >>> g = Graph()
    >>> z = g.placeholder("z", ("batch", "time", 2))
    >>> y = g.placeholder("y", ("batch", "time"), "int32")
    >>> m = masked.mask_placeholder(g, "m")
    >>> loss = softmax_cross_entropy(masked.Masked(z, m), y)
    >>> float(g.run({"z": [[[0.0, 0.0], [9.0, np.nan]]], "y": [[1, 0]], "m": [[1, 0]]}, loss))  # log 2
    0.693...
    """
    if fused is not None:
        warnings.warn(
            "softmax_cross_entropy(fused=...) is deprecated and ignored: the loss always uses libnd4j's sparse "
            "cross-entropy op now (no one-hot, faster, and it can be scaled or combined)",
            DeprecationWarning,
            stacklevel=2,
        )
    f = _prepare(logits, labels, ignore_label, "softmax_cross_entropy")
    g = f.z.graph
    out_name = name or g.unique_name("xent_loss").split("/")[-1]
    with g.scope(g.unique_name("xent", name).split("/")[-1]):
        nll = ops.sparse_softmax_cross_entropy(f.z, f.labels)  # per position, no one-hot
        total, count = _sum_over_counted(nll, f.counted)
    loss = ops.divide(total, at_least_one(count), name=out_name)
    _declare_weight(loss, count)
    return _declare_label_range(loss, f)


def accuracy(
    logits: Logits, labels: Var | None = None, ignore_label: int | None = None, name: str | None = None
) -> Var:
    """Fraction of counted positions (mask 1, label != ignore) whose arg-max class equals the label.

    Padding never earns credit. Takes the same logits forms as :func:`softmax_cross_entropy`.

    Args:
        logits: Masked ``[batch, time, classes]`` or :class:`CountedRows` ``[rows, classes]``.
        labels: ``[batch, time]`` integer class ids (optional with counted rows).
        ignore_label: marks positions that do not count (default -1).
        name: optional name of the output node.

    Returns:
        A scalar Var in ``[0, 1]``; 0 when nothing counts.
    """
    return top_k_accuracy(logits, labels, 1, ignore_label, name)


def top_k_accuracy(
    logits: Logits, labels: Var | None = None, k: int = 5, ignore_label: int | None = None, name: str | None = None
) -> Var:
    """Fraction of counted positions whose label is among the ``k`` highest logits.

    Ties rank by class index (numpy's argmax order), so constant logits earn credit only for the first ``k``
    classes, not for every label. Takes the same logits forms as :func:`softmax_cross_entropy`; the label's logit
    is gathered (no one-hot).

    Args:
        logits: Masked ``[batch, time, classes]`` or :class:`CountedRows` ``[rows, classes]``.
        labels: ``[batch, time]`` integer class ids (optional with counted rows).
        k: how many top classes earn credit.
        ignore_label: marks positions that do not count (default -1).
        name: optional name of the output node.

    Returns:
        A scalar Var in ``[0, 1]``; 0 when nothing counts.
    """
    f = _prepare(logits, labels, ignore_label, "top_k_accuracy")
    g = f.z.graph
    dt = f.z.dtype
    with g.scope(g.unique_name(f"top{k}_acc", name).split("/")[-1]):
        label_logit = ops.expand_dims(ops.take_along_last_axis(f.z, f.labels), -1)  # [..., 1]
        # rank of the label = classes ranked before it: larger logits, and equal logits of a smaller index
        # class ids with z's rank: M2.1 fails to broadcast [classes] against a [1, 1] label (a single row)
        classes = g.constant(None, np.arange(f.classes).reshape((1,) * (f.z.rank - 1) + (-1,)), dt)
        label_f = ops.expand_dims(ops.cast(f.labels, dt), -1)
        before = ops.add(
            ops.cast(ops.greater(f.z, label_logit), dt),
            ops.multiply(ops.cast(ops.equal(f.z, label_logit), dt), ops.cast(ops.less(classes, label_f), dt)),
        )
        hit = ops.cast(ops.less(ops.sum(before, -1), float(k) - 0.5), dt)
        total, count = _sum_over_counted(hit, f.counted)
    out = ops.divide(total, at_least_one(count), name=name or g.unique_name(f"top{k}_accuracy").split("/")[-1])
    _declare_weight(out, count)
    return _declare_label_range(out, f)
