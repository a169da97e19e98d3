"""Data-parallel training (samediff_py.distributed): measured step phases and a ring-allreduce scaling model.

    python bench/bench_distributed.py [--quick] [--json out.json]            # object-store transport only
    build/dist-venv/bin/python bench/bench_distributed.py --json out.json    # + gloo (a venv with torch)

Parts (every comparison interleaved round by round, medians):

1. One process, MLPs of ~1M and ~10M parameters (batch 32, Adam): ``Trainer.step`` (one JVM call) against the
   same step in the phases a data-parallel worker runs: gradients (forward + backward on the JVM), pack (the
   gradients copied into one flat numpy array), apply (unpack, finiteness check, updater).
2. Transports between 2 Ray actors, float32 vectors of 1M / 4M / 10M elements: gloo allreduce
   (torch.distributed; only where torch is importable) against the object store (each actor puts its vector,
   each gets all and sums: what ``transport="object_store"`` does), and the latency of a tiny allreduce.
3. 2-worker DataParallel runs of both MLPs (global batch 64), per phase, per transport.
4. The scaling model (no measurement): ring allreduce ``2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency``
   for N = 2..16 machines at 1 / 10 / 25 GbE, with the measured phases of part 1, the step time it gives, and
   where local SGD or bigger per-worker batches are needed (see ``model_rows``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402

from samediff_py import Graph, distributed, ops  # noqa: E402

SIZES = {"1M": [256, 1024, 640, 256], "10M": [1024, 2048, 2560, 1024, 256]}
BATCH = 32  # rows per worker
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def build_mlp(widths: list[int]):
    g = Graph(seed=0)
    x = g.placeholder("x", ("batch", widths[0]))
    y = g.placeholder("y", ("batch", widths[-1]))
    h = x
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        h = h @ g.variable(f"w{i}", shape=(a, b)) + g.variable(f"b{i}", np.zeros(b, np.float32))
        if i < len(widths) - 2:
            h = ops.tanh(h)
    return g, ops.mean(ops.square(h - y), name="loss")


class Builder:  # picklable build() for the workers
    def __init__(self, widths: list[int]):
        self.widths = widths

    def __call__(self):
        return build_mlp(self.widths)


def params(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def batch(widths: list[int], rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(rows, widths[0])).astype(np.float32),
        "y": rng.normal(size=(rows, widths[-1])).astype(np.float32),
    }


# ------------------------------------------------------------------------------------------ 1. one process
def single_process_phases(rounds: int, sizes: dict[str, list[int]]) -> dict:
    """Medians (ms) of Trainer.step and of the split step's phases, per model size, interleaved."""
    from samediff_py import _jvm, arrays
    from samediff_py.train import Trainer, _training

    trainers = {k: Trainer(*build_mlp(w), "adam", lr=1e-5) for k, w in sizes.items()}
    feeds = {k: batch(w, BATCH) for k, w in sizes.items()}
    phase_names = ("step", "gradients", "pack", "apply")
    times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in phase_names} for k in sizes}
    for r in range(rounds + 2):
        for k, t in trainers.items():
            t0 = time.perf_counter()
            t.step(feeds[k])
            t1 = time.perf_counter()
            arrs = t._train_feeds(feeds[k], np.random.default_rng(0))
            shapes = [d for a in arrs for d in (a.ndim, *a.shape)]
            _training().computeGradients(t._session, [a.ctypes.data for a in arrs], shapes)
            t2 = time.perf_counter()
            flat = np.empty(t.flat_size, np.float32)
            _training().packGradients(t._session, flat.ctypes.data, _jvm.dtype_enum(arrays.ND4J_DTYPES[flat.dtype]))
            t3 = time.perf_counter()
            t.apply_gradients(flat)
            t4 = time.perf_counter()
            if r >= 2:
                for p, v in (("step", t1 - t0), ("gradients", t2 - t1), ("pack", t3 - t2), ("apply", t4 - t3)):
                    times[k][p].append(1e3 * v)
    return {
        k: {"params": trainers[k].flat_size, **{p: statistics.median(v) for p, v in ph.items()}}
        for k, ph in times.items()
    }


# ------------------------------------------------------------------------------------------ 2. transports
@ray.remote(num_cpus=0.5)
class Peer:
    def __init__(self, rank: int):
        self.rank, self.vec = rank, {}

    def address(self):
        return ray.util.get_node_ip_address(), distributed._free_port()

    def init_gloo(self, addr, port):
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=self.rank, world_size=2)

    def gloo(self, n: int, reps: int) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(np.ones(n, np.float32))
        out = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            out.append(time.perf_counter() - t0)
        return out

    def make(self, n: int) -> np.ndarray:
        return np.full(n, float(self.rank + 1), np.float32)

    def reduce(self, *parts: np.ndarray) -> float:
        out = np.array(parts[0], copy=True)
        for p in parts[1:]:
            out += p
        return float(out[0])


def transports(rounds: int, sizes: tuple[int, ...] = (2, 1 << 20, 4 << 20, 10 << 20)) -> dict:
    peers = [Peer.remote(r) for r in range(2)]
    if HAVE_TORCH:
        addr, port = ray.get(peers[0].address.remote())
        ray.get([p.init_gloo.remote(addr, port) for p in peers])
    res: dict[str, dict[int, list[float]]] = {"gloo": {n: [] for n in sizes}, "object_store": {n: [] for n in sizes}}
    for _ in range(rounds):
        for n in sizes:
            if HAVE_TORCH:
                per_rank = ray.get([p.gloo.remote(n, 5) for p in peers])
                res["gloo"][n].append(statistics.median(max(a, b) for a, b in zip(*per_rank, strict=True)))
            for _ in range(3):
                t0 = time.perf_counter()
                refs = [p.make.remote(n) for p in peers]
                ray.get([p.reduce.remote(*refs) for p in peers])
                res["object_store"][n].append(time.perf_counter() - t0)
                del refs
    for p in peers:
        ray.kill(p)
    return {t: {str(n): 1e3 * statistics.median(v) for n, v in d.items() if v} for t, d in res.items()}


# ------------------------------------------------------------------------------------------ 3. DataParallel
def data_parallel(rounds: int, steps: int, sizes: dict[str, list[int]]) -> dict:
    """Per-phase medians (ms) of 2-worker runs; one DataParallel alive at a time (memory), transports interleaved
    round by round; each run's first 2 steps are warm-up."""
    kinds = ["object_store"] + (["gloo"] if HAVE_TORCH else [])
    out: dict = {}
    for size, widths in sizes.items():
        data = [batch(widths, 2 * BATCH, s) for s in range(steps + 2)]
        phases: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
        for _ in range(rounds):
            for k in kinds:
                with distributed.DataParallel(
                    Builder(widths), 2, trainer={"updater": "adam", "lr": 1e-5}, transport=k, checkpoint_every=0,
                    verify_every=0,
                ) as dp:  # fmt: skip
                    hist = dp.fit(data)
                for p, v in hist.phase_seconds.items():
                    phases[k].setdefault(p, []).extend(1e3 * x for x in v[2:])
        out[size] = {k: {p: statistics.median(v) for p, v in ph.items()} for k, ph in phases.items()}
    return out


# ------------------------------------------------------------------------------------------ 4. the model
LATENCY_S = 50e-6  # per message on a LAN (TCP, one switch); loopback measured in part 2
EFFICIENCY = 0.9  # achievable share of the line rate for large TCP transfers
GBE = {"1 GbE": 1e9, "10 GbE": 10e9, "25 GbE": 25e9}


def ring_allreduce_s(nbytes: float, n: int, bits_per_s: float, latency: float = LATENCY_S) -> float:
    """Ring allreduce: reduce-scatter + allgather, 2 (N - 1) steps each moving bytes / N per link."""
    if n < 2:
        return 0.0
    return 2 * (n - 1) / n * nbytes / (EFFICIENCY * bits_per_s / 8) + 2 * (n - 1) * latency


def model_rows(phases: dict) -> list[dict]:
    """Step time on N machines (1 worker each, 1 nd4j thread, the per-worker batch of part 1): gradients +
    pack + weights allreduce (latency only) + gradient allreduce + apply; the efficiency is the one-machine
    step (no exchange) over that."""
    rows = []
    for size, ph in phases.items():
        compute = ph["gradients"] + ph["pack"] + ph["apply"]
        nbytes = 4 * ph["params"]
        for net, bps in GBE.items():
            for n in (2, 4, 8, 16):
                comm = 1e3 * (ring_allreduce_s(nbytes, n, bps) + 2 * (n - 1) * LATENCY_S)
                step = compute + comm
                # exchange <= 10 % of the step: local SGD averaging every k steps (same bytes per exchange),
                # or m times the per-worker batch (only the gradients phase grows)
                k = max(1, int(np.ceil(9 * comm / compute)))
                m = max(1, int(np.ceil((9 * comm - ph["pack"] - ph["apply"]) / ph["gradients"])))
                rows.append({"size": size, "net": net, "n": n, "allreduce_ms": comm, "step_ms": step,
                             "efficiency": compute / step, "local_sgd_k": k, "batch_x": m})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------ report
def _f(x: float, d: int = 1) -> str:
    return f"{x:,.{d}f}"


def report(r: dict, launcher: dict | None = None) -> str:
    """The "Data-parallel training" section of bench/RESULTS.md from :func:`main`'s result (and, if given,
    bench_launcher.py's)."""
    from common import table

    L = ["## Data-parallel training (bench_distributed.py, bench_launcher.py)", ""]
    if "load" in r:
        gloo = "present: gloo measured" if r["have_torch"] else "absent: gloo not run"
        L += [f"Load average (1 min) at start / end: {_f(r['load'][0], 1)} / {_f(r['load'][1], 1)}; torch {gloo}.", ""]
    if launcher:
        lr = launcher

        def cell(key: str) -> str:
            return _f(lr[key], 1) if key in lr else "not run"

        L += [
            "Launcher (2 workers, 1 CPU each, local cluster; seconds from the launch call until every worker runs "
            "user code; ray.init itself: " + _f(lr["ray_init_s"], 1) + " s):",
            "",
            table(
                ["launcher", "no JVM", "JVM + small graph", "per-step driver round trip"],
                [
                    [
                        "plain Ray actors (samediff_py.distributed)",
                        cell("actors_startup_jvm=False"),
                        cell("actors_startup_jvm=True"),
                        f"{_f(lr['actors_step_empty_ms'], 2)} ms empty, "
                        f"{_f(lr['actors_step_shard_ms'], 2)} ms with a 32 x 32 shard",
                    ],
                    [
                        "Ray Train DataParallelTrainer",
                        cell("dp_startup_jvm=False"),
                        cell("dp_startup_jvm=True"),
                        "none (loop runs in the workers)",
                    ],
                    [
                        "Ray Train TorchTrainer",
                        cell("torch_startup_jvm=False"),
                        cell("torch_startup_jvm=True"),
                        "none (loop runs in the workers)",
                    ],
                ],
            ),  # fmt: skip
            "",
            "Ray Train also needs `ray[train]` (pyarrow, pandas, fsspec, tensorboardX: ~260 MB; TorchTrainer: "
            "torch) and takes " + _f(lr.get("dp_teardown_jvm=False", float("nan")), 1) + " s to return after the "
            "loop ends.",
            "",
        ]
    single = r["single"]
    L += [
        f"One process, MLPs, batch {BATCH}, Adam, 1 thread: `Trainer.step` vs the phases of a data-parallel step (ms):",
        "",
        table(
            ["model", "parameters", "Trainer.step", "gradients", "pack", "apply", "phases / step"],
            [
                [
                    k,
                    f"{v['params']:,}",
                    _f(v["step"]),
                    _f(v["gradients"]),
                    _f(v["pack"]),
                    _f(v["apply"]),
                    _f((v["gradients"] + v["pack"] + v["apply"]) / v["step"], 2),
                ]
                for k, v in single.items()
            ],
        ),  # fmt: skip
        "",
    ]
    tr = r["transports"]
    rows = []
    for n, ms in tr["object_store"].items():
        g = tr.get("gloo", {}).get(n)
        size = f"{int(n) * 4} bytes" if int(n) < 1024 else f"{_f(int(n) * 4 / 2**20, 0)} MiB"
        rows.append([f"{int(n):,} ({size})", _f(g, 2) if g is not None else "not run (no torch)",
                     _f(ms, 2), _f(ms / g, 1) if g else ""])  # fmt: skip
    L += [
        "Transports, 2 actors on this machine (ms per allreduce of float32; object store = put, get both, sum):",
        "",
        table(["elements", "gloo (torch.distributed)", "object store", "object store / gloo"], rows),
        "",
    ]
    dp = r["data_parallel"]
    ratios = [f"{size} {_f(k['gloo']['step'] / k['object_store']['step'], 2)}" for size, k in dp.items() if "gloo" in k]
    rows = []
    for size, kinds in dp.items():
        for k, ph in kinds.items():
            rows.append([size, k, *(_f(ph.get(p, 0.0)) for p in ("gradients", "weights", "pack", "allreduce",
                                                                    "apply", "step"))])  # fmt: skip
    L += [
        f"2-worker DataParallel, global batch {2 * BATCH} ({BATCH} rows per worker), medians per step (ms; the "
        "slowest worker's; `weights` includes waiting for the slower worker, `step` is the driver's wall time):",
        "",
        table(["model", "transport", "gradients", "weights", "pack", "allreduce", "apply", "step"], rows),
        "",
    ]
    if ratios:
        L += [f"Driver step time, gloo / object store: {', '.join(ratios)}.", ""]
    assume = r["assumptions"]
    L += [
        "Scaling model: N machines, one worker each, the per-worker batch and phases above; a step is gradients + "
        "pack + allreduce of the weights (latency only) + ring allreduce of the gradient + apply, nothing "
        "overlapped. Ring allreduce = 2 (N-1)/N x bytes / (" + _f(assume["efficiency"], 1) + " x line rate) + "
        f"2 (N-1) x {assume['latency_s'] * 1e6:.0f} us. Efficiency = the step without exchange / the step. "
        "Speed-up = N x efficiency (throughput over one machine at the same per-worker batch). k = local SGD "
        "averaging period, or m = per-worker batch multiple, that keeps the exchange under 10 % of the step. "
        "Faster cores shrink the compute phases and raise k and m in proportion.",
        "",
    ]
    rows = [
        [m["size"], m["net"], m["n"], _f(m["allreduce_ms"]), _f(m["step_ms"]), f"{m['efficiency']:.0%}",
         _f(m["n"] * m["efficiency"], 1), m["local_sgd_k"], m["batch_x"]]
        for m in r["model"]
    ]  # fmt: skip
    L += [table(["model", "network", "N", "allreduce ms", "step ms", "efficiency", "speed-up", "k", "m"], rows), ""]
    return "\n".join(L)


def main(quick: bool = False) -> dict:
    rounds = 2 if quick else 5
    load0 = os.getloadavg()[0]
    sizes = {"1M": SIZES["1M"]} if quick else SIZES
    out: dict = {"quick": quick, "single": single_process_phases(rounds, sizes)}
    distributed.init_ray(num_cpus=2, object_store_memory=1 << 30)
    try:
        out["transports"] = transports(rounds)
        out["data_parallel"] = data_parallel(1 if quick else 3, 3 if quick else 8, sizes)
    finally:
        ray.shutdown()
    out["model"] = model_rows(out["single"])
    out["have_torch"] = HAVE_TORCH
    out["load"] = [load0, os.getloadavg()[0]]
    out["assumptions"] = {"latency_s": LATENCY_S, "efficiency": EFFICIENCY}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--md", help="only print the RESULTS.md section of a saved --json result (and launcher json)")
    ap.add_argument("--launcher", help="bench_launcher.py --json output, for --md")
    a = ap.parse_args()
    if a.md:
        lj = json.loads(Path(a.launcher).read_text()) if a.launcher else None
        print(report(json.loads(Path(a.md).read_text()), lj))
        sys.exit(0)
    r = main(a.quick)
    print(json.dumps(r, indent=1, default=str))
    if a.json:
        Path(a.json).write_text(json.dumps(r, default=str))
