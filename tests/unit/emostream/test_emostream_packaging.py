"""pyproject.toml lists the packages by hand (two are folders mapped at build time): none may be
missing, and the mapped data must be the shipped files the runtime looks for."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import emostream
from bus.paths import shipped_root

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SKIP = {"tests", ".venv", "runs", "build", "dist", ".git"}


def test_every_package_of_the_repository_is_listed() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in ROOT.rglob("*.py")
        if not SKIP & set(p.relative_to(ROOT).parts) and p.parent != ROOT
    }
    assert found - listed == set(), "add these packages to [tool.setuptools] packages"
    assert {"emostream.data", "emostream.data.models", "display.static"} <= listed


def test_the_data_package_is_the_shipped_files() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"emostream.data": ".", "emostream.data.models": "models"}
    assert setuptools.get("include-package-data") is False
    data = setuptools["package-data"]
    for name in data["emostream.data"]:
        assert (ROOT / name).is_file(), name
    shipped = {p.name for pattern in data["emostream.data.models"] for p in (ROOT / "models").glob(pattern)}
    needed = {"fer2013_emonet.tflite", "fer2013_emonet.json", "face_detection_full_range_sparse.tflite"}
    assert needed | {"face_detection_short_range.tflite", "README.md"} <= shipped
    assert not any(n.endswith(".keras") for n in shipped)
    assert shipped_root() == ROOT


def test_version_is_written_once() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "emostream.__version__"}
    tree = ast.parse((ROOT / "emostream/__init__.py").read_text())  # setuptools reads it without importing
    values = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"]  # type: ignore[attr-defined]
    assert values == [emostream.__version__]
    assert f"## {emostream.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]
    assert PYPROJECT["project"]["scripts"] == {"emostream": "emostream.cli:main"}
