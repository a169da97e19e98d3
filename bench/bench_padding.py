"""Padding waste: real tokens per second training the MLM encoder on mixed-length sequences, random batches
padded to their longest row vs batches bucketed by length (:mod:`samediff_py.batching`), same rows, same run.

Lengths are uniform in [16, 128]; batch 32; one pass over the rows per epoch, epochs alternating between the
two batchings (after a warm-up epoch of each). Real tokens = sum of the rows' lengths (padding excluded).

    python bench/bench_padding.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_models  # noqa: E402

from samediff_py import batching, train  # noqa: E402


def main(quick: bool = False) -> dict:
    n_rows, epochs = (128, 1) if quick else (512, 2)
    cfg = dict(bench_models.BASE)
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, cfg["time"] + 1, n_rows)
    full = bench_models.make_batch(rng, n_rows, cfg["time"], cfg["vocab"], lengths=lengths)
    seqs = [full["tokens"][i, :n] for i, n in enumerate(lengths)]
    labs = [full["labels"][i, :n] for i, n in enumerate(lengths)]

    def feeds(batches):
        out = []
        for rows in batches:
            tokens, mask = batching.pad_batch(seqs, rows, bench_models.PAD, multiple=8)
            labels, _ = batching.pad_batch(labs, rows, bench_models.IGNORE, multiple=8)
            out.append({"tokens": tokens, "labels": labels, "mask": mask})
        return out

    order = rng.permutation(n_rows)
    plans = {
        "padded to longest (random batches)": feeds([order[i : i + 32] for i in range(0, n_rows, 32)]),
        "bucketed by length": feeds(batching.bucket_batches(lengths, 32, seed=0)),
    }
    g, _logits, loss = bench_models.build(cfg)
    trainer = train.Trainer(g, loss, "adam", lr=1e-3)
    times: dict[str, list[float]] = {k: [] for k in plans}
    for e in range(1 + epochs):
        for name, fds in plans.items():
            t0 = time.perf_counter()
            for fd in fds:
                trainer.step(fd)
            if e:
                times[name].append(time.perf_counter() - t0)
    real = int(lengths.sum())
    res: dict = {"rows": n_rows, "real_tokens": real, "plans": {}}
    for name, fds in plans.items():
        computed = sum(fd["tokens"].size for fd in fds)
        sec = statistics.median(times[name])
        res["plans"][name] = {
            "computed_tokens": computed,
            "padding_share": 1 - real / computed,
            "epoch_s": sec,
            "real_tok_s": real / sec,
        }
    a, b = (res["plans"][k]["real_tok_s"] for k in plans)
    res["bucketed_vs_padded"] = b / a
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(main(ap.parse_args().quick), indent=1))
