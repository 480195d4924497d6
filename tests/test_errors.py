"""One "first line of an error" (errors.first_line) for every message that quotes a library's error."""

from __future__ import annotations

import pytest
import torch

import lightning_ft.commands.compare
from lightning_ft.commands import main
from lightning_ft.errors import first_line


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError("\n  no such file\nsee the docs for more"), "no such file"),
        (ValueError("one line"), "one line"),
        (torch.OutOfMemoryError(), "OutOfMemoryError"),  # no message: the type says what happened
        (RuntimeError("   \n "), "RuntimeError"),
    ],
)
def test_first_line(error, expected):
    assert first_line(error) == expected


def test_an_out_of_memory_error_without_a_message_is_still_one_error_line(monkeypatch, capsys):
    """Out of memory outside a training step (no advice attached) quotes the error's first line."""

    def out_of_memory(argv):
        raise torch.OutOfMemoryError()

    monkeypatch.setattr(lightning_ft.commands.compare, "main", out_of_memory)
    assert main(["compare", "run"]) == 1
    assert capsys.readouterr().err == "error: out of memory: OutOfMemoryError\n"
