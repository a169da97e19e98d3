"""Nothing lost, nothing crashes: checkpoints, empty feeds, signals, contracts after load, training that goes
wrong, files that cannot be written. Every test here reproduces a failure seen before its fix (issue 9);
the ones that used to kill the interpreter run in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import reference as R

from samediff_py import FeedError, Graph, MaskError, ModelFileError, TrainingError, _jvm, checkpoint, masked, ops
from samediff_py.masked import Masked
from samediff_py.models import Encoder, EncoderConfig
from samediff_py.train import Trainer

ROOT = Path(__file__).resolve().parent.parent


def regression_data(n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x, "y": (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)).astype(np.float32)}


def mlp(seed: int = 0):
    g = Graph(seed=seed)
    x, y = g.placeholder("x", ("batch", 4)), g.placeholder("y", ("batch", 1))
    h = (x @ g.variable("w1", shape=(4, 8)) + g.variable("b1", np.zeros(8, np.float32))).relu()
    return g, ops.mean(ops.square(ops.matmul(h, g.variable("w2", shape=(8, 1))) - y), name="loss")


def weights(g: Graph) -> dict[str, np.ndarray]:
    return {v.name: g.get_value(v) for v in g.trainable()}


def run_child(code: str, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (its own JVM); returns the completed process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **popen,
    )


# ================================================================================ checkpoints
def test_resume_flow_keeps_every_checkpoint_loadable(tmp_path):
    """save -> load -> Trainer.restore -> fit -> save (metadata grows each time): the second save used to
    write the new length over the old buffer (garbage JSON), replace the good file, and fail to load."""
    path = tmp_path / "ckpt.sdz"
    g, loss = mlp()
    Trainer(g, loss, "adam", lr=0.01).fit(regression_data(), epochs=1, batch_size=16, progress=False)
    checkpoint.save(g, path)
    for round_ in range(3):
        g = checkpoint.load(path)
        t = Trainer.restore(g)
        t.fit(regression_data(seed=round_), epochs=1, batch_size=16, progress=False)
        g.meta["notes"] = "resumed " * (1000 * (round_ + 1))  # longer metadata every time
        checkpoint.save(g, path)
        back = checkpoint.load(path)
        assert back.meta["notes"] == g.meta["notes"] and Trainer.restore(back).iterations == t.iterations
        for n, w in weights(g).items():
            np.testing.assert_array_equal(back.get_value(n), w)
    # save, then a Trainer (its config enters the metadata), then save again
    g, loss = mlp()
    checkpoint.save(g, path)
    Trainer(g, loss, "sgd", lr=0.1)
    checkpoint.save(g, path)
    assert checkpoint.load(path).meta["train.trainer"]["updater"] == "sgd"


def test_deep_encoder_resume_with_20kb_more_metadata(tmp_path):
    """The resume of a 12-block encoder with ~20 KB more metadata segfaulted inside the save."""
    g = Graph(seed=0)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask")
    enc = Encoder(g, EncoderConfig(vocab=12, d_model=8, heads=2, d_ff=8, layers=12, max_len=8))
    loss = masked.softmax_cross_entropy(enc(tokens, mask), labels)
    rng = np.random.default_rng(0)
    batch = {
        "tokens": rng.integers(1, 12, (2, 6)).astype(np.int32),
        "labels": rng.integers(0, 12, (2, 6)).astype(np.int32),
        "mask": masked.mask_from_lengths([6, 4], 6),
    }
    Trainer(g, loss, "adam", lr=1e-3).step(batch)
    path = tmp_path / "enc.sdz"
    checkpoint.save(g, path)
    g2 = checkpoint.load(path)
    t2 = Trainer.restore(g2)
    t2.step(batch)
    g2.meta["history"] = [float(i) for i in range(2500)]  # ~20 KB of JSON
    checkpoint.save(g2, path)
    g3 = checkpoint.load(path)
    assert len(g3.meta["history"]) == 2500 and Trainer.restore(g3).iterations == 2
    np.testing.assert_array_equal(g3.run(batch, loss.name), g2.run(batch, loss.name))


@pytest.mark.parametrize("damage", ["flip", "truncate", "metadata"])
def test_a_save_that_writes_a_bad_file_never_replaces_the_good_one(tmp_path, monkeypatch, damage):
    g, _ = mlp()
    path = checkpoint.save(g, tmp_path / "ckpt.sdz")
    good = path.read_bytes()
    g.set_value("w2", np.full((8, 1), 7.0, np.float32))
    real = checkpoint._training()

    class Faulty:  # the writer "succeeds" but what is on disk is not what was meant
        def __getattr__(self, name):
            return getattr(real, name)

        def writeModel(self, sd, tmp, upd, meta):
            if damage == "metadata":
                real.writeModel(sd, tmp, upd, meta.replace("samediff_py/1", "samediff_py/1 "))
                return
            real.writeModel(sd, tmp, upd, meta)
            data = bytearray(Path(tmp).read_bytes())
            if damage == "flip":
                data[len(data) // 2] ^= 0xFF
            else:
                data = data[: len(data) - 100]
            Path(tmp).write_bytes(bytes(data))

    monkeypatch.setattr(checkpoint, "_training", lambda: Faulty())
    with pytest.raises(ModelFileError, match="corrupt|verification failed"):
        checkpoint.save(g, path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.sdz"]  # the bad temporary file is gone


def test_stray_temp_files_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    g, _ = mlp()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stray = tmp_path / f".ckpt.sdz.{int(dead.stdout)}.x1y2.tmp"
    stray.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".ckpt.sdz.{os.getppid()}.a1b2.tmp"  # another live process may be saving right now
    alive.write_bytes(b"in flight")
    checkpoint.save(g, tmp_path / "ckpt.sdz")
    assert not stray.exists() and alive.exists()


def test_changed_bytes_are_refused_on_load(tmp_path):
    """Three flipped bytes used to load silently with different outputs in 16 of 30 trials."""
    g, _ = mlp()
    path = checkpoint.save(g, tmp_path / "ckpt.sdz")
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(30):
        data = bytearray(good)
        for i in rng.choice(len(data), 3, replace=False):
            data[i] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        with pytest.raises(ModelFileError):
            checkpoint.load(path)
    for data in (good[:-1], good + b"\0", good[: len(good) // 2]):
        path.write_bytes(data)
        with pytest.raises(ModelFileError, match="corrupt|not a"):
            checkpoint.load(path)


def test_plain_samediff_files_without_a_footer_still_load(tmp_path):
    g, _ = mlp()
    path = tmp_path / "plain.fb"
    with _jvm.java_errors():
        g.sd.save(_jvm.jclass("java.io.File")(str(path)), False)  # DL4J's own writer: no samediff_py footer
    back = checkpoint.load(path)
    np.testing.assert_array_equal(back.get_value("w1"), g.get_value("w1"))


# ================================================================================ empty feeds
def test_empty_batches_are_refused_in_python_not_a_crash():
    """Batch 0 or time 0 through an embedding (one_hot or gather) was a SIGSEGV in libnd4j; batch 0 through an
    MLP training step an obscure matmul_bp error. Run in a child: a crash must not take pytest down."""
    r = run_child(
        """
        import numpy as np
        from samediff_py import FeedError, Graph, masked, ops
        from samediff_py.train import Trainer
        g = Graph()
        tokens = g.placeholder("tokens", ("batch", "time"), "int32")
        emb = g.variable("emb", shape=(10, 4))
        out = ops.sum(ops.embedding(tokens, emb))
        oh = ops.sum(ops.one_hot(tokens, 10))
        for shape in [(0, 5), (3, 0), (0, 0)]:
            for o in (out, oh):
                try:
                    g.run({"tokens": np.zeros(shape, np.int32)}, o)
                    raise SystemExit("no error for " + str(shape))
                except FeedError as e:
                    assert "tokens" in str(e) and "empty" in str(e), e
        g2 = Graph()
        x, y = g2.placeholder("x", ("batch", 4)), g2.placeholder("y", ("batch", 1))
        loss = ops.mean(ops.square(ops.matmul(x, g2.variable("w", shape=(4, 1))) - y))
        t = Trainer(g2, loss, "sgd", lr=0.1)
        try:
            t.step({"x": np.zeros((0, 4), np.float32), "y": np.zeros((0, 1), np.float32)})
            raise SystemExit("no error for an empty training batch")
        except FeedError as e:
            assert "empty feed" in str(e)
        print("OK")
        """
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), (r.returncode, r.stdout[-500:], r.stderr[-2000:])


def test_fit_evaluate_predict_on_no_data_say_so():
    g, loss = mlp()
    t = Trainer(g, loss, "sgd", lr=0.1)
    empty = {"x": np.zeros((0, 4), np.float32), "y": np.zeros((0, 1), np.float32)}
    with pytest.raises(ValueError, match="fit: epoch 0 had no usable batch"):
        t.fit(empty, progress=False)
    with pytest.raises(ValueError, match="predict: no data"):
        t.predict([], "loss")
    with pytest.raises(ValueError, match="evaluate: no data"):
        t.evaluate([])


# ================================================================================ signals
INTERRUPTED_FIT = """
    import atexit, sys, numpy as np
    sys.path.insert(0, "tests")
    from test_reliability import mlp, regression_data
    from samediff_py.train import Trainer
    atexit.register(lambda: print("ATEXIT", flush=True))
    data = regression_data(256)
    batches = [{k: v[i : i + 16] for k, v in data.items()} for i in range(0, 256, 16)]
    g, loss = mlp()
    t = Trainer(g, loss, "adam", lr=0.01)
    print("TRAINING", flush=True)
    try:
        t.fit(batches, epochs=100000, shuffle=False, progress=False)
    except KeyboardInterrupt:
        done = t.iterations
        print("INTERRUPTED", done, flush=True)
    # the interrupted model equals a fresh one trained for exactly `done` steps, updater state included:
    # both continue identically for 5 more steps
    ref_g, ref_loss = mlp()
    ref = Trainer(ref_g, ref_loss, "adam", lr=0.01)
    for i in range(done):
        ref.step(batches[i % len(batches)])
    for n in [v.name for v in g.trainable()]:
        assert np.array_equal(g.get_value(n), ref_g.get_value(n)), n
    for i in range(done, done + 5):
        assert t.step(batches[i % len(batches)]) == ref.step(batches[i % len(batches)])
    for n in [v.name for v in g.trainable()]:
        assert np.array_equal(g.get_value(n), ref_g.get_value(n)), n
    print("CONSISTENT", flush=True)
"""


def _start_child(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _wait_for(proc: subprocess.Popen, word: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if word in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before {word!r}: {proc.stderr.read()[-2000:]}")
    raise AssertionError(f"child did not print {word!r} in {timeout} s")


def test_ctrl_c_interrupts_fit_between_steps_and_leaves_a_consistent_model():
    """With the JVM's own SIGINT handler, Ctrl-C exited the process with 130 (no KeyboardInterrupt, no finally,
    no atexit); a notebook kernel died. Under -Xrs it is a KeyboardInterrupt between steps."""
    proc = _start_child(INTERRUPTED_FIT)
    try:
        _wait_for(proc, "TRAINING")
        time.sleep(1.0 + np.random.default_rng().random())  # some steps into fit, at a random moment
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, (proc.returncode, out[-500:], err[-2000:])
    assert "INTERRUPTED" in out and "CONSISTENT" in out and "ATEXIT" in out


SIGTERM_SAVE = """
    import signal, sys, numpy as np
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))  # installed BEFORE the first graph
    sys.path.insert(0, "tests")
    from test_reliability import mlp, regression_data
    from samediff_py import checkpoint
    from samediff_py.train import Trainer
    g, loss = mlp()
    t = Trainer(g, loss, "sgd", lr=0.01)
    data = regression_data(256)
    print("TRAINING", flush=True)
    while not stop:
        t.fit(data, batch_size=16, progress=False)
    checkpoint.save(g, sys.argv[1])
    print("SAVED", t.iterations, flush=True)
"""


def test_sigterm_handler_set_before_the_first_graph_is_kept_and_can_save(tmp_path):
    path = tmp_path / "on_sigterm.sdz"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SIGTERM_SAVE), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        _wait_for(proc, "TRAINING")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, (proc.returncode, out[-500:], err[-2000:])
    steps = int(out.split("SAVED")[1].split()[0])
    g = checkpoint.load(path)
    assert Trainer.restore(g).iterations == steps > 0


# ================================================================================ contracts after load
def test_feed_contracts_are_saved_with_the_model(tmp_path):
    """After load, label ranges, the encoder's max_len, ids outside the table and mask polarity were no longer
    checked (a label 7 with 4 classes gave loss 0.693). Contracts are data in the metadata now."""
    g = Graph(seed=0)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0)
    enc = Encoder(g, EncoderConfig(vocab=4, d_model=8, heads=2, d_ff=8, layers=1, max_len=6))
    loss = masked.softmax_cross_entropy(enc(tokens, mask), labels)
    ok = {"tokens": np.array([[1, 2, 3, 0]], np.int32), "labels": np.array([[1, 2, 3, -1]], np.int32)}
    ok["mask"] = masked.mask_from_lengths([3], 4)
    bad = {
        "label 7": ({**ok, "labels": np.array([[1, 7, 3, -1]], np.int32)}, FeedError, "label 7 .* outside \\[0, 4\\)"),
        "id 9": ({**ok, "tokens": np.array([[1, 9, 3, 0]], np.int32)}, FeedError, "id 9 at \\(0, 1\\)"),
        "too long": (
            {
                "tokens": np.array([[1, 2, 3, 1, 2, 3, 1, 0]], np.int32),
                "labels": np.array([[1, 2, 3, 1, 2, 3, 1, -1]], np.int32),
                "mask": masked.mask_from_lengths([7], 8),
            },
            FeedError,
            "size 8 on axis 1 exceeds 6",
        ),
        "inverted": ({**ok, "mask": 1 - ok["mask"]}, MaskError, "inverted"),
    }
    path = checkpoint.save(g, tmp_path / "m.sdz")
    g2 = checkpoint.load(path)
    for gr in (g, g2):
        assert np.isfinite(gr.run(ok, loss.name))
        for what, (feeds, err, pattern) in bad.items():
            with pytest.raises(err, match=pattern):
                gr.run(feeds, loss.name)
            if what == "label 7":
                with pytest.raises(err, match=pattern):
                    Trainer(gr, loss.name, "sgd", lr=0.1).step(feeds)


def test_user_names_may_not_shadow_the_metadata():
    g = Graph()
    for name in ("samediff_py.meta", "samediff_py"):
        with pytest.raises(ValueError, match="reserved"):
            g.variable(name, np.zeros(2))
    with pytest.raises(ValueError, match="reserved"), g.scope("samediff_py.meta"):
        pass


# ================================================================================ training that goes wrong
def test_a_non_finite_step_stops_fit_and_changes_nothing():
    g, loss = mlp()
    t = Trainer(g, loss, "adam", lr=0.01)
    data = regression_data()
    t.fit(data, batch_size=16, shuffle=False, progress=False)
    before, steps = weights(g), t.iterations
    poisoned = {k: v.copy() for k, v in data.items()}
    poisoned["x"][20, 1] = np.nan  # in the second batch
    with pytest.raises(TrainingError, match=f"training step {steps + 1}: the loss is not finite"):
        t.fit(poisoned, batch_size=16, shuffle=False, progress=False)
    assert t.iterations == steps + 1  # the first batch trained, the poisoned one did not
    t2_g, t2_loss = mlp()  # the same model trained on the clean batches only agrees exactly
    t2 = Trainer(t2_g, t2_loss, "adam", lr=0.01)
    t2.fit(data, batch_size=16, shuffle=False, progress=False)
    t2.step({k: v[:16] for k, v in data.items()})
    for n, w in weights(t2_g).items():
        np.testing.assert_array_equal(g.get_value(n), w)
    assert any(not np.array_equal(g.get_value(n), w) for n, w in before.items())
    hist = t.fit(poisoned, batch_size=16, shuffle=False, progress=False, on_nonfinite="skip")
    assert t.iterations == steps + 1 + 3 and all(np.isfinite(hist.step_losses))  # 4 batches, one skipped


def test_save_refuses_non_finite_weights_unless_forced(tmp_path):
    g, _ = mlp()
    g.set_value("w2", np.full((8, 1), np.nan, np.float32))
    with pytest.raises(ModelFileError, match="'w2' holds NaN"):
        checkpoint.save(g, tmp_path / "nan.sdz")
    assert not (tmp_path / "nan.sdz").exists()
    checkpoint.save(g, tmp_path / "nan.sdz", force=True)
    assert np.isnan(checkpoint.load(tmp_path / "nan.sdz").get_value("w2")).all()


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"lr": -0.1}, "lr must be >= 0"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"beta1": 1.0}, "beta1 must be in \\[0, 1\\)"),
        ({"beta2": -0.1}, "beta2 must be in \\[0, 1\\)"),
        ({"epsilon": 0.0}, "epsilon must be > 0"),
        ({"l2": -1e-3}, "l2 must be >= 0"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number"),
        ({"momentum": 1.5}, "momentum must be in \\[0, 1\\)"),
    ],
)
def test_invalid_hyperparameters_are_refused(kw, pattern):
    g, loss = mlp()
    with pytest.raises(ValueError, match=pattern):
        Trainer(g, loss, "adam", **kw)


def test_adam_with_learning_rate_zero_leaves_the_weights_alone():
    """M2.1's fit moves weights with Adam at lr 0 (epsilon-sized steps); the two-phase step does not."""
    data = {k: v[:16] for k, v in regression_data().items()}
    g, loss = mlp()
    t = Trainer(g, loss, "adam", lr=0.0)
    before = weights(g)
    for _ in range(3):
        t.step(data)
    for n, w in before.items():
        np.testing.assert_array_equal(g.get_value(n), w)
    assert t.iterations == 3
    g2, loss2 = mlp()  # what M2.1's own fit does, for the record
    t2 = Trainer(g2, loss2, "adam", lr=0.0)
    arrs = t2._train_feeds(data, np.random.default_rng())
    shapes = [d for a in arrs for d in (a.ndim, *a.shape)]
    _jvm.jclass("samediffpy.Training").stepFused(t2._session, [a.ctypes.data for a in arrs], shapes)
    assert any(not np.array_equal(g2.get_value(n), w) for n, w in before.items())


def test_a_new_trainer_really_uses_its_own_updater_and_saves_a_loadable_file(tmp_path):
    """Adam then SGD: M2.1 kept Adam's updaters (training went on with Adam) and saved Adam's state under the
    SGD config, a file load() refused ("SGD updater does not have any updater state")."""
    data = {k: v[:16] for k, v in regression_data().items()}
    g, loss = mlp()
    Trainer(g, loss, "adam", lr=0.01).fit(data, epochs=3, progress=False)
    sgd = Trainer(g, loss, "sgd", lr=0.1)
    before = weights(g)
    grads = g.gradients(data, loss)
    sgd.step(data)
    for n, w in before.items():  # plain SGD: w - lr * grad, nothing of Adam left
        np.testing.assert_allclose(g.get_value(n), w - 0.1 * grads[n], rtol=1e-5, atol=1e-6)
    path = checkpoint.save(g, tmp_path / "sgd.sdz")
    g2 = checkpoint.load(path)
    assert Trainer.restore(g2).iterations == 1  # a new Trainer counts (and schedules) from 0
    assert g2.meta["train.trainer"]["updater"] == "sgd"


# ================================================================================ files that cannot be written
def test_a_full_disk_gives_model_file_error_with_the_os_reason(tmp_path):
    """A real write failure in the middle of a save (a file-size limit: EFBIG), in a child process."""
    r = run_child(
        f"""
        import resource, signal, sys
        sys.path.insert(0, "tests")
        from test_reliability import mlp
        from samediff_py import ModelFileError, checkpoint
        g, _ = mlp()
        good = checkpoint.save(g, {str(tmp_path / "m.sdz")!r})
        size = good.stat().st_size
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))
        try:
            checkpoint.save(g, good)
            print("NO ERROR")
        except ModelFileError as e:
            print("ERROR", e)
        """
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ERROR" in r.stdout and "File too large" in r.stdout, r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["m.sdz"]
    assert checkpoint.load(tmp_path / "m.sdz") is not None


def test_an_unwritable_folder_gives_model_file_error_with_the_os_reason():
    g, _ = mlp()
    with pytest.raises(ModelFileError, match="cannot write in /proc"):
        checkpoint.save(g, "/proc/model.sdz")
    with pytest.raises(ModelFileError, match="does not exist"):
        checkpoint.save(g, "/no/such/folder/model.sdz")


# ================================================================================ epoch losses
def test_epoch_loss_weights_steps_by_rows_for_a_plain_loss():
    """Batches of 4 and 1 rows: the epoch loss is the loss over the 5 rows (a plain mean of the two step losses
    passed every test before)."""
    g = Graph(seed=0)
    x = g.placeholder("x", ("batch", 1))
    w = g.variable("w", np.zeros((1, 1), np.float32))
    loss = ops.mean(ops.square(ops.matmul(x, w) - x), name="loss")  # = mean(x^2) at w = 0
    t = Trainer(g, loss, "sgd", lr=0.0)
    xs = np.array([[1.0], [1.0], [1.0], [1.0], [3.0]], np.float32)
    hist = t.fit({"x": xs}, batch_size=4, shuffle=False, progress=False)
    assert hist.step_losses == [1.0, 9.0] and hist.step_weights == [4.0, 1.0]
    assert hist.epoch_losses[0] == pytest.approx((4 * 1.0 + 9.0) / 5)


def test_epoch_loss_and_evaluate_weight_a_masked_loss_by_counted_positions():
    """A masked cross-entropy is a mean over counted tokens: an epoch (and evaluate) must be the mean over
    all counted tokens of all batches, not over rows."""
    g = Graph(seed=0, dtype=np.float64)
    logits = g.placeholder("logits", ("batch", "time", 3))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    b = g.variable("b", np.zeros(3))
    z = Masked(logits, m) + b
    loss = masked.softmax_cross_entropy(z, labels)
    acc = masked.accuracy(z, labels)
    rng = np.random.default_rng(0)
    batches = []
    for lengths in ([4, 4], [1, 0], [2, 3]):
        batches.append(
            {
                "logits": rng.normal(size=(2, 4, 3)),
                "labels": rng.integers(0, 3, (2, 4)).astype(np.int32),
                "mask": masked.mask_from_lengths(lengths, 4, dtype=np.float64),
            }
        )
    everything = {k: np.concatenate([bt[k] for bt in batches]) for k in batches[0]}
    want_loss = R.masked_xent(everything["logits"], everything["labels"], everything["mask"])
    want_acc = R.top_k_accuracy(everything["logits"], everything["labels"], everything["mask"], 1)
    t = Trainer(g, loss, "sgd", lr=0.0)
    hist = t.fit(batches, progress=False)
    assert hist.step_weights == [8.0, 1.0, 5.0]
    assert hist.epoch_losses[0] == pytest.approx(want_loss, rel=1e-12)
    got = t.evaluate(batches, metrics={"acc": acc})
    assert got["loss"] == pytest.approx(want_loss, rel=1e-12) and got["acc"] == pytest.approx(want_acc)
