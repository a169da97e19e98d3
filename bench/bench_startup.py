"""Start-up cost, each part timed in a fresh Python process: ``import samediff_py``, the JVM start with the
nd4j backend loaded (first Java class + first array), and building and running a first tiny graph.

    python bench/bench_startup.py [--quick]      # prints the median of several fresh processes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from samediff_py import Graph, _jvm
t1 = time.perf_counter()
_jvm.jclass("org.nd4j.linalg.factory.Nd4j").zeros(1)  # JVM + nd4j native backend
t2 = time.perf_counter()
g = Graph()
x = g.placeholder("x", ("batch", 3))
y = (x @ g.variable("w", np.eye(3, dtype=np.float32))).relu()
g.run({"x": np.ones((2, 3), np.float32)}, y)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "jvm_s": t2 - t1, "first_run_s": t3 - t2, "total_s": t3 - t0}))
"""


def main(quick: bool = False) -> dict:
    runs = []
    for _ in range(2 if quick else 5):
        out = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": len(runs)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(main(ap.parse_args().quick), indent=1))
