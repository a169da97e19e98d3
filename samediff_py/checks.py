"""Feed contracts as data: what every feed of a graph must satisfy, checked in numpy before the JVM runs.

A check is a small JSON-able dict kept in ``graph.meta["checks"]`` (so it is saved inside the model file
and works again after :func:`samediff_py.checkpoint.load`: no closures, no registries). Ops declare them
when they are built: a mask placeholder declares ``mask``, an embedding over a token placeholder ``ids``,
a masked loss ``labels``, a position table ``length``. :func:`run` is the one place that reads them.

=========  ========================================================================================
kind       contract
=========  ========================================================================================
``mask``   0/1 values, no empty row (unless allowed), the declared padding side, no pad id marked
           valid (see :func:`samediff_py.padding.check_mask`)
``ids``    integer ids in ``[0, size)`` (``gather`` reads arbitrary memory otherwise)
``labels`` class ids in ``[0, classes)`` wherever the position counts (mask 1, label not ignored)
``length`` ``shape[axis] <= max`` (e.g. a position table's rows)
=========  ========================================================================================

>>> import numpy as np
>>> spec = {"kind": "ids", "placeholder": "tokens", "size": 10, "what": "embedding 'emb'"}
>>> run([spec], {"tokens": np.array([[1, 12]])})
Traceback (most recent call last):
...
samediff_py.errors.FeedError: placeholder 'tokens': id 12 at (0, 1) is outside [0, 10) of embedding 'emb'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .errors import FeedError
from .padding import check_mask

Check = dict[str, Any]


def _mask(spec: Check, feeds: Mapping[str, np.ndarray]) -> None:
    m = feeds.get(spec["name"])
    if m is None:
        return
    tokens = spec.get("tokens")
    check_mask(
        m,
        spec["name"],
        allow_empty_rows=spec.get("allow_empty_rows", False),
        padding=spec.get("padding", "right"),
        tokens=feeds.get(tokens) if tokens else None,
        pad_id=spec.get("pad_id"),
    )


def _ids(spec: Check, feeds: Mapping[str, np.ndarray]) -> None:
    a = feeds.get(spec["placeholder"])
    if a is None or a.size == 0:
        return
    size = int(spec["size"])
    bad = (a < 0) | (a >= size)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise FeedError(
            f"placeholder {spec['placeholder']!r}: id {int(a[pos])} at {pos} is outside [0, {size}) of "
            f"{spec.get('what', 'the table')}"
        )


def _labels(spec: Check, feeds: Mapping[str, np.ndarray]) -> None:
    lab = feeds.get(spec["labels"])
    if lab is None:
        return
    ignore = spec.get("ignore", [])
    counted = ~np.isin(lab, ignore)
    m = feeds.get(spec.get("mask") or "")
    if m is not None and np.shape(m) == lab.shape:
        counted &= np.asarray(m) > 0
    classes = int(spec["classes"])
    bad = counted & ((lab < 0) | (lab >= classes))
    if bad.any():
        b, t = (int(i) for i in np.argwhere(bad)[0])
        raise FeedError(
            f"placeholder {spec['labels']!r}: label {int(lab[b, t])} at (batch {b}, time {t}) is outside "
            f"[0, {classes}) at a counted position; use the ignore label ({ignore}) for positions that must not count"
        )


def _length(spec: Check, feeds: Mapping[str, np.ndarray]) -> None:
    a = feeds.get(spec["placeholder"])
    axis, most = int(spec["axis"]), int(spec["max"])
    if a is not None and a.ndim > axis and a.shape[axis] > most:
        raise FeedError(
            f"placeholder {spec['placeholder']!r}: size {a.shape[axis]} on axis {axis} exceeds {most} "
            f"({spec.get('what', 'a fixed-size table')})"
        )


KINDS: dict[str, Callable[[Check, Mapping[str, np.ndarray]], None]] = {
    "mask": _mask,
    "ids": _ids,
    "labels": _labels,
    "length": _length,
}


def validate(spec: Check) -> Check:
    """``spec`` if it is a known, JSON-able check; else ``ValueError``."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown feed check kind {kind!r}: use one of {sorted(KINDS)}")
    return spec


def run(specs: Iterable[Check], feeds: Mapping[str, np.ndarray]) -> None:
    """Apply every check to the (already dtype/shape-checked) feeds; the first violation raises."""
    for spec in specs:
        KINDS[spec["kind"]](spec, feeds)
