"""How every command parses its options (jsonargparse, as LightningCLI does) and the one line a parse error becomes.

jsonargparse reports a bad value of a typed option as a multi-line tree (a Union's every alternative, the value's
Python repr); `explain` turns the common shapes into the line a user can act on, naming the flag or the --config
file (and its line) that holds the mistake.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from lightning_ft.errors import UserError

# Options whose value names a class from a registry: what a user can choose from, by short name.
REGISTRIES = {
    "model.method": ("method", "lightning_ft.methods", "METHODS"),
    "model.objective": ("objective", "lightning_ft.objectives", "OBJECTIVES"),
    "data.format": ("format", "lightning_ft.data.formats", "FORMATS"),
}

# argparse's own messages about the shape of a command line, which its --help answers.
USAGE_MISTAKE = re.compile(r"unrecognized arguments|arguments are required|invalid choice|expected (at least )?one arg")


def command_parser(command: str, doc: str) -> ArgumentParser:
    """The parser of `lightning-ft COMMAND` for the commands that take no fit configuration; its description is the
    command module's docstring."""
    description = re.sub(r"^`lightning-ft [^`]+`: ", "", doc.strip())
    return ArgumentParser(prog=f"lightning-ft {command}", description=description, exit_on_error=False)


def is_user_error(err: BaseException) -> bool:
    """Lightning's own errors about flags and configuration (raised while the trainer is set up)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(err, MisconfigurationException)


def explain(err: BaseException, argv: list[str] = ()) -> str:
    """One line for the user out of any user error (see the module docstring)."""
    text = str(err)
    if isinstance(err, UserError) or not isinstance(err, ArgumentError):
        return " ".join(text.split())
    wrapped = UserError.latest
    if wrapped and wrapped in text:  # our own check ran inside jsonargparse (a dataclass's __post_init__)
        return wrapped
    for explainer in (_yaml_syntax, _unknown_config_key, _class_option, _typed_value):
        line = explainer(text, list(argv))
        if line:
            return line
    line = " ".join(text.split())
    if USAGE_MISTAKE.search(line) and argv:
        command = argv[0] if "invalid choice" in line else help_command(argv)
        return f"{line} (see lightning-ft {command} --help)"
    return line


def help_command(argv: list[str]) -> str:
    """The command (and its subcommand, as in `human-eval report`) whose --help lists the options of argv."""
    words = [argv[0]]
    with_subcommands = ("human-eval", "slurm", "monitor", "data")  # data: `data from-feedback`
    if len(argv) > 1 and re.fullmatch(r"[a-z][a-z-]*", argv[1]) and argv[0] in with_subcommands:
        words.append(argv[1])
    return " ".join(words)


def _flag(text: str) -> str | None:
    match = re.search(r'Parser key "([^"]+)"', text)
    return match.group(1) if match else None


def _yaml_syntax(text: str, argv: list[str]) -> str | None:
    """A --config file that is not YAML: jsonargparse names it "<unicode string>"; name the file and its line."""
    if "Problems parsing config" not in text and "<unicode string>" not in text:
        return None
    for path in config_files(argv):
        try:
            yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.MarkedYAMLError as bad:
            mark = bad.problem_mark or bad.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            return f"{where}: not valid YAML ({bad.problem or bad.context})"
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as bad:
            return f"{path}: cannot read it as YAML ({' '.join(str(bad).split())})"
    return None


def _unknown_config_key(text: str, argv: list[str]) -> str | None:
    match = re.search(r"does not accept option '([\w.]+)'", text) or re.search(
        r"Key \"([\w.]+)\" is not expected", text
    )
    if not match:
        return None
    key = match.group(1)
    source = config_file_with_key(argv, key)
    return f"{source}: unknown key '{key}'" if source else f"--{key}: no such option"


def _class_option(text: str, argv: list[str]) -> str | None:
    """Mistakes in a class-valued option (--model.method, --data.format, a callback): an unknown class, an option
    the class does not have, or settings given to a name that is not a class."""
    flag = _flag(text)
    if flag is None or "class_path" not in text and "dot import path" not in text and "NestedArg" not in text:
        return None
    kind, choices = registry(flag)
    not_accepted = re.search(r"Problem with given class_path '([^']+)':\s*Option '([^']+)' is not accepted", text)
    if not_accepted:
        class_path, option = not_accepted.groups()
        options = class_options(class_path)
        listed = f" (its options: {', '.join(options)})" if options else ""
        source = config_file_with_key(argv, f"{flag}.init_args.{option}")
        where = f"{source}: {flag}.init_args" if source else f"--{flag}"
        return f"{where}: {class_path.rsplit('.', 1)[-1]} has no option '{option}'{listed}"
    nested = re.search(r"Given value: NestedArg\(key='([^']+)'", text)
    name = re.search(r"Expected a dot import path string: (\S+)", text)
    if nested and name and name.group(1) != "None":
        return (
            f"--{flag}.{nested.group(1)}: '{name.group(1)}' is a name without settings; give the {kind} as a class "
            f"first, e.g. --{flag} {class_name_for(flag, name.group(1))} --{flag}.{nested.group(1)} ..."
        )
    inner = re.search(r"Problem with given class_path '[^']+':\s*Parser key \"([^\"]+)\":\s*(.+)", text, re.DOTALL)
    if inner:  # a bad value of one of the class's own settings
        key, rest = inner.groups()
        typed = _typed_value(f'Parser key "{flag}.{key}":\n{rest}', argv)
        if typed:
            return typed
    if nested and not name and "Given value type: <class 'jsonargparse._util.NestedArg'>" in text:
        key = nested.group(1).removeprefix("init_args.")
        return f"--{flag}.{key}: no {kind} chosen to take it; give one first{choose_from(choices)}"
    problem = re.search(r"Problem with given class_path '([^']+)':\s*\n?\s*(.+)", text)
    given = re.search(r"Given value: (.+)", text)
    if problem:
        class_path, reason = problem.groups()
        if re.search(r"has no attribute|No module named|not found|Unable to import", reason):
            source = config_file_with_key(argv, f"{flag}.class_path")
            where = f"{source}: {flag}.class_path" if source else f"--{flag}"
            return f"{where}: unknown {kind} '{class_path}'{choose_from(choices)}"
        return f"--{flag}: {class_path.rsplit('.', 1)[-1]}: {reason.strip()}"
    if name or (given and "dot import path" in text):
        value = name.group(1) if name else given.group(1)
        source = config_file_with_key(argv, f"{flag}.class_path") or config_file_with_key(argv, flag)
        return f"{f'{source}: {flag}' if source else f'--{flag}'}: unknown {kind} '{value}'{choose_from(choices)}"
    return None


def _typed_value(text: str, argv: list[str]) -> str | None:
    """`Expected a <class 'float'>. Got value: fast` and its kin."""
    flag = _flag(text)
    expected = re.search(r"Expected a (.+?)\. Got value: (.*)", text)
    if flag is None or not expected:
        return None
    wanted, value = expected.groups()
    if value == "None":  # a required option nobody gave (jsonargparse checks its type against its None default)
        return f"--{flag} is required: give it on the command line or in a --config file"
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", wanted)
    if literal:
        options = ", ".join(option.strip(" '\"") for option in literal.group(1).split(","))
        return f"--{flag}: '{value}' is not one of {options}"
    type_name = re.fullmatch(r"<class '(?:\w+\.)*(\w+)'>", wanted)
    names = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}
    described = names.get(type_name.group(1), type_name.group(1)) if type_name else wanted
    return f"--{flag}: expected {described}, got '{value}'"


def registry(flag: str) -> tuple[str, list[str]]:
    """("method", [Full, LoRA, ...]) for a class-valued option we keep a registry of; else ("class", [])."""
    if flag not in REGISTRIES:
        return "class", []
    kind, entries = registry_entries(flag)
    return kind, [entry.__name__ for entry in entries] if isinstance(entries, tuple) else list(entries)


def registry_entries(flag: str) -> tuple[str, tuple | dict]:
    kind, module, name = REGISTRIES[flag]
    return kind, getattr(importlib.import_module(module), name)


def choose_from(choices: list[str]) -> str:
    return f" (choose from {', '.join(choices)}, or a full class path)" if choices else ""


def class_name_for(flag: str, name: str) -> str:
    """The class a short name stands for (instruction -> Instruction), for an example line: a class with settings
    must be given by its class name (a registry's short name is a plain string to jsonargparse)."""
    if flag not in REGISTRIES:
        return name
    entries = registry_entries(flag)[1]
    classes = entries.values() if isinstance(entries, dict) else entries
    return next((cls.__name__ for cls in classes if cls.__name__.lower() == name.lower()), name)


def class_options(class_path: str) -> list[str]:
    """The settings a class takes (its __init__ parameters), to list beside an unknown one."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def config_files(argv: list[str]) -> list[str]:
    """The --config files of a command line, in order."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config", "-c")]
    return files + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]


def config_file_with_key(argv: list[str], key: str) -> str | None:
    """The last `--config FILE` in argv whose YAML sets the dotted `key` (the one that wins), if any."""
    missing = object()
    for path in reversed(config_files(argv)):
        try:
            node = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        for part in key.split("."):
            node = node.get(part, missing) if isinstance(node, dict) else missing
        if node is not missing:
            return path
    return None
