"""Masked LSTM and masked 1-d convolution stack: a training step in samediff_py vs PyTorch (CPU, same threads).

One run, interleaved rounds: in each round samediff_py and PyTorch (a worker process kept alive for the whole
run, bench/torch_recurrent.py) take turns, ``steps`` timed training steps each, for each case; the figures are
medians over all rounds and the ratio is samediff_py / PyTorch (> 1: PyTorch is faster). Both sides train the
same architecture on the same right-padded batch (lengths uniform in ``[time / 2, time]``), Adam, float32:

- **lstm**: ``masked.lstm`` (libnd4j ``lstmLayer``, padding kept out by saturated gates) vs ``nn.LSTM`` over
  ``pack_padded_sequence``; masked mean over time, a linear head, mean squared error;
- **lstm_lengths**: the same with ``method="lengths"`` (the op's own sequence-length input), timed against the same
  PyTorch LSTM;
- **conv**: three ``masked.conv1d`` (kernel 3, 'same', ReLU; DL4J's ``conv1d`` between the mask zeroings) vs
  three ``nn.Conv1d`` on ``x * mask``; masked mean over time, a linear head, mean squared error;
- **conv_wide** (full size only): the same at width ``wide`` (256): 4x the arithmetic per step and 2x the
  elementwise work, with the same number of op executions, so the ratio shows how much of the gap is a fixed
  cost per op.

A samediff_py step is ``Trainer.step`` (feeds checked, forward, gradients, finiteness check, Adam update).

    python bench/bench_recurrent.py [--quick] [--size full|small] [--no-torch] [--json FILE]

Sizes: full = batch 32, time 128, width 128 (256 for conv_wide), LSTM hidden 128; small = batch 16, time 64,
width 64, hidden 128.

PyTorch: build/bench-venv/bin/python, else /work/main/build/hf-venv/bin/python, or $SAMEDIFF_PY_TORCH_PYTHON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import steps  # noqa: E402

from samediff_py import Graph, masked, ops, train  # noqa: E402
from samediff_py.masked import Masked  # noqa: E402

# warm-up: at least "warmup" steps and "warm_s" seconds per case (common.steps)
FULL = {"batch": 32, "time": 128, "width": 128, "wide": 256, "hidden": 128, "out": 8, "rounds": 4, "steps": 3,
        "warmup": 2, "warm_s": 3.0}  # fmt: skip
SMALL = {"batch": 16, "time": 64, "width": 64, "hidden": 128, "out": 8, "rounds": 5, "steps": 5, "warmup": 3}
QUICK = {"batch": 4, "time": 16, "width": 8, "hidden": 8, "out": 2, "rounds": 2, "steps": 2, "warmup": 1}


def torch_python() -> Path | None:
    for p in (os.environ.get("SAMEDIFF_PY_TORCH_PYTHON"), ROOT / "build/bench-venv/bin/python",
              Path("/work/main/build/hf-venv/bin/python")):  # fmt: skip
        if p and Path(p).exists():
            return Path(p)
    return None


def threads() -> int:
    return int(os.environ.get("SAMEDIFF_PY_THREADS") or os.environ.get("OMP_NUM_THREADS") or 1)


def batch(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, t = cfg["batch"], cfg["time"]
    lengths = rng.integers(t // 2, t + 1, b)
    lengths[0] = t
    mask = masked.mask_from_lengths(lengths, t)
    x = rng.normal(size=(b, t, cfg["width"])).astype(np.float32)
    x[mask == 0] = 0.0  # PyTorch's conv twin multiplies by the mask: keep the filler finite for it
    out = {"x": x, "mask": mask, "y": rng.normal(size=(b, cfg["out"])).astype(np.float32)}
    if "wide" in cfg:
        out["x_wide"] = rng.normal(size=(b, t, cfg["wide"])).astype(np.float32)
        out["x_wide"][mask == 0] = 0.0
    return out


def case_feeds(case: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds of one case: conv_wide reads the wide input as its x."""
    x = feeds["x_wide"] if case == "conv_wide" else feeds["x"]
    return {"x": x, "mask": feeds["mask"], "y": feeds["y"]}


def build(case: str, cfg: dict) -> tuple[Graph, train.Trainer]:
    g = Graph(seed=0)
    width = cfg["wide"] if case == "conv_wide" else cfg["width"]
    x = g.placeholder("x", ("batch", "time", width))
    y = g.placeholder("y", ("batch", cfg["out"]))
    m = masked.mask_placeholder(g, "mask")
    h = Masked(x, m)
    if case.startswith("lstm"):
        method = "lengths" if case == "lstm_lengths" else "gates"
        h = masked.lstm(h, masked.LSTMParams.create(g, "lstm", cfg["width"], cfg["hidden"]), method=method).outputs
        width = cfg["hidden"]
    else:
        for i in range(3):
            w = g.variable(f"conv{i}/w", shape=(3, width, width))
            b = g.variable(f"conv{i}/b", np.zeros(width))
            h = masked.conv1d(h, w, b, activation=ops.relu)
    pooled = masked.mean_pool(h)
    pred = ops.add(ops.matmul(pooled, g.variable("head/w", shape=(width, cfg["out"]))),
                   g.variable("head/b", np.zeros(cfg["out"])))  # fmt: skip
    loss = ops.mean(ops.square(ops.subtract(pred, y)), name="loss")
    return g, train.Trainer(g, loss, "adam", lr=1e-3)


class TorchWorker:
    def __init__(self, python: Path, cfg: dict, data: Path):
        arg = json.dumps({**cfg, "data": str(data), "threads": threads()})
        env = dict(os.environ, OMP_NUM_THREADS=str(threads()), MKL_NUM_THREADS=str(threads()))
        self.p = subprocess.Popen([str(python), str(ROOT / "bench/torch_recurrent.py"), arg], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        self.info = json.loads(self.p.stdout.readline())

    def steps(self, case: str, n: int) -> list[float]:
        self.p.stdin.write(f"{case} {n}\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait(timeout=60)


def main(quick: bool = False, torch: bool = True, size: str = "full") -> dict:
    cfg = dict(QUICK if quick else SMALL if size == "small" else FULL)
    feeds = batch(cfg)
    cases = ("lstm", "lstm_lengths", "conv") + (("conv_wide",) if "wide" in cfg else ())
    # the PyTorch model each case is timed against
    twin = {"lstm": "lstm", "lstm_lengths": "lstm", "conv": "conv", "conv_wide": "conv_wide"}
    fed = {c: case_feeds(c, feeds) for c in cases}
    sd = {c: build(c, cfg) for c in cases}
    tpy = torch_python() if torch else None
    times: dict[str, dict[str, list[float]]] = {c: {"samediff_py": [], "pytorch": []} for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "batch.npz"
        np.savez(data, **feeds)
        worker = TorchWorker(tpy, cfg, data) if tpy else None
        try:
            for c in cases:  # warm-up: gradient functions, first-shape work, the JIT, PyTorch's allocator
                n = 0
                for _ in steps(cfg["warmup"], 0, cfg.get("warm_s", 0.0)):
                    sd[c][1].step(fed[c])
                    n += 1
                if worker:
                    worker.steps(twin[c], n)
            for _ in range(cfg["rounds"]):
                for c in cases:
                    trainer = sd[c][1]
                    for _ in range(cfg["steps"]):
                        t0 = time.perf_counter()
                        trainer.step(fed[c])
                        times[c]["samediff_py"].append((time.perf_counter() - t0) * 1e3)
                    if worker:
                        times[c]["pytorch"] += worker.steps(twin[c], cfg["steps"])
        finally:
            if worker:
                worker.close()
    res: dict = {"config": cfg, "threads": threads(), "torch": worker.info if worker else None}
    for c in cases:
        r = {who: statistics.median(ts) for who, ts in times[c].items() if ts}
        if "pytorch" in r:
            r["ratio"] = r["samediff_py"] / r["pytorch"]
        res[c] = r
    return res


def report(res: dict) -> str:
    cfg = res["config"]
    lines = [
        f"batch {cfg['batch']}, time {cfg['time']} (right-padded, lengths in [time/2, time]), width {cfg['width']}"
        + (f" ({cfg['wide']} for the wide conv)" if "wide" in cfg else "")
        + ", "
        f"LSTM hidden {cfg['hidden']}; {res['threads']} thread(s); {cfg['rounds']} interleaved rounds x "
        f"{cfg['steps']} steps; median ms per training step (forward, backward, Adam)",
        "",
        "| case | samediff_py | PyTorch | ratio |",
        "|---|---:|---:|---:|",
    ]
    for c, what in (("lstm", "masked LSTM (lstmLayer, method='gates', the default) vs nn.LSTM + packed sequence"),
                    ("lstm_lengths", "masked LSTM (lstmLayer, method='lengths': its sequence lengths) vs the same"),
                    ("conv", "masked conv1d x3 vs nn.Conv1d x3 (x * mask)"),
                    ("conv_wide", f"the same at width {cfg.get('wide')}")):  # fmt: skip
        if c not in res:
            continue
        r = res[c]
        pt = f"{r['pytorch']:.1f}" if "pytorch" in r else "not run"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(f"| {what} | {r['samediff_py']:.1f} | {pt} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--size", choices=["full", "small"], default="full", help="small: batch 16, time 64, width 64")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    out = main(a.quick, torch=not a.no_torch, size=a.size)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    print(report(out))
