"""The graph room: a :class:`Graph` wraps one SameDiff instance; a :class:`Var` is one node of it.

A graph is plain data: placeholders, variables, constants and ops, each with a readable name and a static
shape known to Python (``None`` for a dimension only known when fed). Nothing is global: two graphs in one
process are independent.

>>> import numpy as np
>>> g = Graph(seed=0)
>>> x = g.placeholder("x", ("batch", 3))
>>> w = g.variable("w", np.eye(3, 2, dtype=np.float32))
>>> y = (x @ w).relu()
>>> y.shape
(None, 2)
>>> g.run({"x": np.array([[1.0, -2.0, 3.0]])}, y)
array([[1., 0.]], dtype=float32)
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _jvm, arrays, checks
from .errors import FeedError, MaskError

__all__ = ["FeedError", "Graph", "MaskError", "PlaceholderSpec", "Var"]

Dim = int | str | None  # fixed size, named (checked for consistency across feeds), or unknown
Shape = tuple[int | None, ...]

_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
RESERVED_PREFIX = "samediff_py"  # the checkpoint's own entries (metadata) live under this name


@dataclass(frozen=True)
class PlaceholderSpec:
    """What a placeholder accepts: ``dims`` may hold ints, names (e.g. ``"batch"``) or ``None``."""

    name: str
    dims: tuple[Dim, ...]
    dtype: np.dtype


class Var:
    """A node of a :class:`Graph`: placeholder, variable, constant or op output.

    ``shape`` is the static shape (``None`` = known only at run time), ``dtype`` a numpy dtype, ``name`` the
    SameDiff name. Python operators build ops: ``+ - * / @``, unary ``-``, ``< <= > >=``; numbers are
    promoted to constants of this Var's dtype. ``==`` keeps its Python meaning (identity): use
    :func:`samediff_py.ops.equal`.
    """

    __slots__ = ("graph", "j", "name", "shape", "dtype", "kind", "parents", "__weakref__")
    __array_ufunc__ = None  # np.ones(3) + var must call var.__radd__, not build an object array of Vars

    def __init__(self, graph: Graph, j: Any, shape: Sequence[int | None], dtype: Any, kind: str, parents=()):
        self.graph = graph
        self.j = j  # the org.nd4j.autodiff.samediff.SDVariable
        with _jvm.java_errors():
            self.name: str = j.name()  # read once: a pyjnius call costs microseconds on every hot path
        self.shape: Shape = tuple(None if d is None or d < 0 else int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.kind = kind  # "placeholder" | "variable" | "constant" | "op"
        self.parents: tuple[Var, ...] = tuple(parents)

    @property
    def rank(self) -> int:
        """Number of axes of the static shape."""
        return len(self.shape)

    def __repr__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"<Var {self.name!r} {self.kind} [{dims}] {self.dtype}>"

    def __bool__(self) -> bool:
        raise TypeError("a graph Var has no truth value; compare values after graph.run(...)")

    # operators -> ops (imported lazily: ops builds on this module). A masked operand answers
    # NotImplemented so Python asks the Masked value, which keeps (or refuses to drop) its mask.
    def __add__(self, o):
        return NotImplemented if _is_masked(o) else _ops().add(self, o)

    def __radd__(self, o):
        return _ops().add(o, self)

    def __sub__(self, o):
        return NotImplemented if _is_masked(o) else _ops().subtract(self, o)

    def __rsub__(self, o):
        return _ops().subtract(o, self)

    def __mul__(self, o):
        return NotImplemented if _is_masked(o) else _ops().multiply(self, o)

    def __rmul__(self, o):
        return _ops().multiply(o, self)

    def __truediv__(self, o):
        return NotImplemented if _is_masked(o) else _ops().divide(self, o)

    def __rtruediv__(self, o):
        return _ops().divide(o, self)

    def __matmul__(self, o):
        return NotImplemented if _is_masked(o) else _ops().matmul(self, o)

    def __neg__(self):
        return _ops().negative(self)

    def __lt__(self, o):
        return _ops().less(self, o)

    def __le__(self, o):
        return _ops().less_equal(self, o)

    def __gt__(self, o):
        return _ops().greater(self, o)

    def __ge__(self, o):
        return _ops().greater_equal(self, o)

    def __getitem__(self, index):
        return _ops().slice_(self, index)

    # a few methods for chaining; every op is also a function in samediff_py.ops
    def relu(self, name: str | None = None) -> Var:
        """Same as :func:`samediff_py.ops.relu`."""
        return _ops().relu(self, name=name)

    def sum(self, axis=None, keepdims: bool = False, name: str | None = None) -> Var:
        """Same as :func:`samediff_py.ops.sum`."""
        return _ops().sum(self, axis, keepdims, name=name)

    def mean(self, axis=None, keepdims: bool = False, name: str | None = None) -> Var:
        """Same as :func:`samediff_py.ops.mean`."""
        return _ops().mean(self, axis, keepdims, name=name)

    def max(self, axis=None, keepdims: bool = False, name: str | None = None) -> Var:
        """Same as :func:`samediff_py.ops.max`."""
        return _ops().max(self, axis, keepdims, name=name)

    def reshape(self, *shape, name: str | None = None) -> Var:
        """Same as :func:`samediff_py.ops.reshape`; the shape as one tuple or as separate ints."""
        return _ops().reshape(
            self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape, name=name
        )

    def transpose(self, *axes, name: str | None = None) -> Var:
        """Same as :func:`samediff_py.ops.transpose`; no axes reverses them."""
        return _ops().transpose(self, axes or None, name=name)

    def astype(self, dtype: Any, name: str | None = None) -> Var:
        """Same as :func:`samediff_py.ops.cast`."""
        return _ops().cast(self, dtype, name=name)


def _is_masked(o: Any) -> bool:
    return getattr(o, "__masked__", False)


def _ops():
    from . import ops

    return ops


Outputs = Var | str | Sequence[Var | str] | Mapping[str, Var | str]


class Graph:
    """A SameDiff graph built from Python.

    Args:
        seed: seeds the initialisers of :meth:`variable` (each variable may also take its own ``seed``).
        dtype: default float dtype for placeholders and variables (``float32`` or ``float64``).
    """

    def __init__(self, seed: int | None = 0, dtype: Any = np.float32):
        self.dtype = arrays.check_dtype(dtype)
        self.rng = np.random.default_rng(seed)
        with _jvm.java_errors():
            self.sd = _jvm.jclass("org.nd4j.autodiff.samediff.SameDiff").create()
        self.placeholders: dict[str, PlaceholderSpec] = {}
        self.vars: dict[str, Var] = {}  # every Var made through this graph, by name
        # Python-side metadata saved with the model: feed contracts ("checks"), mask links, trainer config...
        self.meta: dict[str, Any] = {}
        # Extra validators of your own, run on every feed dict after the declared checks. Not saved: a
        # contract that must survive save/load is a declared check (add_check).
        self.feed_checks: list[Callable[[dict[str, np.ndarray]], None]] = []
        self._scope: list[str] = []
        self._counts: dict[str, int] = {}
        self._grad_key: tuple = ((), (), -1)
        self._need_cache: dict[tuple[str, ...], frozenset[str]] = {}  # output names -> ancestors
        # What other modules derive once per graph and look up again (masked.rows: a mask's row index, which
        # values hold zeros at padding...); here, not in module-level dicts, so it dies with the graph
        self.memo: dict[str, dict[Any, Any]] = {}

    # ------------------------------------------------------------------ naming
    @contextlib.contextmanager
    def scope(self, prefix: str) -> Iterator[None]:
        """Prefix every name made inside the block with ``prefix/`` (scopes nest)."""
        self._check_name(prefix)
        self._scope.append(prefix)
        try:
            yield
        finally:
            self._scope.pop()

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME_OK.match(name):
            raise ValueError(f"invalid name {name!r}: use letters, digits, '_', '.', '-' (not starting with a digit)")
        if name.split("/")[0].startswith(RESERVED_PREFIX):
            raise ValueError(
                f"invalid name {name!r}: names starting with {RESERVED_PREFIX!r} are reserved for checkpoints"
            )

    def unique_name(self, base: str, explicit: str | None = None) -> str:
        """``explicit`` (scoped) if given, else ``base``, ``base_1``, ... (scoped); never a taken name."""
        if explicit is not None:
            self._check_name(explicit)
            full = "/".join([*self._scope, explicit])
            if self._taken(full):
                raise ValueError(f"name {full!r} is already used in this graph")
            return full
        stem = "/".join([*self._scope, base])
        while True:
            n = self._counts.get(stem, 0)
            self._counts[stem] = n + 1
            full = stem if n == 0 else f"{stem}_{n}"
            if not self._taken(full):
                return full

    def _taken(self, full: str) -> bool:
        if full in self.vars:
            return True
        with _jvm.java_errors():  # SameDiff names some internal nodes itself
            return bool(self.sd.hasVariable(full))

    def _register(self, var: Var) -> Var:
        self.vars[var.name] = var
        return var

    def op(self, base: str, name: str | None, build: Callable[[str], Any], shape, dtype, parents) -> Var:
        """Add one op: ``build(full_name)`` returns the SDVariable; shape/dtype are the static result."""
        full = self.unique_name(base, name)
        with _jvm.java_errors():
            j = build(full)
        with _jvm.java_errors():
            if j.name() != full:  # some SameDiff ops ignore the requested name
                j = self.sd.updateVariableNameAndReference(j, full)
            # op names = output names, or M2.1's loader wires ops to the wrong variables (Bridge.alignOpNames);
            # done now, before any gradient function copies the ops
            _jvm.bridge().alignOpNames(self.sd)
        return self._register(Var(self, j, shape, dtype, "op", parents))

    # ------------------------------------------------------------------ leaves
    def placeholder(self, name: str, shape: Sequence[Dim], dtype: Any = None) -> Var:
        """A value fed at run time.

        ``shape`` entries: an int (fixed), ``None`` (any size) or a string naming a dimension: every feed of
        one run must agree on the size of a named dimension (``"batch"``, ``"time"``...), checked in Python.
        """
        dt = arrays.check_dtype(self.dtype if dtype is None else dtype)
        dims = tuple(shape)
        for d in dims:
            if not (d is None or isinstance(d, str) or (isinstance(d, (int, np.integer)) and d >= 0)):
                raise ValueError(f"placeholder {name!r}: dimension {d!r} must be an int >= 0, a name or None")
        full = self.unique_name("placeholder", name)
        static = tuple(int(d) if isinstance(d, (int, np.integer)) else -1 for d in dims)
        with _jvm.java_errors():
            j = _jvm.bridge().placeholder(self.sd, full, _jvm.dtype_enum(arrays.ND4J_DTYPES[dt]), list(static))
        self.placeholders[full] = PlaceholderSpec(full, dims, dt)
        return self._register(Var(self, j, static, dt, "placeholder"))

    def variable(
        self,
        name: str,
        value: Any = None,
        *,
        shape: Sequence[int] | None = None,
        init: str = "glorot_uniform",
        scale: float = 1.0,
        seed: int | None = None,
        dtype: Any = None,
    ) -> Var:
        """A trainable array, from ``value`` or from ``shape`` and an initialiser.

        ``init``: ``glorot_uniform`` / ``glorot_normal`` (fan_in = prod(shape[:-1]), fan_out = shape[-1]),
        ``he_uniform`` / ``he_normal`` (fan_in), ``normal`` (std = ``scale``), ``uniform`` (in
        [-scale, scale]), ``zeros``, ``ones``. Drawn from numpy's generator seeded by ``seed`` or the graph's.
        """
        dt = arrays.check_dtype(self.dtype if dtype is None else dtype)
        if value is None:
            if shape is None:
                raise ValueError(f"variable {name!r}: give a value or a shape")
            value = initial_value(
                tuple(shape), init, np.random.default_rng(seed) if seed is not None else self.rng, scale
            )
        value = np.asarray(value).astype(dt, copy=False)
        full = self.unique_name("variable", name)
        with _jvm.java_errors():
            j = _jvm.bridge().variable(self.sd, full, arrays.to_indarray(value))
        return self._register(Var(self, j, value.shape, dt, "variable"))

    def constant(self, name: str | None, value: Any, dtype: Any = None) -> Var:
        """A fixed array baked into the graph (not trained)."""
        value = np.asarray(value, dtype=dtype)
        if value.dtype == np.float64 and dtype is None and self.dtype == np.float32:
            value = value.astype(np.float32)
        if value.dtype.kind == "i" and dtype is None and value.dtype != np.int32:
            value = value.astype(np.int64)
        dt = arrays.check_dtype(value.dtype)
        full = self.unique_name("const", name)
        with _jvm.java_errors():
            j = _jvm.bridge().constant(self.sd, full, arrays.to_indarray(value))
        return self._register(Var(self, j, value.shape, dt, "constant"))

    def __getitem__(self, name: str) -> Var:
        try:
            return self.vars[name]
        except KeyError:
            raise KeyError(f"no node named {name!r} in this graph") from None

    def trainable(self) -> list[Var]:
        """Every trainable variable, in creation order."""
        return [v for v in self.vars.values() if v.kind == "variable"]

    # ------------------------------------------------------------------ describing
    def summary(self) -> str:
        """A Keras-style description of the graph.

        Placeholders (named dims, masks with polarity and padding side), every variable with shape, dtype and parameter
        count, the total, and the declared feed contracts.

        >>> import numpy as np
        >>> from samediff_py import Graph, masked
        >>> g = Graph()
        >>> tokens = g.placeholder("tokens", ("batch", "time"), "int32")
        >>> mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=0)
        >>> emb = g.variable("emb", shape=(100, 8))
        >>> print(g.summary())  # doctest: +ELLIPSIS
        Graph: 2 placeholders, 1 variables, 800 parameters (float32)
        placeholder  dims           dtype    notes
        tokens       (batch, time)  int32
        mask         (batch, time)  float32  mask of 'tokens': 1 = valid, 0 = padding; right-padded; pad id 0
        variable     shape          dtype    parameters
        emb          (100, 8)       float32  800
        total parameters: 800
        ...
        """
        masks = self.meta.get("masks", {})
        rows = []
        for n, spec in self.placeholders.items():
            note = ""
            if n in masks:
                m = masks[n]
                note = "mask" + (f" of {m['tokens']!r}" if m.get("tokens") else "") + ": 1 = valid, 0 = padding"
                note += "; any layout" if m["padding"] == "any" else f"; {m['padding']}-padded"
                if m.get("pad_id") is not None:
                    note += f"; pad id {m['pad_id']}"
                if m.get("allow_empty_rows"):
                    note += "; empty rows allowed"
            rows.append((n, _fmt_dims(spec.dims), spec.dtype.name, note))
        variables = self.trainable()
        total = sum(int(np.prod(v.shape)) for v in variables)
        out = [f"Graph: {len(self.placeholders)} placeholders, {len(variables)} variables, {total:,} parameters "
               f"({self.dtype.name})"]  # fmt: skip
        out += _table(("placeholder", "dims", "dtype", "notes"), rows)
        out += _table(
            ("variable", "shape", "dtype", "parameters"),
            [(v.name, _fmt_dims(v.shape), v.dtype.name, f"{int(np.prod(v.shape)):,}") for v in variables],
        )
        out.append(f"total parameters: {total:,}")
        for c in self.meta.get("checks", []):
            if c["kind"] == "ids":
                out.append(f"feed contract: {c['placeholder']!r} ids in [0, {c['size']}) ({c.get('what', '')})")
            elif c["kind"] == "labels":
                out.append(f"feed contract: {c['labels']!r} labels in [0, {c['classes']}) where counted "
                           f"(ignore {c['ignore']})")  # fmt: skip
            elif c["kind"] == "length":
                out.append(f"feed contract: {c['placeholder']!r} axis {c['axis']} at most {c['max']}")
        out.append("attention weights: [batch, heads, query, key] (DL4J's fused op: [batch, heads, key, query])")
        return "\n".join(line.rstrip() for line in out)

    def to_dot(self, name: str = "samediff_py") -> str:
        """The graph as Graphviz text (``dot -Tsvg``).

        Placeholders as ellipses, variables as boxes, ops as plain nodes labelled with their name and static shape,
        edges from inputs to outputs.

        >>> from samediff_py import Graph
        >>> g = Graph()
        >>> x = g.placeholder("x", ("batch", 3))
        >>> print(g.to_dot().splitlines()[0])
        digraph "samediff_py" {
        """
        shapes = {"placeholder": "ellipse", "variable": "box", "constant": "box", "op": "plaintext"}
        lines = [f"digraph {json_quote(name)} {{", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];']
        for v in self.vars.values():
            label = f"{v.name}\n{_fmt_dims(v.shape)} {v.dtype.name}"
            style = ", style=dashed" if v.kind == "constant" else ""
            lines.append(f"  {json_quote(v.name)} [shape={shapes[v.kind]}, label={json_quote(label)}{style}];")
        for v in self.vars.values():
            for p in v.parents:
                lines.append(f"  {json_quote(p.name)} -> {json_quote(v.name)};")
        lines.append("}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ feeding
    def add_check(self, kind: str, **params: Any) -> None:
        """Declare a feed contract (see :mod:`samediff_py.checks`).

        Kept in ``meta["checks"]``, run on every feed before the JVM, saved with the model and enforced again after
        loading. Duplicates are ignored.
        """
        spec = checks.validate({"kind": kind, **params})
        specs = self.meta.setdefault("checks", [])
        if spec not in specs:
            specs.append(spec)

    def needed_placeholders(self, outputs: Iterable[Var]) -> set[str]:
        """Names of the placeholders the given nodes depend on."""
        return {n for n in self.ancestors(outputs) if n in self.placeholders}

    def ancestors(self, outputs: Iterable[Var]) -> frozenset[str]:
        """Names of the given nodes and every node they depend on.

        A graph walk, cached per output set: every run and evaluation batch asks; nodes never change once made.
        """
        outputs = list(outputs)
        key = tuple(v.name for v in outputs)
        hit = self._need_cache.get(key)
        if hit is None:
            seen: set[int] = set()
            names: set[str] = set()
            stack = list(outputs)
            while stack:
                v = stack.pop()
                if id(v) in seen:
                    continue
                seen.add(id(v))
                names.add(v.name)
                stack.extend(v.parents)
            hit = self._need_cache[key] = frozenset(names)
        return hit

    def check_feeds(
        self, feeds: Mapping[str, Any], need: Iterable[str] = (), outputs: Iterable[Var] | None = None
    ) -> dict[str, np.ndarray]:
        """Validate feeds in Python; return numpy arrays.

        Checks names, dtypes, ranks, fixed and named dims and the declared contracts.

        Safe casts are made (int64 -> int32 when in range, float64 -> float32, bool -> number); anything
        else raises with the placeholder's name, expected and actual shape/dtype. ``need``: placeholders that
        must be fed. ``outputs``: the nodes about to be computed; a contract declared for one node (e.g. the
        label range of one loss) is enforced only when that node is computed (all are, if ``None``).
        """
        out: dict[str, np.ndarray] = {}
        named: dict[str, tuple[int, str]] = {}
        for key, value in feeds.items():
            key = key.name if isinstance(key, Var) else key
            spec = self.placeholders.get(key)
            if spec is None:
                known = ", ".join(sorted(self.placeholders)) or "none"
                raise KeyError(f"{key!r} is not a placeholder of this graph (placeholders: {known})")
            a = _cast_feed(spec, np.asarray(value))
            if 0 in a.shape:
                # libnd4j crashes the process on empty batches through one_hot/gather, and gives obscure
                # errors elsewhere: refuse them here, by name
                raise FeedError(
                    f"placeholder {key!r}: empty feed of shape {a.shape}: samediff_py does not run graphs on a "
                    "batch or sequence of size 0 (skip empty batches before feeding)"
                )
            if a.ndim != len(spec.dims):
                raise ValueError(
                    f"placeholder {key!r}: expected rank {len(spec.dims)} shape {_fmt_dims(spec.dims)}, "
                    f"got shape {a.shape}"
                )
            for axis, (want, got) in enumerate(zip(spec.dims, a.shape)):
                if isinstance(want, (int, np.integer)) and want != got:
                    raise ValueError(
                        f"placeholder {key!r}: expected shape {_fmt_dims(spec.dims)}, got {a.shape} "
                        f"(axis {axis} must be {want})"
                    )
                if isinstance(want, str):
                    if want in named and named[want][0] != got:
                        size, first = named[want]
                        masks = self.meta.get("masks", {})
                        raise (MaskError if key in masks or first in masks else ValueError)(
                            f"placeholder {key!r}: dimension {want!r} is {got} here but {size} in {first!r} "
                            f"(shape {a.shape}); every feed of one run must agree on {want!r}"
                        )
                    named.setdefault(want, (got, key))
            out[key] = a
        missing = sorted(set(need) - set(out))
        if missing:
            raise KeyError(f"missing feed for placeholder(s) {missing}: the requested outputs depend on them")
        specs = self.meta.get("checks", ())
        if outputs is not None:
            upstream = self.ancestors(outputs)
            specs = [c for c in specs if c.get("node") is None or c["node"] in upstream]
        checks.run(specs, out)
        for check in self.feed_checks:
            check(out)
        return out

    def _java_feeds(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[str], list[Any], list[np.ndarray]]:
        """Zero-copy INDArray views of the (validated) feeds, plus the numpy arrays that keep them alive."""
        names, jarrs, keep = [], [], []
        for k, a in feeds.items():
            j, held = arrays.wrap(a)
            names.append(k)
            jarrs.append(j)
            keep.append(held)
        return names, jarrs, keep

    # ------------------------------------------------------------------ running
    def resolve(self, outputs: Outputs) -> tuple[list[Var], Callable[[list[np.ndarray]], Any]]:
        """Flatten ``outputs`` (a Var, name, sequence or mapping) and return a function that rebuilds it."""
        if isinstance(outputs, (Var, str)):
            return [self.as_var(outputs)], lambda r: r[0]
        if isinstance(outputs, Mapping):
            keys = list(outputs)
            return [self.as_var(outputs[k]) for k in keys], lambda r: dict(zip(keys, r))
        items = [self.as_var(o) for o in outputs]
        return items, lambda r: list(r)

    def as_var(self, o: Var | str) -> Var:
        """``o`` itself if it is a Var of this graph, the node named ``o`` if it is a name; else an error."""
        if isinstance(o, Var):
            if o.graph is not self:
                raise ValueError(f"{o!r} belongs to another graph")
            return o
        return self[o]

    def run(self, feeds: Mapping[str, Any], outputs: Outputs) -> Any:
        """Compute ``outputs`` for ``feeds``.

        Returns numpy arrays (copies, safe across later calls) in the structure of ``outputs``.
        """
        outs, rebuild = self.resolve(outputs)
        checked = self.check_feeds(feeds, self.needed_placeholders(outs), outs)
        if not outs:
            return rebuild([])
        names, jarrs, _keep = self._java_feeds(checked)
        with _jvm.java_errors():
            res = _jvm.bridge().output(self.sd, names, jarrs, [o.name for o in outs])
            return rebuild([arrays.to_numpy(r) for r in res])

    def gradients(
        self, feeds: Mapping[str, Any], loss: Var | str, wrt: Sequence[Var | str] | None = None
    ) -> dict[str, np.ndarray]:
        """d(loss)/d(each of ``wrt``) as numpy arrays keyed by name.

        ``wrt`` defaults to every trainable variable and may include placeholders. ``loss`` must be a scalar (or is
        summed by SameDiff).
        """
        loss_v = self.as_var(loss)
        targets = [self.as_var(w) for w in (wrt if wrt is not None else self.trainable())]
        for t in targets:
            if t.dtype.kind != "f":
                raise TypeError(f"cannot differentiate w.r.t. {t.name!r}: dtype {t.dtype} is not floating point")
        checked = self.check_feeds(feeds, self.needed_placeholders([loss_v]), [loss_v])
        self.define_gradients([loss_v], [t for t in targets if t.kind == "placeholder"])
        names, jarrs, _keep = self._java_feeds(checked)
        with _jvm.java_errors():
            res = _jvm.bridge().gradients(self.sd, names, jarrs, [t.name for t in targets])
            out = {}
            for t, r in zip(targets, res):
                if r is not None:
                    out[t.name] = arrays.to_numpy(r)
                    continue
                # SameDiff gives no array for nodes the loss does not depend on: the gradient is zero
                shape = checked[t.name].shape if t.kind == "placeholder" else t.shape
                if None in shape:
                    raise ValueError(
                        f"no gradient for {t.name!r} (a {t.kind} of unknown shape {shape}): SameDiff differentiates "
                        "w.r.t. variables and placeholders; ask for the placeholder it is computed from"
                    )
                out[t.name] = np.zeros(shape, t.dtype)
            return out

    def define_gradients(self, losses: Sequence[Var], placeholders: Sequence[Var] = ()) -> None:
        """Make SameDiff's gradient function differentiate the sum of ``losses``.

        (w.r.t. every trainable variable, plus ``placeholders``). Rebuilt only when the losses, placeholders or graph
        changed.
        """
        key = (tuple(v.name for v in losses), tuple(sorted({p.name for p in placeholders})), len(self.vars))
        if key == self._grad_key or (
            key[0] == self._grad_key[0] and set(key[1]) <= set(self._grad_key[1]) and key[2] == self._grad_key[2]
        ):
            return
        if not any(v.kind == "variable" and v.dtype.kind == "f" for v in self.vars.values()):
            raise ValueError("SameDiff (M2.1) differentiates only graphs with at least one trainable float variable")
        with _jvm.java_errors():
            _jvm.bridge().defineGradients(self.sd, list(key[0]), list(key[1]))
        self._grad_key = key

    def get_value(self, var: Var | str) -> np.ndarray:
        """Current value of a variable or constant."""
        v = self.as_var(var)
        if v.kind not in ("variable", "constant"):
            raise ValueError(f"{v.name!r} is a {v.kind}: it has no stored value; use graph.run")
        with _jvm.java_errors():
            return arrays.to_numpy(v.j.getArr())

    def set_value(self, var: Var | str, value: Any) -> None:
        """Overwrite a variable's value (same shape; cast to its dtype), in place.

        A live Trainer's updater keeps working on the same array, so this is safe at any time (checkpoint restore,
        averaging).
        """
        v = self.as_var(var)
        a = np.asarray(value)
        if v.kind != "variable":
            raise ValueError(f"{v.name!r} is a {v.kind}, not a variable")
        if a.shape != v.shape:
            raise ValueError(f"variable {v.name!r}: expected shape {v.shape}, got {a.shape}")
        if a.dtype.kind not in "biuf":
            raise TypeError(f"variable {v.name!r}: cannot set from dtype {a.dtype}")
        src, _keep = arrays.wrap(a.astype(v.dtype, copy=False))
        with _jvm.java_errors():
            _jvm.bridge().assign(v.j, src)


def json_quote(text: str) -> str:
    """A double-quoted string for Graphviz (JSON escaping is a valid subset)."""
    return json.dumps(text)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]


def _fmt_dims(dims: tuple[Dim, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _cast_feed(spec: PlaceholderSpec, a: np.ndarray) -> np.ndarray:
    want = spec.dtype
    if a.dtype == want:
        return a
    ok = (
        a.dtype == np.bool_
        or (a.dtype.kind in "iu" and want.kind in "iuf")
        or (a.dtype.kind == "f" and want.kind == "f")
    )
    if not ok:
        raise TypeError(f"placeholder {spec.name!r}: expected dtype {want}, got {a.dtype}")
    if a.dtype.kind in "iu" and want.kind in "iu" and a.size:
        info = np.iinfo(want)
        if a.min() < info.min or a.max() > info.max:
            raise ValueError(f"placeholder {spec.name!r}: values out of range for {want}")
    return a.astype(want)


def initial_value(shape: tuple[int, ...], init: str, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A numpy array drawn from the named initialiser (see :meth:`Graph.variable`)."""
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else (shape[0] if shape else 1)
    fan_out = shape[-1] if shape else 1
    if init == "glorot_uniform":
        lim = scale * np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, shape)
    if init == "glorot_normal":
        return rng.normal(0.0, scale * np.sqrt(2.0 / (fan_in + fan_out)), shape)
    if init == "he_uniform":
        lim = scale * np.sqrt(6.0 / fan_in)
        return rng.uniform(-lim, lim, shape)
    if init == "he_normal":
        return rng.normal(0.0, scale * np.sqrt(2.0 / fan_in), shape)
    if init == "normal":
        return rng.normal(0.0, scale, shape)
    if init == "uniform":
        return rng.uniform(-scale, scale, shape)
    if init == "zeros":
        return np.zeros(shape)
    if init == "ones":
        return np.ones(shape)
    raise ValueError(
        f"unknown init {init!r}: use glorot_uniform, glorot_normal, he_uniform, he_normal, normal, uniform, zeros, ones"
    )
