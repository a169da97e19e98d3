"""The MLM encoder: training and inference step, samediff_py vs the same saved graph driven from plain Java
vs the same architecture in PyTorch (CPU, same thread count), and how each scales with time and batch.

The model is the padding scenario's MLM (``examples/mlm_padding.py``): :class:`samediff_py.models.Encoder`
(token + position embeddings, post-norm blocks of fused multi-head attention and a ReLU feed-forward, a
vocabulary projection) trained through ``Encoder.mlm`` (projection and ``masked.softmax_cross_entropy`` on the
counted rows only: 15 % MASK positions), Adam. Default size:
vocab 1000, width 128, 4 heads, d_ff 512, 1 block, batch 32, time 128 (fully packed: mask all ones).

- samediff_py: ``Trainer.step(feeds)`` and ``Graph.run(feeds, logits)`` (feeds checked, logits copied out);
- Java (bench/java/ModelLoop.java, a fresh JVM): ``sd.fit(MultiDataSet)`` and ``sd.output(map, logits)`` on
  the file ``train.save`` wrote, over the same batches written as .npy;
- PyTorch (bench/torch_model.py, run by ``SAMEDIFF_PY_TORCH_PYTHON`` or the benchmark venv's Python):
  ``nn.MultiheadAttention`` etc., with the loss over the full logits and, as a second twin, over the counted
  rows gathered before the vocabulary projection (what samediff_py's ``Encoder.mlm`` does).

Each figure is the median step time after warm-up. ``python bench/bench_models.py [--quick] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samediff_py import Graph, _jvm, masked, train  # noqa: E402
from samediff_py.models import Encoder, EncoderConfig  # noqa: E402

PAD, MASK, IGNORE = 0, 1, -1
BASE = {"batch": 32, "time": 128, "width": 128, "heads": 4, "vocab": 1000, "d_ff": 512, "layers": 1}
BENCH_VENV_PYTHON = ROOT / "build" / "bench-venv" / "bin" / "python"


def torch_python() -> Path | None:
    """The Python that runs the PyTorch twins: ``SAMEDIFF_PY_TORCH_PYTHON`` if set, else build/bench-venv's;
    None if neither imports torch."""
    env = os.environ.get("SAMEDIFF_PY_TORCH_PYTHON")
    for p in ([Path(env)] if env else []) + [BENCH_VENV_PYTHON]:
        if (
            p.exists()
            and subprocess.run([str(p), "-c", "import torch"], capture_output=True, timeout=300).returncode == 0
        ):
            return p
    return None


def build(cfg: dict, seed: int = 0):
    """(graph, logits Masked, loss) for ``cfg``: the MLM encoder + masked cross-entropy, over the counted
    positions' rows (``Encoder.mlm``; ``cfg["head"] = "full"``: over the full logits). ``logits`` are the full
    ``[batch, time, vocab]`` logits (inference)."""
    g = Graph(seed=seed)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=PAD)
    enc_cfg = EncoderConfig(
        vocab=cfg["vocab"],
        d_model=cfg["width"],
        heads=cfg["heads"],
        d_ff=cfg["d_ff"],
        layers=cfg["layers"],
        max_len=max(cfg["time"], 256),
    )
    enc = Encoder(g, enc_cfg)
    impl = cfg.get("attn")  # None: the library's default attention

    def attend(x, p):
        return masked.multi_head_attention(x, p, impl=impl)

    if cfg.get("head", "counted") == "full":  # loss over the full [batch, time, vocab] logits
        logits = enc(tokens, mask, attend=attend)
        return g, logits, masked.softmax_cross_entropy(logits, labels, IGNORE, name="loss")
    head = enc.mlm(tokens, mask, labels, IGNORE, attend=attend)  # training: logits at the counted positions only
    return g, head.logits, head.loss


def make_batch(rng: np.random.Generator, batch: int, time_: int, vocab: int, lengths=None) -> dict[str, np.ndarray]:
    """Random MLM batch; ``lengths`` (per row) right-pads with PAD and mask 0, default fully packed."""
    clean = rng.integers(2, vocab, (batch, time_))
    chosen = rng.random((batch, time_)) < 0.15
    chosen[:, 0] = True  # every row has a target
    tokens = np.where(chosen, MASK, clean).astype(np.int32)
    labels = np.where(chosen, clean, IGNORE).astype(np.int32)
    mask = np.ones((batch, time_), np.float32)
    if lengths is not None:
        mask = masked.mask_from_lengths(lengths, time_)
        tokens[mask == 0] = PAD
        labels[mask == 0] = IGNORE
    return {"tokens": tokens, "labels": labels, "mask": mask}


def _median_ms(ts: list[float]) -> float:
    return statistics.median(ts) * 1e3


def samediff_steps(
    cfg: dict,
    warm: int,
    repeat: int,
    n_batches: int = 4,
    work: Path | None = None,
    keep: bool = False,
    reuse: dict | None = None,
) -> dict:
    """Median ms of a training step and an inference step (round-robin), optionally saving the batches
    into ``work`` for the Java twin. ``keep``: return the graph objects too; ``reuse``: a kept result to
    time again (same graph, same batches)."""
    if reuse is not None:
        g, logits, trainer, batches = reuse["graph"], reuse["_logits"], reuse["_trainer"], reuse["_batches"]
        n_batches = len(batches)
    else:
        g, logits, loss = build(cfg)
        trainer = train.Trainer(g, loss, "adam", lr=1e-3)
        rng = np.random.default_rng(0)
        batches = [make_batch(rng, cfg["batch"], cfg["time"], cfg["vocab"]) for _ in range(n_batches)]
        trainer.step(batches[0])  # creates the updater state
    out: dict = {}
    if keep:
        out.update(graph=g, _logits=logits, _trainer=trainer, _batches=batches)
    if work is not None:
        out["graph"] = g
        data = work / "data"
        data.mkdir(exist_ok=True)
        for b, feeds in enumerate(batches):
            for k, v in feeds.items():
                np.save(data / f"{b}_{k}.npy", v)
        out["data"] = str(data)
        out["need"] = list(trainer.need)
        out["logits"] = logits.value.name
    tt, ti = [], []
    for i in range(warm + repeat):
        fd = batches[i % n_batches]
        t0 = time.perf_counter()
        trainer.step(fd)
        t1 = time.perf_counter()
        g.run(fd, logits.value)
        t2 = time.perf_counter()
        if i >= warm:
            tt.append(t1 - t0)
            ti.append(t2 - t1)
    out["train_ms"], out["infer_ms"] = _median_ms(tt), _median_ms(ti)
    return out


def with_java_loop(work: Path) -> None:
    """Before the JVM starts: point SAMEDIFF_PY_JARS at ``work/jars``, the current jars (symlinked) plus the
    bridge classes and bench/java/ModelLoop.java compiled beside them, so the loop is on the classpath."""
    if _jvm.started():
        raise RuntimeError("with_java_loop must run before the JVM starts")
    src = _jvm.jar_dir()
    jars = work / "jars"
    jars.mkdir()
    for p in src.iterdir():
        if p.suffix == ".jar" or p.name == "CLASSIFIER":
            (jars / p.name).symlink_to(p.resolve())
    shutil.copytree(src / "classes", jars / "classes")
    cp = os.pathsep.join([str(src / "classes"), *sorted(str(p) for p in src.glob("*.jar"))])
    subprocess.run(
        ["javac", "-nowarn", "-d", str(jars / "classes"), "-cp", cp, str(ROOT / "bench/java/ModelLoop.java")],
        check=True,
    )
    os.environ["SAMEDIFF_PY_JARS"] = str(jars)


def java_steps(saved: dict, warm: int, repeat: int, n_batches: int = 4) -> dict:
    """Median ms per step of the plain-Java loop (bench/java/ModelLoop.java) over the same graph and batches.

    The loop runs inside this process's JVM on the graph object itself (one call for all steps, no Python
    in between): M2.1 fails to re-create the gradient function of this encoder after ``SameDiff.load``
    (NullPointerException in createGradFunction: ops missing from the file), so a fresh JVM cannot train it.
    """
    loop = _jvm.jclass("ModelLoop")
    out = {}
    for mode in ("train", "infer"):
        spec = ["-", saved["data"], str(n_batches), ",".join(saved["need"]), str(warm), str(repeat), mode]
        with _jvm.java_errors():
            line = loop.run(saved["graph"].sd, "|".join([*spec, saved["logits"]]))
        out[f"{mode}_ms"] = statistics.median(float(x) for x in line.split()[1 : 1 + repeat])
    return out


def torch_available() -> bool:
    return torch_python() is not None


def torch_steps(cfgs: list[dict], warm: int, repeat: int, threads: int) -> list[dict]:
    """Median ms per train / infer step of the PyTorch twin for each config (one subprocess)."""
    arg = json.dumps({"configs": cfgs, "warm": warm, "repeat": repeat, "threads": threads})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    res = subprocess.run(
        [str(torch_python()), str(ROOT / "bench/torch_model.py"), arg], capture_output=True, text=True, env=env
    )
    if res.returncode != 0:
        raise RuntimeError(f"torch_model.py failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def threads() -> int:
    return int(os.environ.get("SAMEDIFF_PY_THREADS") or os.environ.get("OMP_NUM_THREADS") or 1)


def main(quick: bool = False, java: bool = True, torch: bool = True, cfg: dict | None = None) -> dict:
    """The headline comparison at ``cfg`` (default :data:`BASE`): samediff_py, Java, PyTorch."""
    cfg = dict(cfg or BASE)
    warm, repeat = (2, 3) if quick else (3, 10)
    res: dict = {"config": cfg, "threads": threads()}
    java = java and shutil.which("javac") is not None and not _jvm.started()
    do_torch = torch and torch_available()
    rounds = 1 if quick else 3  # samediff_py, Java, PyTorch take turns, so a load change hits all alike
    per = {"samediff_py": {"train_ms": [], "infer_ms": []}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if java:
            with_java_loop(work)
        sd = samediff_steps(cfg, warm, repeat, work=work if java else None, keep=True)
        for rnd in range(rounds):
            if rnd:
                sd.update(samediff_steps(cfg, 1, repeat, reuse=sd))
            for k in ("train_ms", "infer_ms"):
                per["samediff_py"][k].append(sd[k])
            if java:
                for k, v in java_steps(sd, 1 if rnd else warm, repeat).items():
                    per.setdefault("java", {}).setdefault(k, []).append(v)
            if do_torch:
                full, counted = torch_steps([cfg, dict(cfg, head="counted")], warm, repeat, threads())
                for who, r in (("pytorch", full), ("pytorch_counted", counted)):
                    for k, v in r.items():
                        per.setdefault(who, {}).setdefault(k, []).append(v)
    for who, ms in per.items():
        res[who] = {k: (statistics.median(v) if k.endswith("_ms") else v[0]) for k, v in ms.items()}
        res[who]["train_ms_rounds"] = list(ms["train_ms"])
        res[who]["infer_ms_rounds"] = list(ms["infer_ms"])
    res["rounds"] = rounds
    tokens = cfg["batch"] * cfg["time"]
    for r in (res.get(k) for k in ("samediff_py", "java", "pytorch", "pytorch_counted")):
        if r:
            r["train_tok_s"] = tokens / r["train_ms"] * 1e3
            r["infer_tok_s"] = tokens / r["infer_ms"] * 1e3
    return res


def scaling(quick: bool = False, torch: bool = True) -> dict:
    """Train / infer ms per step over time (batch 32) and batch (time 128), samediff_py and PyTorch."""
    warm, repeat = (1, 2) if quick else (2, 5)
    times, batches = ((32, 64), (8,)) if quick else ((32, 64, 128, 256), (8, 32, 128))
    grid = [dict(BASE, time=t, batch=b) for b in batches for t in times]
    rows = []
    for cfg in grid:
        r = samediff_steps(cfg, warm, repeat)
        rows.append({"batch": cfg["batch"], "time": cfg["time"], "samediff_py": r})
        print(f"  scaling b={cfg['batch']} t={cfg['time']}: {r['train_ms']:.1f} / {r['infer_ms']:.1f} ms", flush=True)
    if torch and torch_available():
        for row, tr in zip(rows, torch_steps(grid, warm, repeat, threads()), strict=True):
            row["pytorch"] = tr
    return {"rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--what", choices=["main", "scaling", "train_only"], default="main")
    ap.add_argument("--no-java", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    if a.what == "main":
        out = main(a.quick, java=not a.no_java, torch=not a.no_torch)
    elif a.what == "scaling":
        out = scaling(a.quick, torch=not a.no_torch)
    else:  # one samediff_py figure (backend / thread comparisons)
        w, r = (1, 3) if a.quick else (3, 8)
        out = samediff_steps(dict(BASE), w, r)
        out["threads"] = threads()
        out["classifier"] = (_jvm.jar_dir() / "CLASSIFIER").read_text().strip()
    text = json.dumps(out, indent=1)
    if a.json:
        Path(a.json).write_text(text)
    print(text)
