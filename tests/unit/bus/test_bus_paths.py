"""Paths in a config file are relative to the file; defaults to the shipped files; never the cwd."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus import paths
from bus.config import load

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_root_in_a_checkout_is_the_repository() -> None:
    assert paths.shipped_root() == ROOT
    assert (paths.shipped_models() / "fer2013_emonet.tflite").is_file()


def test_shipped_root_prefers_the_wheel_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "emostream" / "data"
    data.mkdir(parents=True)
    monkeypatch.setattr(paths, "CODE_ROOT", tmp_path)
    assert paths.shipped_root() == tmp_path  # no bus.toml there: not the wheel layout
    (data / "bus.toml").write_text("")
    assert paths.shipped_root() == data


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("/abs/m.tflite", "/abs/m.tflite"),
        ("m.tflite", "/base/m.tflite"),
        ("sub/../m.tflite", "/base/sub/../m.tflite"),
    ],
)
def test_resolve(value: str, expected: str) -> None:
    assert paths.resolve(value, Path("/base")) == expected


@pytest.mark.parametrize(("uri", "is_path"), [("0", False), ("rtsp://h/x", False), ("clip.mp4", True), ("", False)])
def test_is_path_uri(uri: str, is_path: bool) -> None:
    assert paths.is_path_uri(uri) is is_path


def test_paths_in_a_file_are_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "bus.toml").write_text(
        "[bus]\ncurve = true\n"
        '[capture]\nsources = [{ uri = "clip.mp4" }, { uri = "1" }, { uri = "rtsp://cam/x" }, { uri = "/abs/f" }]\n'
        '[detector]\nmodel = "det/face.tflite"\n'
        '[classifier]\nmodel = "m/emo.tflite"\n'
        '[display]\nevents = "out/e.jsonl"\nvideo = "v.mp4"\n'
    )
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    cfg = load(Path("conf/bus.toml"), env={})
    assert [s.uri for s in cfg.capture.sources] == [str(conf / "clip.mp4"), "1", "rtsp://cam/x", "/abs/f"]
    assert cfg.detector.model == str(conf / "det/face.tflite")
    assert cfg.classifier.model == str(conf / "m/emo.tflite")
    assert (cfg.display.events, cfg.display.video) == (str(conf / "out/e.jsonl"), str(conf / "v.mp4"))
    assert cfg.bus.keys_dir == str(conf / "keys")  # a default, but it lives with the config


def test_defaults_are_the_shipped_files_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bus.toml").write_text('[detector]\nmodel = "short_range"\n')  # no [classifier] model
    monkeypatch.chdir(tmp_path)
    for cfg in (load(tmp_path / "bus.toml", env={}), load(None, env={})):
        assert cfg.classifier.model == str(ROOT / "models" / "fer2013_emonet.tflite")
        assert cfg.detector.model == "short_range"
    (tmp_path / "bus.toml").unlink()
    assert load(None, env={}).classifier.model == str(ROOT / "models" / "fer2013_emonet.tflite")


def test_environment_overrides_are_the_users(tmp_path: Path) -> None:
    cfg = load(ROOT / "bus.toml", env={"SOURCE": "clip.mp4", "EVENTS": "e.jsonl"})
    assert cfg.capture.sources[0].uri == "clip.mp4"  # opened by the stage, relative to where it runs
    assert cfg.display.events == "e.jsonl"


def test_the_research_data_is_beside_the_repository_unless_emostream_data_says_where(tmp_path: Path) -> None:
    assert paths.research_data({}) == (paths.CODE_ROOT / ".." / "shared" / "data").resolve()
    assert paths.research_data({paths.DATA_ENV: ""}) == paths.research_data({})
    assert paths.research_data({paths.DATA_ENV: str(tmp_path)}) == tmp_path
