"""The ``samediff-py`` command: fetch the JVM backend, and check that everything needed is there.

    samediff-py fetch                      # nd4j for this CPU into ~/.cache/samediff_py/<nd4j>/<classifier>
    samediff-py fetch --classifier linux-x86_64 --dir /opt/nd4j
    samediff-py doctor                     # what was found, what is missing, and the command that fixes it

``fetch`` runs Gradle on the recipe shipped inside the package (``samediff_py/backend/build.gradle``, the
repository's ``build.gradle``): it resolves nd4j from Maven Central (reusing Gradle's own cache) and compiles
the package's small Java bridge with the JDK's ``javac``. Needs a JDK 11+ and Gradle (4.4 or later), e.g.
``apt-get install openjdk-17-jdk-headless gradle``. ``SAMEDIFF_PY_JARS`` still wins over the cache.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import __version__, _jvm

PACKAGE = Path(__file__).resolve().parent
RECIPE = PACKAGE / "backend" / "build.gradle"
JAVA_SOURCES = PACKAGE / "java"


def _java_major(tool: str) -> int:
    """Major version of ``java`` / ``javac`` on PATH (or JAVA_HOME), 0 if absent."""
    exe = shutil.which(tool)
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / tool).exists():
        exe = str(Path(home) / "bin" / tool)
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r'(?:version "|javac )(\d+)(?:\.(\d+))?', out.stdout + out.stderr)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def fetch(classifier: str | None = None, folder: Path | None = None, gradle: str | None = None) -> Path:
    """Fetch nd4j (and compile the bridge) into ``folder``.

    ``folder`` defaults to the per-user cache for ``classifier``, which defaults to this CPU's best build. Returns the
    folder. Raises ``SystemExit`` with the fix if a tool is missing.
    """
    classifier = classifier or _jvm.preferred_classifier()
    folder = folder or _jvm.cache_root() / _jvm.ND4J_VERSION / classifier
    gradle = gradle or shutil.which("gradle")
    if not gradle:
        raise SystemExit("samediff-py fetch needs Gradle: apt-get install gradle (or any Gradle >= 4.4 on PATH)")
    if _java_major("javac") < 11:
        raise SystemExit("samediff-py fetch needs a JDK 11+ (javac): apt-get install openjdk-17-jdk-headless")
    if not RECIPE.exists():
        raise SystemExit(f"the fetch recipe is missing from the package: {RECIPE} (reinstall samediff_py)")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="samediff-py-fetch-") as tmp:
        shutil.copy(RECIPE, Path(tmp) / "build.gradle")
        cmd = [
            gradle, "-q", "--no-daemon", "-p", tmp, "fetchJars",
            f"-PjarsDir={folder}", f"-PjavaSrc={JAVA_SOURCES}", f"-Pnd4jClassifier={classifier}",
        ]  # fmt: skip
        print(f"fetching nd4j {_jvm.ND4J_VERSION} ({classifier}) into {folder} ...", file=sys.stderr, flush=True)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            raise SystemExit(f"gradle failed (exit {r.returncode}): {' '.join(cmd)}")
    print(folder)
    return folder


def doctor() -> int:
    """Print what samediff_py finds and what is missing, with the command that fixes each; 0 if all is well."""
    problems = 0

    def line(ok: bool | None, what: str, detail: str, fix: str = "") -> None:
        nonlocal problems
        mark = {True: "ok  ", False: "FAIL", None: "info"}[ok]
        print(f"[{mark}] {what:<14} {detail}")
        if ok is False:
            problems += 1
            if fix:
                print(f"       fix: {fix}")

    line(None, "samediff_py", f"{__version__} at {PACKAGE}")
    line(None, "python", f"{sys.version.split()[0]} ({sys.executable})")
    java, javac = _java_major("java"), _java_major("javac")
    line(java >= 11, "java", f"{java or 'not found'}", "apt-get install openjdk-17-jdk-headless")
    line(javac >= 11 or None, "javac", f"{javac or 'not found'} (needed only by `samediff-py fetch`)")
    gradle = shutil.which("gradle")
    line(bool(gradle) or None, "gradle", f"{gradle or 'not found'} (needed only by `samediff-py fetch`)")
    for why, folder in _jvm.jar_candidates():
        has = _jvm._has_backend(folder)
        line(None, "looked in", f"{folder} ({why}): {'nd4j found' if has else 'nothing'}")
    jars = _jvm.jar_dir()
    found = _jvm._has_backend(jars)
    line(found, "backend", str(jars) if found else "no nd4j jars anywhere", "samediff-py fetch")
    if found:
        tag = jars / "CLASSIFIER"
        classifier = tag.read_text().strip() if tag.exists() else "unknown"
        problem = _jvm.classifier_problem(jars)
        line(problem is None, "classifier", f"{classifier} (this CPU prefers {_jvm.preferred_classifier()})",
             "samediff-py fetch --classifier linux-x86_64")  # fmt: skip
        bridge = (jars / "classes" / "samediffpy" / "Bridge.class").exists()
        line(bridge, "bridge", "compiled" if bridge else "not compiled", "samediff-py fetch")
    heap = os.environ.get("SAMEDIFF_PY_HEAP", "4g")
    offheap = os.environ.get("SAMEDIFF_PY_OFFHEAP") or _jvm.default_offheap()
    threads = os.environ.get("SAMEDIFF_PY_THREADS") or os.environ.get("OMP_NUM_THREADS") or "1"
    line(None, "memory", f"heap {heap} (SAMEDIFF_PY_HEAP), off-heap {offheap} (SAMEDIFF_PY_OFFHEAP)")
    line(None, "threads", f"{threads} nd4j thread(s) (SAMEDIFF_PY_THREADS) on {os.cpu_count()} CPUs")
    helpers = "off" if os.environ.get("SAMEDIFF_PY_HELPERS", "1") == "0" else "on, except for M2.1's fused attention op"
    line(None, "helpers", f"libnd4j platform helpers (oneDNN in -onednn builds) {helpers} (SAMEDIFF_PY_HELPERS)")
    line(None, "machine", f"{platform.machine()} {platform.system()}")
    if problems == 0:
        try:
            from .graph import Graph

            g = Graph()
            x = g.placeholder("x", (2,))
            value = g.run({"x": [1.0, 2.0]}, x * 2.0)
            line(value.tolist() == [2.0, 4.0], "first graph", f"ran on the JVM: {value.tolist()}")
        except Exception as e:  # the point of doctor is to report, not to crash
            line(False, "first graph", f"{type(e).__name__}: {e}", "see the message above")
    print("all good" if problems == 0 else f"{problems} problem(s)")
    return 0 if problems == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samediff-py`` console script."""
    ap = argparse.ArgumentParser(prog="samediff-py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch the nd4j backend with Gradle (per-user cache by default)")
    f.add_argument("--classifier", help="nd4j native build, e.g. linux-x86_64, linux-x86_64-avx2 (default: auto)")
    f.add_argument("--dir", type=Path, help="fetch into this folder instead of the per-user cache")
    f.add_argument("--gradle", help="the gradle executable (default: gradle on PATH)")
    sub.add_parser("doctor", help="check Java, Gradle, the backend, CPU flags, memory and threads")
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        fetch(args.classifier, args.dir, args.gradle)
        return 0
    return doctor()


if __name__ == "__main__":
    sys.exit(main())
