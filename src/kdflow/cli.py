"""The `kdflow` command: thin subcommands over the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "config/experiments.yaml"  # the Snakefile's `configfile:`
CONFIG_VARIABLE = "KDFLOW_CONFIGFILE"  # the sweep's config, as for scripts/cron.sh


def _default_config() -> str:
    return os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG


def _sweep(command: str, configfile: str):
    """The sweep of `configfile` (the commands show whatever it names: the workflow has
    checked the names), or None after saying why not."""
    from kdflow.config import ConfigError, Sweep

    try:
        return Sweep.from_file(configfile, check_names=False, consequence="nothing to show")
    except ConfigError as exc:
        print(f"kdflow {command}: {exc}", file=sys.stderr)
        return None


def _report(args: argparse.Namespace) -> int:
    from kdflow.summary import ReportFiles, TableKept, to_markdown, write_report

    results = Path(args.results)
    if not results.is_dir():
        print(f"kdflow: no results directory {args.results!r} here; run it where the sweep runs",
              file=sys.stderr)  # fmt: skip
        return 2
    sweep = _sweep("report", args.configfile)
    if sweep is None:
        return 2
    # the config's experiment directories are results/...: read under --results
    expected = {
        results / Path(e.directory).relative_to("results"): sweep.spec(e).identity
        for e in sweep.experiments()
    }
    files = ReportFiles.of(sweep, args.out)
    try:
        report = write_report(list(expected), files, results, expected, args.replace)
    except TableKept as exc:
        print(f"kdflow report: {args.configfile}: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(report.table, published=report.published))
    print(f"wrote {files.csv}, {files.md} ({len(report.table)} rows)")
    for figure in files.figures:
        print(f"wrote {figure}")
    print(f"{args.configfile}: {report.account()}")
    print(f"read {args.configfile} and {results.resolve()}/")
    return 0


class _HeldWarnings(logging.Handler):
    """Holds kdflow's warnings while the dashboard reads its files, to print them after the
    table: before it, --watch's clearing of the screen would wipe them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _HeldWarnings:
        logger = logging.getLogger("kdflow")
        self._propagate, logger.propagate = logger.propagate, False
        logger.addHandler(self)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        logger = logging.getLogger("kdflow")
        logger.removeHandler(self)
        logger.propagate = self._propagate
        if exc_type is not None:  # no table comes: say them now
            self.print()

    def print(self) -> None:
        for record in self.records:
            print(f"{record.levelname}: {record.getMessage()}", file=sys.stderr)
        self.records.clear()


def _status(args: argparse.Namespace) -> int:
    from kdflow.status import collect, controller, render, results_summary, to_json

    sweep = _sweep("status", args.configfile)
    if sweep is None:
        return 2
    qstat = None
    if not args.no_qstat:
        from snakemake_executor_plugin_pbs.commands import missing_commands
        from snakemake_executor_plugin_pbs.status import Qstat

        qstat = None if "qstat" in missing_commands() else Qstat(timeout=args.qstat_timeout)
    while True:
        with _HeldWarnings() as warnings:
            rows, note = collect(sweep, ".", args.registry, qstat, profile=args.profile)
            cron = controller(".")  # scripts/cron.sh's, where it drives the sweep
        source = {"config": args.configfile, "workdir": os.getcwd()}
        if args.json:
            print(to_json(rows, note, cron, source))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")  # clear the screen between refreshes
            print(f"{source['config']} in {source['workdir']}")
            render(rows, note, controller=cron, summary=results_summary(sweep, rows))
        sys.stdout.flush()
        warnings.print()
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
    report.add_argument(
        "--configfile",
        default=_default_config(),
        help=f"the sweep's config: the report covers exactly its experiments "
        f"(default: ${CONFIG_VARIABLE}, else {DEFAULT_CONFIG})",
    )
    report.add_argument("--results", default="results", help="the results directory")
    report.add_argument("--out", default="results/summary", help="where tables and figures go")
    report.add_argument(
        "--replace",
        action="store_true",
        help="write the report even where it has no rows and the table there has some",
    )
    report.set_defaults(run=_report)

    status = commands.add_parser(
        "status", help="the dashboard: done, running, queued, waiting, failed and why"
    )
    status.add_argument(
        "--configfile",
        default=_default_config(),
        help=f"the sweep's config (default: ${CONFIG_VARIABLE}, else {DEFAULT_CONFIG})",
    )
    status.add_argument(
        "--profile",
        help="the Snakemake profile the controller runs with, whose PBS executor settings "
        "(registry directory, job-name prefix) are read (default: $KDFLOW_PROFILE, else "
        "profiles/pbs, as scripts/cron.sh)",
    )
    status.add_argument(
        "--registry", help="the PBS executor's registry directory (default: the profile's)"
    )
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
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
