"""The `kdflow` command: thin subcommands over the library."""

from __future__ import annotations

import argparse
import logging
import sys
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdflow", description="Knowledge-distillation sweeps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = commands.add_parser(
        "report", help="tables and figures of whatever has finished so far"
    )
    report.add_argument("--results", default="results", help="the results directory")
    report.add_argument("--out", default="results/summary", help="where the tables go")
    report.set_defaults(run=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if not Path(getattr(args, "results", ".")).is_dir():
        print(f"kdflow: no results directory {args.results!r} here; run it where the sweep runs",
              file=sys.stderr)  # fmt: skip
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
