"""numpy <-> INDArray transfer throughput, against numpy's own copy measured in the same run.

For float32 arrays of 1 KiB .. 64 MiB, the median time (round-robin over the cases, after warm-up) of:

- ``np.copyto(dst, src)`` into a preallocated array, and ``src.copy()`` (numpy allocates): the baselines;
- ``arrays.to_indarray(src)``: an owned copy into fresh nd4j native memory (one allocation + one memcpy);
- ``arrays.wrap(src)``: a zero-copy INDArray over numpy's memory (constant time; timed on its own, warm);
- ``arrays.to_numpy(j)``: a copy out of an INDArray into a new numpy array;
- ``Bridge.alloc`` alone (the nd4j allocation inside to_indarray), to split its time into allocation and copy.

Ratios are numpy's time divided by ours: 1.00 = as fast as numpy's copy, 0.50 = half its speed. Also the
per-call overhead of ``Graph.run`` on a tiny graph (``x + 1`` on a [4] vector).

    python bench/bench_transfer.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import fmt_bytes, interleaved_medians, table  # noqa: E402

from samediff_py import Graph, _jvm, arrays  # noqa: E402

SIZES = [1 << 10, 16 << 10, 256 << 10, 1 << 20, 16 << 20, 64 << 20]

NOTE = (
    "Note: to_indarray allocates fresh native memory on every call (nd4j, detached), so its time includes the\n"
    "allocation, which touches every page (see the alloc column; shares are ratios of medians, so rough).\n"
    "np.copyto writes into memory that is already mapped, and numpy's allocator (arr.copy()) can reuse blocks\n"
    "it just freed. to_numpy also allocates (np.empty), like arr.copy(). Small sizes measure per-call cost\n"
    "(pyjnius calls, nd4j array creation), not bandwidth. wrap copies nothing: its time does not depend on the\n"
    "size (timed warm; right after a large copy has evicted the caches it takes several times longer)."
)


def _repeats(nbytes: int, quick: bool) -> int:
    if nbytes >= 16 << 20:
        return 5 if quick else 15
    return 20 if quick else 200


def measure_size(nbytes: int, quick: bool) -> dict[str, float]:
    """Median seconds per case for one float32 array of ``nbytes``."""
    rng = np.random.default_rng(0)
    src = rng.standard_normal(nbytes // 4).astype(np.float32)
    dst = np.empty_like(src)
    j_out = arrays.to_indarray(src)
    assert np.array_equal(arrays.to_numpy(j_out), src)

    cases = {
        "copyto": lambda: np.copyto(dst, src),
        "copy": lambda: src.copy(),
        "to_indarray": lambda: arrays.to_indarray(src),
        "to_numpy": lambda: arrays.to_numpy(j_out),
        "alloc": lambda: _jvm.bridge().alloc(_jvm.dtype_enum("FLOAT"), [src.size]),
    }
    # free each owned copy at once (outside the timed region) instead of waiting for Java's GC
    after = {"to_indarray": lambda j: j.close(), "alloc": lambda j: j.close()}
    out = interleaved_medians(cases, _repeats(nbytes, quick), warmup=2, after=after)
    # wrap on its own: interleaved after a large copy it runs with cold caches (the copy evicted the JVM's
    # code and data), which made it look size-dependent (~0.4 ms at 64 MiB vs ~0.05 ms warm)
    out["wrap"] = interleaved_medians({"wrap": lambda: arrays.wrap(src)}, _repeats(nbytes, quick), warmup=2)["wrap"]
    return out


def tiny_graph_run_us(quick: bool) -> float:
    """Median microseconds of ``Graph.run`` for ``x + 1`` on a [4] float32 vector (feed in, result out)."""
    g = Graph()
    x = g.placeholder("x", (4,))
    y = x + 1
    feed = {"x": np.arange(4, dtype=np.float32)}
    assert np.array_equal(g.run(feed, y), [1, 2, 3, 4])
    return interleaved_medians({"run": lambda: g.run(feed, y)}, 200 if quick else 2000, warmup=20)["run"] * 1e6


def main(quick: bool = False) -> dict:
    """Run the benchmark, print the table; returns {"sizes": {bytes: {...}}, "tiny_graph_run_us": float}."""
    results: dict = {"sizes": {}, "quick": quick}
    rows = []
    for nbytes in SIZES:
        t = measure_size(nbytes, quick)
        gbs = {k: nbytes / v / 1e9 for k, v in t.items()}
        r = {
            **{f"{k}_s": v for k, v in t.items()},
            **{f"{k}_GBps": v for k, v in gbs.items() if k != "wrap"},
            "in_vs_copyto": t["copyto"] / t["to_indarray"],
            "in_vs_copy": t["copy"] / t["to_indarray"],
            "out_vs_copyto": t["copyto"] / t["to_numpy"],
            "out_vs_copy": t["copy"] / t["to_numpy"],
            "wrap_us": t["wrap"] * 1e6,
            "alloc_share_of_to_indarray": t["alloc"] / t["to_indarray"],
            # to_indarray minus the allocation: the memcpy part, vs np.copyto (difference of medians: rough)
            "in_copy_part_vs_copyto": t["copyto"] / max(t["to_indarray"] - t["alloc"], 1e-9),
        }
        results["sizes"][nbytes] = r
        rows.append(
            [
                fmt_bytes(nbytes),
                f"{gbs['copyto']:.2f}",
                f"{gbs['copy']:.2f}",
                f"{gbs['to_indarray']:.2f}",
                f"{r['in_vs_copyto']:.2f} / {r['in_vs_copy']:.2f}",
                f"{gbs['to_numpy']:.2f}",
                f"{r['out_vs_copyto']:.2f} / {r['out_vs_copy']:.2f}",
                f"{r['wrap_us']:.1f}",
                f"{t['alloc'] * 1e3:.3f} ({r['alloc_share_of_to_indarray']:.0%})",
                f"{r['in_copy_part_vs_copyto']:.2f}",
            ]
        )
        print(f"  measured {fmt_bytes(nbytes)}", file=sys.stderr, flush=True)
    results["tiny_graph_run_us"] = tiny_graph_run_us(quick)
    headers = [
        "float32 size",
        "np.copyto GB/s",
        "arr.copy() GB/s",
        "to_indarray GB/s",
        "in: x copyto / x copy()",
        "to_numpy GB/s",
        "out: x copyto / x copy()",
        "wrap us",
        "nd4j alloc ms (share of to_indarray)",
        "in minus alloc: x copyto",
    ]
    results["loadavg_1min"] = os.getloadavg()[0]
    print("numpy <-> INDArray transfer (median per call; ratio = numpy time / ours, 1.00 = numpy's speed)")
    print(f"{os.cpu_count()} CPUs, load average {results['loadavg_1min']:.1f} at the end (load skews results)")
    print(table(headers, rows))
    print(f"\nGraph.run of x + 1 on a [4] vector: {results['tiny_graph_run_us']:.0f} us per call (median)")
    print(NOTE)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="numpy <-> INDArray transfer throughput")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (CI-sized)")
    main(ap.parse_args().quick)
