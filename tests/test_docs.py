"""Claims the documentation makes that can be checked, checked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from quantship.backends.base import Backend

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_member_of_the_backend_contract() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### What a backend is") :]
    section = section[: section.index("\n### ", 5)]
    members = {
        m for m in dir(Backend) if not m.startswith("_") and m not in {"name", "extra", "formats"}
    } | set(Backend.__annotations__)
    missing = sorted(m for m in members if f"`{m}" not in section and f", `{m}" not in section)
    assert not missing, f"README's backend contract omits {missing}"


def test_the_makefile_states_the_python_pyproject_requires() -> None:
    need = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    version = re.fullmatch(r">=(\d+\.\d+)", need)
    assert version is not None
    assert f"Python {version.group(1)}+" in (ROOT / "Makefile").read_text()
    assert f"Python {version.group(1)}+" in (ROOT / "README.md").read_text()


def test_readme_does_not_say_npz_files_are_memory_mapped() -> None:
    """They are read a sample at a time (a memory map keeps every page it touched)."""
    assert "memory-mapped" not in (ROOT / "README.md").read_text()


def test_readme_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    words = set(re.findall(r"[a-z_]+", layout))
    modules = {
        p.stem for p in (ROOT / "quantship").rglob("*.py") if p.stem not in {"__init__", "__main__"}
    }
    missing = sorted(modules - words)
    assert not missing, f"README's Layout omits {missing}"
