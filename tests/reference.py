"""Independent numpy references for the masked ops (written from the definitions, not from our code)."""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(q, kv, mask_q, mask_k, wq, wk, wv, wo, scaled=True):
    """Multi-head attention in samediff_py's layout. q [B,Tq,F], kv [B,Tk,F], masks [B,T] (1 = valid),
    wq/wk/wv [H,hs,F], wo [H*hs,O]. Returns (out [B,Tq,O], weights [B,H,Tq,Tk]) with padded keys excluded,
    padded queries (and queries with no valid key) zeroed."""
    qh = np.einsum("btf,hsf->bhts", q, wq)  # [B,H,Tq,hs]
    kh = np.einsum("btf,hsf->bhts", kv, wk)
    vh = np.einsum("btf,hsf->bhts", kv, wv)
    scores = np.einsum("bhqs,bhks->bhqk", qh, kh)
    if scaled:
        scores = scores / np.sqrt(wq.shape[1])
    valid_k = mask_k[:, None, None, :] > 0
    scores = np.where(valid_k, scores, -np.inf)
    has_key = valid_k.any(-1, keepdims=True)
    scores = np.where(has_key, scores, 0.0)
    w = softmax(scores, -1) * has_key
    ctx = np.einsum("bhqk,bhks->bhqs", w, vh)  # [B,H,Tq,hs]
    b, h, tq, hs = ctx.shape
    concat = ctx.transpose(0, 2, 1, 3).reshape(b, tq, h * hs)
    keep_q = (mask_q > 0)[:, :, None] & has_key[:, 0, :, :].any(-1, keepdims=True).transpose(0, 1, 2)
    out = concat @ wo * keep_q
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
