"""The JVM room: the only module that imports ``jnius``.

The JVM starts lazily, once per process, the first time something asks for a Java class. Its classpath is
every jar in ``jars/`` plus the compiled bridge (``jars/classes``); options come from the environment:

- ``SAMEDIFF_PY_JARS``: the jar folder (default: ``jars/`` beside the package, i.e. the repository's).
- ``SAMEDIFF_PY_HEAP``: maximum heap, e.g. ``4g`` (default ``4g``); nd4j keeps arrays off-heap, so
  ``SAMEDIFF_PY_OFFHEAP`` (default: half the RAM, at most ``16g``) bounds that (javacpp's ``maxbytes``).
- ``SAMEDIFF_PY_JVM_OPTS``: further options, split on whitespace.
- ``SAMEDIFF_PY_ARRAY_CACHE``: megabytes of released intermediate arrays a SameDiff session keeps for reuse
  (default ``0``: each array is freed as soon as its last consumer ran; ``-1``: M2.1's own cache, up to a
  quarter of the off-heap limit). Shapes that change per batch rarely reuse anything, and the cache made
  resident memory grow.
- ``SAMEDIFF_PY_MMAP_THRESHOLD``: bytes from which the C allocator (glibc) maps each allocation separately
  and unmaps it when freed (default ``1048576``; ``0`` leaves glibc's own policy). glibc's default threshold
  grows with the arrays freed, after which big nd4j arrays are carved from its heap and their memory is
  never returned: the BERT-vocabulary training step kept ~2 GB resident instead of ~1 GB
  (bench/FINDINGS.md). Set once, before the JVM starts; it applies to the whole process.
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
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BackendMissing, JavaError

__all__ = ["BackendMissing", "JavaError", "bridge", "dtype_enum", "java_errors", "jclass", "started"]

FETCH_COMMAND = "gradle -q fetchJars   (run in the samediff_py repository; or: ./dev setup)"


def jar_dir() -> Path:
    env = os.environ.get("SAMEDIFF_PY_JARS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "jars"


def _classpath() -> list[str]:
    jars = jar_dir()
    found = sorted(str(p) for p in jars.glob("*.jar"))
    if not any("nd4j-native" in Path(p).name for p in found):
        raise BackendMissing(
            f"no nd4j jars in {jars}. Fetch them with:\n    {FETCH_COMMAND}\n"
            "or point SAMEDIFF_PY_JARS at a folder that holds them."
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
    tag = jars / "CLASSIFIER"
    cpuinfo = Path("/proc/cpuinfo")
    if not tag.exists() or not cpuinfo.exists():
        return
    classifier = tag.read_text().strip()
    flags: set[str] = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    for key, needs in _CLASSIFIER_NEEDS.items():
        if key in classifier and flags and not needs <= flags:
            raise BackendMissing(
                f"{jars} holds nd4j's {classifier} build, but this CPU lacks {sorted(needs - flags)}: it would "
                f"crash. Fetch the generic build:\n    gradle -q fetchJars -Pnd4jClassifier=linux-x86_64"
            )


def _default_offheap() -> str:
    """Half the physical memory, at most 16 GiB: javacpp only forces a GC to free native arrays near this
    limit, so it must sit below what the machine has."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return f"{max(1, min(16, pages * size // 2 // 2**30))}g"
    except (ValueError, OSError, AttributeError):
        return "4g"


def _set_mmap_threshold(value: str) -> None:
    """glibc's M_MMAP_THRESHOLD (a fixed value also turns off its dynamic growth); no-op elsewhere or at 0."""
    n = int(value)
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
        offheap = os.environ.get("SAMEDIFF_PY_OFFHEAP") or _default_offheap()
        _set_mmap_threshold(os.environ.get("SAMEDIFF_PY_MMAP_THRESHOLD", str(1 << 20)))
        cache_mb = int(os.environ.get("SAMEDIFF_PY_ARRAY_CACHE", "0"))
        jnius_config.add_options(
            # -Xrs: the JVM installs no SIGINT/SIGTERM/SIGHUP handlers, so Python's stay in charge: Ctrl-C
            # raises KeyboardInterrupt between JVM calls (instead of the JVM exiting the process with 130,
            # skipping finally/atexit), and a SIGTERM handler set before the first graph is kept
            "-Xrs",
            f"-Xmx{heap}",
            f"-Dorg.bytedeco.javacpp.maxbytes={offheap}",
            f"-Dorg.bytedeco.javacpp.maxphysicalbytes={offheap}",
            f"-Dsamediffpy.arrayCacheMB={cache_mb}",
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
