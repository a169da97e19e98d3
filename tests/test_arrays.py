"""numpy <-> INDArray transfer (samediff_py.arrays): exact round trips, layouts, views, dtype errors.

A transfer is a memory copy, so every round trip is checked bit for bit (NaN payloads, -0.0 and all), not
with a tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from samediff_py import _jvm, arrays

DTYPES = [np.float32, np.float64, np.int32, np.int64, np.bool_]
SETTINGS = settings(max_examples=50, deadline=None)


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    """``b`` is ``a`` exactly: dtype, shape and every byte of every element."""
    assert b.dtype == a.dtype, (a.dtype, b.dtype)
    assert b.shape == a.shape, (a.shape, b.shape)
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _nd4j(name: str):
    return _jvm.jclass(name)


def arrays_any(max_dims: int = 4):
    """Arrays of every supported dtype, rank 0..4, sides 0..5 (so zero-size dims appear), any values."""
    return st.sampled_from(DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=5))
    )


@st.composite
def strided_arrays(draw):
    """Non-contiguous layouts: a random axis permutation, reversed axes and steps over a bigger array."""
    base = draw(arrays_any())
    view = base
    if view.ndim:
        view = view.transpose(draw(st.permutations(range(view.ndim))))
        index = tuple(
            slice(None, None, draw(st.sampled_from([1, 2, -1, -2]))) if n else slice(None) for n in view.shape
        )
        view = view[index]
    return view


# ---------------------------------------------------------------------------- round trips
@SETTINGS
@given(arrays_any())
def test_to_indarray_round_trip(a):
    j = arrays.to_indarray(a)
    assert list(j.shape()) == list(a.shape)
    assert j.dataType().name() == arrays.ND4J_DTYPES[a.dtype]
    _same_bits(a, arrays.to_numpy(j))


@SETTINGS
@given(arrays_any())
def test_wrap_round_trip(a):
    j, held = arrays.wrap(a)
    assert list(j.shape()) == list(a.shape)
    _same_bits(a, arrays.to_numpy(j))
    if a.size:  # C-contiguous input is used in place: no copy
        assert np.shares_memory(held, a)


@SETTINGS
@given(strided_arrays())
def test_non_contiguous_inputs(a):
    _same_bits(a, arrays.to_numpy(arrays.to_indarray(a)))
    j, held = arrays.wrap(a)
    assert held.flags.c_contiguous
    _same_bits(a, arrays.to_numpy(j))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fortran_order_input(dtype):
    a = np.asfortranarray((np.arange(24).reshape(2, 3, 4) % 5).astype(dtype))
    assert not a.flags.c_contiguous
    _same_bits(a, arrays.to_numpy(arrays.to_indarray(a)))
    j, held = arrays.wrap(a)
    _same_bits(a, arrays.to_numpy(j))
    assert held.flags.c_contiguous


def test_broadcast_view_input():
    a = np.broadcast_to(np.arange(3, dtype=np.float32), (4, 3))  # stride 0 on axis 0
    _same_bits(np.ascontiguousarray(a), arrays.to_numpy(arrays.to_indarray(a)))
    _same_bits(np.ascontiguousarray(a), arrays.to_numpy(arrays.wrap(a)[0]))


@pytest.mark.parametrize(
    "value, dtype",
    [(3.5, np.float64), (7, np.int64), (True, np.bool_), ([[1.0, 2.0]], np.float64), ([], np.float64)],
)
def test_python_values(value, dtype):
    out = arrays.to_numpy(arrays.to_indarray(value))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.asarray(value))


def test_to_indarray_dtype_argument():
    out = arrays.to_numpy(arrays.to_indarray([1, 2, 3], dtype=np.float32))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1, 2, 3])


def test_special_float_values_survive():
    a = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(np.float32).tiny / 2, 1e38], np.float32)
    _same_bits(a, arrays.to_numpy(arrays.to_indarray(a)))
    _same_bits(a, arrays.to_numpy(arrays.wrap(a)[0]))


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_extremes_survive(dtype):
    info = np.iinfo(dtype)
    a = np.array([info.min, -1, 0, 1, info.max], dtype)
    _same_bits(a, arrays.to_numpy(arrays.to_indarray(a)))


def test_non_native_byte_order_is_converted():
    a = np.arange(6, dtype=">f4").reshape(2, 3)  # e.g. from a big-endian file
    for out in (arrays.to_numpy(arrays.to_indarray(a)), arrays.to_numpy(arrays.wrap(a)[0])):
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))


# ---------------------------------------------------------------------------- ownership
def test_to_indarray_is_an_owned_copy():
    a = np.arange(6, dtype=np.float32)
    j = arrays.to_indarray(a)
    a[:] = -1  # the source changes; the INDArray does not
    np.testing.assert_array_equal(arrays.to_numpy(j), np.arange(6))


def test_wrap_is_zero_copy():
    a = np.arange(6, dtype=np.float64)
    j, held = arrays.wrap(a)
    assert held is a
    a[2] = 100.0  # the INDArray reads the numpy memory itself
    assert arrays.to_numpy(j)[2] == 100.0


def test_to_numpy_is_a_copy():
    j = arrays.to_indarray(np.zeros((2, 3), np.float32))
    out = arrays.to_numpy(j)
    j.assign(arrays.to_indarray(np.full((2, 3), 5.0, np.float32)))  # Java-side write
    np.testing.assert_array_equal(out, 0.0)
    out[:] = 7.0  # Python-side write
    np.testing.assert_array_equal(arrays.to_numpy(j), 5.0)
    assert out.flags.owndata and out.flags.writeable


# ---------------------------------------------------------------------------- nd4j views on the way out
def test_transposed_indarray():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = arrays.to_indarray(a).transpose()
    assert list(t.stride()) != [3, 1]  # really a strided view, not a copy
    _same_bits(a.T, arrays.to_numpy(t))


def test_permuted_rank3_indarray():
    a = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    p = arrays.to_indarray(a).permute(2, 0, 1)
    _same_bits(a.transpose(2, 0, 1), arrays.to_numpy(p))


def test_interval_subarray_has_offset():
    index = _nd4j("org.nd4j.linalg.indexing.NDArrayIndex")
    a = np.arange(20, dtype=np.float64).reshape(4, 5)
    sub = arrays.to_indarray(a).get(index.interval(1, 3), index.interval(2, 5))
    assert sub.offset() == 7  # a view into the parent's buffer
    _same_bits(a[1:3, 2:5], arrays.to_numpy(sub))


def test_strided_interval_subarray():
    index = _nd4j("org.nd4j.linalg.indexing.NDArrayIndex")
    a = np.arange(20, dtype=np.int32).reshape(4, 5)
    sub = arrays.to_indarray(a).get(index.all(), index.interval(0, 2, 5))  # (begin, stride, end)
    _same_bits(a[:, 0:5:2], arrays.to_numpy(sub))


def test_row_and_column_views():
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    j = arrays.to_indarray(a)
    _same_bits(a[2], arrays.to_numpy(j.getRow(2)))
    _same_bits(a[:, 3], arrays.to_numpy(j.getColumn(3)))


def test_fortran_ordered_indarray():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    f = arrays.to_indarray(a).dup("f")
    assert f.ordering() == "f"
    _same_bits(a, arrays.to_numpy(f))


def test_view_of_wrapped_memory():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    j, _held = arrays.wrap(a)
    _same_bits(a.T, arrays.to_numpy(j.transpose()))


# ---------------------------------------------------------------------------- unsupported dtypes
@pytest.mark.parametrize("dtype", [np.float16, np.complex64, np.complex128, np.uint8, np.int16, "U3", object])
def test_unsupported_dtype_is_named(dtype):
    a = np.zeros(3, dtype=dtype)
    name = str(np.dtype(dtype))
    with pytest.raises(TypeError, match=f"dtype {name} is not supported.*float32"):
        arrays.to_indarray(a)
    with pytest.raises(TypeError, match=f"dtype {name} is not supported"):
        arrays.wrap(a)


def test_check_dtype():
    assert arrays.check_dtype("float32") == np.float32
    with pytest.raises(TypeError, match="float16"):
        arrays.check_dtype(np.float16)


def test_unsupported_nd4j_dtype_on_the_way_out():
    half = _jvm.bridge().alloc(_jvm.dtype_enum("HALF"), [2])
    with pytest.raises(TypeError, match="HALF"):
        arrays.to_numpy(half)
