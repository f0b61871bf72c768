"""Typed, strict configuration: ``bus.toml`` -> frozen msgspec Structs.

Where the config comes from: ``BUS_CONFIG=path`` if set, else ``./bus.toml`` if present, else the
built-in defaults (every endpoint on loopback). Environment overrides for the common cases:
``SOURCE`` (camera index, file, folder or URL: replaces the capture sources with that one) and
``EVENTS`` (path: turns on the JSON-lines events sink).

Relative paths (models, sources, events, video, keys) written in a config file are relative to that
file's folder; defaults are relative to the shipped files (:mod:`bus.paths`), never to the current
folder. ``SOURCE`` / ``EVENTS`` / ``VIDEO`` are the user's, relative to the current folder.

The types are the schema: msgspec checks a table against them (``msgspec.convert(..., strict=True)``:
a bool is not a number, nor a string a number), refuses unknown sections and keys
(``forbid_unknown_fields``) and numbers outside the range in each number field's annotation
(``Annotated[int, Meta(ge=1, le=100_000)]``; NaN and infinity fail every range). A config built in
code (:func:`validate`: ``msgspec.structs.replace``, the API's arguments) is checked the same way.
Two TOML shorthands msgspec has no option for are read first (:func:`_shorthands`): one string or
table where a list is expected is that list of one, and an integer where a string is expected is its
text (``uri = 0``, a camera index). The cross-field checks (miswired endpoints and the like) follow
in :func:`validate`. Every mistake raises :class:`ConfigError`, one line naming the section and key
(msgspec's error, its path and the value written out), so a stage fails at start-up with it.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from msgspec.structs import replace

from bus import paths

LOOPBACK = ("127.", "localhost", "[::1]", "::1")
SMOOTHING = ("ema", "window", "off")


class ConfigError(ValueError):
    """Invalid configuration; the message names the section and key."""


# Every number's range is in its annotation. Upper bounds are far beyond any sensible value; they
# keep e.g. ``send_timeout_ms`` inside what ZeroMQ's int options take (10**12 raised OverflowError
# in the stages, which then hung).


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    uri: str = "0"  # camera index, video/image file, folder of images, or stream URL
    id: str = ""  # defaults to "src<index>"
    loop: bool = False
    realtime: bool = True  # files: pace at their own fps (true) or as fast as the pipeline takes them
    # folders / images / override: frames per second (0 = the file's own, or 30)
    fps: Annotated[float, Meta(ge=0, le=1000)] = 0.0
    width: Annotated[int, Meta(ge=0, le=8192)] = 0  # cameras: requested capture size (0 = driver default)
    height: Annotated[int, Meta(ge=0, le=8192)] = 0


class BusConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hwm: Annotated[int, Meta(ge=1, le=100_000)] = 4  # high-water mark (messages) on every socket: small, for latency
    # a blocking send gives up (and counts a drop) after this
    send_timeout_ms: Annotated[int, Meta(ge=1, le=3_600_000)] = 1000
    max_age_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = 500  # live frames older than this are dropped (0 = never)
    stats_interval_s: Annotated[float, Meta(ge=0.1, le=86_400)] = 5.0
    jpeg_quality: Annotated[int, Meta(ge=0, le=100)] = 0  # >0: frames travel as JPEG (for other hosts); 0: raw pixels
    # frames per source in a shared-memory ring (bus.shm); 0 = pixels in the messages; and not 1 (validate)
    shm_slots: Annotated[int, Meta(ge=0, le=1024)] = 16
    # at most this many bytes per ring (fewer slots for big frames; bus.shm)
    shm_max_bytes: Annotated[int, Meta(ge=1 << 20, le=1 << 40)] = 256 << 20
    # capture downscales larger frames to this many pixels (counted)
    max_frame_pixels: Annotated[int, Meta(ge=1, le=8192 * 8192)] = 4096 * 4096
    allow_remote: bool = False  # must be true to bind anything but loopback
    curve: bool = False  # CURVE encryption + authentication on every socket (see bus.sockets)
    keys_dir: str = "keys"  # curve: <stage>.key_secret, peers' <stage>.key, allowed/*.key (python -m bus.keys)


class CaptureConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sources: tuple[SourceConfig, ...] = (SourceConfig(),)
    # after end of file, stay up this long so downstream can drain
    eof_linger_s: Annotated[float, Meta(ge=0, le=86_400)] = 60.0
    # live source lost: first wait before reopening it (doubles per failed try)
    reconnect_s: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    # longest wait between reopening tries (a live source is retried forever)
    reconnect_max_s: Annotated[float, Meta(gt=0, le=3600)] = 30.0


class DetectorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5601",)  # one per detector copy (--instance)
    model: str = "full_range"  # "full_range" | "short_range" | path to a .tflite
    min_confidence: Annotated[float, Meta(gt=0, lt=1)] = 0.6
    backend: str = "litert"  # "litert": BlazeFace on LiteRT (detector/blazeface.py) | "mediapipe": MediaPipe Tasks
    max_faces: Annotated[int, Meta(ge=1, le=256)] = 32  # bus.codec.MAX_FACES
    align: bool = False  # rotate each crop so the eyes are level (BlazeFace eye keypoints); off: models/README.md
    # crops and faces to the classifier, the frame straight to the display (which joins them); false: one
    # path, every frame through the classifier (docs/pipeline.md#two-paths)
    two_paths: bool = True


class ClassifierConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5602",)
    model: str = "models/fer2013_emonet.tflite"
    threads: Annotated[int, Meta(ge=1, le=256)] = 1
    # a face whose top (calibrated) probability is lower is flagged uncertain; 0 = never uncertain
    uncertain_below: Annotated[float, Meta(ge=0, le=1)] = 0.45


class DisplayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    endpoint: str = "tcp://127.0.0.1:5603"
    window: bool = False
    web: str = ""  # "host:port" serves the live page (e.g. "127.0.0.1:8000"); "" = off
    video: str = ""  # path of an annotated video to write; "" = off
    events: str = ""  # path of the JSON-lines events file; "" = off
    drain_timeout_s: Annotated[float, Meta(ge=0, le=86_400)] = (
        5.0  # after every source ended, wait this long for stragglers
    )
    exit_at_end: bool = True  # exit 0 once every file source has ended and been accounted for
    # a face continues a track when its box overlaps the track's this much (IoU)
    track_iou: Annotated[float, Meta(gt=0, lt=1)] = 0.3
    track_max_missed: Annotated[int, Meta(ge=0, le=100_000)] = (
        10  # frames a track survives without its face before it ends
    )
    # a scene cut (frame-to-frame grey difference above this, 0..255) ends every track; 0 = off
    track_cut: Annotated[float, Meta(ge=0, lt=255)] = 12.0
    smoothing: str = "ema"  # per-track probabilities: "ema" | "window" | "off" (always off for one image)
    # ema: weight of the newest frame (0 < alpha <= 1; 1 = no smoothing)
    smoothing_alpha: Annotated[float, Meta(gt=0, le=1)] = 0.1
    smoothing_window: Annotated[int, Meta(ge=1, le=100_000)] = 20  # window: mean over this many frames
    # a new smoothed label must lead this many frames in a row to replace the old one
    smoothing_hold: Annotated[int, Meta(ge=1, le=100_000)] = 8
    # warn when a started source has sent nothing for this long (0 = off)
    stall_warn_s: Annotated[float, Meta(ge=0, le=86_400)] = 5.0
    # sources with state at once; those not in [capture] are evicted least recently used
    max_sources: Annotated[int, Meta(ge=1, le=100_000)] = 64
    publish: str = ""  # ZeroMQ PUB endpoint for the events records (display/publish.py); "" = off
    mqtt: str = ""  # MQTT broker "host:port" for the events records; "" = off
    mqtt_prefix: str = "emostream"  # MQTT topics: <prefix>/<src>/events, <prefix>/<src>/tracks/<id>, <prefix>/status
    mqtt_qos: Annotated[int, Meta(ge=0, le=2)] = 0  # 0, 1 or 2
    # two paths: a frame waits this long for its classifier result, then is shown without emotions
    join_wait_ms: Annotated[int, Meta(ge=1, le=600_000)] = 1000
    # two paths: frames and results waiting to be joined at once; the oldest is released first
    join_max_pending: Annotated[int, Meta(ge=1, le=100_000)] = 64

    @property
    def draws(self) -> bool:
        """A sink that draws on the frames is on (window, web page, video): the display needs their pixels."""
        return self.window or bool(self.web) or bool(self.video)


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    capture: CaptureConfig = msgspec.field(default_factory=CaptureConfig)
    detector: DetectorConfig = msgspec.field(default_factory=DetectorConfig)
    classifier: ClassifierConfig = msgspec.field(default_factory=ClassifierConfig)
    display: DisplayConfig = msgspec.field(default_factory=DisplayConfig)
    path: str = ""  # where it was read from ("" = defaults)

    def source_ids(self) -> list[str]:
        return [s.id for s in self.capture.sources]


def display_pixels(cfg: Config) -> bool:
    """Whether the frames reach the display with their pixels. On one path always (the classifier
    forwards them); on two paths to a display that draws (:attr:`DisplayConfig.draws`), and to one on
    this host (a loopback or ipc endpoint) while pixels travel in shared memory (a reference costs
    nothing to send, and the display makes the scene-cut thumbnail itself, off the detector, the
    slowest stage). Otherwise the detector sends them without, with their grey thumbnail (``thumb``)
    when ``[display] track_cut`` > 0, and the pixels go no further than the detector. Every stage
    reads the same config, so the detector and the display agree."""
    shared = cfg.bus.shm_slots > 0 and cfg.bus.jpeg_quality == 0 and on_this_host(cfg.display.endpoint)
    return not cfg.detector.two_paths or cfg.display.draws or shared


def on_this_host(ep: str) -> bool:
    """An ipc/inproc endpoint, or tcp on a loopback address."""
    scheme, _, rest = ep.partition("://")
    return scheme != "tcp" or rest.rpartition(":")[0].startswith(LOOPBACK)


def ranges(cls: Any) -> dict[str, Meta]:
    """The range (:class:`msgspec.Meta` with bounds) of every number field of the config Struct
    ``cls``, by field name."""
    return {
        f.name: meta
        for f in msgspec.structs.fields(cls)
        if typing.get_origin(f.type) is Annotated
        for meta in typing.get_args(f.type)[1:]
        if isinstance(meta, Meta) and (meta.ge, meta.gt, meta.le, meta.lt) != (None,) * 4
    }


def interval(meta: Meta) -> str:
    """A range as ``[lo, hi]``, ``(lo, hi)``, ...: a bracket is a closed end, a parenthesis an open one."""
    lo, hi = (meta.gt, "(") if meta.ge is None else (meta.ge, "[")
    up, cl = (meta.lt, ")") if meta.le is None else (meta.le, "]")
    return f"{hi}{_num(lo)}, {_num(up)}{cl}"


def _num(x: Any) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _shorthands(value: Any, tp: Any) -> Any:
    """``value`` (a TOML value for the type ``tp``) with the shorthands msgspec has no option for
    spelled out: one string or table where a list is expected -> a list of it, and an integer where
    a string is expected -> its text (``uri = 0``, a camera index). Anything else is left for
    msgspec to check."""
    tp = _base(tp)
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        items = [value] if isinstance(value, (str, dict)) else value
        return [_shorthands(v, item) for v in items] if isinstance(items, list) else items
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct) and isinstance(value, dict):
        names = {f.name for f in msgspec.structs.fields(tp)}
        return {k: _shorthands(v, _step(tp, k)) if k in names else v for k, v in value.items()}
    if tp is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}
_KINDS |= {"array": "a list", "object": "a table"}


def _explain(err: msgspec.ValidationError, table: dict[str, Any]) -> str:
    """msgspec's error as one line naming section and key (``[capture] sources[0] fps: ...``) and
    the value written (or the known keys, for an unknown one)."""
    text, _, at = str(err).partition(" - at `$")
    keys: list[str | int] = [k or int(i) for k, i in re.findall(r"\.(\w+)|\[(\d+)\]", at)]
    owner: Any = None
    tp: Any = Config
    value: Any = table
    for k in keys:  # msgspec's path, followed through the types and the table together
        owner, tp, value = tp, _step(tp, k), value[k]
    where = "".join(f"[{k}]" if isinstance(k, int) else f" {k}" for k in keys[1:])
    where = f"[{keys[0]}]{where}" if keys else ""
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", text):
        known = _known(tp)
        if not keys:
            return f"unknown section [{unknown[1]}] (known: {known})"
        return f"{where} unknown key {unknown[1]!r} (known: {known})"
    rng = ranges(owner).get(keys[-1]) if keys and isinstance(keys[-1], str) else None
    if rng is not None and type(value) in (int, _base(tp)):  # a number of the right type, out of range
        return f"{where}: must be in {interval(rng)}, got {float(value) if _base(tp) is float else value!r}"
    if wrong := re.fullmatch(r"Expected `(\w+)`, got `\w+`", text):
        return f"{where}: expected {_KINDS.get(wrong[1], wrong[1])}, got {_quote(value)}"
    return f"{where}: {text}"  # pragma: no cover - every mistake a TOML file can make is above


def _base(tp: Any) -> Any:
    """``X`` of ``Annotated[X, ...]``, else ``tp``."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _step(tp: Any, key: str | int) -> Any:
    """The type of the field ``key`` of the Struct ``tp``, or of an item of the tuple type ``tp``."""
    if isinstance(key, int):
        return typing.get_args(tp)[0]
    return {f.name: f.type for f in msgspec.structs.fields(tp)}[key]


def _known(tp: Any) -> str:
    """The keys a file may write in the Struct ``tp`` (``path`` is where the file was read from)."""
    return ", ".join(f.name for f in msgspec.structs.fields(tp) if f.name != "path")


def _quote(value: Any, limit: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _typed(table: dict[str, Any], path: str) -> Config:
    """``table`` (sections of keys) checked against the types by msgspec -> Config."""
    if "path" in table:  # a field of Config, but no section of the file
        raise ConfigError(f"unknown section [path] (known: {_known(Config)})")
    table = _shorthands(table, Config)
    try:
        return msgspec.convert({**table, "path": path}, Config, strict=True)
    except msgspec.ValidationError as e:
        raise ConfigError(_explain(e, table)) from None


def parse(table: dict[str, Any], path: str = "") -> Config:
    """A TOML table -> validated Config (no environment overrides)."""
    return _checked(_typed(table, path))


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

    return replace(
        cfg,
        detector=replace(cfg.detector, endpoints=sub(cfg.detector.endpoints)),
        classifier=replace(cfg.classifier, endpoints=sub(cfg.classifier.endpoints)),
        display=replace(cfg.display, endpoint=sub((cfg.display.endpoint,))[0]),
    )


def validate(cfg: Config) -> Config:
    """A config built or changed in code (``replace``, the API's arguments) checked as a file is:
    types and ranges by msgspec, then :func:`_checked`."""
    return _checked(_typed(to_table(cfg), cfg.path))


def _checked(cfg: Config) -> Config:
    """The private runtime directory in endpoints, defaults for source ids, then cross-field checks
    (endpoints) of a config whose types and ranges msgspec has checked."""
    cfg = expand_runtime(cfg)
    if cfg.capture.reconnect_s > cfg.capture.reconnect_max_s:
        raise ConfigError("[capture] reconnect_s and reconnect_max_s: need reconnect_s <= reconnect_max_s")
    sources = tuple(replace(s, id=s.id or f"src{i}") for i, s in enumerate(cfg.capture.sources))
    if not sources:
        raise ConfigError("[capture] sources: at least one source is needed")
    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"[capture] sources: duplicate id in {ids}")
    cfg = replace(cfg, capture=replace(cfg.capture, sources=sources))
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
        if not allow_remote and not on_this_host(ep):
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
        replace(s, uri=paths.resolve(s.uri, base("capture", "sources"))) if paths.is_path_uri(s.uri) else s
        for s in cfg.capture.sources
    )
    detector_model = paths.resolve(d.model, base("detector", "model")) if d.model.endswith(".tflite") else d.model
    return replace(
        cfg,
        bus=replace(cfg.bus, keys_dir=paths.resolve(cfg.bus.keys_dir, folder) if folder else cfg.bus.keys_dir),
        capture=replace(cfg.capture, sources=sources),
        detector=replace(d, model=detector_model),
        classifier=replace(c, model=paths.resolve(c.model, base("classifier", "model"))),
        display=replace(
            cfg.display,
            video=paths.resolve(cfg.display.video, base("display", "video")),
            events=paths.resolve(cfg.display.events, base("display", "events")),
        ),
    )


def apply_env(cfg: Config, env: typing.Mapping[str, str]) -> Config:
    if env.get("SOURCE"):
        first = cfg.capture.sources[0]
        src = SourceConfig(uri=env["SOURCE"], id=first.id, loop=False, realtime=first.realtime)
        cfg = replace(cfg, capture=replace(cfg.capture, sources=(src,)))
    if env.get("EVENTS"):
        cfg = replace(cfg, display=replace(cfg.display, events=env["EVENTS"]))
    if env.get("WEB") is not None and "WEB" in env:
        cfg = replace(cfg, display=replace(cfg.display, web=env["WEB"]))
    if env.get("VIDEO"):
        cfg = replace(cfg, display=replace(cfg.display, video=env["VIDEO"]))
    return validate(cfg)


def to_table(cfg: Config) -> dict[str, Any]:
    """Config -> plain dict (for printing the effective config)."""
    d: dict[str, Any] = msgspec.to_builtins(cfg)
    d.pop("path")
    return d
