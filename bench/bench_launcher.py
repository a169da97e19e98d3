"""Which launcher for samediff_py.distributed: plain Ray actors or Ray Train (DataParallelTrainer / TorchTrainer)?

Measures, in one run on a local Ray cluster with 2 workers (1 CPU each):

- start-up: from the launch call to every worker running user code, with and without a JVM + small graph;
- per-step overhead of a driver-driven step (the driver sends each worker its shard and collects the loss):
  an actor round trip for 2 workers, with an empty payload and with a 64 x 32 token shard;
- Ray Train: the time from ``fit()`` to the train loop's first line, and from its last line to ``fit()``'s return
  (the loop itself runs inside the workers: no per-step driver round trip, but no driver-side data either).

Ray Train parts are skipped when ``ray.train`` cannot be imported (it needs ``ray[train]``: pyarrow, pandas,
fsspec, tensorboardX, ~260 MB); TorchTrainer also needs torch. Run with a venv that has them, e.g.

    build/dist-venv/bin/python bench/bench_launcher.py --json out.json
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import tempfile
import time

import numpy as np
import ray

ROUNDS = 3


@ray.remote(num_cpus=1)
class Plain:
    def __init__(self, jvm: bool):
        self.t_init = time.time()
        if jvm:
            _small_trainer()

    def ready(self) -> float:
        return self.t_init

    def step(self, shard):
        return 0.0 if shard is None else float(len(shard["tokens"]))


def _small_trainer():
    from samediff_py import Graph, ops
    from samediff_py.train import Trainer

    g = Graph(seed=0)
    x = g.placeholder("x", ("batch", 8))
    w = g.variable("w", np.zeros((8, 1), np.float32))
    loss = ops.mean(ops.square(x @ w), name="loss")
    return Trainer(g, loss, "sgd", lr=0.1)


def plain_startup(jvm: bool) -> float:
    t0 = time.time()
    actors = [Plain.remote(jvm) for _ in range(2)]
    ray.get([a.ready.remote() for a in actors])
    dt = time.time() - t0
    for a in actors:
        ray.kill(a)
    return dt


def plain_step_overhead(payload: bool, steps: int = 200) -> float:
    actors = [Plain.remote(False) for _ in range(2)]
    ray.get([a.ready.remote() for a in actors])
    shard = {"tokens": np.zeros((32, 32), np.int32), "mask": np.ones((32, 32), np.float32)} if payload else None
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        ray.get([a.step.remote(shard) for a in actors])
        times.append(time.perf_counter() - t0)
    for a in actors:
        ray.kill(a)
    return statistics.median(times[10:])


def train_loop(config):
    import ray.train

    t_first = time.time()
    if config["jvm"]:
        _small_trainer()
    if config.get("torch"):
        import torch
        import torch.distributed as dist

        t = torch.zeros(1000)
        dist.all_reduce(t)
    t_ready = time.time()
    rank = ray.train.get_context().get_world_rank()
    with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
        json.dump({"t_first": t_first, "t_ready": t_ready, "t_last": time.time()}, f)


def ray_train_startup(kind: str, jvm: bool) -> dict:
    from ray.train import RunConfig, ScalingConfig

    storage = tempfile.mkdtemp(prefix="rt-")
    scaling = ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1})
    cfg = {"jvm": jvm, "torch": kind == "torch", "out": storage}
    if kind == "torch":
        from ray.train.torch import TorchTrainer as T
    else:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as T
    trainer = T(train_loop, train_loop_config=cfg, scaling_config=scaling, run_config=RunConfig(storage_path=storage))
    t0 = time.time()
    trainer.fit()
    t_end = time.time()
    ms = [json.load(open(os.path.join(storage, f"rank{r}.json"))) for r in range(2)]
    first, ready, last = (max(m[k] for m in ms) for k in ("t_first", "t_ready", "t_last"))
    return {"startup": ready - t0, "to_loop": first - t0, "teardown": t_end - last, "total": t_end - t0}


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def main(quick: bool = False) -> dict:
    out: dict = {}
    t0 = time.time()
    ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False)
    out["ray_init_s"] = time.time() - t0
    rounds = 1 if quick else ROUNDS
    have_train = importlib.util.find_spec("ray.train") is not None and _importable("ray.train")
    have_torch = _importable("torch")
    res: dict[str, list] = {}
    for _ in range(rounds):  # interleaved: every variant once per round
        for jvm in (False, True):
            res.setdefault(f"actors_startup_jvm={jvm}", []).append(plain_startup(jvm))
            if have_train:
                r = ray_train_startup("dp", jvm)
                res.setdefault(f"dp_startup_jvm={jvm}", []).append(r["startup"])
                res.setdefault(f"dp_teardown_jvm={jvm}", []).append(r["teardown"])
                res.setdefault(f"dp_to_loop_jvm={jvm}", []).append(r["to_loop"])
                if have_torch:
                    r = ray_train_startup("torch", jvm)
                    res.setdefault(f"torch_startup_jvm={jvm}", []).append(r["startup"])
                    res.setdefault(f"torch_teardown_jvm={jvm}", []).append(r["teardown"])
                    res.setdefault(f"torch_to_loop_jvm={jvm}", []).append(r["to_loop"])
        res.setdefault("actors_step_empty_ms", []).append(1e3 * plain_step_overhead(False))
        res.setdefault("actors_step_shard_ms", []).append(1e3 * plain_step_overhead(True))
    out.update({k: statistics.median(v) for k, v in res.items()})
    out["have_ray_train"], out["have_torch"] = have_train, have_torch
    ray.shutdown()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    r = main(a.quick)
    print(json.dumps(r, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f)
