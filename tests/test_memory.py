"""Where a pass's arrays go: the paced Java collections that free what SameDiff leaves unclosed.

nd4j frees an array's native memory when it is closed or when the collector finds its Java object unreachable.
SameDiff's sessions close what they release, but not views (reshape, transpose) nor the buffers views share, and
an INDArray's Java object is tiny, so without samediff_py's paced collections the Java heap hardly ever fills
and that memory piles up (at the base model's batch 128 x time 256: ~0.4 GB per training step).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# 40 passes over a 16 MB feed whose graph reshapes and transposes (views) between ops
LEAKY_LOOP = """
import numpy as np
from samediff_py import Graph, ops, _jvm
g = Graph()
x = g.placeholder("x", (None, 1024))
y = ops.add(ops.reshape(ops.multiply(x, 2.0), (-1,)), 1.0)
out = ops.max(ops.transpose(ops.reshape(ops.multiply(y, 3.0), (1024, -1))))
feed = {"x": np.ones((4096, 1024), np.float32)}
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
want = 9.0  # ((1 * 2) + 1) * 3 everywhere
assert abs(float(g.run(feed, out)) - want) <= 1e-4 * want
r0 = rss()
for _ in range(40):
    g.run(feed, out)
print(rss() - r0, _jvm.jclass("samediffpy.SessionMemory").pacedCollections())
"""


def _grow(share: str) -> tuple[float, int]:
    env = {**os.environ, "SAMEDIFF_PY_GC_SHARE": share}
    out = subprocess.run([sys.executable, "-c", LEAKY_LOOP], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    grown, collections = out.stdout.split()[-2:]
    return float(grown), int(collections)


def test_paced_collections_keep_resident_memory_flat():
    """Without collections the loop's memory grows by hundreds of MB; collected often, it stays flat."""
    grown_off, collections_off = _grow("0")
    grown_on, collections_on = _grow("1")  # a collection whenever the last one's duration has passed again
    assert collections_off == 0 and collections_on > 0
    assert grown_off > 200, f"the loop no longer leaves arrays to the collector ({grown_off:.0f} MB): test is moot"
    assert grown_on < grown_off / 3, (grown_on, grown_off)


IDLE_THEN_BUSY = """
import time
import numpy as np
from samediff_py import Graph, ops, _jvm
g = Graph()
x = g.placeholder("x", (None, 8))
y = ops.sum(ops.transpose(ops.reshape(x, (8, -1))))
feed = {"x": np.ones((64, 8), np.float32)}
count = _jvm.jclass("samediffpy.SessionMemory").pacedCollections
g.run(feed, y)
for _ in range(3):  # 3.6 s of idling between tiny calls: not work
    time.sleep(1.2)
    g.run(feed, y)
idle = count()
t0 = time.perf_counter()
while time.perf_counter() - t0 < 3.0:  # 3 s of work
    g.run(feed, y)
print(idle, count())
"""


def test_idle_time_does_not_pace_collections():
    """Collections are paced by working time: a process that idles between requests (a server) does not pay
    a collection on the first call after each pause, and one that works does get them."""
    env = {**os.environ, "SAMEDIFF_PY_GC_SHARE": "0.01"}  # one per ~100x the last collection's time of work
    out = subprocess.run([sys.executable, "-c", IDLE_THEN_BUSY], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    after_idle, after_work = (int(v) for v in out.stdout.split()[-2:])
    assert after_idle == 0, "collections were paced by idle time"
    assert after_work >= 1, "3 s of work paced no collection"


@pytest.mark.parametrize("value", ["often", "nan", "inf", "5", "-0.1"])
def test_gc_share_must_be_a_share(value):
    """A malformed SAMEDIFF_PY_GC_SHARE fails before the JVM starts, naming the variable."""
    env = {**os.environ, "SAMEDIFF_PY_GC_SHARE": value}
    code = "from samediff_py import Graph; Graph()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert f"SAMEDIFF_PY_GC_SHARE={value!r}" in out.stderr
