"""One training step, driven from Python (Trainer.fit over a list of batches) vs from plain Java.

Both drive the same saved graph (with its updater state) over the same batches (written as .npy), in one
run: the Python loop in this process, then bench/java/TrainLoop.java compiled and run in a fresh JVM.
Java is timed twice: "plain" (sd.fit(MultiDataSet) per batch, what a Java user writes) and "loss" (also
recording every step's loss as samediff_py does). The target is Python <= 1.05 x Java.

    python bench/bench_train.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samediff_py import Graph, _jvm, ops, train  # noqa: E402


def mlp(sizes: list[int], seed: int = 0):
    g = Graph(seed=seed)
    x = g.placeholder("x", ("batch", sizes[0]))
    y = g.placeholder("y", ("batch", sizes[-1]))
    h = x
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        h = h @ g.variable(f"w{i}", shape=(a, b)) + g.variable(f"b{i}", np.zeros(b, np.float32))
        if i < len(sizes) - 2:
            h = h.relu()
    loss = ops.mean(ops.square(h - y), name="loss")
    return g, loss


def _cp() -> str:
    jars = _jvm.jar_dir()
    return os.pathsep.join([str(jars / "classes"), *sorted(str(p) for p in jars.glob("*.jar"))])


def bench_model(name: str, sizes: list[int], batch: int, n_batches: int, warm: int, epochs: int, work: Path) -> dict:
    g, loss = mlp(sizes)
    t = train.Trainer(g, loss, "adam", lr=1e-3)
    rng = np.random.default_rng(0)
    batches = [
        {
            "x": rng.normal(size=(batch, sizes[0])).astype(np.float32),
            "y": rng.normal(size=(batch, sizes[-1])).astype(np.float32),
        }
        for _ in range(n_batches)
    ]
    t.fit(batches[:1], epochs=1, progress=False)  # creates the updater state
    model = train.save(g, work / f"{name}.sdz")
    data = work / f"{name}_data"
    data.mkdir()
    for b, feeds in enumerate(batches):
        for k, v in feeds.items():
            np.save(data / f"{b}_{k}.npy", v)

    # Python: the saved graph, restored, trained over the batches
    g2 = train.load(model)
    t2 = train.Trainer.restore(g2)
    t2.fit(batches, epochs=warm, progress=False, shuffle=False)
    t0 = time.perf_counter()
    t2.fit(batches, epochs=epochs, progress=False, shuffle=False)
    py_us = (time.perf_counter() - t0) / (epochs * n_batches) * 1e6

    java = {}
    for mode in ("plain", "loss"):
        out = subprocess.run(
            [
                "java",
                "-Xmx4g",
                "-cp",
                f"{work}{os.pathsep}{_cp()}",
                "TrainLoop",
                str(model),
                str(data),
                str(n_batches),
                ",".join(t2.need),
                str(warm),
                str(epochs),
                mode,
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("us_per_step ")][-1]  # M2.1 prints grad ops
        java[mode] = float(line.split()[1])
    res = {
        "model": name,
        "params": int(sum(np.prod(v.shape) for v in g.trainable())),
        "batch": batch,
        "python_us_per_step": py_us,
        "java_plain_us_per_step": java["plain"],
        "java_loss_us_per_step": java["loss"],
        "ratio_vs_plain": py_us / java["plain"],
        "ratio_vs_loss": py_us / java["loss"],
    }
    return res


def main(quick: bool = False) -> dict:
    """Run both models; returns {model name: measurements}."""
    if shutil.which("javac") is None:
        raise RuntimeError("bench_train needs a JDK (javac)")
    warm, epochs = (2, 3) if quick else (5, 10)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            ["javac", "-nowarn", "-d", str(work), "-cp", _cp(), str(ROOT / "bench" / "java" / "TrainLoop.java")],
            check=True,
        )
        out = {}
        for name, sizes, batch in (("mlp_small", [32, 64, 10], 32), ("mlp_big", [256, 1024, 1024, 256], 64)):
            r = bench_model(name, sizes, batch, 20, warm, epochs, work)
            out[name] = r
            print(
                f"{name:10s} params={r['params']:>8d} batch={batch:>3d}  py {r['python_us_per_step']:8.0f} us/step "
                f"java plain {r['java_plain_us_per_step']:8.0f}  java+loss {r['java_loss_us_per_step']:8.0f}  "
                f"ratio py/java {r['ratio_vs_plain']:.3f} (vs java+loss {r['ratio_vs_loss']:.3f})",
                flush=True,
            )
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Python- vs Java-driven training step")
    ap.add_argument("--quick", action="store_true")
    main(ap.parse_args().quick)
