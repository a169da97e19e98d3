import numpy as np
import pytest

from samediff_py import batching


def test_every_row_once_and_batches_sorted_by_length():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 100, 203)
    batches = batching.bucket_batches(lengths, 16, seed=3)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(203))
    assert sorted(len(b) for b in batches)[0] == 203 % 16
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
    for (_, hi), (lo, _) in zip(spans, spans[1:]):
        assert hi <= lo  # buckets do not overlap


def test_padding_is_small_and_order_is_seeded():
    lengths = np.random.default_rng(0).integers(16, 129, 512)
    padded = sum(len(b) * lengths[b].max() for b in batching.bucket_batches(lengths, 32))
    assert padded / lengths.sum() < 1.05
    a = batching.bucket_batches(lengths, 32, seed=5)
    b = batching.bucket_batches(lengths, 32, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_drop_last_and_no_shuffle():
    b = batching.bucket_batches([3, 1, 2, 5, 4], 2, shuffle=False, drop_last=True)
    assert [x.tolist() for x in b] == [[1, 2], [0, 4]]
    with pytest.raises(ValueError):
        batching.bucket_batches([1, 2], 0)


def test_pad_batch_mask_matches_lengths():
    seqs = [[5, 6, 7], [8], [9, 9, 9, 9, 9]]
    tokens, mask = batching.pad_batch(seqs, [0, 1, 2], pad_id=0, multiple=8)
    assert tokens.shape == (3, 8)
    assert mask.sum(axis=1).tolist() == [3, 1, 5]
    assert tokens[1].tolist() == [8, 0, 0, 0, 0, 0, 0, 0]
