"""Every `lightning-ft` command parses and fails one way: `--help` works, and a mistake is one `error:` line."""

from __future__ import annotations

import re

import pytest

from lightning_ft.commands import COMMANDS, overview

# A command line that reaches each command's parser (human-eval and slurm have subcommands).
PARSED = {name: [name] for name in COMMANDS} | {"human-eval": ["human-eval", "report"], "slurm": ["slurm", "submit"]}
PARSED |= {"monitor": ["monitor", "report"]}


def test_the_overview_lists_every_command(cli, capsys):
    assert cli(["--help"]) == 0
    listed = capsys.readouterr().out
    assert listed == overview() + "\n"
    assert all(f"\n  {name} " in listed for name in COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_prints_the_command_s_own_usage(cli, capsys, name):
    assert cli([*PARSED[name], "--help"]) == 0
    assert re.match(rf"usage: lightning-ft (\[options\] )?{PARSED[name][0]}\b", capsys.readouterr().out)


@pytest.mark.parametrize("name", COMMANDS)
def test_an_unknown_flag_is_one_error_line(cli, capsys, name):
    assert cli([*PARSED[name], "--no-such-flag", "1"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--no-such-flag" in lines[0], captured.err
    assert "Traceback" not in captured.out + captured.err


def test_an_unknown_command_is_one_error_line(cli, capsys):
    assert cli(["fti"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'fti' (commands: fit, validate,")
