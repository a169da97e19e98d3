"""Masked ops: values that carry their mask, and the ops that mix time steps without counting padding.

``samediff_py.masked`` is the namespace users import; its rooms are ``value`` (the :class:`Masked` value,
mask placeholders, per-position maps, pooling), ``attention`` (multi-head attention, bidirectional and causal),
``recurrent`` (LSTM, GRU), ``conv`` (1-d convolution), ``positions`` (position ids from the mask),
``counted`` (the counted positions gathered into rows, for heads that only matter where a label counts),
``losses`` (cross-entropy, metrics) and ``rows`` (zeroing padding exactly, and row gathers, which the others use).
The numpy helpers for padded batches (``pad_batch``, ``mask_from_lengths``...) live in
:mod:`samediff_py.padding` and are re-exported here.

>>> import numpy as np
>>> from samediff_py import Graph
>>> g = Graph()
>>> x = g.placeholder("x", ("batch", "time", 2))
>>> m = mask_placeholder(g, "mask")
>>> g.run({"x": [[[1.0, 2.0], [3.0, 4.0], [99.0, 99.0]]], "mask": [[1, 1, 0]]}, mean_pool(Masked(x, m)))
array([[2., 3.]], dtype=float32)
"""

from ..errors import MaskError
from ..padding import check_mask, mask_from_lengths, mask_from_pad, pad_batch, positions_from_mask, shift_targets
from .attention import (
    AttentionParams,
    causal_attention,
    multi_head_attention,
    multi_head_attention_unfused,
    unfused_attention_core,
)
from .conv import conv1d
from .counted import CountedRows, counted_rows
from .losses import accuracy, softmax_cross_entropy, top_k_accuracy
from .positions import position_ids
from .recurrent import GRUParams, LSTMParams, RecurrentOutput, gru, lstm
from .value import Masked, dense, layer_norm, mask_placeholder, max_pool, mean_pool, sum_pool

__all__ = [
    "AttentionParams",
    "CountedRows",
    "GRUParams",
    "LSTMParams",
    "MaskError",
    "Masked",
    "RecurrentOutput",
    "accuracy",
    "causal_attention",
    "check_mask",
    "counted_rows",
    "conv1d",
    "dense",
    "gru",
    "layer_norm",
    "lstm",
    "mask_from_lengths",
    "mask_from_pad",
    "mask_placeholder",
    "max_pool",
    "mean_pool",
    "multi_head_attention",
    "multi_head_attention_unfused",
    "pad_batch",
    "position_ids",
    "positions_from_mask",
    "shift_targets",
    "softmax_cross_entropy",
    "sum_pool",
    "top_k_accuracy",
    "unfused_attention_core",
]
