"""The package layout holds: pure DICOM logic and byte framing never import
Twisted or the layers built on them (README "Development")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dicomweb"
#: Packages that must stay usable without a reactor, and what they may not import.
PURE = {
    "dicom": ("twisted", "klein", "treq", "dicomweb.web", "dicomweb.store", "dicomweb.dimse", "dicomweb.ingest"),
    "io": ("twisted", "klein", "treq", "dicomweb.web", "dicomweb.store", "dicomweb.dimse", "dicomweb.dicom"),
}


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative ones resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = f"dicomweb.{package}".split(".")[: 2 - (node.level - 1)]
                names.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(PURE))
def test_pure_packages_import_no_twisted_and_no_upper_layer(package: str) -> None:
    files = sorted((PACKAGE / package).glob("*.py"))
    assert files, f"dicomweb/{package} has no modules"
    offending = {
        f"{path.name}: {name}"
        for path in files
        for name in _imports(path, package)
        if any(name == banned or name.startswith(banned + ".") for banned in PURE[package])
    }
    assert not offending, sorted(offending)


def test_a_relative_import_is_resolved_against_its_package(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from ..web import app\nfrom . import query\nimport twisted.internet\n")
    assert _imports(module, "dicom") == {"dicomweb.web", "dicomweb.dicom", "twisted.internet"}
