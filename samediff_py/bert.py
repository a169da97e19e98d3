"""BERT from and to Hugging Face ``transformers`` checkpoints, built from masked ops: a plain object holding its Vars.

:func:`from_pretrained` reads a checkpoint folder (``config.json`` + ``model.safetensors``, as written by
``BertForMaskedLM.save_pretrained`` / ``BertModel.save_pretrained``; no torch needed), builds the graph on
placeholders named like transformers' inputs and loads the weights; :meth:`Bert.save_pretrained` writes the
same layout back, so ``transformers.BertForMaskedLM.from_pretrained(folder)`` loads it with no missing or
unexpected keys. The forward pass is transformers' (post-norm blocks, absolute positions, exact GELU by
default), to float32 rounding: ``tests/test_bert.py`` checks logits, loss, every gradient, hidden states and
attention weights against a fixture written by transformers itself.

Masks follow samediff_py's contract, which is transformers' ``attention_mask`` polarity (1 = token,
0 = padding) but stricter: padded keys get exactly zero attention, padded positions of every output are 0,
and a row run alone equals its padded-batch row. Labels use transformers' ``-100`` for "not counted".

Layouts (transformers -> samediff_py):

==========================================  ==========================  ===================================
transformers tensor                         shape there                 here
==========================================  ==========================  ===================================
``*.{query,key,value}.weight``              ``[heads*hs, d]``           ``[heads, hs, d]`` (a reshape; DL4J's
                                                                        attention layout)
``*.{query,key,value}.bias``                ``[heads*hs]``              ``[heads, hs]``
any other ``nn.Linear`` ``.weight``         ``[out, in]``               ``[in, out]`` (transposed)
embeddings, LayerNorm, other biases         same                        same
``cls.predictions.decoder.weight``          tied                        the word embedding Var itself
==========================================  ==========================  ===================================

>>> import numpy as np
>>> from samediff_py import bert
>>> cfg = bert.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
...                       intermediate_size=16, max_position_embeddings=10)
>>> model = bert.from_config(cfg, seed=0)
>>> feeds = model.feeds(input_ids=[[5, 6, 7, 0]], attention_mask=[[1, 1, 1, 0]])  # token types: zeros
>>> model.graph.run(feeds, model.outputs.logits.value).shape
(1, 4, 20)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import masked, ops, train
from .checkpoint import atomic_write
from .errors import ModelFileError
from .graph import Graph, Var
from .masked import AttentionParams, Masked
from .models import Block

__all__ = [
    "ACTIVATIONS",
    "Bert",
    "BertConfig",
    "BertInputs",
    "BertOutputs",
    "from_config",
    "from_pretrained",
    "read_checkpoint",
]

IGNORE_LABEL = -100  # transformers' "not counted" label (CrossEntropyLoss ignore_index)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
ARCHITECTURES = ("BertForMaskedLM", "BertModel")

# transformers' hidden_act names -> (samediff_py op, description)
ACTIVATIONS: dict[str, Callable[[Var], Var]] = {
    "gelu": lambda v: ops.gelu(v, "none"),  # exact erf GELU (torch.nn.functional.gelu)
    "gelu_python": lambda v: ops.gelu(v, "none"),
    "gelu_new": lambda v: ops.gelu(v, "tanh"),  # tanh approximation (GPT-2)
    "gelu_pytorch_tanh": lambda v: ops.gelu(v, "tanh"),
    "gelu_fast": lambda v: ops.gelu(v, "tanh"),
    "quick_gelu": lambda v: ops.gelu(v, "sigmoid"),  # x * sigmoid(1.702 x), DL4J's gelu
    "relu": ops.relu,
}


# ============================================================================ configuration
@dataclass(frozen=True)
class BertConfig:
    """The fields of transformers' ``BertConfig`` that define the computation (transformers' defaults).

    ``extra`` keeps every other field of a loaded ``config.json`` (``transformers_version``, ``dtype``,
    ``use_cache``...), written back unchanged by :meth:`Bert.save_pretrained`.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_size(self) -> int:
        """Size of one attention head: ``hidden_size // num_attention_heads``."""
        return self.hidden_size // self.num_attention_heads

    def validate(self, where: str = "BertConfig") -> None:
        """Refuse what this implementation does not compute exactly, naming the field."""

        def bad(msg: str) -> ValueError:
            return ValueError(f"{where}: {msg}")

        for n in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size"):  # fmt: skip
            v = getattr(self, n)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise bad(f"{n} must be a positive int, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise bad(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise bad(f"hidden_act {self.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        if self.position_embedding_type != "absolute":
            raise bad(
                f"position_embedding_type {self.position_embedding_type!r} is not supported (only 'absolute': "
                "relative_key / relative_key_query add learned distance terms to the scores)"
            )
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps >= 0):
            raise bad(f"layer_norm_eps must be a number >= 0, got {self.layer_norm_eps!r}")
        for n in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            v = getattr(self, n)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise bad(f"{n} must be in [0, 1), got {v!r}")
        if self.extra.get("is_decoder"):
            raise bad("is_decoder=true (causal self-attention) is not supported: this is the bidirectional encoder")
        if self.extra.get("add_cross_attention"):
            raise bad("add_cross_attention=true is not supported")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> BertConfig:
        """From a ``config.json`` dict: checks ``model_type`` and ``architectures`` too."""
        if d.get("model_type") != "bert":
            raise ValueError(
                f"{where}: model_type {d.get('model_type')!r} is not 'bert' (samediff_py.bert reads BERT only)"
            )
        archs = d.get("architectures") or []
        unknown = [a for a in archs if a not in ARCHITECTURES]
        if unknown:
            raise ValueError(
                f"{where}: architectures {unknown} not supported (samediff_py.bert reads {', '.join(ARCHITECTURES)})"
            )
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: d[k] for k in names if k in d and (d[k] is not None or k == "pad_token_id")}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            return cls(**known, extra=extra)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e).replace("BertConfig: ", f"{where}: ", 1)) from None

    def to_dict(self, architecture: str = "BertForMaskedLM") -> dict[str, Any]:
        """A ``config.json`` dict: the extra fields first, ours over them, ``architectures`` and ``model_type``."""
        out = dict(self.extra)
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out["architectures"] = [architecture]
        out["model_type"] = "bert"
        return dict(sorted(out.items()))


# ============================================================================ checkpoint files
def read_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a transformers checkpoint folder.

    Returns ``(config dict, {tensor name: numpy array})`` from ``config.json`` and ``model.safetensors`` (or the shards
    listed in ``model.safetensors.index.json``). No torch needed.

    Raises:
        ModelFileError: a file is missing or unreadable (PyTorch ``.bin`` checkpoints need torch to read:
            convert them to safetensors first).
    """
    from safetensors.numpy import load_file

    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ModelFileError(folder, "not a folder (expected a checkpoint folder with config.json + model.safetensors)")
    if not cfg_path.is_file():
        raise ModelFileError(cfg_path, "missing: a transformers checkpoint folder holds config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(cfg_path, f"cannot read the JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ModelFileError(cfg_path, "is not a JSON object")
    if (folder / WEIGHTS_FILE).is_file():
        files = [folder / WEIGHTS_FILE]
    elif (folder / WEIGHTS_INDEX).is_file():
        try:
            index = json.loads((folder / WEIGHTS_INDEX).read_text(encoding="utf-8"))
            files = [folder / f for f in sorted(set(index["weight_map"].values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFileError(folder / WEIGHTS_INDEX, f"cannot read the shard index: {e!r}") from None
    else:
        hint = " (found pytorch_model.bin: convert it to safetensors, e.g. with transformers)" if (
            folder / "pytorch_model.bin").exists() else ""  # fmt: skip
        raise ModelFileError(folder / WEIGHTS_FILE, f"missing{hint}")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except Exception as e:  # safetensors raises its own error types (and OSError)
            raise ModelFileError(f, f"cannot read safetensors: {type(e).__name__}: {e}") from None
        dup = sorted(set(part) & set(tensors))
        if dup:
            raise ModelFileError(f, f"tensor {dup[0]!r} is stored in two shards")
        tensors.update(part)
    return cfg, tensors


@dataclass(frozen=True)
class _Slot:
    """One transformers tensor: its name, shape there, the Var attribute path here, and the layout change."""

    hf: str
    shape: tuple[int, ...]
    var: str  # key into Bert.variables()
    kind: str  # "copy" | "linear" (transpose) | "heads" ([h*hs, d] -> [h, hs, d]) | "head_bias" ([h*hs] -> [h, hs])
    #            | "keep" (no Var: a tensor transformers stores but the computation does not use, written back as is)


def _to_ours(kind: str, a: np.ndarray, cfg: BertConfig) -> np.ndarray:
    if kind == "linear":
        return np.ascontiguousarray(a.T)
    if kind == "heads":
        return a.reshape(cfg.num_attention_heads, cfg.head_size, a.shape[1])
    if kind == "head_bias":
        return a.reshape(cfg.num_attention_heads, cfg.head_size)
    return a


def _to_hf(kind: str, a: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return np.ascontiguousarray(a.T)
    if kind == "heads":
        return a.reshape(a.shape[0] * a.shape[1], a.shape[2])
    if kind == "head_bias":
        return a.reshape(-1)
    return a


def _slots(cfg: BertConfig, prefix: str, pooler: bool, mlm_head: bool) -> list[_Slot]:
    """Every tensor of a transformers checkpoint of this configuration, in transformers' order."""
    d, inter, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    e = f"{prefix}embeddings."
    out = [
        _Slot(f"{e}word_embeddings.weight", (v, d), "word", "copy"),
        _Slot(f"{e}position_embeddings.weight", (cfg.max_position_embeddings, d), "position", "copy"),
        _Slot(f"{e}token_type_embeddings.weight", (cfg.type_vocab_size, d), "token_type", "copy"),
        _Slot(f"{e}LayerNorm.weight", (d,), "emb_ln_gain", "copy"),
        _Slot(f"{e}LayerNorm.bias", (d,), "emb_ln_bias", "copy"),
    ]
    for i in range(cfg.num_hidden_layers):
        lay = f"{prefix}encoder.layer.{i}."
        for part, w, b in (("query", "wq", "bq"), ("key", "wk", "bk"), ("value", "wv", "bv")):
            out.append(_Slot(f"{lay}attention.self.{part}.weight", (d, d), f"layer{i}.{w}", "heads"))
            out.append(_Slot(f"{lay}attention.self.{part}.bias", (d,), f"layer{i}.{b}", "head_bias"))
        out += [
            _Slot(f"{lay}attention.output.dense.weight", (d, d), f"layer{i}.wo", "linear"),
            _Slot(f"{lay}attention.output.dense.bias", (d,), f"layer{i}.bo", "copy"),
            _Slot(f"{lay}attention.output.LayerNorm.weight", (d,), f"layer{i}.ln1_gain", "copy"),
            _Slot(f"{lay}attention.output.LayerNorm.bias", (d,), f"layer{i}.ln1_bias", "copy"),
            _Slot(f"{lay}intermediate.dense.weight", (inter, d), f"layer{i}.w1", "linear"),
            _Slot(f"{lay}intermediate.dense.bias", (inter,), f"layer{i}.b1", "copy"),
            _Slot(f"{lay}output.dense.weight", (d, inter), f"layer{i}.w2", "linear"),
            _Slot(f"{lay}output.dense.bias", (d,), f"layer{i}.b2", "copy"),
            _Slot(f"{lay}output.LayerNorm.weight", (d,), f"layer{i}.ln2_gain", "copy"),
            _Slot(f"{lay}output.LayerNorm.bias", (d,), f"layer{i}.ln2_bias", "copy"),
        ]
    if pooler:
        out += [
            _Slot(f"{prefix}pooler.dense.weight", (d, d), "pooler_w", "linear"),
            _Slot(f"{prefix}pooler.dense.bias", (d,), "pooler_b", "copy"),
        ]
    if mlm_head:
        if cfg.tie_word_embeddings:  # decoder.weight = the word embeddings, decoder.bias = cls.predictions.bias
            out.append(_Slot("cls.predictions.bias", (v,), "mlm_bias", "copy"))
        else:  # transformers 5: an own decoder weight AND bias; cls.predictions.bias is then unused (kept as is)
            out.append(_Slot("cls.predictions.bias", (v,), "unused_bias", "keep"))
        out += [
            _Slot("cls.predictions.transform.dense.weight", (d, d), "mlm_w", "linear"),
            _Slot("cls.predictions.transform.dense.bias", (d,), "mlm_b", "copy"),
            _Slot("cls.predictions.transform.LayerNorm.weight", (d,), "mlm_ln_gain", "copy"),
            _Slot("cls.predictions.transform.LayerNorm.bias", (d,), "mlm_ln_bias", "copy"),
        ]
        if not cfg.tie_word_embeddings:
            out.append(_Slot("cls.predictions.decoder.weight", (v, d), "decoder", "copy"))
            out.append(_Slot("cls.predictions.decoder.bias", (v,), "mlm_bias", "copy"))
    return out


def _canonical_tensors(
    tensors: Mapping[str, np.ndarray], cfg: BertConfig, where: Path | str
) -> tuple[dict[str, np.ndarray], str, bool, bool]:
    """Normalise a checkpoint's tensors.

    Old ``gamma``/``beta`` LayerNorm names, tied aliases (which must equal their canonical tensor), the non-persistent
    ``position_ids`` buffer. Returns (tensors, prefix, pooler, mlm_head).
    """
    out: dict[str, np.ndarray] = {}
    for k, a in tensors.items():
        n = k
        if ".LayerNorm.gamma" in n or ".LayerNorm.beta" in n:
            n = n.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(".LayerNorm.beta", ".LayerNorm.bias")
        if n in out:
            raise ModelFileError(where, f"tensor {k!r} appears twice (also under its other LayerNorm name)")
        out[n] = a
    prefix = "bert." if any(k.startswith("bert.") for k in out) else ""
    pos_ids = f"{prefix}embeddings.position_ids"
    if pos_ids in out:  # a buffer older transformers saved; arange by definition
        a = np.asarray(out.pop(pos_ids))
        if not np.array_equal(a.reshape(-1), np.arange(a.size)):
            raise ModelFileError(where, f"tensor {pos_ids!r} is not 0, 1, 2...: custom position ids are not supported")
    mlm_head = any(k.startswith("cls.predictions.") for k in out)
    if mlm_head and not prefix:
        raise ModelFileError(where, "cls.predictions.* tensors without bert.* tensors: not a BertForMaskedLM layout")
    if mlm_head and cfg.tie_word_embeddings:
        for alias, canonical in (
            ("cls.predictions.decoder.weight", f"{prefix}embeddings.word_embeddings.weight"),
            ("cls.predictions.decoder.bias", "cls.predictions.bias"),
        ):
            if alias in out:
                a = out.pop(alias)
                if canonical not in out:
                    raise ModelFileError(where, f"tensor {alias!r} is tied to {canonical!r}, which is missing")
                if a.shape != out[canonical].shape or not np.array_equal(a, out[canonical]):
                    raise ModelFileError(
                        where,
                        f"tensor {alias!r} differs from {canonical!r}, but config.json ties them "
                        "(tie_word_embeddings=true): the checkpoint is inconsistent",
                    )
    elif mlm_head and "cls.predictions.decoder.bias" not in out and "cls.predictions.bias" in out:
        # transformers 4 kept decoder.bias tied to cls.predictions.bias even with untied word embeddings
        out["cls.predictions.decoder.bias"] = np.array(out["cls.predictions.bias"])
    pooler = f"{prefix}pooler.dense.weight" in out or f"{prefix}pooler.dense.bias" in out
    return out, prefix, pooler, mlm_head


def _check_tensors(
    tensors: Mapping[str, np.ndarray], slots: Sequence[_Slot], where: Path | str, strict: bool
) -> list[str]:
    """Every slot present with its shape; unexpected tensors refused (``strict``) or returned."""
    expected = {s.hf: s for s in slots}
    missing = [s.hf for s in slots if s.hf not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(
            where, f"tensor {missing[0]!r} is missing{more}: the checkpoint does not match config.json"
        )
    for s in slots:
        a = tensors[s.hf]
        if tuple(a.shape) != s.shape:
            raise ModelFileError(where, f"tensor {s.hf!r} has shape {tuple(a.shape)}, config.json implies {s.shape}")
        if a.dtype.kind != "f":
            raise ModelFileError(where, f"tensor {s.hf!r} has dtype {a.dtype}, expected floating point")
    extra = sorted(k for k in tensors if k not in expected)
    if extra and strict:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ModelFileError(
            where,
            f"unexpected tensor {extra[0]!r}{more}: this BERT has no such parameter (another head?). "
            "Pass strict=False to ignore the extra tensors",
        )
    return extra


# ============================================================================ the model
@dataclass
class BertInputs:
    """The placeholders a BERT graph is fed through (named like transformers' arguments)."""

    input_ids: Var
    attention_mask: Var
    token_type_ids: Var | None = None
    labels: Var | None = None


@dataclass
class BertOutputs:
    """What :meth:`Bert.__call__` builds.

    Attributes:
        hidden_states: ``num_hidden_layers + 1`` Masked ``[batch, time, hidden]``: the embeddings (after their
            LayerNorm), then each layer's output (transformers' ``output_hidden_states``).
        sequence_output: the last hidden state.
        logits: Masked ``[batch, time, vocab]`` MLM logits (``None`` without the MLM head).
        pooled: ``[batch, hidden]`` ``tanh(dense(first token))`` (``None`` without a pooler); 0 for an empty row.
        attentions: per layer ``[batch, heads, query, key]`` softmax weights (inspection only; empty unless
            requested): 0 at padded keys and padded queries.
        loss: the MLM loss (mean cross-entropy over positions with mask 1 and label != -100; 0 if none), when
            labels were given.
    """

    hidden_states: list[Masked]
    sequence_output: Masked
    logits: Masked | None = None
    pooled: Var | None = None
    attentions: list[Var] = field(default_factory=list)
    loss: Var | None = None


class Bert:
    """A BERT encoder (+ optional pooler, + optional MLM head) whose weights are Vars of ``graph``.

    Args:
        graph: the graph to create the variables in.
        config: the :class:`BertConfig`.
        weights: transformers-named tensors in transformers' layout (see the module docstring), e.g. from
            :func:`read_checkpoint`; every tensor of this configuration must be present. ``None``: random
            initial values as transformers draws them (normal(0, initializer_range) weights and embeddings,
            zero biases, unit LayerNorm gains).
        pooler: build the pooler (``bert.pooler.dense``).
        mlm_head: build the MLM head (``cls.predictions``), its decoder tied to the word embeddings (one Var
            used twice, so it stays tied while training) and its bias ``cls.predictions.bias``; with
            ``config.tie_word_embeddings`` false, transformers 5's untied head: its own
            ``cls.predictions.decoder.weight`` and ``.bias`` (``cls.predictions.bias`` is then unused, kept).
        prefix: ``"bert."`` for a ``BertForMaskedLM`` layout, ``""`` for a bare ``BertModel``.
        name: scope of the Vars in the graph.
        seed: seed of the random initial values (default: the graph's generator).
        dropout: build transformers' hidden dropout (``config.hidden_dropout_prob``, after the embeddings and
            before each residual sum) as keep-mask placeholders (:func:`samediff_py.train.dropout`): the Trainer
            draws them, :meth:`feeds`, evaluation and prediction fill ones. Attention-probability dropout is
            not built (DL4J's fused attention op has no such input).
        attention: ``(Masked x, AttentionParams, return_weights) -> Masked`` (or ``(Masked, weights)``):
            the self-attention formulation, :func:`samediff_py.masked.multi_head_attention` (DL4J's fused op)
            by default. Any formulation that honours the masking contract and the biases gives the same numbers.

    LayerNorm is ``samediff_py.ops.layer_norm`` with ``config.layer_norm_eps`` (the exact, unfused form:
    libnd4j's fused layer norm has no epsilon, and measured slower here: 40 vs 34 ms for 9 of them on
    ``[16, 128, 256]``).
    """

    def __init__(
        self,
        graph: Graph,
        config: BertConfig,
        weights: Mapping[str, np.ndarray] | None = None,
        *,
        pooler: bool = False,
        mlm_head: bool = True,
        prefix: str = "bert.",
        name: str = "bert",
        seed: int | None = None,
        dropout: bool = False,
        attention: Callable[..., Any] | None = None,
    ):
        if prefix not in ("bert.", ""):
            raise ValueError(f"prefix must be 'bert.' or '', got {prefix!r}")
        if mlm_head and not prefix:
            raise ValueError("an MLM head needs the 'bert.' prefix (BertForMaskedLM layout)")
        self.graph = graph
        self.config = config
        self.name = name
        self.prefix = prefix
        self.has_pooler = bool(pooler)
        self.has_mlm_head = bool(mlm_head)
        self.attention = attention or masked.multi_head_attention
        self.dropout = bool(dropout) and config.hidden_dropout_prob > 0
        self.slots = _slots(config, prefix, self.has_pooler, self.has_mlm_head)
        self.source: Path | None = None  # the folder from_pretrained read (its tokenizer files are copied on save)
        self.ignored_tensors: list[str] = []  # extra checkpoint tensors skipped with strict=False
        self.inputs: BertInputs | None = None
        self.outputs: BertOutputs | None = None
        if weights is not None:
            _check_tensors(weights, self.slots, "weights", strict=False)
        rng = np.random.default_rng(seed) if seed is not None else graph.rng
        self._vars: dict[str, Var] = {}
        self._kept: dict[str, np.ndarray] = {}  # "keep" slots: stored by transformers, unused by the computation
        with graph.scope(name):
            for s in self.slots:
                if weights is not None:
                    value = _to_ours(s.kind, np.asarray(weights[s.hf]), config)
                else:
                    value = _to_ours(s.kind, _initial(s, config, rng), config)
                if s.kind == "keep":
                    self._kept[s.hf] = np.array(value, np.float32)
                else:
                    self._vars[s.var] = graph.variable(s.var.replace(".", "/"), value)
        v = self._vars
        self.word, self.position, self.token_type = v["word"], v["position"], v["token_type"]
        self.emb_ln = (v["emb_ln_gain"], v["emb_ln_bias"])
        self.layers: list[Block] = []  # models.Block holds the same Vars; layer() is BERT's forward
        for i in range(config.num_hidden_layers):
            p = f"layer{i}."
            attn = AttentionParams(*(v[p + n] for n in ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo")))
            self.layers.append(
                Block(
                    attn,
                    (v[p + "ln1_gain"], v[p + "ln1_bias"]),
                    v[p + "w1"],
                    v[p + "b1"],
                    v[p + "w2"],
                    v[p + "b2"],
                    (v[p + "ln2_gain"], v[p + "ln2_bias"]),
                )
            )
        self.pooler = (v["pooler_w"], v["pooler_b"]) if self.has_pooler else None
        self.decoder = None
        if self.has_mlm_head:
            self.decoder = v["decoder"] if "decoder" in v else self.word  # tied: the same Var
            self.mlm_transform = (v["mlm_w"], v["mlm_b"])
            self.mlm_ln = (v["mlm_ln_gain"], v["mlm_ln_bias"])
            self.mlm_bias = v["mlm_bias"]

    # ------------------------------------------------------------------ parameters
    def variables(self) -> dict[str, Var]:
        """Every Var, keyed by transformers' tensor name (the tied decoder is not listed twice)."""
        return {s.hf: self._vars[s.var] for s in self.slots if s.kind != "keep"}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Current weights as transformers-named float32 tensors.

        In transformers' layout (what :meth:`save_pretrained` writes).
        """
        out = {}
        for s in self.slots:
            a = self._kept[s.hf] if s.kind == "keep" else _to_hf(s.kind, self.graph.get_value(self._vars[s.var]))
            out[s.hf] = np.ascontiguousarray(a, dtype=np.float32)
        return out

    def load_state_dict(self, tensors: Mapping[str, np.ndarray], strict: bool = True) -> list[str]:
        """Set every weight from transformers-named tensors.

        Checked like :func:`from_pretrained`; returns the names of ignored extra tensors (``strict=False``).
        """
        canon, _, _, _ = _canonical_tensors(tensors, self.config, "tensors")
        extra = _check_tensors(canon, self.slots, "tensors", strict)
        for s in self.slots:
            if s.kind == "keep":
                self._kept[s.hf] = np.array(canon[s.hf], np.float32)
            else:
                self.graph.set_value(self._vars[s.var], _to_ours(s.kind, np.asarray(canon[s.hf]), self.config))
        return extra

    # ------------------------------------------------------------------ forward
    def _norm(self, x: Masked, gain: Var, bias: Var) -> Masked:
        return masked.layer_norm(x, gain, bias, eps=float(self.config.layer_norm_eps))

    def _drop(self, x: Masked) -> Masked:
        if not self.dropout:
            return x
        n = self.graph.unique_name("dropout").split("/")[-1]
        rate, d = self.config.hidden_dropout_prob, self.config.hidden_size
        return x.map(lambda v: train.dropout(v, rate, n, noise_shape=("batch", "time", d)))

    def embed(self, input_ids: Var, attention_mask: Var, token_type_ids: Var | None = None) -> Masked:
        """``LayerNorm(word[ids] + token_type[tt] + position[0..T-1])`` as Masked ``[batch, time, hidden]``."""
        g = self.graph
        if input_ids.kind == "placeholder":
            what = f"max_position_embeddings: BERT's position table has {self.config.max_position_embeddings} rows"
            g.add_check(
                "length", placeholder=input_ids.name, axis=1, max=self.config.max_position_embeddings, what=what
            )
        x = ops.embedding(input_ids, self.word)
        if token_type_ids is None:
            x = ops.add(x, self.token_type[0])  # transformers: all-zero token types
        else:
            x = ops.add(x, ops.embedding(token_type_ids, self.token_type))
        pos = ops.expand_dims(ops.leading_rows(self.position, input_ids), 0)  # [1, time, hidden]
        return self._drop(self._norm(Masked(x, attention_mask) + pos, *self.emb_ln))

    def layer(self, i: int, h: Masked, output_attentions: bool = False) -> tuple[Masked, Var | None]:
        """Encoder layer ``i`` (post-norm): ``a = LN(h + attn(h)); LN(a + W2 act(W1 a + b1) + b2)``."""
        lay = self.layers[i]
        act = ACTIVATIONS[self.config.hidden_act]
        weights = None
        if output_attentions:
            a, weights = self.attention(h, lay.attn, return_weights=True)
        else:
            a = self.attention(h, lay.attn)
        h = self._norm(h + self._drop(a), *lay.ln1)
        ff = masked.dense(masked.dense(h, lay.w1, lay.b1, act), lay.w2, lay.b2)
        return self._norm(h + self._drop(ff), *lay.ln2), weights

    def __call__(
        self,
        input_ids: Var,
        attention_mask: Var,
        token_type_ids: Var | None = None,
        labels: Var | None = None,
        *,
        output_attentions: bool = False,
    ) -> BertOutputs:
        """Build the forward pass.

        On ``[batch, time]`` integer ``input_ids`` (``token_type_ids``: zeros if ``None``) and the mask placeholder
        ``attention_mask`` (1 = token, 0 = padding; right padding: positions are 0..T-1 as in transformers). With
        ``labels`` (``-100`` = not counted), also the MLM loss.
        """
        if labels is not None and not self.has_mlm_head:
            raise ValueError("labels given, but this BERT has no MLM head")
        g = self.graph
        with g.scope(self.name), g.scope("embeddings"):
            h = self.embed(input_ids, attention_mask, token_type_ids)
        hidden, attns = [h], []
        for i in range(len(self.layers)):
            with g.scope(self.name), g.scope(f"layer{i}"):
                h, w = self.layer(i, h, output_attentions)
            hidden.append(h)
            if w is not None:
                attns.append(w)
        out = BertOutputs(hidden, h, attentions=attns)
        if self.pooler is not None:
            with g.scope(self.name):
                out.pooled = self.pool(h)
        if self.has_mlm_head:
            with g.scope("cls"):
                out.logits = self.mlm_logits(h)
            if labels is not None:
                out.loss = masked.softmax_cross_entropy(out.logits, labels, ignore_label=IGNORE_LABEL, name="mlm_loss")
        return out

    def mlm_logits(self, h: Masked) -> Masked:
        """The MLM head: ``LN(act(h W + b)) @ decoder.T + bias``, decoder = the word embeddings when tied."""
        if not self.has_mlm_head:
            raise ValueError("this BERT has no MLM head")
        act = ACTIVATIONS[self.config.hidden_act]
        t = self._norm(masked.dense(h, *self.mlm_transform, act), *self.mlm_ln)
        # decoder [vocab, hidden] used as t @ decoder.T without copying it (tied: the word embedding Var)
        return t.map(lambda v: ops.add(ops.matmul(v, self.decoder, transpose_b=True), self.mlm_bias))

    def pool(self, h: Masked) -> Var:
        """The transformers pooler: ``tanh(first token @ W + b)``, ``[batch, hidden]``; 0 for a row with no token."""
        if self.pooler is None:
            raise ValueError("this BERT has no pooler")
        first = h.zeroed()[:, 0]  # right padding: the first position is a token in every non-empty row
        pooled = ops.tanh(ops.add(ops.matmul(first, self.pooler[0]), self.pooler[1]))
        has_token = ops.greater(ops.add(ops.expand_dims(h.mask[:, 0], 1), ops.zeros_like(pooled)), 0.5)
        return ops.where(has_token, pooled, ops.zeros_like(pooled), name="pooled", same_shape=True)

    def feeds(
        self,
        input_ids: Any,
        attention_mask: Any,
        token_type_ids: Any | None = None,
        labels: Any | None = None,
    ) -> dict[str, np.ndarray]:
        """A feed dict for :attr:`inputs`, with transformers' defaults.

        :attr:`inputs` is built by :func:`from_pretrained` / :func:`from_config`. The defaults: ``token_type_ids``
        zeros; ``labels`` all ``-100`` (nothing counted) when the graph has a labels
        placeholder and none are given; dropout keep-masks all ones (dropout off: the Trainer draws its own).
        """
        if self.inputs is None:
            raise ValueError("this Bert was not built on placeholders (use from_pretrained / from_config)")
        ids = np.asarray(input_ids)
        out = {self.inputs.input_ids.name: ids, self.inputs.attention_mask.name: np.asarray(attention_mask)}
        if self.inputs.token_type_ids is not None:
            tt = np.zeros(ids.shape, np.int32) if token_type_ids is None else np.asarray(token_type_ids)
            out[self.inputs.token_type_ids.name] = tt
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but the graph has no token_type_ids placeholder")
        if self.inputs.labels is not None:
            lab = np.full(ids.shape, IGNORE_LABEL, np.int32) if labels is None else np.asarray(labels)
            out[self.inputs.labels.name] = lab
        elif labels is not None:
            raise ValueError("labels given, but the graph has no labels placeholder")
        return train.feed_inference(self.graph, out) if self.dropout else out

    # ------------------------------------------------------------------ saving
    @property
    def architecture(self) -> str:
        """The transformers class name saved in ``config.json``: ``BertForMaskedLM`` or ``BertModel``."""
        return "BertForMaskedLM" if self.has_mlm_head else "BertModel"

    def save_pretrained(self, folder: str | os.PathLike, *, copy_tokenizer: bool = True) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in transformers' layout and names.

        No tied ``cls.predictions.decoder.*``; each file is written atomically (samediff_py.checkpoint.atomic_write).
        With ``copy_tokenizer``, tokenizer files of the folder this model was read from are copied too (if absent).

        Returns:
            the folder.
        """
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        bad = [k for k, a in state.items() if not np.isfinite(a).all()]
        if bad:
            raise ModelFileError(folder / WEIGHTS_FILE, f"tensor {bad[0]!r} holds NaN or infinity: not saved")
        with atomic_write(folder / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        cfg = self.config.to_dict(self.architecture)
        for k in ("dtype", "torch_dtype"):  # the tensors written are float32, whatever the checkpoint held
            if k in cfg:
                cfg[k] = "float32"
        with atomic_write(folder / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if copy_tokenizer and self.source is not None and self.source.resolve() != folder.resolve():
            for n in TOKENIZER_FILES:
                src, dst = self.source / n, folder / n
                if src.is_file() and not dst.exists():
                    with atomic_write(dst) as tmp:
                        shutil.copyfile(src, tmp)
        return folder


def _initial(s: _Slot, cfg: BertConfig, rng: np.random.Generator) -> np.ndarray:
    """The transformers initial value for a tensor (in transformers' layout)."""
    if "LayerNorm.weight" in s.hf:
        return np.ones(s.shape)
    if s.hf.endswith(".bias"):
        return np.zeros(s.shape)
    a = rng.normal(0.0, cfg.initializer_range, s.shape)
    if s.var == "word" and cfg.pad_token_id is not None and 0 <= cfg.pad_token_id < cfg.vocab_size:
        a[cfg.pad_token_id] = 0.0  # nn.Embedding(padding_idx=pad) starts the pad row at zero
    return a


# ============================================================================ building a model on placeholders
def make_inputs(
    graph: Graph, config: BertConfig, *, token_type_ids: bool = True, labels: bool = True, pad_check: bool = True
) -> BertInputs:
    """Placeholders named like transformers' arguments.

    ``input_ids`` / ``token_type_ids`` / ``labels`` (int32 ``[batch, time]``) and the mask placeholder
    ``attention_mask`` (right padding; with ``pad_check``, a valid position holding ``config.pad_token_id`` is refused:
    a mask that does not match the padding).
    """
    ids = graph.placeholder("input_ids", ("batch", "time"), "int32")
    pad = config.pad_token_id if pad_check and config.pad_token_id is not None else None
    mask = masked.mask_placeholder(graph, "attention_mask", tokens=ids, pad_id=pad)
    tt = graph.placeholder("token_type_ids", ("batch", "time"), "int32") if token_type_ids else None
    lab = graph.placeholder("labels", ("batch", "time"), "int32") if labels else None
    return BertInputs(ids, mask, tt, lab)


def _build(model: Bert, *, token_type_ids: bool, labels: bool, output_attentions: bool) -> Bert:
    model.inputs = make_inputs(model.graph, model.config, token_type_ids=token_type_ids, labels=labels)
    i = model.inputs
    model.outputs = model(
        i.input_ids,
        i.attention_mask,
        i.token_type_ids,
        i.labels if model.has_mlm_head else None,
        output_attentions=output_attentions,
    )
    return model


def from_pretrained(
    folder: str | os.PathLike,
    *,
    graph: Graph | None = None,
    dtype: Any = np.float32,
    pooler: bool | None = None,
    mlm_head: bool | None = None,
    strict: bool = True,
    token_type_ids: bool = True,
    labels: bool = True,
    output_attentions: bool = False,
    dropout: bool = False,
    attention: Callable[..., Any] | None = None,
    name: str = "bert",
) -> Bert:
    """Read a transformers BERT checkpoint folder and build it on placeholders.

    Args:
        folder: holds ``config.json`` and ``model.safetensors`` (or safetensors shards + index).
        graph: build in this graph (default: a new ``Graph(dtype=dtype)``; its placeholders get the names
            ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``).
        dtype: float dtype of the new graph when ``graph`` is not given.
        pooler: ``None`` = build it iff the checkpoint has its tensors; ``False`` = leave it out (its tensors are
            then unexpected: pass ``strict=False``).
        mlm_head: the same choice for the masked-LM head.
        strict: refuse tensors this model has no place for (e.g. ``cls.seq_relationship.*`` of a
            ``BertForPreTraining`` checkpoint); ``False`` ignores them (listed in ``model.ignored_tensors``).
        token_type_ids: create the ``token_type_ids`` placeholder.
        labels: create the ``labels`` placeholder (and the MLM loss ``model.outputs.loss``).
        output_attentions: also build the per-layer attention weights (``model.outputs.attentions``).
        dropout: build the hidden dropout for training (see :class:`Bert`).
        attention: the self-attention formulation (see :class:`Bert`).
        name: scope of the model's variables and ops.

    Returns:
        A :class:`Bert` with ``.graph``, ``.inputs`` (placeholders) and ``.outputs`` (logits, loss, hidden
        states...).

    Raises:
        ModelFileError: naming the file and the problem: missing files, not BERT, an unsupported field
            (``hidden_act``, ``position_embedding_type``...), a missing or unexpected tensor, a shape that
            does not match ``config.json``, a tied tensor that differs from its twin.
    """
    folder = Path(folder)
    cfg_dict, tensors = read_checkpoint(folder)
    try:
        cfg = BertConfig.from_dict(cfg_dict, where=str(folder / CONFIG_FILE))
    except ValueError as e:
        raise ModelFileError(folder / CONFIG_FILE, str(e).split(": ", 1)[-1]) from None
    weights_path = folder / WEIGHTS_FILE
    canon, prefix, has_pooler, has_head = _canonical_tensors(tensors, cfg, weights_path)
    if mlm_head and not has_head:
        raise ModelFileError(weights_path, "mlm_head=True, but the checkpoint has no cls.predictions.* tensors")
    if pooler and not has_pooler:
        raise ModelFileError(weights_path, f"pooler=True, but the checkpoint has no {prefix}pooler.* tensors")
    use_head = has_head if mlm_head is None else bool(mlm_head)
    use_pooler = has_pooler if pooler is None else bool(pooler)
    slots = _slots(cfg, prefix, use_pooler, use_head)
    extra = _check_tensors(canon, slots, weights_path, strict)
    g = graph if graph is not None else Graph(dtype=dtype)
    model = Bert(
        g,
        cfg,
        canon,
        pooler=use_pooler,
        mlm_head=use_head,
        prefix=prefix,
        name=name,
        dropout=dropout,
        attention=attention,
    )
    model.source = folder
    model.ignored_tensors = extra
    return _build(model, token_type_ids=token_type_ids, labels=labels, output_attentions=output_attentions)


def from_config(
    config: BertConfig | Mapping[str, Any],
    *,
    graph: Graph | None = None,
    dtype: Any = np.float32,
    seed: int | None = 0,
    pooler: bool = False,
    mlm_head: bool = True,
    token_type_ids: bool = True,
    labels: bool = True,
    output_attentions: bool = False,
    dropout: bool = False,
    attention: Callable[..., Any] | None = None,
    name: str = "bert",
) -> Bert:
    """A randomly initialised BERT (transformers' initialiser) built on placeholders.

    Like :func:`from_pretrained`. ``config`` is a :class:`BertConfig` or a ``config.json`` dict.
    """
    cfg = config if isinstance(config, BertConfig) else BertConfig.from_dict({"model_type": "bert", **config})
    g = graph if graph is not None else Graph(seed=seed, dtype=dtype)
    model = Bert(
        g, cfg, None, pooler=pooler, mlm_head=mlm_head, prefix="bert." if mlm_head else "", name=name,
        seed=seed, dropout=dropout, attention=attention,
    )  # fmt: skip
    return _build(model, token_type_ids=token_type_ids, labels=labels, output_attentions=output_attentions)
