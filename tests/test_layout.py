"""The dependency rule of DESIGN.md: imports point one way, and only the command line ties everything together."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"quant", "sim", "hw", "rtl_tests", "reports", "ptq2rtl"}
#: package -> the first-party packages it may import (reports and ptq2rtl may import everything)
ALLOWED = {
    "sim": {"sim"},
    "quant": {"quant", "sim"},
    "hw": {"hw", "sim"},
    "rtl_tests": {"rtl_tests", "hw", "sim"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_depends_on(package):
    violations = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                  for path in sorted((ROOT / package).rglob("*.py"))
                  for line, module in _imports(path)
                  if module.split(".")[0] in FIRST_PARTY - ALLOWED[package]]
    assert not violations, "\n".join(violations)
