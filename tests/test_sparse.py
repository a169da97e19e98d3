"""Sparse embeddings, losses and heads (issue 10): gather, the sparse cross-entropy, counted rows.

Every reference is numpy written from the definition (``np.add.at`` for scatter-add gradients, log-sum-exp
for the cross-entropy) or float64 central finite differences; sizes are small (big vocabularies live in
bench/bench_vocab.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as R  # tests/reference.py

from samediff_py import FeedError, Graph, MaskError, masked, ops, testing, train
from samediff_py.masked import Masked
from samediff_py.models import Encoder, EncoderConfig


def central_differences(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        for sign in (1, -1):
            xx = x.copy()
            xx[idx] += sign * eps
            num[idx] += sign * f(xx) / (2 * eps)
    return num


def op_names(g: Graph) -> set[str]:
    return {op.getOp().opName() for op in g.sd.getOps().values().toArray()}


# =============================================================================== gather
@pytest.mark.parametrize("id_dtype", ["int32", "int64"])
def test_gather_gradient_is_add_at_for_repeats_large_ids_and_the_last_row(id_dtype):
    """Repeated ids add up; ids >= the number of ids (M2.1's stock gradient threw there) and the table's last
    row work; rows no id picks get exactly zero; a rank-3 table (rows that are matrices) too."""
    vocab = 9
    ids = np.array([[8, 1, 1], [3, 8, 0]], id_dtype)  # 6 ids: 8 >= 6 is the last row, 1 and 8 repeat
    rng = np.random.default_rng(0)
    for row_shape in ((3,), (2, 3)):
        table = rng.normal(size=(vocab, *row_shape))
        w = rng.normal(size=(*ids.shape, *row_shape))
        g = Graph(dtype=np.float64)
        i = g.placeholder("ids", ("batch", "time"), id_dtype)
        t = g.variable("table", table)
        out = ops.gather(t, i)
        assert out.shape == (None, None, *row_shape)
        np.testing.assert_array_equal(g.run({"ids": ids}, out), table[ids])
        ref = np.zeros_like(table)
        np.add.at(ref, ids, w)
        got = g.gradients({"ids": ids}, ops.sum(out * w), [t])["table"]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)
        assert not got[[2, 4, 5, 6, 7]].any()


@pytest.mark.parametrize("ids", [[2], [[3]], [[1], [3]]], ids=["one_id", "one_by_one", "column"])
def test_gather_gradient_of_a_single_id_lands_on_its_row(ids):
    """One id (a batch of one token, one counted row): libnd4j's segment sum took the [1, d] rows for a vector
    and summed its elements as segments, so the gradient landed on row 0 with wrong values."""
    ids = np.array(ids, np.int32)
    table = np.arange(20.0).reshape(4, 5)
    g = Graph(dtype=np.float64)
    i = g.placeholder("ids", (None,) * ids.ndim, "int32")
    t = g.variable("table", table)
    got = g.gradients({"ids": ids}, ops.sum(ops.square(ops.gather(t, i))), [t])["table"]
    ref = np.zeros_like(table)
    np.add.at(ref, ids, 2 * table[ids])
    np.testing.assert_array_equal(got, ref)


def test_gather_gradient_matches_central_differences():
    ids = np.array([4, 0, 4, 4, 2], np.int32)
    table0 = np.random.default_rng(1).normal(size=(5, 2))
    w = np.random.default_rng(2).normal(size=(5, 2))
    g = Graph(dtype=np.float64)
    i = g.placeholder("ids", (None,), "int32")
    t = g.variable("table", table0)
    loss = ops.sum(ops.square(ops.gather(t, i)) * w)  # non-linear in the table: repeats interact

    def f(tab):
        g.set_value(t, tab)
        return float(g.run({"ids": ids}, loss))

    got = g.gradients({"ids": ids}, loss, [t])["table"]
    num = central_differences(f, table0)
    g.set_value(t, table0)
    np.testing.assert_allclose(got, num, atol=1e-8)


def test_gather_trains_in_a_trainer_step_like_numpy_sgd():
    """One SGD step through Trainer: new table = old - lr * add.at gradient (mean over the batch)."""
    vocab, d, lr = 7, 3, 0.5
    table0 = np.random.default_rng(3).normal(size=(vocab, d))
    ids = np.array([[6, 6, 1], [2, 6, 5]], np.int32)
    target = np.random.default_rng(4).normal(size=(2, 3, d))
    g = Graph(dtype=np.float64)
    i = g.placeholder("ids", ("batch", "time"), "int32")
    y = g.placeholder("y", ("batch", "time", d))
    t = g.variable("table", table0)
    loss = ops.mean(ops.square(ops.embedding(i, t) - y), name="loss")
    tr = train.Trainer(g, loss, "sgd", lr=lr)
    before = tr.step({"ids": ids, "y": target})
    assert before == pytest.approx(np.mean((table0[ids] - target) ** 2), rel=1e-12)
    grad = np.zeros_like(table0)
    np.add.at(grad, ids, 2.0 * (table0[ids] - target) / target.size)
    np.testing.assert_allclose(g.get_value(t), table0 - lr * grad, rtol=0, atol=1e-14)


def test_ids_outside_the_table_are_refused_naming_placeholder_position_and_value():
    g = Graph()
    i = g.placeholder("tokens", ("batch", "time"), "int32")
    e = ops.embedding(i, g.variable("emb", np.zeros((5, 2), np.float32)))
    for bad, pos in ((5, (1, 2)), (-1, (0, 1))):
        ids = np.zeros((2, 3), np.int32)
        ids[pos] = bad
        with pytest.raises(FeedError, match=rf"'tokens': id {bad} at \({pos[0]}, {pos[1]}\) is outside \[0, 5\)"):
            g.run({"tokens": ids}, e)
    np.testing.assert_array_equal(g.run({"tokens": [[4, 0, 4]]}, e), np.zeros((1, 3, 2)))  # the last row is fine


def test_an_empty_batch_of_ids_is_refused_by_name():
    """libnd4j's gather crashes the process on empty ids: an empty feed never reaches it."""
    g = Graph()
    i = g.placeholder("tokens", ("batch", "time"), "int32")
    e = ops.embedding(i, g.variable("emb", np.zeros((5, 2), np.float32)))
    for shape in ((0, 3), (2, 0)):
        with pytest.raises(FeedError, match="'tokens': empty feed"):
            g.run({"tokens": np.zeros(shape, np.int32)}, e)


# =============================================================================== the sparse op
def test_sparse_softmax_cross_entropy_op_values_and_weighted_gradient():
    rng = np.random.default_rng(5)
    z0 = rng.normal(size=(4, 6)) * 3
    labels = np.array([5, 0, 2, 2], np.int32)
    w = rng.normal(size=4)
    g = Graph(dtype=np.float64)
    z = g.variable("z", z0)
    y = g.placeholder("y", (None,), "int32")
    nll = ops.sparse_softmax_cross_entropy(z, y)
    ref = np.log(np.exp(z0).sum(-1)) - z0[np.arange(4), labels]
    np.testing.assert_allclose(g.run({"y": labels}, nll), ref, rtol=1e-14)
    loss = ops.sum(nll * w)  # weighted: M2.1's stock gradient ignored w (gradient of the plain sum)

    def f(zz):
        g.set_value(z, zz)
        return float(g.run({"y": labels}, loss))

    got = g.gradients({"y": labels}, loss, [z])["z"]
    np.testing.assert_allclose(got, w[:, None] * (R.softmax(z0) - np.eye(6)[labels]), atol=1e-14)
    np.testing.assert_allclose(got, central_differences(f, z0), atol=1e-8)
    with pytest.raises(FeedError, match="'y': id 6 at \\(1,\\) is outside \\[0, 6\\)"):
        g.run({"y": [0, 6, 1, 1]}, nll)


def test_take_along_last_axis_forward_and_gradient():
    x0 = np.random.default_rng(6).normal(size=(2, 3, 5))
    ids = np.array([[4, 0, 4], [1, 1, 3]], np.int32)
    w = np.random.default_rng(7).normal(size=(2, 3))
    g = Graph(dtype=np.float64)
    x = g.variable("x", x0)
    i = g.placeholder("ids", ("batch", "time"), "int32")
    out = ops.take_along_last_axis(x, i)
    assert out.shape == (None, None)
    np.testing.assert_array_equal(g.run({"ids": ids}, out), np.take_along_axis(x0, ids[..., None], -1)[..., 0])
    ref = np.zeros_like(x0)
    np.put_along_axis(ref, ids[..., None], w[..., None], -1)
    np.testing.assert_array_equal(g.gradients({"ids": ids}, ops.sum(out * w), [x])["x"], ref)


# =============================================================================== masked cross-entropy
def _two_losses_graph(dtype=np.float64):
    g = Graph(seed=0, dtype=dtype)
    z1 = g.placeholder("z1", ("batch", "time", 5))
    z2 = g.placeholder("z2", ("batch", "time", 5))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=True)
    bias = g.variable("bias", np.zeros(5))
    l1 = masked.softmax_cross_entropy(Masked(z1, m) + bias, labels)
    l2 = masked.softmax_cross_entropy(Masked(z2, m), labels, ignore_label=3)
    return g, ops.add(ops.multiply(l1, 3.0), l2, name="total")


def _two_losses_data(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    ms = masked.mask_from_lengths([4, 2, 3], 4)
    labels = rng.integers(0, 5, (3, 4)).astype(np.int32)
    labels[labels == 3] = 4
    labels[0, 1] = labels[2, 0] = 3  # counted by the first loss (class 3), ignored by the second
    labels[ms == 0] = -1
    return {
        "z1": (rng.normal(size=(3, 4, 5)) * 3).astype(dtype),
        "z2": (rng.normal(size=(3, 4, 5)) * 3).astype(dtype),
        "labels": labels,
        "mask": ms,
    }


def test_loss_scaled_and_summed_with_another_loss_has_the_numpy_gradient():
    """Upstream gradients are honoured: d(3 * xent1 + xent2) = 3 * dxent1 + dxent2 (each with its own
    ignore label). M2.1's loss ops would give dxent1 + dxent2 here, whatever the scale."""
    g, total = _two_losses_graph()
    fd = _two_losses_data()
    z1, z2, lab, ms = fd["z1"], fd["z2"], fd["labels"], fd["mask"]
    l1 = R.masked_xent(z1, lab, ms, -1)
    assert float(g.run(fd, total)) == pytest.approx(3 * l1 + R.masked_xent(z2, lab, ms, 3), rel=1e-12)
    grads = g.gradients(fd, total, [g["z1"], g["z2"], g["bias"]])
    np.testing.assert_allclose(grads["z1"], 3 * R.masked_xent_grad(z1, lab, ms, -1), atol=1e-13)
    np.testing.assert_allclose(grads["z2"], R.masked_xent_grad(z2, lab, ms, 3), atol=1e-13)
    np.testing.assert_allclose(grads["bias"], grads["z1"].sum((0, 1)), atol=1e-13)
    num = central_differences(lambda a: float(g.run({**fd, "z1": a}, total)), z1)
    np.testing.assert_allclose(grads["z1"], num, atol=1e-7)


@pytest.mark.parametrize("rows", [False, True], ids=["full", "counted_rows"])
def test_huge_and_nan_logits_at_padding_change_nothing(rows):
    """3e38 (near float32's max) and NaN in padded LOGITS (not selected away upstream: Masked.derived): the
    same loss, and finite gradients that are exactly zero at padding."""
    g = Graph(seed=0)
    z = g.placeholder("z", ("batch", "time", 5))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask")
    b = g.variable("b", np.zeros(5, np.float32))
    logits = Masked.derived(ops.add(z, b), m)
    loss = masked.softmax_cross_entropy(masked.counted_rows(logits, labels), None) if rows else (
        masked.softmax_cross_entropy(logits, labels))  # fmt: skip
    data = _two_losses_data(1, np.float32)
    fd = {"z": data["z1"], "labels": data["labels"], "mask": data["mask"]}
    ref = float(g.run(fd, loss))
    assert ref == pytest.approx(R.masked_xent(data["z1"].astype(np.float64), fd["labels"], fd["mask"]), rel=1e-5)
    dirty = data["z1"].copy()
    pad = fd["mask"] == 0
    dirty[pad] = 3e38
    dirty[np.argwhere(pad)[0][0], np.argwhere(pad)[0][1], 2] = np.nan
    fd_dirty = {**fd, "z": dirty}
    assert float(g.run(fd_dirty, loss)) == ref
    gd, gc = g.gradients(fd_dirty, loss, [b, z]), g.gradients(fd, loss, [b, z])
    assert np.isfinite(gd["b"]).all() and np.isfinite(gd["z"]).all()
    np.testing.assert_array_equal(gd["b"], gc["b"])
    np.testing.assert_array_equal(gd["z"], gc["z"])
    assert (gd["z"][pad] == 0).all()


def test_no_one_hot_is_built_by_losses_metrics_or_counted_rows():
    g = Graph()
    x = g.placeholder("x", ("batch", "time", 4))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask")
    w = g.variable("w", shape=(4, 50))
    logits = masked.dense(Masked(x, m), w)
    rows = masked.counted_rows(Masked(x, m), labels).map(lambda r: ops.matmul(r, w))
    for lg, lb in ((logits, labels), (rows, None)):
        masked.softmax_cross_entropy(lg, lb)
        masked.accuracy(lg, lb)
        masked.top_k_accuracy(lg, lb, 3)
    names = op_names(g)
    assert "sparse_softmax_cross_entropy_loss_with_logits" in names
    assert not {n for n in names if "onehot" in n.lower() or "one_hot" in n.lower()}, names


def test_top_k_accuracy_of_a_single_position():
    """A batch of one with one position: M2.1 failed to broadcast [classes] against the [1, 1] label."""
    g = Graph()
    z = g.placeholder("z", ("batch", "time", 4))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask")
    top2 = masked.top_k_accuracy(Masked(z, m), labels, 2)
    fd = {"z": [[[0.0, 3.0, 1.0, 2.0]]], "labels": [[3]], "mask": [[1.0]]}
    assert float(g.run(fd, top2)) == 1.0
    assert float(g.run({**fd, "labels": [[2]]}, top2)) == 0.0


# =============================================================================== counted rows
def _head_graph(dtype=np.float64, allow_empty=False):
    g = Graph(seed=1, dtype=dtype)
    x = g.placeholder("x", ("batch", "time", 3))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask", allow_empty_rows=allow_empty)
    w = g.variable("w", shape=(3, 7))
    b = g.variable("b", np.random.default_rng(0).normal(size=7))
    h = Masked(x, m).map(ops.tanh)
    full = masked.dense(h, w, b)
    rows = masked.counted_rows(h, labels).map(lambda r: ops.add(ops.matmul(r, w), b))
    outs = {
        "loss_full": masked.softmax_cross_entropy(full, labels),
        "loss_rows": masked.softmax_cross_entropy(rows),
        "acc_full": masked.accuracy(full, labels),
        "acc_rows": masked.accuracy(rows),
        "top3_full": masked.top_k_accuracy(full, labels, 3),
        "top3_rows": masked.top_k_accuracy(rows, labels, 3),
    }
    return g, outs, (w, b, x)


def _head_data(seed=0):
    rng = np.random.default_rng(seed)
    ms = masked.mask_from_lengths([5, 2, 4, 1], 5)
    labels = rng.integers(0, 7, (4, 5)).astype(np.int32)
    labels[rng.random((4, 5)) < 0.4] = -1
    labels[0, 0] = 2  # at least one counted position
    x = rng.normal(size=(4, 5, 3))
    x[ms == 0] = np.nan
    return {"x": x, "labels": labels, "mask": ms}


def test_counted_rows_give_the_full_logits_loss_metrics_and_gradients():
    g, outs, wrt = _head_graph()
    fd = _head_data()
    got = g.run(fd, outs)
    w, b = g.get_value("w"), g.get_value("b")
    full_logits = np.tanh(np.nan_to_num(fd["x"])) @ w + b
    assert got["loss_rows"] == pytest.approx(R.masked_xent(full_logits, fd["labels"], fd["mask"]), rel=1e-12)
    assert got["loss_rows"] == pytest.approx(got["loss_full"], rel=1e-14)
    for k in ("acc", "top3"):
        assert got[f"{k}_rows"] == got[f"{k}_full"]
    assert got["acc_rows"] == pytest.approx(R.top_k_accuracy(full_logits, fd["labels"], fd["mask"], 1))
    assert got["top3_rows"] == pytest.approx(R.top_k_accuracy(full_logits, fd["labels"], fd["mask"], 3))
    gf, gr = g.gradients(fd, outs["loss_full"], wrt), g.gradients(fd, outs["loss_rows"], wrt)
    for k in gf:
        assert np.isfinite(gr[k]).all()
        np.testing.assert_allclose(gr[k], gf[k], rtol=1e-12, atol=1e-15, err_msg=k)
    counted = (fd["mask"] > 0) & (fd["labels"] != -1)
    assert (gr["x"][~counted] == 0).all() and (np.abs(gr["x"][counted]).sum(-1) > 0).all()
    # every gradient from numpy's definition (full logits, chain rule by hand)
    dz = R.masked_xent_grad(full_logits, fd["labels"], fd["mask"])
    h = np.tanh(np.nan_to_num(fd["x"]))
    np.testing.assert_allclose(gr["w"], np.einsum("btf,btv->fv", h, dz), atol=1e-13)
    np.testing.assert_allclose(gr["b"], dz.sum((0, 1)), atol=1e-13)
    dx = (dz @ w.T) * (1 - h**2) * (fd["mask"][..., None] > 0)
    np.testing.assert_allclose(gr["x"], dx, atol=1e-13)


def test_counted_rows_with_nothing_counted_give_zero_loss_and_zero_gradients():
    g, outs, wrt = _head_graph(allow_empty=True)
    fd = _head_data()
    for labels, mask in ((np.full_like(fd["labels"], -1), fd["mask"]), (fd["labels"], np.zeros_like(fd["mask"]))):
        feeds = {**fd, "labels": labels, "mask": mask}
        got = g.run(feeds, outs)
        assert all(v == 0.0 for v in got.values()), got
        for v in g.gradients(feeds, outs["loss_rows"], wrt).values():
            assert np.isfinite(v).all() and (v == 0).all()


def test_counted_rows_layout_and_refusals():
    g = Graph()
    x = g.placeholder("x", ("batch", "time", 2))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    other = g.placeholder("other", ("batch", "time"), "int32")
    m = masked.mask_placeholder(g, "mask")
    r = masked.counted_rows(Masked(x, m), labels, ignore_label=9)
    xs = np.arange(12.0).reshape(2, 3, 2)
    idx, lab, w = g.run({"x": xs, "labels": [[9, 4, 1], [2, 9, 9]], "mask": [[1, 1, 0], [1, 1, 1]]},
                        [r.index, r.labels, r.weights])  # fmt: skip
    np.testing.assert_array_equal(idx, [1, 3, 6])  # (0, 1), (1, 0), then the extra row at batch * time
    np.testing.assert_array_equal(lab, [4, 2, 0])
    np.testing.assert_array_equal(w, [1, 1, 0])
    with pytest.raises(MaskError, match="labels 'labels', not 'other'"):
        masked.softmax_cross_entropy(r, other)
    with pytest.raises(MaskError, match="ignore_label=9, not -1"):
        masked.accuracy(r, ignore_label=-1)
    with pytest.raises(MaskError, match="needs a Masked value"):
        masked.counted_rows(x, labels)
    with pytest.raises(TypeError, match="integer"):
        masked.counted_rows(Masked(x, m), g.placeholder("fl", ("batch", "time")))
    loss = masked.softmax_cross_entropy(r.map(lambda v: ops.matmul(v, g.variable("w", np.ones((2, 3))))))
    with pytest.raises(FeedError, match="label 4 at \\(batch 0, time 1\\) is outside \\[0, 3\\)"):
        g.run({"x": xs, "labels": [[9, 4, 1], [2, 9, 9]], "mask": [[1, 1, 0], [1, 1, 1]]}, loss)


def _encoder_graph(mlm: bool, seed: int = 0, dtype=np.float64):
    g = Graph(seed=seed, dtype=dtype)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0)
    enc = Encoder(g, EncoderConfig(vocab=40, d_model=8, heads=2, d_ff=16, layers=1, max_len=12))
    if mlm:
        head = enc.mlm(tokens, mask, labels)
        return g, head.loss, head.logits
    logits = enc(tokens, mask)
    return g, masked.softmax_cross_entropy(logits, labels, name="loss"), logits


def _mlm_batch(seed: int, batch: int = 3, time: int = 10):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, time + 1, batch)
    tokens = rng.integers(2, 40, (batch, time)).astype(np.int32)
    labels = np.where(rng.random((batch, time)) < 0.3, tokens, -1).astype(np.int32)
    labels[:, 0] = tokens[:, 0]
    mask = masked.mask_from_lengths(lengths, time)
    tokens[mask == 0] = 0
    labels[mask == 0] = -1
    return {"tokens": tokens, "labels": labels, "mask": mask}


def test_encoder_mlm_trains_exactly_like_the_full_logits_loss():
    """Encoder.mlm (counted rows) vs the full logits: same losses and same weights after Adam steps."""
    (gc, lc, logits_c), (gf, lf, _) = _encoder_graph(True), _encoder_graph(False)
    tc, tf = train.Trainer(gc, lc, "adam", lr=0.01), train.Trainer(gf, lf, "adam", lr=0.01)
    for s in range(3):
        fd = _mlm_batch(s)
        # the loss from numpy's definition on the model's full logits (at the weights the step starts from)
        reference = R.masked_xent(gc.run(fd, logits_c.value), fd["labels"], fd["mask"])
        loss_c = tc.step(fd)
        assert loss_c == pytest.approx(reference, rel=1e-10)
        assert loss_c == pytest.approx(tf.step(fd), rel=1e-12)
    for v in gf.trainable():
        np.testing.assert_allclose(gc.get_value(v.name), gf.get_value(v.name), rtol=1e-9, atol=1e-12, err_msg=v.name)


def test_encoder_mlm_is_pad_invariant():
    g, loss, logits = _encoder_graph(True, dtype=np.float32)
    testing.assert_pad_invariant(g, _mlm_batch(7), [logits], loss=loss, pad_values={"tokens": 0}, ks=(1, 2),
                              atol=1e-4, rtol=1e-4)  # fmt: skip


SOAK_EMBEDDING = """
import sys
import numpy as np
from samediff_py import Graph, masked, ops, train
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
g = Graph(seed=0)
tokens = g.placeholder("tokens", ("batch", "time"), "int32")
labels = g.placeholder("labels", ("batch", "time"), "int32")
mask = masked.mask_placeholder(g, "mask")
h = masked.Masked(ops.embedding(tokens, g.variable("emb", shape=(50, 32))), mask)
rows = masked.counted_rows(h, labels).map(lambda r: ops.matmul(r, g.variable("w", shape=(32, 50))))
t = train.Trainer(g, masked.softmax_cross_entropy(rows), "adam", lr=1e-3)
rng = np.random.default_rng(0)
batches = []
for _ in range(8):
    ids = rng.integers(0, 50, (64, 32)).astype(np.int32)
    lab = np.where(rng.random((64, 32)) < 0.15, ids, -1).astype(np.int32)
    batches.append({"tokens": ids, "labels": lab, "mask": np.ones((64, 32), np.float32)})
for k in range(40):  # 40 x 50 steps
    for i in range(50):
        t.step(batches[i % 8])
    print(rss(), flush=True)
"""


@pytest.mark.slow
def test_embedding_training_does_not_leak_native_memory():
    """The gather's gradient used libnd4j's unsorted_segment_sum, which leaks native memory on every execution
    in M2.1 (~0.5 MB per step here; a full MLM demo run ran out of memory). A fresh process whose heap is
    capped (so the JVM's garbage collector runs) must stop growing after warm-up."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SAMEDIFF_PY_HEAP": "256m", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SOAK_EMBEDDING], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rss = np.array([float(x) for x in out.stdout.split()])
    # RSS is a sawtooth with steps of up to ~40 MB (paced collections: tests/test_memory.py), so the medians of
    # two windows of 750 steps are compared. The leak added ~0.5 MB per step: 375 MB between them; allocator
    # drift and the sawtooth moved them by 2-15 MB (measured)
    growth = np.median(rss[25:]) - np.median(rss[10:25])
    assert growth < 75, f"resident memory still growing ({growth:+.0f} MB in 750 steps): {rss.round()} MB"


def test_counted_rows_refuses_value_and_labels_of_different_static_sizes():
    g = Graph()
    x = g.placeholder("x", (2, 5, 3))
    m = masked.mask_placeholder(g, "mask", (2, 5))
    with pytest.raises(MaskError, match="disagree on axis 1"):
        masked.counted_rows(Masked(x, m), g.placeholder("labels", (2, 4), "int32"))
    with pytest.raises(MaskError, match="disagree on axis 0"):
        masked.counted_rows(Masked(x, m), g.placeholder("labels0", (3, 5), "int32"))
    masked.counted_rows(Masked(x, m), g.placeholder("labels_ok", (2, 5), "int32"))  # equal sizes are fine


def test_counted_rows_map_keeps_rows_and_refuses_scalars():
    """map applies a per-row function: an [n + 1] result (one number per row) is fine, a scalar is not."""
    g = Graph()
    x = g.placeholder("x", ("batch", "time", 2))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    r = masked.counted_rows(Masked(x, masked.mask_placeholder(g, "mask")), labels)
    norms = r.map(lambda v: ops.sum(ops.square(v), -1))  # [n + 1]
    xs = np.arange(12.0).reshape(2, 3, 2)
    got = g.run({"x": xs, "labels": [[1, -1, 0], [-1, 1, 1]], "mask": [[1, 1, 1], [1, 1, 0]]}, norms.rows)
    np.testing.assert_allclose(got, [(xs[0, 0] ** 2).sum(), (xs[0, 2] ** 2).sum(), (xs[1, 1] ** 2).sum(), 0.0])
    with pytest.raises(MaskError, match="must return an"):
        r.map(lambda v: ops.sum(v))
