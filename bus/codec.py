"""The wire protocol: every message between stages is one ZeroMQ multipart message.

Frames (parts)
--------------
``[header, *buffers]``

- ``header``: a msgpack map (never pickle), at most 1 MiB. Keys:

  ========  =========================================================================
  ``v``     protocol version, int; this module speaks ``1`` and rejects others.
  ``kind``  ``"frame"`` (a picture and what is known about it), ``"drop"`` (a frame a
            stage dropped, sent on so the sink can account for it), or ``"eos"``
            (end of a source: ``frames`` read in total, ``dropped`` at capture).
  ``src``   source id, str (one per capture source, e.g. ``"cam0"``).
  ``seq``   sequence number within the source, int >= 0.
  ``ts``    capture time, float seconds since the epoch (``time.time()``).
  ``live``  bool: a live source (camera, stream) whose stale frames may be dropped.
  ``path``  the file a frame was read from, str, on frames of a folder or image source
            (absent otherwise); carried to the events record so results trace back to files.
  ``image`` absent, or ``{"shape": [h, w, c], "fmt": "bgr8" | "jpeg"}``: the next
            buffer holds the pixels (raw row-major uint8 BGR, or a JPEG file); or
            ``{"shape", "fmt": "shm", "ring": str, "slot": int, "gen": int}``: no buffer,
            the pixels are in slot ``slot`` of the shared-memory ring ``ring`` while its
            generation is ``gen`` (:mod:`bus.shm`; same host only).
  ``crops`` absent, or ``{"n": n, "size": s, "ch": c}``: the next buffer holds ``n``
            uint8 face crops ``s x s x c``, in ``faces`` order, made by
            ``bus.preprocess.crop_face`` for the classifier's model.
  ``faces`` list of maps: ``box`` [x, y, w, h] pixels, ``score`` float, ``kp`` list of
            [x, y] keypoints; after the classifier also ``label`` str, ``probs``
            list of float (in ``labels`` order, calibrated: the model's temperature
            applied) and ``uncertain`` bool (the top probability is below
            ``uncertain_below``; the label is kept).
  ``labels``  the classifier model's labels, list of str (absent before it).
  ``uncertain_below``  the classifier's threshold for ``uncertain``, float in [0, 1]
            (absent before it), so the sink can apply it to smoothed probabilities.
  ``t``     map stage -> wall time the stage sent it (for latency), optional.
  ``reason``  why a ``drop`` was dropped (str); ``frames``/``dropped`` ints on ``eos``.
  ========  =========================================================================

- buffers: ``image`` pixels first (when present), then ``crops`` (when present). Sizes are
  checked against the header; anything else raises :class:`CodecError`.

Readers ignore header keys they do not know, so a newer writer can add keys without breaking
older readers; a change of meaning bumps ``v``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import msgpack
import numpy as np

VERSION = 1
MAX_HEADER = 1 << 20
MAX_SIDE = 8192
MAX_FACES = 256
KINDS = ("frame", "drop", "eos")


class CodecError(ValueError):
    """A message that is not a valid protocol-1 message."""


@dataclass(frozen=True)
class ShmRef:
    """Where a frame's pixels are in shared memory (:mod:`bus.shm`)."""

    ring: str
    slot: int
    gen: int
    shape: tuple[int, int, int]


@dataclass
class Face:
    box: tuple[float, float, float, float]
    score: float
    kp: list[tuple[float, float]] = field(default_factory=list)
    label: str | None = None
    probs: list[float] | None = None
    uncertain: bool | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "kp": [[float(x), float(y)] for x, y in self.kp],
        }
        if self.label is not None:
            d["label"] = self.label
        if self.probs is not None:
            d["probs"] = [float(p) for p in self.probs]
        if self.uncertain is not None:
            d["uncertain"] = bool(self.uncertain)
        return d


@dataclass
class Message:
    src: str
    seq: int
    ts: float
    kind: str = "frame"
    live: bool = False
    image: np.ndarray | None = None
    jpeg: bytes | None = None  # the image as JPEG when it travels compressed
    shm: ShmRef | None = None  # the image is in shared memory (then it travels as this reference only)
    faces: list[Face] = field(default_factory=list)
    crops: np.ndarray | None = None
    labels: list[str] | None = None
    uncertain_below: float | None = None
    path: str | None = None  # the image file the frame came from (folder and image sources)
    t: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    frames: int | None = None
    dropped: int | None = None


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CodecError(f"{what}: expected a number, got {type(v).__name__}")
    return float(v)


def encode(msg: Message, jpeg_quality: int | None = None) -> list[bytes | memoryview]:
    """Message -> multipart frames. With ``jpeg_quality`` the image travels as JPEG."""
    if msg.kind not in KINDS:
        raise CodecError(f"unknown kind {msg.kind!r}")
    header: dict[str, Any] = {
        "v": VERSION,
        "kind": msg.kind,
        "src": msg.src,
        "seq": int(msg.seq),
        "ts": float(msg.ts),
        "live": bool(msg.live),
    }
    parts: list[bytes | memoryview] = []
    if msg.shm is not None:
        ref = msg.shm
        header["image"] = {"shape": list(ref.shape), "fmt": "shm", "ring": ref.ring, "slot": ref.slot, "gen": ref.gen}
    elif msg.image is not None or msg.jpeg is not None:
        if msg.image is not None:
            img = msg.image if msg.image.ndim == 3 else msg.image[:, :, None]
            shape = list(img.shape)
            if not (0 < shape[0] <= MAX_SIDE and 0 < shape[1] <= MAX_SIDE):
                raise CodecError(f"image of {shape[1]}x{shape[0]} pixels: each side must be 1..{MAX_SIDE}")
        else:
            shape = []
        if msg.jpeg is not None or jpeg_quality is not None:
            data = msg.jpeg
            if data is None:
                assert msg.image is not None and jpeg_quality is not None
                ok, buf = cv2.imencode(".jpg", msg.image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                if not ok:
                    raise CodecError("JPEG encoding failed")
                data = buf.tobytes()
            header["image"] = {"shape": shape, "fmt": "jpeg"}
            parts.append(data)
        else:
            if img.dtype != np.uint8 or img.shape[2] not in (1, 3):
                raise CodecError(f"image must be uint8 with 1 or 3 channels, got {img.dtype} {img.shape}")
            header["image"] = {"shape": shape, "fmt": "bgr8"}
            parts.append(_bytes_view(img))
    if msg.crops is not None:
        n, s, _, c = msg.crops.shape
        header["crops"] = {"n": int(n), "size": int(s), "ch": int(c)}
        parts.append(_bytes_view(np.asarray(msg.crops, dtype=np.uint8)))
    if msg.faces:
        header["faces"] = [f.to_wire() for f in msg.faces]
    for key in ("labels", "uncertain_below", "path", "reason", "frames", "dropped"):
        value = getattr(msg, key)
        if value is not None:
            header[key] = value
    if msg.t:
        header["t"] = msg.t
    return [msgpack.packb(header, use_bin_type=True), *parts]


def _bytes_view(a: np.ndarray) -> memoryview:
    """Zero-copy byte view of an array (an empty array gives an empty view)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    return memoryview(flat.view(np.uint8).data) if flat.size else memoryview(b"")  # type: ignore[arg-type]


def _faces(raw: Any) -> list[Face]:
    if not isinstance(raw, list) or len(raw) > MAX_FACES:
        raise CodecError(f"faces: expected a list of at most {MAX_FACES} maps")
    faces = []
    for i, f in enumerate(raw):
        if not isinstance(f, dict):
            raise CodecError(f"faces[{i}]: expected a map")
        box = f.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise CodecError(f"faces[{i}].box: expected [x, y, w, h]")
        kp = f.get("kp", [])
        if not isinstance(kp, list) or not all(isinstance(p, list) and len(p) == 2 for p in kp):
            raise CodecError(f"faces[{i}].kp: expected a list of [x, y]")
        probs = f.get("probs")
        if probs is not None and not isinstance(probs, list):
            raise CodecError(f"faces[{i}].probs: expected a list")
        label = f.get("label")
        if label is not None and not isinstance(label, str):
            raise CodecError(f"faces[{i}].label: expected a string")
        uncertain = f.get("uncertain")
        if uncertain is not None and not isinstance(uncertain, bool):
            raise CodecError(f"faces[{i}].uncertain: expected a bool")
        faces.append(
            Face(
                tuple(_num(v, f"faces[{i}].box") for v in box),  # type: ignore[arg-type]
                _num(f.get("score", 0.0), f"faces[{i}].score"),
                [(_num(x, "kp"), _num(y, "kp")) for x, y in kp],
                label,
                None if probs is None else [_num(p, f"faces[{i}].probs") for p in probs],
                uncertain,
            )
        )
    return faces


def decode(parts: list[bytes] | list[memoryview] | list[Any], copy_image: bool = False) -> Message:
    """Multipart frames -> Message. Raises :class:`CodecError` on anything malformed."""
    if not parts:
        raise CodecError("empty message")
    head = bytes(parts[0])
    if len(head) > MAX_HEADER:
        raise CodecError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
    try:
        h = msgpack.unpackb(
            head,
            raw=False,
            max_bin_len=0,
            max_str_len=MAX_HEADER,
            max_array_len=4096,
            max_map_len=256,
            strict_map_key=True,
        )
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise CodecError(f"header is not msgpack: {type(e).__name__}") from None
    if not isinstance(h, dict):
        raise CodecError("header is not a map")
    if h.get("v") != VERSION:
        raise CodecError(f"unsupported protocol version {h.get('v')!r}")
    kind = h.get("kind", "frame")
    if kind not in KINDS:
        raise CodecError(f"unknown kind {kind!r}")
    src, seq = h.get("src"), h.get("seq")
    if not isinstance(src, str) or not src or len(src) > 128:
        raise CodecError("src: expected a non-empty string")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise CodecError("seq: expected an int >= 0")
    msg = Message(src=src, seq=seq, ts=_num(h.get("ts"), "ts"), kind=kind, live=bool(h.get("live", False)))
    buffers = list(parts[1:])
    if isinstance(h.get("image"), dict) and h["image"].get("fmt") == "shm":
        msg.shm = _shm(h["image"])
    elif "image" in h:
        msg.image, msg.jpeg = _image(h["image"], buffers, copy_image)
    if "crops" in h:
        msg.crops = _crops(h["crops"], buffers)
    if buffers:
        raise CodecError(f"{len(buffers)} unexpected extra frame(s)")
    msg.faces = _faces(h.get("faces", []))
    if msg.crops is not None and len(msg.crops) != len(msg.faces):
        raise CodecError(f"{len(msg.crops)} crops for {len(msg.faces)} faces")
    labels = h.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise CodecError("labels: expected a list of strings")
    msg.labels = labels
    below = h.get("uncertain_below")
    if below is not None:
        below = _num(below, "uncertain_below")
        if not 0.0 <= below <= 1.0:
            raise CodecError(f"uncertain_below: {below} is not in [0, 1]")
    msg.uncertain_below = below
    t = h.get("t", {})
    if not isinstance(t, dict):
        raise CodecError("t: expected a map")
    msg.t = {str(k): _num(v, "t") for k, v in t.items()}
    path = h.get("path")
    if path is not None and not isinstance(path, str):
        raise CodecError("path: expected a string")
    msg.path = path
    reason = h.get("reason")
    msg.reason = reason if isinstance(reason, str) else None
    for key in ("frames", "dropped"):
        v = h.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise CodecError(f"{key}: expected an int >= 0")
        setattr(msg, key, v)
    return msg


def _shape(shape: Any) -> tuple[int, int, int]:
    if not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(v) for v in shape):
        raise CodecError("image.shape: expected [h, w, c]")
    hgt, wid, ch = shape
    if not (0 < hgt <= MAX_SIDE and 0 < wid <= MAX_SIDE and ch in (1, 3)):
        raise CodecError(f"image.shape {shape} out of range")
    return hgt, wid, ch


def _shm(spec: dict[str, Any]) -> ShmRef:
    ring, slot, gen = spec.get("ring"), spec.get("slot"), spec.get("gen")
    if not isinstance(ring, str) or not 0 < len(ring) <= 64:
        raise CodecError("image.ring: expected a ring name")
    if not (_is_int(slot) and _is_int(gen)) or not (0 <= slot < 4096 and 0 <= gen < 1 << 63):  # type: ignore[operator]
        raise CodecError("image.slot/gen: expected ints in range")
    return ShmRef(ring, slot, gen, _shape(spec.get("shape")))  # type: ignore[arg-type]


def drop_marker(msg: Message, reason: str) -> Message:
    """The ``drop`` marker that stands for ``msg`` downstream (it keeps the shared-memory reference,
    so that the stage where the journey ends can release the slot)."""
    return Message(
        src=msg.src, seq=msg.seq, ts=msg.ts, kind="drop", live=msg.live, reason=reason, t=dict(msg.t), shm=msg.shm
    )


def _image(spec: Any, buffers: list[Any], copy: bool) -> tuple[np.ndarray | None, bytes | None]:
    if not isinstance(spec, dict) or not buffers:
        raise CodecError("image: expected a map and a pixel frame")
    data = buffers.pop(0)
    fmt, shape = spec.get("fmt"), spec.get("shape")
    if fmt == "jpeg":
        raw = bytes(data)
        size = jpeg_size(raw)
        if size is None or not (0 < size[0] <= MAX_SIDE and 0 < size[1] <= MAX_SIDE):
            raise CodecError(f"image: not a JPEG of at most {MAX_SIDE}x{MAX_SIDE} pixels (size {size})")
        try:
            img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as e:
            raise CodecError(f"image: JPEG does not decode: {e}") from None
        if img is None:
            raise CodecError("image: JPEG does not decode")
        return img, raw
    if fmt != "bgr8":
        raise CodecError(f"image: unknown format {fmt!r}")
    hgt, wid, ch = _shape(shape)
    buf = memoryview(data)
    if buf.nbytes != hgt * wid * ch:
        raise CodecError(f"image: {buf.nbytes} bytes for shape {shape}")
    img = np.frombuffer(buf, np.uint8).reshape(hgt, wid, ch)
    return (img.copy() if copy else img), None


SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame: baseline, progressive, ...


def jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, read before decoding so that a small
    file declaring a huge picture is refused instead of allocated; None when there is none."""
    if raw[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(raw[i + 2 : i + 4], "big")
        if marker in SOF_MARKERS:
            if i + 9 > len(raw) or length < 7:
                return None
            return int.from_bytes(raw[i + 5 : i + 7], "big"), int.from_bytes(raw[i + 7 : i + 9], "big")
        if marker == 0xDA or length < 2:  # scan data before any frame header, or a broken length
            return None
        i += 2 + length
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _crops(spec: Any, buffers: list[Any]) -> np.ndarray:
    if not isinstance(spec, dict) or not buffers:
        raise CodecError("crops: expected a map and a crops frame")
    n, s, c = spec.get("n"), spec.get("size"), spec.get("ch")
    if not (_is_int(n) and _is_int(s) and _is_int(c)):
        raise CodecError("crops: n, size, ch must be ints")
    assert isinstance(n, int) and isinstance(s, int) and isinstance(c, int)
    if not (0 <= n <= MAX_FACES and 0 < s <= 512 and c in (1, 3)):
        raise CodecError(f"crops: n={n} size={s} ch={c} out of range")
    buf = memoryview(buffers.pop(0))
    if buf.nbytes != n * s * s * c:
        raise CodecError(f"crops: {buf.nbytes} bytes for {n}x{s}x{s}x{c}")
    return np.frombuffer(buf, np.uint8).reshape(n, s, s, c)
