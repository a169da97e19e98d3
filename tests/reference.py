"""Independent numpy references for the masked ops (written from the definitions, not from our code)."""

from __future__ import annotations

import math

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(q, kv, mask_q, mask_k, wq, wk, wv, wo, scaled=True, bq=None, bk=None, bv=None, bo=None):
    """Multi-head attention in samediff_py's layout. q [B,Tq,F], kv [B,Tk,F], masks [B,T] (1 = valid),
    wq/wk/wv [H,hs,F], wo [H*hs,O], optional biases bq/bk/bv [H,hs] (per head's projection) and bo [O].
    Returns (out [B,Tq,O], weights [B,H,Tq,Tk]) with padded keys excluded (whatever their projection, bias
    included), padded queries (and queries with no valid key) zeroed: 0, not bo."""
    qh = np.einsum("btf,hsf->bhts", q, wq)  # [B,H,Tq,hs]
    kh = np.einsum("btf,hsf->bhts", kv, wk)
    vh = np.einsum("btf,hsf->bhts", kv, wv)
    if bq is not None:
        qh = qh + bq[None, :, None, :]
    if bk is not None:
        kh = kh + bk[None, :, None, :]
    if bv is not None:
        vh = vh + bv[None, :, None, :]
    scores = np.einsum("bhqs,bhks->bhqk", qh, kh)
    if scaled:
        scores = scores / np.sqrt(wq.shape[1])
    valid_k = mask_k[:, None, None, :] > 0
    scores = np.where(valid_k, scores, -np.inf)
    has_key = valid_k.any(-1, keepdims=True)
    scores = np.where(has_key, scores, 0.0)
    w = softmax(scores, -1) * has_key
    # padded keys' values never reach the output (their weight is exactly 0, and they are not multiplied in)
    ctx = np.einsum("bhqk,bhks->bhqs", w, np.where((mask_k > 0)[:, None, :, None], vh, 0.0))  # [B,H,Tq,hs]
    b, h, tq, hs = ctx.shape
    concat = ctx.transpose(0, 2, 1, 3).reshape(b, tq, h * hs)
    keep_q = (mask_q > 0)[:, :, None] & has_key[:, 0, :, :].any(-1, keepdims=True).transpose(0, 1, 2)
    out = concat @ wo
    if bo is not None:
        out = out + bo
    out = np.where(keep_q, out, 0.0)
    w = w * (mask_q > 0)[:, None, :, None]
    return out, w


def masked_xent(logits, labels, mask, ignore=-1):
    counted = (mask > 0) & (labels != ignore)
    z = np.where(mask[..., None] > 0, logits, 0.0)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    lab = np.where(counted, labels, 0)
    nll = -np.take_along_axis(logp, lab[..., None], -1)[..., 0]
    n = counted.sum()
    return float((nll * counted).sum() / max(n, 1))


# ---------------------------------------------------------------------------- pooling over time
def masked_sum_pool(x, mask):
    """x [B,T,...], mask [B,T] (1 = valid): sum over the valid time steps (loops, no broadcasting tricks)."""
    out = np.zeros((x.shape[0],) + x.shape[2:], np.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if mask[b, t] > 0:
                out[b] += x[b, t]
    return out


def masked_mean_pool(x, mask):
    """Mean over the valid time steps; a row with none gives zeros."""
    out = masked_sum_pool(x, mask)
    for b in range(x.shape[0]):
        n = int((mask[b] > 0).sum())
        if n:
            out[b] /= n
    return out


def masked_max_pool(x, mask):
    """Maximum over the valid time steps; a row with none gives zeros."""
    out = np.zeros((x.shape[0],) + x.shape[2:], np.float64)
    for b in range(x.shape[0]):
        valid = [x[b, t] for t in range(x.shape[1]) if mask[b, t] > 0]
        if valid:
            out[b] = np.max(np.stack(valid), axis=0)
    return out


# ---------------------------------------------------------------------------- per-position ops
def layer_norm(x, gain=None, bias=None, eps=1e-5, axes=-1):
    """Normalise over ``axes`` (default: the last) with the biased variance."""
    mu = x.mean(axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if gain is not None:
        y = y * gain
    if bias is not None:
        y = y + bias
    return y


# ---------------------------------------------------------------------------- loss gradient and metrics
def masked_xent_grad(logits, labels, mask, ignore=-1):
    """Analytic d(masked_xent)/d(logits): (softmax - onehot) / n at counted positions, 0 elsewhere."""
    counted = (mask > 0) & (labels != ignore)
    n = max(int(counted.sum()), 1)
    grad = np.zeros_like(logits, dtype=np.float64)
    for b, t in np.argwhere(counted):
        p = softmax(logits[b, t].astype(np.float64))
        p[labels[b, t]] -= 1.0
        grad[b, t] = p / n
    return grad


def top_k_accuracy(logits, labels, mask, k=1, ignore=-1):
    """Share of counted positions whose label is among the first k classes of a stable descending sort
    (ties ranked by class index, as np.argmax does); 0 if none count."""
    hits = n = 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if mask[b, t] > 0 and labels[b, t] != ignore:
                n += 1
                order = np.argsort(-logits[b, t], kind="stable")
                hits += int(labels[b, t] in order[:k])
    return hits / n if n else 0.0


# ---------------------------------------------------------------------------- BERT (transformers' definition)
_erf = np.vectorize(math.erf, otypes=[np.float64])

ACTIVATIONS = {
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "quick_gelu": lambda x: x / (1.0 + np.exp(-1.702 * x)),
    "relu": lambda x: np.maximum(x, 0.0),
}


def bert_forward(w, cfg, ids, mask, token_type_ids=None, prefix="bert.", mlm=True, pooler=False):
    """transformers' BertModel / BertForMaskedLM forward in float64 numpy, from transformers-named weights in
    transformers' layout (Linear weights [out, in]) and a config dict. Padded keys get probability 0; padded
    rows are computed as transformers does (not zeroed). Returns a dict: hidden (list), attn (list
    [B,H,Tq,Tk]), logits, pooled."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    act = ACTIVATIONS[cfg["hidden_act"]]
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    b, t = ids.shape
    tt = np.zeros_like(ids) if token_type_ids is None else token_type_ids

    def lin(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    def ln(x, name):
        return layer_norm(x, w[name + ".weight"], w[name + ".bias"], eps)

    e = prefix + "embeddings."
    h = w[e + "word_embeddings.weight"][ids] + w[e + "token_type_embeddings.weight"][tt]
    h = ln(h + w[e + "position_embeddings.weight"][:t][None], e + "LayerNorm")
    hidden, attns = [h], []
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}encoder.layer.{i}."

        def split(x):
            return x.reshape(b, t, heads, -1).transpose(0, 2, 1, 3)  # [B, H, T, hs]

        q, k, v = (split(lin(h, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
        probs = softmax(scores, -1)
        attns.append(probs)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
        a = ln(h + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = ln(a + lin(act(lin(a, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
        hidden.append(h)
    out = {"hidden": hidden, "attn": attns}
    if mlm:
        x = ln(act(lin(h, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
        if cfg.get("tie_word_embeddings", True):  # decoder = word embeddings, its bias = cls.predictions.bias
            out["logits"] = x @ w[e + "word_embeddings.weight"].T + w["cls.predictions.bias"]
        else:  # transformers 5: the decoder Linear's own weight and bias
            out["logits"] = x @ w["cls.predictions.decoder.weight"].T + w["cls.predictions.decoder.bias"]
    if pooler:
        out["pooled"] = np.tanh(lin(h[:, 0], prefix + "pooler.dense"))
    return out
