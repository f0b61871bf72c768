from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from bus.cli import EXIT_START_UP, config_option, fail, instance_option


def test_fail_prints_one_line_naming_the_stage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fail("detector", "cannot bind tcp://127.0.0.1:1: Address in use")
    assert exc.value.code == EXIT_START_UP == 2
    assert capsys.readouterr().err == "detector: cannot bind tcp://127.0.0.1:1: Address in use\n"


def test_the_shared_options_parse_and_document_themselves() -> None:
    @click.command()
    @config_option
    @instance_option("classifier")
    def cmd(config_path: str | None, instance: int) -> None:
        click.echo(f"{config_path} {instance}")

    runner = CliRunner()
    assert runner.invoke(cmd, ["--config", "x.toml", "--instance", "3"]).output == "x.toml 3\n"
    assert runner.invoke(cmd, []).output == "None 0\n"
    help_text = runner.invoke(cmd, ["--help"]).output
    assert "BUS_CONFIG" in help_text and "[classifier] endpoints" in help_text
    assert runner.invoke(cmd, ["--instance", "x"]).exit_code == 2
