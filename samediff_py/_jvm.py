"""The JVM room: the only module that imports ``jnius``.

The JVM starts lazily, once per process, the first time something asks for a Java class. Its classpath is
every jar of the backend folder plus the compiled bridge (``<folder>/classes``). The backend folder is the
first of: ``SAMEDIFF_PY_JARS``; ``jars/`` beside the package (a source checkout, filled by ``./dev setup``);
the per-user cache ``~/.cache/samediff_py/<nd4j version>/<classifier>`` (filled by ``samediff-py fetch``).
Options come from the environment:

- ``SAMEDIFF_PY_JARS``: the backend folder (see above).
- ``SAMEDIFF_PY_HEAP``: maximum heap, e.g. ``4g`` (default ``4g``); nd4j keeps arrays off-heap, so
  ``SAMEDIFF_PY_OFFHEAP`` (default: half the RAM, at most ``16g``) bounds that (javacpp's ``maxbytes``).
- ``SAMEDIFF_PY_JVM_OPTS``: further options, split on whitespace.
- ``SAMEDIFF_PY_ARRAY_CACHE``: megabytes of released intermediate arrays each SameDiff session keeps for
  reuse by shape (default ``256``; ``0``: none; ``-1``: M2.1's own cache, up to a quarter of the off-heap
  limit PER SESSION: a few graphs' caches filled the machine and ended in OutOfMemoryError).
- ``SAMEDIFF_PY_BIG_ARRAY``: a low-memory mode (default ``0``, off). With ``N`` bytes, arrays of at least ``N``
  are freed as soon as their last consumer ran (never cached), and the C allocator (glibc) maps each such
  allocation separately and unmaps it when freed (``mallopt(M_MMAP_THRESHOLD)``, set once before the JVM
  starts, for the whole process; with glibc's own growing threshold freed nd4j arrays stay in its heap).
  Measured at a BERT vocabulary with ``N = 1048576`` and a 32 MB cache: ~0.6x the resident memory at ~1.5x
  the step time (fresh pages for every big array; bench/FINDINGS.md).
- ``SAMEDIFF_PY_HELPERS``: ``0`` switches libnd4j's platform helpers (oneDNN, in the ``-onednn`` builds) off for
  every graph (default ``1``: on, except while a graph holding M2.1's fused attention op runs, whose backward
  is ~3x slower with them).
- ``SAMEDIFF_PY_GC_SHARE``: the share of working time spent in paced Java collections (between 0 and 1, default
  ``0.02``; ``0``: none). nd4j frees an unclosed array (views, outputs) only when the collector finds it, and
  the Java heap barely grows, so without them resident memory grew by ~0.4 GB per step at batch 128 x time 256
  until the off-heap limit forced a collection. After each pass and before each session allocation, a
  collection runs once the work since the last one (idle gaps of 1 s or more excluded) is at least
  ``1 / share`` times what that one took (``SessionMemory.paceCollections``).
- ``SAMEDIFF_PY_THREADS``: OpenMP threads for nd4j's native ops (default: ``OMP_NUM_THREADS`` if set, else 1).
  One thread is the default because the graphs this library targets are many small ops: with 2 threads,
  libnd4j's OpenMP barriers made an MLM training step 3-10x slower whenever the other core was busy
  (measured; see bench/RESULTS.md).

Java exceptions become :class:`JavaError` carrying the Java class and message. The JVM runs with ``-Xrs``:
signals stay Python's (Ctrl-C is a ``KeyboardInterrupt`` between JVM calls; SIGTERM handlers are kept).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BackendMissing, JavaError

__all__ = ["BackendMissing", "JavaError", "bridge", "dtype_enum", "java_errors", "jclass", "started"]

ND4J_VERSION = "1.0.0-M2.1"  # pinned: the attention mask formula changed upstream after M2.1
FETCH_COMMAND = "samediff-py fetch   (in a source checkout: ./dev setup)"


def cache_root() -> Path:
    """Where ``samediff-py fetch`` puts backends: ``$XDG_CACHE_HOME/samediff_py`` (``~/.cache/samediff_py``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "samediff_py"


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def preferred_classifier() -> str:
    """nd4j's native build for this CPU, as build.gradle picks it.

    ``-onednn-avx512`` with AVX-512 (F, BW, DQ, VL), else ``-avx2`` with AVX2 + FMA, else generic.
    """
    flags = cpu_flags()
    if _CLASSIFIER_NEEDS["avx512"] <= flags:
        return "linux-x86_64-onednn-avx512"
    return "linux-x86_64-avx2" if _CLASSIFIER_NEEDS["avx2"] <= flags else "linux-x86_64"


def _has_backend(folder: Path) -> bool:
    return any("nd4j-native" in p.name for p in folder.glob("*.jar"))


def jar_candidates() -> list[tuple[str, Path]]:
    """Every place the backend is looked for, in order, with why it is a candidate."""
    out: list[tuple[str, Path]] = []
    env = os.environ.get("SAMEDIFF_PY_JARS")
    if env:
        out.append(("SAMEDIFF_PY_JARS", Path(env)))
    out.append(("source checkout", Path(__file__).resolve().parent.parent / "jars"))
    versions = cache_root() / ND4J_VERSION
    out.append(("user cache", versions / preferred_classifier()))
    if versions.is_dir():
        out += [("user cache", d) for d in sorted(versions.iterdir()) if d.name != preferred_classifier()]
    return out


def jar_dir() -> Path:
    """The backend folder in use.

    ``SAMEDIFF_PY_JARS`` if set (even if empty: an explicit choice), else the first candidate that holds the nd4j jars,
    else the per-user cache folder ``samediff-py fetch`` fills.
    """
    candidates = jar_candidates()
    if os.environ.get("SAMEDIFF_PY_JARS"):
        return candidates[0][1]
    for _why, folder in candidates:
        if _has_backend(folder):
            return folder
    return cache_root() / ND4J_VERSION / preferred_classifier()


def _classpath() -> list[str]:
    jars = jar_dir()
    found = sorted(str(p) for p in jars.glob("*.jar"))
    if not any("nd4j-native" in Path(p).name for p in found):
        looked = "\n".join(f"    {why}: {folder}" for why, folder in jar_candidates())
        raise BackendMissing(
            f"no nd4j backend found; looked in:\n{looked}\nFetch it (needs a JDK 11+ and Gradle) with:\n"
            f"    {FETCH_COMMAND}\nor point SAMEDIFF_PY_JARS at a folder that holds it. `samediff-py doctor` "
            "checks everything."
        )
    classes = jars / "classes"
    if not (classes / "samediffpy" / "Bridge.class").exists():
        raise BackendMissing(f"the samediff_py Java bridge is not compiled in {classes}. Run:\n    {FETCH_COMMAND}")
    _check_cpu(jars)
    return [str(classes), *found]


# instructions each nd4j native build needs (a build this CPU lacks dies with SIGILL: check first)
_CLASSIFIER_NEEDS = {"avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw", "avx512dq", "avx512vl"}}


def _check_cpu(jars: Path) -> None:
    """Refuse jars fetched for a CPU with instructions this one lacks (e.g. a jars/ copied between machines)."""
    problem = classifier_problem(jars)
    if problem:
        raise BackendMissing(problem)


def classifier_problem(jars: Path) -> str | None:
    """Why the jars in ``jars`` cannot run on this CPU (instructions it lacks), or None."""
    tag = jars / "CLASSIFIER"
    flags = cpu_flags()
    if not tag.exists() or not flags:
        return None
    classifier = tag.read_text().strip()
    for key, needs in _CLASSIFIER_NEEDS.items():
        if key in classifier and not needs <= flags:
            return (
                f"{jars} holds nd4j's {classifier} build, but this CPU lacks {sorted(needs - flags)}: it would "
                "crash. Fetch the generic build:\n    samediff-py fetch --classifier linux-x86_64"
            )
    return None


def default_offheap() -> str:
    """Half the physical memory, at most 16 GiB.

    javacpp only forces a GC to free native arrays near this limit, so it must sit below what the machine has.
    """
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return f"{max(1, min(16, pages * size // 2 // 2**30))}g"
    except (ValueError, OSError, AttributeError):
        return "4g"


def _set_mmap_threshold(n: int) -> None:
    """Set glibc's M_MMAP_THRESHOLD (a fixed value also turns off its dynamic growth); no-op elsewhere or at 0."""
    if n <= 0 or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, n)


def _check_java() -> None:
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    raise BackendMissing(
        "no Java found (neither JAVA_HOME nor `java` on PATH). Install a JDK 11+, e.g.\n"
        "    apt-get install openjdk-17-jdk-headless"
    )


def _env_number(name: str, default: float, kind: type, low: float = 0, high: float = math.inf) -> Any:
    """``kind(os.environ[name])`` in ``[low, high]`` (finite), ``default`` if unset; else an error naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return kind(default)
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a {kind.__name__}") from None
    if not (low <= value <= high and math.isfinite(value)):
        raise ValueError(f"environment variable {name}={text!r} must lie between {low} and {high}")
    return value


@functools.cache
def _jnius() -> Any:
    """Start the JVM (once) and return the ``jnius`` module."""
    _check_java()
    classpath = _classpath()
    import jnius_config

    if "jnius" in sys.modules or jnius_config.vm_running:
        if not any("samediffpy" in p or p.endswith("classes") for p in jnius_config.get_classpath()):
            raise BackendMissing(
                "a JVM was already started in this process (pyjnius allows one) without samediff_py's "
                "classpath: use samediff_py before anything else that starts pyjnius's JVM"
            )
    else:
        # read by libnd4j's OpenMP runtime when the native library loads, i.e. after this point
        threads = os.environ.get("SAMEDIFF_PY_THREADS") or os.environ.get("OMP_NUM_THREADS") or "1"
        os.environ["OMP_NUM_THREADS"] = threads
        heap = os.environ.get("SAMEDIFF_PY_HEAP", "4g")
        offheap = os.environ.get("SAMEDIFF_PY_OFFHEAP") or default_offheap()
        cache_mb = _env_number("SAMEDIFF_PY_ARRAY_CACHE", 256, int, low=-1)  # -1: M2.1's own cache
        big = _env_number("SAMEDIFF_PY_BIG_ARRAY", 0, int) if cache_mb >= 0 else 0
        gc_share = _env_number("SAMEDIFF_PY_GC_SHARE", 0.02, float, high=1)
        _set_mmap_threshold(big)
        jnius_config.add_options(
            # -Xrs: the JVM installs no SIGINT/SIGTERM/SIGHUP handlers, so Python's stay in charge: Ctrl-C
            # raises KeyboardInterrupt between JVM calls (instead of the JVM exiting the process with 130,
            # skipping finally/atexit), and a SIGTERM handler set before the first graph is kept
            "-Xrs",
            f"-Xmx{heap}",
            f"-Dorg.bytedeco.javacpp.maxbytes={offheap}",
            f"-Dorg.bytedeco.javacpp.maxphysicalbytes={offheap}",
            f"-Dsamediffpy.arrayCacheMB={cache_mb}",
            f"-Dsamediffpy.bigArrayBytes={big}",
            f"-Dsamediffpy.gcShare={gc_share}",
            f"-Dsamediffpy.helpers={'false' if os.environ.get('SAMEDIFF_PY_HELPERS', '1') == '0' else 'true'}",
            *os.environ.get("SAMEDIFF_PY_JVM_OPTS", "").split(),
        )
        jnius_config.set_classpath(*classpath)
    import jnius

    return jnius


def started() -> bool:
    """Whether the JVM has been started by this process."""
    return _jnius.cache_info().currsize > 0


@functools.cache
def jclass(name: str) -> Any:
    """The Java class ``name`` (dotted), starting the JVM if needed."""
    return _jnius().autoclass(name)


def bridge() -> Any:
    """The pinned-signature helper class ``samediffpy.Bridge``."""
    return jclass("samediffpy.Bridge")


@functools.cache
def dtype_enum(name: str) -> Any:
    """``org.nd4j.linalg.api.buffer.DataType.<name>``."""
    return getattr(jclass("org.nd4j.linalg.api.buffer.DataType"), name)


@contextlib.contextmanager
def java_errors() -> Iterator[None]:
    """Re-raise Java exceptions thrown inside the block as :class:`JavaError`."""
    try:
        yield
    except Exception as e:  # jnius.JavaException, without importing jnius before the JVM is wanted
        if type(e).__name__ != "JavaException" or not hasattr(e, "classname"):
            raise
        if e.classname is None:  # raised by pyjnius itself (e.g. no overload matched): its text says why
            raise JavaError("pyjnius", str(e)) from None
        raise JavaError(e.classname, getattr(e, "innermessage", None), getattr(e, "stacktrace", None)) from None
