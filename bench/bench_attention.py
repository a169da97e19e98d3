"""Attention inside one encoder block, forward + backward: DL4J's fused op vs batched heads vs per-head plain ops.

One post-norm encoder block (:class:`samediff_py.models.Block`: attention, layer norm, ReLU feed-forward of
width ``4 * width``, layer norm) on a Masked ``[batch, time, width]`` float32 placeholder, right-padded with
random lengths in ``[time / 2, time]``; the loss is ``sum(mean_pool(block(x)))``. Three graphs with identical
parameters (same seed) differ only in the attention:

- **fused**: ``masked.multi_head_attention(impl="fused")`` (libnd4j's ``multi_head_dot_product_attention``);
- **batched**: ``masked.multi_head_attention(impl="batched")`` (one projection per Q/K/V, heads as a batch
  axis, batched matmuls);
- **unfused**: ``masked.multi_head_attention_unfused`` (per-head matmuls, masked softmax, concat: plain ops).

Timed at each width: ``graph.gradients(feeds, loss)`` (the forward pass plus gradients of every trainable
variable, copied to numpy), and the forward pass alone (``graph.run``). Median over ``repeat`` round-robin
runs after ``warmup`` runs. Also the largest gradient difference to the fused graph (same function).

    python bench/bench_attention.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samediff_py import Graph, masked, ops  # noqa: E402
from samediff_py.masked import Masked  # noqa: E402
from samediff_py.models import Block, EncoderConfig  # noqa: E402

FULL = {"batch": 32, "time": 128, "widths": (128, 256), "heads": 4, "repeat": 9, "warmup": 2}
QUICK = {"batch": 8, "time": 32, "widths": (32,), "heads": 4, "repeat": 3, "warmup": 1}
KINDS = ("fused", "batched", "unfused")


def attend(kind: str):
    if kind == "unfused":
        return lambda x, p: masked.multi_head_attention_unfused(x, p)
    return lambda x, p: masked.multi_head_attention(x, p, impl=kind)


def build(attend_fn, batch: int, time: int, width: int, heads: int, seed: int = 0):
    """One block on a masked placeholder; returns (graph, loss). Same seed -> same parameters."""
    del batch  # dynamic
    g = Graph(seed=seed)
    x = g.placeholder("x", ("batch", "time", width))
    m = masked.mask_placeholder(g, "mask")
    cfg = EncoderConfig(vocab=2, d_model=width, heads=heads, d_ff=4 * width, layers=1, max_len=time)
    block = Block.create(g, "block", cfg)
    h = block(Masked(x, m), attend=attend_fn)
    return g, ops.sum(masked.mean_pool(h))


def feeds(batch: int, time: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(time // 2, time + 1, batch)
    lengths[0] = time  # at least one full row
    return {
        "x": rng.normal(size=(batch, time, width)).astype(np.float32),
        "mask": masked.mask_from_lengths(lengths, time),
    }


def _medians(cases: dict, repeat: int, warmup: int) -> dict[str, float]:
    """Median (and, as ``<case> min``, minimum) seconds per case, cases run round-robin so load changes hit
    all alike; on a shared machine the minimum is the least disturbed figure."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(warmup + repeat):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update({f"{k} min": min(v) for k, v in times.items()})
    return out


def one_width(cfg: dict, w: int) -> dict:
    b, t, h = cfg["batch"], cfg["time"], cfg["heads"]
    fd = feeds(b, t, w)
    graphs = {k: build(attend(k), b, t, w, h) for k in KINDS}
    # same parameters, same function: check before timing
    ref_g, ref_l = graphs["fused"]
    ref_loss, ref_grads = float(ref_g.run(fd, ref_l)), ref_g.gradients(fd, ref_l)
    scale = max(float(np.abs(v).max()) for v in ref_grads.values())
    row: dict = {"width": w, "d_ff": 4 * w, "grad_max_abs": scale}
    for k in ("batched", "unfused"):
        g, loss = graphs[k]
        grads = g.gradients(fd, loss)
        row[f"{k}_loss_abs_diff"] = abs(float(g.run(fd, loss)) - ref_loss)
        row[f"{k}_grad_max_abs_diff"] = max(float(np.abs(grads[n] - ref_grads[n]).max()) for n in ref_grads)
    cases = {}
    for kind, (g, loss) in graphs.items():
        cases[f"{kind} fwd+bwd"] = lambda g=g, loss=loss: g.gradients(fd, loss)
        cases[f"{kind} fwd"] = lambda g=g, loss=loss: g.run(fd, loss)
    med = _medians(cases, cfg["repeat"], cfg["warmup"])
    for kind in KINDS:
        row[f"{kind}_fwd_bwd_s"] = med[f"{kind} fwd+bwd"]
        row[f"{kind}_fwd_s"] = med[f"{kind} fwd"]
        row[f"{kind}_fwd_bwd_min_s"] = med[f"{kind} fwd+bwd min"]
        row[f"{kind}_fwd_min_s"] = med[f"{kind} fwd min"]
    return row


def main(quick: bool = False) -> dict:
    cfg = dict(QUICK if quick else FULL)
    return {**cfg, "rows": [one_width(cfg, w) for w in cfg["widths"]]}


def report(r: dict) -> str:
    lines = [
        f"one encoder block, batch {r['batch']}, time {r['time']}, {r['heads']} heads, d_ff 4 x width; median of "
        f"{r['repeat']} after {r['warmup']} warm-up, the variants taking turns",
        "| width | attention | fwd+bwd ms (median / min) | fwd ms (median / min) | max abs grad diff vs fused |",
        "|------:|-----------|--------------------------:|----------------------:|---------------------------:|",
    ]
    for row in r["rows"]:
        for k in KINDS:
            diff = "" if k == "fused" else f"{row[k + '_grad_max_abs_diff']:.1e} (max grad {row['grad_max_abs']:.1e})"
            fb = f"{row[k + '_fwd_bwd_s'] * 1e3:.1f} / {row[k + '_fwd_bwd_min_s'] * 1e3:.1f}"
            fw = f"{row[k + '_fwd_s'] * 1e3:.1f} / {row[k + '_fwd_min_s'] * 1e3:.1f}"
            lines.append(f"| {row['width']} | {k} | {fb} | {fw} | {diff} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    print(report(main(ap.parse_args().quick)))
