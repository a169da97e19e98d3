"""The README's first example must keep running (docs that rot are worse than none)."""

import re
from pathlib import Path

import numpy as np


def test_readme_quick_start_runs():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    rng = np.random.default_rng(0)
    batches = [
        {
            "tokens": rng.integers(1, 100, (4, 6)).astype(np.int32),
            "labels": rng.integers(0, 100, (4, 6)).astype(np.int32),
            "mask": np.ones((4, 6), np.float32),
        }
    ]
    namespace = {"batches": batches}
    exec(compile(code, "README.md", "exec"), namespace)
    assert np.isfinite(namespace["g"].run(batches[0], namespace["loss"]))
    # the summary the README shows is the one this graph prints
    shown = re.search(r"```text\n(Graph: .*?)```", text, re.S).group(1)
    assert namespace["g"].summary().strip() == shown.strip()


def test_every_readme_python_block_parses():
    """The other examples need user data to run, but they must at least be valid Python."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    for i, code in enumerate(blocks):
        compile(code, f"README.md python block {i}", "exec")
