"""Masked losses and metrics over ``[batch, time, classes]`` logits.

A position COUNTS when its mask is 1 and its label is not ``ignore_label``; losses and metrics are means over
counted positions (0, with zero gradients, when none counts). Labels outside ``[0, classes)`` at counted
positions are refused at feed time (the contract is saved with the model).
"""

from __future__ import annotations

import numpy as np

from .. import _jvm, ops
from ..errors import MaskError
from ..graph import Var
from .value import Masked, at_least_one, require_masked

__all__ = ["accuracy", "softmax_cross_entropy", "top_k_accuracy"]


def counted_positions(mask: Var, labels: Var, ignore_label: int) -> Var:
    """1 where a position counts: mask 1 and label != ignore_label; float ``[batch, time]``."""
    not_ignored = ops.cast(ops.not_equal(labels, ignore_label), mask.dtype)
    return ops.multiply(mask, not_ignored)


def _check_logits_labels(logits: Masked, labels: Var, what: str) -> None:
    if logits.value.rank != 3:
        raise MaskError(f"{what}: logits must be [batch, time, classes], got {logits.value.shape}")
    if not isinstance(labels, Var) or labels.dtype.kind not in "iu":
        raise TypeError(f"{what}: labels must be an integer [batch, time] Var (class ids)")
    if labels.rank != 2:
        raise ValueError(f"{what}: labels must be [batch, time], got {labels.shape}")
    if logits.value.shape[2] is None:
        raise ValueError(f"{what}: the class axis of the logits must be known when building")


def _declare_weight(out: Var, count: Var) -> None:
    """Record that ``out`` is a mean over ``count`` positions: batches are then combined by count (an epoch's
    loss, evaluate) instead of by rows, which over-weights short batches."""
    out.graph.meta.setdefault("mean_over", {})[out.name] = count.name


def _declare_label_range(out: Var, logits: Masked, labels: Var, ignore_label: int) -> Var:
    """A label outside [0, classes) at a counted position would one-hot to a zero row: it would count in the
    denominator but add nothing (a silently lower loss). Declared for ``out``: enforced whenever it is
    computed (with this op's own ignore label)."""
    if labels.kind == "placeholder":
        out.graph.add_check(
            "labels",
            labels=labels.name,
            mask=logits.mask.name if logits.mask.kind == "placeholder" else None,
            classes=int(logits.value.shape[2]),
            ignore=[int(ignore_label)],
            node=out.name,
        )
    return out


def softmax_cross_entropy(
    logits: Masked, labels: Var, ignore_label: int = -1, name: str | None = None, fused: bool = False
) -> Var:
    """Mean softmax cross-entropy over counted positions.

    Args:
        logits: Masked ``[batch, time, classes]``.
        labels: ``[batch, time]`` integer class ids; ``ignore_label`` marks positions that do not count.
        fused: use libnd4j's fused loss op (only as the FINAL loss: the graph refuses any op consuming it,
            because M2.1's loss ops ignore upstream gradients).

    Returns:
        A scalar: ``sum_{counted} -log_softmax(logits[b,t])[labels[b,t]] / max(#counted, 1)``; 0 (and zero
        gradients) when nothing counts. Padded logits are selected away first, so NaN/inf or huge values
        there never reach the loss.
    """
    logits = require_masked(logits, "softmax_cross_entropy")
    _check_logits_labels(logits, labels, "softmax_cross_entropy")
    g = logits.graph
    out_name = name or g.unique_name("xent_loss").split("/")[-1]
    with g.scope(g.unique_name("xent", name).split("/")[-1]):
        counted = counted_positions(logits.mask, labels, ignore_label)
        z = logits.zeroed()
        onehot = ops.one_hot(labels, logits.value.shape[2], logits.dtype)  # ignore_label < 0 -> zero row
        count = ops.sum(counted, name="count")
        if not fused:
            logp = ops.log_softmax(z, -1)
            nll = ops.negative(ops.sum(ops.multiply(logp, onehot), -1))  # [batch, time]
            total = ops.sum(ops.multiply(nll, counted))
            denom = at_least_one(count)
    if not fused:
        loss = ops.divide(total, denom, name=out_name)
        _declare_weight(loss, count)
        return _declare_label_range(loss, logits, labels, ignore_label)
    loss = g.op(
        "xent_loss",
        out_name,
        lambda n: _jvm.bridge().fusedSoftmaxCrossEntropy(g.sd, n, onehot.j, z.j, counted.j),
        (),
        logits.dtype,
        (onehot, z, counted),
    )
    g.meta.setdefault("final_only", []).append(loss.name)
    _declare_weight(loss, count)
    return _declare_label_range(loss, logits, labels, ignore_label)


def accuracy(logits: Masked, labels: Var, ignore_label: int = -1, name: str | None = None) -> Var:
    """Fraction of counted positions (mask 1, label != ignore) whose arg-max class equals the label.

    Padding never earns credit; 0 when nothing counts."""
    return top_k_accuracy(logits, labels, 1, ignore_label, name)


def top_k_accuracy(logits: Masked, labels: Var, k: int = 5, ignore_label: int = -1, name: str | None = None) -> Var:
    """Fraction of counted positions whose label is among the ``k`` highest logits.

    Ties rank by class index (numpy's argmax order), so constant logits earn credit only for the first ``k``
    classes, not for every label. 0 when nothing counts."""
    logits = require_masked(logits, "top_k_accuracy")
    _check_logits_labels(logits, labels, "top_k_accuracy")
    g = logits.graph
    with g.scope(g.unique_name(f"top{k}_acc", name).split("/")[-1]):
        counted = counted_positions(logits.mask, labels, ignore_label)
        z = logits.zeroed()
        onehot = ops.one_hot(labels, logits.value.shape[2], logits.dtype)
        label_logit = ops.sum(ops.multiply(z, onehot), -1, keepdims=True)  # [batch, time, 1]
        # rank of the label = classes ranked before it: larger logits, and equal logits of a smaller index
        classes = g.constant(None, np.arange(logits.value.shape[2]), logits.dtype)
        label_f = ops.expand_dims(ops.cast(labels, logits.dtype), -1)
        before = ops.add(
            ops.cast(ops.greater(z, label_logit), logits.dtype),
            ops.multiply(
                ops.cast(ops.equal(z, label_logit), logits.dtype), ops.cast(ops.less(classes, label_f), logits.dtype)
            ),
        )
        hit = ops.cast(ops.less(ops.sum(before, -1), float(k) - 0.5), logits.dtype)
        count = ops.sum(counted, name="count")
        total = ops.sum(ops.multiply(hit, counted))
    out = ops.divide(total, at_least_one(count), name=name or g.unique_name(f"top{k}_accuracy").split("/")[-1])
    _declare_weight(out, count)
    return _declare_label_range(out, logits, labels, ignore_label)
