"""Install as a user would: build the wheel, install it into a fresh venv, and from a folder that is
not the repository (nothing on PYTHONPATH) run the commands and the three-line API.

Slow: the fresh venv installs the runtime dependencies (pip reads its cache or the package index;
about a minute with a warm cache, several without one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from emostream import __version__
from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "build", "dist", "out", "__pycache__", "*.egg-info", ".*_cache", "*.keras"
)


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(the fresh venv's bin folder, an environment without the repository on any path)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = child_env(importable=False)
    env.pop("VIRTUAL_ENV", None)
    src = tmp / "src"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    shutil.copytree(ROOT, src, ignore=IGNORE)
    sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)], tmp, env, 600)
    (wheel,) = (tmp / "dist").glob("emostream-*.whl")
    assert wheel.name.startswith(f"emostream-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("bus.toml", "Procfile", "models/fer2013_emonet.tflite", "models/fer2013_emonet.json"):
        assert f"emostream/data/{f}" in names, f
    for f in ("face_detection_full_range_sparse.tflite", "face_detection_short_range.tflite", "README.md"):
        assert f"emostream/data/models/{f}" in names, f
    assert not any(n.endswith(".keras") for n in names)
    python = shutil.which("python3.11") or sys.executable
    sh([python, "-m", "venv", str(tmp / "venv")], tmp, env)
    bindir = tmp / "venv" / "bin"
    sh([str(bindir / "python"), "-m", "pip", "install", "-q", str(wheel)], tmp, env, 1200)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return bindir, env


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def test_code_and_models_come_from_the_venv(installed: tuple[Path, dict[str, str]], elsewhere: Path) -> None:
    bindir, env = installed
    code = "import bus, emostream, bus.paths as p; print(bus.__file__); print(p.shipped_root())"
    out = sh([str(bindir / "python"), "-c", code], elsewhere, env).split()
    venv = str(bindir.parent)
    assert out[0].startswith(venv) and out[1].startswith(venv) and out[1].endswith("emostream/data")
    assert sh([str(bindir / "emostream"), "--version"], elsewhere, env).strip() == f"emostream, version {__version__}"
    for cmd in (["--help"], ["run", "--help"], ["analyze", "--help"], ["bench", "--help"]):
        sh([str(bindir / "emostream"), *cmd], elsewhere, env)


def test_three_line_api_on_two_people(
    installed: tuple[Path, dict[str, str]], elsewhere: Path, shared_data: Path
) -> None:
    bindir, env = installed
    photo = shared_data / "media/images/faces/two_people.jpg"
    code = (
        "from emostream import EmotionRecognizer\n"
        f"faces = EmotionRecognizer().detect({str(photo)!r})\n"
        "print(len(faces), [f.label for f in faces])\n"
    )
    out = sh([str(bindir / "python"), "-c", code], elsewhere, env)
    assert out.split()[0] == "2", out


def test_analyze_a_video(installed: tuple[Path, dict[str, str]], elsewhere: Path, shared_data: Path) -> None:
    bindir, env = installed
    video = shared_data / "media/videos/head-pose-face-detection-male.mp4"
    out = sh([str(bindir / "emostream"), "analyze", str(video), "--quiet"], elsewhere, env, 600)
    report = json.loads((elsewhere / "head-pose-face-detection-male-analysis" / "tracks.json").read_text())
    assert [t["dominant"] for t in report["tracks"]] == ["happy"], out
    assert report["frames_read"] == report["frames_analysed"] > 0 and report["lost"] == 0


def test_stages_and_image_batches(installed: tuple[Path, dict[str, str]], elsewhere: Path, shared_data: Path) -> None:
    bindir, env = installed
    python = str(bindir / "python")
    photo = str(shared_data / "media/images/faces/two_people.jpg")
    detected = json.loads(sh([python, "-m", "detector", "--image", photo], elsewhere, env))
    assert len(detected["faces"]) == 2
    classified = sh([python, "-m", "classifier", "--image", photo], elsewhere, env).splitlines()
    assert len(classified) == 2  # a photo: each detected face
    sh([str(bindir / "emostream"), "analyze", str(shared_data / "media/images/faces"), "--quiet"], elsewhere, env)
    rows = (elsewhere / "faces-analysis" / "faces.jsonl").read_text().splitlines()
    assert len(rows) == 5 and all(json.loads(r)["path"].startswith(str(shared_data)) for r in rows)
