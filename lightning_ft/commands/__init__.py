"""`lightning-ft <command>`: one module per command in this package, each with a `main(argv)`.

This is the one place where a command's failure becomes what the user sees: a user mistake is one `error: ...` line
on stderr and exit status 2, a stop on a signal exits 75 once the checkpoint is saved, out of memory is one line
with advice and exit status 1; anything else is a bug and keeps its traceback. `--debug` (or LIGHTNING_FT_DEBUG=1)
shows the traceback of user mistakes too.

A command's module is imported only when it runs, so `lightning-ft --help` and the light commands do not pay for
importing torch, Lightning and transformers.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys

from lightning_ft.console import quiet_known_noise
from lightning_ft.errors import UserError, find_cause, first_line
from lightning_ft.interrupts import ctrl_c_is_never_lost

PREEMPTED_EXIT_STATUS = 75  # sysexits' EX_TEMPFAIL: stopped early on purpose, resumable; not a success
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as shells report a Ctrl-C

# Command -> module of this package. fit / validate / test / predict are Lightning's own (LightningCLI).
COMMANDS = {
    "fit": "fit",
    "validate": "fit",
    "test": "fit",
    "predict": "fit",
    "data": "data",
    "cv": "cv",
    "eval": "eval",
    "human-eval": "human_eval",
    "bench-inference": "bench_inference",
    "export": "export",
    "prune": "prune",
    "consolidate": "consolidate",
    "slurm": "slurm",
    "sweep": "sweep",
    "compare": "compare",
    "monitor": "monitor",
    "serve": "serve",
    "models": "models",
    "lr-find": "lr_find",
    "batch-size-find": "batch_size_find",
}
LIGHTNING_COMMANDS = {
    "fit": "train (and validate) a model",
    "validate": "one pass over the validation data",
    "test": "one pass over the test data",
    "predict": "predictions on the data",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LIGHTNING_FT_DEBUG") == "1"
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(
            f"error: unknown command '{name}' (commands: {', '.join(COMMANDS)}; see lightning-ft --help)",
            file=sys.stderr,
        )
        return 2
    quiet_known_noise()
    try:
        with ctrl_c_is_never_lost():
            return run(name, argv, debug)
    except KeyboardInterrupt:  # outside training (reading or tokenizing data, loading a model): nothing to save
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_STATUS


def run(name: str, argv: list[str], debug: bool) -> int:
    from jsonargparse import ArgumentError

    from lightning_ft.commands.parsing import explain, is_user_error

    module = importlib.import_module(f"lightning_ft.commands.{COMMANDS[name]}")
    try:
        module.main(argv if COMMANDS[name] == "fit" else argv[1:])
    except SystemExit as stop:  # --help, --print_config: the parser has printed what was asked
        if interrupted(stop):  # Lightning turns a Ctrl-C outside training (preparing data) into exit(1)
            raise KeyboardInterrupt from None
        return stop.code if isinstance(stop.code, int) else 0
    except (UserError, ArgumentError) as err:
        if debug:
            raise
        print(f"error: {explain(err, argv)}", file=sys.stderr)
        return 2
    except Exception as err:
        from lightning_ft.callbacks.preemption import Preempted  # the callback has said where it saved

        if isinstance(err, Preempted):
            return PREEMPTED_EXIT_STATUS
        if debug:
            raise
        if interrupted(err):  # a library's clean-up failed over a Ctrl-C (a process pool's, on its way out)
            raise KeyboardInterrupt from None
        cause = find_cause(err, lambda e: isinstance(e, UserError))
        if cause is not None:  # our own check, run inside a library (jsonargparse instantiating a method)
            print(f"error: {explain(cause, argv)}", file=sys.stderr)
            return 2
        if is_user_error(err):  # Lightning's own flag and config errors
            print(f"error: {explain(err, argv)}", file=sys.stderr)
            return 2
        from lightning_ft.files import storage_error

        full = storage_error(err)
        if full is not None:  # a folder a library made or wrote in itself (the run dir, a logger's)
            print(f"error: cannot write {full.filename or 'the output'}: {full.strerror}", file=sys.stderr)
            return 1
        lost = getattr(err, "lost_peer", None)  # a collective failed: PeerWatch named the process behind it
        if lost:
            print(f"error: {lost} (the last checkpoint stays: rerun to resume)", file=sys.stderr)
            return 1
        from lightning_ft.callbacks.guard import is_out_of_memory

        if not is_out_of_memory(err):
            raise
        advice = (getattr(err, "__notes__", None) or [f"out of memory: {first_line(err)}"])[-1]
        print(f"error: {advice}", file=sys.stderr)
        return 1
    return 0


def interrupted(err: BaseException) -> bool:
    return find_cause(err, lambda cause: isinstance(cause, KeyboardInterrupt)) is not None


def overview() -> str:
    """`lightning-ft --help`: every command with the first line of its module's docstring (read, not imported)."""
    lines = ["usage: lightning-ft COMMAND [options]   (lightning-ft COMMAND --help for its options)", "", "commands:"]
    width = max(map(len, COMMANDS))
    for name, module in COMMANDS.items():
        summary = LIGHTNING_COMMANDS.get(name) or docstring_summary(f"lightning_ft.commands.{module}")
        lines.append(f"  {name:<{width}}  {summary}")
    lines += ["", "--debug (or LIGHTNING_FT_DEBUG=1) shows the traceback of an error instead of its one line."]
    return "\n".join(lines)


def docstring_summary(module: str) -> str:
    spec = importlib.util.find_spec(module)
    with open(spec.origin, encoding="utf-8") as source:
        docstring = ast.get_docstring(ast.parse(source.read())) or ""
    return docstring.split("\n", 1)[0].split(": ", 1)[-1]
