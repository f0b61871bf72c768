"""Strict config: unknown keys, bad types and miswired endpoints fail naming section and key."""

from __future__ import annotations

import typing
from pathlib import Path

import msgspec
import pytest

from bus.config import (
    BusConfig,
    CaptureConfig,
    ClassifierConfig,
    Config,
    ConfigError,
    DetectorConfig,
    DisplayConfig,
    SourceConfig,
    interval,
    load,
    parse,
    ranges,
    validate,
)
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
            r"^\[capture\] sources\[0\] unknown key 'speed' \(known: uri, id, loop, realtime, fps, width, height\)$",
        ),
        ({"detector": "full_range"}, r"^\[detector\]: expected a table, got 'full_range'$"),
        ({"path": "x"}, r"unknown section \[path\]"),
        ({"bus": {"hwm": 2.0}}, r"^\[bus\] hwm: expected an integer, got 2.0$"),
        ({"bus": {"curve": 1}}, r"^\[bus\] curve: expected true/false, got 1$"),
        ({"bus": {"keys_dir": ["k"]}}, r"^\[bus\] keys_dir: expected a string, got \['k'\]$"),
        ({"capture": {"sources": 5}}, r"^\[capture\] sources: expected a list, got 5$"),
        ({"capture": {"sources": [{"fps": "30"}]}}, r"^\[capture\] sources\[0\] fps: expected a number, got '30'$"),
        ({"detector": {"endpoints": [True]}}, r"^\[detector\] endpoints\[0\]: expected a string, got True$"),
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


def test_one_item_where_a_list_is_expected_is_a_list_of_it() -> None:
    cfg = parse({"capture": {"sources": {"uri": "a.mp4"}}, "detector": {"endpoints": "tcp://127.0.0.1:7001"}})
    assert [s.uri for s in cfg.capture.sources] == ["a.mp4"]
    assert cfg.detector.endpoints == ("tcp://127.0.0.1:7001",)


def test_a_config_built_in_code_is_checked_like_a_file() -> None:
    cfg = msgspec.structs.replace(Config(), bus=msgspec.structs.replace(Config().bus, hwm=0))
    with pytest.raises(ConfigError, match=r"^\[bus\] hwm: must be in \[1, 100000\], got 0$"):
        validate(cfg)


@pytest.mark.parametrize("slots", [0, 2, 16, 1024])
def test_shm_slots_zero_or_a_ring_size(slots: int) -> None:
    assert parse({"bus": {"shm_slots": slots}}).bus.shm_slots == slots


SECTIONS = (
    ("bus", BusConfig),
    ("capture", CaptureConfig),
    ("detector", DetectorConfig),
    ("classifier", ClassifierConfig),
    ("display", DisplayConfig),
)


def _default(section: str, key: str) -> float:
    cls = SourceConfig if section == "capture.sources" else dict(SECTIONS)[section]
    return getattr(cls(), key)


# Issue 11 case 12: every number is range-checked at start-up, naming section and key.
# One row per key: a value just out of range (or absurd), and the line it must give.
OUT_OF_RANGE = [
    ("bus", "hwm", 0, r"\[bus\] hwm: must be in \[1, 100000\], got 0"),
    ("bus", "send_timeout_ms", 10**12, r"\[bus\] send_timeout_ms: must be in \[1, 3600000\], got 1000000000000"),
    ("bus", "max_age_ms", -1, r"\[bus\] max_age_ms: must be in \[0, 3600000\], got -1"),
    ("bus", "stats_interval_s", 0, r"\[bus\] stats_interval_s: must be in \[0.1, 86400\], got 0.0"),
    ("bus", "jpeg_quality", -5, r"\[bus\] jpeg_quality: must be in \[0, 100\], got -5"),
    ("bus", "shm_slots", -1, r"\[bus\] shm_slots: must be in \[0, 1024\], got -1"),
    ("bus", "shm_max_bytes", 1000, r"\[bus\] shm_max_bytes: must be in \[1048576, 1099511627776\], got 1000"),
    ("bus", "max_frame_pixels", 0, r"\[bus\] max_frame_pixels: must be in \[1, 67108864\], got 0"),
    ("capture", "reconnect_s", 0, r"\[capture\] reconnect_s: must be in \(0, 3600\], got 0.0"),
    ("capture", "reconnect_max_s", 5000, r"\[capture\] reconnect_max_s: must be in \(0, 3600\], got 5000.0"),
    ("capture", "eof_linger_s", -1, r"\[capture\] eof_linger_s: must be in \[0, 86400\], got -1.0"),
    ("capture.sources", "fps", -30, r"\[capture\] sources\[0\] fps: must be in \[0, 1000\], got -30.0"),
    ("capture.sources", "width", -640, r"\[capture\] sources\[0\] width: must be in \[0, 8192\], got -640"),
    ("capture.sources", "height", 100_000, r"\[capture\] sources\[0\] height: must be in \[0, 8192\], got 100000"),
    ("detector", "min_confidence", 1.5, r"\[detector\] min_confidence: must be in \(0, 1\), got 1.5"),
    ("detector", "max_faces", -5, r"\[detector\] max_faces: must be in \[1, 256\], got -5"),
    ("classifier", "threads", -2, r"\[classifier\] threads: must be in \[1, 256\], got -2"),
    ("classifier", "uncertain_below", 1.5, r"\[classifier\] uncertain_below: must be in \[0, 1\], got 1.5"),
    ("display", "drain_timeout_s", -1, r"\[display\] drain_timeout_s: must be in \[0, 86400\], got -1.0"),
    ("display", "mqtt_qos", 3, r"\[display\] mqtt_qos: must be in \[0, 2\], got 3"),
    ("display", "max_sources", 0, r"\[display\] max_sources: must be in \[1, 100000\], got 0"),
    ("display", "track_iou", 0, r"\[display\] track_iou: must be in \(0, 1\), got 0.0"),
    ("display", "track_max_missed", -1, r"\[display\] track_max_missed: must be in \[0, 100000\], got -1"),
    ("display", "track_cut", 255, r"\[display\] track_cut: must be in \[0, 255\), got 255.0"),
    ("display", "smoothing_alpha", 0, r"\[display\] smoothing_alpha: must be in \(0, 1\], got 0.0"),
    ("display", "smoothing_window", 0, r"\[display\] smoothing_window: must be in \[1, 100000\], got 0"),
    ("display", "smoothing_hold", 0, r"\[display\] smoothing_hold: must be in \[1, 100000\], got 0"),
    ("display", "join_wait_ms", 0, r"\[display\] join_wait_ms: must be in \[1, 600000\], got 0"),
    ("display", "join_max_pending", 0, r"\[display\] join_max_pending: must be in \[1, 100000\], got 0"),
    ("display", "stall_warn_s", -0.5, r"\[display\] stall_warn_s: must be in \[0, 86400\], got -0.5"),
]


def _table(section: str, key: str, value: object) -> dict:
    if section == "capture.sources":
        return {"capture": {"sources": [{"uri": "clip.mp4", key: value}]}}
    return {section: {key: value}}


@pytest.mark.parametrize(
    ("section", "key", "value", "match"), OUT_OF_RANGE, ids=[f"{s}.{k}" for s, k, _, _ in OUT_OF_RANGE]
)
def test_numbers_out_of_range_are_refused_naming_section_and_key(
    section: str, key: str, value: object, match: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{match}$"):
        parse(_table(section, key, value))


@pytest.mark.parametrize(
    ("section", "key"), [(s, k) for s, k, _, _ in OUT_OF_RANGE if isinstance(_default(s, k), float)]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_floats_refuse_nan_and_infinity(section: str, key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{key}: must be in"):
        parse(_table(section, key, value))


def _ranges() -> dict[tuple[str, str], msgspec.Meta]:
    return {
        ("capture.sources" if cls is SourceConfig else name, key): rng
        for name, cls in (*SECTIONS, ("capture.sources", SourceConfig))
        for key, rng in ranges(cls).items()
    }


def test_every_number_of_the_schema_has_a_range_and_a_test_row() -> None:
    schema = {
        ("capture.sources" if cls is SourceConfig else name, f.name)
        for name, cls in (*SECTIONS, ("capture.sources", SourceConfig))
        for f in msgspec.structs.fields(cls)
        if (typing.get_args(f.type)[0] if typing.get_origin(f.type) is typing.Annotated else f.type) in (int, float)
    }
    assert schema == set(_ranges()), "a number without a range in its annotation (Annotated[int, msgspec.Meta(...)])"
    assert schema == {(s, k) for s, k, _, _ in OUT_OF_RANGE}, "a number without a row in OUT_OF_RANGE"


@pytest.mark.parametrize(("section", "key"), sorted(_ranges()))
def test_defaults_and_the_shipped_bus_toml_are_in_range(section: str, key: str) -> None:
    parse(_table(section, key, _default(section, key)))
    load(ROOT / "bus.toml", env={})  # every shipped value passes


@pytest.mark.parametrize(
    ("meta", "text"),
    [
        (msgspec.Meta(ge=1, le=100_000), "[1, 100000]"),
        (msgspec.Meta(gt=0, lt=1), "(0, 1)"),
        (msgspec.Meta(gt=0, le=1), "(0, 1]"),
        (msgspec.Meta(ge=0.1, lt=255), "[0.1, 255)"),
    ],
)
def test_a_range_is_written_as_an_interval(meta: msgspec.Meta, text: str) -> None:
    assert interval(meta) == text
