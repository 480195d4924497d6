"""`lightning-ft data`: a fit configuration's data pipeline, run, reported and cached for the fit.

The report: rows kept and dropped per rule, labels, token lengths, padding waste.
`lightning-ft data from-feedback LOGDIR --format preference|kto|instruction --output FILE` turns the rated answers
`lightning-ft serve` logged into training data instead.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser

from lightning_ft.commands.fit import CommandCLI
from lightning_ft.commands.parsing import command_parser
from lightning_ft.data.report import print_report
from lightning_ft.files import output_file, write_json_atomically


def arguments(parser: LightningArgumentParser) -> None:
    parser.add_argument("--output", type=str | None, default=None, help="also write the report as JSON here")


def from_feedback(argv: list[str]) -> None:
    """lightning-ft data from-feedback LOGDIR --format preference|kto|instruction --output FILE [--endpoint E]"""
    parser = command_parser("data from-feedback", "rated answers of a serving LOGDIR as training data (JSONL)")
    parser.add_argument("logdir", type=str, help="the folder lightning-ft serve logs into")
    parser.add_argument("--format", type=str, required=True, help="preference, kto or instruction")
    parser.add_argument("--output", type=str, required=True, help="the JSONL file to write")
    parser.add_argument("--endpoint", type=str | None, default=None, help="only chat.completions or completions")
    args = parser.parse_args(argv)
    from lightning_ft.serving.feedback import from_feedback as write_feedback_data

    write_feedback_data(args.logdir, args.format, args.output, args.endpoint)


def main(argv: list[str]) -> None:
    """lightning-ft data --config X.yaml [fit flags] [--output report.json] | data from-feedback LOGDIR ..."""
    if argv and argv[0] == "from-feedback":
        return from_feedback(argv[1:])
    cli = CommandCLI("data", argv, arguments)
    output = output_file(cli.config.output) if cli.config.output else None
    datamodule = cli.datamodule
    datamodule.setup("fit")
    print_report(datamodule.report)
    if output:
        write_json_atomically(output, datamodule.report)
        print(f"report: {output}")
