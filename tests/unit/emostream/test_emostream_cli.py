"""The ``emostream`` command: --help for the group and every subcommand, --version, image batches."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from emostream import __version__
from emostream.cli import main

ROOT = Path(__file__).resolve().parents[3]
COMMANDS = ("run", "analyze", "train", "bench")


def test_group_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert set(COMMANDS) <= set(main.commands)  # type: ignore[attr-defined]
    for name in COMMANDS:
        assert f"  {name} " in result.output


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    result = CliRunner().invoke(main, [flag])
    assert result.exit_code == 0 and result.output.strip() == f"emostream, version {__version__}"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("run", ["--source", "--events", "--config", "PROCESSES", "honcho"]),
        ("analyze", ["SOURCES", "--out", "faces.csv", "python -m analyze"]),
    ],
)
def test_own_commands_help(command: str, expected: list[str]) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.output


@pytest.mark.parametrize(
    ("command", "expected"), [("train", ["--source", "--models-dir", "--limit"]), ("bench", ["--quick", "--only"])]
)
def test_delegated_commands_show_the_delegates_help(command: str, expected: list[str], tmp_path: Path) -> None:
    """train and bench replace the process with `python -m training` / `python -m bench`, so they run
    in a child; from another folder, to show that the stage packages are found from anywhere."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "emostream", command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for text in expected:
        assert text in done.stdout


@pytest.mark.parametrize(("source", "error"), [("0", "cameras and streams are live"), ("rtsp://h/x", "live")])
def test_analyze_refuses_live_sources(source: str, error: str) -> None:
    result = CliRunner().invoke(main, ["analyze", source])
    assert result.exit_code == 2 and error in result.output


def test_analyze_a_folder_and_a_glob_of_images(shared_data: Path, tmp_path: Path) -> None:
    images = shared_data / "media/images"
    runs = {
        "folder": [str(images / "faces")],
        "glob": [str(images / "*" / "*.jpg")],
        "files": [str(images / "faces/two_people.jpg"), str(images / "no_faces/brick.png")],
    }
    expected = {
        "folder": {"astronaut.png": 1, "biden.jpg": 1, "obama.jpg": 1, "two_people.jpg": 2},
        "glob": {"biden.jpg": 1, "obama.jpg": 1, "two_people.jpg": 2},
        "files": {"two_people.jpg": 2},
    }
    for name, sources in runs.items():
        out = tmp_path / name
        result = CliRunner().invoke(main, ["analyze", *sources, "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        with (out / "faces.csv").open() as f:
            rows = list(csv.DictReader(f))
        lines = [json.loads(x) for x in (out / "faces.jsonl").read_text().splitlines()]
        counts: dict[str, int] = {}
        for r in rows:
            counts[Path(r["path"]).name] = counts.get(Path(r["path"]).name, 0) + 1
        assert counts == expected[name], name
        assert [(x["path"], x["face"], x["label"]) for x in lines] == [
            (r["path"], int(r["face"]), r["label"]) for r in rows
        ]
        for x, r in zip(lines, rows, strict=True):
            assert set(x) == {"path", "face", "box", "score", "kp", "label", "probs", "uncertain"}  # Face.to_json
            assert x["label"] == max(x["probs"], key=x["probs"].get)
            assert sum(x["probs"].values()) == pytest.approx(1.0, abs=1e-3)
            assert x["box"] == [float(r[k]) for k in "xywh"] and len(x["kp"]) == 6  # the CSV: the same, flat
            assert r["uncertain"] == str(x["uncertain"]).lower()
    summary = CliRunner().invoke(main, ["analyze", str(images / "*" / "*"), "--out", str(tmp_path / "all"), "--quiet"])
    assert "9 image(s), 5 face(s); 5 without a face, 0 unreadable" in summary.output


def test_analyze_says_which_images_are_unreadable(tmp_path: Path, shared_data: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = shared_data / "media/images/faces/obama.jpg"
    result = CliRunner().invoke(main, ["analyze", str(good), str(bad), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 image(s), 1 face(s); 0 without a face, 1 unreadable" in result.stdout
    assert f"unreadable: {bad}" in result.stderr


def test_train_without_tensorflow_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "tensorflow" else find_spec(name))
    result = CliRunner().invoke(main, ["train", "--source", "ck"])
    assert result.exit_code == 2
    assert "needs TensorFlow: pip install 'emostream[training]'" in result.output


def test_run_hands_honcho_the_users_paths_a_run_id_and_its_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import emostream.cli as cli

    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_exec(module: str, args: list[str], env: dict[str, str] | None = None) -> None:
        calls.append((module, args, env or {}))

    monkeypatch.setattr(cli, "_exec", fake_exec)
    monkeypatch.delenv("EMOSTREAM_RUN", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.toml").write_text("")
    args = ["run", "display", "--config", "my.toml", "--source", "clips/a.mp4", "--events", "e.jsonl", "--web", ""]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ((module, argv, env),) = calls
    assert module == "honcho"
    assert argv == ["start", "-f", str(ROOT / "Procfile"), "-d", str(tmp_path), "display"]
    assert env["BUS_CONFIG"] == str(tmp_path / "my.toml")
    assert (env["SOURCE"], env["EVENTS"], env["WEB"]) == (str(tmp_path / "clips/a.mp4"), str(tmp_path / "e.jsonl"), "")
    assert len(env["EMOSTREAM_RUN"]) == 16 and env["EMOSTREAM_MANAGER_PID"] == str(os.getpid())
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    calls.clear()
    CliRunner().invoke(main, ["run", "--source", "0"], env={"EMOSTREAM_RUN": "feedfeedfeedfeed", "BUS_CONFIG": ""})
    ((_, argv, env),) = calls
    assert env["SOURCE"] == "0" and env["EMOSTREAM_RUN"] == "feedfeedfeedfeed"
    assert env["BUS_CONFIG"] == str(ROOT / "bus.toml")  # no ./bus.toml here: the shipped one
