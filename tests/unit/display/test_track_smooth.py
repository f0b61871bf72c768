"""Per-track smoothing (ema, window, off), the per-source Follow, and what tracking adds to the
events record, the overlay and the display loop."""

from __future__ import annotations

import logging

import msgspec
import numpy as np
import pytest

from bus.codec import Face, Frame, decode, encode
from bus.config import CaptureConfig, Config, ConfigError, DisplayConfig, SourceConfig, parse, validate
from bus.preprocess import thumbnail
from bus.runtime import Stats
from display.draw import annotate
from display.smooth import Smoother
from display.track import Follow, Tracked, Tracker
from display.worker import Display, event, follower, is_image_uri

LOG = logging.getLogger("test.display.track")
LABELS = ["sad", "happy"]
SAD, HAPPY = [1.0, 0.0], [0.0, 1.0]


@pytest.mark.parametrize(
    ("mode", "alpha", "window", "frames", "expected"),
    [
        ("off", 0.5, 3, [(0, SAD), (1, HAPPY)], [SAD, HAPPY]),
        ("ema", 0.5, 3, [(0, SAD), (1, HAPPY), (2, HAPPY)], [SAD, [0.5, 0.5], [0.25, 0.75]]),
        ("ema", 0.5, 3, [(0, SAD), (2, HAPPY)], [SAD, [0.25, 0.75]]),  # a gap of 2 weighs like 2 frames
        ("ema", 1.0, 3, [(0, SAD), (1, HAPPY)], [SAD, HAPPY]),  # alpha 1: no smoothing
        ("ema", 0.1, 3, [(0, SAD), (1, HAPPY), (2, HAPPY)], [SAD, [0.5, 0.5], [1 / 3, 2 / 3]]),  # young: the mean
        ("ema", 0.1, 3, [(i, SAD) for i in range(10)] + [(10, HAPPY)], [SAD] * 10 + [[0.9, 0.1]]),  # then alpha
        ("window", 0.5, 2, [(0, SAD), (1, HAPPY), (2, HAPPY)], [SAD, [0.5, 0.5], HAPPY]),
        ("window", 0.5, 3, [(0, SAD), (1, SAD), (5, HAPPY)], [SAD, SAD, HAPPY]),  # the gap empties the window
        ("ema", 0.5, 3, [(0, SAD), (1, [0.2, 0.3, 0.5])], [SAD, [0.2, 0.3, 0.5]]),  # another model: restart
        ("window", 0.5, 3, [(0, SAD), (1, [0.2, 0.3, 0.5])], [SAD, [0.2, 0.3, 0.5]]),
    ],
    ids=[
        "off",
        "ema",
        "ema-gap",
        "ema-alpha-1",
        "ema-young-track",
        "ema-after-warm-up",
        "window",
        "window-gap",
        "ema-new-shape",
        "window-new-shape",
    ],
)
def test_smoother_table(mode, alpha, window, frames, expected):
    s = Smoother(mode, alpha, window, hold=1)
    got = [s.update(7, seq, p)[0].tolist() for seq, p in frames]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(expected))


A, B, C = [0.6, 0.4, 0.0], [0.4, 0.6, 0.0], [0.3, 0.2, 0.5]


@pytest.mark.parametrize(
    ("hold", "frames", "labels"),
    [
        (1, [A, B, A, C], [0, 1, 0, 2]),  # hold 1: the arg-max of every frame
        (3, [A, B, B, A, B, B, B, A], [0, 0, 0, 0, 0, 0, 1, 1]),  # B must lead 3 frames in a row
        (2, [A, B, C, C, B], [0, 0, 0, 2, 2]),  # a new rival starts the count again
        (2, [B, A, A], [1, 1, 0]),  # the first frame's arg-max to start with
    ],
)
def test_smoothed_label_has_hysteresis(hold, frames, labels):
    s = Smoother("window", window=1, hold=hold)  # window 1: the vector is the frame, only the label is held
    assert [s.update(1, i, p)[1] for i, p in enumerate(frames)] == labels
    assert s.current(1)[1] == labels[-1]


@pytest.mark.parametrize(
    ("mode", "alpha", "window", "hold", "error"),
    [
        ("median", 0.5, 3, 1, ValueError),
        ("ema", 0.0, 3, 1, ValueError),
        ("ema", 1.5, 3, 1, ValueError),
        ("window", 0.5, 0, 1, ValueError),
        ("ema", 0.5, 3, 0, ValueError),
    ],
)
def test_smoother_rejects_bad_parameters(mode, alpha, window, hold, error):
    with pytest.raises(error):
        Smoother(mode, alpha, window, hold)


@pytest.mark.parametrize("mode", ["ema", "window"])
def test_smoother_keeps_tracks_apart_and_forgets_ended_ones(mode):
    s = Smoother(mode, 0.5, 4)
    s.update(1, 0, SAD)
    s.update(2, 0, HAPPY)
    assert s.current(1)[0].tolist() == SAD and s.current(2)[0].tolist() == HAPPY
    s.retain({2})
    assert s.current(1) is None and s.current(2) is not None


def test_smoothing_reduces_label_flicker():
    """Noisy frames around a steady 'happy': the raw arg-max flips often, the smoothed one rarely."""
    rng = np.random.default_rng(0)
    probs = np.clip(np.array([0.42, 0.58]) + rng.normal(0, 0.12, (300, 1)) * [1, -1], 0, 1)
    raw = np.argmax(probs, axis=1)
    for hold in (1, 5):
        s = Smoother("ema", 0.1, hold=hold)
        smoothed = np.array([s.update(1, i, p)[1] for i, p in enumerate(probs)])
        raw_changes, smoothed_changes = np.count_nonzero(np.diff(raw)), np.count_nonzero(np.diff(smoothed))
        assert raw_changes > 50 and smoothed_changes * 10 <= raw_changes
        assert np.mean(smoothed == 1) > 0.95


def face(x: float, probs: list[float] | None = None, label: str | None = None) -> Face:
    return Face((x, 10.0, 40.0, 40.0), 0.9, [], label, probs)


def test_follow_gives_ids_smoothed_probs_and_labels():
    f = Follow(Tracker(0.3, 2), Smoother("ema", 0.5, 3, hold=1))
    assert f.faces(0, [face(0, SAD, "sad"), face(200, HAPPY, "happy")], LABELS) == [
        Tracked(1, SAD, "sad"),
        Tracked(2, HAPPY, "happy"),
    ]
    got = f.faces(1, [face(205, SAD, "sad"), face(3, HAPPY, "happy")], LABELS)
    assert got == [Tracked(2, [0.5, 0.5], "sad"), Tracked(1, [0.5, 0.5], "sad")]  # hold 1: arg-max, ties to the first
    got = f.faces(2, [face(6, HAPPY, "happy")], LABELS)
    assert got == [Tracked(1, [0.25, 0.75], "happy")]


def test_follow_late_frames_and_unclassified_faces():
    f = Follow(Tracker(0.3, 2), Smoother("ema", 0.5, 3, hold=1))
    f.faces(0, [face(0, SAD, "sad")], LABELS)
    f.faces(2, [face(2, HAPPY, "happy")], LABELS)  # smoothed [0.25, 0.75] (gap of 2)
    late = f.faces(1, [face(1, SAD, "sad"), face(300, SAD, "sad")], LABELS)
    assert late[0] == Tracked(1, [0.25, 0.75], "happy")  # the track's current value, unchanged
    assert late[1] == Tracked(None, SAD, "sad")  # no track: the raw probabilities
    assert f.faces(1, [face(1)], LABELS) == [Tracked(1)]  # unclassified: an id, nothing to smooth
    assert f.smoother.current(1)[0].tolist() == [0.25, 0.75]


def test_follow_ends_every_track_at_a_scene_cut():
    f = Follow(Tracker(0.3, 2), Smoother("off"), cut=12.0)
    dark, dim, bright = (np.full((48, 64, 3), v, np.uint8) for v in (20, 28, 200))
    frames = [(dark, [face(0), face(100)]), (dim, [face(1), face(101)]), (bright, [face(2)]), (bright, [face(3)])]
    thumbs = [(thumbnail(img), faces) for img, faces in frames]
    assert [[t.track for t in f.faces(i, faces, LABELS, th)] for i, (th, faces) in enumerate(thumbs)] == [
        [1, 2],
        [1, 2],  # a small change (8 grey levels): the same shot
        [3],  # a cut: the face at the same place is someone else
        [3],
    ]
    assert list(f.cuts) == [2]


@pytest.mark.parametrize(("cut", "thumb"), [(0.0, np.full((48, 64), 255, np.uint8)), (12.0, None)])
def test_no_cut_detection_when_off_or_without_a_thumbnail(cut, thumb):
    f = Follow(Tracker(0.3, 2), Smoother("off"), cut=cut)
    f.faces(0, [face(0)], LABELS, np.zeros((48, 64), np.uint8))
    assert f.faces(1, [face(1)], LABELS, thumb)[0].track == 1 and not f.cuts


def shots() -> list[np.ndarray]:
    """Synthetic VGA frames: a shot of a horizontal gradient that drifts a little (with noise),
    then a cut to a shot of bright discs on a dark ground, which drift too."""
    rng = np.random.default_rng(3)
    ramp = np.tile(np.linspace(30, 220, 640)[None, :], (480, 1))
    yy, xx = np.mgrid[:480, :640]
    discs = np.where(((xx % 160) - 80) ** 2 + ((yy % 160) - 80) ** 2 < 50**2, 230.0, 25.0)
    out = []
    for scene in (ramp, discs):
        for i in range(4):
            grey = np.roll(scene, 2 * i, axis=1) + rng.normal(0, 4, scene.shape)
            out.append(np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))
    return out


def test_a_cut_is_found_the_same_from_the_detectors_thumbnail_as_from_the_pixels():
    """The display's scene cuts and track ids from frames with pixels, and from frames without,
    carrying the thumbnail the detector made (two paths, a display that draws nothing)."""
    frames = shots()
    cfg = Config(capture=CaptureConfig(sources=(SourceConfig(uri="clip.mp4", id="s0"),)))
    seen = {}
    for how in ("pixels", "thumbnail"):
        disp = Display(cfg, [], Stats(logging.getLogger("t"), 1e9), logging.getLogger("t"))
        for seq, img in enumerate(frames):
            kw = {"pixels": img} if how == "pixels" else {"thumb": thumbnail(img)}
            msg = Frame("s0", seq, 1.0, faces=[face(100)], labels=list(LABELS), **kw)
            parts = [bytes(p) for p in encode(msg)]
            assert decode(parts).pixels is None or how == "pixels"
            disp.handle(parts, 0.0)
        assert disp.carried[how] == len(frames)  # every frame shown, each with what it brought
        seen[how] = list(disp.follow["s0"].cuts), disp.follow["s0"].tracker.next_id
    assert seen["pixels"] == ([4], 3)  # the one cut, between the shots: a second track
    assert seen["thumbnail"] == seen["pixels"]


def test_follow_names_labels_by_index_when_the_labels_do_not_fit():
    f = Follow(Tracker(0.3, 2), Smoother("off"))
    assert f.faces(0, [face(0, [0.1, 0.2, 0.7], "x")], LABELS) == [Tracked(1, [0.1, 0.2, 0.7], "2")]


def test_event_record_with_tracking():
    msg = Frame(src="cam0", seq=3, ts=100.0, faces=[face(0, [0.25, 0.75], "happy"), face(200)], labels=LABELS)
    rec = event(msg, 100.5, [Tracked(4, [0.6, 0.4], "sad"), Tracked(5)])
    assert rec["faces"][0] == {
        "box": [0.0, 10.0, 40.0, 40.0],
        "score": 0.9,
        "kp": [],
        "label": "happy",
        "probs": {"sad": 0.25, "happy": 0.75},
        "uncertain": False,
        "track": 4,
        "smoothed": {"sad": 0.6, "happy": 0.4},
        "smoothed_label": "sad",
        "smoothed_uncertain": False,
    }
    assert rec["faces"][1]["track"] == 5 and rec["faces"][1]["smoothed"] == {}
    assert rec["faces"][1]["smoothed_label"] is None


def test_overlay_shows_the_track_and_the_smoothed_label():
    image = np.zeros((120, 200, 3), np.uint8)
    faces = [Face((20, 30, 100, 100), 0.9, [], "happy", [0.1, 0.9])]
    raw = annotate(image, faces, LABELS)
    tracked = annotate(image, faces, LABELS, [Tracked(12, [0.8, 0.2], "sad")])
    assert not np.array_equal(raw, tracked)
    sad_bgr = np.array([200, 110, 30])  # draw.COLOURS["sad"]: the box takes the smoothed label's colour
    assert (tracked[30, 60] == sad_bgr).all() and not (raw[30, 60] == sad_bgr).all()
    untracked = annotate(image, faces, LABELS, [Tracked(None)])
    assert (untracked[30, 60] == raw[30, 60]).all()


def config(uri: str, **display) -> Config:
    cfg = Config()
    return validate(
        msgspec.structs.replace(
            cfg,
            capture=msgspec.structs.replace(cfg.capture, sources=(SourceConfig(uri=uri, id="s0"),)),
            display=msgspec.structs.replace(cfg.display, **display),
        )
    )


class Rec:
    name, wants_image = "rec", False

    def __init__(self):
        self.events = []

    def write(self, msg, image, event):
        self.events.append(event)

    def close(self):
        pass


@pytest.mark.parametrize(
    ("uri", "smoothing", "expected_second"),
    [
        ("clip.mp4", "ema", {"sad": 0.5, "happy": 0.5}),
        ("clip.mp4", "off", {"sad": 0.0, "happy": 1.0}),
        ("photo.JPG", "ema", {"sad": 0.0, "happy": 1.0}),  # a single image: never smoothed
    ],
)
def test_display_tracks_and_smooths_per_source(uri, smoothing, expected_second):
    sink = Rec()
    d = Display(config(uri, smoothing=smoothing, smoothing_alpha=0.5), [sink], Stats(LOG, 60.0), LOG)
    for seq, probs in enumerate([SAD, HAPPY]):
        msg = Frame(src="s0", seq=seq, ts=1.0, faces=[face(seq, probs, "x")], labels=LABELS)
        d.handle(encode(msg), 0.0)
    msg = Frame(src="other", seq=0, ts=1.0, faces=[face(300, SAD, "sad")], labels=LABELS)
    d.handle(encode(msg), 0.0)
    assert [e["faces"][0]["track"] for e in sink.events] == [1, 1, 1]  # ids are per source
    assert sink.events[1]["faces"][0]["smoothed"] == expected_second


@pytest.mark.parametrize(
    ("uri", "image"),
    [("a.png", True), ("dir/b.jpeg", True), ("clip.mp4", False), ("0", False), ("http://x/y.jpg", False)],
)
def test_is_image_uri(uri, image):
    assert is_image_uri(uri) is image


def test_follower_uses_the_display_config():
    cfg = config("a.mp4", smoothing="window", smoothing_window=4, smoothing_hold=2, track_iou=0.5, track_max_missed=3)
    f = follower(cfg.display)
    assert (f.smoother.mode, f.smoother.window, f.smoother.hold) == ("window", 4, 2)
    assert (f.tracker.iou_min, f.tracker.max_missed) == (0.5, 3)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        (
            {
                "smoothing": "ema",
                "smoothing_alpha": 0.3,
                "smoothing_window": 5,
                "track_iou": 0.4,
                "track_max_missed": 0,
            },
            None,
        ),
        ({"smoothing": "median"}, "smoothing"),
        ({"smoothing_alpha": 0.0}, "smoothing_alpha"),
        ({"smoothing_alpha": 1.5}, "smoothing_alpha"),
        ({"smoothing_window": 0}, "smoothing_window"),
        ({"smoothing_hold": 0}, "smoothing_hold"),
        ({"track_max_missed": -1}, "track_max_missed"),
        ({"track_iou": 1.0}, "track_iou"),
        ({"track_cut": -1.0}, "track_cut"),
        ({"track_cut": 255}, "track_cut"),
        ({"track_iou": "high"}, "track_iou"),
    ],
)
def test_display_config_keys(table, error):
    if error is None:
        d = parse({"display": table}).display
        assert (d.smoothing, d.smoothing_alpha, d.track_max_missed) == ("ema", 0.3, 0)
    else:
        with pytest.raises(ConfigError, match=error):
            parse({"display": table})


def test_display_config_defaults_smooth_with_ema():
    d = Config().display
    assert (d.smoothing, d.smoothing_alpha, d.smoothing_hold, d.track_iou) == ("ema", 0.1, 8, 0.3)


def test_the_library_defaults_are_the_config_defaults() -> None:
    """Smoother() and Tracker() behave as an empty [display] section says (one place for each default)."""
    d = DisplayConfig()
    s, t = Smoother(), Tracker()
    assert (s.mode, s.alpha, s.window, s.hold) == (d.smoothing, d.smoothing_alpha, d.smoothing_window, d.smoothing_hold)
    assert (t.iou_min, t.max_missed) == (d.track_iou, d.track_max_missed)
