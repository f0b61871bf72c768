"""Where the shipped files are, and how a path written in a config file is read.

The shipped files are ``bus.toml``, ``Procfile`` and ``models/`` (the emotion models with their
sidecars, the two BlazeFace models). In a checkout they are at the repository root; an installed
wheel carries them in ``emostream/data/`` (pyproject.toml maps that package onto the root and
``models/``), next to the stage packages, so :func:`shipped_root` is found from this file alone,
without importing anything.

A relative path written in a config file is relative to that file's folder; a default (a key the
file leaves out, or no file at all) is relative to :func:`shipped_root`. Never the current folder,
so ``--config /abs/bus.toml`` or a stage started from anywhere reads the same files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[1]  # the repository root, or site-packages when installed
_WHEEL_DATA = ("emostream", "data")  # pyproject.toml: [tool.setuptools.package-dir] "emostream.data" = "."


def shipped_root() -> Path:
    """The folder holding the shipped ``bus.toml``, ``Procfile`` and ``models/``."""
    installed = CODE_ROOT.joinpath(*_WHEEL_DATA)
    return installed if (installed / "bus.toml").is_file() else CODE_ROOT


def shipped_models() -> Path:
    return shipped_root() / "models"


DATA_ENV = "EMOSTREAM_DATA"


def research_data(env: Mapping[str, str] | None = None) -> Path:
    """The research data (datasets and media for training, benchmarks and tests; never shipped,
    never copied): ``$EMOSTREAM_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ if env is None else env
    return Path(env[DATA_ENV]).resolve() if env.get(DATA_ENV) else (CODE_ROOT.parent / "shared" / "data").resolve()


def is_path_uri(uri: str) -> bool:
    """A source URI that names a file or folder (not a camera index, not a stream URL)."""
    return bool(uri) and not uri.isdigit() and "://" not in uri


def resolve(value: str, base: Path) -> str:
    """``value`` made absolute against ``base`` ('' and absolute paths unchanged; ``~`` expanded)."""
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)
