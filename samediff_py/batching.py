"""Batches of variable-length sequences grouped by length, so padding (computed, then thrown away) stays small.

Padding every batch to its longest row wastes the work done on pads; with lengths spread over 16..128 and
random batches, about half of every step is padding. :func:`bucket_batches` sorts rows by length (ties in
random order), cuts the sorted order into batches, and shuffles the order of the batches: every batch holds
rows of nearly one length, every row is used once per epoch. :func:`pad_batch` pads one batch to its
longest row (rounded up to ``multiple``) and builds the mask (1 = valid, 0 = padding). bench/RESULTS.md
("Padding") measures the gain in real tokens per second.

>>> import numpy as np

from . import masked
>>> seqs = [np.arange(1, n + 1) for n in (5, 2, 7, 3, 6, 2)]
>>> batches = bucket_batches([len(s) for s in seqs], batch_size=2, seed=0)
>>> sorted(sorted(len(seqs[i]) for i in b) for b in batches)
[[2, 2], [3, 5], [6, 7]]
>>> tokens, mask = pad_batch(seqs, batches[0], pad_id=0)
>>> tokens.shape == mask.shape, bool(((tokens != 0) == (mask == 1)).all())
(True, True)
>>> pad_batch(seqs, [1, 3], pad_id=0, multiple=4)[0]
array([[1, 2, 0, 0],
       [1, 2, 3, 0]], dtype=int32)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import masked


def bucket_batches(
    lengths: Sequence[int], batch_size: int, seed: int | None = 0, shuffle: bool = True, drop_last: bool = False
) -> list[np.ndarray]:
    """Row indices per batch, rows of similar length together (see the module doc). The last batch may be
    smaller unless ``drop_last``. ``shuffle``: random batch order and tie order (``seed``); else shortest
    batches first."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError("lengths must be one length per row")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    tie = rng.random(len(lengths)) if shuffle else np.arange(len(lengths))
    order = np.lexsort((tie, lengths))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def pad_batch(
    sequences: Sequence[Sequence[int]], rows: Sequence[int], pad_id: int, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [len(rows), T] int32, mask [len(rows), T] float32)`` for ``sequences[rows]``, right-padded
    with ``pad_id`` to ``T`` = the longest row rounded up to ``multiple`` (see :func:`masked.pad_batch`)."""
    return masked.pad_batch([sequences[i] for i in rows], pad_id, multiple=multiple)
