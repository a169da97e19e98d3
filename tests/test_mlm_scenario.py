"""Regression tests for the MLM padding-sensitivity scenario (examples/mlm_padding.py).

The correct model must stay pad-invariant (outputs, loss, gradients) after training; the user's bug
(inverted mask) must show its collapse signature; the gradual mistakes must fail the pad-invariance
helpers; and samediff_py must refuse the inverted training mask before anything trains.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from samediff_py import MaskError, testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import mlm_padding as M  # noqa: E402

VARIANTS = {v.name: v for v in M.VARIANTS}
STEPS = 300  # enough for the collapse signature; pad-invariance itself holds for any weights


@pytest.fixture(scope="module")
def trained() -> dict[str, M.Model]:
    models = {}
    for name in ("correct", "inverted"):
        model = M.build(VARIANTS[name])
        M.train(model, STEPS, progress=False)
        models[name] = model
    return models


def probe_feeds(length: int = 24, n_pad: int = 3) -> dict[str, np.ndarray]:
    tokens, labels = M.make_batch(np.random.default_rng(7), 8, length)
    return M.eval_feeds(tokens, labels, n_pad, "padded", np.random.default_rng(8))


def test_trained_correct_model_is_pad_invariant(trained):
    m = trained["correct"]
    report = testing.assert_pad_invariant(
        m.graph,
        probe_feeds(),
        [m.logits, m.accuracy],
        loss=m.loss,
        pad_values={"tokens": M.PAD},
        ks=(1, 8),
        atol=1e-4,  # whole model, logits of order 10, float32 (docs/mlm-scenario.md)
        rtol=1e-4,
    )
    assert report.max_drift("output") < 1e-4


def test_trained_correct_model_padded_equals_truncated(trained):
    ev = M.evaluate(trained["correct"], [0, 3, 16], n_eval=256)
    for n in (3, 16):
        assert ev["padded"][n] == pytest.approx(ev["truncated"][n], abs=1e-9)
        assert ev["drift_padded"][n] < 1e-4
    assert ev["truncated"][0] > 0.5, "the correct model should have learned the task"


def test_inverted_mask_collapses_only_when_padded(trained):
    ev = M.evaluate(trained["inverted"], [0, 3], n_eval=256)
    chance = 1 / M.N_REAL
    assert ev["truncated"][3] > 0.5, ev  # trains fine on packed data
    assert ev["real_tokens"][3] > 0.5, ev  # real tokens in the slots keep it working
    assert ev["padded"][3] < chance + 0.1, ev  # 3 pads: about chance
    assert ev["drift_padded"][3] > 1.0


@pytest.mark.parametrize("name", ["inverted", "no_mask", "softmax_over_queries", "norm_over_time"])
def test_faulty_variants_fail_pad_invariance(name):
    m = M.build(VARIANTS[name])  # untrained weights suffice: invariance is a property of the graph
    report = testing.check_pad_invariance(
        m.graph, probe_feeds(), [m.logits], loss=m.loss, pad_values={"tokens": M.PAD}, ks=(1, 8), atol=1e-4, rtol=1e-4
    )
    assert not report.ok
    assert report.max_drift("output") > 1e-2  # misses the bound by orders of magnitude
    with pytest.raises(testing.PadInvarianceError, match="output"):
        testing.assert_pad_invariant(m.graph, probe_feeds(), [m.logits], pad_values={"tokens": M.PAD}, ks=(3,))


def test_inverted_training_mask_is_refused_before_training():
    from samediff_py.train import Trainer

    m = M.build(VARIANTS["correct"])
    tokens, labels = M.make_batch(np.random.default_rng(0), 16)
    inverted = (tokens == M.PAD).astype(np.float32)  # the user's mask: all zeros on packed data
    trainer = Trainer(m.graph, m.loss, lr=3e-3)
    before = m.graph.get_value("encoder/tok_emb")
    with pytest.raises(MaskError, match="inverted"):
        trainer.fit([{"tokens": tokens, "labels": labels, "mask": inverted}], progress=False)
    np.testing.assert_array_equal(before, m.graph.get_value("encoder/tok_emb"))  # nothing trained


def test_mask_marking_pad_tokens_valid_is_refused():
    m = M.build(VARIANTS["correct"])
    fd = probe_feeds()
    fd["mask"] = np.ones_like(fd["mask"])  # pads marked valid
    with pytest.raises(MaskError, match="pad id"):
        m.graph.run(fd, m.loss)


def test_axis_explanation_matches_the_arrays(trained):
    text = M.explain_axes(trained["correct"])
    assert "axis 2 is the keys" in text
    # the printed samediff_py rows sum to 1 for valid queries; DL4J's columns do
    assert "row sums (over keys, last axis):   [1. 1. 1. 1. 0. 0.]" in text
    assert "column sums (over keys, axis 2):   [1. 1. 1. 1. 1. 1.]" in text
