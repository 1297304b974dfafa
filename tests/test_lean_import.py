"""`import quantship`, `quantship --help` and `quantship bench` work without torch,
openvino or tensorrt: a blocker makes importing them fail in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked for this test: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def _python(code: str, blocked: set[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(blocked=blocked) + code],
        capture_output=True,
        text=True,
        timeout=300,
    )


HEAVY = {"torch", "openvino", "tensorrt", "nncf", "matplotlib", "PIL", "sklearn"}


def test_import_and_help_load_nothing_heavy() -> None:
    code = (
        "import quantship, quantship.cli\n"
        "try:\n    quantship.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        + repr(HEAVY | {"onnxruntime"})
        + ")\nprint('HEAVY', heavy)\n"
    )
    p = _python(code, set())
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout


def test_export_and_bench_run_without_torch_or_openvino(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    out = tmp_path / "build"
    code = (
        "from quantship.cli import main\n"
        f"assert main(['export', {str(cnn_path)!r}, '--calib', {str(calib_npz)!r}, '--out', {str(out)!r}, "
        "'--no-bench', '-q']) == 0\n"
        f"assert main(['bench', {str(out)!r}, '--iterations', '3', '--threads', '1', '-q']) == 0\n"
        "print('OK')\n"
    )
    p = _python(code, HEAVY)
    assert p.returncode == 0, p.stderr
    assert "OK" in p.stdout


def test_torch_model_without_torch_names_the_extra(tmp_path: Path, calib_npz: Path) -> None:
    code = (
        "from quantship.cli import main\n"
        f"raise SystemExit(main(['export', 'mypkg.nets:resnet', '--calib', {str(calib_npz)!r}, "
        f"'--out', {str(tmp_path / 'o')!r}]))\n"
    )
    p = _python(code, HEAVY)
    assert p.returncode == 2
    assert "quantship[torch]" in p.stderr and "Traceback" not in p.stderr
