"""`lightning-ft models`: the released versions of a registry (`lightning-ft export --version`), newest last."""

from __future__ import annotations

from pathlib import Path

from lightning_ft.commands.parsing import command_parser
from lightning_ft.errors import UserError
from lightning_ft.export.registry import REGISTRY_FILE, read_registry


def parser():
    parser = command_parser("models", __doc__)
    parser.add_argument(
        "registry", type=str, nargs="?", default=REGISTRY_FILE, help="the registry file, or the folder holding it"
    )
    return parser


def main(argv: list[str]) -> None:
    """lightning-ft models [models.json | FOLDER]"""
    from rich.console import Console
    from rich.table import Table

    path = Path(parser().parse_args(argv).registry).expanduser()
    path = path / REGISTRY_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path}: no registry here (lightning-ft export --version TAG writes one)")
    table = Table(title=str(path))
    for column in ("version", "created", "format", "method", "base", "data", "metrics", "export check", "path"):
        table.add_column(column, overflow="fold")
    for entry in read_registry(path):
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(entry["metrics"].items()) if isinstance(v, int | float))
        check = entry.get("check") or {}
        checked = f"max |diff| {check['max_abs_diff']:.1e}" if "max_abs_diff" in check else "-"
        data = (entry.get("data") or {}).get("fingerprint", "-")
        row = (entry["version"], entry["created"], entry["format"], entry["method"], entry["base_model"], data)
        table.add_row(*row, metrics or "-", checked, entry["path"])
    Console(width=200).print(table)
