"""`lightning-ft monitor`: what `lightning-ft serve` logged: a per-version report with an A/B verdict, or input drift.

`report LOGDIR` prints per version: requests, error rate, latency and TTFT percentiles, tokens/s, confidence and
feedback, and the A/B verdict between two versions; with --output, report.json and PNG plots in that folder.
`drift LOGDIR --model EXPORT_DIR` scores each version's logged inputs against the training profile of the export
(drift_profile.json, tokenized with its tokenizer): PSI of lengths, tokens and labels, KS of lengths, and alerts.
"""

from __future__ import annotations

from jsonargparse import ArgumentParser

from lightning_ft.commands.parsing import command_parser


def parser() -> ArgumentParser:
    parser = command_parser("monitor", __doc__)
    subcommands = parser.add_subcommands(required=True, dest="command")
    report = ArgumentParser(exit_on_error=False)
    report.add_argument("logdir", type=str, help="the folder lightning-ft serve logs into")
    report.add_argument("--output", type=str | None, default=None, help="folder for report.json and the plots")
    report.add_argument("--versions", type=str | None, default=None, help="BASELINE,CANDIDATE of the A/B verdict")
    subcommands.add_subcommand("report", report, help="per-version table, plots and A/B verdict")
    drift = ArgumentParser(exit_on_error=False)
    drift.add_argument("logdir", type=str, help="the folder lightning-ft serve logs into")
    drift.add_argument("--model", type=str, required=True, help="export folder with drift_profile.json and tokenizer")
    drift.add_argument("--window", type=int | None, default=None, help="only each version's last N inputs")
    subcommands.add_subcommand("drift", drift, help="input drift per version against the training profile")
    return parser


def main(argv: list[str]) -> None:
    """lightning-ft monitor report LOGDIR [--output DIR] [--versions v1,v2] | drift LOGDIR --model DIR"""
    config = parser().parse_args(argv)
    options = config[config.command]
    if config.command == "report":
        from lightning_ft.serving.report import monitor_report

        versions = [v.strip() for v in options.versions.split(",")] if options.versions else None
        monitor_report(options.logdir, options.output, versions)
    else:
        from lightning_ft.serving.drift import drift_report

        drift_report(options.logdir, options.model, options.window)
