"""BERT inference: samediff_py (a checkpoint loaded with samediff_py.bert) vs transformers on the CPU, 1 thread each.

One random BertForMaskedLM checkpoint (written by ``samediff_py.bert.from_config(...).save_pretrained``; default
width 256, 4 layers, 4 heads, intermediate 1024, BERT's vocabulary 30522, 512 positions) is loaded by both.
Batch 16 x 128 tokens, every position valid (tokens/s counts every token). Timed, after a warm-up:

- ``encoder``: the last hidden state ``[batch, time, width]`` as a numpy array (transformers: ``model.bert(...)``);
- ``mlm_logits``: the MLM logits ``[batch, time, vocab]`` as a numpy array (transformers: ``model(...).logits``,
  whose ``.numpy()`` is free; samediff_py's include copying 250 MB out of the JVM).

transformers runs in a fresh process each round (``SAMEDIFF_PY_HF_PYTHON``, else build/hf-venv or
build/bench-venv, whichever has torch + transformers), with its default attention (``sdpa``) and with
``eager``, ``torch.set_num_threads(1)``; samediff_py in this process with nd4j's 1 thread (the default).
Rounds alternate (samediff_py, then transformers), so load changes on a shared machine hit both; the
figures are medians over all timed runs, the ratio is samediff_py time / transformers time (lower is better).
CPU time (``time.process_time``: every thread of each process, the JVM's included) is reported too: on a
shared, oversubscribed machine it shows the work done, where wall time also shows how long each process
waited for a core.
The first round also checks that both compute the same logits.

    python bench/bench_bert.py [--quick] [--rounds 5] [--reps 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
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
FULL = dict(hidden=256, layers=4, heads=4, intermediate=1024, vocab=30522, batch=16, time=128, rounds=5, reps=3)
QUICK = dict(hidden=64, layers=2, heads=4, intermediate=128, vocab=1000, batch=4, time=32, rounds=2, reps=2)


def hf_python() -> str | None:
    for py in (os.environ.get("SAMEDIFF_PY_HF_PYTHON"), ROOT / "build/hf-venv/bin/python",
               ROOT / "build/bench-venv/bin/python"):  # fmt: skip
        if py and Path(py).exists():
            if subprocess.run([str(py), "-c", "import torch, transformers"], capture_output=True).returncode == 0:
                return str(py)
    return None


# ------------------------------------------------------------------------------------------- transformers side
def hf_worker(folder: str, inputs: str, reps: int, out: str, check: bool) -> None:
    """Run by the transformers Python: load, warm up, time ``reps`` runs of each output per attention kind."""
    import torch
    import transformers

    torch.set_num_threads(1)
    z = np.load(inputs)
    kw = {k: torch.from_numpy(z[k].astype(np.int64)) for k in ("input_ids", "attention_mask", "token_type_ids")}
    res: dict = {"versions": f"torch {torch.__version__}, transformers {transformers.__version__}"}
    for attn in ("sdpa", "eager"):
        model = transformers.BertForMaskedLM.from_pretrained(folder, attn_implementation=attn).float().eval()
        with torch.inference_mode():
            fns = {
                "encoder": lambda m=model: m.bert(**kw).last_hidden_state.numpy(),
                "mlm_logits": lambda m=model: m(**kw).logits.numpy(),
            }
            for name, fn in fns.items():
                fn()  # warm-up
                ts, cs = [], []
                for _ in range(reps):
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    ts.append(time.perf_counter() - t0)
                    cs.append(time.process_time() - c0)
                res[f"{attn}/{name}"] = ts
                res[f"cpu:{attn}/{name}"] = cs
            if check and attn == "sdpa":
                np.save(out + ".logits.npy", model(**kw).logits[:2].numpy())
    Path(out).write_text(json.dumps(res))


def run_hf(py: str, folder: Path, inputs: Path, reps: int, tmp: Path, check: bool) -> dict:
    out = tmp / "hf.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    args = [py, __file__, "--hf-worker", str(folder), str(inputs), str(reps), str(out)] + (["--check"] if check else [])
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"transformers worker failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------- benchmark
def main(quick: bool = False, **over) -> dict:
    sys.path.insert(0, str(ROOT))
    from samediff_py import bert, masked

    p = {**(QUICK if quick else FULL), **{k: v for k, v in over.items() if v is not None}}
    py = hf_python()
    cfg = bert.BertConfig(vocab_size=p["vocab"], hidden_size=p["hidden"], num_hidden_layers=p["layers"],
                          num_attention_heads=p["heads"], intermediate_size=p["intermediate"])  # fmt: skip
    rng = np.random.default_rng(0)
    b, t = p["batch"], p["time"]
    inputs = {
        "input_ids": rng.integers(1, p["vocab"], (b, t)).astype(np.int64),
        "attention_mask": np.ones((b, t), np.int64),
        "token_type_ids": (np.arange(t)[None] >= t // 2).repeat(b, 0).astype(np.int64),
    }
    res: dict = {"params": p, "hf_python": py, "load": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        bert.from_config(cfg, seed=0, labels=False).save_pretrained(tmp / "ckpt")
        np.savez(tmp / "inputs.npz", **inputs)
        t0 = time.perf_counter()
        model = bert.from_pretrained(tmp / "ckpt", labels=False)  # masked.multi_head_attention's default
        res["load_build_s"] = time.perf_counter() - t0
        fused_attention = functools.partial(masked.multi_head_attention, impl="fused")
        fused = bert.from_pretrained(tmp / "ckpt", labels=False, attention=fused_attention)
        feeds = model.feeds(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
        o = model.outputs
        ours = {
            ("batched", "encoder"): (model, o.sequence_output.value),
            ("batched", "mlm_logits"): (model, o.logits.value),
            ("fused", "encoder"): (fused, fused.outputs.sequence_output.value),
            ("fused", "mlm_logits"): (fused, fused.outputs.logits.value),
        }
        times: dict[tuple[str, str], list[float]] = {k: [] for k in ours}
        cpu: dict[tuple[str, str], list[float]] = {k: [] for k in ours}
        hf: dict[str, list[float]] = {}
        for rnd in range(p["rounds"]):
            for key, (m, out) in ours.items():
                if rnd == 0:
                    m.graph.run(feeds, out)  # warm-up
                for _ in range(p["reps"]):
                    t1, c1 = time.perf_counter(), time.process_time()
                    r = m.graph.run(feeds, out)
                    times[key].append(time.perf_counter() - t1)
                    cpu[key].append(time.process_time() - c1)  # every thread of the process (JVM's included)
                    del r
            if py is not None:
                h = run_hf(py, tmp / "ckpt", tmp / "inputs.npz", p["reps"], tmp, check=rnd == 0)
                res["hf_versions"] = h.pop("versions")
                for k, v in h.items():
                    hf.setdefault(k, []).extend(v)
                if rnd == 0:
                    theirs = np.load(tmp / "hf.json.logits.npy")
                    for variant, m in (("batched", model), ("fused", fused)):
                        mine = m.graph.run(feeds, m.outputs.logits.value)[:2]
                        res[f"max_abs_logit_diff_{variant}"] = float(np.abs(theirs - mine).max())
            print(f"round {rnd + 1}/{p['rounds']} done", file=sys.stderr, flush=True)
    res["load"].extend(os.getloadavg())
    tokens = b * t
    rows = {}
    for (variant, name), ts in times.items():
        ours_s, ours_c = statistics.median(ts), statistics.median(cpu[(variant, name)])
        row = {"samediff_py_ms": 1e3 * ours_s, "samediff_py_tok_s": tokens / ours_s, "samediff_py_cpu_ms": 1e3 * ours_c}
        for attn in ("sdpa", "eager"):
            if f"{attn}/{name}" in hf:
                m = statistics.median(hf[f"{attn}/{name}"])
                c = statistics.median(hf[f"cpu:{attn}/{name}"])
                row[f"hf_{attn}_ms"] = 1e3 * m
                row[f"hf_{attn}_tok_s"] = tokens / m
                row[f"ratio_vs_{attn}"] = ours_s / m
                row[f"hf_{attn}_cpu_ms"] = 1e3 * c
                row[f"cpu_ratio_vs_{attn}"] = ours_c / c
        rows[f"{name} ({variant})"] = row
    res["rows"] = rows
    return res


def report(res: dict) -> str:
    p = res["params"]
    lines = [
        f"BERT inference, width {p['hidden']}, {p['layers']} layers, {p['heads']} heads, intermediate "
        f"{p['intermediate']}, vocab {p['vocab']}, batch {p['batch']} x {p['time']}, 1 thread each; "
        f"{p['rounds']} rounds x {p['reps']} runs, medians; load {', '.join(f'{x:.1f}' for x in res['load'])}",
        f"transformers: {res.get('hf_versions', 'not available')}; max |logit difference| "
        f"{res.get('max_abs_logit_diff_fused', float('nan')):.1e} (fused), "
        f"{res.get('max_abs_logit_diff_batched', float('nan')):.1e} (batched)",
        "batched: masked.multi_head_attention's default (heads as a batch axis, batched matmuls); "
        "fused: impl='fused' (DL4J's multiHeadDotProductAttention)",
        "",
        "| output | samediff_py ms | tokens/s | transformers sdpa ms | tokens/s | ratio | eager ms | ratio |"
        " CPU ms: samediff_py / sdpa / eager | CPU ratio vs sdpa / eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan = float("nan")
    for name, r in res["rows"].items():
        g = r.get
        lines.append(
            f"| {name} | {r['samediff_py_ms']:.0f} | {r['samediff_py_tok_s']:.0f} | {g('hf_sdpa_ms', nan):.0f}"
            f" | {g('hf_sdpa_tok_s', nan):.0f} | {g('ratio_vs_sdpa', nan):.2f}x | {g('hf_eager_ms', nan):.0f}"
            f" | {g('ratio_vs_eager', nan):.2f}x | {r['samediff_py_cpu_ms']:.0f} / {g('hf_sdpa_cpu_ms', nan):.0f}"
            f" / {g('hf_eager_cpu_ms', nan):.0f} | {g('cpu_ratio_vs_sdpa', nan):.2f}x"
            f" / {g('cpu_ratio_vs_eager', nan):.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--hf-worker":
        hf_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], "--check" in sys.argv)
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--reps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--time", type=int)
    ap.add_argument("--json")
    a = ap.parse_args()
    r = main(a.quick, rounds=a.rounds, reps=a.reps, batch=a.batch, time=a.time)
    print(report(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
