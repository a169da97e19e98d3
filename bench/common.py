"""Small helpers shared by the benchmarks: interleaved median timing and plain-text tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def steps(warm: int, repeat: int, warm_s: float = 0.0, min_s: float = 0.0, most: int = 400):
    """Step indices: negative while warming up (at least ``warm`` steps and ``warm_s`` seconds), then
    0, 1, ... while measuring (at least ``repeat`` steps and ``min_s`` seconds, at most ``most``).

    A count alone under-warms small steps: at batch 8 x time 32 a samediff_py step takes ~25 ms once the
    JVM's JIT has compiled SameDiff's session code, ~35 ms over the first few. The PyTorch twins use the
    same rule.
    """
    t0 = time.perf_counter()
    i = 0
    while i < warm or time.perf_counter() - t0 < warm_s:
        yield i - 10**9
        i += 1
    t0 = time.perf_counter()
    n = 0
    while n < repeat or (time.perf_counter() - t0 < min_s and n < most):
        yield n
        n += 1


def interleaved_medians(
    cases: Mapping[str, Callable[[], Any]],
    repeat: int,
    warmup: int = 2,
    after: Mapping[str, Callable[[Any], None]] | None = None,
) -> dict[str, float]:
    """Median wall time (seconds) of each case, run round-robin so that load changes hit every case alike.

    ``after[name](result)`` runs outside the timed region (e.g. to free what the call allocated).
    """
    after = after or {}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(warmup + repeat):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            if name in after:
                after[name](out)
            if i >= warmup:
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def fmt_bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (right-aligned columns after the first)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])
