"""Issue 11: BERT from and to transformers checkpoints, exact to float32 rounding.

Driven by the committed fixture (tests/fixtures/tiny_bert*, written by transformers 5.24 itself; see
tests/fixtures/make_bert_fixture.py): logits, loss, every gradient, hidden states and attention weights of a
padded batch, and each row run alone. Activations other than the fixture's exact GELU, the pooler and the
bare-encoder layout are checked against tests/reference.py's numpy BERT, itself checked against the fixture.
The round trip through transformers (train here, save, load there) is in tests/test_bert_hf.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import reference as R
from safetensors.numpy import load_file, save_file

from samediff_py import ModelFileError, bert, testing
from samediff_py.train import Trainer

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "tiny_bert"
NPZ = HERE / "fixtures" / "tiny_bert_reference.npz"


@pytest.fixture(scope="module")
def ref():
    with np.load(NPZ, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tiny(ref):
    """The fixture checkpoint loaded once, with attention weights, and its outputs on the reference batch."""
    model = bert.from_pretrained(FIXTURE, output_attentions=True)
    feeds = model.feeds(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"], ref["labels"])
    o = model.outputs
    flat = [o.logits.value, o.loss, *o.attentions, *(h.value for h in o.hidden_states)]
    res = model.graph.run(feeds, flat)
    n = len(o.attentions)
    outs = {"logits": res[0], "loss": res[1], "attn": res[2 : 2 + n], "hidden": res[2 + n :]}
    return model, feeds, outs


def valid(ref) -> np.ndarray:
    return ref["attention_mask"] == 1


# ============================================================================ the fixture, numerically
def test_logits_and_loss_match_transformers(tiny, ref):
    _, _, outs = tiny
    v = valid(ref)
    np.testing.assert_allclose(outs["logits"][v], ref["logits"][v], rtol=0, atol=1e-5)
    assert abs(float(outs["loss"]) - float(ref["loss"])) <= 1e-6


def test_hidden_states_and_attention_weights_match_transformers(tiny, ref):
    model, _, outs = tiny
    v = valid(ref)
    assert len(outs["hidden"]) == model.config.num_hidden_layers + 1
    for i, h in enumerate(outs["hidden"]):
        np.testing.assert_allclose(h[v], ref[f"hidden/{i}"][v], rtol=0, atol=1e-5, err_msg=f"hidden/{i}")
    for layer, a in enumerate(outs["attn"]):
        r = ref[f"attn/{layer}"]  # [batch, heads, query, key]
        assert a.shape == r.shape
        rows = np.broadcast_to(v[:, None, :, None], a.shape)  # valid queries (transformers' padded rows are garbage)
        np.testing.assert_allclose(a[rows], r[rows], rtol=0, atol=1e-6, err_msg=f"attn/{layer}")
        np.testing.assert_array_equal(a[~rows], 0.0)
        np.testing.assert_array_equal(a * (1 - ref["attention_mask"])[:, None, None, :], 0.0)  # padded keys


def test_every_gradient_matches_transformers(tiny, ref):
    """d loss / d every parameter, in transformers' names and layout; the tied word embedding's gradient is
    the sum of its two uses (lookup + decoder), as transformers stores it."""
    model, feeds, _ = tiny
    vars_ = model.variables()
    assert sorted(vars_) == sorted(str(n) for n in ref["param_names"])
    grads = model.graph.gradients(feeds, model.outputs.loss, list(vars_.values()))
    kinds = {s.hf: s.kind for s in model.slots}
    for name, var in vars_.items():
        got = bert._to_hf(kinds[name], grads[var.name])
        want = ref[f"grad/{name}"]
        assert got.shape == want.shape, name
        # 1e-4 relative to the tensor's scale, plus an absolute floor: key.bias gradients are ~1e-8 noise
        # (mathematically 0: softmax ignores a per-query constant)
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale + 1e-7, err_msg=name)
        if "key.bias" in name:
            assert np.abs(got).max() < 1e-6
        else:
            assert scale > 1e-4, name  # a real gradient, not a trivially passing zero


def test_each_row_alone_equals_its_padded_row(tiny, ref):
    model, _, outs = tiny
    for r, n in enumerate(ref["lengths"]):
        fd = model.feeds(ref["input_ids"][r : r + 1, :n], np.ones((1, n)), ref["token_type_ids"][r : r + 1, :n])
        alone = model.graph.run(fd, model.outputs.logits.value)[0]
        np.testing.assert_allclose(alone, ref[f"alone/{r}"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(alone, outs["logits"][r, :n], rtol=0, atol=1e-5)


def test_loaded_model_is_pad_invariant(tiny, ref):
    """Appended pads and refilled padding change no output, no loss, no gradient (samediff_py.testing)."""
    model, feeds, _ = tiny
    o = model.outputs
    report = testing.assert_pad_invariant(
        model.graph,
        feeds,
        [o.logits, o.hidden_states[1]],
        loss=o.loss,
        mask="attention_mask",
        ks=(1, 7),
        pad_values={"input_ids": 0, "labels": -100},
        atol=1e-5,
    )
    assert report.ok


def test_unfused_attention_gives_the_same_model(tiny, ref):
    """The attention hook: samediff_py's unfused formulation (plain ops, biases added per head) instead of
    DL4J's fused op (biases through an extra input feature) computes the same BERT."""
    _, feeds, outs = tiny
    model = bert.from_pretrained(FIXTURE, attention=bert.masked.multi_head_attention_unfused)
    logits, loss = model.graph.run(feeds, [model.outputs.logits.value, model.outputs.loss])
    v = valid(ref)
    np.testing.assert_allclose(logits[v], outs["logits"][v], rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits[v], ref["logits"][v], rtol=0, atol=1e-5)
    assert abs(float(loss) - float(ref["loss"])) <= 1e-6


def test_numpy_reference_matches_the_fixture(ref):
    """tests/reference.py's BERT (used below for what the fixture does not cover) against transformers."""
    cfg = json.loads(str(ref["config_json"]))
    out = R.bert_forward(load_file(str(FIXTURE / "model.safetensors")), cfg, ref["input_ids"], ref["attention_mask"],
                         ref["token_type_ids"])  # fmt: skip
    v = valid(ref)
    np.testing.assert_allclose(out["logits"][v], ref["logits"][v], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["hidden"][2][v], ref["hidden/2"][v], rtol=0, atol=1e-5)


# ============================================================================ other configurations vs numpy
def _random_state(model: bert.Bert, seed: int) -> dict[str, np.ndarray]:
    """Every tensor random and non-trivial (LayerNorm gains around 1, biases non-zero)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, a in model.state_dict().items():
        out[name] = rng.uniform(0.5, 1.5, a.shape) if "LayerNorm.weight" in name else rng.normal(0, 0.3, a.shape)
    return {k: v.astype(np.float32) for k, v in out.items()}


@pytest.mark.parametrize(
    "act, pooler, mlm_head",
    [("gelu_new", False, True), ("relu", True, True), ("quick_gelu", True, False)],
)
def test_other_activations_pooler_and_bare_encoder_match_numpy(act, pooler, mlm_head):
    cfg = bert.BertConfig(vocab_size=30, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                          intermediate_size=20, max_position_embeddings=16, hidden_act=act)  # fmt: skip
    model = bert.from_config(cfg, seed=1, pooler=pooler, mlm_head=mlm_head)
    weights = _random_state(model, 2)
    model.load_state_dict(weights)
    rng = np.random.default_rng(3)
    lengths = [6, 2, 5]
    mask = bert.masked.mask_from_lengths(lengths, 6)
    ids = np.where(mask > 0, rng.integers(1, 30, (3, 6)), 0)
    tt = np.where(mask > 0, rng.integers(0, 2, (3, 6)), 0)
    o = model.outputs
    want = [o.sequence_output.value] + ([o.logits.value] if mlm_head else []) + ([o.pooled] if pooler else [])
    got = model.graph.run(model.feeds(ids, mask, tt), want)
    refd = R.bert_forward(weights, {**cfg.to_dict(), "hidden_act": act}, ids, mask, tt,
                          prefix=model.prefix, mlm=mlm_head, pooler=pooler)  # fmt: skip
    v = mask > 0
    np.testing.assert_allclose(got[0][v], refd["hidden"][-1][v], rtol=0, atol=2e-5)
    if mlm_head:
        np.testing.assert_allclose(got[1][v], refd["logits"][v], rtol=0, atol=2e-5)
    if pooler:
        np.testing.assert_allclose(got[-1], refd["pooled"], rtol=0, atol=2e-5)
    assert model.architecture == ("BertForMaskedLM" if mlm_head else "BertModel")
    assert all(k.startswith(("bert.", "cls.")) for k in model.state_dict()) == mlm_head


def test_untied_decoder_has_its_own_weight_and_bias(tmp_path):
    """tie_word_embeddings=false (transformers 5): decoder.weight and decoder.bias are separate parameters and
    cls.predictions.bias is unused (kept and written back as is); a transformers-4 file without decoder.bias
    (there it was cls.predictions.bias) loads too."""
    cfg = bert.BertConfig(vocab_size=30, hidden_size=12, num_hidden_layers=1, num_attention_heads=3,
                          intermediate_size=20, max_position_embeddings=16, tie_word_embeddings=False)  # fmt: skip
    model = bert.from_config(cfg, seed=1)
    assert model.decoder is not model.word and "cls.predictions.bias" not in model.variables()
    weights = _random_state(model, 2)
    assert {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "cls.predictions.bias"} <= set(weights)
    model.load_state_dict(weights)
    rng = np.random.default_rng(3)
    mask = bert.masked.mask_from_lengths([6, 3], 6)
    ids = np.where(mask > 0, rng.integers(1, 30, (2, 6)), 0)
    got = model.graph.run(model.feeds(ids, mask), model.outputs.logits.value)
    want = R.bert_forward(weights, cfg.to_dict(), ids, mask)["logits"]
    np.testing.assert_allclose(got[mask > 0], want[mask > 0], rtol=0, atol=2e-5)
    folder = model.save_pretrained(tmp_path / "untied")
    saved = load_file(str(folder / "model.safetensors"))
    assert all(np.array_equal(saved[k], weights[k]) for k in weights)
    # transformers 4 layout: no decoder.bias; the decoder's bias was cls.predictions.bias
    t4 = {k: v for k, v in saved.items() if k != "cls.predictions.decoder.bias"}
    save_file(t4, str(folder / "model.safetensors"), metadata={"format": "pt"})
    old = bert.from_pretrained(folder)
    np.testing.assert_array_equal(old.state_dict()["cls.predictions.decoder.bias"], saved["cls.predictions.bias"])


def test_config_refuses_what_it_cannot_compute():
    for field_, value, match in [
        ("hidden_act", "swish", "hidden_act 'swish' is not supported"),
        ("position_embedding_type", "relative_key", "position_embedding_type 'relative_key'"),
        ("num_attention_heads", 5, "not a multiple"),
        ("vocab_size", 0, "vocab_size must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=match):
            bert.BertConfig(**{field_: value})
    with pytest.raises(ValueError, match="model_type 'roberta' is not 'bert'"):
        bert.BertConfig.from_dict({"model_type": "roberta"})
    with pytest.raises(ValueError, match=r"architectures \['BertForSequenceClassification'\] not supported"):
        bert.BertConfig.from_dict({"model_type": "bert", "architectures": ["BertForSequenceClassification"]})
    with pytest.raises(ValueError, match="is_decoder"):
        bert.BertConfig.from_dict({"model_type": "bert", "is_decoder": True})


# ============================================================================ saving and loading
def test_save_pretrained_writes_transformers_layout_bit_for_bit(tiny, tmp_path):
    model, feeds, outs = tiny
    out = model.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(FIXTURE / "model.safetensors"))
    assert sorted(ours) == sorted(theirs)  # no cls.predictions.decoder.* (tied), nothing missing
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and np.array_equal(ours[k], theirs[k]), k
    cfg_ours = json.loads((out / "config.json").read_text())
    cfg_theirs = json.loads((FIXTURE / "config.json").read_text())
    assert cfg_ours == {**cfg_theirs, "position_embedding_type": "absolute"}
    again = bert.from_pretrained(out)
    np.testing.assert_array_equal(again.graph.run(feeds, again.outputs.logits.value), outs["logits"])


def test_tied_weights_stay_tied_while_training(ref, tmp_path):
    """One Var serves the embedding lookup and the decoder: after training, logits recomputed by a freshly
    loaded copy (which ties the decoder to the saved embeddings) equal the trained graph's."""
    model = bert.from_pretrained(FIXTURE)
    assert model.decoder is model.word
    feeds = model.feeds(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"], ref["labels"])
    before = model.graph.get_value(model.word)
    trainer = Trainer(model.graph, model.outputs.loss, updater="adam", lr=1e-2)
    losses = [trainer.step(feeds) for _ in range(3)]
    assert losses[-1] < losses[0]
    assert np.abs(model.graph.get_value(model.word) - before).max() > 1e-3
    logits = model.graph.run(feeds, model.outputs.logits.value)
    again = bert.from_pretrained(model.save_pretrained(tmp_path / "trained"))
    np.testing.assert_allclose(again.graph.run(feeds, again.outputs.logits.value), logits, rtol=0, atol=1e-6)


def _copy_fixture(tmp_path: Path, name: str = "ckpt") -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURE, dst)
    return dst


def _edit(folder: Path, tensors=None, config=None) -> Path:
    if tensors is not None:
        t = load_file(str(folder / "model.safetensors"))
        t = tensors(t) or t
        save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        c = json.loads((folder / "config.json").read_text())
        c = config(c) or c
        (folder / "config.json").write_text(json.dumps(c))
    return folder


def test_sharded_checkpoints_load(tiny, tmp_path):
    """model.safetensors.index.json + shards, as transformers writes large models."""
    _, feeds, outs = tiny
    folder = _copy_fixture(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    m = bert.from_pretrained(folder)
    np.testing.assert_array_equal(m.graph.run(feeds, m.outputs.logits.value), outs["logits"])


def test_old_style_checkpoints_load(tiny, tmp_path):
    """gamma/beta LayerNorm names, a stored (equal) decoder weight and bias, the position_ids buffer."""
    model, feeds, outs = tiny

    def old(t):
        out = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in t.items()}  # fmt: skip
        out["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"].copy()
        out["cls.predictions.decoder.bias"] = t["cls.predictions.bias"].copy()
        out["bert.embeddings.position_ids"] = np.arange(40, dtype=np.int64)[None]
        return out

    folder = _edit(_copy_fixture(tmp_path), tensors=old)
    m = bert.from_pretrained(folder, labels=False)
    no_labels = {k: v for k, v in feeds.items() if k != "labels"}
    np.testing.assert_array_equal(m.graph.run(no_labels, m.outputs.logits.value), outs["logits"])


@pytest.mark.parametrize(
    "tensors, config, match",
    [
        (lambda t: {k: v for k, v in t.items() if k != "bert.encoder.layer.1.output.dense.bias"}, None,
         "tensor 'bert.encoder.layer.1.output.dense.bias' is missing"),
        (lambda t: t.update({"cls.seq_relationship.weight": np.zeros((2, 32), np.float32)}), None,
         "unexpected tensor 'cls.seq_relationship.weight'.*strict=False"),
        (lambda t: t.update({"bert.encoder.layer.0.intermediate.dense.weight": np.zeros((32, 64), np.float32)}), None,
         r"'bert.encoder.layer.0.intermediate.dense.weight' has shape \(32, 64\), config.json implies \(64, 32\)"),
        (lambda t: t.update({"cls.predictions.decoder.weight": t["bert.embeddings.word_embeddings.weight"] + 1}), None,
         "'cls.predictions.decoder.weight' differs from 'bert.embeddings.word_embeddings.weight'"),
        (None, lambda c: c.update({"hidden_act": "silu"}), "hidden_act 'silu' is not supported"),
        (None, lambda c: c.update({"position_embedding_type": "relative_key_query"}), "position_embedding_type"),
        (None, lambda c: c.update({"model_type": "distilbert"}), "model_type 'distilbert' is not 'bert'"),
        (None, lambda c: c.update({"architectures": ["BertForTokenClassification"]}), "BertForTokenClassification"),
        (None, lambda c: c.update({"num_hidden_layers": 3}), "'bert.encoder.layer.2.attention.self.query.weight' is"),
        (None, lambda c: c.update({"vocab_size": 97}), r"has shape \(96, 32\), config.json implies \(97, 32\)"),
    ],
    ids=["missing", "extra", "shape", "untied-decoder", "act", "position", "model_type", "arch", "layers", "vocab"],
)  # fmt: skip
def test_bad_checkpoints_are_refused_by_name(tmp_path, tensors, config, match):
    folder = _edit(_copy_fixture(tmp_path), tensors=tensors, config=config)
    with pytest.raises(ModelFileError, match=match):
        bert.from_pretrained(folder)


def test_extra_tensors_can_be_ignored_on_request(tmp_path):
    extra = {"cls.seq_relationship.bias": np.zeros(2, np.float32)}
    folder = _edit(_copy_fixture(tmp_path), tensors=lambda t: t.update(extra))
    m = bert.from_pretrained(folder, strict=False, labels=False, token_type_ids=False)
    assert m.ignored_tensors == ["cls.seq_relationship.bias"]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="not a folder"):
        bert.from_pretrained(tmp_path / "nowhere")
    folder = _copy_fixture(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match="model.safetensors: missing .found pytorch_model.bin"):
        bert.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFileError, match="config.json: missing"):
        bert.from_pretrained(folder)


def test_hidden_dropout_trains_and_is_off_at_inference(ref, tmp_path):
    """dropout=True: keep-mask placeholders after the embeddings and before each residual sum; feeds() fills
    ones (the fixture's numbers), the Trainer draws masks (its step loss differs from the evaluation loss)."""
    folder = _edit(_copy_fixture(tmp_path), config=lambda c: c.update({"hidden_dropout_prob": 0.3}))
    model = bert.from_pretrained(folder, dropout=True)
    keeps = [n for n in model.graph.placeholders if n.endswith("/keep")]
    assert len(keeps) == 1 + 2 * model.config.num_hidden_layers
    feeds = model.feeds(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"], ref["labels"])
    assert all(np.all(feeds[k] == 1.0) for k in keeps)
    logits, loss = model.graph.run(feeds, [model.outputs.logits.value, model.outputs.loss])
    v = valid(ref)
    np.testing.assert_allclose(logits[v], ref["logits"][v], rtol=0, atol=1e-5)
    trainer = Trainer(model.graph, model.outputs.loss, updater="sgd", lr=0.0)
    dropped = trainer.step(feeds, rng=np.random.default_rng(0))
    assert abs(dropped - float(loss)) > 1e-3  # a different function in training: dropout is on
    assert abs(float(model.graph.run(feeds, model.outputs.loss)) - float(loss)) < 1e-6  # lr 0: weights unchanged
    assert not bert.from_pretrained(FIXTURE, dropout=True).dropout  # the fixture's rate is 0: nothing built


def test_finetune_example_runs(tmp_path):
    """examples/bert_finetune.py end to end at a tiny size: trains, stays pad-invariant, saves, reloads."""
    import sys

    sys.path.insert(0, str(HERE.parent / "examples"))
    import bert_finetune

    model = _edit(_copy_fixture(tmp_path), config=lambda c: c.update({"hidden_dropout_prob": 0.1}))  # dropout on
    out = tmp_path / "out"
    res = bert_finetune.main(["--model", str(model), "--out", str(out), "--steps", "6", "--batch-size", "4",
                              "--no-progress"])  # fmt: skip
    assert res["steps"] == 6 and np.isfinite(res["loss_first_last"]).all()
    assert res["pad_invariance_max_drift"] < 1e-4
    assert res["reload_drift"] == {"transformers_folder": 0.0, "samediff_py_checkpoint": 0.0}
    assert sorted(p.name for p in (out / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "hf" / "config.json").read_text())["hidden_dropout_prob"] == 0.1
