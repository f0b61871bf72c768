"""bus.sockets.StageSockets: every stage's sockets from its config, and every mistake in opening
them one line and exit 2 (the commands' side is tests/integration/test_bad_inputs.py and
test_stage_cli.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec
import pytest
import zmq

from bus.config import BusConfig, CaptureConfig, ClassifierConfig, Config, DetectorConfig, DisplayConfig, SourceConfig
from bus.keys import STAGES, generate
from bus.sockets import StageSockets

pytestmark = pytest.mark.timeout(60)


def endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def config(sources: int = 1, bus: BusConfig | None = None) -> Config:
    return Config(
        bus=bus or BusConfig(),
        capture=CaptureConfig(sources=tuple(SourceConfig(uri=f"{i}.mp4", id=f"s{i}") for i in range(sources))),
        detector=DetectorConfig(endpoints=(endpoint(), endpoint())),
        classifier=ClassifierConfig(endpoints=(endpoint(),)),
        display=DisplayConfig(endpoint=endpoint()),
    )


@pytest.mark.parametrize(
    ("stage", "instance", "binds", "pushes"),
    [
        ("capture", 0, None, 3),
        ("detector", 1, "detector", 1),
        ("classifier", 0, "classifier", 1),
        ("display", 0, "display", 0),
    ],
)
def test_each_stage_gets_its_sockets_from_the_config(stage: str, instance: int, binds: str | None, pushes: int) -> None:
    cfg = config(sources=3)
    plumbing = StageSockets(stage, cfg, instance, pushes=3 if stage == "capture" else 1)
    with plumbing as socks:
        bound = {"detector": cfg.detector.endpoints[instance], "classifier": cfg.classifier.endpoints[0]}
        assert socks.bind == (None if binds is None else bound.get(binds, cfg.display.endpoint))
        assert (socks.pull is None) == (binds is None) and len(socks.push) == pushes
        assert all(s.type == zmq.PUSH for s in socks.push) and (socks.pull is None or socks.pull.type == zmq.PULL)
        opened = [*socks.push, *([socks.pull] if socks.pull is not None else [])]
    assert all(s.closed for s in opened) and plumbing.ctx is None, "closed, and the context terminated"


def test_a_taken_endpoint_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config()
    squatter = zmq.Context.instance().socket(zmq.PULL)
    squatter.bind(cfg.classifier.endpoints[0])
    try:
        plumbing = StageSockets("classifier", cfg)
        with pytest.raises(SystemExit) as e, plumbing:
            pytest.fail("entered")
    finally:
        squatter.close(0)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"classifier: cannot bind {cfg.classifier.endpoints[0]}: "), err
    assert plumbing.ctx is None, "what was opened is closed"


@pytest.mark.parametrize(("stage", "instance", "says"), [("detector", 2, "has 2 entries"), ("classifier", -1, "has 1")])
def test_a_bad_instance_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], stage: str, instance: int, says: str
) -> None:
    with pytest.raises(SystemExit) as e:
        StageSockets(stage, config(), instance)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"{stage}: --instance {instance}: [{stage}] endpoints ") and says in err


@pytest.mark.parametrize("stage", STAGES)
def test_a_missing_key_is_one_line_and_exit_2_before_anything_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    keys = tmp_path / "keys"
    generate(keys, STAGES)
    (keys / f"{stage}.key_secret").unlink()
    cfg = msgspec.structs.replace(config(), bus=BusConfig(curve=True, keys_dir=str(keys)))
    with pytest.raises(SystemExit) as e:
        StageSockets(stage, cfg)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"{stage}: ") and ".key_secret not found" in err, err


def test_with_curve_the_stages_talk(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate(keys, STAGES)
    cfg = msgspec.structs.replace(config(), bus=BusConfig(curve=True, keys_dir=str(keys)))
    with StageSockets("display", cfg) as display, StageSockets("classifier", cfg) as classifier:
        assert display.pull is not None and classifier.security is not None
        classifier.push[0].send_multipart([b"hello"])
        assert display.pull.poll(5000) and display.pull.recv_multipart() == [b"hello"]


@pytest.mark.parametrize("two_paths", [True, False])
def test_the_detector_with_two_paths_also_pushes_to_the_display(two_paths: bool) -> None:
    cfg = config()
    cfg = msgspec.structs.replace(cfg, detector=msgspec.structs.replace(cfg.detector, two_paths=two_paths))
    with StageSockets("detector", cfg) as socks:
        side = socks.side
        assert (side is not None) == two_paths and len(socks.push) == 1
        if side is not None:
            assert side.type == zmq.PUSH and side.getsockopt_string(zmq.LAST_ENDPOINT) == cfg.display.endpoint
    assert side is None or side.closed
