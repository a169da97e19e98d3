"""Numpy helpers for padded batches: masks, padding, causal targets, length buckets, mask validation.

Nothing here touches the JVM. The convention is samediff_py's everywhere: layout ``[batch, time, ...]``,
masks ``[batch, time]``, **1 = valid token, 0 = padding**. Right padding (valid tokens first) is the
default; ``side="left"`` puts the padding first (decoders, generation).

>>> tokens, mask = pad_batch([[7, 8, 9], [4]], pad_id=0, side="left")
>>> tokens
array([[7, 8, 9],
       [0, 0, 4]], dtype=int32)
>>> positions_from_mask(mask)
array([[0, 1, 2],
       [0, 0, 0]], dtype=int32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import MaskError

SIDES = ("right", "left")


def mask_from_lengths(
    lengths: Sequence[int], max_len: int | None = None, dtype: Any = np.float32, side: str = "right"
) -> np.ndarray:
    """A ``[batch, time]`` mask with ``lengths[b]`` valid (1) positions in row ``b``.

    The first ones (``side="right"``: padding on the right) or the last ones (``side="left"``).

    Args:
        lengths: one non-negative length per row.
        max_len: the time size (default the longest length).
        dtype: the mask's dtype.
        side: ``"right"`` or ``"left"``.

    Returns:
        ``[batch, time]`` array, 1 = valid, 0 = padding.

    >>> mask_from_lengths([2, 0, 3], 4)
    array([[1., 1., 0., 0.],
           [0., 0., 0., 0.],
           [1., 1., 1., 0.]], dtype=float32)
    >>> mask_from_lengths([2, 3], 4, side="left")
    array([[0., 0., 1., 1.],
           [0., 1., 1., 1.]], dtype=float32)
    """
    _check_side(side)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths < 0).any():
        raise ValueError(f"lengths must be a 1-d array of non-negative ints, got {lengths!r}")
    t = int(lengths.max(initial=0)) if max_len is None else int(max_len)
    if (lengths > t).any():
        raise ValueError(f"a length exceeds max_len={t}: {lengths.tolist()}")
    steps = np.arange(t)[None, :]
    valid = steps < lengths[:, None] if side == "right" else steps >= (t - lengths)[:, None]
    return valid.astype(dtype)


def mask_from_pad(tokens: np.ndarray, pad_id: int, dtype: Any = np.float32) -> np.ndarray:
    """``[batch, time]`` mask: 1 where ``tokens != pad_id`` (valid), 0 at padding.

    Only safe when ``pad_id`` never occurs as a real token (never reuse EOS as PAD).

    Args:
        tokens: ``[batch, time]`` integer token ids.
        pad_id: the padding id.
        dtype: the mask's dtype.

    Returns:
        ``[batch, time]`` array of ``dtype``.

    >>> mask_from_pad(np.array([[5, 6, 0, 0]]), pad_id=0)
    array([[1., 1., 0., 0.]], dtype=float32)
    """
    return (np.asarray(tokens) != pad_id).astype(dtype)


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    max_len: int | None = None,
    multiple: int = 1,
    side: str = "right",
    rows: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad variable-length token lists into ``tokens [batch, time]`` (int32) and their mask.

    Args:
        sequences: token id lists (any lengths, at least one token each is not required).
        pad_id: the id written at padded positions.
        max_len: the time size; default the longest sequence rounded up to ``multiple`` (fewer distinct
            batch shapes: SameDiff does some first-run work for every new shape).
        multiple: round the default ``max_len`` up to a multiple of this.
        side: ``"right"`` (tokens first, then padding) or ``"left"`` (padding first).
        rows: take ``sequences[i]`` for ``i`` in ``rows`` only (e.g. one batch of :func:`bucket_batches`).

    Returns:
        ``(tokens, mask)``, both ``[batch, time]``; mask float32, 1 = valid.

    >>> tokens, mask = pad_batch([[7, 8, 9], [4]], pad_id=0)
    >>> tokens
    array([[7, 8, 9],
           [4, 0, 0]], dtype=int32)
    >>> mask
    array([[1., 1., 1.],
           [1., 0., 0.]], dtype=float32)
    """
    _check_side(side)
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if rows is not None:
        sequences = [sequences[i] for i in rows]
    lengths = [len(s) for s in sequences]
    t = -(-max(max(lengths, default=0), 1) // multiple) * multiple if max_len is None else int(max_len)
    tokens = np.full((len(sequences), t), pad_id, dtype=np.int32)
    for i, s in enumerate(sequences):
        if len(s) > t:
            raise ValueError(f"sequence {i} has length {len(s)} > max_len {t}")
        if len(s):
            if side == "right":
                tokens[i, : len(s)] = s
            else:
                tokens[i, t - len(s) :] = s
    return tokens, mask_from_lengths(lengths, t, side=side)


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position of every token counted among the VALID tokens of its row (0 for the first valid one).

    A left-padded row thus gets the same positions as the row unpadded; padded slots get 0.

    Args:
        mask: ``[batch, time]`` mask (1 = valid).

    Returns:
        ``[batch, time]`` int32 array.

    >>> positions_from_mask(np.array([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]]))
    array([[0, 0, 0, 1, 2],
           [0, 1, 0, 0, 0]], dtype=int32)
    """
    m = np.asarray(mask) > 0
    return np.where(m, np.cumsum(m, axis=1) - 1, 0).astype(np.int32)


def shift_targets(
    tokens: np.ndarray, mask: np.ndarray, ignore_label: int = -1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Next-token prediction: inputs ``tokens[:, :-1]`` predict ``tokens[:, 1:]``.

    The target mask is shifted WITH the targets (a position counts only if both it and its target are valid), and
    targets that do not count become ``ignore_label``. Works for right and left padding.

    Args:
        tokens: ``[batch, time]`` integer token ids, ``time >= 2``.
        mask: ``[batch, time]`` mask (1 = valid).
        ignore_label: the target of positions that do not count.

    Returns:
        ``(inputs, input_mask, targets, target_mask)``, each ``[batch, time - 1]`` (masks float32).

    >>> inp, inp_mask, tgt, tgt_mask = shift_targets(np.array([[5, 6, 7, 0]]), np.array([[1, 1, 1, 0]]))
    >>> tgt, tgt_mask
    (array([[ 6,  7, -1]]), array([[1., 1., 0.]], dtype=float32))
    """
    tokens = np.asarray(tokens)
    mask = np.asarray(mask, dtype=np.float32)
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must both be [batch, time]")
    if tokens.shape[1] < 2:
        raise ValueError(f"shift_targets needs at least 2 time steps, got {tokens.shape[1]}")
    inputs, input_mask = tokens[:, :-1], mask[:, :-1]
    target_mask = mask[:, :-1] * mask[:, 1:]
    targets = np.where(target_mask > 0, tokens[:, 1:], ignore_label)
    return inputs, input_mask, targets, target_mask


def bucket_batches(
    lengths: Sequence[int], batch_size: int, seed: int | None = 0, shuffle: bool = True, drop_last: bool = False
) -> list[np.ndarray]:
    """Row indices per batch, rows of similar length together.

    This keeps padding (computed, then thrown away) small: rows are sorted by length (ties in random order), cut
    into batches, and the batch order is shuffled; every row is used once. bench/RESULTS.md ("Padding") measures
    the gain in real tokens per second.

    Args:
        lengths: one length per row.
        batch_size: rows per batch (>= 1).
        seed: seed of the tie-breaking and batch shuffle.
        shuffle: shuffle ties and the batch order; ``False``: shortest batches first.
        drop_last: drop a last batch smaller than ``batch_size`` (kept otherwise).

    Returns:
        A list of int arrays of row indices, one per batch.

    >>> seqs = [np.arange(1, n + 1) for n in (5, 2, 7, 3, 6, 2)]
    >>> batches = bucket_batches([len(s) for s in seqs], batch_size=2, seed=0)
    >>> sorted(sorted(len(seqs[i]) for i in b) for b in batches)
    [[2, 2], [3, 5], [6, 7]]
    >>> pad_batch(seqs, pad_id=0, rows=batches[0])[0].shape
    (2, 2)
    """
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


def check_mask(
    mask: np.ndarray,
    name: str = "mask",
    *,
    allow_empty_rows: bool = False,
    padding: str = "right",
    tokens: np.ndarray | None = None,
    pad_id: int | None = None,
) -> None:
    """Validate a mask array; raise :class:`~samediff_py.errors.MaskError` naming the problem.

    Checks: rank 2, values exactly 0/1, no row without a valid position (unless ``allow_empty_rows``),
    ``padding="right"``: no valid position after a padded one (a 0 before a 1 usually means the mask is
    inverted: 1 marked padding); ``padding="left"``: the mirror image; ``"any"``: no layout check; and with
    ``tokens``/``pad_id``: no pad token marked valid.

    Args:
        mask: ``[batch, time]`` array (1 = valid, 0 = padding).
        name: the name used in messages (e.g. the placeholder's).
        allow_empty_rows: accept rows with no valid position.
        padding: ``"right"``, ``"left"`` or ``"any"``.
        tokens: ``[batch, time]`` token ids the mask describes (checked with ``pad_id``).
        pad_id: the padding id; no position holding it may be marked valid.

    >>> check_mask(np.array([[0.0, 1.0, 1.0]]))
    Traceback (most recent call last):
    ...
    samediff_py.errors.MaskError: mask: row 0 has a valid position after padding ([0, 1, 1]...), ...
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"{name}: a mask is [batch, time], got shape {m.shape}")
    if m.dtype != np.bool_ and not np.isin(m, (0, 1)).all():
        bad = np.unique(m[~np.isin(m, (0, 1))])[:5]
        raise MaskError(f"{name}: mask values must be exactly 0 (padding) or 1 (valid), found {bad.tolist()}")
    valid = m.astype(bool)
    empty = np.flatnonzero(~valid.any(axis=1))
    if len(empty) and not allow_empty_rows:
        hint = " (every row is empty: is the mask inverted, or never filled?)" if len(empty) == len(m) else ""
        raise MaskError(
            f"{name}: row(s) {empty[:10].tolist()} have no valid position{hint}. samediff_py masks use "
            "1 = valid, 0 = padding. Pass allow_empty_rows=True to the mask placeholder if empty rows are intended."
        )
    if tokens is not None and pad_id is not None:
        tok = np.asarray(tokens)
        # the mask must describe exactly these tokens (a [1, time] tokens feed would broadcast silently)
        if tok.shape != m.shape:
            raise MaskError(f"{name}: mask shape {m.shape} differs from its tokens' shape {tok.shape}")
        marked = valid & (tok == pad_id)
        if marked.any():
            b, t = np.argwhere(marked)[0]
            raise MaskError(
                f"{name}: position (batch {b}, time {t}) holds the pad id {pad_id} but is marked valid (1); "
                "the mask may be inverted (samediff_py: 1 = valid, 0 = padding)"
            )
    if padding in SIDES:
        v = valid if padding == "right" else valid[:, ::-1]
        # right padding: once a row turns 0 it stays 0, i.e. v is non-increasing along time
        holes = (~v[:, :-1]) & v[:, 1:]
        if holes.any():
            b = int(np.argwhere(holes)[0][0])
            where = "a valid position after padding" if padding == "right" else "padding after a valid position"
            raise MaskError(
                f"{name}: row {b} has {where} ({m[b].astype(int).tolist()[:16]}...), "
                f"which a {padding}-padded batch never has: the mask looks inverted (samediff_py: 1 = valid, "
                f"0 = padding). If the layout is intended, create the mask placeholder with padding='any'."
            )
    elif padding != "any":
        raise ValueError(f"padding must be 'right', 'left' or 'any', got {padding!r}")


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
