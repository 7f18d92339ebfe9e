"""The test suite stands alone in a clone: no test module imports another test module (shared
helpers live in tests/helpers.py and tests/conftest.py), and nothing reads outside the repository
(real evidence is in tests/vectors)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def cross_imports(source: str, own: str) -> list[str]:
    """Test modules other than ``own`` imported by ``source`` (top level or in a function)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for n in names:
            leaf = n.split(".")[-1]
            if leaf.startswith("test_") and leaf != own:
                out.append(n)
    return out


def test_the_checker_finds_a_cross_import():
    assert cross_imports("def f():\n    from test_pe import minimal_pe\n", "test_x") == ["test_pe"]
    assert cross_imports("import tests.test_pe as t\n", "test_x") == ["tests.test_pe"]
    assert cross_imports("from helpers import run_cli\n", "test_x") == []


def test_no_test_module_imports_another():
    found = {p.name: cross_imports(p.read_text(), p.stem) for p in sorted(TESTS.glob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}


def test_no_test_reads_outside_the_repository():
    outside = ("../" + "shared", "parents[" + "2]")     # split so this file does not match itself
    bad = [p.name for p in sorted(TESTS.glob("*.py"))
           if any(s in p.read_text() for s in outside)]
    assert bad == []
