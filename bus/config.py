"""Typed, strict configuration: ``bus.toml`` -> frozen dataclasses.

Where the config comes from: ``BUS_CONFIG=path`` if set, else ``./bus.toml`` if present, else the
built-in defaults (every endpoint on loopback). Environment overrides for the common cases:
``SOURCE`` (camera index, file, folder or URL: replaces the capture sources with that one) and
``EVENTS`` (path: turns on the JSON-lines events sink).

Relative paths (models, sources, events, video, keys) written in a config file are relative to that
file's folder; defaults are relative to the shipped files (:mod:`bus.paths`), never to the current
folder. ``SOURCE`` / ``EVENTS`` / ``VIDEO`` are the user's, relative to the current folder.

Unknown sections or keys, wrong types, numbers out of range (the :class:`Range` in each number field's annotation)
and miswired endpoints raise :class:`ConfigError` naming the section and key, so a stage fails at
start-up with one clear line.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from bus import paths

LOOPBACK = ("127.", "localhost", "[::1]", "::1")
SMOOTHING = ("ema", "window", "off")


class ConfigError(ValueError):
    """Invalid configuration; the message names the section and key."""


@dataclass(frozen=True)
class Range:
    """The interval a number of the config must lie in, carried by its field's annotation
    (``Annotated[int, Range(1, 100_000)]``) and checked at start-up. Closed unless an end is marked open.
    Upper bounds are far beyond any sensible value; they keep e.g. ``send_timeout_ms`` inside what
    ZeroMQ's int options take (10**12 raised OverflowError in the stages, which then hung)."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below  # False for NaN

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class SourceConfig:
    uri: str = "0"  # camera index, video/image file, folder of images, or stream URL
    id: str = ""  # defaults to "src<index>"
    loop: bool = False
    realtime: bool = True  # files: pace at their own fps (true) or as fast as the pipeline takes them
    # folders / images / override: frames per second (0 = the file's own, or 30)
    fps: Annotated[float, Range(0, 1000)] = 0.0
    width: Annotated[int, Range(0, 8192)] = 0  # cameras: requested capture size (0 = driver default)
    height: Annotated[int, Range(0, 8192)] = 0


@dataclass(frozen=True)
class BusConfig:
    hwm: Annotated[int, Range(1, 100_000)] = 4  # high-water mark (messages) on every socket: small, for latency
    # a blocking send gives up (and counts a drop) after this
    send_timeout_ms: Annotated[int, Range(1, 3_600_000)] = 1000
    max_age_ms: Annotated[int, Range(0, 3_600_000)] = 500  # live frames older than this are dropped (0 = never)
    stats_interval_s: Annotated[float, Range(0.1, 86_400)] = 5.0
    jpeg_quality: Annotated[int, Range(0, 100)] = 0  # >0: frames travel as JPEG (for other hosts); 0: raw pixels
    # frames per source in a shared-memory ring (bus.shm); 0 = pixels in the messages; and not 1 (validate)
    shm_slots: Annotated[int, Range(0, 1024)] = 16
    # at most this many bytes per ring (fewer slots for big frames; bus.shm)
    shm_max_bytes: Annotated[int, Range(1 << 20, 1 << 40)] = 256 << 20
    # capture downscales larger frames to this many pixels (counted)
    max_frame_pixels: Annotated[int, Range(1, 8192 * 8192)] = 4096 * 4096
    allow_remote: bool = False  # must be true to bind anything but loopback
    curve: bool = False  # CURVE encryption + authentication on every socket (see bus.sockets)
    keys_dir: str = "keys"  # curve: <stage>.key_secret, peers' <stage>.key, allowed/*.key (python -m bus.keys)


@dataclass(frozen=True)
class CaptureConfig:
    sources: tuple[SourceConfig, ...] = (SourceConfig(),)
    # after end of file, stay up this long so downstream can drain
    eof_linger_s: Annotated[float, Range(0, 86_400)] = 60.0
    # live source lost: first wait before reopening it (doubles per failed try)
    reconnect_s: Annotated[float, Range(0, 3600, lo_open=True)] = 1.0
    # longest wait between reopening tries (a live source is retried forever)
    reconnect_max_s: Annotated[float, Range(0, 3600, lo_open=True)] = 30.0


@dataclass(frozen=True)
class DetectorConfig:
    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5601",)  # one per detector copy (--instance)
    model: str = "full_range"  # "full_range" | "short_range" | path to a .tflite
    min_confidence: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 0.6
    backend: str = "litert"  # "litert": BlazeFace on LiteRT (detector/blazeface.py) | "mediapipe": MediaPipe Tasks
    max_faces: Annotated[int, Range(1, 256)] = 32  # bus.codec.MAX_FACES
    align: bool = True  # rotate each crop so the eyes are level (BlazeFace eye keypoints)
    # crops and faces to the classifier, the frame straight to the display (which joins them); false: one
    # path, every frame through the classifier (docs/pipeline.md#two-paths)
    two_paths: bool = True


@dataclass(frozen=True)
class ClassifierConfig:
    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5602",)
    model: str = "models/fer2013_emonet.tflite"
    threads: Annotated[int, Range(1, 256)] = 1
    # a face whose top (calibrated) probability is lower is flagged uncertain; 0 = never uncertain
    uncertain_below: Annotated[float, Range(0, 1)] = 0.45


@dataclass(frozen=True)
class DisplayConfig:
    endpoint: str = "tcp://127.0.0.1:5603"
    window: bool = False
    web: str = ""  # "host:port" serves the live page (e.g. "127.0.0.1:8000"); "" = off
    video: str = ""  # path of an annotated video to write; "" = off
    events: str = ""  # path of the JSON-lines events file; "" = off
    drain_timeout_s: Annotated[float, Range(0, 86_400)] = 5.0  # after every source ended, wait this long for stragglers
    exit_at_end: bool = True  # exit 0 once every file source has ended and been accounted for
    # a face continues a track when its box overlaps the track's this much (IoU)
    track_iou: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 0.3
    track_max_missed: Annotated[int, Range(0, 100_000)] = 10  # frames a track survives without its face before it ends
    # a scene cut (frame-to-frame grey difference above this, 0..255) ends every track; 0 = off
    track_cut: Annotated[float, Range(0, 255, hi_open=True)] = 12.0
    smoothing: str = "ema"  # per-track probabilities: "ema" | "window" | "off" (always off for one image)
    # ema: weight of the newest frame (0 < alpha <= 1; 1 = no smoothing)
    smoothing_alpha: Annotated[float, Range(0, 1, lo_open=True)] = 0.1
    smoothing_window: Annotated[int, Range(1, 100_000)] = 20  # window: mean over this many frames
    # a new smoothed label must lead this many frames in a row to replace the old one
    smoothing_hold: Annotated[int, Range(1, 100_000)] = 8
    # warn when a started source has sent nothing for this long (0 = off)
    stall_warn_s: Annotated[float, Range(0, 86_400)] = 5.0
    # sources with state at once; those not in [capture] are evicted least recently used
    max_sources: Annotated[int, Range(1, 100_000)] = 64
    publish: str = ""  # ZeroMQ PUB endpoint for the events records (display/publish.py); "" = off
    mqtt: str = ""  # MQTT broker "host:port" for the events records; "" = off
    mqtt_prefix: str = "emostream"  # MQTT topics: <prefix>/<src>/events, <prefix>/<src>/tracks/<id>, <prefix>/status
    mqtt_qos: Annotated[int, Range(0, 2)] = 0  # 0, 1 or 2
    # two paths: a frame waits this long for its classifier result, then is shown without emotions
    join_wait_ms: Annotated[int, Range(1, 600_000)] = 1000
    # two paths: frames and results waiting to be joined at once; the oldest is released first
    join_max_pending: Annotated[int, Range(1, 100_000)] = 64


@dataclass(frozen=True)
class Config:
    bus: BusConfig = field(default_factory=BusConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    path: str = ""  # where it was read from ("" = defaults)

    def source_ids(self) -> list[str]:
        return [s.id for s in self.capture.sources]


def ranges(cls: Any) -> dict[str, Range]:
    """The :class:`Range` of every number field of the config dataclass ``cls``, by field name."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        name: rng
        for name, hint in hints.items()
        if typing.get_origin(hint) is Annotated
        for rng in hint.__metadata__
        if isinstance(rng, Range)
    }


def check_ranges(table: Any, where: str) -> None:
    """Every number field of the dataclass ``table`` within the :class:`Range` its annotation carries."""
    for name, rng in ranges(type(table)).items():
        value = getattr(table, name)
        if value not in rng:
            raise ConfigError(f"{where} {name}: must be in {rng}, got {value!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # `uri = 0` for a camera index
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        if isinstance(value, (str, dict)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls: Any, table: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "path"}
    for key in table:
        if key not in names:
            raise ConfigError(f"[{where}] unknown key {key!r} (known: {', '.join(sorted(names))})")
    return cls(**{k: _coerce(v, hints[k], f"[{where}] {k}") for k, v in table.items()})


def parse(table: dict[str, Any], path: str = "") -> Config:
    """A TOML table -> validated Config (no environment overrides)."""
    sections = {f.name for f in dataclasses.fields(Config) if f.name != "path"}
    for key, value in table.items():
        if key not in sections:
            raise ConfigError(f"unknown section [{key}] (known: {', '.join(sorted(sections))})")
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a table")
    hints = typing.get_type_hints(Config)
    cfg = Config(path=path, **{k: _build(hints[k], v, k) for k, v in table.items()})
    return validate(cfg)


RUNTIME = "{runtime}"  # in an ipc:// endpoint: the private runtime directory (bus.runtime.runtime_dir)


def expand_runtime(cfg: Config) -> Config:
    """``ipc://{runtime}/name`` -> ``ipc://<private 0700 directory>/name`` (made and checked here, so
    an unsafe directory stops every stage at start-up with one line)."""
    eps = [*cfg.detector.endpoints, *cfg.classifier.endpoints, cfg.display.endpoint]
    if not any(RUNTIME in ep for ep in eps):
        return cfg
    from bus.runtime import RuntimeDirError, runtime_dir

    try:
        where = str(runtime_dir())
    except RuntimeDirError as e:
        raise ConfigError(f"endpoints: {e}") from None

    def sub(eps: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(ep.replace(RUNTIME, where) for ep in eps)

    return dataclasses.replace(
        cfg,
        detector=dataclasses.replace(cfg.detector, endpoints=sub(cfg.detector.endpoints)),
        classifier=dataclasses.replace(cfg.classifier, endpoints=sub(cfg.classifier.endpoints)),
        display=dataclasses.replace(cfg.display, endpoint=sub((cfg.display.endpoint,))[0]),
    )


def validate(cfg: Config) -> Config:
    """Ranges, the private runtime directory in endpoints, defaults for source ids, then cross-field
    checks (endpoints)."""
    for name in ("bus", "capture", "detector", "classifier", "display"):
        check_ranges(getattr(cfg, name), f"[{name}]")
    for i, src in enumerate(cfg.capture.sources):
        check_ranges(src, f"[capture] sources[{i}]")
    cfg = expand_runtime(cfg)
    if cfg.capture.reconnect_s > cfg.capture.reconnect_max_s:
        raise ConfigError("[capture] reconnect_s and reconnect_max_s: need reconnect_s <= reconnect_max_s")
    sources = tuple(dataclasses.replace(s, id=s.id or f"src{i}") for i, s in enumerate(cfg.capture.sources))
    if not sources:
        raise ConfigError("[capture] sources: at least one source is needed")
    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"[capture] sources: duplicate id in {ids}")
    cfg = dataclasses.replace(cfg, capture=dataclasses.replace(cfg.capture, sources=sources))
    seen: dict[str, str] = {}
    bound = [("detector", "endpoints", e) for e in cfg.detector.endpoints]
    bound += [("classifier", "endpoints", e) for e in cfg.classifier.endpoints]
    bound += [("display", "endpoint", cfg.display.endpoint)]
    bound += [("display", "publish", cfg.display.publish)] if cfg.display.publish else []
    if not cfg.detector.endpoints or not cfg.classifier.endpoints:
        raise ConfigError("[detector]/[classifier] endpoints: at least one endpoint is needed")
    for section, key, ep in bound:
        check_endpoint(ep, f"[{section}] {key}", cfg.bus.allow_remote)
        if ep in seen:
            raise ConfigError(f"[{section}] {key}: {ep} is also bound by [{seen[ep]}]")
        seen[ep] = section
    if cfg.display.web:
        host, _, port = cfg.display.web.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"[display] web: expected host:port, got {cfg.display.web!r}")
        if not cfg.bus.allow_remote and not host.startswith(LOOPBACK):
            raise ConfigError(f"[display] web: {host} is not loopback; set [bus] allow_remote = true to serve it")
    if cfg.display.mqtt:
        host, _, port = cfg.display.mqtt.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"[display] mqtt: expected host:port, got {cfg.display.mqtt!r}")
    if not cfg.display.mqtt_prefix or any(c in cfg.display.mqtt_prefix for c in "+#\0"):
        raise ConfigError(f"[display] mqtt_prefix: a topic without '+', '#' or NUL, got {cfg.display.mqtt_prefix!r}")
    if cfg.detector.model not in ("full_range", "short_range") and not cfg.detector.model.endswith(".tflite"):
        raise ConfigError(
            f"[detector] model: 'full_range', 'short_range' or a .tflite path, got {cfg.detector.model!r}"
        )
    if cfg.detector.backend not in ("litert", "mediapipe"):
        raise ConfigError(f"[detector] backend: litert or mediapipe, got {cfg.detector.backend!r}")
    d = cfg.display
    if d.smoothing not in SMOOTHING:
        raise ConfigError(f"[display] smoothing: one of {', '.join(SMOOTHING)}, got {d.smoothing!r}")
    if cfg.bus.curve and not cfg.bus.keys_dir:
        raise ConfigError("[bus] keys_dir: needed when curve = true")
    if cfg.bus.shm_slots == 1:
        raise ConfigError(f"[bus] shm_slots: 0 (off) or 2..1024, got {cfg.bus.shm_slots}")
    return cfg


def check_endpoint(ep: str, where: str, allow_remote: bool) -> None:
    scheme, sep, rest = ep.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        raise ConfigError(f"{where}: {ep!r} is not a tcp://, ipc:// or inproc:// endpoint")
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: {ep!r} needs tcp://host:port")
        if not allow_remote and not host.startswith(LOOPBACK):
            raise ConfigError(f"{where}: {ep!r} is not loopback; set [bus] allow_remote = true to bind it")


def load(path: str | os.PathLike[str] | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read the config the way every stage does, applying ``SOURCE`` / ``EVENTS`` overrides."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get("BUS_CONFIG") or ("bus.toml" if Path("bus.toml").is_file() else None)
    if path is None:
        cfg = resolve_paths(validate(Config()), {}, None)
    else:
        p = Path(path)
        try:
            table = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        try:
            cfg = resolve_paths(parse(table, str(p)), table, p.resolve().parent)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    return apply_env(cfg, env)


def resolve_paths(cfg: Config, table: dict[str, Any], folder: Path | None) -> Config:
    """Relative paths made absolute: those written in ``table`` (the file in ``folder``) against
    ``folder``, defaults against the shipped files; ``keys_dir`` always sits with the config file."""
    shipped = paths.shipped_root()

    def base(section: str, key: str) -> Path:
        written = isinstance(table.get(section), dict) and key in table[section]
        return folder if written and folder is not None else shipped

    d, c = cfg.detector, cfg.classifier
    sources = tuple(
        dataclasses.replace(s, uri=paths.resolve(s.uri, base("capture", "sources"))) if paths.is_path_uri(s.uri) else s
        for s in cfg.capture.sources
    )
    detector_model = paths.resolve(d.model, base("detector", "model")) if d.model.endswith(".tflite") else d.model
    return dataclasses.replace(
        cfg,
        bus=dataclasses.replace(
            cfg.bus, keys_dir=paths.resolve(cfg.bus.keys_dir, folder) if folder else cfg.bus.keys_dir
        ),
        capture=dataclasses.replace(cfg.capture, sources=sources),
        detector=dataclasses.replace(d, model=detector_model),
        classifier=dataclasses.replace(c, model=paths.resolve(c.model, base("classifier", "model"))),
        display=dataclasses.replace(
            cfg.display,
            video=paths.resolve(cfg.display.video, base("display", "video")),
            events=paths.resolve(cfg.display.events, base("display", "events")),
        ),
    )


def apply_env(cfg: Config, env: typing.Mapping[str, str]) -> Config:
    if env.get("SOURCE"):
        first = cfg.capture.sources[0]
        src = SourceConfig(uri=env["SOURCE"], id=first.id, loop=False, realtime=first.realtime)
        cfg = dataclasses.replace(cfg, capture=dataclasses.replace(cfg.capture, sources=(src,)))
    if env.get("EVENTS"):
        cfg = dataclasses.replace(cfg, display=dataclasses.replace(cfg.display, events=env["EVENTS"]))
    if env.get("WEB") is not None and "WEB" in env:
        cfg = dataclasses.replace(cfg, display=dataclasses.replace(cfg.display, web=env["WEB"]))
    if env.get("VIDEO"):
        cfg = dataclasses.replace(cfg, display=dataclasses.replace(cfg.display, video=env["VIDEO"]))
    return validate(cfg)


def to_table(cfg: Config) -> dict[str, Any]:
    """Config -> plain dict (for printing the effective config)."""
    d = dataclasses.asdict(cfg)
    d.pop("path")
    return d
