"""BERT round trip through transformers itself: load here, train, save_pretrained, load there, same numbers.

Skipped unless a Python with torch + transformers is available: this interpreter, or the one named by
``SAMEDIFF_PY_HF_PYTHON``, or ``build/hf-venv/bin/python`` in the repository (how the fixture README makes
it). transformers runs in a subprocess (tests/hf_run.py), so torch never loads into the JVM's process and
samediff_py's venv needs neither package. To run it here:

    SAMEDIFF_PY_HF_PYTHON=/path/to/hf-venv/bin/python .venv/bin/python -m pytest tests/test_bert_hf.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samediff_py import bert
from samediff_py.padding import mask_from_lengths
from samediff_py.train import Trainer

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "tiny_bert"
NPZ = HERE / "fixtures" / "tiny_bert_reference.npz"


def hf_python() -> str | None:
    """A Python interpreter that imports torch and transformers, or None."""
    repo_venv = str(HERE.parent / "build/hf-venv/bin/python")
    candidates = [sys.executable, os.environ.get("SAMEDIFF_PY_HF_PYTHON"), repo_venv]
    for py in candidates:
        if py and Path(py).exists():
            ok = subprocess.run([py, "-c", "import torch, transformers"], capture_output=True, timeout=300)
            if ok.returncode == 0:
                return py
    return None


PY = hf_python()
pytestmark = pytest.mark.skipif(PY is None, reason="needs a Python with torch + transformers (SAMEDIFF_PY_HF_PYTHON)")


def run_hf(tmp: Path, jobs: list[dict]) -> list[dict[str, np.ndarray]]:
    """Run each job (folder, arch, inputs dict) through transformers; return its outputs."""
    spec = []
    for i, job in enumerate(jobs):
        np.savez(tmp / f"in{i}.npz", **job["inputs"])
        spec.append({"folder": str(job["folder"]), "arch": job["arch"], "inputs": str(tmp / f"in{i}.npz"),
                     "output": str(tmp / f"out{i}.npz")})  # fmt: skip
    (tmp / "jobs.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([PY, str(HERE / "hf_run.py"), str(tmp / "jobs.json")], capture_output=True, text=True,
                          env=env, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outs = []
    for s in spec:
        with np.load(s["output"]) as z:
            outs.append({k: z[k] for k in z.files})
    return outs


def assert_loaded_cleanly(res: dict[str, np.ndarray]) -> None:
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert res[k].size == 0, (k, res[k])


def test_train_here_save_and_transformers_computes_the_same(tmp_path):
    """The issue's proof: load the fixture, train 3 steps with the Trainer, save_pretrained; transformers
    loads the folder with no missing / unexpected / mismatched key, keeps the decoder tied, and gives the
    same logits (valid positions) and the same loss."""
    with np.load(NPZ) as z:
        ref = {k: z[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
    model = bert.from_pretrained(FIXTURE)
    feeds = model.feeds(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"], ref["labels"])
    before = model.state_dict()
    trainer = Trainer(model.graph, model.outputs.loss, updater="adam", lr=3e-3)
    history = trainer.fit([feeds] * 3, progress=False)
    assert len(history.step_losses) == 3 and history.step_losses[-1] < history.step_losses[0]
    after = model.state_dict()
    assert all(np.abs(after[k] - before[k]).max() > 0 for k in before if "key.bias" not in k)
    logits, loss = model.graph.run(feeds, [model.outputs.logits.value, model.outputs.loss])
    folder = model.save_pretrained(tmp_path / "trained")

    (res,) = run_hf(tmp_path, [{"folder": folder, "arch": "BertForMaskedLM", "inputs": ref}])
    assert_loaded_cleanly(res)
    assert bool(res["tied"])
    valid = ref["attention_mask"] == 1
    np.testing.assert_allclose(res["logits"][valid], logits[valid], rtol=0, atol=1e-5)
    assert abs(float(res["loss"]) - float(loss)) <= 1e-6 * max(1.0, abs(float(loss)))


@pytest.mark.parametrize(
    "act, arch, tied",
    [("gelu_new", "BertForMaskedLM", True), ("gelu_pytorch_tanh", "BertForMaskedLM", True),
     ("relu", "BertForMaskedLM", True), ("quick_gelu", "BertForMaskedLM", True), ("gelu", "BertModel", True),
     ("gelu", "BertForMaskedLM", False)],
)  # fmt: skip
def test_saved_configurations_mean_the_same_to_transformers(tmp_path, act, arch, tied):
    """Activations by transformers' names, eps, the pooler, the bare-encoder layout and an untied decoder
    survive the trip."""
    head = arch == "BertForMaskedLM"
    sizes = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24)
    cfg = bert.BertConfig(**sizes, max_position_embeddings=20, hidden_act=act, layer_norm_eps=1e-6,
                          tie_word_embeddings=tied)  # fmt: skip
    model = bert.from_config(cfg, seed=4, mlm_head=head, pooler=not head)
    rng = np.random.default_rng(5)
    model.load_state_dict({k: rng.normal(0, 0.3, a.shape).astype(np.float32) for k, a in model.state_dict().items()})
    lengths = [9, 4, 6]
    mask = mask_from_lengths(lengths, 9).astype(np.int64)
    ids = np.where(mask > 0, rng.integers(1, 50, (3, 9)), 0)
    tt = np.where(mask > 0, rng.integers(0, 2, (3, 9)), 0)
    labels = np.where((mask > 0) & (rng.random((3, 9)) < 0.4), ids, -100)
    labels[:, 0] = np.where(mask[:, 0] > 0, ids[:, 0], -100)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
    if head:
        inputs["labels"] = labels
    feeds = model.feeds(ids, mask, tt, labels if head else None)
    o = model.outputs
    ours = model.graph.run(feeds, [o.logits.value, o.loss] if head else [o.sequence_output.value, o.pooled])
    folder = model.save_pretrained(tmp_path / f"{act}-{tied}")
    (res,) = run_hf(tmp_path, [{"folder": folder, "arch": arch, "inputs": inputs}])
    assert_loaded_cleanly(res)
    valid = mask == 1
    if head:
        assert bool(res["tied"]) == tied
        np.testing.assert_allclose(res["logits"][valid], ours[0][valid], rtol=0, atol=1e-5)
        assert abs(float(res["loss"]) - float(ours[1])) <= 1e-6 * max(1.0, abs(float(ours[1])))
    else:
        np.testing.assert_allclose(res["last_hidden_state"][valid], ours[0][valid], rtol=0, atol=1e-5)
        np.testing.assert_allclose(res["pooler_output"], ours[1], rtol=0, atol=1e-5)
