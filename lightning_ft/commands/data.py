"""`lightning-ft data`: a fit configuration's data pipeline, run, reported and cached for the fit.

The report: rows kept and dropped per rule, labels, token lengths, padding waste.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser

from lightning_ft.commands.fit import CommandCLI
from lightning_ft.data.report import print_report
from lightning_ft.files import output_file, write_json_atomically


def arguments(parser: LightningArgumentParser) -> None:
    parser.add_argument("--output", type=str | None, default=None, help="also write the report as JSON here")


def main(argv: list[str]) -> None:
    """lightning-ft data --config X.yaml [fit flags] [--output report.json]"""
    cli = CommandCLI("data", argv, arguments)
    output = output_file(cli.config.output) if cli.config.output else None
    datamodule = cli.datamodule
    datamodule.setup("fit")
    print_report(datamodule.report)
    if output:
        write_json_atomically(output, datamodule.report)
        print(f"report: {output}")
