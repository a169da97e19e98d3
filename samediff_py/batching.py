"""Kept for compatibility: length bucketing now lives in :mod:`samediff_py.padding`.

``batching.pad_batch(sequences, rows, pad_id, multiple)`` is ``padding.pad_batch(sequences, pad_id,
multiple=multiple, rows=rows)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .padding import bucket_batches
from .padding import pad_batch as _pad_batch

__all__ = ["bucket_batches", "pad_batch"]


def pad_batch(
    sequences: Sequence[Sequence[int]], rows: Sequence[int], pad_id: int, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``padding.pad_batch(sequences, pad_id, multiple=multiple, rows=rows)`` (the old argument order)."""
    return _pad_batch(sequences, pad_id, multiple=multiple, rows=rows)
