"""Product vs fixtures: the daemon runs without the `demo` extra (numpy, soundfile); `musicfs demo` names it."""

from __future__ import annotations

import subprocess
import sys

# numpy and soundfile made unimportable, as on a machine that installed `musicfs` without `[demo]`
_WITHOUT_DEMO_EXTRA = "import sys; sys.modules['numpy'] = sys.modules['soundfile'] = None\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITHOUT_DEMO_EXTRA + code], capture_output=True, text=True,
                          timeout=60)


def test_every_product_module_but_demo_imports_without_the_demo_extra():
    result = _python(
        "import pkgutil, importlib, musicfs\n"
        "names = [m.name for m in pkgutil.walk_packages(musicfs.__path__, 'musicfs.') if m.name not in ('musicfs.demo', 'musicfs.__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 20  # the walk found the package, not nothing


def test_musicfs_demo_without_the_extra_names_it(tmp_path):
    result = _python(f"from musicfs.cli import main; sys.exit(main(['demo', {str(tmp_path / 'lib')!r}]))")
    assert result.returncode == 1, result.stderr
    assert "pip install 'musicfs[demo]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "lib").exists()
