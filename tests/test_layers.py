"""Layers point down only: every import of every module under builder/ (top-level and inside
functions, absolute and relative), parsed with ``ast``, against the rules below. The checker is
unit-tested on synthetic modules, so this test can fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BUILDER = Path(__file__).resolve().parent.parent / "builder"

# package (dotted) -> packages/modules it must not import (it or anything below it)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "builder.formats": ("builder.measure", "builder.stages", "builder.recipe", "builder.emit",
                        "builder.verify", "builder.build", "builder.cli"),
    # builder.measure.tdx_profile reads profile YAML files: it may use builder.safeyaml,
    # builder.schema and builder.inputs, which no rule forbids.
    "builder.measure": ("builder.recipe", "builder.stages", "builder.emit", "builder.verify",
                        "builder.build", "builder.cli", "builder.sources"),
}


def module_name(path: Path, root: Path) -> str:
    """builder/formats/ccel.py -> builder.formats.ccel; builder/verify/__init__.py -> builder.verify."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of everything ``module`` imports, wherever the statement is (module
    level, functions, classes, conditionals). ``from P import n`` yields P and P.n (n may be a
    submodule); relative imports are resolved against ``module``."""
    out: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.append((node.lineno, prefix))
            out += [(node.lineno, f"{prefix}.{a.name}") for a in node.names if a.name != "*"]
    return out


def _under(name: str, pkg: str) -> bool:
    return name == pkg or name.startswith(pkg + ".")


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that break a rule of FORBIDDEN, as 'module:line -> name'."""
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        if not _under(module, layer):
            continue
        for line, name in imported_modules(source, module, is_package):
            if any(_under(name, f) for f in forbidden):
                bad.append(f"{module}:{line} -> {name}")
    return sorted(set(bad))


def builder_modules() -> list[Path]:
    return sorted(p for p in BUILDER.rglob("*.py") if "__pycache__" not in p.parts)


def test_there_are_modules_to_check():
    names = {module_name(p, BUILDER) for p in builder_modules()}
    assert {"builder.formats.ccel", "builder.measure.tdx", "builder.verify"} <= names


def test_layers_point_down_only():
    bad = []
    for p in builder_modules():
        bad += upward_imports(p.read_text(), module_name(p, BUILDER), p.name == "__init__.py")
    assert bad == [], "upward imports:\n" + "\n".join(bad)


# -- the checker itself -----------------------------------------------------------------------

@pytest.mark.parametrize("module,source", [
    ("builder.formats.x", "from builder.measure.policy import GuestPolicy\n"),
    ("builder.formats.x", "import builder.stages.initrd\n"),
    ("builder.formats.x", "def f():\n    from builder.measure import rtmr\n    return rtmr\n"),
    ("builder.formats.x", "class C:\n    def m(self):\n        import builder.cli.common\n"),
    ("builder.formats.x", "from builder import verify\n"),
    ("builder.formats.x", "from builder import build as b\n"),
    ("builder.formats.x", "from ..measure import tdx\n"),
    ("builder.formats.x", "from .. import recipe\n"),
    ("builder.formats.x", "if True:\n    try:\n        from builder.emit import qemu\n"
                          "    except ImportError:\n        pass\n"),
    ("builder.measure.x", "from builder.recipe import Recipe\n"),
    ("builder.measure.x", "def f():\n    from builder.sources.debian import fetch\n"),
    ("builder.measure.x", "from builder.stages import initrd\n"),
    ("builder.measure.sub.y", "from ...stages import tree\n"),
])
def test_checker_catches_an_upward_import(module, source):
    assert upward_imports(source, module) != []


@pytest.mark.parametrize("module,source", [
    ("builder.formats.x", "from builder.formats import tcg\nfrom builder.errors import E\n"),
    ("builder.formats.x", "from . import tcg\nimport hashlib\n"),
    ("builder.measure.x", "from builder.formats.snp_policy import GuestPolicy\n"
                          "from builder.measure.tdx_events import Event\n"),
    ("builder.measure.x", "from builder.safeyaml import load_yaml\nfrom builder.inputs import MiB\n"),
    ("builder.formats.x", "import builder.measurements_not\n"),      # only a name prefix of none
    ("builder.measure.x", "from builder.builds import x\n"),          # builder.build* is not build
    ("builder.verify.x", "from builder.build import build\nfrom builder.cli import common\n"),
])
def test_checker_passes_a_downward_import(module, source):
    assert upward_imports(source, module) == []


def test_relative_import_in_a_package_init_resolves_against_the_package():
    assert upward_imports("from .. import stages\n", "builder.formats", is_package=True) != []
    assert upward_imports("from . import ccel\n", "builder.formats", is_package=True) == []


def test_checker_finds_a_bad_import_in_a_real_copy(tmp_path):
    """A temp copy of builder/formats with one module given an upward import fails the walk."""
    root = tmp_path / "builder"
    (root / "formats").mkdir(parents=True)
    for p in (BUILDER / "formats").glob("*.py"):
        (root / "formats" / p.name).write_text(p.read_text())
    assert not [b for p in sorted(root.rglob("*.py"))
                for b in upward_imports(p.read_text(), module_name(p, root))]
    ccel = root / "formats" / "ccel.py"
    ccel.write_text(ccel.read_text() + "\n\ndef _bad():\n    from builder.measure import tdx\n")
    bad = [b for p in sorted(root.rglob("*.py"))
           for b in upward_imports(p.read_text(), module_name(p, root))]
    assert bad and all(b.startswith("builder.formats.ccel:") for b in bad), bad
