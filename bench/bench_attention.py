"""Fused DL4J attention vs the unfused chain of plain ops, inside one encoder block, forward + backward.

One post-norm encoder block (:class:`samediff_py.models.Block`: attention, layer norm, ReLU feed-forward of
width ``4 * width``, layer norm) on a Masked ``[batch, time, width]`` float32 placeholder, right-padded with
random lengths in ``[time / 2, time]``; the loss is ``sum(mean_pool(block(x)))``. Two graphs with identical
parameters (same seed) differ only in the attention:

- **fused**: ``masked.multi_head_attention`` (libnd4j's ``multi_head_dot_product_attention`` op);
- **unfused**: ``masked.multi_head_attention_unfused`` (per-head matmuls, masked softmax, concat: plain ops).

Timed: ``graph.gradients(feeds, loss)`` (the forward pass plus gradients of every trainable variable, copied
to numpy), and the forward pass alone (``graph.run``). Median over ``repeat`` round-robin runs after
``warmup`` runs. Printed: both times and the ratio unfused / fused (> 1: the fused op is faster). Also the
largest difference of loss and gradients between the two graphs, as a check that they compute the same thing.

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
from samediff_py.models import Block, EncoderConfig, correct_attention  # noqa: E402

FULL = {"batch": 32, "time": 128, "width": 128, "heads": 4, "repeat": 7, "warmup": 2}
QUICK = {"batch": 8, "time": 32, "width": 32, "heads": 4, "repeat": 3, "warmup": 1}


def unfused_attention(x: Masked, p: masked.AttentionParams) -> Masked:
    return masked.multi_head_attention_unfused(x, p)


def build(attend, batch: int, time: int, width: int, heads: int, seed: int = 0):
    """One block on a masked placeholder; returns (graph, loss). Same seed -> same parameters."""
    del batch  # dynamic
    g = Graph(seed=seed)
    x = g.placeholder("x", ("batch", "time", width))
    m = masked.mask_placeholder(g, "mask")
    cfg = EncoderConfig(vocab=2, d_model=width, heads=heads, d_ff=4 * width, layers=1, max_len=time)
    block = Block.create(g, "block", cfg)
    h = block(Masked(x, m), attend=attend)
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
    """Median seconds per case, cases run round-robin so load changes hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(warmup + repeat):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(quick: bool = False) -> dict:
    cfg = dict(QUICK if quick else FULL)
    b, t, w, h = cfg["batch"], cfg["time"], cfg["width"], cfg["heads"]
    fd = feeds(b, t, w)
    graphs = {"fused": build(correct_attention, b, t, w, h), "unfused": build(unfused_attention, b, t, w, h)}

    # same parameters, same function: check before timing
    (gf, lf), (gu, lu) = graphs["fused"], graphs["unfused"]
    loss_f, loss_u = float(gf.run(fd, lf)), float(gu.run(fd, lu))
    grads_f, grads_u = gf.gradients(fd, lf), gu.gradients(fd, lu)
    grad_diff = max(float(np.abs(grads_f[k] - grads_u[k]).max()) for k in grads_f)
    grad_scale = max(float(np.abs(v).max()) for v in grads_f.values())

    cases = {}
    for kind, (g, loss) in graphs.items():
        cases[f"{kind} fwd+bwd"] = lambda g=g, loss=loss: g.gradients(fd, loss)
        cases[f"{kind} fwd"] = lambda g=g, loss=loss: g.run(fd, loss)
    med = _medians(cases, cfg["repeat"], cfg["warmup"])
    result = {
        **cfg,
        "d_ff": 4 * w,
        "params": sum(v.size for v in grads_f.values()),
        "fused_fwd_bwd_s": med["fused fwd+bwd"],
        "unfused_fwd_bwd_s": med["unfused fwd+bwd"],
        "ratio_fwd_bwd": med["unfused fwd+bwd"] / med["fused fwd+bwd"],
        "fused_fwd_s": med["fused fwd"],
        "unfused_fwd_s": med["unfused fwd"],
        "ratio_fwd": med["unfused fwd"] / med["fused fwd"],
        "loss_abs_diff": abs(loss_f - loss_u),
        "grad_max_abs_diff": grad_diff,
        "grad_max_abs": grad_scale,
    }
    return result


def report(r: dict) -> str:
    return "\n".join(
        [
            f"one encoder block, batch {r['batch']}, time {r['time']}, width {r['width']}, {r['heads']} heads, "
            f"d_ff {r['d_ff']}, {r['params']} parameters; median of {r['repeat']} after {r['warmup']} warm-up",
            "| attention | fwd+bwd (ms) | fwd (ms) |",
            "|-----------|-------------:|---------:|",
            f"| fused     | {r['fused_fwd_bwd_s'] * 1e3:12.1f} | {r['fused_fwd_s'] * 1e3:8.1f} |",
            f"| unfused   | {r['unfused_fwd_bwd_s'] * 1e3:12.1f} | {r['unfused_fwd_s'] * 1e3:8.1f} |",
            f"ratio unfused/fused: fwd+bwd {r['ratio_fwd_bwd']:.2f}x, fwd {r['ratio_fwd']:.2f}x",
            f"agreement: |loss diff| {r['loss_abs_diff']:.2e}, max |grad diff| {r['grad_max_abs_diff']:.2e} "
            f"(max |grad| {r['grad_max_abs']:.2e})",
        ]
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    print(report(main(ap.parse_args().quick)))
