"""A short run of the benchmark script (`bench/run.py --quick`): it must finish and write every section.

Benchmarks are not tests: no timing is asserted, only that each part ran and reported a number. PyTorch is
compared only where build/bench-venv has it (`./dev bench` installs it); otherwise that row says "not run".
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_quick_writes_every_section(tmp_path):
    if shutil.which("javac") is None:
        pytest.skip("needs a JDK")
    out = tmp_path / "RESULTS.md"
    res = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--out", str(out), "--json", str(tmp_path / "r.json")],
        cwd=ROOT,
        env={**os.environ, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    sections = ("MLM encoder", "Threads", "Backends", "Start-up", "Padding waste", "Scaling", "transfer")
    sections += ("BERT vocabulary", "Cross-entropy formulations", "Vocabulary sweep", "Attention formulations")
    for section in sections:
        assert f"## {section}" in text or section in text, section
    assert "same graph from plain Java" in text
    if importlib.util.find_spec("ray") is not None:
        assert "## Data-parallel training" in text and "Scaling model" in text
    if not (ROOT / "build" / "bench-venv" / "bin" / "python").exists():
        assert "not run" in text  # the torch row degrades, the run does not fail
