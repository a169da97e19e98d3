"""Regressions for problems an independent review found: each test failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest

from samediff_py import Graph, MaskError, masked, ops
from samediff_py.masked import Masked
from samediff_py.train import Trainer


def _seq(g: Graph, t: int = 3, f: int = 2) -> Masked:
    return Masked(g.placeholder("x", ("batch", "time", f)), masked.mask_placeholder(g, "mask"))


def test_lower_rank_batch_value_is_refused_not_broadcast_over_time():
    g = Graph()
    x = _seq(g)
    pooled = g.placeholder("pooled", ("batch", 2))  # [B, F]: broadcasting would line batch up with time
    with pytest.raises(MaskError, match="ambiguous"):
        x + pooled
    with pytest.raises(MaskError, match="ambiguous"):
        pooled + x
    # the explicit forms are accepted: per example [B, 1, F] and per time step [1, T, F]
    per_example = x + ops.expand_dims(pooled, 1)
    fd = {"x": np.ones((2, 3, 2)), "mask": [[1, 1, 0], [1, 1, 1]], "pooled": [[1.0, 2.0], [3.0, 4.0]]}
    np.testing.assert_allclose(g.run(fd, per_example.value)[:, 0], [[2.0, 3.0], [4.0, 5.0]])


@pytest.mark.parametrize("pool, ref", [(masked.mean_pool, [1.5, 4.0]), (masked.sum_pool, [3.0, 12.0]),
                                       (masked.max_pool, [2.0, 5.0])])  # fmt: skip
def test_pooling_rank2_values_gives_one_number_per_row(pool, ref):
    g = Graph()
    x = Masked(g.placeholder("x", ("batch", "time")), masked.mask_placeholder(g, "mask"))
    out = g.run({"x": [[1.0, 2.0, 9.0], [3.0, 4.0, 5.0]], "mask": [[1, 1, 0], [1, 1, 1]]}, pool(x))
    np.testing.assert_allclose(out, ref)  # not a [B, B] broadcast


def test_labels_outside_the_class_range_at_counted_positions_are_refused():
    g = Graph()
    logits = Masked(g.placeholder("logits", ("batch", "time", 4)), masked.mask_placeholder(g, "mask"))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    loss = masked.softmax_cross_entropy(logits, labels)
    fd = {"logits": np.zeros((1, 3, 4)), "mask": [[1, 1, 0]]}
    for bad in (-100, 4):
        with pytest.raises(ValueError, match=f"label {bad} .*outside \\[0, 4\\)"):
            g.run({**fd, "labels": [[1, bad, 0]]}, loss)
    # the ignore label, and anything at a padded position, are fine
    assert np.isfinite(g.run({**fd, "labels": [[1, -1, 99]]}, loss))


def test_trainer_follows_its_own_loss_after_graph_gradients():
    g = Graph(dtype=np.float64)
    w = g.variable("w", np.array([0.8]))
    x = g.placeholder("x", ("batch", 1))
    loss1 = ops.mean(ops.square(x * w - 1.0), name="loss1")
    loss2 = ops.mean(x * w, name="loss2")  # gradient 1 per step: a different direction
    fd = {"x": np.ones((4, 1))}
    trainer = Trainer(g, loss1, "sgd", lr=0.5)
    g.gradients(fd, loss2)  # points SameDiff's gradient function at loss2
    reported = trainer.step(fd)
    # an SGD step on loss1 from w = 0.8: grad = 2 (0.8 - 1) = -0.4 -> w = 1.0, and loss1 before = 0.04
    assert reported == pytest.approx(0.04)
    np.testing.assert_allclose(g.get_value(w), [1.0])


def test_numpy_on_the_left_defers_to_the_graph_value():
    g = Graph()
    x = g.placeholder("x", (3,))
    y = np.ones(3, np.float32) + x
    assert not isinstance(y, np.ndarray)  # one graph node, not an object array of three
    np.testing.assert_allclose(g.run({"x": [1.0, 2.0, 3.0]}, y), [2.0, 3.0, 4.0])


def test_numbers_that_do_not_fit_an_integer_var_are_refused():
    g = Graph()
    i = g.placeholder("i", (2,), "int32")
    with pytest.raises(TypeError, match="does not fit"):
        i * 0.5
    assert g.run({"i": [1, 2]}, i * 2).tolist() == [2, 4]


@pytest.mark.parametrize("build", [lambda x: ops.transpose(x, (0, 1, 5)), lambda x: ops.expand_dims(x, 7),
                                   lambda x: ops.concat([x, x], 3), lambda x: ops.sum(x, 3)])  # fmt: skip
def test_out_of_range_axes_raise_instead_of_wrapping(build):
    g = Graph()
    x = g.placeholder("x", (2, 3, 4))
    with pytest.raises(ValueError, match="out of range"):
        build(x)


def test_reducing_over_no_axis_is_the_identity():
    g = Graph()
    x = g.placeholder("x", (2, 3))
    y = ops.sum(x, axis=())
    assert y.shape == (2, 3)
    np.testing.assert_allclose(g.run({"x": np.ones((2, 3))}, y), np.ones((2, 3)))


def test_a_plain_placeholder_cannot_pose_as_a_mask():
    g = Graph()
    with pytest.raises(MaskError, match="not a mask placeholder"):
        Masked(g.placeholder("x", ("batch", "time", 2)), g.placeholder("m", ("batch", "time")))


def test_loss_names_are_scoped_once():
    g = Graph()
    logits = Masked(g.placeholder("logits", ("batch", "time", 4)), masked.mask_placeholder(g, "mask"))
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    with g.scope("head"):
        loss = masked.softmax_cross_entropy(logits, labels)
        acc = masked.accuracy(logits, labels)
    assert loss.name == "head/xent_loss" and acc.name == "head/top1_accuracy"
