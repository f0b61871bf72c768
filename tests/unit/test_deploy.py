"""deploy/supervisord.conf runs what the Procfile runs, every stage under the same restart policy."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POLICY = {"autorestart": "unexpected", "exitcodes": "0,2", "startretries": "0", "stopsignal": "TERM"}


def _programs() -> dict[str, dict[str, str]]:
    conf = configparser.RawConfigParser()
    conf.read(ROOT / "deploy" / "supervisord.conf")
    return {s.removeprefix("program:"): dict(conf[s]) for s in conf.sections() if s.startswith("program:")}


def test_the_supervisord_programs_are_the_procfile_processes() -> None:
    procfile = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line and not line.startswith("#")
    )
    assert {name: p["command"] for name, p in _programs().items()} == {n: c.strip() for n, c in procfile.items()}


def test_every_stage_has_the_same_restart_policy() -> None:
    programs = _programs()
    for name, p in programs.items():
        assert {k: p[k] for k in POLICY} == POLICY, name
        assert int(p["startsecs"]) > 0, f"{name}: startsecs = 0 would restart a crash at start-up for ever"
    keys = {name: {k: v for k, v in p.items() if k not in ("command", "priority")} for name, p in programs.items()}
    assert len({tuple(sorted(k.items())) for k in keys.values()}) == 1, keys
    # sinks start first, so that a file run loses nothing at its start (and stop last)
    assert sorted(programs, key=lambda n: int(programs[n]["priority"])) == [
        "display",
        "classifier",
        "detector",
        "capture",
    ]
