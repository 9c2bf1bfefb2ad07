"""Mutation testing of the modules where wrong or lost bytes would come from (issue 24), with cosmic-ray.

    .venv/bin/python bench/mutate.py [--only plan,sftp_wire] [--out docs/mutation.md]    (or: make mutate)

Each module is mutated by cosmic-ray and every mutant is run against the fast tests that cover that module (named
in MODULES below: pure unit tests, no daemon, no server), with pytest's plugin autoloading off so one run costs
about half a second. Not part of CI. The report (killed / survived / incompetent per module, and every survivor
with its line and operator) goes between the `mutation` markers of the output file.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST = "env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {python} -m pytest -x -q --noconftest -p no:cacheprovider {plugins} {tests}"


@dataclass(frozen=True)
class Module:
    key: str
    path: str
    tests: tuple[str, ...]
    plugins: tuple[str, ...] = ()  # pytest plugins the tests need (-p), e.g. pytest_trio

    def command(self) -> str:
        plugins = " ".join(f"-p {p}" for p in self.plugins)
        return PYTEST.format(python=sys.executable, plugins=plugins, tests=" ".join(self.tests))


TRIO = ("pytest_trio.plugin",)  # the cache's and the read path's tests run on trio (trio_mode)

#: The chunk store's fast tests (CasStore is one class made of cas.py, index.py, eviction.py and repair.py), and the
#: two of the integrity tests that open a store over a damaged or a lost index.
CACHE_TESTS = (
    "tests/unit/test_cas.py", "tests/unit/test_cas_edges.py", "tests/unit/test_cache_index.py", "tests/unit/test_cas_contract.py",
    "tests/unit/test_cas_reconcile.py", "tests/unit/test_cas_lazy_lru.py", "tests/unit/test_cas_eviction.py",
    "tests/unit/test_cas_repair.py", "tests/unit/test_fd_exhaustion.py",
    "tests/unit/test_integrity.py::test_a_damaged_cache_index_is_moved_aside_and_rebuilt_from_verified_chunk_files",
    "tests/unit/test_integrity.py::test_a_lost_cache_index_is_rebuilt_from_the_chunk_files",
)

MODULES = (
    # the read path
    Module("plan", "musicfs/read/plan.py", ("tests/unit/test_read_plan.py",)),
    Module("loader", "musicfs/read/loader.py",
           ("tests/unit/test_chunk_loader.py", "tests/unit/test_reader_pages.py", "tests/unit/test_settled_versions.py",
            "tests/unit/test_reader_blocks.py"),
           TRIO),
    Module("pages", "musicfs/read/pages.py", ("tests/unit/test_pages.py", "tests/unit/test_reader_pages.py"), TRIO),
    Module("blocks", "musicfs/library/blocks.py", ("tests/unit/test_blocks_arithmetic.py", "tests/unit/test_reader_blocks.py"),
           TRIO),
    # the cache (one store, CasStore, made of these mixins: each is run against the store's tests)
    Module("cas", "musicfs/cache/cas.py", CACHE_TESTS, TRIO),
    Module("index", "musicfs/cache/index.py", CACHE_TESTS, TRIO),
    Module("eviction", "musicfs/cache/eviction.py", CACHE_TESTS, TRIO),
    Module("repair", "musicfs/cache/repair.py", CACHE_TESTS, TRIO),
    # the origins' identity and wire
    Module("identity", "musicfs/origins/base.py",
           ("tests/unit/test_origin_base.py", "tests/unit/test_identity.py", "tests/unit/test_names.py")),
    Module("sftp_wire", "musicfs/origins/sftp_wire.py", ("tests/unit/test_sftp_wire.py", "tests/unit/test_sftp_client.py")),
)


def run(module: Module, workdir: Path, timeout: float) -> dict:
    config = workdir / f"{module.key}.toml"
    session = workdir / f"{module.key}.sqlite"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module.path}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {module.command()!r}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    bin_dir = Path(sys.executable).parent
    started = time.monotonic()
    subprocess.run([str(bin_dir / "cosmic-ray"), "init", str(config), str(session)], check=True, cwd=ROOT)
    subprocess.run([str(bin_dir / "cosmic-ray"), "exec", str(config), str(session)], check=True, cwd=ROOT)
    return {"key": module.key, "path": module.path, "tests": list(module.tests), "seconds": time.monotonic() - started,
            "when": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", **tally(session, module)}


def apply_diff(source: str, diff: str) -> str:
    """`source` with a unified diff (cosmic-ray's, of one module) applied."""
    lines, out, at = source.splitlines(keepends=True), [], 0
    hunks = re.split(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@.*\n", diff, flags=re.MULTILINE)
    for start, body in zip(hunks[1::2], hunks[2::2]):
        first = int(start) - 1 if int(start) else 0
        out += lines[at:first]
        at = first
        for line in body.splitlines(keepends=True):
            if line.startswith(" "):
                if at < len(lines):  # (cosmic-ray's diff may end with the empty line after the last newline)
                    out.append(lines[at])
                at += 1
            elif line.startswith("-"):
                at += 1
            elif line.startswith("+"):
                out.append(line[1:])
    return "".join(out + lines[at:])


def annotation_only(source: str, mutated: str) -> bool:
    """Whether a mutant changed nothing but type annotations, which a module with `from __future__ import
    annotations` never evaluates (a dataclass reads only the field's name from one): equivalent by construction."""
    if "from __future__ import annotations" not in source:
        return False

    def bare(text: str) -> str:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                node.returns = None
            elif isinstance(node, ast.arg):
                node.annotation = None
            elif isinstance(node, ast.AnnAssign):
                node.annotation = ast.Constant(None)
        return ast.dump(tree)

    try:
        return bare(source) == bare(mutated)
    except SyntaxError:
        return False


def tally(session: Path, module: Module) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    counts = {"killed": 0, "survived": 0, "incompetent": 0, "annotation_only": 0}
    survivors = []
    source = (ROOT / module.path).read_text()
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            outcome = result.test_outcome
            key = {TestOutcome.KILLED: "killed", TestOutcome.SURVIVED: "survived"}.get(outcome, "incompetent")
            counts[key] += 1
            if outcome == TestOutcome.SURVIVED and annotation_only(source, apply_diff(source, result.diff or "")):
                counts["survived"] -= 1
                counts["annotation_only"] += 1
            elif outcome == TestOutcome.SURVIVED:
                for mutation in item.mutations:
                    survivors.append([mutation.start_pos[0], mutation.operator_name.split("/")[-1], result.diff or ""])
    return {**counts, "survivors": sorted(survivors)}


def report(results: list[dict]) -> str:
    """The generated section of docs/mutation.md: one row per module (its last run), then its survivors by line."""
    lines = [
        "<!-- mutation:start -->",
        "",
        "## Mutation scores",
        "",
        ("Generated by `bench/mutate.py` (cosmic-ray) from `bench/mutation-results.json`; do not edit by hand. "
         f"Each module's last run (`make mutate`, or `MUTATE_ARGS=\"--only KEY\"`), on {os.cpu_count()} CPUs."),
        "",
        ("| Module | Tests run against each mutant | Mutants | Killed | Survived | Annotation only | Incompetent | Score "
         "| Run | Time |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        judged = r["killed"] + r["survived"]
        score = f"{100 * r['killed'] / judged:.0f}%" if judged else "-"
        equivalent = r.get("annotation_only", 0)
        lines.append(f"| `{r['path']}` | {', '.join(f'`{t}`' for t in r['tests'])} | "
                     f"{judged + equivalent + r['incompetent']} | {r['killed']} | {r['survived']} | {equivalent} | "
                     f"{r['incompetent']} | {score} | {r['when']} | {r['seconds'] / 60:.1f} min |")
    lines += ["", ("Score = killed / (killed + survived). Not counted: mutants that changed only type annotations "
                   "(never evaluated: every module has `from __future__ import annotations`; found by comparing the "
                   "two syntax trees without annotations) and incompetent ones (that do not import or run). "
                   "Survivors by line (operator x count); each is explained in the notes above:"), ""]
    for r in results:
        by_line: dict[int, dict[str, int]] = {}
        for line, op, _diff in r["survivors"]:
            ops = by_line.setdefault(line, {})
            ops[op] = ops.get(op, 0) + 1
        shown = "; ".join(f"{line}: " + ", ".join(f"{op}" + (f" x{n}" if n > 1 else "") for op, n in ops.items())
                          for line, ops in sorted(by_line.items()))
        lines.append(f"- `{r['path']}`: {shown or 'none'}")
    lines += ["", "<!-- mutation:end -->"]
    return "\n".join(lines) + "\n"


RESULTS = ROOT / "bench" / "mutation-results.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated module keys: " + ", ".join(m.key for m in MODULES))
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds one mutant's tests may take")
    ap.add_argument("--out", default="-", help="a markdown file to write the report into ('-': print it)")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="the JSON file of every module's last run, merged with this run's (default: %(default)s)")
    ap.add_argument("--diffs", type=Path, help="write every survivor's diff into this file")
    ap.add_argument("--report-only", action="store_true", help="run nothing: write the report of the stored results")
    args = ap.parse_args()
    keys = set(args.only.split(",")) if args.only else {m.key for m in MODULES}
    if args.report_only:
        keys = set()
    unknown = keys - {m.key for m in MODULES}
    if unknown:
        ap.error(f"--only: no module {', '.join(sorted(unknown))} (known: {', '.join(m.key for m in MODULES)})")
    chosen = [m for m in MODULES if m.key in keys]
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    with tempfile.TemporaryDirectory(prefix="musicfs-mutate-") as tmp:
        for module in chosen:
            result = run(module, Path(tmp), args.timeout)
            stored[module.key] = result
            args.results.write_text(json.dumps(stored, indent=1) + "\n")  # each module's figures kept at once
            print(f"{module.path}: {result['killed']} killed, {result['survived']} survived", file=sys.stderr)
    if args.diffs:
        args.diffs.write_text("".join(f"### {r['path']}:{line} {op}\n{diff}\n" for r in stored.values()
                                      for line, op, diff in r["survivors"] if r["key"] in keys))
    text = report([stored[m.key] for m in MODULES if m.key in stored])
    if args.out == "-":
        print(text)
        return 0
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if "<!-- mutation:start -->" in old:
        head, _, rest = old.partition("<!-- mutation:start -->")
        old = head + rest.partition("<!-- mutation:end -->\n")[2]
    out.write_text(old.rstrip("\n") + ("\n\n" if old.strip() else "") + text)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
