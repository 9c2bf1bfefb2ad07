"""docs/resilience.md must match the @pytest.mark.resilience markers, and every catalogue id is accounted for."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "docs" / "resilience.md"

CATALOGUE = [
    "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8", "2.9", "2.10",
    "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "3.8",
    "4.1", "4.2.1", "4.2.2", "4.2.3", "4.3", "4.4", "4.5", "4.6", "4.7",
    "5.1", "5.2", "5.3", "5.4", "5.5", "5.6", "5.7",
    "6.1", "6.2", "6.3", "6.4", "6.5", "6.6", "6.7", "6.8",
    "6.9", "6.10", "7.5", "7.6",
    "N.1", "N.2", "N.3", "N.4", "N.5", "N.6", "N.7",
    "X.1", "X.2", "X.3",
]

# Ids with no test yet. This list may only shrink: a newly covered id is removed here.
NOT_YET_COVERED: set[str] = set()


def _marker_ids(decorators) -> list[str]:
    ids = []
    for dec in decorators:
        if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "resilience":
            ids += [a.value for a in dec.args if isinstance(a, ast.Constant)]
    return ids


def markers_in_tests() -> dict[str, set[str]]:
    """catalogue id -> {"tests/...py::name"} from decorators (functions, classes) and module pytestmark."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / "tests").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for rid in _marker_ids(node.decorator_list):
                    found[rid].add(f"{rel}::{node.name}")
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
                values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
                for rid in _marker_ids(values):
                    found[rid].add(rel)
    return found


def matrix_rows() -> dict[str, set[str]]:
    """id -> tests listed in docs/resilience.md (backticked entries in the last column)."""
    rows = {}
    for line in MATRIX.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in CATALOGUE:
            rows[cells[0]] = set(re.findall(r"`([^`]+)`", cells[-1]))
    return rows


def test_every_marker_names_a_catalogue_id():
    unknown = set(markers_in_tests()) - set(CATALOGUE)
    assert not unknown, f"markers with ids not in ../shared/RESILIENCE.md: {sorted(unknown)}"


def test_matrix_lists_exactly_the_marked_tests():
    markers, rows = markers_in_tests(), matrix_rows()
    assert set(rows) == set(CATALOGUE), f"docs/resilience.md rows missing: {sorted(set(CATALOGUE) - set(rows))}"
    wrong = {rid: {"doc": sorted(rows[rid]), "markers": sorted(markers.get(rid, ()))}
             for rid in CATALOGUE if rows[rid] != markers.get(rid, set())}
    assert not wrong, f"docs/resilience.md disagrees with the test markers: {wrong}"


def test_uncovered_list_only_shrinks():
    covered = {rid for rid, tests in markers_in_tests().items() if tests}
    newly = covered & NOT_YET_COVERED
    assert not newly, f"now covered, remove from NOT_YET_COVERED: {sorted(newly)}"
    missing = set(CATALOGUE) - covered - NOT_YET_COVERED
    assert not missing, f"ids with no test that are not declared uncovered: {sorted(missing)}"


def render(markers: dict[str, set[str]]) -> str:
    """The matrix with its tests column rewritten from the markers (behaviour cells kept)."""
    out = []
    for line in MATRIX.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in CATALOGUE:
            tests = "<br>".join(f"`{t}`" for t in sorted(markers.get(cells[0], ()))) or "not yet covered"
            line = "| " + " | ".join(cells[:-1] + [tests]) + " |"
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python tests/test_resilience_matrix.py: refresh the tests column
    MATRIX.write_text(render(markers_in_tests()))
