"""Shared fixtures. The JVM starts once per test process (pyjnius allows one JVM per process)."""

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
