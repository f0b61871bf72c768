"""The bench's pure parts: figures, config, /proc parsing, profile summaries, per-stage sums."""

from __future__ import annotations

import os
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from bench import figures
from bench.__main__ import ratio
from bench.hop import hop, one_way
from bench.pipeline import Setup, _by_stage, _hops, config, endpoints
from bench.procs import CLK_TCK, parse_stat_cpu, parse_vm_hwm_mb, parse_vm_rss_mb, rss_mb
from bench.profile import OTHER, category, summarise
from bench.report import tables
from bus.config import parse
from bus.runtime import alive
from emostream.launch import toml_text


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {"p50": None, "p95": None, "p99": None}),
        ([5.0], {"p50": 5.0, "p95": 5.0, "p99": 5.0}),
        (list(range(1, 101)), {"p50": 50.5, "p95": 95.0, "p99": 99.0}),
    ],
)
def test_percentiles(values: list[float], expected: dict[str, float | None]) -> None:
    assert figures.percentiles(values) == expected


@pytest.mark.parametrize(("frames", "cut"), [(2, 1), (20, 10), (60, 10), (1000, 50), (3000, 100), (100000, 100)])
def test_warmup_cut(frames: int, cut: int) -> None:
    assert figures.warmup(frames) == cut


STATS_OK = (
    "2026-01-01 10:00:00,000 detector[0] INFO final stats: fps 12.0  latency p50 3.1 ms p95 9.9 ms  frames 61  drops 0"
)
STATS_DROPS = "x capture INFO final stats: fps 1.0  latency p50 nan ms p95 nan ms  frames 78  drops send=1 stale=12"


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("", None),
        ("no stats here\n", None),
        (STATS_OK + "\n", {"frames": 61, "drops": {}}),
        (STATS_DROPS, {"frames": 78, "drops": {"send": 1, "stale": 12}}),
        (STATS_DROPS + "\n" + STATS_OK + "\n", {"frames": 61, "drops": {}}),  # the last line wins
    ],
)
def test_final_stats(log: str, expected: dict[str, object] | None) -> None:
    assert figures.final_stats(log) == expected


@pytest.mark.parametrize(
    ("setup", "realtime"),
    [
        (Setup("a", (Path("/v/a.mp4"),), 60), False),
        (Setup("b", (Path("/v/a.mp4"), Path("/v/b.gif")), 60, "short_range", 2, 2, fps=30.0), True),
        (Setup("c", (Path("/v/a.mp4"),), 60, detectors=2, transport="ipc"), False),
    ],
)
def test_config_is_a_valid_bus_toml(setup: Setup, realtime: bool, tmp_path: Path) -> None:
    eps = endpoints(setup, tmp_path)
    cfg = parse(tomllib.loads(toml_text(config(setup, eps))))
    assert len(cfg.detector.endpoints) == setup.detectors and len(cfg.classifier.endpoints) == setup.classifiers
    assert all(e.startswith(f"{setup.transport}://") for e in (*cfg.detector.endpoints, cfg.display.endpoint))
    assert cfg.display.endpoint == eps["display"][0] and cfg.display.web == ""
    assert cfg.detector.model == setup.model
    assert [s.uri for s in cfg.capture.sources] == [str(c) for c in setup.clips]
    assert all(s.loop and s.realtime == realtime for s in cfg.capture.sources)
    assert len(set(cfg.source_ids())) == len(setup.clips)


def test_endpoints_reject_an_unknown_transport(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transport"):
        endpoints(Setup("x", (Path("a.mp4"),), 60, transport="udp"), tmp_path)


@pytest.mark.parametrize(
    ("stat", "seconds"),
    [
        (f"42 (python) S 1 2 3 0 -1 0 10 0 0 0 {3 * CLK_TCK} {CLK_TCK} 0 0 20 0 9", 4.0),
        (f"42 (a ) b (c) R 1 2 3 0 -1 0 10 0 0 0 {CLK_TCK} 0 0 0 20 0 9", 1.0),  # ')' inside the name
    ],
)
def test_parse_stat_cpu(stat: str, seconds: float) -> None:
    assert parse_stat_cpu(stat) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("status", "mib"),
    [("Name:\tpython\nVmPeak:\t  999 kB\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n", 2.0), ("Name:\tx\n", None)],
)
def test_parse_vm_hwm(status: str, mib: float | None) -> None:
    assert parse_vm_hwm_mb(status) == mib


PROC_STATUS = (
    "Name:\tpython\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t42\nVmPeak:\t  999 kB\nVmSize:\t  900 kB\n"
    "VmHWM:\t  4096 kB\nVmRSS:\t    3072 kB\nRssAnon:\t  1024 kB\nThreads:\t3\n"
)


@pytest.mark.parametrize(
    ("status", "mib"),
    [
        (PROC_STATUS, 3.0),  # VmRSS, not VmHWM nor RssAnon
        ("VmRSS:\t 1536 kB\n", 1.5),
        ("Name:\tzombie\nState:\tZ (zombie)\n", None),  # a zombie has no Vm* lines
        ("", None),
    ],
)
def test_parse_vm_rss(status: str, mib: float | None) -> None:
    assert parse_vm_rss_mb(status) == mib


def test_rss_of_this_process_and_of_dead_ones() -> None:
    mine = rss_mb(os.getpid())
    assert mine is not None and mine > 1
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 3
        while alive(child.pid):  # until it has exited (a zombie: its parent, this test, has not reaped it)
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.005)
        assert rss_mb(child.pid) is None  # exited, not reaped: /proc/<pid>/status has no VmRSS
    finally:
        child.wait(5)
    assert rss_mb(child.pid) is None  # reaped: no /proc/<pid> at all
    assert rss_mb(2**22 + 12345) is None  # above pid_max: never a process


MAIN = "_run_module_as_main (<frozen runpy>:198);main (detector/__main__.py:144);run (detector/worker.py:103)"


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        (
            [MAIN, "step (detector/worker.py:56)", "detect (mediapipe/tasks/x.py:1)", "wait (threading.py:327)"],
            "mediapipe detect",
        ),
        ([MAIN, "FaceBackend._image (detector/faces.py:126)"], "BGR->RGB + mp.Image (detector)"),
        ([MAIN, "recv (bus/sockets.py:53)", "Socket.poll (zmq/sugar/socket.py:1)"], "zmq poll (waiting for input)"),
        ([MAIN, "send (bus/sockets.py:44)", "Socket.send (zmq/sugar/socket.py:713)"], "zmq send/recv"),
        ([MAIN, "decode (bus/codec.py:197)"], "codec decode"),
        ([MAIN, "Interpreter.invoke (ai_edge_litert/interpreter.py:1015)"], "litert invoke"),
        ([MAIN, "something (elsewhere.py:1)"], OTHER),
    ],
)
def test_profile_category(stack: list[str], expected: str) -> None:
    assert category(stack) == expected


def test_profile_summary_counts_the_main_thread_only() -> None:
    collapsed = "\n".join(
        [
            f"{MAIN};decode (bus/codec.py:197) 3",
            f"{MAIN};Socket.poll (zmq/sugar/socket.py:1) 1",
            "Thread._bootstrap (threading.py:1002);GarbageCollectorThread.run (zmq/utils/garbage.py:56) 50",
            "not a stack line",
        ]
    )
    got = summarise(collapsed, top=1)
    assert got["samples"] == 4
    assert got["categories"] == {"codec decode": 75.0, "zmq poll (waiting for input)": 25.0}
    assert got["top_leaves"] == [["decode (bus/codec.py:197)", 75.0]]


def test_hops() -> None:
    got = _hops({"capture": 10.0, "detector": 10.010, "classifier": 10.015}, 10.016)
    assert got == pytest.approx({"capture->detector": 10.0, "detector->classifier": 5.0, "classifier->sink": 1.0})
    assert _hops({}, 1.0) == {}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"detector[0]": 1.0, "detector[1]": 2.0, "sink": 0.5}, {"detector": 3.0, "sink": 0.5}),
        ({"detector[0]": 1.0, "detector[1]": None}, {"detector": None}),
    ],
)
def test_by_stage_sums_copies(values: dict[str, float | None], expected: dict[str, float | None]) -> None:
    assert _by_stage(values, [k for k in values if k != "sink"]) == expected


@pytest.mark.parametrize(("a", "b", "expected"), [(90.0, 100.0, 0.9), (None, 100.0, None), (50.0, 0.0, None)])
def test_ratio(a: float | None, b: float | None, expected: float | None) -> None:
    assert ratio(a, b) == expected


@pytest.mark.parametrize(("transport", "with_image"), [("tcp", True), ("ipc", False)])
def test_hop_measures_real_sockets(transport: str, with_image: bool) -> None:
    got = hop(transport, with_image, 10, shape=(48, 64, 3), chunks=2)
    assert got["transport"] == transport
    assert got["bytes"] == (48 * 64 * 3 if with_image else 0) + 48 * 48
    assert got["cpu_ms_per_msg"] >= 0 and got["wall_ms_per_msg"] > 0


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_one_way_latency_over_real_sockets(transport: str) -> None:
    assert 0 < one_way(transport, False, 10) < 1e6


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        ({}, []),
        (
            {"sequential": [{"name": "a/m", "fps": 10.0}], "pipeline": [{"name": "a/m", "error": "boom"}]},
            ["| a/m | 10.0 | boom |"],
        ),
        ({"classifier": {"batches": [{"batch": 1, "ms_per_call": 1.5, "ms_per_face": 1.5}]}}, ["| 1 | 1.50 | 1.50 |"]),
        ({"hop": {"error": "x"}, "latency": {"name": "l", "error": "y"}}, []),
    ],
)
def test_report_tables(res: dict[str, object], expected: list[str]) -> None:
    text = tables(res)
    assert all(e in text for e in expected)
    assert bool(text) == bool(expected)


STALL = {
    "name": "stall 2 s",
    "bar_ms": 25.0,
    "before_ms": {"p50": 9.0, "p99": 14.2},
    "after_max_ms": 2000.0,
    "recovery_s": 0.19,
    "late_after_resume": 20,
    "settled_ms": {"p50": 9.5, "p99": 12.0},
    "events": {"before": 120, "after": 180},
    "memory": {
        "display": {"before_mb": 100.3, "peak_mb": 105.3, "end_mb": 100.3, "growth_mb": 5.0},
        "gone": {"before_mb": None, "peak_mb": None, "end_mb": None, "growth_mb": None},
    },
}


def test_report_stall_tables() -> None:
    text = tables({"stall": STALL})
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    assert titles == ["### Stall: display SIGSTOPped, then resumed (30 fps)", "### Stall: resident memory"]
    lines = text.splitlines()
    (run,) = [line for line in lines if line.startswith("| stall 2 s |")]
    assert run == "| stall 2 s | 9.00 | 14.2 | 2000.0 | 0.190 | 9.50 | 12.0 |"
    assert "| display | 100.3 | 105.3 | 100.3 | 5.00 |" in lines
    assert "| gone | - | - | - | - |" in lines
    base = {"hop": {"error": "x"}}
    for res in (base, {**base, "stall": None}, {**base, "stall": {"name": "stall 2 s", "error": "boom"}}):
        assert "Stall:" not in tables(res)


def test_the_sink_joins_the_two_paths_as_the_display_does() -> None:
    from bench.pipeline import joined
    from bus.codec import Drop, DropReason, Face, Frame

    halves: dict = {}
    face, labelled = Face((1.0, 1.0, 5.0, 5.0)), Face((1.0, 1.0, 5.0, 5.0), label="a", probs=[1.0])
    assert joined(halves, Frame("s", 0, 1.0, faces=[face], wait=True, t={"detector": 2.0})) is None
    out = joined(halves, Frame("s", 0, 1.0, faces=[labelled], result=True, t={"classifier": 3.0}))
    assert out is not None and out.kind == "frame" and out.faces == [labelled]
    assert out.t == {"detector": 2.0, "classifier": 3.0} and halves == {}
    assert joined(halves, Drop("s", 1, 1.0, DropReason.STALE, result=True)) is None
    dropped = joined(halves, Frame("s", 1, 1.0, faces=[face], wait=True))
    assert dropped is not None and dropped.kind == "drop" and dropped.reason == "stale"
    plain = Frame("s", 2, 1.0)
    assert joined(halves, plain) is plain


def test_the_hosts_configs_place_each_stage_in_its_namespace(tmp_path: Path) -> None:
    from bench.hosts import Run, config

    one = config(Run("1 host", False, True), tmp_path / "c.mp4", tmp_path, tmp_path / "e")
    three = config(Run("3 hosts", True, False), tmp_path / "c.mp4", tmp_path, tmp_path / "e")
    assert one["display"]["endpoint"] == "tcp://127.0.0.1:5603" and one["detector"]["two_paths"] is True
    assert three["detector"]["endpoints"] == ["tcp://169.254.78.1:5601"]
    assert three["classifier"]["endpoints"] == ["tcp://169.254.78.2:5602"]
    assert three["display"]["endpoint"] == "tcp://169.254.78.3:5603"
    assert three["bus"]["curve"] is True and three["bus"]["shm_slots"] == 0 and not three["detector"]["two_paths"]
    shipped = config(Run("1 host", False, True, shm=True), tmp_path / "c.mp4", tmp_path, tmp_path / "e")
    assert shipped["bus"]["shm_slots"] == 16 and one["bus"]["shm_slots"] == 0
    drawn = config(Run("2 hosts", True, True, jpeg=85, web=True), tmp_path / "c.mp4", tmp_path, tmp_path / "e")
    assert drawn["bus"]["jpeg_quality"] == 85 and drawn["display"]["web"] == "127.0.0.1:5604"
    assert one["bus"]["jpeg_quality"] == 0 and one["display"]["web"] == ""


def test_the_hosts_rows_keep_the_reference_first_and_add_the_settings_for_hosts() -> None:
    from bench.hosts import RUNS

    names = [r.name for r in RUNS]
    assert names[0] == "1 host, shared memory (shipped settings)" and len(set(names)) == len(names) == 17
    assert names[-4:] == [
        "2 hosts, curve on, two paths, shared memory",
        "3 hosts, curve on, two paths, shared memory",
        "2 hosts, curve on, two paths, jpeg_quality 85",
        "2 hosts, curve on, two paths, jpeg_quality 85, display draws (web page)",
    ]
