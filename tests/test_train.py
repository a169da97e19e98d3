"""Training: honest loss, updaters against numpy references, dropout, callbacks, checkpoints, bad files, leaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samediff_py import Graph, _jvm, checkpoint, ops, train

W_TRUE = np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)


def regression_data(n: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x, "y": (x @ W_TRUE + 0.1).astype(np.float32)}


def mlp(seed: int = 0, hidden: int = 8, drop: float | None = None):
    g = Graph(seed=seed)
    x, y = g.placeholder("x", ("batch", 4)), g.placeholder("y", ("batch", 1))
    w1 = g.variable("w1", shape=(4, hidden))
    b1 = g.variable("b1", np.zeros(hidden, np.float32))
    w2 = g.variable("w2", shape=(hidden, 1))
    h = (x @ w1 + b1).relu()
    if drop is not None:
        h = train.dropout(h, drop, "drop")
    pred = ops.matmul(h, w2, name="pred")
    loss = ops.mean(ops.square(pred - y), name="loss")
    return g, loss


def linear(w0: np.ndarray):
    g = Graph(seed=0)
    x, y = g.placeholder("x", ("batch", 4)), g.placeholder("y", ("batch", 1))
    w = g.variable("w", w0)
    return g, ops.mean(ops.square(x @ w - y), name="loss")


def grad_linear(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (2.0 / len(x)) * x.T.astype(np.float64) @ (x.astype(np.float64) @ w - y)


# ---------------------------------------------------------------------------- honest loss
def test_step_loss_is_the_loss_before_the_update_and_decreases():
    g, loss = mlp()
    t = train.Trainer(g, loss, "adam", lr=0.01)
    data = regression_data()
    batches = [{k: v[i : i + 32] for k, v in data.items()} for i in range(0, 256, 32)]
    for b in batches:  # a separate evaluation pass on the same weights, then the training step
        before = float(g.run(b, loss))
        got = t.step(b)
        assert got == pytest.approx(before, rel=1e-6, abs=1e-7)
        assert float(g.run(b, loss)) != before  # the weights did change
    hist = t.fit(batches, epochs=15, progress=False)
    assert hist.steps == 15 * len(batches)
    assert hist.epoch_losses[-1] < 0.2 * hist.epoch_losses[0]
    assert hist.epoch_losses[0] == pytest.approx(np.mean(hist.step_losses[: len(batches)]), rel=1e-6)
    assert hist.steps_per_sec > 0 and hist.samples_per_sec == pytest.approx(32 * hist.steps_per_sec)


@pytest.mark.parametrize(
    "updater,kw",
    [("sgd", {}), ("adam", {"l2": 1e-3}), ("nesterov", {"weight_decay": 1e-2}), ("rmsprop", {"l2": 1e-2})],
)
def test_two_phase_step_equals_stock_fit_bit_for_bit(updater, kw):
    """Trainer.step computes loss + gradients, checks them, then applies the update itself (so a non-finite
    step changes nothing); it must do exactly what M2.1's own fit does (updates inside the backward pass)."""
    data = regression_data()
    batches = [{k: v[i : i + 32] for k, v in data.items()} for i in range(0, 128, 32)]
    runs = []
    for fused in (False, True):
        g, loss = mlp()
        t = train.Trainer(g, loss, updater, lr=0.01, **kw)
        losses = []
        for b in batches * 2:
            if fused:
                arrs = t._train_feeds(b, np.random.default_rng())
                shapes = [d for a in arrs for d in (a.ndim, *a.shape)]
                losses.append(
                    _jvm.jclass("samediffpy.Training").stepFused(t._session, [a.ctypes.data for a in arrs], shapes)
                )
            else:
                losses.append(t.step(b))
        runs.append((losses, {v.name: g.get_value(v) for v in g.trainable()}, t.iterations))
    (l1, w1, i1), (l2, w2, i2) = runs
    assert i1 == i2 == 8
    np.testing.assert_array_equal(l1, l2)
    for n in w1:
        np.testing.assert_array_equal(w1[n], w2[n], err_msg=n)


def test_epoch_loss_of_last_step_matches_evaluation_before_it():
    g, loss = mlp(seed=3)
    t = train.Trainer(g, loss, "sgd", lr=0.05)
    data = regression_data(64)
    full = float(train.evaluate(g, data, {"loss": loss})["loss"])
    hist = t.fit(data, epochs=1, batch_size=None, progress=False)  # one full batch
    assert hist.step_losses == [pytest.approx(full, rel=1e-6)]


# ---------------------------------------------------------------------------- updaters vs numpy
def _train_linear(updater: str, steps: int, **kw):
    w0 = np.random.default_rng(1).normal(size=(4, 1)).astype(np.float32)
    g, loss = linear(w0)
    t = train.Trainer(g, loss, updater, **kw)
    data = regression_data(32, seed=5)
    ws = [w0.astype(np.float64)]
    for _ in range(steps):
        t.step(data)
        ws.append(g.get_value("w").astype(np.float64))
    return data, ws


def test_sgd_with_l2_and_weight_decay_match_numpy():
    data, ws = _train_linear("sgd", 3, lr=0.1, l2=0.01)
    for a, b in zip(ws, ws[1:], strict=False):
        np.testing.assert_allclose(b, a - 0.1 * (grad_linear(a, data["x"], data["y"]) + 0.01 * a), rtol=1e-5, atol=1e-6)
    data, ws = _train_linear("sgd", 3, lr=0.1, weight_decay=0.5)
    for a, b in zip(ws, ws[1:], strict=False):
        np.testing.assert_allclose(
            b, a - 0.1 * grad_linear(a, data["x"], data["y"]) - 0.1 * 0.5 * a, rtol=1e-5, atol=1e-6
        )


def test_adam_matches_numpy():
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    data, ws = _train_linear("adam", 4, lr=lr, beta1=b1, beta2=b2, epsilon=eps)
    w, m, v = ws[0], 0.0, 0.0
    for t, got in enumerate(ws[1:]):
        g = grad_linear(w, data["x"], data["y"])
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        alpha = lr * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        w = w - alpha * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def test_nesterov_matches_numpy():
    lr, mu = 0.05, 0.9
    data, ws = _train_linear("nesterov", 4, lr=lr, momentum=mu)
    w, vel = ws[0], 0.0
    for got in ws[1:]:
        g = grad_linear(w, data["x"], data["y"])
        prev, vel = vel, mu * vel - lr * g
        w = w - (mu * prev - (1 + mu) * vel)
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def test_rmsprop_matches_numpy():
    lr, decay, eps = 0.01, 0.95, 1e-8
    data, ws = _train_linear("rmsprop", 4, lr=lr, rms_decay=decay, epsilon=eps)
    w, cache = ws[0], eps
    for got in ws[1:]:
        g = grad_linear(w, data["x"], data["y"])
        cache = decay * cache + (1 - decay) * g * g
        w = w - lr * g / (np.sqrt(cache) + eps)
        np.testing.assert_allclose(got, w, rtol=1e-3, atol=1e-5)


def test_learning_rate_schedule_changes_the_updates():
    sched = lambda step: 0.1 if step < 2 else 0.0  # noqa: E731
    data, ws = _train_linear("sgd", 4, lr=0.1, schedule=sched)
    np.testing.assert_allclose(ws[1], ws[0] - 0.1 * grad_linear(ws[0], data["x"], data["y"]), rtol=1e-5)
    assert not np.allclose(ws[2], ws[1])
    np.testing.assert_array_equal(ws[3], ws[2])  # lr 0 from step 2 on: frozen
    np.testing.assert_array_equal(ws[4], ws[2])


def test_bad_updater_and_non_scalar_loss():
    g, loss = mlp()
    with pytest.raises(ValueError, match="unknown updater"):
        train.Trainer(g, loss, "adagrad")
    with pytest.raises(ValueError, match="scalar"):
        train.Trainer(g, g["pred"])


def test_missing_placeholder_is_named():
    g, loss = mlp()
    t = train.Trainer(g, loss)
    with pytest.raises(KeyError, match="'y'"):
        t.fit({"x": regression_data()["x"]}, progress=False)


def test_one_shot_iterator_for_several_epochs_is_refused():
    g, loss = mlp()
    t = train.Trainer(g, loss)
    it = iter([regression_data(16)])
    with pytest.raises(ValueError, match="one-shot"):
        t.fit(it, epochs=2, progress=False)


# ---------------------------------------------------------------------------- dropout
def test_dropout_masks_are_bernoulli_scaled():
    g, _ = mlp(hidden=200, drop=0.3)
    masks = train._dropout_masks(g, ["drop/keep"], {"x": np.zeros((50, 4))}, np.random.default_rng(0))
    m = masks["drop/keep"]
    assert m.shape == (50, 200)
    np.testing.assert_allclose(np.unique(m), [0.0, 1 / 0.7], rtol=1e-6)
    assert abs((m == 0).mean() - 0.3) < 0.02
    ones = train._dropout_masks(g, ["drop/keep"], {"x": np.zeros((5, 4))}, None)["drop/keep"]
    np.testing.assert_array_equal(ones, np.ones((5, 200), np.float32))


def test_dropout_trains_and_is_off_in_evaluation():
    g, loss = mlp(hidden=32, drop=0.2)
    t = train.Trainer(g, loss, "adam", lr=0.01)
    data = regression_data()
    # training: masks differ between steps, so two lr=0 steps on one batch give different losses
    t.set_learning_rate(0.0)
    l1, l2 = t.step(data, np.random.default_rng(1)), t.step(data, np.random.default_rng(2))
    assert l1 != l2
    t.set_learning_rate(0.01)
    ev1 = t.evaluate(data)["loss"]
    assert ev1 == t.evaluate(data)["loss"]  # deterministic: dropout off
    # evaluation equals the network with the keep mask at ones, computed independently in numpy
    w1, b1, w2 = (g.get_value(n).astype(np.float64) for n in ("w1", "b1", "w2"))
    ref = np.mean((np.maximum(data["x"] @ w1 + b1, 0) @ w2 - data["y"]) ** 2)
    assert ev1 == pytest.approx(ref, rel=1e-4)
    hist = t.fit(data, epochs=30, batch_size=32, progress=False)
    assert t.evaluate(data)["loss"] < 0.1 * ev1
    assert hist.epoch_losses[-1] < 0.3 * hist.epoch_losses[0]


# ---------------------------------------------------------------------------- callbacks, progress, evaluate, predict
def test_callbacks_and_early_stopping():
    g, loss = mlp()
    t = train.Trainer(g, loss, "sgd", lr=0.0)  # lr 0: the loss never improves

    class Count(train.Callback):
        steps = 0
        epochs: list[int] = []

        def on_step_end(self, step, logs):
            Count.steps += 1
            assert set(logs) >= {"loss", "epoch", "lr"}

        def on_epoch_end(self, epoch, logs):
            Count.epochs.append(epoch)

    hist = t.fit(
        regression_data(64), epochs=50, batch_size=16, callbacks=[Count(), train.EarlyStopping(2)], progress=False
    )
    assert hist.stopped_early and len(hist.epoch_losses) == 3 == len(Count.epochs)
    assert Count.steps == hist.steps == 12


def test_progress_bar_only_when_asked(capfd):
    g, loss = mlp()
    t = train.Trainer(g, loss)
    t.fit(regression_data(64), epochs=1, batch_size=16, progress=False)
    assert "batch" not in capfd.readouterr().err
    t.fit(regression_data(64), epochs=1, batch_size=16, progress=True)
    err = capfd.readouterr().err
    assert "epoch 1/1" in err and "/4 [" in err
    t.fit(regression_data(64), epochs=1, batch_size=16)  # not a terminal under pytest: off
    assert "batch" not in capfd.readouterr().err


def test_evaluate_and_predict_in_batches_match_full_batch():
    g, loss = mlp(seed=7)
    data = regression_data(100)
    t = train.Trainer(g, loss)
    pred = t.predict(data, "pred", batch_size=32)
    full_pred, full_loss = g.run(data, [g["pred"], loss])
    np.testing.assert_allclose(pred, full_pred, rtol=1e-6)
    w1, b1, w2 = (g.get_value(n).astype(np.float64) for n in ("w1", "b1", "w2"))
    np.testing.assert_allclose(pred, np.maximum(data["x"] @ w1 + b1, 0) @ w2, rtol=1e-4, atol=1e-5)
    # a (numerator, denominator) metric is exact across uneven batches: mean abs error over rows with y > 0
    err = ops.sum(ops.multiply(ops.sqrt(ops.square(g["pred"] - g["y"])), ops.cast(g["y"] > 0.0, np.float32)))
    cnt = ops.sum(ops.cast(g["y"] > 0.0, np.float32))
    res = t.evaluate(data, batch_size=32, metrics={"mae_pos": (err, cnt)})
    assert res["loss"] == pytest.approx(float(full_loss), rel=1e-5)
    pos = data["y"][:, 0] > 0
    assert res["mae_pos"] == pytest.approx(float(np.abs(full_pred - data["y"])[pos].mean()), rel=1e-5)


# ---------------------------------------------------------------------------- save / load
def test_save_load_identical_outputs_metadata_and_training(tmp_path):
    g, loss = mlp(drop=0.1)
    g.meta["note"] = {"layout": "batch-major", "n": 3}
    data = regression_data(96)
    t = train.Trainer(g, loss, "adam", lr=0.01)
    t.fit(data, epochs=2, batch_size=32, progress=False)
    path = train.save(g, tmp_path / "model.sdz")
    assert [p.name for p in tmp_path.iterdir()] == ["model.sdz"]  # no temporary left behind

    g2 = train.load(path)
    assert sorted(g2.vars) == sorted(g.vars)
    for n, v in g.vars.items():
        assert (g2[n].kind, g2[n].shape, g2[n].dtype) == (v.kind, v.shape, v.dtype), n
    assert g2.placeholders == g.placeholders  # named dims ("batch") survive
    assert g2.meta["note"] == {"layout": "batch-major", "n": 3}
    assert g2.needed_placeholders([g2["loss"]]) == {"x", "y", "drop/keep"}
    feeds = train.feed_inference(g, data)
    np.testing.assert_array_equal(g2.run(feeds, "pred"), g.run(feeds, "pred"))

    t2 = train.Trainer.restore(g2)
    assert t2.iterations == t.iterations == 6 and t2.config == t.config
    batches = [{k: v[i : i + 32] for k, v in data.items()} for i in range(0, 96, 32)]
    a = t.fit(batches, epochs=2, progress=False, seed=4).step_losses
    b = t2.fit(batches, epochs=2, progress=False, seed=4).step_losses
    assert a == b  # same dropout draws, same weights, same Adam state: bit-identical continuation

    # without updater state the continuation differs after the first step (Adam restarts): the test can fail
    g3 = train.load(path, updater_state=False)
    t3 = train.Trainer(g3, "loss", "adam", lr=0.01)
    c = t3.fit(batches[:2], epochs=1, progress=False, seed=4).step_losses
    g4 = train.load(path)
    d = train.Trainer.restore(g4).fit(batches[:2], epochs=1, progress=False, seed=4).step_losses
    assert c[0] == d[0] and c[1] != d[1]


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    g, loss = mlp()
    path = train.save(g, tmp_path / "ckpt.sdz")
    before = path.read_bytes()
    g.set_value("w2", np.ones((8, 1), np.float32))

    real = checkpoint._training()

    class Dying:  # writes half a file, then the process "dies" (an exception) before the rename
        def __getattr__(self, name):
            return getattr(real, name)

        def writeModel(self, sd, tmp, upd, meta):
            Path(tmp).write_bytes(before[: len(before) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_training", lambda: Dying())
    with pytest.raises(KeyboardInterrupt):
        train.save(g, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.sdz"]
    g.meta["bad"] = object()
    with pytest.raises(TypeError, match="JSON"):
        train.save(g, path)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(train.load(path).get_value("w2"), mlp()[0].get_value("w2"))


def test_bad_model_files_raise_clear_errors(tmp_path):
    g, _ = mlp()
    good = train.save(g, tmp_path / "good.sdz").read_bytes()
    cases = {
        "missing": None,
        "empty": b"",
        "text": b"this is not a model at all\n" * 10,
        "npy": None,
        "random": np.random.default_rng(0).bytes(5000),
    }
    for frac in (0.1, 0.5, 0.9, 0.99):
        cases[f"trunc{frac}"] = good[: int(len(good) * frac)]
    flipped = bytearray(good)
    flipped[4:64] = b"\xff" * 60
    cases["corrupt_header"] = bytes(flipped)
    for name, content in cases.items():
        p = tmp_path / name
        if name == "npy":
            np.save(p, np.arange(1000.0))
            p = tmp_path / "npy.npy"
        elif content is not None:
            p.write_bytes(content)
        with pytest.raises(train.ModelFileError) as e:
            train.load(p)
            pytest.fail(f"{name} loaded")
        assert str(p) in str(e.value) and e.value.reason, name
    with pytest.raises(train.ModelFileError, match="not a regular file"):
        train.load(tmp_path)
    with pytest.raises(train.ModelFileError, match="does not exist"):
        train.save(g, tmp_path / "no" / "such" / "dir.sdz")
    # the JVM is still fine
    assert g.run(regression_data(2), "pred").shape == (2, 1)


def test_export_import_weights(tmp_path):
    g, loss = mlp(seed=1)
    files = train.export_weights(g, tmp_path / "w")
    assert sorted(f.name for f in files) == ["b1.npy", "w1.npy", "w2.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "w" / "w1.npy"), g.get_value("w1"))
    g2, _ = mlp(seed=2)
    assert not np.array_equal(g2.get_value("w1"), g.get_value("w1"))
    assert sorted(train.import_weights(g2, tmp_path / "w")) == ["b1", "w1", "w2"]
    data = regression_data(8)
    np.testing.assert_array_equal(g2.run(data, "pred"), g.run(data, "pred"))
    (tmp_path / "w" / "w2.npy").unlink()
    with pytest.raises(ValueError, match="missing \\['w2'\\]"):
        train.import_weights(g2, tmp_path / "w")


def test_export_import_weights_as_one_safetensors_file(tmp_path):
    import safetensors.numpy

    g, _ = mlp(seed=1)
    (path,) = train.export_weights(g, tmp_path / "model.safetensors")
    stored = safetensors.numpy.load_file(str(path))  # the ecosystem's reader, not ours
    assert sorted(stored) == ["b1", "w1", "w2"]
    for n, a in stored.items():
        np.testing.assert_array_equal(a, g.get_value(n))
    g2, _ = mlp(seed=2)
    assert sorted(train.import_weights(g2, path)) == ["b1", "w1", "w2"]
    data = regression_data(8)
    np.testing.assert_array_equal(g2.run(data, "pred"), g.run(data, "pred"))
    safetensors.numpy.save_file({**stored, "w1": stored["w1"][:2]}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="'w1' has shape \\(2, 8\\)"):
        train.import_weights(g2, tmp_path / "bad.safetensors")
    safetensors.numpy.save_file({**stored, "extra": stored["b1"]}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match="unknown \\['extra'\\]"):
        train.import_weights(g2, tmp_path / "extra.safetensors")
    assert sorted(train.import_weights(g2, tmp_path / "extra.safetensors", strict=False)) == ["b1", "w1", "w2"]
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(train.ModelFileError, match="not a readable .safetensors"):
        train.import_weights(g2, tmp_path / "junk.safetensors")


# ---------------------------------------------------------------------------- the file is a real DL4J model
def _java_cp() -> str:
    jars = _jvm.jar_dir()
    return os.pathsep.join([str(jars / "classes"), *sorted(str(p) for p in jars.glob("*.jar"))])


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK (javac)")
def test_plain_java_program_runs_the_saved_model(tmp_path):
    g, loss = mlp(seed=11)
    data = regression_data(64)
    train.Trainer(g, loss, "adam", lr=0.01).fit(data, epochs=3, batch_size=16, progress=False)
    model = train.save(g, tmp_path / "m.sdz")
    x = regression_data(10, seed=9)["x"]
    np.save(tmp_path / "x.npy", x)
    src = Path(__file__).parent / "java" / "RunSaved.java"
    classes = tmp_path / "classes"
    cp = _java_cp()
    subprocess.run(["javac", "-nowarn", "-d", str(classes), "-cp", cp, str(src)], check=True, capture_output=True)
    out = subprocess.run(
        [
            "java",
            "-cp",
            f"{classes}{os.pathsep}{cp}",
            "RunSaved",
            str(model),
            str(tmp_path),
            "pred",
            f"x={tmp_path / 'x.npy'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    java = np.load(tmp_path / "pred.npy")
    py = g.run({"x": x}, "pred")
    assert java.shape == py.shape == (10, 1)
    np.testing.assert_allclose(java, py, rtol=1e-6, atol=1e-7)
    w1, b1, w2 = (g.get_value(n).astype(np.float64) for n in ("w1", "b1", "w2"))
    np.testing.assert_allclose(java, np.maximum(x @ w1 + b1, 0) @ w2, rtol=1e-4, atol=1e-5)


def test_encoder_checkpoint_loads_in_python_and_java_and_resumes_identically(tmp_path):
    """The MLM encoder (gather embedding, attention, fused layer norm, rank-3 matmuls, the loss and accuracy
    over the counted rows: Where, gathers, the sparse cross-entropy; the masks' zeroing, divide_no_nan with
    samediff_py's marker argument) through save/load: it trains on in
    Python exactly as the original does, and a plain Java program WITHOUT samediff_py's classes on its
    classpath (stock DL4J op classes only) loads the file and computes the same logits, loss and accuracy.
    M2.1's loader wires auto-named ops to same-named variables unless op names match their outputs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import mlm_padding as M

    m = M.build(M.VARIANTS[0])
    ops_in_graph = {op.getOp().opName() for op in m.graph.sd.getOps().values().toArray()}
    assert {"gather", "Where", "sparse_softmax_cross_entropy_loss_with_logits", "divide_no_nan"} <= ops_in_graph
    batches = list(M.batches(seed=3, steps=3, batch=8))
    trainer = train.Trainer(m.graph, m.loss, "adam", lr=3e-3)
    trainer.step(batches[0])
    path = train.save(m.graph, tmp_path / "mlm.sdz")
    g2 = train.load(path)
    fd = batches[1]
    outs = [m.logits.value.name, m.loss.name, m.accuracy.name]
    loaded = g2.run(fd, outs)
    for a, b in zip(loaded, m.graph.run(fd, outs)):
        np.testing.assert_array_equal(a, b)
    resumed = train.Trainer.restore(g2)
    assert [resumed.step(b) for b in batches[1:]] == [trainer.step(b) for b in batches[1:]]

    for k in ("tokens", "mask", "labels"):
        np.save(tmp_path / f"{k}.npy", fd[k])
    classes = tmp_path / "classes"
    cp = os.pathsep.join(sorted(str(p) for p in _jvm.jar_dir().glob("*.jar")))  # DL4J's jars, not samediffpy
    src = Path(__file__).parent / "java" / "RunSaved.java"
    subprocess.run(["javac", "-nowarn", "-d", str(classes), "-cp", cp, str(src)], check=True, capture_output=True)
    out = subprocess.run(
        ["java", "-cp", f"{classes}{os.pathsep}{cp}", "RunSaved", str(path), str(tmp_path), ",".join(outs),
         *(f"{k}={tmp_path / (k + '.npy')}" for k in ("tokens", "mask", "labels"))],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for name, py in zip(outs, loaded):
        java = np.load(tmp_path / (name.replace("/", "__") + ".npy"))
        np.testing.assert_allclose(java, py, rtol=1e-5, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------- soak: no native leak per step
def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


SOAK = """
import sys, time
import numpy as np
sys.path.insert(0, {tests!r})
from test_train import mlp, regression_data, _rss_kb
from samediff_py import train
g, loss = mlp(hidden=512, drop=0.1)
t = train.Trainer(g, loss, "adam", lr=1e-4)
data = regression_data(256)
batches = [{{k: v[i : i + 64] for k, v in data.items()}} for i in range(0, 256, 64)]
t0 = time.perf_counter()
for k in range(80):  # 80 x 100 steps
    hist = t.fit(batches, epochs=25, progress=False)
    assert np.isfinite(hist.step_losses).all()
    print(_rss_kb(), flush=True)
print("time", time.perf_counter() - t0)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")
def test_soak_resident_memory_stops_growing():
    """8000 training steps in a fresh process whose JVM heap is capped (256 MB), so the heap cannot inflate
    RSS by growing lazily towards -Xmx (the default 4 GB heap does, without leaking: live heap stays flat).
    What RSS does after warm-up is then native memory: nd4j buffers, javacpp pointers, numpy.

    RSS is a sawtooth (it drops at each paced collection, ~1 s apart: SessionMemory.paceCollections, and
    single samples differ by up to ~80 MB), so it is sampled every 100 steps and the trend of steps 3000-8000
    is fitted by least squares."""
    env = {**os.environ, "SAMEDIFF_PY_HEAP": "256m", "OMP_NUM_THREADS": "1"}
    code = SOAK.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    rss = np.array([int(x) / 1024 for x in lines[:80]])
    secs = float(lines[-1])
    steps = np.arange(30, 80) * 100.0
    growth = np.polyfit(steps, rss[30:80], 1)[0] * 5000  # MB over the 5000 steps, by the fitted slope
    print(f"\nsoak: 8000 steps, {8000 / secs:.0f} steps/s; RSS (MB) every 1000 steps: {rss[::10].round()}; "
          f"fitted growth over steps 3000-8000: {growth:+.1f} MB")  # fmt: skip
    # allocators and the JIT settle during the first thousands of steps, and the sawtooth tilts the fit by
    # up to ~35 MB (measured over 8 runs: -33 to +27); a leak of one 64x512 float activation (or its dropout
    # mask) per step would add 5000 * 128 KiB = 625 MB, so a 100 MB bound separates the two by 6x
    assert growth < 100, f"RSS grows {growth:.0f} MB over steps 3000-8000: {rss.round()}"


@pytest.mark.parametrize("updater", ["sgd", "adam"])
def test_a_step_split_in_two_calls_equals_step_bit_for_bit(updater):
    """compute_gradients + apply_gradients (what a data-parallel worker does around its allreduce) must be
    exactly Trainer.step: same losses, same weights, same updater state, same iteration count."""
    data = regression_data()
    batches = [{k: v[i : i + 32] for k, v in data.items()} for i in range(0, 128, 32)]
    runs = []
    for split in (False, True):
        g, loss = mlp()
        t = train.Trainer(g, loss, updater, lr=0.01, l2=1e-3)
        losses = []
        for b in batches * 3:
            if split:
                value, flat, weight = t.compute_gradients(b)
                assert flat.shape == (t.flat_size,) and flat.dtype == np.float32 and weight == 32
                assert t.apply_gradients(flat)
                losses.append(value)
            else:
                losses.append(t.step(b))
        runs.append((losses, {v.name: g.get_value(v) for v in g.trainable()}, t.iterations))
    (l1, w1, i1), (l2, w2, i2) = runs
    assert i1 == i2 == 12
    np.testing.assert_array_equal(l1, l2)
    for n in w1:
        np.testing.assert_array_equal(w1[n], w2[n], err_msg=n)


def test_apply_gradients_follows_the_learning_rate_schedule_like_step():
    """apply_gradients ignored the schedule (step applies it): data-parallel training with a schedule trained at
    the first learning rate throughout."""
    data = regression_data()
    batches = [{k: v[i : i + 32] for k, v in data.items()} for i in range(0, 128, 32)]
    runs = []
    for split in (False, True):
        g, loss = mlp()
        t = train.Trainer(g, loss, "sgd", lr=0.1, schedule=lambda step: 0.1 / (1 + step))
        for b in batches:
            if split:
                t.apply_gradients(t.compute_gradients(b)[1])
            else:
                t.step(b)
        runs.append(({v.name: g.get_value(v) for v in g.trainable()}, t.learning_rate))
    (w1, lr1), (w2, lr2) = runs
    assert lr1 == lr2 == pytest.approx(0.1 / 4)
    for n in w1:
        np.testing.assert_array_equal(w1[n], w2[n], err_msg=n)


def test_flat_gradient_order_matches_params_and_graph_gradients():
    g, loss = mlp()
    t = train.Trainer(g, loss, "sgd", lr=0.1)
    b = {k: v[:16] for k, v in regression_data().items()}
    _, flat, _ = t.compute_gradients(b)
    ref = g.gradients(b, loss)
    np.testing.assert_allclose(flat, np.concatenate([ref[n].ravel() for n in t.params]), rtol=1e-6, atol=1e-7)
    before = {n: g.get_value(n) for n in t.params}
    t.apply_gradients(flat * 0.0 + 1.0)  # a gradient of ones: SGD moves every weight by exactly -lr
    for n in t.params:
        np.testing.assert_allclose(g.get_value(n), before[n] - 0.1, rtol=1e-6)


def test_set_value_while_a_trainer_is_live_keeps_the_next_update():
    """set_value replaced the variable's array object: the next Trainer.step's update went to the old one
    (update norm 0). It writes in place now, so checkpoint restore and parameter averaging are safe."""
    g, loss = mlp()
    t = train.Trainer(g, loss, "sgd", lr=0.1)
    b = {k: v[:16] for k, v in regression_data().items()}
    t.step(b)
    new = {n: np.full_like(g.get_value(n), 0.05) for n in t.params}
    for n, v in new.items():
        g.set_value(n, v)
    grads = g.gradients(b, loss)
    t.step(b)
    for n, v in new.items():
        np.testing.assert_allclose(g.get_value(n), v - 0.1 * grads[n], rtol=1e-5, atol=1e-7)
