"""`lightning-ft serve`: an OpenAI-compatible server (LitServe) for exports and checkpoints, several versions at
once, with A/B routing, Prometheus metrics at /metrics and a request log for `lightning-ft monitor`.

Each request's prompt is rendered with the template the model was trained with (recorded in checkpoints and
exports); requests are decoded together, one token per step, joining and leaving the batch as they come.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from lightning_ft.commands.parsing import command_parser
from lightning_ft.errors import UserError


def parser():
    parser = command_parser("serve", __doc__)
    add = parser.add_argument
    add(
        "--model",
        type=str,
        action="append",
        required=True,
        help="an export folder, a fit checkpoint or a registry's version tag, or NAME=PATH; repeat for several",
    )
    add("--registry", type=str, default="models.json", help="where --model's version tags are looked up")
    add(
        "--route",
        type=str | None,
        default=None,
        help="traffic shares of versions, e.g. 'v1=0.9,v2=0.1' (default: the first)",
    )
    add("--port", type=int, default=8000)
    add("--host", type=str, default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    add("--max_batch_size", type=int, default=8, help="requests decoded together")
    add("--batch_timeout", type=float, default=0.01, help="seconds an idle server waits for more requests to batch")
    add("--workers", type=int, default=1, help="inference worker processes per device")
    add("--device", type=str, default="auto", choices=["auto", "cpu", "cuda", "mps"])
    add("--log_dir", type=str, default="serve_logs", help="request/feedback logs, route file and metrics state")
    add("--redact", type=bool, default=True, help="scrub PII from logged inputs and outputs")
    add("--timeout", type=float, default=120.0, help="seconds a request may wait for the model")
    add("--drift_window", type=int, default=200, help="recent prompts per version compared with the training's")
    add("--drift_threshold", type=float | None, default=None, help="PSI above which drift alerts (default 0.25)")
    return parser


def named_sources(models: list[str], registry: Path) -> list[tuple[str, str, str]]:
    """[(version name, path, as given)]: NAME=PATH as given; a registry's tag by its entry's path; else the export's
    version tag or the folder/file name."""
    from lightning_ft.export.hf import EXPORT_RECORD, read_export_record
    from lightning_ft.export.registry import find_version

    named = []
    for item in models:
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            source = Path(path).expanduser()
            entry = None if source.exists() else find_version(registry, item)
            if entry:
                name, path = entry["version"], entry["path"]
            else:
                tagged = read_export_record(source).get("version") if (source / EXPORT_RECORD).is_file() else None
                name = tagged or source.stem
        named.append((name, path, item))
    names = [name for name, *_ in named]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"--model: two versions are called {', '.join(duplicates)}: name them, --model NAME=PATH")
    return named


def main(argv: list[str]) -> None:
    """lightning-ft serve --model DIR_OR_CKPT [--model NAME=DIR ...] [--route 'v1=0.9,v2=0.1'] [--port 8000]
    [--host 127.0.0.1] [--max_batch_size 8] [--batch_timeout 0.01] [--workers 1] [--device auto] [--log_dir DIR]"""
    args = parser().parse_args(argv)
    for flag, low in (("max_batch_size", 1), ("workers", 1), ("port", 1024), ("drift_window", 1)):
        if args[flag] < low:
            raise UserError(f"--{flag} must be at least {low}, got {args[flag]}")
    log_dir = Path(args.log_dir).expanduser().resolve()
    # prometheus-client reads this when it is imported, in this process and in every one LitServe starts
    state = log_dir / "prometheus"
    shutil.rmtree(state, ignore_errors=True)  # counters of an earlier server: not this one's
    state.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(state)

    import litserve as ls

    from lightning_ft.loading import context_length
    from lightning_ft.serving.api import Generation
    from lightning_ft.serving.metrics import RequestTiming
    from lightning_ft.serving.requestlog import RequestLog
    from lightning_ft.serving.routing import Router, parse_route
    from lightning_ft.serving.spec import OpenAICompatible
    from lightning_ft.serving.versions import read_version
    from lightning_ft.serving.watch import DriftWatch

    registry = Path(args.registry).expanduser()
    versions = [read_version(*named) for named in named_sources(args.model, registry)]
    names = [version.name for version in versions]
    tasks = {version.task for version in versions}
    if len(tasks) > 1:
        raise UserError(f"--model: one server serves one kind of model, not {' and '.join(sorted(tasks))}")
    route = parse_route(args.route, names) if args.route else {names[0]: 1.0}
    router = Router(log_dir / "route.json", names, route)
    context = {}
    for version in versions:
        source = (
            str(version.source) if version.kind == "merged" else version.base or version.record["model_name_or_path"]
        )
        context[version.name] = context_length(source) or version.tokenizer.model_max_length
    drift = DriftWatch({v.name: v.profile for v in versions}, args.drift_window, args.drift_threshold)
    spec = OpenAICompatible(versions, router, RequestLog(log_dir, redact=args.redact), context, drift)
    api = Generation(spec, versions, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(
        api,
        accelerator=args.device,
        devices=1,
        workers_per_device=args.workers,
        timeout=args.timeout,
        middlewares=[RequestTiming],
    )
    shares = ", ".join(f"{name} {share:.0%}" for name, share in router.weights.items())
    print(f"serving {', '.join(names)} on http://{args.host}:{args.port}/v1 (route: {shares}); logs in {log_dir}")
    # LitServe stops gracefully on Ctrl-C (its HTTP processes finish the requests in flight, then its inference
    # workers stop); a plain SIGTERM would end this process alone and leave them running: make it a Ctrl-C.
    signal.signal(signal.SIGTERM, interrupt)
    server.run(host=args.host, port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")
    print("stopped: the requests in flight were answered")


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
