"""The nd4j native build: which one a CPU gets, which ones it refuses, and the oneDNN helper switch.

build.gradle (which fetches the jars) and samediff_py._jvm (which finds them in the per-user cache) must pick the
same classifier for a CPU, or an installed package would look for a folder `samediff-py fetch` never fills.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samediff_py import Graph, _jvm, arrays, masked, ops
from samediff_py.errors import BackendMissing

ROOT = Path(__file__).resolve().parent.parent
AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
AVX2 = {"avx2", "fma"}


def gradle_choice(flags: set[str]) -> str:
    """build.gradle's rule, read from the file: the first preferred classifier whose flags the CPU has."""
    text = (ROOT / "build.gradle").read_text()
    block = re.search(r"def preferredClassifiers = \[(.*?)\n\]", text, re.S).group(1)
    for name, needs in re.findall(r"'([\w-]+)': \[([^\]]*)\]", block):
        if set(re.findall(r"'(\w+)'", needs)) <= flags:
            return name
    return "linux-x86_64"


@pytest.mark.parametrize(
    "flags",
    [set(), {"sse4_2"}, AVX2, AVX2 | {"avx512f"}, AVX2 | AVX512, AVX512 | {"avx512_vnni"}],
    ids=["none", "sse", "avx2", "avx2+avx512f-only", "avx2+avx512", "avx512-no-fma"],
)
def test_python_and_gradle_pick_the_same_classifier(monkeypatch, flags):
    monkeypatch.setattr(_jvm, "cpu_flags", lambda: set(flags))
    assert _jvm.preferred_classifier() == gradle_choice(flags)


def test_avx512_cpus_get_the_onednn_build(monkeypatch):
    monkeypatch.setattr(_jvm, "cpu_flags", lambda: AVX2 | AVX512)
    assert _jvm.preferred_classifier() == "linux-x86_64-onednn-avx512"


def test_onednn_avx512_jars_are_refused_on_a_cpu_without_avx512(monkeypatch, tmp_path):
    (tmp_path / "CLASSIFIER").write_text("linux-x86_64-onednn-avx512\n")
    monkeypatch.setattr(_jvm, "cpu_flags", lambda: set(AVX2))
    problem = _jvm.classifier_problem(tmp_path)
    assert problem is not None and "avx512f" in problem and "onednn-avx512" in problem
    with pytest.raises(BackendMissing, match="lacks"):
        _jvm._check_cpu(tmp_path)
    monkeypatch.setattr(_jvm, "cpu_flags", lambda: AVX2 | AVX512)
    assert _jvm.classifier_problem(tmp_path) is None


def _helpers_allowed() -> bool:
    return bool(_jvm.jclass("org.nd4j.linalg.factory.Nd4j").getEnvironment().helpersAllowed())


def test_helpers_are_off_exactly_while_a_graph_with_the_fused_attention_op_runs():
    """M2.1's fused attention op is ~3x slower with oneDNN: its graphs run with libnd4j's helpers off."""
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, 5, 8)).astype(np.float32), "mask": np.ones((2, 5), np.float32)}
    runs = {}
    for impl in ("fused", "batched"):
        g = Graph(seed=1)
        x = masked.Masked(g.placeholder("x", ("batch", "time", 8)), masked.mask_placeholder(g, "mask"))
        p = masked.AttentionParams.create(g, "att", 8, 2)
        runs[impl] = (g, masked.multi_head_attention(x, p, impl=impl).value)
    for impl, want in (("fused", False), ("batched", True), ("fused", False), ("batched", True)):
        g, out = runs[impl]
        g.run(feeds, out)
        assert _helpers_allowed() is want, impl
    g, out = runs["fused"]
    g.gradients(feeds, ops.sum(out))
    assert _helpers_allowed() is False


def test_big_outputs_leave_numpys_huge_page_setting_as_it_was():
    """to_numpy allocates outputs of 4 MB and more without numpy's huge-page advice, and restores it."""
    madvise = (getattr(np, "_core", None) or np.core).multiarray._set_madvise_hugepage
    before = madvise(True)
    try:
        a = np.arange(2_000_000, dtype=np.float32).reshape(1000, 2000)  # 8 MB
        out = arrays.to_numpy(arrays.to_indarray(a))
        np.testing.assert_array_equal(out, a)
        assert madvise(True) is True  # still on
        madvise(False)
        arrays.to_numpy(arrays.to_indarray(a))
        assert madvise(False) is False  # still off
    finally:
        madvise(before)


def test_helpers_can_be_switched_off_for_every_graph():
    """SAMEDIFF_PY_HELPERS=0: libnd4j's helpers stay off even for graphs without the fused op (a fresh JVM)."""
    code = (
        "import numpy as np; from samediff_py import Graph, ops, _jvm; g = Graph(); x = g.placeholder('x', (2,)); "
        "g.run({'x': np.ones(2, np.float32)}, ops.add(x, x)); "
        "print(_jvm.jclass('org.nd4j.linalg.factory.Nd4j').getEnvironment().helpersAllowed())"
    )
    for value, want in (("0", "False"), ("1", "True")):
        env = {**os.environ, "SAMEDIFF_PY_HELPERS": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == want
