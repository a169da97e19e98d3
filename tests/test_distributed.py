"""Data-parallel training on Ray (samediff_py.distributed) against one process on the same global batches.

The reference is always plain single-process training (Trainer.step on the whole global batch). Two workers
must match it to float32 rounding, masked losses must be weighted by counted positions across shards, a
killed worker must be replaced from the checkpoint with the same final result, and replicas that diverge must
be named. One Ray cluster serves the whole module; worker counts stay at 2 (2-core CI machine).

The numpy-only helpers (split_rows, combine, worker_resources) are tested without Ray.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys

import numpy as np
import pytest

from samediff_py import Graph, masked, ops, train
from samediff_py.distributed import combine, default_object_store_memory, split_rows, worker_resources
from samediff_py.models import Encoder, EncoderConfig

HAVE_RAY = importlib.util.find_spec("ray") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="needs Ray (pip install 'samediff_py[distributed]')")

if HAVE_RAY:
    import ray

    from samediff_py import distributed

    # the workers cannot import this test module: ship its functions (build factories) by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

W_TRUE = np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
VOCAB, T, IGNORE = 12, 8, -1
STEPS = 30


# ------------------------------------------------------------------------------------------ models and data
def build_mlp(drop: float | None = None):
    g = Graph(seed=0)
    x, y = g.placeholder("x", ("batch", 4)), g.placeholder("y", ("batch", 1))
    w1 = g.variable("w1", shape=(4, 16))
    b1 = g.variable("b1", np.zeros(16, np.float32))
    w2 = g.variable("w2", shape=(16, 1))
    h = ops.tanh(x @ w1 + b1)
    if drop is not None:
        h = train.dropout(h, drop, "drop")
    loss = ops.mean(ops.square(ops.matmul(h, w2, name="pred") - y), name="loss")
    return g, loss


def build_mlp_dropout():
    return build_mlp(0.5)


def mlp_batches(steps: int = STEPS, rows: int = 15, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Global batches of 15 rows: the 2 shards get 8 and 7 rows (weights by rows)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        out.append({"x": x, "y": (x @ W_TRUE + 0.1 * rng.normal(size=(rows, 1))).astype(np.float32)})
    return out


def build_mlm():
    g = Graph(seed=3)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0)
    enc = Encoder(g, EncoderConfig(vocab=VOCAB, d_model=8, heads=2, d_ff=16, layers=1, max_len=T))
    loss = masked.softmax_cross_entropy(enc(tokens, mask), labels, IGNORE, name="loss")
    return g, loss


def uneven_mlm_batches(steps: int = 12, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """8 rows per global batch. Rows 0-3 (shard 0) are long with many targets; rows 4-7 (shard 1) have exactly
    one counted position, or none; one step counts nothing at all (W = 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(steps):
        lengths = np.concatenate([rng.integers(6, T + 1, 4), rng.integers(1, 4, 4)])
        valid = np.arange(T)[None, :] < lengths[:, None]
        tokens = np.where(valid, rng.integers(2, VOCAB, (8, T)), 0).astype(np.int32)
        labels = np.where(valid & (rng.random((8, T)) < 0.5), rng.integers(2, VOCAB, (8, T)), IGNORE)
        labels[4:] = IGNORE
        if s % 3 == 0:  # shard 1: exactly one counted position
            labels[5, 0] = 3
        if s == 7:  # nobody counts anything
            labels[:] = IGNORE
        out.append({"tokens": tokens, "labels": labels.astype(np.int32), "mask": valid.astype(np.float32)})
    return out


def single_process(build, batches, **trainer):
    g, loss = build()
    t = train.Trainer(g, loss, **trainer)
    losses = [t.step(b) for b in batches]
    return losses, {n: g.get_value(n) for n in t.params}, t.iterations


def assert_float32_close(got: dict, want: dict, ulps: float) -> None:
    """Each parameter tensor equal up to ``ulps`` float32 units in the last place at the tensor's scale:
    ``|got - want| <= ulps * eps32 * max|want|`` (a value near 0 is a sum of larger terms, so rounding errors
    scale with the tensor, not with that value)."""
    for n in want:
        err = np.abs(got[n] - want[n]).max() / (np.abs(want[n]).max() * np.finfo(np.float32).eps)
        assert err <= ulps, f"{n}: {err:.1f} ulps of max|value|"


# ------------------------------------------------------------------------------------------ numpy helpers (no Ray)
def test_split_rows_covers_the_batch_in_order_and_replicates_other_arrays():
    b = {"x": np.arange(14).reshape(7, 2), "table": np.arange(3), "s": np.float32(2)}
    shards = split_rows(b, 3)
    assert [s["x"].shape[0] for s in shards] == [3, 2, 2]
    np.testing.assert_array_equal(np.concatenate([s["x"] for s in shards]), b["x"])
    assert all(s["table"].shape == (3,) and float(s["s"]) == 2.0 for s in shards)
    assert [s["x"].shape[0] for s in split_rows({"x": np.zeros((1, 2))}, 2)] == [1, 0]


def test_combined_shard_gradients_equal_the_whole_batch_gradient_with_uneven_masks():
    """The weighting itself, in one process: compute_gradients on each shard, combine, against the whole
    batch. Without the weights (a plain mean of the shard gradients) this is off by far more than rounding."""
    g, loss = build_mlm()
    t = train.Trainer(g, loss, "sgd", lr=0.1)
    for b in uneven_mlm_batches(4):
        whole_loss, whole_grad, whole_w = t.compute_gradients(b)
        parts = [t.compute_gradients(s) for s in split_rows(b, 2)]
        got_loss, total, got = combine([p[2] for p in parts], [p[0] for p in parts], [p[1] for p in parts])
        assert total == whole_w
        assert parts[1][2] <= 1 and parts[0][2] > 5  # shard 1 counts one position or none
        np.testing.assert_allclose(got_loss, whole_loss, rtol=1e-6)
        np.testing.assert_allclose(got, whole_grad, rtol=1e-5, atol=1e-7)
        plain = (parts[0][1] + parts[1][1]) / 2
        if parts[1][2] == 1:
            assert np.abs(plain - whole_grad).max() > 100 * np.abs(got - whole_grad).max() + 1e-4


def test_worker_resources_share_the_machine():
    env = worker_resources(1, 2, 16 << 30, 2 << 30)
    two = [int(env["SAMEDIFF_PY_OFFHEAP"][:-1]) * 2, int(env["SAMEDIFF_PY_HEAP"][:-1]) * 2]
    assert sum(two) < (16 << 30) >> 20  # two workers together stay below the machine (the default took half each)
    assert env["SAMEDIFF_PY_THREADS"] == "1"
    assert worker_resources(4, 8, 64 << 30)["SAMEDIFF_PY_THREADS"] == "4"
    assert worker_resources(1, 1, 256 << 20)["SAMEDIFF_PY_OFFHEAP"] == "256m"  # floors on a tiny machine


# ------------------------------------------------------------------------------------------ on Ray
@pytest.fixture(scope="module")
def cluster():
    if not HAVE_RAY:
        pytest.skip("needs Ray")
    started = distributed.init_ray(num_cpus=2)  # the library's local cluster: object store capped
    yield started
    if started:
        ray.shutdown()


def run_dp(build, batches, callbacks=(), **options):
    options.setdefault("checkpoint_every", 10)
    with distributed.DataParallel(build, 2, **options) as dp:
        hist = dp.fit(batches, callbacks=callbacks)
        return hist, dp.weights(), dp


@pytest.fixture(scope="module")
def adam_run(cluster):
    """Uninterrupted 2-worker Adam run (shared by the equality, resources and restart tests)."""
    batches = mlp_batches()
    return batches, run_dp(build_mlp, batches, trainer={"updater": "adam", "lr": 0.02})


@needs_ray
def test_two_workers_equal_one_process_adam(adam_run):
    batches, (hist, weights, dp) = adam_run
    losses, want, iters = single_process(build_mlp, batches, updater="adam", lr=0.02)
    np.testing.assert_allclose(hist.step_losses, losses, rtol=1e-5)
    assert_float32_close(weights, want, ulps=16)  # measured: at most 4.2
    assert hist.verified_steps == [10, 20, 30] and hist.step_weights == [15.0] * STEPS
    assert [w for w in hist.rank_weights[0]] == [8.0, 7.0]
    assert hist.transport == ("gloo" if HAVE_TORCH else "object_store")
    assert hist.epoch_losses[0] == pytest.approx(np.mean(losses), rel=1e-5)


@needs_ray
def test_two_workers_equal_one_process_sgd(cluster):
    batches = mlp_batches()
    hist, weights, _ = run_dp(build_mlp, batches, trainer={"updater": "sgd", "lr": 0.05}, checkpoint_every=0)
    losses, want, _ = single_process(build_mlp, batches, updater="sgd", lr=0.05)
    np.testing.assert_allclose(hist.step_losses, losses, rtol=1e-5)
    assert_float32_close(weights, want, ulps=16)  # measured: at most 6.1
    assert not np.allclose(hist.step_losses[0], hist.step_losses[-1])  # it trained


@needs_ray
def test_uneven_masked_shards_equal_one_process(cluster):
    batches = uneven_mlm_batches()
    hist, weights, _ = run_dp(build_mlm, batches, trainer={"updater": "adam", "lr": 0.01}, checkpoint_every=0)
    losses, want, _ = single_process(build_mlm, batches, updater="adam", lr=0.01)
    counted = [float(((b["labels"] != IGNORE) & (b["mask"] > 0)).sum()) for b in batches]
    assert hist.step_weights == counted and counted[7] == 0.0
    assert [w[1] for w in hist.rank_weights] == [1.0 if s % 3 == 0 and s != 7 else 0.0 for s in range(12)]
    assert hist.step_losses[7] == 0.0
    np.testing.assert_allclose(hist.step_losses, losses, rtol=1e-5)
    assert_float32_close(weights, want, ulps=16)  # measured: at most 2.0


@needs_ray
def test_workers_get_their_share_of_the_machine_and_the_object_store_is_capped(adam_run, cluster):
    _, (_, _, dp) = adam_run
    if cluster:  # this module started the cluster through init_ray: the cap is ours
        assert ray.cluster_resources()["object_store_memory"] == pytest.approx(default_object_store_memory(), rel=0.01)
    store = int(ray.cluster_resources()["object_store_memory"])
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    want = worker_resources(1, ray.cluster_resources()["CPU"], pages, store)
    for info in dp.info:
        assert info["env"] == want and not info["jvm_started_before_setup"]
        assert info["offheap_max"] == int(want["SAMEDIFF_PY_OFFHEAP"][:-1]) << 20  # javacpp's maxbytes
        heap = int(want["SAMEDIFF_PY_HEAP"][:-1]) << 20
        assert 0.8 * heap <= info["jvm_max_heap"] <= 1.01 * heap  # -Xmx, give or take the JVM's accounting


class KillAt:
    """Kill rank 1's process (SIGKILL, no goodbye) once, after step ``at``."""

    def __init__(self, dp_holder: list, at: int):
        self.holder, self.at, self.done = dp_holder, at, False

    def on_step_end(self, step, logs):
        if step == self.at and not self.done:
            self.done = True
            os.kill(self.holder[0].worker_pids()[1], signal.SIGKILL)


@needs_ray
def test_a_killed_worker_is_replaced_and_training_resumes_from_the_checkpoint(adam_run):
    batches, (ref_hist, ref_weights, _) = adam_run
    holder: list = []
    kill = KillAt(holder, at=13)
    with distributed.DataParallel(build_mlp, 2, trainer={"updater": "adam", "lr": 0.02}, checkpoint_every=10) as dp:
        holder.append(dp)
        old_pids = dp.worker_pids()
        hist = dp.fit(batches, callbacks=[kill])
        weights = dp.weights()
        new_pids = dp.worker_pids()
        iterations = ray.get(dp._workers[0].iterations.remote())
    assert kill.done and len(hist.restarts) == 1
    assert hist.restarts[0]["resumed_at"] == 10 and "died" in hist.restarts[0]["reason"]
    assert not set(new_pids) & set(old_pids)  # every worker is new (new JVMs, restored from the file)
    assert iterations == STEPS and hist.steps == STEPS
    # the same computation replayed from an exact checkpoint: identical to the uninterrupted run
    np.testing.assert_array_equal(hist.step_losses, ref_hist.step_losses)
    for n in ref_weights:
        np.testing.assert_array_equal(weights[n], ref_weights[n], err_msg=n)


@needs_ray
def test_a_worker_error_is_raised_as_itself_and_the_next_fit_resumes_from_the_checkpoint(cluster):
    batches = mlp_batches(4)
    with distributed.DataParallel(build_mlp, 2, trainer={"updater": "sgd", "lr": 0.05}, checkpoint_every=2) as dp:
        dp.fit(batches[:3])  # checkpoint at step 2, 3 steps done
        with pytest.raises(KeyError, match="missing feed for placeholder"):
            dp.fit([{"x": batches[3]["x"]}])  # no "y": the feed check raises in both workers
        with pytest.raises(distributed.WorkerLostError, match="torn down"):
            dp.weights()  # the workers were torn down (one may have been waiting in a collective)
        # new workers from the checkpoint the failed fit took when it started (step 3): nothing is lost
        dp.fit(batches[3:])
        assert dp.steps_done == 4 and ray.get(dp._workers[0].iterations.remote()) == 4
        weights = dp.weights()
    _, want, _ = single_process(build_mlp, batches, updater="sgd", lr=0.05)
    assert_float32_close(weights, want, ulps=16)


@needs_ray
def test_diverged_replicas_are_named(cluster):
    with distributed.DataParallel(
        build_mlp, 2, trainer={"updater": "sgd", "lr": 0.05}, verify_every=2, checkpoint_every=0
    ) as dp:
        dp.fit(mlp_batches(2))
        w1 = dp.weights()["w1"]
        ray.get(dp._workers[1]._debug_set_value.remote("w1", w1 + np.float32(1e-3)))
        with pytest.raises(distributed.ReplicaMismatchError, match="rank 1 \\(pid") as e:
            dp.fit(mlp_batches(4))
    assert e.value.ranks == [1] and e.value.step == 4


@needs_ray
def test_local_sgd_is_a_different_algorithm_and_equals_its_one_process_simulation(cluster):
    """Local SGD: each worker steps on its own shard (own Adam state); every 3 steps the parameters are averaged.
    Simulated in one process with two Trainers, bit for bit, even across a killed worker; it is not the
    synchronous (single-process) result."""
    batches = mlp_batches(9)
    holder: list = []
    kill = KillAt(holder, at=4)  # a lost worker too: each rank resumes from its own checkpoint file (step 3)
    with distributed.DataParallel(
        build_mlp, 2, trainer={"updater": "adam", "lr": 0.02}, average_every=3, checkpoint_every=3
    ) as dp:
        holder.append(dp)
        hist = dp.fit(batches, callbacks=[kill])
        weights = dp.weights()
    assert kill.done and [r["resumed_at"] for r in hist.restarts] == [3]
    assert hist.verified_steps == [3, 6, 9] and hist.steps == 9
    reps = [build_mlp() for _ in range(2)]
    ts = [train.Trainer(g, loss, "adam", lr=0.02) for g, loss in reps]
    names = ts[0].params
    for s, b in enumerate(batches):
        for t, shard in zip(ts, split_rows(b, 2), strict=True):
            t.apply_gradients(t.compute_gradients(shard)[1])
        if (s + 1) % 3 == 0:
            for n in names:
                avg = (reps[0][0].get_value(n) + reps[1][0].get_value(n)) * np.float32(0.5)
                for g, _ in reps:
                    g.set_value(n, avg)
    for n in names:  # the same float32 operations in the same order: the same bits
        np.testing.assert_array_equal(weights[n], reps[0][0].get_value(n), err_msg=n)
    _, sync, _ = single_process(build_mlp, batches, updater="adam", lr=0.02)
    assert max(np.abs(weights[n] - sync[n]).max() for n in names) > 1e-3


@needs_ray
def test_dropout_draws_are_seeded_by_seed_rank_and_step(cluster):
    """Both ranks get the same rows from a per-rank shard function; with lr=0 each rank's loss depends only on
    its dropout draw, which must be that of default_rng([seed, rank, step]): different per rank and per step,
    and the same again after a restart (the kill test replays steps bit for bit)."""
    rows = mlp_batches(1, rows=8)[0]

    def same_rows(step, rank, world):
        return rows

    with distributed.DataParallel(
        build_mlp_dropout, 2, trainer={"updater": "sgd", "lr": 0.0}, seed=5, checkpoint_every=0
    ) as dp:
        got = dp.fit(shards=same_rows, steps=3).rank_losses
    g, loss = build_mlp_dropout()
    t = train.Trainer(g, loss, "sgd", lr=0.0)
    want = [[t.compute_gradients(rows, np.random.default_rng([5, r, s]))[0] for r in range(2)] for s in range(3)]
    assert got == want
    assert all(r0 != r1 for r0, r1 in got) and len({r[0] for r in got}) == 3


@needs_ray
@pytest.mark.skipif(not HAVE_TORCH, reason="the gloo transport needs torch in the workers")
def test_gloo_and_object_store_give_the_same_bits(adam_run):
    batches, (ref_hist, ref_weights, _) = adam_run
    hist, weights, _ = run_dp(build_mlp, batches, trainer={"updater": "adam", "lr": 0.02}, transport="object_store")
    assert ref_hist.transport == "gloo" and hist.transport == "object_store"
    np.testing.assert_array_equal(hist.step_losses, ref_hist.step_losses)
    for n in ref_weights:
        np.testing.assert_array_equal(weights[n], ref_weights[n], err_msg=n)


HANDLER_PROBE = r"""
import ctypes, signal, sys
from samediff_py import Graph, distributed
import ray

class SigAction(ctypes.Structure):  # glibc's struct sigaction on Linux
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]

class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                ("saddr", ctypes.c_void_p)]

libc = ctypes.CDLL(None)

def segv_owner():
    sa, info = SigAction(), DlInfo()
    libc.sigaction(signal.SIGSEGV, None, ctypes.byref(sa))
    libc.dladdr(ctypes.c_void_p(sa.handler), ctypes.byref(info))
    return (info.fname or b"?").decode().rsplit("/", 1)[-1]

Graph()  # the JVM starts first, as in a driver that built a model before connecting to Ray
before = segv_owner()
distributed.init_ray(num_cpus=1, object_store_memory=80 << 20)
print(before, segv_owner())
ray.shutdown()
"""


@needs_ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the SIGSEGV handler with glibc's sigaction")
def test_init_ray_leaves_the_running_jvm_its_sigsegv_handler():
    """ray.init after the JVM started replaced the JVM's SIGSEGV handler (Ray's absl handler, then Python's
    faulthandler): the JVM's next safepoint poll aborted the driver. init_ray keeps the JVM's."""
    import subprocess

    res = subprocess.run([sys.executable, "-c", HANDLER_PROBE], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-2:] == ["libjvm.so", "libjvm.so"], res.stdout
