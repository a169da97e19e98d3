"""The array room: numpy <-> nd4j ``INDArray``.

Bulk data crosses as one native memory copy: nd4j allocates (detached, C order), Python takes the buffer's
address and ``np.copyto``'s into a numpy view of it; on the way out, a numpy view with nd4j's shape, strides
and offset is copied. Nothing moves element by element through pyjnius.

Supported dtypes: float32, float64, int32, int64, bool (any shape, including 0-d and empty).

>>> import numpy as np
>>> a = np.arange(6, dtype=np.float32).reshape(2, 3).T      # non-contiguous input is fine
>>> np.array_equal(to_numpy(to_indarray(a)), a)
True
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np

from . import _jvm

# numpy dtype -> nd4j DataType name
ND4J_DTYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "FLOAT",
    np.dtype(np.float64): "DOUBLE",
    np.dtype(np.int32): "INT",
    np.dtype(np.int64): "LONG",
    np.dtype(np.bool_): "BOOL",
}
NUMPY_DTYPES: dict[str, np.dtype] = {v: k for k, v in ND4J_DTYPES.items()}


def check_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype for ``dtype`` if samediff_py supports it, else a ``TypeError`` naming the choices."""
    dt = np.dtype(dtype)
    if dt not in ND4J_DTYPES:
        names = ", ".join(str(d) for d in ND4J_DTYPES)
        raise TypeError(f"dtype {dt} is not supported; use one of: {names}")
    return dt


def _native(a: np.ndarray) -> np.ndarray:
    """``a`` in native byte order.

    A big-endian ``>f4`` array (e.g. read from a file) is float32 data, but its dtype compares unequal to float32, so
    without this it was refused as "dtype >f4 is not supported".
    """
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _view(address: int, dtype: np.dtype, shape: tuple[int, ...], strides_elems: tuple[int, ...]) -> np.ndarray:
    """A numpy array over native memory at ``address`` (no copy; valid while the owner lives)."""
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides_elems, strict=True))
    buf = (ctypes.c_byte * (span * dtype.itemsize)).from_address(address)
    flat = np.frombuffer(buf, dtype=dtype)
    return np.lib.stride_tricks.as_strided(flat, shape, tuple(s * dtype.itemsize for s in strides_elems))


def to_indarray(value: Any, dtype: Any = None) -> Any:
    """Copy a numpy array (or anything ``np.asarray`` takes) into a new detached nd4j ``INDArray``."""
    a = _native(np.asarray(value, dtype=dtype))
    dt = check_dtype(a.dtype)
    with _jvm.java_errors():
        j = _jvm.bridge().alloc(_jvm.dtype_enum(ND4J_DTYPES[dt]), list(a.shape))
        if a.size:
            info = _jvm.bridge().describe(j)
            c_strides = tuple(int(s) // dt.itemsize for s in np.empty(a.shape, dt).strides)
            np.copyto(_view(int(info[0]), dt, a.shape, c_strides), a, casting="no")
    return j


def wrap(value: Any) -> tuple[Any, np.ndarray]:
    """A zero-copy ``INDArray`` over a numpy array's memory, and the (C-contiguous) array it reads.

    Constant time. The caller must keep the returned numpy array alive while the ``INDArray`` is used, and
    must not store the ``INDArray`` in the graph (use :func:`to_indarray` for values that outlive a call).
    """
    a = _native(np.asarray(value))
    if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
        a = a.copy(order="C")
    dt = check_dtype(a.dtype)
    with _jvm.java_errors():
        j = _jvm.bridge().wrap(a.ctypes.data, _jvm.dtype_enum(ND4J_DTYPES[dt]), list(a.shape))
    return j, a


def to_numpy(j: Any) -> np.ndarray:
    """Copy an nd4j ``INDArray`` (any offset/strides, in a workspace or not) into a new numpy array."""
    with _jvm.java_errors():
        info = _jvm.bridge().describe(j)
        if info[2]:  # in a workspace: its memory may be reused after this call, so detach (copies) first
            j = _jvm.bridge().detached(j)
            info = _jvm.bridge().describe(j)
    name = _dtype_names()[int(info[1])]
    dt = NUMPY_DTYPES.get(name)
    if dt is None:
        raise TypeError(f"nd4j dtype {name} has no samediff_py numpy equivalent")
    rank = int(info[3])
    shape = tuple(int(n) for n in info[4 : 4 + rank])
    strides = tuple(int(s) for s in info[4 + rank : 4 + 2 * rank])
    if 0 in shape:
        return np.zeros(shape, dt)
    out = _fresh(shape, dt)
    np.copyto(out, _view(int(info[0]), dt, shape, strides))  # j is alive until we return
    return out


def _fresh(shape: tuple[int, ...], dt: np.dtype) -> np.ndarray:
    """``np.empty`` without numpy's transparent-huge-page advice for this one allocation.

    numpy advises huge pages for every allocation of 4 MB or more; where the kernel's THP defrag setting is
    ``madvise`` (the usual default), the first touch of such memory can stall in page compaction: copying a
    model's ``[32, 128, 1000]`` float32 logits out took 34 ms instead of 1-6 ms here, in runs of many steps,
    whenever fresh memory was needed (bench/FINDINGS.md). numpy's switch is process-wide: it is flipped and
    restored under a lock, and only for allocations numpy would advise.
    """
    if int(np.prod(shape, dtype=np.int64)) * dt.itemsize < _HUGE_ADVICE_BYTES:
        return np.empty(shape, dt)
    madvise = (getattr(np, "_core", None) or np.core).multiarray._set_madvise_hugepage
    with _MADVISE_LOCK:
        before = madvise(False)
        try:
            return np.empty(shape, dt)
        finally:
            madvise(before)


_HUGE_ADVICE_BYTES = 1 << 22  # numpy's threshold for the advice
_MADVISE_LOCK = threading.Lock()


@functools.cache
def _dtype_names() -> list[str]:
    """nd4j DataType names by ordinal."""
    with _jvm.java_errors():
        return [d.name() for d in _jvm.jclass("org.nd4j.linalg.api.buffer.DataType").values()]
