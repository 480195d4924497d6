"""`lightning-ft human-eval`: blinded human evaluation: `export` writes rating sheets, `report` scores them.

`export` writes shuffled rating sheets of several models' outputs; `report` scores filled-in sheets (means with
95% CIs, win rates, inter-annotator agreement).
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser

from lightning_ft.commands.parsing import command_parser
from lightning_ft.errors import UserError
from lightning_ft.files import write_json_atomically


def parser() -> ArgumentParser:
    parser = command_parser("human-eval", __doc__)
    subcommands = parser.add_subcommands(required=True, dest="command")
    export = ArgumentParser(exit_on_error=False)
    export.add_argument("--outputs", type=str, nargs="+", required=True, help="NAME=FILE.jsonl per model")
    export.add_argument("--n", type=int, required=True, help="how many prompts to sample")
    export.add_argument("--seed", type=int, default=0, help="seed of the sample, labels and orders")
    export.add_argument("--out", type=str, required=True, help="new folder for the sheets and key")
    export.add_argument("--annotators", type=int, default=1, help="also write sheet_<k>.csv per annotator, reordered")
    subcommands.add_subcommand("export", export, help="write blinded rating sheets")
    reporting = ArgumentParser(exit_on_error=False)
    reporting.add_argument("--key", type=str, required=True, help="key.json from export")
    reporting.add_argument("sheets", type=str, nargs="+", help="filled-in sheets, one per annotator (.csv or .jsonl)")
    reporting.add_argument("--output", type=str | None, default=None, help="also write the report as JSON here")
    subcommands.add_subcommand("report", reporting, help="report on filled-in sheets")
    return parser


def parse_outputs(values: list[str]) -> dict[str, Path]:
    """NAME=FILE pairs; model names must be unique, since they are what the key unblinds to."""
    outputs: dict[str, Path] = {}
    for value in values:
        name, _, file = value.partition("=")
        if not name.strip() or not file.strip():
            raise UserError(f"--outputs: '{value}' is not NAME=FILE")
        if name in outputs:
            raise UserError(f"--outputs: model name '{name}' given twice")
        outputs[name] = Path(file)
    return outputs


def main(argv: list[str]) -> None:
    """lightning-ft human-eval export --outputs a=a.jsonl b=b.jsonl --n 50 --out DIR | report --key K SHEETS..."""
    config = parser().parse_args(argv)
    from lightning_ft.evaluation.human import export_sheet, print_report, report

    options = config[config.command]
    if config.command == "export":
        out = Path(options.out)
        export_sheet(parse_outputs(options.outputs), options.n, options.seed, out, options.annotators)
        copies = f" and sheet_1.csv .. sheet_{options.annotators}.csv" if options.annotators > 1 else ""
        print(f"sheets: {out}/sheet.csv, sheet.jsonl{copies}; instructions: {out}/README.txt")
        print(f"key: {out}/key.json (unblinds the labels: keep it from the annotators)")
        return
    result = report(Path(options.key), [Path(sheet) for sheet in options.sheets])
    print_report(result)
    if options.output:
        write_json_atomically(Path(options.output), result)
        print(f"report: {options.output}")
