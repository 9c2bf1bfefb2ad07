"""Product vs fixtures: the daemon runs without the `demo` extra (numpy, soundfile); `musicfs demo` names it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# numpy and soundfile made unimportable, as on a machine that installed `musicfs` without `[demo]`
_WITHOUT_DEMO_EXTRA = "import sys; sys.modules['numpy'] = sys.modules['soundfile'] = None\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITHOUT_DEMO_EXTRA + code], capture_output=True, text=True,
                          timeout=60)


def test_every_product_module_but_demo_imports_without_the_demo_extra():
    result = _python(
        "import pkgutil, importlib, musicfs\n"
        "names = [m.name for m in pkgutil.walk_packages(musicfs.__path__, 'musicfs.') if m.name not in ('musicfs.commands.demo', 'musicfs.__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 20  # the walk found the package, not nothing


def test_musicfs_demo_without_the_extra_names_it(tmp_path):
    result = _python(f"from musicfs.commands.cli import main; sys.exit(main(['demo', {str(tmp_path / 'lib')!r}]))")
    assert result.returncode == 1, result.stderr
    assert "pip install 'musicfs[demo]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "lib").exists()


def _extras() -> dict[str, list[str]]:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_make_run_installs_the_demo_extra_only_and_make_test_the_test_one():
    """Issue 13: `make run` spent 4 minutes in pip on the test extra. The daemon's needs are the dependencies,
    `make run` adds `demo`, `make test` adds `test` (which includes demo)."""
    root = Path(__file__).resolve().parents[2]
    makefile = (root / "Makefile").read_text()
    run_rule = makefile[makefile.index("$(VENV)/.installed-run:"):makefile.index("$(VENV)/.installed-test:")]
    test_rule = makefile[makefile.index("$(VENV)/.installed-test:"):makefile.index("\nrun:")]
    assert "-e '.[demo]'" in run_rule and "test" not in run_rule.split("pip install", 1)[1].split("\n")[0]
    assert "-e '.[test]'" in test_rule
    extras = _extras()
    assert "musicfs[demo]" in extras["test"]
    assert not any(dep.lower().startswith(("pytest", "moto", "hypothesis")) for dep in extras["demo"])


def test_moto_comes_with_the_s3_extra_not_the_server_one():
    test_deps = [dep.replace(" ", "") for dep in _extras()["test"]]
    moto = [dep for dep in test_deps if dep.startswith("moto")]
    assert moto and all(dep.startswith("moto[s3]") for dep in moto), moto
    assert any(dep.startswith("flask>=") for dep in test_deps) and any(dep.startswith("flask-cors") for dep in test_deps)
