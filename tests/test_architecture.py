"""docs/architecture.md's layout holds: packages with public faces, directions kept (the import-linter contracts
in pyproject.toml), no import cycle anywhere (imports inside functions included), a short top level."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "musicfs"


def test_the_import_contracts_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_imports_itself_back_through_others():
    graph = grimp.build_graph("musicfs")
    modules = sorted(graph.modules)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, path)
        path.pop()
        state[module] = 2

    for module in modules:
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_top_level_is_packages_and_at_most_ten_entries():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 10, entries
    for package in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        doc = (package / "__init__.py").read_text().split('"""')[1]
        assert doc.strip(), f"{package.name}/__init__.py says in a line what the package is"


@pytest.mark.parametrize("package", ["shared", "origins", "cache", "library", "read", "daemon", "commands"])
def test_every_name_a_face_exports_is_defined_where_it_says(package):
    face = __import__(f"musicfs.{package}", fromlist=["_EXPORTS"])
    for name in face.__all__:
        assert getattr(face, name) is not None


def test_no_module_over_500_lines_no_class_over_400_no_function_over_50():
    """`demo.py` aside (sample data, not the product's logic)."""
    import ast

    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if rel != "musicfs/commands/demo.py" and text.count("\n") > 500:
            too_big.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            span = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and span > 400:
                too_big.append(f"{rel}: class {node.name}, {span} lines")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and span > 50:
                too_big.append(f"{rel}: {node.name}(), {span} lines")
    assert not too_big, "\n".join(too_big)


def test_no_test_reads_the_wall_clock_to_time_what_it_tests():
    """Timing is asserted as order and events (a fake clock, trio's MockClock, the failpoints, what a fake counted):
    a stopwatch in a test fails on a busy machine for nothing. Benchmarks (bench/) time things; tests do not."""
    stopwatch = re.compile(r"\btime\.(monotonic|perf_counter)(_ns)?\(\)")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "tests").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if stopwatch.search(line)]
    assert not found, f"tests reading the wall clock: {found}"
