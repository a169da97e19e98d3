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


# ---------------------------------------------------------------------------- recurrent layers
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_steps(xs, wx, wr, b):
    """LSTM over the rows of xs [t, d] (already only the valid steps, in processing order), gate order
    i, f, g, o, zero initial state. Returns (outputs [t, n], last h, last c)."""
    n = wr.shape[0]
    h, c = np.zeros(n), np.zeros(n)
    ys = []
    for x in xs:
        z = x @ wx + h @ wr + (0.0 if b is None else b)
        i, f, g, o = _sigmoid(z[:n]), _sigmoid(z[n : 2 * n]), np.tanh(z[2 * n : 3 * n]), _sigmoid(z[3 * n :])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.array(ys).reshape(len(xs), n), h, c


def gru_steps(xs, wx, wh, b, bh):
    """GRU over xs [t, d] (valid steps only, processing order), gate order r, u, c, reset applied after the
    recurrent matmul: c = tanh(x wx_c + b_c + r * (h wh_c + bh)), h' = u h + (1 - u) c. Returns (outputs, last h)."""
    n = wh.shape[0]
    h = np.zeros(n)
    b = np.zeros(3 * n) if b is None else b
    bh = np.zeros(n) if bh is None else bh
    ys = []
    for x in xs:
        zx, zh = x @ wx + b, h @ wh
        r = _sigmoid(zx[:n] + zh[:n])
        u = _sigmoid(zx[n : 2 * n] + zh[n : 2 * n])
        c = np.tanh(zx[2 * n :] + r * (zh[2 * n :] + bh))
        h = u * h + (1 - u) * c
        ys.append(h)
    return np.array(ys).reshape(len(xs), n), h


def masked_rnn(kind, x, mask, weights, bidirectional=False):
    """A masked recurrent layer, row by row: each row runs over ITS valid steps only (wherever they are),
    outputs go back to those positions, zeros elsewhere. Bidirectional: the backward direction runs over the
    valid steps in reverse; outputs [forward, backward] concatenated; final state = [forward after the last
    valid step, backward after the first]. ``weights``: (wx, wr, b) for "lstm", (wx, wh, b, bh) for "gru",
    each with a leading axis of 2 if bidirectional. Returns (y [B,T,w], last_h [B,w], last_c or None)."""
    steps = lstm_steps if kind == "lstm" else gru_steps
    dirs = [(False, 0), (True, 1)] if bidirectional else [(False, None)]
    n = weights[1].shape[-2]
    bsz, t = mask.shape
    y = np.zeros((bsz, t, n * len(dirs)))
    last_h = np.zeros((bsz, n * len(dirs)))
    last_c = np.zeros((bsz, n * len(dirs))) if kind == "lstm" else None
    for r in range(bsz):
        idx = np.flatnonzero(mask[r] > 0)
        for j, (rev, k) in enumerate(dirs):
            w = [None if v is None else (v[k] if k is not None else v) for v in weights]
            order = idx[::-1] if rev else idx
            res = steps(x[r, order], *w)
            y[r, order, j * n : (j + 1) * n] = res[0]
            last_h[r, j * n : (j + 1) * n] = res[1]
            if kind == "lstm":
                last_c[r, j * n : (j + 1) * n] = res[2]
    return y, last_h, last_c


# ---------------------------------------------------------------------------- 1-d convolution
def conv1d(x, w, b=None, dilation=1, padding="same"):
    """Cross-correlation of x [T, C] with w [k, C, O], stride 1, zeros outside the sequence:
    y[t] = sum_j x[t + j*d - left] @ w[j] (+ b); left = (k-1)*d for "causal", ((k-1)*d)//2 for "same"
    (the extra pad of an even total on the right, TensorFlow's convention)."""
    k = w.shape[0]
    total = (k - 1) * dilation
    left = total if padding == "causal" else total // 2
    t_len = x.shape[0]
    y = np.zeros((t_len, w.shape[2]))
    for t in range(t_len):
        for j in range(k):
            s = t + j * dilation - left
            if 0 <= s < t_len:
                y[t] += x[s] @ w[j]
    return y if b is None else y + b


def masked_conv1d(x, mask, w, b=None, dilation=1, padding="same"):
    """Each row's valid steps (contiguous) convolved alone, as if truncated; zeros at padding."""
    y = np.zeros(x.shape[:2] + (w.shape[2],))
    for r in range(x.shape[0]):
        idx = np.flatnonzero(mask[r] > 0)
        if len(idx):
            y[r, idx] = conv1d(x[r, idx], w, b, dilation, padding)
    return y


# ---------------------------------------------------------------------------- causal attention
def causal_attention(x, mask, wq, wk, wv, wo, scaled=True, biases=(None, None, None, None)):
    """Causal self-attention, row by row over the VALID steps only (query i attends to valid keys j <= i).
    x [B,T,F]; wq/wk/wv [H,hs,F]; wo [H*hs,O]; optional biases bq/bk/bv [H*hs], bo [O]. Returns
    (out [B,T,O], weights [B,H,Tq,Tk]), zeros at padded queries and keys."""
    bsz, t, _ = x.shape
    h, hs, _ = wq.shape
    bq, bk, bv, bo = biases
    out = np.zeros((bsz, t, wo.shape[1]))
    weights = np.zeros((bsz, h, t, t))
    for r in range(bsz):
        idx = np.flatnonzero(mask[r] > 0)
        if not len(idx):
            continue
        xr = x[r, idx]

        def proj(w, bias, xr=xr):
            p = np.einsum("tf,hsf->hts", xr, w)
            return p if bias is None else p + np.asarray(bias).reshape(h, 1, hs)

        q, k, v = proj(wq, bq), proj(wk, bk), proj(wv, bv)
        s = np.einsum("hqs,hks->hqk", q, k)
        if scaled:
            s = s / np.sqrt(hs)
        n = len(idx)
        s = np.where(np.tril(np.ones((n, n), bool))[None], s, -np.inf)
        p = softmax(s, -1)
        ctx = np.einsum("hqk,hks->qhs", p, v).reshape(n, h * hs)
        o = ctx @ wo
        out[r, idx] = o if bo is None else o + bo
        weights[r][np.ix_(range(h), idx, idx)] = p
    return out, weights


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
