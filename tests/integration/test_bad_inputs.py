"""Bad inputs at start-up, on the real stage commands: media that cannot be opened, models that are
missing, corrupt or disagree with their sidecar, and CURVE keys that are missing. Each stage must
exit 2 with ONE line on stderr, starting with its name and naming the culprit. (The library-level
cases are unit-tested in tests/unit/capture, tests/unit/classifier and tests/unit/detector.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.keys import STAGES, generate
from emostream.launch import child_env
from tests.conftest import SHARED_DATA
from tests.integration.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
pytestmark = pytest.mark.timeout(120)


def env() -> dict[str, str]:
    return child_env()


def model_copy(tmp: Path, edit: Callable[[Path], object] | None = None) -> Path:
    dst = tmp / "m.tflite"
    shutil.copy(MODEL, dst)
    shutil.copy(MODEL.with_suffix(".json"), dst.with_suffix(".json"))
    if edit is not None:
        edit(dst)
    return dst


def sidecar_size(path: Path, size: int) -> None:
    side = path.with_suffix(".json")
    d = json.loads(side.read_text())
    d["input"]["size"] = size
    side.write_text(json.dumps(d))


def media(tmp: Path, kind: str) -> Path:
    if kind == "header_only_video":
        p = tmp / "cut.mp4"
        p.write_bytes((SHARED_DATA / "media/videos/asl_book.mkv").read_bytes()[:300])
    elif kind == "junk_folder":
        p = tmp / "junk"
        p.mkdir()
        (p / "empty.png").write_bytes(b"")
        (p / "notes.txt").write_text("not an image")
        (p / "fake.jpg").write_bytes(b"\xff\xd8 not really")
    else:
        raise ValueError(kind)
    return p


# (stage, what goes wrong, what the one line must say)
CASES = [
    ("capture", "header_only_video", "cannot open source 'src0'"),
    ("capture", "junk_folder", "has no images"),
    ("detector", "missing_detector_model", "missing.tflite"),
    ("detector", "corrupt_detector_model", "bad.tflite"),
    ("classifier", "corrupt_model", "not a loadable TFLite model"),
    ("classifier", "sidecar_disagrees", "does not match the sidecar"),
    *[(stage, "curve_without_keys", ".key_secret not found") for stage in STAGES],
    ("display", "curve_without_allowed_keys", "no client keys in"),
]


@pytest.mark.parametrize(("stage", "fault", "says"), CASES, ids=[f"{s}-{f}" for s, f, _ in CASES])
def test_start_up_failure_is_one_line_and_exit_2(tmp_path: Path, stage: str, fault: str, says: str) -> None:
    sections: dict[str, dict[str, object]] = {
        "bus": {},
        "capture": {"sources": [{"uri": "clip.mp4", "realtime": False}]},
        "classifier": {"model": str(MODEL)},
        "display": {"web": ""},
    }
    args: list[str] = []
    if fault in ("header_only_video", "junk_folder"):
        if not SHARED_DATA.is_dir() and fault == "header_only_video":
            pytest.skip(f"shared data not found at {SHARED_DATA}")
        args = ["--source", str(media(tmp_path, fault))]
    elif fault == "missing_detector_model":
        sections["detector"] = {"model": str(tmp_path / "missing.tflite")}
    elif fault == "corrupt_detector_model":
        (tmp_path / "bad.tflite").write_bytes(b"\x00not a flatbuffer" * 64)
        sections["detector"] = {"model": str(tmp_path / "bad.tflite")}
    elif fault == "corrupt_model":
        sections["classifier"] = {"model": str(model_copy(tmp_path, lambda p: p.write_bytes(p.read_bytes()[:4000])))}
    elif fault == "sidecar_disagrees":
        sections["classifier"] = {"model": str(model_copy(tmp_path, lambda p: sidecar_size(p, 64)))}
    elif fault.startswith("curve"):
        keys = tmp_path / "keys"
        generate(keys, STAGES)
        if fault == "curve_without_keys":
            (keys / f"{stage}.key_secret").unlink()
        else:
            for f in (keys / "allowed").iterdir():
                f.unlink()
        sections["bus"] = {"curve": True, "keys_dir": str(keys)}
    cfg = write_config(tmp_path / "bus.toml", sections)
    p = subprocess.run(
        [sys.executable, "-m", stage, "--config", str(cfg), *args],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"{stage}: ") and says in lines[0], lines[0]
