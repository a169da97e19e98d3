"""Data-parallel training on Ray: N worker processes, each with its own JVM, trained as one.

DL4J never shipped distributed SameDiff training. Here every worker builds the same model from a picklable
factory ``build() -> (graph, loss)``, computes the gradient of its shard of each global batch
(:meth:`Trainer.compute_gradients <samediff_py.train.Trainer.compute_gradients>`), the workers sum the
gradients weighted by what each shard's loss averages over, and every worker applies the same sum with its own
updater (:meth:`Trainer.apply_gradients <samediff_py.train.Trainer.apply_gradients>`). Replicas therefore stay
identical, and the run equals training one process on the whole global batch up to float32 rounding (the sum
over shards rounds differently from the sum over the concatenated batch).

Masked losses across shards: a masked loss is a mean over counted positions, so shard ``i`` carries a weight
``w_i`` (its counted positions; rows for an unmasked loss, which must then be a mean over rows). With
``W = sum(w_i)`` the global loss is ``sum(w_i * loss_i) / W`` and the global gradient ``sum((w_i / W) * g_i)``:
the weights are allreduced first, each shard's gradient is scaled by ``w_i / W``, then the gradients are
summed. A shard with no counted position (or no rows) contributes nothing; when no shard counts anything the
gradient is zero and the step is still applied, exactly as one process does on such a batch (:func:`combine`).

Launcher: plain Ray actors, chosen by measurement (bench/bench_launcher.py: 2 workers of 1 CPU on a local
cluster, 2 shared cores under load, medians of 3 interleaved rounds; bench/RESULTS.md):

==============================  =====================  ======================  ========================
seconds until both workers run  plain actors           DataParallelTrainer     TorchTrainer
==============================  =====================  ======================  ========================
no JVM                          1.4                    12.6                    21.9 (torch import)
JVM + small graph + Trainer     8.7                    21.4                    28.1
driver round trip per step      1.0-1.3 ms             none (loop in workers)  none
extra dependencies              ray                    + pyarrow, pandas,      + torch (5.9 GB)
                                                       fsspec, tensorboardX
                                                       (~260 MB)
after a worker death            ours: kill, recreate,  whole group restarted,  same
                                load the checkpoint    checkpoints copied
                                                       through storage_path
==============================  =====================  ======================  ========================

The 1 ms per step is what the driver-fed design costs (the driver splits each global batch and ships the
shards); it is small next to a training step of any model worth distributing. Plain actors also let the
driver own the step loop: a dead actor surfaces as ``RayActorError`` on the very step it happened, the driver
replays its buffered batches from the last checkpoint, and the same code runs on one machine or a cluster.

Transports (``transport=``): ``"gloo"``: ``torch.distributed``'s gloo ring allreduce between the workers (what
``ray.util.collective``'s CPU backend wraps; used directly here for its timeout and rendezvous through rank 0),
available when torch is installed in the workers; ``"object_store"``: every worker puts its scaled gradient
into Ray's object store and sums everybody's in rank order (no extra dependency). ``"auto"`` takes gloo when
every worker can import torch. With 2 workers both give bit-identical sums. Measured between 2 actors on 2
loaded cores (bench/bench_distributed.py): an allreduce of 8 bytes / 4 / 16 / 40 MiB took 0.35 / 4.8 / 15 / 42 ms
with gloo and 3.3 / 11 / 24 / 47 ms through the object store; across machines the object store moves
``(N - 1) x`` the gradient into every worker where gloo's ring moves ``2 (N - 1) / N x``.

Every ``verify_every`` steps each worker hashes all its parameters and the driver compares the hashes: a
mismatch raises :class:`ReplicaMismatchError` naming the workers that differ from the majority. Dropout draws
use a per-rank, per-step seed (``seed``, rank, step), so shards get independent masks and a resumed run draws
the same masks as an uninterrupted one.

Checkpoints: rank 0 saves with :func:`samediff_py.checkpoint.save` (atomic, verified) every
``checkpoint_every`` steps into ``checkpoint_dir`` (default: a temporary folder, when every worker runs on the
driver's machine; on a cluster pass a folder every node can read). When a worker dies, the driver kills the
others, starts new workers (new JVMs), each loads the checkpoint with :meth:`Trainer.restore
<samediff_py.train.Trainer.restore>`, and training resumes at the checkpoint's step with the same batches:
the result is the same as an uninterrupted run. ``max_restarts`` bounds this.

Local SGD (``average_every=k``): a different algorithm, NOT equal to single-process training. Each worker
steps on its own shard with its own updater state, and every ``k`` steps the parameters (not gradients) are
averaged; it trades accuracy per step for ``k`` times fewer exchanges (see bench/RESULTS.md). Every rank then
checkpoints its own file (its updater state differs) at averaging steps only.

Resources: each worker's nd4j threads are its CPUs (``cpus_per_worker``), and its off-heap and heap limits are
its share of the machine's memory, left after Ray's object store (:func:`worker_resources`); they are set as
``SAMEDIFF_PY_THREADS`` / ``SAMEDIFF_PY_OFFHEAP`` / ``SAMEDIFF_PY_HEAP`` in the worker before its JVM starts.
A local cluster started by this module caps the object store (:func:`init_ray`).

    with DataParallel(build, workers=2, trainer={"updater": "adam", "lr": 1e-3}) as dp:
        history = dp.fit(batches, epochs=3)
        weights = dp.weights()

Needs the ``distributed`` extra (``pip install samediff_py[distributed]``: Ray). The helpers :func:`split_rows`,
:func:`combine` and :func:`worker_resources` are plain numpy.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import importlib.util
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _jvm
from .errors import ReplicaMismatchError, TrainingError, WorkerLostError
from .train import Data, Feeds, History, _batches, _progress, _rows

__all__ = [
    "DataParallel",
    "DistributedHistory",
    "ReplicaMismatchError",
    "WorkerLostError",
    "combine",
    "default_object_store_memory",
    "fit",
    "init_ray",
    "split_rows",
    "worker_resources",
]

# Ray installs signal handlers for SIGSEGV in every process it connects: a C++ failure handler (absl) and
# Python's faulthandler. The JVM uses SIGSEGV itself (safepoint polls, implicit null checks): in a process
# whose JVM started before ray.init, those handlers replace the JVM's and its next such signal aborts the
# process (seen: the test driver died in Graph.placeholder after ray.init). Ray's own switch turns the first off
# (it must be set before Ray reads it); init_ray restores the JVM's handlers from faulthandler. Workers start
# their JVM after Ray, so the JVM's handlers are on top there and chain to Ray's.
_NO_RAY_SIGNAL_HANDLER = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
os.environ.setdefault(_NO_RAY_SIGNAL_HANDLER, "1")

TRANSPORTS = ("auto", "gloo", "object_store")
MiB = 1 << 20
GiB = 1 << 30
ShardFn = Callable[[int, int, int], "Feeds | None"]


# ============================================================================ plain helpers (numpy only)
def split_rows(batch: Feeds, parts: int) -> list[dict[str, Any]]:
    """Split a global batch by rows into ``parts`` shards, in order.

    ``np.array_split``: sizes differ by at most one, so with fewer rows than parts the last shards are empty.

    An array is split when its leading size is the batch's row count (that of the first array with a leading
    axis, as :meth:`Trainer.fit <samediff_py.train.Trainer.fit>` counts rows); scalars and arrays with another
    leading size go whole to every shard.

    >>> b = {"x": np.arange(10).reshape(5, 2), "scale": np.float32(0.5)}
    >>> [s["x"].shape for s in split_rows(b, 2)]
    [(3, 2), (2, 2)]
    >>> [s["x"].shape[0] for s in split_rows(b, 4)], float(split_rows(b, 2)[1]["scale"])
    ([2, 1, 1, 1], 0.5)
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    arrs = {k: np.asarray(v) for k, v in batch.items()}
    rows = _rows(arrs)
    bounds = np.array_split(np.arange(rows), parts)
    out = []
    for idx in bounds:
        lo, hi = (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (rows, rows)
        out.append({k: (a[lo:hi] if a.ndim and a.shape[0] == rows else a) for k, a in arrs.items()})
    return out


def _scale(grad: np.ndarray, weight: float, total: float) -> np.ndarray:
    """``grad *= w / W`` in place (in ``grad``'s dtype); zeros when either weight is 0."""
    if weight > 0 and total > 0:
        grad *= grad.dtype.type(weight / total)
    else:
        grad.fill(0)
    return grad


def combine(
    weights: Sequence[float], losses: Sequence[float], grads: Sequence[np.ndarray]
) -> tuple[float, float, np.ndarray]:
    """Combine shards as the workers do.

    ``(loss, W, grad)`` with ``W = sum(w_i)``, ``loss = sum(w_i * loss_i) / W`` and ``grad = sum((w_i / W) * g_i)``
    (each term rounded to the gradient's dtype, summed in shard order); loss 0 and a zero gradient when ``W = 0``. This
    equals the loss and gradient of one process on the concatenated shards, for a loss that is a mean over its weights
    (counted positions of a masked loss, or rows).

    >>> g = [np.full(2, 1.0, np.float32), np.full(2, 5.0, np.float32), np.full(2, 9.0, np.float32)]
    >>> loss, total, grad = combine([3.0, 1.0, 0.0], [2.0, 6.0, 0.0], g)
    >>> loss, total, grad
    (3.0, 4.0, array([2., 2.], dtype=float32))
    """
    if not (len(weights) == len(losses) == len(grads)) or not grads:
        raise ValueError("combine needs one weight, loss and gradient per shard (at least one shard)")
    total = float(sum(float(w) for w in weights))
    loss = float(sum(float(w) * float(v) for w, v in zip(weights, losses, strict=True) if w > 0))
    out = _scale(np.array(grads[0], copy=True), float(weights[0]), total)
    for w, g in zip(weights[1:], grads[1:], strict=True):
        if w > 0 and total > 0:
            out += _scale(np.array(g, copy=True), float(w), total)
    return (loss / total if total > 0 else 0.0), total, out


def _fmt_mem(n: float) -> str:
    return f"{max(1, int(n) // MiB)}m"


def worker_resources(cpus: float, node_cpus: float, node_memory: int, object_store_memory: int = 0) -> dict[str, str]:
    """The environment a worker's JVM starts with: its share of one machine.

    Args:
        cpus: CPUs reserved for the worker (Ray's ``num_cpus``); its nd4j thread count (at least 1).
        node_cpus: CPUs of the machine (as Ray counts them).
        node_memory: bytes of RAM of the machine.
        object_store_memory: bytes of it reserved for Ray's object store.

    Returns:
        ``SAMEDIFF_PY_THREADS``, ``SAMEDIFF_PY_OFFHEAP`` and ``SAMEDIFF_PY_HEAP``. The worker's share is
        ``cpus / node_cpus`` of 90 % of the memory left after the object store; nd4j's off-heap limit is 60 % of
        that share (arrays live there), the JVM heap 20 % (graph objects; 256 MiB to 4 GiB). Without this, every
        worker would take the single-process default, half the machine's RAM each.

    >>> worker_resources(1, 2, 16 * GiB, 2 * GiB)
    {'SAMEDIFF_PY_THREADS': '1', 'SAMEDIFF_PY_OFFHEAP': '3870m', 'SAMEDIFF_PY_HEAP': '1290m'}
    >>> worker_resources(2, 64, 256 * GiB, 8 * GiB)["SAMEDIFF_PY_OFFHEAP"]
    '4285m'
    """
    if cpus <= 0 or node_cpus <= 0:
        raise ValueError(f"cpus and node_cpus must be positive, got {cpus} and {node_cpus}")
    share = max(0, node_memory - object_store_memory) * 0.9 * min(1.0, cpus / node_cpus)
    return {
        "SAMEDIFF_PY_THREADS": str(max(1, int(cpus))),
        "SAMEDIFF_PY_OFFHEAP": _fmt_mem(max(256 * MiB, 0.6 * share)),
        "SAMEDIFF_PY_HEAP": _fmt_mem(min(4 * GiB, max(256 * MiB, 0.2 * share))),
    }


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def default_object_store_memory(memory: int | None = None) -> int:
    """The object store a local cluster gets here.

    10 % of RAM, between 256 MiB and 2 GiB (Ray's own default is 30 % of RAM). It holds shards and, with the
    object-store transport, one gradient per worker per step.

    >>> default_object_store_memory(16 * GiB) // MiB, default_object_store_memory(64 * GiB) // MiB
    (1638, 2048)
    """
    memory = _physical_memory() if memory is None else memory
    return int(min(2 * GiB, max(256 * MiB, memory // 10)))


# ============================================================================ Ray
def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "samediff_py.distributed needs Ray: pip install 'samediff_py[distributed]' (or pip install 'ray>=2.9')"
        ) from None
    return ray


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    log_to_driver: bool = False,
    **kwargs: Any,
) -> bool:
    """Connect to Ray unless already connected; returns True if this call started or joined it.

    ``address=None`` starts a local cluster with its object store capped (``object_store_memory``, default
    :func:`default_object_store_memory`) and no dashboard; an address (``"auto"``, ``"ray://host:10001"``,
    ``"host:6379"``) joins an existing cluster, whose object store is its own business. ``kwargs`` go to
    ``ray.init``.
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    if os.environ.get(_NO_RAY_SIGNAL_HANDLER) == "1":  # ray imported before this module read the default
        from ray._private import ray_constants

        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    if address is None:
        kwargs.setdefault("include_dashboard", False)
        kwargs["object_store_memory"] = object_store_memory or default_object_store_memory()
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    jvm_first = _jvm.started() and not faulthandler.is_enabled()
    ray.init(address=address, log_to_driver=log_to_driver, **kwargs)
    if jvm_first and faulthandler.is_enabled():
        # ray.init enabled Python's faulthandler, whose SIGSEGV handler now sits over the running JVM's: the
        # JVM's own SIGSEGVs (safepoint polls) would abort the process. disable() restores the JVM's handlers.
        faulthandler.disable()
    return True


def _node_share() -> dict[str, str]:
    """:func:`worker_resources` for the calling Ray worker: its assigned CPUs of its node's CPUs and memory."""
    import ray

    ctx = ray.get_runtime_context()
    cpus = float(ctx.get_assigned_resources().get("CPU", 1.0)) or 1.0
    node = next((n for n in ray.nodes() if n.get("NodeID") == ctx.get_node_id()), {})
    res = node.get("Resources", {})
    return worker_resources(
        cpus, float(res.get("CPU", os.cpu_count() or 1)), _physical_memory(), int(res.get("object_store_memory", 0))
    )


class _CollectiveError(RuntimeError):
    """A collective operation failed in a worker (a peer died or hung): the driver restarts the workers."""


def _lost_types(ray: Any) -> tuple[type, ...]:
    """Ray errors that mean a worker (or what it held) is gone: grounds for a restart, not the user's fault."""
    ex = ray.exceptions
    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OutOfMemoryError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


def _explain(ray: Any, e: BaseException) -> BaseException:
    """A worker error as the driver raises it; Ray's unpickling failures get the usual cause spelled out."""
    if isinstance(e, ray.exceptions.RaySystemError):
        err = RuntimeError(
            f"a worker could not run the task: {_first_line(e)}. build (and shards) must be picklable and their "
            "module importable in every worker: define them in the main script, in an installed package, or "
            "call ray.cloudpickle.register_pickle_by_value(your_module)"
        )
        err.__cause__ = e
        return err
    return e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _has_torch_distributed() -> bool:
    try:
        return (
            importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torch.distributed") is not None
        )
    except (ImportError, ValueError):
        return False


# ============================================================================ the worker (a Ray actor)
class _Worker:
    """One replica: its own process, JVM, graph and Trainer. Methods run one at a time, in call order."""

    def __init__(self, rank: int, world: int, env: Mapping[str, str]):
        # before the JVM starts (_jvm reads these once, at start): this worker's share of its own machine
        os.environ.update({**_node_share(), **env})
        self.rank, self.world = rank, world
        self.trainer: Any = None
        self.shard_fn: ShardFn | None = None
        self.group = False
        self.seed = 0
        self.on_nonfinite = "raise"

    # ---------------------------------------------------------------- set-up
    def setup(
        self,
        build: Callable[[], tuple[Any, Any]] | None,
        trainer_kwargs: Mapping[str, Any],
        checkpoint: str | None,
        seed: int,
        on_nonfinite: str,
    ) -> dict[str, Any]:
        from . import _jvm
        from . import checkpoint as ckpt
        from .train import Trainer

        jvm_before = _jvm.started()
        if checkpoint is not None:
            if not os.path.exists(checkpoint):
                raise FileNotFoundError(
                    f"worker {self.rank} on {socket.gethostname()}: checkpoint {checkpoint} not found; on a cluster "
                    "checkpoint_dir must be storage every node can read"
                )
            graph = ckpt.load(checkpoint)
            self.trainer = Trainer.restore(graph, schedule=trainer_kwargs.get("schedule"))
        else:
            assert build is not None
            built = build()
            if not (isinstance(built, tuple) and len(built) == 2):
                raise TypeError("build() must return (graph, loss)")
            graph, loss = built
            self.trainer = Trainer(graph, loss, **dict(trainer_kwargs))
        self.seed, self.on_nonfinite = int(seed), on_nonfinite
        self.sizes = [int(np.prod(graph[n].shape)) for n in self.trainer.params]
        runtime = _jvm.jclass("java.lang.Runtime").getRuntime()
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "jvm_started_before_setup": jvm_before,
            "env": {k: os.environ.get(k) for k in ("SAMEDIFF_PY_THREADS", "SAMEDIFF_PY_OFFHEAP", "SAMEDIFF_PY_HEAP")},
            "jvm_max_heap": int(runtime.maxMemory()),
            "offheap_max": int(_jvm.jclass("org.bytedeco.javacpp.Pointer").maxBytes()),
            "torch": _has_torch_distributed(),
            "params": list(self.trainer.params),
            "flat_size": int(self.trainer.flat_size),
            "iterations": int(self.trainer.iterations),
        }

    def rendezvous_address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def init_gloo(self, addr: str, port: int, timeout: float) -> bool:
        import datetime

        import torch.distributed as dist

        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{addr}:{port}",
            rank=self.rank,
            world_size=self.world,
            timeout=datetime.timedelta(seconds=timeout),
        )
        self.group = True
        return True

    def set_shards(self, fn: ShardFn | None) -> None:
        self.shard_fn = fn

    # ---------------------------------------------------------------- pieces
    def _allreduce(self, a: np.ndarray) -> None:
        import torch
        import torch.distributed as dist

        try:
            dist.all_reduce(torch.from_numpy(a))
        except Exception as e:  # a peer died, or the group timed out
            raise _CollectiveError(f"worker {self.rank}: allreduce failed: {e}") from e

    def _shard(self, b: int, shard: Feeds | None) -> Feeds | None:
        if self.shard_fn is not None:
            shard = self.shard_fn(b, self.rank, self.world)
        if shard is None or _rows(shard) == 0:
            return None
        return shard

    def _rng(self, b: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, b])

    def _gradients(self, b: int, shard: Feeds | None) -> tuple[float, np.ndarray, float, int]:
        s = self._shard(b, shard)
        if s is None:  # no rows: nothing to add (a 0-row feed is refused by the feed checks)
            return 0.0, np.zeros(self.trainer.flat_size, self.trainer.graph.dtype), 0.0, 0
        loss, grad, weight = self.trainer.compute_gradients(s, self._rng(b))
        return loss, grad, weight, _rows(s)

    def _apply(self, b: int, flat: np.ndarray, loss: float) -> bool:
        if not math.isfinite(loss):
            if self.on_nonfinite == "skip":
                return False
            raise TrainingError(
                f"training step {b}: the global loss is not finite ({loss}); the update was NOT applied on any worker"
            )
        return bool(self.trainer.apply_gradients(flat, self.on_nonfinite))

    # ---------------------------------------------------------------- one synchronous step
    def step(self, b: int, shard: Feeds | None) -> dict[str, Any]:
        """Gloo transport: gradients, allreduce of the weights, scale, allreduce of the gradient, apply."""
        t0 = time.perf_counter()
        loss, grad, w, rows = self._gradients(b, shard)
        t1 = time.perf_counter()
        meta = np.array([w, w * loss if w > 0 else 0.0], np.float64)
        self._allreduce(meta)
        total, weighted = float(meta[0]), float(meta[1])
        t2 = time.perf_counter()
        _scale(grad, w, total)
        t3 = time.perf_counter()
        self._allreduce(grad)
        t4 = time.perf_counter()
        global_loss = weighted / total if total > 0 else 0.0
        applied = self._apply(b, grad, global_loss)
        t5 = time.perf_counter()
        times = {"gradients": t1 - t0, "weights": t2 - t1, "pack": t3 - t2, "allreduce": t4 - t3, "apply": t5 - t4}
        return {"loss": global_loss, "total": total, "local_loss": loss, "weight": w, "rows": rows,
                "applied": applied, "times": times}  # fmt: skip

    def gradients(self, b: int, shard: Feeds | None) -> tuple[dict[str, Any], np.ndarray]:
        """Object-store transport, phase one: this shard's gradient (returned into the object store)."""
        t0 = time.perf_counter()
        loss, grad, w, rows = self._gradients(b, shard)
        return {"loss": loss, "weight": w, "rows": rows, "gradients": time.perf_counter() - t0,
                "done": time.time()}, grad  # fmt: skip

    def apply(self, b: int, *parts: Any) -> dict[str, Any]:
        """Object-store transport, phase two.

        Every shard's ``(meta, gradient)`` (resolved by Ray), combined in rank order, applied.
        """
        t0, start = time.perf_counter(), time.time()
        n = len(parts) // 2
        metas, grads = parts[:n], parts[n:]
        me = metas[self.rank]
        weights = [m["weight"] for m in metas]
        global_loss, total, flat = combine(weights, [m["loss"] for m in metas], grads)
        t1 = time.perf_counter()
        applied = self._apply(b, flat, global_loss)
        t2 = time.perf_counter()
        wait = max(0.0, start - max(m["done"] for m in metas))  # from the slowest shard's end to this start
        times = {"gradients": me["gradients"], "weights": 0.0, "pack": 0.0, "allreduce": wait + (t1 - t0),
                 "apply": t2 - t1}  # fmt: skip
        return {"loss": global_loss, "total": total, "local_loss": me["loss"], "weight": me["weight"],
                "rows": me["rows"], "applied": applied, "times": times}  # fmt: skip

    # ---------------------------------------------------------------- local SGD
    def local_step(self, b: int, shard: Feeds | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        loss, grad, w, rows = self._gradients(b, shard)
        t1 = time.perf_counter()
        applied = False
        if rows:  # a worker without rows this step does not step (its iteration count lags: local SGD)
            applied = self._apply(b, grad, loss)
        t2 = time.perf_counter()
        times = {"gradients": t1 - t0, "weights": 0.0, "pack": 0.0, "allreduce": 0.0, "apply": t2 - t1}
        return {"loss": loss, "local_loss": loss, "weight": w, "rows": rows, "applied": applied, "times": times}

    def params_flat(self) -> np.ndarray:
        g = self.trainer.graph
        return np.concatenate([g.get_value(n).ravel() for n in self.trainer.params])

    def set_params_flat(self, flat: np.ndarray) -> bool:
        g = self.trainer.graph
        start = 0
        for n, size in zip(self.trainer.params, self.sizes, strict=True):
            g.set_value(n, np.asarray(flat[start : start + size]).reshape(g[n].shape))
            start += size
        return True

    def average_gloo(self) -> float:
        t0 = time.perf_counter()
        flat = self.params_flat()
        self._allreduce(flat)
        flat *= flat.dtype.type(1.0 / self.world)
        self.set_params_flat(flat)
        return time.perf_counter() - t0

    def set_mean(self, *flats: np.ndarray) -> bool:
        out = np.array(flats[0], copy=True)
        for f in flats[1:]:
            out += f
        out *= out.dtype.type(1.0 / len(flats))
        return self.set_params_flat(out)

    # ---------------------------------------------------------------- checks, files, state
    def param_hash(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        g = self.trainer.graph
        for n in self.trainer.params:
            h.update(n.encode())
            h.update(np.ascontiguousarray(g.get_value(n)).tobytes())
        return h.hexdigest()

    def save(self, path: str, remove: Sequence[str] = ()) -> int:
        from . import checkpoint as ckpt

        ckpt.save(self.trainer.graph, path)
        for p in remove:
            with contextlib.suppress(OSError):
                os.unlink(p)
        return int(self.trainer.iterations)

    def weights(self) -> dict[str, np.ndarray]:
        g = self.trainer.graph
        return {n: g.get_value(n) for n in self.trainer.params}

    def iterations(self) -> int:
        return int(self.trainer.iterations)

    def ping(self) -> int:
        return os.getpid()

    def _debug_set_value(self, name: str, value: np.ndarray) -> None:
        """Tests only: make this replica diverge."""
        self.trainer.graph.set_value(name, value)


# ============================================================================ the driver
@dataclass
class DistributedHistory(History):
    """History of a data-parallel run.

    A :class:`~samediff_py.train.History` (global losses, weights = total counted positions or rows per step), plus
    per-rank views and what happened to the workers.

    Attributes:
        rank_losses, rank_weights: per step, each worker's own shard loss and weight.
        phase_seconds: per phase (``gradients``, ``weights``, ``pack``, ``allreduce``, ``apply``, ``step``
            = driver wall time), one value per step: the slowest worker's.
        restarts: one entry per recovery: ``{"resumed_at", "reason", "seconds"}``.
        verified_steps: steps at which the replicas' parameter hashes were compared (all equal).
        transport: ``"gloo"`` or ``"object_store"``.
    """

    rank_losses: list[list[float]] = field(default_factory=list)
    rank_weights: list[list[float]] = field(default_factory=list)
    phase_seconds: dict[str, list[float]] = field(default_factory=dict)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    verified_steps: list[int] = field(default_factory=list)
    transport: str = ""
    step_epochs: list[int] = field(default_factory=list)
    step_applied: list[bool] = field(default_factory=list)
    _epoch_ends: list[int] = field(default_factory=list, repr=False)

    def _record(self, res: dict[str, Any], epoch: int) -> None:
        self.step_losses.append(res["loss"])
        self.step_weights.append(res["total"])
        self.step_samples.append(res["rows"])
        self.rank_losses.append(res["rank_losses"])
        self.rank_weights.append(res["rank_weights"])
        self.step_epochs.append(epoch)
        self.step_applied.append(bool(res["applied"]))
        for k, v in res["times"].items():
            self.phase_seconds.setdefault(k, []).append(v)

    def _end_epoch(self, epoch: int, dt: float) -> None:
        """The epoch's loss: its applied steps' losses weighted by their total weights (as Trainer.fit)."""
        steps = [
            (loss, w, n)
            for loss, w, n, e, ok in zip(
                self.step_losses, self.step_weights, self.step_samples, self.step_epochs, self.step_applied, strict=True
            )  # fmt: skip
            if e == epoch and ok and math.isfinite(loss)
        ]
        wsum = sum(w for _, w, _ in steps)
        loss = sum(v * w for v, w, _ in steps) / wsum if wsum else 0.0
        samples = sum(n for _, _, n in steps)
        logs = {"loss": loss, "time": dt, "samples_per_sec": samples / dt if dt > 0 else math.nan}
        self.epoch_losses.append(loss)
        self.epoch_times.append(dt)
        self.epoch_logs.append(logs)
        self._epoch_ends.append(len(self.step_losses))

    def _truncate(self, steps: int) -> None:
        keep = sum(1 for end in self._epoch_ends if end <= steps)  # epochs that ended before the resumed step
        for lst in (self.epoch_losses, self.epoch_times, self.epoch_logs, self._epoch_ends):
            del lst[keep:]
        lists = (self.step_losses, self.step_samples, self.step_weights, self.rank_losses, self.rank_weights,
                 self.step_epochs, self.step_applied, *self.phase_seconds.values())  # fmt: skip
        for lst in lists:
            del lst[steps:]
        self.verified_steps = [s for s in self.verified_steps if s <= steps]


class _Restart(Exception):
    """Internal: a worker was lost; recover from the last checkpoint."""


class _Batches:
    """Global batches by index, from the data (epochs chained).

    Keeps those after the last checkpoint so that a restart can replay them.
    """

    def __init__(self, source: Iterator[tuple[int, Any]]):
        self.source = source
        self.kept: dict[int, tuple[int, Any]] = {}
        self.next = 0

    def get(self, b: int) -> tuple[int, Any] | None:
        if b in self.kept:
            return self.kept[b]
        if b != self.next:
            raise RuntimeError(f"batch {b} requested, next from the data is {self.next}")
        item = next(self.source, None)
        if item is None:
            return None
        self.kept[b] = item
        self.next += 1
        return item

    def forget_before(self, b: int) -> None:
        for k in [k for k in self.kept if k < b]:
            del self.kept[k]


class DataParallel:
    """Synchronous data-parallel training of one model over ``workers`` Ray worker processes.

    Args:
        build: picklable ``() -> (graph, loss)``, called in every worker (rank 0's initial parameters are
            copied to the others, so it need not be seeded, but should build the same graph).
        workers: number of worker processes (each needs ``cpus_per_worker`` CPUs of the cluster).
        trainer: keyword arguments of :class:`~samediff_py.train.Trainer` (``updater``, ``lr``, ``l2``,
            ``schedule``...).
        transport: ``"auto"``, ``"gloo"`` (needs torch in the workers) or ``"object_store"``.
        average_every: None for synchronous gradient averaging (equal to one process on the global batch);
            ``k`` for local SGD (parameters averaged every ``k`` steps; a different algorithm).
        seed: dropout seed (each worker draws with ``(seed, rank, step)``).
        checkpoint_dir: where rank 0 saves (must be readable by every worker); None = a temporary folder when
            all workers run on this machine, else no checkpoints.
        checkpoint_every: steps between checkpoints (0: none; restarts then impossible).
        max_restarts: worker losses survived per :class:`DataParallel` before :class:`WorkerLostError`.
        verify_every: steps between parameter-hash comparisons (0: only before checkpoints; local SGD: at every
            averaging step). Checkpoints are always written from replicas verified identical.
        cpus_per_worker: Ray CPUs per worker = its nd4j threads; memory limits follow (:func:`worker_resources`).
        worker_env: environment overrides for the workers (e.g. ``{"SAMEDIFF_PY_OFFHEAP": "2g"}``).
        address: Ray address to join; None starts (or reuses) a local cluster (:func:`init_ray`).
        object_store_memory: object store cap of a local cluster started here.
        step_timeout: seconds a step (or the collective) may take before the workers count as hung.
        on_nonfinite: ``"raise"`` or ``"skip"``: a non-finite global loss or gradient is never applied.
        actor_options: extra ``ray.remote`` options for the workers (e.g. ``{"scheduling_strategy": "SPREAD"}``).
    """

    def __init__(
        self,
        build: Callable[[], tuple[Any, Any]],
        workers: int = 2,
        *,
        trainer: Mapping[str, Any] | None = None,
        transport: str = "auto",
        average_every: int | None = None,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 50,
        max_restarts: int = 3,
        verify_every: int = 10,
        cpus_per_worker: float = 1,
        worker_env: Mapping[str, str] | None = None,
        address: str | None = None,
        object_store_memory: int | None = None,
        step_timeout: float = 600.0,
        on_nonfinite: str = "raise",
        actor_options: Mapping[str, Any] | None = None,
    ):
        if not callable(build):
            raise TypeError("build must be a picklable callable () -> (graph, loss)")
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if average_every is not None and int(average_every) < 1:
            raise ValueError(f"average_every must be None or >= 1, got {average_every}")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        if checkpoint_every < 0 or verify_every < 0 or max_restarts < 0:
            raise ValueError("checkpoint_every, verify_every and max_restarts must be >= 0")
        self.build, self.world = build, int(workers)
        self.trainer_kwargs = dict(trainer or {})
        self.average_every = None if average_every is None else int(average_every)
        self.seed, self.on_nonfinite = int(seed), on_nonfinite
        self.checkpoint_every, self.max_restarts, self.verify_every = checkpoint_every, max_restarts, verify_every
        self.cpus_per_worker = float(cpus_per_worker)
        self.worker_env = dict(worker_env or {})
        self.step_timeout = float(step_timeout)
        self.actor_options = dict(actor_options or {})
        self._requested_transport = transport
        self.transport = ""
        self._owns_ray = init_ray(address, object_store_memory=object_store_memory)
        self._ray = _ray()
        self._workers: list[Any] = []
        self.info: list[dict[str, Any]] = []
        self._shard_fn: ShardFn | None = None
        self._ckpt: tuple[int, list[str]] | None = None  # (batches done, one path per rank or one for all)
        self._tmp_ckpt_dir: str | None = None
        self._ckpt_dir: Path | None = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._batches_done = 0
        self._fit_start = 0
        self._restarts_used = 0
        self._broken = False
        self._history: DistributedHistory | None = None
        need = self.world * self.cpus_per_worker
        have = float(self._ray.cluster_resources().get("CPU", 0))
        if need > have and address is None and "resources" not in self.actor_options:
            self.shutdown()
            raise ValueError(
                f"{self.world} workers x {self.cpus_per_worker:g} CPUs need {need:g} CPUs; this Ray cluster has "
                f"{have:g}: use fewer workers, a smaller cpus_per_worker, or a bigger cluster"
            )
        try:
            self._start(checkpoint=None)
            if self._ckpt_dir is None and self.checkpoint_every:
                if all(i["host"] == socket.gethostname() for i in self.info):
                    self._tmp_ckpt_dir = tempfile.mkdtemp(prefix="samediff_py-dp-")
                    self._ckpt_dir = Path(self._tmp_ckpt_dir)
            if self._ckpt_dir is not None and self.checkpoint_every:
                self._ckpt_dir.mkdir(parents=True, exist_ok=True)
                self._save_checkpoint(0)
        except _Restart as e:
            self.shutdown()
            raise WorkerLostError(f"start-up failed: {e}") from None
        except BaseException:
            self.shutdown()
            raise

    # ---------------------------------------------------------------- workers
    def _start(self, checkpoint: tuple[int, list[str]] | None) -> None:
        ray = self._ray
        opts = {"num_cpus": self.cpus_per_worker, "max_restarts": 0, "max_task_retries": 0, **self.actor_options}
        env_vars = {_NO_RAY_SIGNAL_HANDLER: os.environ.get(_NO_RAY_SIGNAL_HANDLER, "1")}
        runtime_env = dict(opts.pop("runtime_env", None) or {})
        opts["runtime_env"] = {**runtime_env, "env_vars": {**env_vars, **runtime_env.get("env_vars", {})}}
        actor = ray.remote(**opts)(_Worker)
        self._workers = [actor.remote(r, self.world, self.worker_env) for r in range(self.world)]
        paths = checkpoint[1] if checkpoint else None
        setups = [
            w.setup.remote(
                None if paths else self.build,
                self.trainer_kwargs,
                (paths[r] if len(paths) > 1 else paths[0]) if paths else None,
                self.seed,
                self.on_nonfinite,
            )
            for r, w in enumerate(self._workers)
        ]
        self.info = self._gather(setups, "start-up")
        sizes = {i["flat_size"] for i in self.info}
        if len(sizes) != 1 or len({tuple(i["params"]) for i in self.info}) != 1:
            raise TrainingError(f"build() gave different models on different workers: sizes {sorted(sizes)}")
        if not self.transport:
            want = self._requested_transport
            torch_everywhere = all(i["torch"] for i in self.info)
            if want == "gloo" and not torch_everywhere:
                raise ImportError("transport='gloo' needs torch (torch.distributed) in every worker")
            self.transport = "gloo" if want == "gloo" or (want == "auto" and torch_everywhere) else "object_store"
        if self.transport == "gloo" and self.world > 1:
            addr, port = self._gather([self._workers[0].rendezvous_address.remote()], "rendezvous")[0]
            self._gather([w.init_gloo.remote(addr, port, self.step_timeout) for w in self._workers], "gloo set-up")
        if checkpoint is None and self.world > 1:  # replicas start from rank 0's parameters
            flat = self._workers[0].params_flat.remote()
            self._gather([w.set_params_flat.remote(flat) for w in self._workers[1:]], "parameter broadcast")
        if self._shard_fn is not None:
            self._gather([w.set_shards.remote(self._shard_fn) for w in self._workers], "shard function")
        if checkpoint is None or len(checkpoint[1]) == 1:  # (local SGD: each rank resumes from its own file)
            self._verify(checkpoint[0] if checkpoint else 0, record=False)

    def _kill_workers(self) -> None:
        for w in self._workers:
            with contextlib.suppress(Exception):
                self._ray.kill(w, no_restart=True)
        self._workers = []

    def worker_pids(self) -> list[int]:
        """Process ids of the workers, by rank (on their machines)."""
        return [int(i["pid"]) for i in self.info]

    # ---------------------------------------------------------------- waiting, failures
    def _gather(self, refs: Sequence[Any], what: str) -> list[Any]:
        """Results of ``refs`` in order.

        A dead worker, a failed collective or a timeout raises :class:`_Restart`; any other worker error is re-raised as
        itself (the workers are torn down first: survivors may be blocked in a collective).
        """
        ray = self._ray
        pending = list(refs)
        results: dict[Any, Any] = {}
        user_error: BaseException | None = None
        deadline = time.monotonic() + self.step_timeout
        grace: float | None = None
        while pending:
            limit = deadline if grace is None else min(deadline, grace)
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, limit - time.monotonic()))
            if not ready:
                if grace is not None:
                    break  # a worker raised and the others are stuck waiting for it
                raise _Restart(f"{what}: no answer within {self.step_timeout:g} s (a worker hung)")
            for r in ready:
                try:
                    results[r] = ray.get(r)
                except ray.exceptions.RayTaskError as e:  # raised by our code or the user's, in a worker
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    if isinstance(cause, _CollectiveError):
                        raise _Restart(f"{what}: {cause}") from e
                    if isinstance(cause, _lost_types(ray)):
                        raise _Restart(f"{what}: a worker was lost ({type(cause).__name__})") from e
                    if user_error is None:
                        user_error = _explain(ray, cause)
                        grace = time.monotonic() + 5.0  # a death elsewhere would show up as such soon
                except _lost_types(ray) as e:  # actor died, killed for memory, node lost, object lost
                    raise _Restart(f"{what}: a worker died or was lost ({type(e).__name__}: {_first_line(e)})") from e
                except ray.exceptions.RayError as e:  # e.g. a task's arguments could not be unpickled
                    if user_error is None:
                        user_error = _explain(ray, e)
                        grace = time.monotonic() + 5.0
        if user_error is not None:
            self._broken = True
            self._kill_workers()
            raise user_error
        return [results[r] for r in refs]

    def _recover(self, reason: str, hist: DistributedHistory | None, count: bool = True) -> int:
        """Replace every worker from the last checkpoint; returns the step to resume at."""
        t0 = time.perf_counter()
        self._kill_workers()
        if self._ckpt is None:
            raise WorkerLostError(f"{reason}; no checkpoint to resume from (checkpoint_every=0 or no checkpoint_dir)")
        while True:
            self._restarts_used += int(count)
            count = True
            if self._restarts_used > self.max_restarts:
                raise WorkerLostError(f"{reason}; max_restarts={self.max_restarts} used up")
            try:
                self._start(self._ckpt)
                break
            except _Restart as e:
                self._kill_workers()
                reason = f"{reason}; then, while restarting: {e}"
        self._broken = False
        b = self._ckpt[0]
        if hist is not None:
            hist.restarts.append({"resumed_at": b, "reason": reason, "seconds": time.perf_counter() - t0})
            hist._truncate(b - self._fit_start)
        return b

    # ---------------------------------------------------------------- checks and checkpoints
    def verify(self) -> str:
        """Compare the workers' parameter hashes now.

        Returns the common hash, or raises :class:`ReplicaMismatchError` naming the workers that differ (with local SGD,
        replicas agree only right after an averaging step).
        """
        return self._outside_fit(lambda: self._verify(self._batches_done, record=False), "verify")

    def _verify(self, b: int, record: bool = True) -> str:
        hashes = self._gather([w.param_hash.remote() for w in self._workers], "parameter check")
        if len(set(hashes)) == 1:
            if record and self._history is not None:
                self._history.verified_steps.append(b)
            return hashes[0]
        counts: dict[str, int] = {}
        for h in hashes:
            counts[h] = counts.get(h, 0) + 1
        top = max(counts.values())
        ref = hashes[0] if counts[hashes[0]] == top else next(h for h in hashes if counts[h] == top)
        bad = [r for r, h in enumerate(hashes) if h != ref]
        where = ", ".join(f"rank {r} (pid {self.info[r]['pid']} on {self.info[r]['host']})" for r in bad)
        raise ReplicaMismatchError(
            f"replicas diverged at step {b}: the parameters of {where} differ from those of the other "
            f"{self.world - len(bad)} worker(s)",
            b,
            bad,
        )

    def _save_checkpoint(self, b: int) -> None:
        assert self._ckpt_dir is not None
        old = self._ckpt[1] if self._ckpt else []
        if self.average_every is None:
            paths = [str(self._ckpt_dir / f"step-{b:08d}.sdz")]
            savers = [self._workers[0]]
        else:
            paths = [str(self._ckpt_dir / f"step-{b:08d}-rank{r}.sdz") for r in range(self.world)]
            savers = list(self._workers)
        remove = [p for p in old if p not in paths]
        self._gather([w.save.remote(p, []) for w, p in zip(savers, paths, strict=True)], "checkpoint")
        self._ckpt = (b, paths)
        for p in remove:  # only now: the new set is complete
            with contextlib.suppress(OSError):
                os.unlink(p)

    # ---------------------------------------------------------------- training
    def fit(
        self,
        data: Data | None = None,
        epochs: int = 1,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        *,
        shards: ShardFn | None = None,
        steps: int | None = None,
        callbacks: Sequence[Any] = (),
        progress: bool | None = None,
    ) -> DistributedHistory:
        """Train on global batches; one global batch = one step on every worker.

        Args:
            data: global batches in any form :meth:`Trainer.fit <samediff_py.train.Trainer.fit>` takes (a dict
                of arrays batched by ``batch_size`` and shuffled with ``seed``, a re-iterable of feed dicts, a
                callable ``epoch -> iterable``); the driver splits each by rows (:func:`split_rows`).
            epochs: passes over ``data``.
            batch_size: global batch size when ``data`` is a dict of arrays.
            shuffle: shuffle the rows of a dict of arrays each epoch.
            seed: seed of that shuffle.
            shards: instead of ``data``: picklable ``(step, rank, world) -> feeds or None``, run in the workers
                (data that lives with them).
            steps: how many global steps to run with ``shards``.
            callbacks: objects with ``on_step_end(step, logs)`` / ``on_epoch_end(epoch, logs)`` run on the
                driver (returning True stops); ``step`` counts global steps from 0 in this call.
            progress: a tqdm bar (None: only on a terminal).

        Returns:
            :class:`DistributedHistory` of this call (after a restart, the replayed steps appear once).
        """
        if (data is None) == (shards is None):
            raise ValueError("pass either data (global batches split by the driver) or shards (a function)")
        if shards is not None and (steps is None or steps < 0):
            raise ValueError("shards needs steps (how many global steps to run)")
        hist = DistributedHistory(transport=self.transport)
        self._history = hist
        self._shard_fn = shards
        if shards is not None:
            source: Iterator[tuple[int, Any]] = ((0, None) for _ in range(int(steps or 0)))
        else:
            source = self._global_batches(data, epochs, batch_size, shuffle, seed)
        batches = _Batches(source)
        if self._broken:  # the last fit stopped on an error with the workers torn down
            self._batches_done = self._recover("resuming after an error in the previous fit", None, count=False)
        else:
            self._gather([w.set_shards.remote(self._shard_fn) for w in self._workers], "shard function")
        offset = self._fit_start = self._batches_done  # global step of this call's first batch
        if self._ckpt is not None and self._ckpt[0] != offset and self._ckpt_dir is not None:
            self._save_checkpoint(offset)  # a restart must not need the previous call's batches
        bar = _progress(progress, None if shards is None else int(steps or 0), "data parallel")
        epoch_t0: dict[int, float] = {}
        stop = False
        finished = False
        try:
            while not stop:
                b = self._batches_done
                item = batches.get(b - offset)
                if item is None:
                    break
                epoch, batch = item
                epoch_t0.setdefault(epoch, time.perf_counter())
                try:
                    res = self._step(b, batch)
                    self._batches_done = b + 1
                    self._after_step(b + 1)
                except _Restart as e:
                    self._batches_done = self._recover(str(e), hist)
                    continue
                if self._ckpt is not None:
                    batches.forget_before(self._ckpt[0] - offset)
                hist._record(res, epoch)
                bar.update(1)
                for cb in callbacks:
                    hook = getattr(cb, "on_step_end", None)
                    logs = {"loss": res["loss"], "epoch": epoch, "weight": res["total"]}
                    if hook is not None and hook(b - offset, logs):
                        stop = True
                nxt = batches.get(b + 1 - offset)
                if nxt is None or nxt[0] != epoch or stop:
                    hist._end_epoch(epoch, time.perf_counter() - epoch_t0[epoch])
                    for cb in callbacks:
                        hook = getattr(cb, "on_epoch_end", None)
                        if hook is not None and hook(epoch, hist.epoch_logs[-1]):
                            stop = True
            finished = True
        finally:
            bar.close()
            if not finished and not self._broken:  # e.g. Ctrl-C: the workers may be mid-step; resume from the file
                self._broken = True
                self._kill_workers()
        hist.stopped_early = stop
        return hist

    def _global_batches(
        self, data: Data, epochs: int, batch_size: int | None, shuffle: bool, seed: int
    ) -> Iterator[tuple[int, Any]]:
        rng = np.random.default_rng(seed)
        for epoch in range(int(epochs)):
            it, _ = _batches(data, epoch, batch_size, shuffle, rng)
            for batch in it:
                yield epoch, batch

    def _step(self, b: int, batch: Feeds | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        shards: list[Any] = split_rows(batch, self.world) if batch is not None else [None] * self.world
        ws = self._workers
        if self.average_every is not None:
            outs = self._gather([w.local_step.remote(b, s) for w, s in zip(ws, shards, strict=True)], f"step {b}")
            weights = [o["weight"] for o in outs]
            total = float(sum(weights))
            loss = sum(o["weight"] * o["loss"] for o in outs if o["weight"] > 0) / total if total > 0 else 0.0
            if (b + 1) % self.average_every == 0:
                if self.transport == "gloo" and self.world > 1:
                    self._gather([w.average_gloo.remote() for w in ws], f"averaging at step {b}")
                elif self.world > 1:
                    flats = [w.params_flat.remote() for w in ws]
                    self._gather([w.set_mean.remote(*flats) for w in ws], f"averaging at step {b}")
            res = {"loss": loss, "total": total, "applied": any(o["applied"] for o in outs)}
        elif self.transport == "gloo" and self.world > 1:
            outs = self._gather([w.step.remote(b, s) for w, s in zip(ws, shards, strict=True)], f"step {b}")
            res = {"loss": outs[0]["loss"], "total": outs[0]["total"], "applied": outs[0]["applied"]}
        else:
            parts = [w.gradients.options(num_returns=2).remote(b, s) for w, s in zip(ws, shards, strict=True)]
            metas, grads = [p[0] for p in parts], [p[1] for p in parts]
            outs = self._gather([w.apply.remote(b, *metas, *grads) for w in ws], f"step {b}")
            res = {"loss": outs[0]["loss"], "total": outs[0]["total"], "applied": outs[0]["applied"]}
        res["rows"] = int(sum(o["rows"] for o in outs))
        res["rank_losses"] = [float(o["local_loss"]) for o in outs]
        res["rank_weights"] = [float(o["weight"]) for o in outs]
        times = {k: max(o["times"][k] for o in outs) for k in outs[0]["times"]}
        times["step"] = time.perf_counter() - t0
        res["times"] = times
        return res

    def _after_step(self, done: int) -> None:
        """Parameter checks and checkpoints once ``done`` steps are complete."""
        averaged = self.average_every is None or done % self.average_every == 0
        last = self._ckpt[0] if self._ckpt else 0
        save = bool(self.checkpoint_every and self._ckpt_dir is not None and averaged)
        save = save and done - last >= self.checkpoint_every
        due = bool(self.verify_every) and (self.average_every is not None or done % self.verify_every == 0)
        if averaged and (save or due):
            self._verify(done)  # a checkpoint is only written from replicas verified identical
        if save:
            self._save_checkpoint(done)

    # ---------------------------------------------------------------- results
    def _outside_fit(self, call: Callable[[], Any], what: str) -> Any:
        """Run a driver request outside :meth:`fit`.

        A lost worker becomes :class:`WorkerLostError` (the next fit resumes from the last checkpoint).
        """
        if self._broken or not self._workers:
            raise WorkerLostError(f"{what}: the workers were torn down after an error; call fit to resume")
        try:
            return call()
        except _Restart as e:
            self._broken = True
            self._kill_workers()
            at = f"step {self._ckpt[0]}" if self._ckpt else "nothing (no checkpoint)"
            raise WorkerLostError(f"{e}; the next fit resumes from the checkpoint at {at}") from None

    def weights(self) -> dict[str, np.ndarray]:
        """Rank 0's trained variables (name -> array)."""
        return self._outside_fit(lambda: self._gather([self._workers[0].weights.remote()], "weights")[0], "weights")

    def save(self, path: str | os.PathLike) -> Path:
        """Save rank 0's model (with updater state) to ``path`` on rank 0's machine (atomic, verified)."""
        self._outside_fit(lambda: self._gather([self._workers[0].save.remote(str(path), [])], "save"), "save")
        return Path(path)

    @property
    def checkpoint(self) -> str | None:
        """The latest checkpoint file (rank 0's), or None."""
        return self._ckpt[1][0] if self._ckpt else None

    @property
    def steps_done(self) -> int:
        """Global steps completed by this DataParallel (over all fit calls)."""
        return self._batches_done

    def shutdown(self) -> None:
        """Stop the workers (and the local Ray cluster if this object started it); remove temporary checkpoints."""
        self._kill_workers()
        if self._tmp_ckpt_dir is not None:
            shutil.rmtree(self._tmp_ckpt_dir, ignore_errors=True)
            self._tmp_ckpt_dir = None
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def fit(
    build: Callable[[], tuple[Any, Any]],
    data: Data | None = None,
    workers: int = 2,
    *,
    epochs: int = 1,
    batch_size: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    shards: ShardFn | None = None,
    steps: int | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool | None = None,
    **options: Any,
) -> tuple[DistributedHistory, dict[str, np.ndarray]]:
    """One data-parallel run, returning ``(history, weights)``.

    Builds :class:`DataParallel` ``(build, workers, **options)``, runs :meth:`DataParallel.fit`, then reads the
    trained weights.
    """
    with DataParallel(build, workers, **options) as dp:
        hist = dp.fit(data, epochs, batch_size, shuffle, seed, shards=shards, steps=steps, callbacks=callbacks,
                      progress=progress)  # fmt: skip
        return hist, dp.weights()
