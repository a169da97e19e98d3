"""Where an MLM training step's time goes: SameDiff's ProfilingListener over a few steps, aggregated per op.

    python bench/profile_step.py [--steps 3] [--batch 32 --time 128] [--vocab 30522 --width 256 --heads 4
                                 --d-ff 1024 --layers 2] [--head counted|full]

Prints the op count per step, the summed op time vs the step's wall time (the rest is SameDiff's own
per-op bookkeeping, outside any op), and the ops that take the most time.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_models  # noqa: E402

from samediff_py import _jvm, train  # noqa: E402


def main(steps: int = 3, batch: int = 32, time_: int = 128, top: int = 12, **over) -> dict:
    cfg = dict(bench_models.BASE, batch=batch, time=time_, **{k: v for k, v in over.items() if v is not None})
    g, _logits, loss = bench_models.build(cfg)
    trainer = train.Trainer(g, loss, "adam", lr=1e-3)
    rng = np.random.default_rng(0)
    fd = bench_models.make_batch(rng, batch, time_, cfg["vocab"])
    for _ in range(3):
        trainer.step(fd)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(fd)
    plain_ms = (time.perf_counter() - t0) / steps * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        _jvm.bridge().profile(g.sd, str(path))
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step(fd)
        prof_ms = (time.perf_counter() - t0) / steps * 1e3
        _jvm.bridge().profile(g.sd, None)
        text = path.read_text().strip()
    if not text.endswith("]"):
        text = text.rstrip(",") + "]"
    events = json.loads(text)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    per_op: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            kind = (e.get("args") or {}).get("op") or e.get("name")
            per_op[str(kind)].append(float(e["dur"]) / 1e3)
    total = sum(sum(v) for v in per_op.values())
    n_ops = sum(len(v) for v in per_op.values())
    rows = sorted(((k, sum(v) / steps, len(v) / steps) for k, v in per_op.items()), key=lambda r: -r[1])
    res = {
        "step_ms": plain_ms,
        "step_ms_profiled": prof_ms,
        "ops_per_step": n_ops / steps,
        "op_ms_per_step": total / steps,
        "top": [{"op": k, "ms_per_step": ms, "calls_per_step": c} for k, ms, c in rows[:top]],
    }
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--time", type=int, default=128)
    ap.add_argument("--top", type=int, default=12)
    for k in ("vocab", "width", "heads", "d-ff", "layers"):
        ap.add_argument(f"--{k}", type=int, default=None)
    ap.add_argument("--head", choices=["counted", "full"], default=None)
    ap.add_argument("--attn", choices=["fused", "batched"], default=None)
    a = ap.parse_args()
    r = main(a.steps, a.batch, a.time, a.top, vocab=a.vocab, width=a.width, heads=a.heads, d_ff=a.d_ff,
             layers=a.layers, head=a.head, attn=a.attn)  # fmt: skip
    print(
        f"step {r['step_ms']:.0f} ms ({r['step_ms_profiled']:.0f} ms profiled), {r['ops_per_step']:.0f} op "
        f"executions, {r['op_ms_per_step']:.0f} ms inside ops"
    )
    for t in r["top"]:
        print(f"  {t['op']:40s} {t['ms_per_step']:8.1f} ms  x{t['calls_per_step']:.0f}")
