"""Packaging: the layering rule, the README's commands and the CI script agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block, "README's Quickstart has no fenced code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_commands():
    commands = _quickstart_commands()
    assert len(commands) == 2
    assert "histokd demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    test_command = _quickstart_commands()[1]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("torch==2.13.0") < ci.index('-e ".[test]"'), "torch must be installed first"


def test_core_never_imports_qt_or_napari():
    """Import every histokd_core module in a fresh interpreter and check no GUI module got loaded."""
    code = (
        "import pkgutil, importlib, sys, histokd_core\n"
        "for m in pkgutil.walk_packages(histokd_core.__path__, 'histokd_core.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in "
        "{'napari', 'napari_histokd', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'})\n"
        "print(bad); assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_linter_contracts():
    """The contracts in pyproject.toml: no Qt/napari in the core, and the core's layers."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout, result.stdout


def test_no_import_cycle_between_core_modules():
    """No module of histokd_core imports itself back through others (lazy imports included;
    imports under ``if TYPE_CHECKING`` are type hints and do not count)."""
    import grimp

    graph = grimp.build_graph("histokd_core", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            path = graph.find_shortest_chain(importer=imported, imported=module)
            if path is not None:
                cycles.append(" -> ".join((module, *path)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
