"""The PyTorch twin of bench_models.py's MLM encoder (same architecture, sizes and optimiser), CPU only.

Run by the benchmark venv's Python (PyTorch is not a dependency of samediff_py):

    build/bench-venv/bin/python bench/torch_model.py '{"configs": [...], "warm": 2, "repeat": 5, "threads": 1}'

Prints one JSON line: per config, median ms of a training step (forward, masked cross-entropy, backward,
Adam) and of an inference step (logits, no grad), and the process's peak RSS. ``cfg["head"]``: ``"full"``
(default: cross-entropy over the full logits) or ``"counted"`` (the counted positions' rows are gathered
before the vocabulary projection, like samediff_py's ``Encoder.mlm``).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import numpy as np
import torch
from common import steps
from torch import nn
from torch.nn import functional as F

PAD, MASK, IGNORE = 0, 1, -1


class Block(nn.Module):
    """Post-norm: x = ln(x + attn(x)); x = ln(x + ff(x)); padded queries zeroed like samediff_py."""

    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, bias=False, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x, mask):
        a, _ = self.attn(x, x, x, key_padding_mask=mask == 0, need_weights=False)
        x = self.ln1(x + a * mask[..., None])
        return self.ln2(x + self.ff2(F.relu(self.ff1(x))))


class Encoder(nn.Module):
    def __init__(self, vocab: int, d: int, heads: int, d_ff: int, layers: int, max_len: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.5)
        self.blocks = nn.ModuleList(Block(d, heads, d_ff) for _ in range(layers))
        self.out = nn.Linear(d, vocab)

    def hidden(self, tokens, mask):
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for b in self.blocks:
            x = b(x, mask)
        return x

    def forward(self, tokens, mask):
        return self.out(self.hidden(tokens, mask))


def train_loss(m: Encoder, tokens, labels, mask, head: str):
    """Masked cross-entropy over the counted positions: ``full`` projects every position onto the vocabulary
    (what a plain ``F.cross_entropy(ignore_index=...)`` model does); ``counted`` gathers the counted rows of
    the hidden states first (the same head as samediff_py's ``Encoder.mlm``)."""
    if head == "full":
        logits = m(tokens, mask)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    h = m.hidden(tokens, mask)
    flat_labels = labels.reshape(-1)
    idx = torch.nonzero((flat_labels != IGNORE) & (mask.reshape(-1) > 0)).squeeze(1)
    rows = h.reshape(-1, h.shape[-1]).index_select(0, idx)
    return F.cross_entropy(m.out(rows), flat_labels.index_select(0, idx))


def batch(rng, b: int, t: int, vocab: int):
    clean = rng.integers(2, vocab, (b, t))
    chosen = rng.random((b, t)) < 0.15
    chosen[:, 0] = True
    tokens = torch.from_numpy(np.where(chosen, MASK, clean).astype(np.int64))
    labels = torch.from_numpy(np.where(chosen, clean, IGNORE).astype(np.int64))
    return tokens, labels, torch.ones(b, t)


def measure(cfg: dict, warm: int, repeat: int, warm_s: float = 0.0, min_s: float = 0.0) -> dict:
    torch.manual_seed(0)
    m = Encoder(cfg["vocab"], cfg["width"], cfg["heads"], cfg["d_ff"], cfg["layers"], max(cfg["time"], 256))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    data = [batch(rng, cfg["batch"], cfg["time"], cfg["vocab"]) for _ in range(4)]
    tt, ti = [], []
    for i in steps(warm, repeat, warm_s, min_s):
        tokens, labels, mask = data[i % len(data)]
        t0 = time.perf_counter()
        m.train()
        opt.zero_grad(set_to_none=True)
        loss = train_loss(m, tokens, labels, mask, cfg.get("head", "full"))
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        m.eval()
        with torch.inference_mode():
            m(tokens, mask)
        t2 = time.perf_counter()
        if i >= 0:
            tt.append(t1 - t0)
            ti.append(t2 - t1)
    return {
        "train_ms": statistics.median(tt) * 1e3,
        "infer_ms": statistics.median(ti) * 1e3,
        "train_ms_all": [t * 1e3 for t in tt],
        # peak resident memory of this process so far (the whole process: run one config per process to
        # attribute it to one config)
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    arg = json.loads(sys.argv[1])
    torch.set_num_threads(int(arg["threads"]))
    timing = (arg["warm"], arg["repeat"], arg.get("warm_s", 0.0), arg.get("min_s", 0.0))
    out = [measure(c, *timing) for c in arg["configs"]]
    meta = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for o in out:
        o.update(meta)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
