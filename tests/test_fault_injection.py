"""Fault injection: a trainer that checkpoints after every step is SIGKILLed at random moments, many times.

After every kill the checkpoint must load (never half-written, never corrupt), training must resume from it,
progress must never go backwards, and at the end the model must equal one trained without interruption for
the same number of steps (weights and Adam state: the resumed runs replay the same batches bit for bit).
The checkpoint carries 8 MB of ballast so that kills land inside saves as well as inside steps.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from samediff_py import checkpoint
from samediff_py.train import Trainer

ROOT = Path(__file__).resolve().parent.parent

MODEL = """
import numpy as np
from samediff_py import Graph, ops

def build():
    g = Graph(seed=0)
    x, y = g.placeholder("x", ("batch", 4)), g.placeholder("y", ("batch", 1))
    h = (x @ g.variable("w1", shape=(4, 8)) + g.variable("b1", np.zeros(8, np.float32))).relu()
    fit = ops.mean(ops.square(ops.matmul(h, g.variable("w2", shape=(8, 1))) - y))
    ballast = g.variable("ballast", shape=(1000, 2000), init="normal", scale=0.01)
    return g, ops.add(fit, ops.multiply(ops.mean(ops.square(ballast)), 1e-3), name="loss")

def batch(i):
    rng = np.random.default_rng(i % 7)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    return {"x": x, "y": (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)).astype(np.float32)}
"""

WORKER = (
    MODEL
    + """
import sys
from pathlib import Path
from samediff_py import checkpoint
from samediff_py.train import Trainer
path = Path(sys.argv[1])
if path.exists():
    g = checkpoint.load(path)
    t = Trainer.restore(g)
else:
    g, loss = build()
    t = Trainer(g, loss, "adam", lr=0.01)
print("STARTED", t.iterations, flush=True)
while True:
    t.step(batch(t.iterations))
    checkpoint.save(g, path)
    print("SAVED", t.iterations, flush=True)
"""
)


def _namespace() -> dict:
    ns: dict = {}
    exec(compile(textwrap.dedent(MODEL), "model", "exec"), ns)
    return ns


def test_random_kills_never_lose_a_checkpoint_and_training_resumes_exactly(tmp_path):
    path = tmp_path / "ckpt.sdz"
    rng = np.random.default_rng()
    seen = 0
    for _trial in range(7):
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            line = proc.stdout.readline()
            assert line.startswith("STARTED"), (line, proc.stderr.read()[-2000:] if proc.poll() is not None else "")
            assert int(line.split()[1]) == seen  # resumed exactly where the last good checkpoint was
            first = proc.stdout.readline()  # progress in every trial, however slow the machine is ...
            assert first.startswith("SAVED"), (first, proc.stderr.read()[-2000:] if proc.poll() is not None else "")
            time.sleep(rng.random() * 0.8)  # ... then a kill at a random moment: inside a step or a save
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=60)
            out = first + out
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL
        saved = [int(s.split()[1]) for s in out.splitlines() if s.startswith("SAVED")]
        if not path.exists():
            assert not saved
            continue
        g = checkpoint.load(path)  # never corrupt, never half-written
        now = Trainer.restore(g).iterations
        assert now >= max(saved, default=seen) >= seen  # no progress lost, none invented
        seen = now
    assert seen > 0
    # the interrupted-and-resumed model equals an uninterrupted one trained for as many steps
    ns = _namespace()
    ref_g, ref_loss = ns["build"]()
    ref = Trainer(ref_g, ref_loss, "adam", lr=0.01)
    for i in range(seen):
        ref.step(ns["batch"](i))
    g = checkpoint.load(path)
    for v in ref_g.trainable():
        np.testing.assert_array_equal(g.get_value(v.name), ref_g.get_value(v), err_msg=v.name)
    t = Trainer.restore(g)  # and the updater state too: the next steps agree exactly
    for i in range(seen, seen + 3):
        assert t.step(ns["batch"](i)) == ref.step(ns["batch"](i))
    np.testing.assert_array_equal(g.get_value("w2"), ref_g.get_value("w2"))
