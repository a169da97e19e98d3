"""A small BERT-style transformer encoder built from masked ops: a plain Python object holding its Vars.

>>> import numpy as np
>>> from samediff_py import Graph, masked
>>> g = Graph(seed=0)
>>> tokens = g.placeholder("tokens", ("batch", "time"), "int32")
>>> mask = masked.mask_placeholder(g, "mask")
>>> enc = Encoder(g, EncoderConfig(vocab=10, d_model=8, heads=2, d_ff=16, layers=1, max_len=6))
>>> logits = enc(tokens, mask)                       # Masked [batch, time, vocab]
>>> g.run({"tokens": [[1, 2, 3, 0]], "mask": [[1, 1, 1, 0]]}, logits.value).shape
(1, 4, 10)

For training, :meth:`Encoder.mlm` projects only the positions whose label counts (the vocabulary
projection, loss and accuracy run on those rows alone), and keeps the full logits for inference:

>>> labels = g.placeholder("labels", ("batch", "time"), "int32")
>>> head = enc.mlm(tokens, mask, labels)             # MLMHead: loss, accuracy, counted rows, full logits
>>> g.run({"tokens": [[1, 2, 3, 0]], "mask": [[1, 1, 1, 0]], "labels": [[-1, 7, -1, -1]]},
...       head.counted.rows).shape                   # one counted position + the extra zero-weight row
(2, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import masked, ops
from .graph import Graph, Var
from .masked import AttentionParams, CountedRows, Masked

# attend(x, params) -> Masked ; norm(x, gain, bias) -> Masked. Swappable to study mistakes (see examples/).
Attend = Callable[[Masked, AttentionParams], Masked]
Norm = Callable[[Masked, Var, Var], Masked]


def correct_attention(x: Masked, p: AttentionParams) -> Masked:
    """The encoder's default attention: :func:`samediff_py.masked.multi_head_attention`."""
    return masked.multi_head_attention(x, p)


def correct_norm(x: Masked, gain: Var, bias: Var) -> Masked:
    """The encoder's default norm: :func:`samediff_py.masked.layer_norm` over features (libnd4j's fused op)."""
    return masked.layer_norm(x, gain, bias, eps=0.0)  # eps=0 selects libnd4j's fused op


POSITIONS = ("absolute", "from_mask")


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of :class:`Encoder`.

    ``positions``: ``"absolute"`` (position ``t`` = time index ``t``: right padding only) or ``"from_mask"`` (each
    token's index among its row's valid tokens, computed in the graph from the mask: a left-padded row then equals the
    same row unpadded).
    """

    vocab: int
    d_model: int = 32
    heads: int = 2
    d_ff: int = 64
    layers: int = 2
    max_len: int = 64
    positions: str = "absolute"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")


@dataclass
class Block:
    """One post-norm encoder block: ``x = norm(x + attn(x)); x = norm(x + ff(x))``."""

    attn: AttentionParams
    ln1: tuple[Var, Var]
    w1: Var
    b1: Var
    w2: Var
    b2: Var
    ln2: tuple[Var, Var]

    @classmethod
    def create(cls, g: Graph, name: str, cfg: EncoderConfig) -> Block:
        """A block of fresh variables under ``name`` (LayerNorm gains 1, biases 0)."""
        d = cfg.d_model
        attn = AttentionParams.create(g, f"{name}/attn", d, cfg.heads)
        with g.scope(name):
            ones, zeros = np.ones(d), np.zeros(d)
            return cls(
                attn,
                (g.variable("ln1_gain", ones), g.variable("ln1_bias", zeros)),
                g.variable("ff_w1", shape=(d, cfg.d_ff), init="he_uniform"),
                g.variable("ff_b1", np.zeros(cfg.d_ff)),
                g.variable("ff_w2", shape=(cfg.d_ff, d)),
                g.variable("ff_b2", zeros),
                (g.variable("ln2_gain", ones), g.variable("ln2_bias", zeros)),
            )

    def __call__(self, x: Masked, attend: Attend = correct_attention, norm: Norm = correct_norm) -> Masked:
        """Apply the block to Masked ``[batch, time, d_model]``; ``attend`` and ``norm`` can be swapped out."""
        x = norm(x + attend(x, self.attn), *self.ln1)
        ff = masked.dense(masked.dense(x, self.w1, self.b1, ops.relu), self.w2, self.b2)
        return norm(x + ff, *self.ln2)


class Encoder:
    """Token + position embeddings, ``layers`` blocks, and a vocabulary projection (logits)."""

    def __init__(self, g: Graph, cfg: EncoderConfig, name: str = "encoder"):
        self.graph = g
        self.cfg = cfg
        with g.scope(name):
            self.tok_emb = g.variable("tok_emb", shape=(cfg.vocab, cfg.d_model), init="normal", scale=0.5)
            self.pos_emb = g.variable("pos_emb", shape=(cfg.max_len, cfg.d_model), init="normal", scale=0.5)
            self.out_w = g.variable("out_w", shape=(cfg.d_model, cfg.vocab))
            self.out_b = g.variable("out_b", np.zeros(cfg.vocab))
        self.blocks = [Block.create(g, f"{name}/block{i}", cfg) for i in range(cfg.layers)]

    def embed(self, tokens: Var, mask: Var) -> Masked:
        """``[batch, time]`` ids -> Masked ``[batch, time, d_model]`` (token + position embeddings)."""
        if tokens.kind == "placeholder":
            what = f"the encoder's max_len: its position table has {self.cfg.max_len} rows"
            self.graph.add_check("length", placeholder=tokens.name, axis=1, max=self.cfg.max_len, what=what)
        x = ops.embedding(tokens, self.tok_emb)
        if self.cfg.positions == "from_mask":
            pos = ops.gather(self.pos_emb, masked.position_ids(mask))  # [batch, time, d_model]
            return Masked(ops.add(x, pos), mask)
        pos = ops.expand_dims(ops.leading_rows(self.pos_emb, tokens), 0)  # [1, time, d_model]
        return Masked(x, mask) + pos

    def encode(self, tokens: Var, mask: Var, attend: Attend = correct_attention, norm: Norm = correct_norm) -> Masked:
        """``[batch, time]`` ids -> Masked hidden states ``[batch, time, d_model]`` (embeddings + blocks)."""
        h = self.embed(tokens, mask)
        for block in self.blocks:
            h = block(h, attend, norm)
        return h

    def project(self, h: Masked) -> Masked:
        """Hidden states -> Masked logits ``[batch, time, vocab]`` at every position (inference)."""
        return masked.dense(h, self.out_w, self.out_b)

    def project_counted(self, h: Masked, labels: Var, ignore_label: int = -1) -> CountedRows:
        """Hidden states -> logits ``[n + 1, vocab]`` at the counted positions only.

        Counted means mask 1 and label not ``ignore_label`` (see :func:`samediff_py.masked.counted_rows`): what a
        masked-LM loss needs, at ~15 % of the full projection's cost.
        """
        return masked.counted_rows(h, labels, ignore_label).map(
            lambda r: ops.add(ops.matmul(r, self.out_w), self.out_b)
        )

    def __call__(self, tokens: Var, mask: Var, attend: Attend = correct_attention, norm: Norm = correct_norm) -> Masked:
        """Full logits, Masked ``[batch, time, vocab]``."""
        return self.project(self.encode(tokens, mask, attend, norm))

    def mlm(
        self,
        tokens: Var,
        mask: Var,
        labels: Var,
        ignore_label: int = -1,
        attend: Attend = correct_attention,
        norm: Norm = correct_norm,
        loss_name: str = "loss",
        accuracy_name: str = "accuracy",
    ) -> MLMHead:
        """The masked-LM training graph.

        Loss and accuracy over the counted positions' rows only (same values and gradients as over the full logits,
        without the ``[batch, time, vocab]`` projection), plus the full logits for inference (computed only when asked
        for).
        """
        h = self.encode(tokens, mask, attend, norm)
        counted = self.project_counted(h, labels, ignore_label)
        return MLMHead(
            hidden=h,
            logits=self.project(h),
            counted=counted,
            loss=masked.softmax_cross_entropy(counted, name=loss_name),
            accuracy=masked.accuracy(counted, name=accuracy_name),
        )


@dataclass
class MLMHead:
    """What :meth:`Encoder.mlm` builds.

    ``hidden`` (Masked ``[batch, time, d_model]``), ``logits`` (Masked ``[batch, time, vocab]``, every position:
    inference), ``counted`` (:class:`CountedRows` logits at the counted positions), ``loss`` and ``accuracy`` (scalars
    over the counted positions).
    """

    hidden: Masked
    logits: Masked
    counted: CountedRows
    loss: Var
    accuracy: Var
