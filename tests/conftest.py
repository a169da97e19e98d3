"""Shared fixtures. The JVM starts once per test process (pyjnius allows one JVM per process)."""

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
