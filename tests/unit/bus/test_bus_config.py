"""Strict config: unknown keys, bad types and miswired endpoints fail naming section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.config import ConfigError, load, parse
from bus.runtime import runtime_dir

ROOT = Path(__file__).resolve().parents[3]


def test_repo_bus_toml_is_valid() -> None:
    cfg = load(ROOT / "bus.toml", env={})
    assert cfg.detector.model in ("full_range", "short_range")
    eps = (*cfg.detector.endpoints, *cfg.classifier.endpoints, cfg.display.endpoint)
    assert all(ep.startswith(f"ipc://{runtime_dir()}/") for ep in eps)  # private to this user (bus.sockets)


def test_defaults_without_file_bind_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(env={})
    assert cfg.path == "" and cfg.display.endpoint.startswith("tcp://127.0.0.1:")


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"detectr": {}}, r"unknown section \[detectr\]"),
        ({"detector": {"modle": "x"}}, r"\[detector\] unknown key 'modle'"),
        ({"detector": {"min_confidence": "high"}}, r"\[detector\] min_confidence: expected a number"),
        ({"detector": {"min_confidence": 1.5}}, r"\[detector\] min_confidence"),
        ({"detector": {"model": "huge"}}, r"\[detector\] model"),
        ({"bus": {"hwm": True}}, r"\[bus\] hwm: expected an integer"),
        ({"bus": {"hwm": 0}}, r"\[bus\] hwm"),
        ({"bus": {"shm_slots": 1}}, r"\[bus\] shm_slots: 0 \(off\) or 2..1024, got 1"),
        ({"bus": {"shm_slots": 2000}}, r"\[bus\] shm_slots: .* got 2000"),
        ({"detector": {"backend": "opencv"}}, r"\[detector\] backend: litert or mediapipe, got .opencv."),
        ({"display": {"endpoint": "tcp://127.0.0.1:5601"}}, r"also bound by \[detector\]"),
        ({"display": {"endpoint": "udp://127.0.0.1:1"}}, r"\[display\] endpoint: .* is not a tcp"),
        ({"display": {"endpoint": "tcp://127.0.0.1"}}, r"\[display\] endpoint: .* needs tcp://host:port"),
        ({"classifier": {"endpoints": ["tcp://0.0.0.0:5602"]}}, r"\[classifier\] endpoints: .* not loopback"),
        ({"display": {"web": "0.0.0.0:8000"}}, r"\[display\] web: 0.0.0.0 is not loopback"),
        ({"display": {"web": "8000"}}, r"\[display\] web: expected host:port"),
        ({"capture": {"sources": []}}, r"\[capture\] sources: at least one"),
        ({"capture": {"sources": [{"id": "a"}, {"id": "a"}]}}, r"duplicate id"),
        (
            {"capture": {"sources": [{"uri": "x", "speed": 2}]}},
            r"\[capture.sources\[0\]\] unknown key 'speed'|unknown key 'speed'",
        ),
        ({"detector": "full_range"}, r"\[detector\] must be a table"),
    ],
)
def test_invalid_config(table: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse(table)


def test_allow_remote_permits_other_hosts() -> None:
    cfg = parse({"bus": {"allow_remote": True}, "classifier": {"endpoints": ["tcp://0.0.0.0:5602"]}})
    assert cfg.classifier.endpoints == ("tcp://0.0.0.0:5602",)


def test_env_overrides(tmp_path: Path) -> None:
    cfg = load(ROOT / "bus.toml", env={"SOURCE": "clip.mp4", "EVENTS": str(tmp_path / "e.jsonl")})
    assert [s.uri for s in cfg.capture.sources] == ["clip.mp4"]
    assert cfg.display.events == str(tmp_path / "e.jsonl")


def test_bus_config_env_selects_file(tmp_path: Path) -> None:
    p = tmp_path / "other.toml"
    p.write_text('[detector]\nmodel = "short_range"\n')
    assert load(env={"BUS_CONFIG": str(p)}).detector.model == "short_range"


@pytest.mark.parametrize(
    ("text", "match"), [("[bus\n", "not valid TOML"), ("[bus]\nx = 1\n", r"\[bus\] unknown key 'x'")]
)
def test_file_errors_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load(p, env={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load("/nonexistent/bus.toml", env={})


def test_camera_index_may_be_an_integer() -> None:
    assert parse({"capture": {"sources": [{"uri": 0}]}}).capture.sources[0].uri == "0"


@pytest.mark.parametrize("slots", [0, 2, 16, 1024])
def test_shm_slots_zero_or_a_ring_size(slots: int) -> None:
    assert parse({"bus": {"shm_slots": slots}}).bus.shm_slots == slots
