"""Install anywhere: the wheel, in a fresh virtualenv outside the checkout, fetches its backend with the
``samediff-py`` command and runs the README's first graph. Slow (a venv, pip, Gradle): ~1-2 minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_fetches_and_runs_the_readme(tmp_path):
    dist = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning" not in (r.stdout + r.stderr).lower(), (r.stdout + r.stderr)[-2000:]  # no warnings on build
    (wheel,) = dist.glob("samediff_py-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    home = tmp_path / "home"  # a user with an empty cache; Gradle's own cache is shared (no downloads needed)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SAMEDIFF_PY_", "PYTHON", "VIRTUAL_ENV"))
    } | {"XDG_CACHE_HOME": str(home / ".cache"), "GRADLE_USER_HOME": os.environ.get(
        "GRADLE_USER_HOME", str(Path.home() / ".gradle"))}  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    cli = env_dir / "bin" / "samediff-py"
    r = subprocess.run([str(cli), "doctor"], capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert r.returncode == 1 and "samediff-py fetch" in r.stdout, r.stdout  # nothing fetched yet: says what to do
    r = subprocess.run([str(cli), "fetch"], capture_output=True, text=True, cwd=work, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    fetched = Path(r.stdout.strip().splitlines()[-1])
    assert fetched.is_relative_to(home / ".cache" / "samediff_py") and (fetched / "classes").is_dir()
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    script = work / "first_graph.py"
    script.write_text(
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "batches = [{'tokens': rng.integers(1, 100, (4, 6)).astype(np.int32),\n"
        "            'labels': rng.integers(0, 100, (4, 6)).astype(np.int32),\n"
        "            'mask': np.ones((4, 6), np.float32)}]\n" + code + "\nimport samediff_py, samediff_py._jvm as j\n"
        "print('RAN', samediff_py.__file__, j.jar_dir(), float(g.run(batches[0], loss)))\n"
    )
    r = subprocess.run([str(py), str(script)], capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = r.stdout.strip().splitlines()[-1].split()
    assert ran[0] == "RAN" and str(env_dir) in ran[1] and ran[2] == str(fetched)  # the installed copy, the cache
    r = subprocess.run([str(cli), "doctor"], capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert r.returncode == 0 and "all good" in r.stdout, r.stdout
