"""The `kdflow` command: thin subcommands over the library."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _report(args: argparse.Namespace) -> int:
    from kdflow.summary import to_markdown, write_report

    out = Path(args.out)
    table, figures = write_report(args.results, out)
    print(to_markdown(table))
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'} ({len(table)} rows)")
    for figure in figures:
        print(f"wrote {figure}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from kdflow.config import ConfigError, Sweep
    from kdflow.status import collect, render, to_json

    try:
        sweep = Sweep.from_file(args.configfile, check_names=False)
    except ConfigError as exc:
        print(f"kdflow status: {exc}", file=sys.stderr)
        return 2
    qstat = None
    if not args.no_qstat:
        from snakemake_executor_plugin_pbs.commands import missing_commands
        from snakemake_executor_plugin_pbs.status import Qstat

        qstat = None if "qstat" in missing_commands() else Qstat(timeout=args.qstat_timeout)
    while True:
        rows, note = collect(sweep, ".", args.registry, qstat)
        if args.json:
            print(to_json(rows, note))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")  # clear the screen between refreshes
            render(rows, note)
        if not args.watch:
            return 0
        time.sleep(args.watch)


def _seconds(maximum: float):
    """An argparse type: a number of seconds above 0 and at most `maximum`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not 0 < value <= maximum:  # also false for nan
            raise argparse.ArgumentTypeError(
                f"must be more than 0 and at most {maximum:g} seconds, not {text!r}"
            )
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdflow", description="Knowledge-distillation sweeps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = commands.add_parser(
        "report", help="tables and figures of whatever has finished so far"
    )
    report.add_argument("--results", default="results", help="the results directory")
    report.add_argument("--out", default="results/summary", help="where the tables go")
    report.set_defaults(run=_report)

    status = commands.add_parser(
        "status", help="the dashboard: done, running, queued, waiting, failed and why"
    )
    status.add_argument(
        "--configfile", default="config/experiments.yaml", help="the sweep's config"
    )
    status.add_argument("--registry", default=".kdflow/pbs", help="the PBS executor's registry")
    status.add_argument("--json", action="store_true", help="one record per experiment, as JSON")
    status.add_argument(
        "--watch",
        type=_seconds(86400),
        metavar="SECONDS",
        help="refresh every SECONDS until Ctrl-C",
    )
    status.add_argument("--no-qstat", action="store_true", help="do not ask the scheduler")
    status.add_argument(
        "--qstat-timeout", type=_seconds(3600), default=60, help="seconds to wait for qstat"
    )
    status.set_defaults(run=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.command == "report" and not Path(args.results).is_dir():
        print(f"kdflow: no results directory {args.results!r} here; run it where the sweep runs",
              file=sys.stderr)  # fmt: skip
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
