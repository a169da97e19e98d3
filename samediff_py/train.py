"""The training room: fit loops, honest loss, dropout that trains, progress, checkpoints that never lose data.

Training runs on the JVM: one call per batch (``samediffpy.Training.step``) wraps the numpy feed buffers
without copying, runs SameDiff's own training step (``sd.fit(MultiDataSet)``: forward, autodiff, updater)
and returns the value the loss variable had in that step's forward pass, i.e. at the weights *before* the
update. M2.1's own reported loss can be stuck at 0, so it is never used.

>>> import numpy as np
>>> from samediff_py import Graph, ops, train
>>> g = Graph(seed=0)
>>> x, y = g.placeholder("x", ("batch", 2)), g.placeholder("y", ("batch", 1))
>>> w = g.variable("w", np.zeros((2, 1), np.float32))
>>> loss = ops.mean(ops.square(x @ w - y), name="loss")
>>> xs = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
>>> data = {"x": xs, "y": xs @ np.array([[2.0], [-1.0]], np.float32)}
>>> trainer = train.Trainer(g, loss, updater="sgd", lr=0.1)
>>> hist = trainer.fit(data, epochs=20, batch_size=16, progress=False)
>>> bool(hist.epoch_losses[-1] < 0.01 * hist.epoch_losses[0])
True
>>> np.round(g.get_value("w").ravel(), 2)
array([ 2., -1.], dtype=float32)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from . import _jvm, arrays, ops
from .checkpoint import FORMAT, ModelFileError, export_weights, import_weights, load, save
from .errors import TrainingError
from .graph import Graph, Var

__all__ = [
    "FORMAT",
    "Callback",
    "EarlyStopping",
    "History",
    "ModelFileError",
    "Trainer",
    "TrainingError",
    "dropout",
    "evaluate",
    "export_weights",
    "feed_inference",
    "import_weights",
    "load",
    "predict",
    "save",
]
DROPOUT_KEY = "train.dropout"  # graph.meta entry: keep-mask placeholder name -> {"rate", "dims"}
TRAINER_KEY = "train.trainer"  # graph.meta entry: the last Trainer's configuration
UPDATERS = ("adam", "sgd", "nesterov", "rmsprop")

Feeds = Mapping[str, Any]
Data = Union[Mapping[str, Any], Iterable[Feeds], Callable[[int], Iterable[Feeds]]]  # noqa: UP007 (runtime alias, py3.10)


def _training() -> Any:
    return _jvm.jclass("samediffpy.Training")


def _check_hyper(**values: float) -> None:
    """Refuse hyperparameters that silently break training (before the JVM sees them)."""
    for k, v in values.items():
        if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
            raise ValueError(f"{k} must be a finite number, got {v!r}")
    ranges = {
        "lr": (0.0, None, "lr must be >= 0"),
        "l2": (0.0, None, "l2 must be >= 0"),
        "weight_decay": (0.0, None, "weight_decay must be >= 0"),
        "momentum": (0.0, 1.0, "momentum must be in [0, 1)"),
        "beta1": (0.0, 1.0, "beta1 must be in [0, 1)"),
        "beta2": (0.0, 1.0, "beta2 must be in [0, 1)"),
        "rms_decay": (0.0, 1.0, "rms_decay must be in [0, 1)"),
    }
    for k, (lo, hi, msg) in ranges.items():
        v = float(values[k])
        if v < lo or (hi is not None and v >= hi):
            raise ValueError(f"{msg}, got {v}")
    if float(values["epsilon"]) <= 0:
        raise ValueError(f"epsilon must be > 0, got {values['epsilon']}")


# ============================================================================ dropout
def dropout(x: Var, rate: float, name: str, noise_shape: Sequence[int | str] | None = None) -> Var:
    """Inverted dropout that trains: ``x * keep`` where ``keep`` is the placeholder ``<name>/keep``.

    M2.1's dropout ops have no gradient, so the mask is an input. :meth:`Trainer.fit` fills it with
    Bernoulli(1 - rate) / (1 - rate) draws (seeded); :meth:`Trainer.evaluate`, :meth:`Trainer.predict` and
    :func:`feed_inference` fill it with ones. ``noise_shape`` (default: ``x.shape`` with an unknown leading
    axis named ``"batch"``) may use 1 to share a draw along an axis, and names of placeholder dimensions
    (e.g. ``"time"``) for sizes known only when fed; ``"batch"`` always resolves to the feeds' leading size.

    >>> import numpy as np
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", ("batch", 3))
    >>> y = dropout(x, 0.5, "drop")
    >>> g.placeholders["drop/keep"].dims
    ('batch', 3)
    >>> g.run(feed_inference(g, {"x": np.ones((2, 3))}), y)
    array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
    """
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    if x.dtype.kind != "f":
        raise TypeError(f"dropout needs a float input, {x.name!r} is {x.dtype}")
    if noise_shape is None:
        dims: list[int | str] = []
        for axis, d in enumerate(x.shape):
            if d is None and axis == 0:
                dims.append("batch")
            elif d is None:
                raise ValueError(
                    f"dropout {name!r}: axis {axis} of {x.name!r} has no static size; pass noise_shape with the "
                    "name of the placeholder dimension it comes from (e.g. ('batch', 'time', 1))"
                )
            else:
                dims.append(int(d))
    else:
        dims = [d if isinstance(d, str) else int(d) for d in noise_shape]
        if len(dims) != x.rank:
            raise ValueError(f"dropout {name!r}: noise_shape {tuple(dims)} must have rank {x.rank}")
    g = x.graph
    keep = g.placeholder(f"{name}/keep", tuple(dims), x.dtype)
    g.meta.setdefault(DROPOUT_KEY, {})[keep.name] = {"rate": float(rate), "dims": dims}
    return ops.multiply(x, keep, name=name)


def _dim_size(graph: Graph, feeds: Mapping[str, np.ndarray], dim: int | str) -> int:
    if isinstance(dim, int):
        return dim
    for spec in graph.placeholders.values():
        if spec.name in feeds and dim in spec.dims:
            return int(np.shape(feeds[spec.name])[spec.dims.index(dim)])
    if dim == "batch":
        for a in feeds.values():
            if np.ndim(a):
                return int(np.shape(a)[0])
    raise ValueError(f"cannot size dropout dimension {dim!r}: no fed placeholder has a dimension of that name")


def _dropout_masks(
    graph: Graph, names: Iterable[str], feeds: Mapping[str, np.ndarray], rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """Keep-masks for ``names``: scaled Bernoulli draws with ``rng``, ones without."""
    out = {}
    specs = graph.meta.get(DROPOUT_KEY, {})
    for n in names:
        spec = specs[n]
        shape = tuple(_dim_size(graph, feeds, d) for d in spec["dims"])
        dt = graph.placeholders[n].dtype
        if rng is None or spec["rate"] == 0.0:
            out[n] = np.ones(shape, dt)
        else:
            p = 1.0 - spec["rate"]
            out[n] = (rng.random(shape) < p).astype(dt) * dt.type(1.0 / p)
    return out


def feed_inference(graph: Graph, feeds: Feeds) -> dict[str, Any]:
    """``feeds`` plus all-ones keep-masks for every dropout of ``graph`` not fed already (dropout off)."""
    missing = [n for n in graph.meta.get(DROPOUT_KEY, {}) if n not in feeds and n in graph.placeholders]
    out = dict(feeds)
    out.update(_dropout_masks(graph, missing, {k: np.asarray(v) for k, v in feeds.items()}, None))
    return out


# ============================================================================ callbacks, history
class Callback:
    """Base class for fit callbacks (any object with these optional methods works too).

    ``on_step_end(step, logs)`` runs after every training step (``logs``: ``loss``, ``epoch``, ``lr``);
    ``on_epoch_end(epoch, logs)`` after every epoch (``logs``: ``loss``, ``time``, ``samples_per_sec`` and
    ``val_*`` entries when validating). Either may return True to stop training.
    """

    def on_step_end(self, step: int, logs: dict[str, float]) -> bool | None:
        """Called after every training step; return True to stop."""
        return None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool | None:
        """Called after every epoch; return True to stop."""
        return None


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``monitor`` is an epoch log key, e.g. ``"loss"`` or ``"val_loss"``.

    >>> es = EarlyStopping(patience=2)
    >>> [es.on_epoch_end(e, {"loss": v}) for e, v in enumerate([3.0, 2.0, 2.5, 2.1, 1.0])]
    [False, False, False, True, False]
    >>> es.best, es.best_epoch
    (1.0, 4)
    """

    def __init__(self, patience: int = 3, monitor: str = "loss", min_delta: float = 0.0, mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.patience, self.monitor, self.min_delta, self.mode = int(patience), monitor, float(min_delta), mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = -1
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        """Track ``monitor``; True once it has not improved for ``patience`` epochs."""
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, not in the epoch logs {sorted(logs)}")
        value = float(logs[self.monitor])
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


@dataclass
class History:
    """What :meth:`Trainer.fit` measured.

    Losses are real values of the loss variable, one per step, each at the weights before that step's update; an epoch's
    loss is the weighted mean of its steps: by counted positions for a masked loss (the epoch's loss over all its
    counted tokens), else by rows.
    """

    step_losses: list[float] = field(default_factory=list)
    step_samples: list[int] = field(default_factory=list)
    step_weights: list[float] = field(default_factory=list)  # rows, or the counted positions of a masked loss
    epoch_losses: list[float] = field(default_factory=list)
    epoch_times: list[float] = field(default_factory=list)
    epoch_logs: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def steps(self) -> int:
        """Number of training steps recorded."""
        return len(self.step_losses)

    @property
    def samples_per_sec(self) -> float:
        """Rows trained per second of epoch time (NaN before any epoch)."""
        t = sum(self.epoch_times)
        return sum(self.step_samples) / t if t > 0 else float("nan")

    @property
    def steps_per_sec(self) -> float:
        """Training steps per second of epoch time (NaN before any epoch)."""
        t = sum(self.epoch_times)
        return self.steps / t if t > 0 else float("nan")


# ============================================================================ batching
def _rows(feeds: Mapping[str, Any]) -> int:
    for a in feeds.values():
        if np.ndim(a):
            return int(np.shape(a)[0])
    return 1


def _batches(
    data: Data, epoch: int, batch_size: int | None, shuffle: bool, rng: np.random.Generator
) -> tuple[Iterable[Feeds], int | None]:
    """The batches of one epoch, and how many (None if unknown)."""
    if isinstance(data, Mapping):
        arrs = {k: np.asarray(v) for k, v in data.items()}
        sizes = {k: a.shape[0] if a.ndim else None for k, a in arrs.items()}
        n_set = {s for s in sizes.values() if s is not None}
        if len(n_set) != 1:
            raise ValueError(f"arrays must share their leading (batch) size, got {sizes}")
        n = n_set.pop()
        bs = max(n, 1) if batch_size is None else int(batch_size)
        if bs <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        order = rng.permutation(n) if shuffle else None
        count = (n + bs - 1) // bs

        def gen() -> Iterable[Feeds]:
            for start in range(0, n, bs):
                if order is None:
                    yield {k: (a[start : start + bs] if a.ndim else a) for k, a in arrs.items()}
                else:
                    idx = order[start : start + bs]
                    yield {k: (a[idx] if a.ndim else a) for k, a in arrs.items()}

        return gen(), count
    if callable(data):
        return data(epoch), None
    if iter(data) is data and epoch > 0:  # type: ignore[arg-type]
        raise ValueError(
            "data is a one-shot iterator and was used up by the first epoch: pass a list of batches, a dict of "
            "arrays, or a callable epoch -> iterable of batches"
        )
    return data, (len(data) if hasattr(data, "__len__") else None)  # type: ignore[arg-type]


def _progress(enabled: bool | None, total: int | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    on = sys.stderr.isatty() if enabled is None else bool(enabled)
    return tqdm(total=total, desc=desc, unit="batch", disable=not on, leave=False, mininterval=0.25)


# ============================================================================ trainer
class Trainer:
    """Trains the scalar ``loss`` of ``graph`` on the JVM, feeding every placeholder the loss needs.

    Args:
        graph: the graph; ``loss`` a scalar Var (or its name) of it.
        updater: ``"adam"``, ``"sgd"``, ``"nesterov"`` (SGD with Nesterov momentum; M2.1 has no plain
            momentum) or ``"rmsprop"``; ``lr`` its learning rate, ``momentum`` (nesterov), ``beta1``,
            ``beta2``, ``epsilon`` (adam, rmsprop), ``rms_decay`` (rmsprop).
        l2: L2 penalty coefficient (added to the gradient before the updater); ``weight_decay``: decoupled
            weight decay, multiplied by the learning rate, applied after the updater.
        schedule: ``step -> learning rate`` (global step count, from 0), applied before each step.
        reuse_state: keep the TrainingConfig and updater state already in the graph (a loaded checkpoint);
            see :meth:`restore`.
    """

    def __init__(
        self,
        graph: Graph,
        loss: Var | str,
        updater: str = "adam",
        lr: float = 1e-3,
        *,
        momentum: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        rms_decay: float = 0.95,
        l2: float = 0.0,
        weight_decay: float = 0.0,
        schedule: Callable[[int], float] | None = None,
        reuse_state: bool = False,
    ):
        if updater not in UPDATERS:
            raise ValueError(f"unknown updater {updater!r}: use one of {', '.join(UPDATERS)}")
        _check_hyper(lr=lr, momentum=momentum, beta1=beta1, beta2=beta2, epsilon=epsilon, rms_decay=rms_decay,
                     l2=l2, weight_decay=weight_decay)  # fmt: skip
        self.graph = graph
        self.loss = graph.as_var(loss)
        if any(d != 1 for d in self.loss.shape if d is not None) or None in self.loss.shape:
            raise ValueError(f"the loss must be a scalar, {self.loss.name!r} has shape {self.loss.shape}")
        if self.loss.dtype.kind != "f":
            raise TypeError(f"the loss must be floating point, {self.loss.name!r} is {self.loss.dtype}")
        self.schedule = schedule
        self.config = {
            "loss": self.loss.name,
            "updater": updater,
            "lr": float(lr),
            "momentum": float(momentum),
            "beta1": float(beta1),
            "beta2": float(beta2),
            "epsilon": float(epsilon),
            "rms_decay": float(rms_decay),
            "l2": float(l2),
            "weight_decay": float(weight_decay),
        }
        self.need = sorted(graph.needed_placeholders([self.loss]))
        drops = graph.meta.get(DROPOUT_KEY, {})
        self.dropouts = [n for n in self.need if n in drops]
        self.inputs = [n for n in self.need if n not in drops]
        graph.define_gradients([self.loss])
        hyper = [lr, momentum, beta1, beta2, epsilon, rms_decay]
        with _jvm.java_errors():
            self._session = _training().session(
                graph.sd, self.loss.name, self.need, updater, hyper, float(l2), float(weight_decay), bool(reuse_state)
            )
            self.params: list[str] = list(self._session.params())  # trained variables, in flat-gradient order
            # a masked loss is a mean over counted positions: steps are combined by that count, not by rows
            self._count = graph.meta.get("mean_over", {}).get(self.loss.name)
            if self._count is not None:
                self._session.setExtras([self._count])
        self._last_count = math.nan
        self._lr = float(lr) if not reuse_state else self.learning_rate
        graph.meta[TRAINER_KEY] = dict(self.config)

    @classmethod
    def restore(cls, graph: Graph, schedule: Callable[[int], float] | None = None) -> Trainer:
        """A Trainer for a graph from :func:`load`, so training continues where it stopped.

        It gets the saved configuration, step count and (if saved) updater state.
        """
        cfg = graph.meta.get(TRAINER_KEY)
        if cfg is None:
            raise ValueError("this graph carries no trainer configuration (saved before any Trainer was made)")
        cfg = dict(cfg)
        return cls(graph, cfg.pop("loss"), schedule=schedule, reuse_state=True, **cfg)

    # ------------------------------------------------------------------ state
    @property
    def iterations(self) -> int:
        """Training steps done on this graph so far (saved with the model)."""
        with _jvm.java_errors():
            return int(_training().iterationCount(self.graph.sd))

    @property
    def learning_rate(self) -> float:
        """The updater's current learning rate (read from the JVM)."""
        with _jvm.java_errors():
            return float(_training().learningRate(self.graph.sd))

    def set_learning_rate(self, lr: float) -> None:
        """Learning rate from the next step on."""
        with _jvm.java_errors():
            _training().setLearningRate(self.graph.sd, float(lr))
        self._lr = float(lr)

    # ------------------------------------------------------------------ one step
    def _train_feeds(self, feeds: Feeds, rng: np.random.Generator) -> list[np.ndarray]:
        checked = self.graph.check_feeds(feeds, self.inputs, [self.loss])
        if self.dropouts:
            checked.update(_dropout_masks(self.graph, self.dropouts, checked, rng))
        out = []
        for n in self.need:
            a = checked[n]
            out.append(a if a.flags.c_contiguous else a.copy(order="C"))
        return out

    def step(self, feeds: Feeds, rng: np.random.Generator | None = None, on_nonfinite: str = "raise") -> float:
        """One training step on one batch; returns the loss at the weights before the update.

        The step computes the loss and every gradient first and applies the update only if all are finite.
        Otherwise nothing changes (weights, updater state, iteration count) and ``on_nonfinite="raise"``
        raises :class:`TrainingError` naming the step and the culprit; ``"skip"`` returns the loss.
        """
        arrs = self._train_feeds(feeds, rng if rng is not None else np.random.default_rng())
        return self._step(arrs, on_nonfinite)

    # ------------------------------------------------------------------ a step in two calls (data parallel)
    @property
    def flat_size(self) -> int:
        """Elements of all trained variables: the length of a flat gradient (:meth:`compute_gradients`)."""
        with _jvm.java_errors():
            return int(_training().flatSize(self._session))

    def compute_gradients(
        self, feeds: Feeds, rng: np.random.Generator | None = None
    ) -> tuple[float, np.ndarray, float]:
        """Phase one of :meth:`step`, nothing updated: ``(loss, flat gradient, weight)``.

        The flat gradient concatenates every trained variable's gradient (C order) in :attr:`params` order,
        in the graph's dtype. ``weight`` is what this batch's loss averages over: its counted positions for a
        masked loss, its rows otherwise. Data-parallel workers combine batches as
        ``sum(weight_i * grad_i) / sum(weight_i)`` (and the same for losses), which equals the gradient of
        the loss over all their batches at once.
        """
        arrs = self._train_feeds(feeds, rng if rng is not None else np.random.default_rng())
        shapes = [d for a in arrs for d in (a.ndim, *a.shape)]
        flat = np.empty(self.flat_size, self.graph.dtype)
        dtype = _jvm.dtype_enum(arrays.ND4J_DTYPES[flat.dtype])
        with _jvm.java_errors():
            loss = float(_training().computeGradients(self._session, [a.ctypes.data for a in arrs], shapes))
            extras = list(self._session.extraValues())
            _training().packGradients(self._session, flat.ctypes.data, dtype)
        rows = _rows({k: a for k, a in zip(self.need, arrs, strict=False) if k in self.inputs})
        weight = float(extras[0]) if self._count is not None else float(rows)
        return loss, flat, weight

    def apply_gradients(self, flat: np.ndarray, on_nonfinite: str = "raise") -> bool:
        """Phase two of :meth:`step`: apply a flat gradient (e.g. averaged over workers).

        Applied with this Trainer's updater, regularisation and iteration count, exactly as :meth:`step` does. Returns
        True if applied; a non-finite gradient is not applied (``on_nonfinite="raise"`` raises :class:`TrainingError`).
        """
        flat = np.ascontiguousarray(flat, dtype=self.graph.dtype)
        if flat.shape != (self.flat_size,):
            raise ValueError(
                f"apply_gradients: expected a flat gradient of {self.flat_size} elements, got {flat.shape}"
            )
        step = self.iterations
        self._follow_schedule(step)
        with _jvm.java_errors():
            _training().unpackGradients(
                self._session, flat.ctypes.data, _jvm.dtype_enum(arrays.ND4J_DTYPES[flat.dtype])
            )
            bad = int(_training().firstNonFiniteGradient(self._session, 0.0))
            if bad < 0:
                _training().applyGradients(self._session)
                return True
        if on_nonfinite != "skip":
            raise TrainingError(
                f"training step {step}: the gradient of {self.params[bad]!r} is not finite; the update was NOT applied"
            )
        return False

    def _follow_schedule(self, step: int | None = None) -> None:
        """Set the scheduled learning rate for ``step``.

        ``step`` defaults to the current iteration, asked of the JVM only when there is a schedule.
        """
        if self.schedule is not None:
            lr = float(self.schedule(self.iterations if step is None else step))
            if lr != self._lr:
                self.set_learning_rate(lr)

    def _step(self, arrs: list[np.ndarray], on_nonfinite: str = "raise") -> float:
        # graph.gradients(...) or another Trainer may have pointed SameDiff at another loss since the last
        # step; training would then follow that loss while reporting ours (a tuple compare when unchanged)
        self.graph.define_gradients([self.loss])
        self._follow_schedule()
        shapes: list[int] = []
        for a in arrs:
            shapes.append(a.ndim)
            shapes.extend(a.shape)
        step = self.iterations
        with _jvm.java_errors():  # arrs stays referenced until the call returns: the JVM reads their memory
            loss, bad, *extras = _training().step(self._session, [a.ctypes.data for a in arrs], shapes)
        self._last_count = float(extras[0]) if extras else math.nan
        if bad >= 0 and on_nonfinite != "skip":
            what = "the loss" if bad >= len(self.params) else f"the gradient of {self.params[int(bad)]!r}"
            state = f"after step {step - 1}" if step else "before training"
            raise TrainingError(
                f"training step {step}: {what} is not finite (loss {loss}); the update was NOT applied: weights, "
                f"updater state and iteration count are those {state}. Lower the learning rate, check the batch, "
                "or pass on_nonfinite='skip' to skip such steps."
            )
        return float(loss)

    # ------------------------------------------------------------------ loops
    def fit(
        self,
        data: Data,
        epochs: int = 1,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        callbacks: Sequence[Any] = (),
        progress: bool | None = None,
        validation: Data | None = None,
        validation_metrics: Mapping[str, Any] | None = None,
        on_nonfinite: str = "raise",
    ) -> History:
        """Train for ``epochs`` over ``data``.

        A dict of arrays batched along axis 0 (``batch_size``, ``shuffle`` with ``seed``), any re-iterable of feed dicts
        (list of batches), or a callable ``epoch -> iterable of feed dicts``. Dropout masks are drawn from ``seed`` too.
        ``validation`` (same forms) is evaluated after each epoch into ``val_loss`` / ``val_<metric>``. ``progress``:
        None = a tqdm bar only on a terminal.

        A step whose loss or gradients are not finite is not applied; ``on_nonfinite="raise"`` (default)
        stops with :class:`TrainingError` naming the step, ``"skip"`` goes on with the next batch (the step
        is not counted in the epoch loss). Ctrl-C raises ``KeyboardInterrupt`` between steps: the model is
        then exactly as after its last completed step (:attr:`iterations` tells how many).
        """
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        rng = np.random.default_rng(seed)
        hist = History()
        self.graph.define_gradients([self.loss])  # in case graph.gradients(...) redefined it meanwhile
        for epoch in range(int(epochs)):
            batches, total = _batches(data, epoch, batch_size, shuffle, rng)
            bar = _progress(progress, total, f"epoch {epoch + 1}/{epochs}")
            t0 = time.perf_counter()
            loss_sum, weight_sum, samples, stop, last_post = 0.0, 0.0, 0, False, t0
            try:
                for feeds in batches:
                    arrs = self._train_feeds(feeds, rng)
                    loss = self._step(arrs, on_nonfinite)
                    if not math.isfinite(loss):
                        bar.update(1)
                        continue  # skipped (on_nonfinite="skip"): nothing was applied
                    n = _rows({k: a for k, a in zip(self.need, arrs, strict=False) if k in self.inputs})
                    w = self._last_count if self._count is not None else float(n)
                    hist.step_losses.append(loss)
                    hist.step_samples.append(n)
                    hist.step_weights.append(w)
                    loss_sum += loss * w
                    weight_sum += w
                    samples += n
                    bar.update(1)
                    now = time.perf_counter()
                    if not bar.disable and now - last_post > 0.25:
                        shown = loss_sum / weight_sum if weight_sum else 0.0
                        bar.set_postfix(loss=f"{shown:.4g}", samples_s=f"{samples / (now - t0):.0f}")
                        last_post = now
                    for cb in callbacks:
                        hook = getattr(cb, "on_step_end", None)
                        if hook is not None and hook(
                            len(hist.step_losses) - 1, {"loss": loss, "epoch": epoch, "lr": self._lr}
                        ):
                            stop = True
                    if stop:
                        break
            finally:
                bar.close()
            dt = time.perf_counter() - t0
            if samples == 0:
                raise ValueError(
                    f"fit: epoch {epoch} had no usable batch (the data is empty, or every step was skipped)"
                )
            epoch_loss = loss_sum / weight_sum if weight_sum else 0.0
            logs = {"loss": epoch_loss, "time": dt, "samples_per_sec": samples / dt if dt > 0 else math.nan}
            if validation is not None:
                val = self.evaluate(validation, batch_size, validation_metrics, progress=progress)
                logs.update({f"val_{k}": v for k, v in val.items()})
            hist.epoch_losses.append(logs["loss"])
            hist.epoch_times.append(dt)
            hist.epoch_logs.append(logs)
            for cb in callbacks:
                hook = getattr(cb, "on_epoch_end", None)
                if hook is not None and hook(epoch, logs):
                    stop = True
            if stop:
                hist.stopped_early = True
                break
        return hist

    def evaluate(
        self,
        data: Data,
        batch_size: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> dict[str, float]:
        """The loss and ``metrics`` over ``data`` with dropout off, in batches.

        A metric is a scalar Var (or name), averaged over batches weighted by batch rows, or a pair
        ``(numerator, denominator)`` of scalar Vars summed over batches then divided: exact for masked
        metrics whose per-batch count varies (e.g. accuracy over valid tokens).
        """
        outputs: dict[str, Any] = {"loss": self.loss}
        outputs.update(metrics or {})
        return evaluate(self.graph, data, outputs, batch_size, progress)

    def predict(self, data: Data, outputs: Any, batch_size: int | None = None, progress: bool | None = None) -> Any:
        """Compute ``outputs`` for ``data`` with dropout off.

        ``outputs`` is a Var, a name, or a list or dict of them; batch results are concatenated along axis 0.
        """
        return predict(self.graph, data, outputs, batch_size, progress)


def evaluate(
    graph: Graph, data: Data, metrics: Mapping[str, Any], batch_size: int | None = None, progress: bool | None = None
) -> dict[str, float]:
    """See :meth:`Trainer.evaluate` (``metrics`` must name every output, the loss included).

    Batches are combined exactly: a masked loss or metric (a mean over counted positions) by its count, a
    ``(numerator, denominator)`` pair by summing both, any other scalar by the batch's rows.
    """
    flat: list[Var] = []
    plan: list[tuple[str, str, int, int]] = []  # (key, how, value index, weight index)
    counts = graph.meta.get("mean_over", {})
    for key, m in metrics.items():
        if isinstance(m, tuple):
            num, den = graph.as_var(m[0]), graph.as_var(m[1])
            plan.append((key, "ratio", len(flat), len(flat) + 1))
            flat += [num, den]
            continue
        v = graph.as_var(m)
        if v.name in counts:
            plan.append((key, "mean", len(flat), len(flat) + 1))
            flat += [v, graph.as_var(counts[v.name])]
        else:
            plan.append((key, "rows", len(flat), -1))
            flat.append(v)
    sums = np.zeros(len(flat))
    rows = 0
    batches, total = _batches(data, 0, batch_size, False, np.random.default_rng(0))
    bar = _progress(progress, total, "evaluate")
    t0 = time.perf_counter()
    try:
        for feeds in batches:
            res = [float(np.sum(r)) for r in graph.run(feed_inference(graph, feeds), flat)]
            n = _rows(feeds)
            for _key, how, i, j in plan:
                if how == "rows":
                    sums[i] += res[i] * n
                elif how == "mean":
                    sums[i] += res[i] * res[j]
                    sums[j] += res[j]
                else:
                    sums[i] += res[i]
                    sums[j] += res[j]
            rows += n
            bar.update(1)
            if not bar.disable:
                bar.set_postfix(samples_s=f"{rows / (time.perf_counter() - t0):.0f}", refresh=False)
    finally:
        bar.close()
    if rows == 0:
        raise ValueError("evaluate: no data (0 batches): nothing to evaluate")
    out = {}
    for key, how, i, j in plan:
        out[key] = float(sums[i] / rows) if how == "rows" else (float(sums[i] / sums[j]) if sums[j] else 0.0)
    return out


def predict(graph: Graph, data: Data, outputs: Any, batch_size: int | None = None, progress: bool | None = None) -> Any:
    """See :meth:`Trainer.predict`."""
    outs, rebuild = graph.resolve(outputs)
    parts: list[list[np.ndarray]] = [[] for _ in outs]
    batches, total = _batches(data, 0, batch_size, False, np.random.default_rng(0))
    bar = _progress(progress, total, "predict")
    try:
        for feeds in batches:
            for p, r in zip(parts, graph.run(feed_inference(graph, feeds), outs), strict=False):
                p.append(r)
            bar.update(1)
    finally:
        bar.close()
    if not parts or not parts[0]:
        raise ValueError("predict: no data (0 batches): nothing to predict")
    return rebuild([np.concatenate(p, axis=0) if p[0].ndim else np.stack(p) for p in parts])
