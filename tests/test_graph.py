"""Graph: feed validation before Java, Java errors as JavaError, outputs as copies, names, values, start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from samediff_py import BackendMissing, Graph, JavaError, _jvm, ops

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def g() -> Graph:
    """x [batch, 3] float32, ids [batch, time] int32, m [batch, time] float32, all feeding y."""
    g = Graph()
    x = g.placeholder("x", ("batch", 3))
    ids = g.placeholder("ids", ("batch", "time"), np.int32)
    m = g.placeholder("m", ("batch", "time"))
    g.meta["y"] = ops.sum(x, 1) + ops.sum(ops.cast(ids, np.float32) * m, 1)
    return g


def feeds(batch: int = 2, time: int = 4) -> dict[str, np.ndarray]:
    return {
        "x": np.ones((batch, 3), np.float32),
        "ids": np.arange(batch * time, dtype=np.int32).reshape(batch, time),
        "m": np.ones((batch, time), np.float32),
    }


@pytest.fixture
def no_java(monkeypatch):
    """Fail the test if execution reaches the Java bridge (feeds are moved or the graph is run)."""

    def reached(*_args, **_kwargs):
        raise AssertionError("validation should have failed before calling into Java")

    monkeypatch.setattr(_jvm, "bridge", reached)


# ---------------------------------------------------------------------------- feed validation, before Java
def test_valid_feeds_run(g):
    np.testing.assert_allclose(g.run(feeds(), g.meta["y"]), [3 + 6, 3 + 22])


def test_unknown_feed_name_lists_the_placeholders(g, no_java):
    with pytest.raises(KeyError, match=r"'xx' is not a placeholder of this graph \(placeholders: ids, m, x\)"):
        g.run({**feeds(), "xx": np.zeros(3)}, g.meta["y"])


def test_wrong_rank(g, no_java):
    with pytest.raises(ValueError, match=r"placeholder 'x': expected rank 2 shape \(batch, 3\), got shape \(3,\)"):
        g.run({**feeds(), "x": np.ones(3, np.float32)}, g.meta["y"])


def test_wrong_fixed_dim(g, no_java):
    with pytest.raises(
        ValueError, match=r"placeholder 'x': expected shape \(batch, 3\), got \(2, 4\) \(axis 1 must be 3\)"
    ):
        g.run({**feeds(), "x": np.ones((2, 4), np.float32)}, g.meta["y"])


def test_inconsistent_named_dims(g, no_java):
    bad = {**feeds(), "m": np.ones((2, 5), np.float32)}  # time is 4 in ids, 5 in m
    with pytest.raises(
        ValueError, match=r"placeholder 'm': dimension 'time' is 5 here but 4 in 'ids' \(shape \(2, 5\)\)"
    ):
        g.run(bad, g.meta["y"])
    bad = {**feeds(), "x": np.ones((3, 3), np.float32)}  # batch is 3 in x, 2 in the others
    with pytest.raises(ValueError, match=r"dimension 'batch' is"):
        g.run(bad, g.meta["y"])


def test_float_feed_for_int_placeholder(g, no_java):
    with pytest.raises(TypeError, match=r"placeholder 'ids': expected dtype int32, got float64"):
        g.run({**feeds(), "ids": np.ones((2, 4))}, g.meta["y"])


def test_int_feed_out_of_range(g, no_java):
    with pytest.raises(ValueError, match=r"placeholder 'ids': values out of range for int32"):
        g.run({**feeds(), "ids": np.full((2, 4), 2**40)}, g.meta["y"])


def test_unsupported_feed_dtype(g, no_java):
    with pytest.raises(TypeError, match=r"placeholder 'x': expected dtype float32, got complex128"):
        g.run({**feeds(), "x": np.ones((2, 3), complex)}, g.meta["y"])


def test_missing_feed_names_the_placeholder(g, no_java):
    f = feeds()
    del f["m"]
    with pytest.raises(KeyError, match=r"missing feed for placeholder\(s\) \['m'\]"):
        g.run(f, g.meta["y"])


def test_missing_feed_of_an_unneeded_placeholder_is_fine(g):
    np.testing.assert_allclose(g.run({"x": np.ones((2, 3))}, ops.sum(g["x"], 1)), [3.0, 3.0])


def test_safe_casts_are_made(g):
    f = {"x": np.ones((2, 3), np.float64), "ids": np.ones((2, 4), np.int64), "m": np.ones((2, 4), bool)}
    np.testing.assert_allclose(g.run(f, g.meta["y"]), [7.0, 7.0])
    f = {**feeds(), "x": [[1, 1, 1], [1, 1, 1]]}  # nested lists are fine too
    np.testing.assert_allclose(g.run(f, g.meta["y"]), [9.0, 25.0])


def test_feeds_keyed_by_var(g):
    f = {g["x"]: np.ones((2, 3)), "ids": feeds()["ids"], g["m"]: feeds()["m"]}
    np.testing.assert_allclose(g.run(f, g.meta["y"]), [9.0, 25.0])


def test_named_dims_can_change_between_runs(g):
    assert g.run(feeds(1, 7), g.meta["y"]).shape == (1,)
    assert g.run(feeds(5, 2), g.meta["y"]).shape == (5,)


# ---------------------------------------------------------------------------- Java errors
def bad_reshape_graph() -> tuple[Graph, object]:
    g = Graph()
    x = g.placeholder("x", (None, None))  # sizes unknown when building: Python cannot check the reshape
    return g, ops.reshape(x, (-1, 7))


def test_java_exception_becomes_java_error():
    g, y = bad_reshape_graph()
    with pytest.raises(JavaError) as info:
        g.run({"x": np.zeros((2, 3), np.float32)}, y)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.java_class == "java.lang.RuntimeException"
    assert "reshape" in err.java_message
    assert str(err).startswith("java.lang.RuntimeException: ")


def test_interpreter_survives_java_errors():
    g, y = bad_reshape_graph()
    for _ in range(3):
        with pytest.raises(JavaError):
            g.run({"x": np.zeros((2, 3), np.float32)}, y)
    assert g.run({"x": np.ones((2, 7), np.float32)}, y).shape == (2, 7)  # the same graph still works
    g2 = Graph()  # and new ones
    assert g2.run({}, g2.constant("c", np.float32(2.0)) + 1) == 3.0


def test_pyjnius_call_errors_keep_their_message():
    g = Graph()
    x = g.placeholder("x", (2, 3))
    with pytest.raises(JavaError) as info, _jvm.java_errors():
        g.sd.math().logSumExp("lse", x.j, [1])  # a list where Java wants int varargs: no overload matches
    assert "No methods called logSumExp" in str(info.value)


# ---------------------------------------------------------------------------- outputs are copies
def test_run_outputs_are_independent_copies():
    g = Graph()
    x = g.placeholder("x", (3,))
    y = x * 2
    first = g.run({"x": np.array([1.0, 2.0, 3.0])}, y)
    second = g.run({"x": np.array([10.0, 20.0, 30.0])}, y)  # M2.1 may reuse output arrays between calls
    np.testing.assert_array_equal(first, [2.0, 4.0, 6.0])
    first[:] = -1.0  # mutating a result changes nothing else
    np.testing.assert_array_equal(second, [20.0, 40.0, 60.0])
    np.testing.assert_array_equal(g.run({"x": np.array([1.0, 2.0, 3.0])}, y), [2.0, 4.0, 6.0])


def test_same_output_twice_gives_two_arrays():
    g = Graph()
    y = g.placeholder("x", (2,)) + 1
    a, b = g.run({"x": np.zeros(2)}, [y, y])
    a[0] = 99.0
    np.testing.assert_array_equal(b, [1.0, 1.0])


def test_feeds_are_not_modified_nor_aliased():
    g = Graph()
    x = g.placeholder("x", (3,))
    feed = np.array([1.0, 2.0, 3.0], np.float32)
    out = g.run({"x": feed}, x)  # the placeholder itself
    assert not np.shares_memory(out, feed)
    out[:] = 0
    np.testing.assert_array_equal(feed, [1.0, 2.0, 3.0])


def test_requested_variable_is_a_copy():
    g = Graph()
    w = g.variable("w", np.array([1.0, 2.0]))
    got = g.run({}, w)
    got[:] = 0.0
    np.testing.assert_array_equal(g.get_value(w), [1.0, 2.0])
    np.testing.assert_array_equal(g.run({}, w), [1.0, 2.0])
    g.set_value(w, [5.0, 6.0])
    np.testing.assert_array_equal(got, [0.0, 0.0])  # the earlier result did not follow the variable
    np.testing.assert_array_equal(g.run({}, w), [5.0, 6.0])


# ---------------------------------------------------------------------------- output structures
def test_run_with_list_dict_and_names():
    g = Graph()
    x = g.placeholder("x", (2,))
    y = ops.add(x, 1.0, name="y")
    z = ops.multiply(x, 3.0, name="z")
    f = {"x": np.array([1.0, 2.0])}
    lst = g.run(f, [y, "z"])
    assert isinstance(lst, list) and len(lst) == 2
    np.testing.assert_array_equal(lst[1], [3.0, 6.0])
    tup = g.run(f, (z, y))
    assert isinstance(tup, list)
    dct = g.run(f, {"plus": y, "times": "z"})
    assert list(dct) == ["plus", "times"]
    np.testing.assert_array_equal(dct["plus"], [2.0, 3.0])
    np.testing.assert_array_equal(g.run(f, "y"), [2.0, 3.0])


def test_run_with_no_outputs():
    g = Graph()
    g.placeholder("x", (2,))
    assert g.run({"x": np.zeros(2)}, []) == []
    assert g.run({"x": np.zeros(2)}, {}) == {}


def test_run_rejects_foreign_and_unknown_outputs():
    g, other = Graph(), Graph()
    y = other.placeholder("x", (2,)) + 1
    with pytest.raises(ValueError, match="belongs to another graph"):
        g.run({}, y)
    with pytest.raises(KeyError, match="no node named 'nope'"):
        g.run({}, "nope")


# ---------------------------------------------------------------------------- names and scopes
def test_unique_names():
    g = Graph()
    x = g.placeholder("x", (2,))
    names = [(x + 1).name, (x + 1).name, (x + 1).name]
    assert names == ["add", "add_1", "add_2"]
    assert ops.add(x, 1.0, name="total").name == "total"
    assert g["total"].name == "total"
    with pytest.raises(ValueError, match="already used"):
        ops.add(x, 1.0, name="total")
    with pytest.raises(ValueError, match="already used"):
        g.placeholder("x", (2,))
    assert g.unique_name("total") == "total_1"  # automatic names skip taken ones


def test_scopes_prefix_and_nest():
    g = Graph()
    with g.scope("enc"):
        x = g.placeholder("x", (2,))
        a = x + 1
        with g.scope("block0"):
            w = g.variable("w", np.ones(2))
            b = a * w
        c = a + 1
    d = x + 1
    assert [x.name, a.name, w.name, b.name, c.name, d.name] == [
        "enc/x",
        "enc/add",
        "enc/block0/w",
        "enc/block0/mul",
        "enc/add_1",
        "add",
    ]
    assert g["enc/block0/w"] is w
    assert set(g.placeholders) == {"enc/x"}
    np.testing.assert_array_equal(g.run({"enc/x": np.array([1.0, 2.0])}, b), [2.0, 3.0])


def test_same_name_in_different_scopes():
    g = Graph()
    with g.scope("a"):
        v1 = g.variable("w", np.zeros(1))
    with g.scope("b"):
        v2 = g.variable("w", np.ones(1))
    assert (v1.name, v2.name) == ("a/w", "b/w")
    assert [v.name for v in g.trainable()] == ["a/w", "b/w"]


def test_scope_is_popped_after_an_exception():
    g = Graph()
    with pytest.raises(RuntimeError), g.scope("s"):
        raise RuntimeError
    assert g.placeholder("x", (1,)).name == "x"


@pytest.mark.parametrize("bad", ["1x", "a b", "", "x:0", "é"])
def test_invalid_names(bad):
    g = Graph()
    with pytest.raises(ValueError, match="invalid name"):
        g.placeholder(bad, (1,))
    with pytest.raises(ValueError, match="invalid name"), g.scope(bad):
        pass


def test_unknown_node_lookup():
    with pytest.raises(KeyError, match="no node named 'w'"):
        Graph()["w"]


def test_var_basics():
    g = Graph()
    x = g.placeholder("x", ("batch", 3))
    assert x.shape == (None, 3) and x.rank == 2 and x.dtype == np.float32 and x.kind == "placeholder"
    assert repr(x) == "<Var 'x' placeholder [?, 3] float32>"
    with pytest.raises(TypeError, match="no truth value"):
        bool(x)


def test_placeholder_dim_validation():
    g = Graph()
    with pytest.raises(ValueError, match=r"placeholder 'x': dimension -1"):
        g.placeholder("x", (-1, 3))
    with pytest.raises(TypeError, match="float16"):
        g.placeholder("y", (3,), np.float16)


# ---------------------------------------------------------------------------- values
def test_get_value_and_set_value():
    g = Graph()
    w = g.variable("w", np.array([[1.0, 2.0]]))
    c = g.constant("c", np.array([3.0, 4.0]))
    np.testing.assert_array_equal(g.get_value("w"), [[1.0, 2.0]])
    np.testing.assert_array_equal(g.get_value(c), [3.0, 4.0])
    got = g.get_value(w)
    got[:] = 0.0  # a copy
    np.testing.assert_array_equal(g.get_value(w), [[1.0, 2.0]])
    g.set_value(w, np.array([[5.0, 6.0]]))  # float64 in, stored as the variable's float32
    assert g.get_value(w).dtype == np.float32
    np.testing.assert_array_equal(g.run({}, w * 2), [[10.0, 12.0]])
    src = np.array([[7.0, 8.0]], np.float32)
    g.set_value(w, src)
    src[:] = 0.0  # set_value copied it
    np.testing.assert_array_equal(g.get_value(w), [[7.0, 8.0]])


def test_value_errors():
    g = Graph()
    w = g.variable("w", np.zeros((1, 2)))
    x = g.placeholder("x", (2,))
    c = g.constant("c", np.zeros(2))
    with pytest.raises(ValueError, match=r"variable 'w': expected shape \(1, 2\), got \(2,\)"):
        g.set_value(w, np.zeros(2))
    with pytest.raises(ValueError, match="'c' is a constant, not a variable"):
        g.set_value(c, np.zeros(2))
    with pytest.raises(ValueError, match="'x' is a placeholder: it has no stored value"):
        g.get_value(x)
    with pytest.raises(ValueError, match="'add' is a op"):
        g.get_value(x + 1)


def test_variable_initialisers_are_seeded():
    a = Graph(seed=3).variable("w", shape=(4, 5))
    b = Graph(seed=3).variable("w", shape=(4, 5))
    va, vb = a.graph.get_value(a), b.graph.get_value(b)
    np.testing.assert_array_equal(va, vb)
    assert va.dtype == np.float32 and np.abs(va).max() <= np.sqrt(6.0 / 9.0)
    with pytest.raises(ValueError, match="unknown init"):
        Graph().variable("w", shape=(2,), init="nope")
    with pytest.raises(ValueError, match="give a value or a shape"):
        Graph().variable("w")


# ---------------------------------------------------------------------------- gradients (graph side)
def test_gradients_wrt_variables_and_placeholders():
    g = Graph(dtype=np.float64)
    x = g.placeholder("x", (None, 2))
    w = g.variable("w", np.array([[1.0], [2.0]]))
    unused = g.variable("unused", np.ones(3))
    loss = ops.sum(ops.square(x @ w))
    xv = np.array([[1.0, 1.0], [0.0, 2.0]])
    grads = g.gradients({"x": xv}, loss, [w, x, unused])
    y = xv @ np.array([[1.0], [2.0]])
    np.testing.assert_allclose(grads["w"], xv.T @ (2 * y))
    np.testing.assert_allclose(grads["x"], 2 * y @ np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(grads["unused"], np.zeros(3))
    assert set(g.gradients({"x": xv}, loss)) == {"w", "unused"}  # default: every trainable variable


def test_gradient_errors():
    g = Graph()
    ids = g.placeholder("ids", (3,), np.int32)
    x = g.placeholder("x", (3,))
    with pytest.raises(ValueError, match="at least one trainable float variable"):
        g.gradients({"x": np.ones(3)}, ops.sum(x), [x])
    g.variable("w", np.ones(1))
    with pytest.raises(TypeError, match="cannot differentiate w.r.t. 'ids'"):
        g.gradients({"x": np.ones(3), "ids": np.ones(3)}, ops.sum(x), [ids])
    with pytest.raises(KeyError, match=r"missing feed for placeholder\(s\) \['x'\]"):
        g.gradients({}, ops.sum(x), [x])


def test_two_graphs_are_independent():
    g1, g2 = Graph(), Graph()
    a = g1.variable("w", np.ones(2))
    b = g2.variable("w", np.zeros(2))
    g1.set_value(a, [3.0, 3.0])
    np.testing.assert_array_equal(g2.get_value(b), [0.0, 0.0])


# ---------------------------------------------------------------------------- start-up (subprocesses)
def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=120,
    )


def test_import_does_not_start_the_jvm():
    res = _python(
        """
        import sys
        import samediff_py
        from samediff_py import _jvm, ops, masked, Graph
        assert not _jvm.started()
        assert "jnius" not in sys.modules
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_backend_missing_names_the_command(tmp_path):
    res = _python(
        """
        from samediff_py import BackendMissing, Graph, _jvm
        try:
            Graph()
        except BackendMissing as e:
            print(e)
            assert not _jvm.started()
        else:
            raise SystemExit("no BackendMissing")
        """,
        SAMEDIFF_PY_JARS=str(tmp_path),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert str(tmp_path) in res.stdout
    assert "samediff-py fetch" in res.stdout and "./dev setup" in res.stdout and "doctor" in res.stdout


def test_backend_missing_is_a_runtime_error():
    assert issubclass(BackendMissing, RuntimeError) and issubclass(JavaError, RuntimeError)


def test_summary_lists_placeholders_masks_every_variable_and_the_total():
    from samediff_py import masked
    from samediff_py.models import Encoder, EncoderConfig

    g = Graph(seed=0)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0, padding="left")
    Encoder(g, EncoderConfig(vocab=50, d_model=8, heads=2, d_ff=16, layers=2, max_len=12))(tokens, mask)
    text = g.summary()
    total = sum(g.get_value(v).size for v in g.trainable())
    assert f"{len(g.trainable())} variables, {total:,} parameters" in text
    assert f"total parameters: {total:,}" in text
    for v in g.trainable():
        line = next(ln for ln in text.splitlines() if ln.startswith(v.name + " "))
        assert line.split()[-1] == f"{g.get_value(v).size:,}"
    assert "mask of 'tokens': 1 = valid, 0 = padding; left-padded; pad id 0" in text
    assert "'tokens' ids in [0, 50)" in text and "'tokens' axis 1 at most 12" in text
    assert "[batch, heads, query, key]" in text


def test_to_dot_has_a_node_per_var_and_an_edge_per_input():
    import re

    g = Graph()
    x = g.placeholder("x", ("batch", 3))
    w = g.variable("w", np.ones((3, 2), np.float32))
    y = ops.tanh(x @ w, name="y")
    dot = g.to_dot("net")
    assert dot.startswith('digraph "net" {') and dot.rstrip().endswith("}")
    nodes = re.findall(r'^  "([^"]+)" \[shape=(\w+)', dot, re.M)
    edges = re.findall(r'^  "([^"]+)" -> "([^"]+)";', dot, re.M)
    assert dict(nodes) == {
        v.name: {"placeholder": "ellipse", "variable": "box", "constant": "box", "op": "plaintext"}[v.kind]
        for v in g.vars.values()
    }
    assert sorted(edges) == sorted((p.name, v.name) for v in g.vars.values() for p in v.parents)
    assert ("x", y.parents[0].name) in edges and (y.parents[0].name, "y") in edges
