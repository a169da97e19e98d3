"""Real vocabularies, scaling and memory: training-step time and PEAK RSS of the MLM encoder, samediff_py vs
two PyTorch twins, every variant in its own process, the variants taking turns over several rounds.

- ``bert``: the BERT-vocabulary configuration (vocab 30522, width 256, 4 heads, d_ff 1024, 2 blocks, batch 16
  x time 128, 15 % MLM targets, Adam, 1 thread). samediff_py trains through ``Encoder.mlm`` (vocabulary
  projection, loss and accuracy on the counted rows only); ``samediff_py full logits`` projects every position
  (sparse cross-entropy, no one-hot); ``before`` is the loss as it was before issue 10 (log-softmax times a
  dense one-hot over the full logits; the embedding is already a gather). PyTorch: ``full logits``
  (``F.cross_entropy(ignore_index=-1)`` over ``[batch*time, vocab]``) and ``counted rows`` (the counted rows
  of the hidden states gathered before the projection, as samediff_py does).
- ``loss``: the head and loss alone (hidden states in, ``[d, vocab]`` projection, loss, SGD step) at vocab
  30522, 2048 rows, d 256: the cross-entropy formulations, on all rows and on the counted rows.
- ``vocab``: the base configuration (width 128, 1 block, 32 x 128) at vocab 1k / 8k / 30k.
- ``grid``: the base configuration over batch x time.

Each variant runs in a fresh process (``--worker``), so its peak RSS (``ru_maxrss``: the whole process,
JVM or Python + torch included) is its own; each figure is the median step time after warm-up in that
process; rounds give ranges. PyTorch runs under ``SAMEDIFF_PY_TORCH_PYTHON`` or build/bench-venv's Python.

    python bench/bench_vocab.py --what bert [--rounds 3] [--quick] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import steps  # noqa: E402

BERT = {"batch": 16, "time": 128, "width": 256, "heads": 4, "vocab": 30522, "d_ff": 1024, "layers": 2}
BASE = {"batch": 32, "time": 128, "width": 128, "heads": 4, "vocab": 1000, "d_ff": 512, "layers": 1}
QUICK = {"batch": 4, "time": 16, "width": 32, "heads": 4, "vocab": 500, "d_ff": 64, "layers": 1}


def torch_python() -> Path | None:
    import bench_models

    return bench_models.torch_python()


# ------------------------------------------------------------------------------------------- workers
# seconds of warm-up / of measured steps at least, on both sides (common.steps: small steps need the JIT warm)
WARM_S, MIN_S = 3.0, 2.0


def _onehot_loss(logits, labels, ignore: int):
    """The cross-entropy as it was before issue 10: log-softmax times a dense one-hot (bench reference)."""
    from samediff_py import ops
    from samediff_py.masked.counted import counted_positions
    from samediff_py.masked.value import at_least_one

    counted = counted_positions(logits.mask, labels, ignore)
    onehot = ops.one_hot(labels, logits.value.shape[2], logits.dtype)
    nll = ops.negative(ops.sum(ops.multiply(ops.log_softmax(logits.zeroed(), -1), onehot), -1))
    return ops.divide(ops.sum(ops.multiply(nll, counted)), at_least_one(ops.sum(counted)), name="loss")


def _lse_loss(rows_logits, labels, weights):
    """Formulation (b): logsumexp minus the label's logit gathered from the flattened logits, plain ops."""
    from samediff_py import ops
    from samediff_py.masked.value import at_least_one

    z = rows_logits
    mx = ops.max(z, -1, keepdims=True)
    lse = ops.add(ops.reshape(mx, [-1]), ops.log(ops.sum(ops.exp(ops.subtract(z, mx)), -1)))
    nll = ops.subtract(lse, ops.take_along_last_axis(z, labels))
    return ops.divide(ops.sum(ops.multiply(nll, weights)), at_least_one(ops.sum(weights)), name="loss")


def build_encoder(cfg: dict):
    """(graph, full logits Masked, loss) for cfg["head"] in counted / full / before."""
    import bench_models

    from samediff_py import Graph, masked
    from samediff_py.models import Encoder, EncoderConfig

    head = cfg.get("head", "counted")
    if head in ("counted", "full"):
        return bench_models.build(cfg)
    g = Graph(seed=0)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=bench_models.PAD)
    enc = Encoder(g, EncoderConfig(cfg["vocab"], cfg["width"], cfg["heads"], cfg["d_ff"], cfg["layers"], 256))
    logits = enc(tokens, mask)
    if head == "before":
        return g, logits, _onehot_loss(logits, labels, bench_models.IGNORE)
    raise ValueError(f"unknown head {head!r}")


def build_head(cfg: dict):
    """Head + loss alone: Masked hidden [batch, time, d] placeholder -> (graph, loss)."""
    from samediff_py import Graph, masked, ops
    from samediff_py.masked import Masked

    g = Graph(seed=0)
    x = g.placeholder("x", ("batch", "time", cfg["width"]))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask")
    w = g.variable("w", shape=(cfg["width"], cfg["vocab"]))
    b = g.variable("b", np.zeros(cfg["vocab"]))
    h = Masked(x, mask)
    loss_kind, rows_kind = cfg["loss"], cfg["rows"]
    if rows_kind == "counted":
        rows = masked.counted_rows(h, labels, -1).map(lambda r: ops.add(ops.matmul(r, w), b))
        if loss_kind == "sparse_op":
            return g, masked.softmax_cross_entropy(rows, name="loss")
        if loss_kind == "lse_gather":
            return g, _lse_loss(rows.rows, rows.labels, rows.weights)
    else:
        logits = masked.dense(h, w, b)
        if loss_kind == "sparse_op":
            return g, masked.softmax_cross_entropy(logits, labels, name="loss")
        if loss_kind == "onehot":
            return g, _onehot_loss(logits, labels, -1)
    raise ValueError(f"unknown head variant {cfg}")


def sd_worker(cfg: dict, warm: int, repeat: int) -> dict:
    import bench_models

    from samediff_py import train

    rng = np.random.default_rng(0)
    if cfg.get("what") == "head":
        g, loss = build_head(cfg)
        logits = None
        batches = []
        for _ in range(2):
            fd = bench_models.make_batch(rng, cfg["batch"], cfg["time"], cfg["vocab"])
            batches.append(
                {
                    "x": rng.normal(size=(cfg["batch"], cfg["time"], cfg["width"])).astype(np.float32),
                    "labels": fd["labels"],
                    "mask": fd["mask"],
                }
            )
        trainer = train.Trainer(g, loss, "sgd", lr=1e-3)
    else:
        g, logits, loss = build_encoder(cfg)
        batches = [bench_models.make_batch(rng, cfg["batch"], cfg["time"], cfg["vocab"]) for _ in range(2)]
        trainer = train.Trainer(g, loss, "adam", lr=1e-3)
    tt, ti, losses = [], [], []
    for i in steps(warm, repeat, WARM_S, MIN_S):
        fd = batches[i % len(batches)]
        t0 = time.perf_counter()
        losses.append(trainer.step(fd))
        t1 = time.perf_counter()
        if logits is not None and cfg.get("infer", True):
            g.run(fd, logits.value)
        t2 = time.perf_counter()
        if i >= 0:
            tt.append((t1 - t0) * 1e3)
            ti.append((t2 - t1) * 1e3)
    out = {
        "train_ms": statistics.median(tt),
        "train_ms_all": tt,
        "first_loss": losses[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if logits is not None and cfg.get("infer", True):
        out["infer_ms"] = statistics.median(ti)
    return out


# ------------------------------------------------------------------------------------------- driver
def run_one(kind: str, cfg: dict, warm: int, repeat: int, torch_py: Path | None) -> dict:
    """One variant in a fresh process; its result dict (or {"error": ...})."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **cfg.get("env", {})}
    if kind == "sd":
        args = [sys.executable, str(ROOT / "bench/bench_vocab.py"), "--worker", json.dumps([cfg, warm, repeat])]
    else:
        if torch_py is None:
            return {"error": "PyTorch not available"}
        spec = {"configs": [cfg], "warm": warm, "repeat": repeat, "threads": 1, "warm_s": WARM_S, "min_s": MIN_S}
        args = [str(torch_py), str(ROOT / "bench/torch_model.py"), json.dumps(spec)]
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1][:300] if res.stderr.strip() else f"rc {res.returncode}"}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out[0] if isinstance(out, list) else out


def rounds(cases: dict[str, tuple[str, dict]], n_rounds: int, warm: int, repeat: int, log=print) -> dict:
    """{name: {"train_ms": [per-round medians], "infer_ms": [...], "peak_rss_mb": [...], ...}}, the cases
    taking turns within each round."""
    torch_py = torch_python()
    out: dict[str, dict] = {name: {} for name in cases}
    for r in range(n_rounds):
        for name, (kind, cfg) in cases.items():
            res = run_one(kind, cfg, warm, repeat, torch_py)
            if "error" in res:
                out[name]["error"] = res["error"]
                log(f"  round {r + 1} {name}: {res['error']}")
                continue
            for k in ("train_ms", "infer_ms", "peak_rss_mb", "first_loss"):
                if k in res:
                    out[name].setdefault(k, []).append(res[k])
            log(f"  round {r + 1} {name}: {res['train_ms']:.0f} ms, peak RSS {res['peak_rss_mb']:.0f} MB")
    return out


def med(v: list[float]) -> float:
    return statistics.median(v)


def bert(n_rounds: int, quick: bool, log=print) -> dict:
    cfg = dict(QUICK if quick else BERT, infer=False)
    warm, repeat = (1, 2) if quick else (2, 4)
    cases = {
        "samediff_py (counted rows)": ("sd", dict(cfg, head="counted")),
        "samediff_py (counted rows, low-memory mode)": (
            "sd",
            dict(cfg, head="counted", env={"SAMEDIFF_PY_ARRAY_CACHE": "32", "SAMEDIFF_PY_BIG_ARRAY": "1048576"}),
        ),
        "samediff_py (counted rows, M2.1's cache)": (
            "sd",
            dict(cfg, head="counted", env={"SAMEDIFF_PY_ARRAY_CACHE": "-1"}),
        ),
        "samediff_py (full logits)": ("sd", dict(cfg, head="full")),
        "PyTorch (full logits)": ("torch", dict(cfg, head="full")),
        "PyTorch (counted rows)": ("torch", dict(cfg, head="counted")),
    }
    res = {"config": cfg, "cases": rounds(cases, n_rounds, warm, repeat, log)}
    if not quick:  # the loss before issue 10: one round (~10 s and ~10 GB per step)
        res["before"] = rounds({"before": ("sd", dict(cfg, head="before"))}, 1, 1, 2, log)["before"]
    return res


def loss_formulations(n_rounds: int, quick: bool, log=print) -> dict:
    base = QUICK if quick else BERT
    cfg = {"what": "head", "batch": base["batch"], "time": base["time"], "width": base["width"], "vocab": base["vocab"]}
    warm, repeat = (1, 2) if quick else (2, 5)
    cases = {
        "counted rows, sparse op (a)": ("sd", dict(cfg, rows="counted", loss="sparse_op")),
        "counted rows, logsumexp - gathered logit (b)": ("sd", dict(cfg, rows="counted", loss="lse_gather")),
        "all rows, sparse op (a)": ("sd", dict(cfg, rows="all", loss="sparse_op")),
        "all rows, log-softmax x one-hot (before)": ("sd", dict(cfg, rows="all", loss="onehot")),
    }
    return {"config": cfg, "cases": rounds(cases, n_rounds, warm, repeat, log)}


def vocab_sweep(n_rounds: int, quick: bool, log=print) -> dict:
    vocabs = (500,) if quick else (1000, 8000, 30522)
    base = QUICK if quick else BASE
    warm, repeat = (1, 2) if quick else (2, 4)
    rows = []
    for v in vocabs:
        cfg = dict(base, vocab=v)
        cases = {
            "samediff_py": ("sd", dict(cfg, head="counted")),
            "PyTorch full": ("torch", dict(cfg, head="full")),
            "PyTorch counted": ("torch", dict(cfg, head="counted")),
        }
        log(f" vocab {v}")
        rows.append({"vocab": v, "cases": rounds(cases, n_rounds, warm, repeat, log)})
    return {"config": base, "rows": rows}


def grid(n_rounds: int, quick: bool, log=print) -> dict:
    times, batches = ((16, 32), (4,)) if quick else ((32, 64, 128, 256), (8, 32, 128))
    base = QUICK if quick else BASE
    rows = []
    for b in batches:
        for t in times:
            cfg = dict(base, batch=b, time=t)
            big = b * t >= 16384
            warm, repeat = (1, 2) if quick else ((1, 3) if big else (2, 4))
            cases = {
                "samediff_py": ("sd", dict(cfg, head="counted")),
                "PyTorch full": ("torch", dict(cfg, head="full")),
                "PyTorch counted": ("torch", dict(cfg, head="counted")),
            }
            log(f" grid {b} x {t}")
            rows.append({"batch": b, "time": t, "cases": rounds(cases, n_rounds, warm, repeat, log)})
    return {"config": base, "rows": rows}


WHAT = {"bert": bert, "loss": loss_formulations, "vocab": vocab_sweep, "grid": grid}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--what", choices=sorted(WHAT), default="bert")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    if a.worker:
        cfg, warm, repeat = json.loads(a.worker)
        print(json.dumps(sd_worker(cfg, warm, repeat)))
        sys.exit(0)
    n = a.rounds or (1 if a.quick else 3)
    result = WHAT[a.what](n, a.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = json.dumps(result, indent=1)
    if a.json:
        Path(a.json).write_text(text)
    print(text)
