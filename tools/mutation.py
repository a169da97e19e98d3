"""A small mutation-testing pass: does the test suite notice deliberate bugs in the code that matters most?

Each mutant changes ONE spot of one function (an arithmetic or comparison operator, a constant, a boolean,
``and``/``or``, a dropped ``not``, a call statement removed) in a scratch copy of the package; the tests that
cover that module run against it (``pytest -x``); a mutant the tests do not fail "survives". Slow (a JVM per
mutant), so not part of CI:

    .venv/bin/python tools/mutation.py                      # every target below
    .venv/bin/python tools/mutation.py --max 20 --seed 1    # a random sample of 20 mutants
    .venv/bin/python tools/mutation.py --list               # only list the mutants

It prints one line per mutant and a survival rate per target; ``--out FILE`` writes the results as JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> (functions to mutate (None: all), tests that cover them)
TARGETS: dict[str, tuple[list[str] | None, list[str]]] = {
    "samediff_py/masked/value.py": (
        ["select_valid", "sum_pool", "mean_pool", "max_pool", "at_least_one", "valid_counts",
         "_combine", "_check_unmasked_operand", "__init__", "map"],
        ["tests/test_masked.py", "tests/test_pad_invariance.py"],
    ),
    "samediff_py/masked/rows.py": (
        ["valid_condition", "select_where", "mask_rows", "zero_padding", "gather_rows", "flat_rows", "is_zero_padded"],
        ["tests/test_masked.py", "tests/test_sequence_ops.py", "tests/test_pad_invariance.py"],
    ),
    "samediff_py/masked/losses.py": (
        None,
        ["tests/test_masked.py", "tests/test_pad_invariance.py", "tests/test_sparse.py"],
    ),
    "samediff_py/masked/counted.py": (None, ["tests/test_sparse.py", "tests/test_masked.py"]),
    "samediff_py/masked/attention.py": (
        ["multi_head_attention", "_queries_to_keep", "multi_head_attention_unfused", "heads_attention",
         "_batched_attention", "_project_heads", "causal_allowed", "causal_attention"],
        ["tests/test_masked.py", "tests/test_pad_invariance.py", "tests/test_sequence_ops.py"],
    ),
    "samediff_py/ops.py": (
        ["softmax", "log_softmax", "_detached_max", "relu", "gather", "embedding", "sparse_softmax_cross_entropy"],
        ["tests/test_ops.py", "tests/test_sparse.py"],
    ),
    "samediff_py/testing.py": (None, ["tests/test_pad_invariance.py", "tests/test_mlm_scenario.py"]),
    "samediff_py/train.py": (
        ["_step", "fit", "evaluate", "_check_hyper", "_dropout_masks", "_batches"],
        ["tests/test_train.py", "tests/test_reliability.py"],
    ),
    "samediff_py/checks.py": (None, ["tests/test_reliability.py", "tests/test_masked.py"]),
    "samediff_py/padding.py": (None, ["tests/test_masked.py", "tests/test_batching.py", "samediff_py/padding.py"]),
}  # fmt: skip

SWAPS: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.And: ast.Or, ast.Or: ast.And, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}  # fmt: skip


@dataclass
class Mutant:
    path: str
    function: str
    line: int
    what: str
    index: int  # the n-th mutable spot of the file
    status: str = "?"
    seconds: float = 0.0


class _Spots(ast.NodeTransformer):
    """Enumerates mutable spots in the chosen functions; with ``apply=n`` it rewrites the n-th one."""

    def __init__(self, functions: list[str] | None, apply: int = -1):
        self.functions, self.apply = functions, apply
        self.spots: list[tuple[str, int, str]] = []
        self.current: list[str] = []

    def _inside(self) -> bool:
        return bool(self.current) and (self.functions is None or any(f in self.functions for f in self.current))

    def _spot(self, node: ast.AST, what: str) -> bool:
        """Record a spot; True if it is the one to apply."""
        if not self._inside():
            return False
        self.spots.append((self.current[-1], getattr(node, "lineno", 0), what))
        return len(self.spots) - 1 == self.apply

    def visit_FunctionDef(self, node):  # noqa: N802
        if ast.get_docstring(node):
            node.body = node.body[1:] or [ast.Pass()]  # never mutate docstrings
        self.current.append(node.name)
        self.generic_visit(node)
        self.current.pop()
        return node

    def visit_BinOp(self, node):  # noqa: N802
        self.generic_visit(node)
        if type(node.op) in SWAPS and self._spot(node, f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"):
            node.op = SWAPS[type(node.op)]()
        return node

    def visit_Compare(self, node):  # noqa: N802
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            if type(op) in SWAPS and self._spot(node, f"{type(op).__name__} -> {SWAPS[type(op)].__name__}"):
                node.ops[i] = SWAPS[type(op)]()
        return node

    def visit_BoolOp(self, node):  # noqa: N802
        self.generic_visit(node)
        if self._spot(node, f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"):
            node.op = SWAPS[type(node.op)]()
        return node

    def visit_UnaryOp(self, node):  # noqa: N802
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._spot(node, "drop not"):
            return node.operand
        return node

    def visit_Constant(self, node):  # noqa: N802
        if isinstance(node.value, bool):
            if self._spot(node, f"{node.value} -> {not node.value}"):
                return ast.copy_location(ast.Constant(not node.value), node)
        elif isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            new = {0: 1, 1: 0, 0.5: 0.0, -1: 1}.get(node.value, node.value + 1)
            if self._spot(node, f"{node.value!r} -> {new!r}"):
                return ast.copy_location(ast.Constant(new), node)
        return node

    def visit_Expr(self, node):  # noqa: N802
        self.generic_visit(node)
        if isinstance(node.value, ast.Call) and self._spot(node, "call removed"):
            return ast.copy_location(ast.Pass(), node)
        return node


def mutants() -> list[Mutant]:
    out = []
    for rel, (functions, _tests) in TARGETS.items():
        spots = _Spots(functions)
        spots.visit(ast.parse((ROOT / rel).read_text()))
        out += [Mutant(rel, f, line, what, i) for i, (f, line, what) in enumerate(spots.spots)]
    return out


def run(m: Mutant, scratch: Path, timeout: float) -> Mutant:
    src = (ROOT / m.path).read_text()
    tree = _Spots(TARGETS[m.path][0], apply=m.index).visit(ast.parse(src))
    target = scratch / m.path
    target.write_text(ast.unparse(ast.fix_missing_locations(tree)))
    env = {**os.environ, "PYTHONPATH": str(scratch), "SAMEDIFF_PY_JARS": str(ROOT / "jars")}
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TARGETS[m.path][1]],
            cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        m.status = "survived" if r.returncode == 0 else "killed"
    except subprocess.TimeoutExpired:
        m.status = "killed (timeout)"
    finally:
        target.write_text(src)
    m.seconds = time.perf_counter() - t0
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max", type=int, default=0, help="a random sample of this many mutants (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", help="comma-separated target paths (default: every target)")
    args = ap.parse_args()
    todo = mutants()
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - set(TARGETS)
        if unknown:
            ap.error(f"unknown targets {sorted(unknown)}")
        todo = [m for m in todo if m.path in keep]
    if args.max:
        todo = sorted(random.Random(args.seed).sample(todo, min(args.max, len(todo))), key=lambda m: (m.path, m.index))
    if args.list:
        for m in todo:
            print(f"{m.path}:{m.line} {m.function}: {m.what}")
        print(f"{len(todo)} mutants")
        return
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        shutil.copytree(ROOT / "samediff_py", scratch / "samediff_py")
        shutil.copytree(ROOT / "tests", scratch / "tests")
        for name in ("pyproject.toml", "README.md", "examples", "bench"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, scratch / name)
        done = []
        for i, m in enumerate(todo):
            run(m, scratch, args.timeout)
            done.append(m)
            print(f"[{i + 1}/{len(todo)}] {m.status:16} {m.path}:{m.line} {m.function}: {m.what} ({m.seconds:.0f} s)",
                  flush=True)  # fmt: skip
    print("\nsurvival rate per target:")
    for rel in TARGETS:
        ms = [m for m in done if m.path == rel]
        if ms:
            alive = [m for m in ms if m.status == "survived"]
            print(f"  {rel}: {len(alive)}/{len(ms)} survived ({100 * len(alive) / len(ms):.0f} %)")
    alive = [m for m in done if m.status == "survived"]
    print(f"  all: {len(alive)}/{len(done)} survived ({100 * len(alive) / max(len(done), 1):.0f} %)")
    if args.out:
        args.out.write_text(json.dumps([asdict(m) for m in done], indent=1))


if __name__ == "__main__":
    main()
