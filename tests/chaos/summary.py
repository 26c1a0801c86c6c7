"""The chaos tests' figures as a table (one row per test, and the totals).

    python tests/chaos/summary.py [REPORT.jsonl] [--docs docs/RELIABILITY.md]

REPORT is the JSON-lines file the tests append to (KDFLOW_CHAOS_REPORT; default: the newest
`chaos-report.jsonl` under pytest's temp dirs). When a test ran more than once, its last
line counts. --docs rewrites the table between `<!-- chaos-summary:begin -->` and
`<!-- chaos-summary:end -->` in that file (with the date, the mode and the total time).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import tempfile
from pathlib import Path

BEGIN, END = "<!-- chaos-summary:begin -->", "<!-- chaos-summary:end -->"
COLUMNS = [
    ("test", "test"),
    ("kills", "kills survived"),
    ("faults", "faults injected"),
    ("bad_inputs", "bad inputs"),
    ("duplicates", "duplicates"),
    ("differing", "differing results"),
    ("lost_epochs", "lost epochs"),
    ("outcome", "outcome"),
    ("seconds", "seconds"),
]


def read(path: Path) -> list[dict]:
    """The last record of every test in the report, in the order the tests first ran."""
    records: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records.pop(record["test"], None)
            records[record["test"]] = record
    return list(records.values())


def table(records: list[dict]) -> str:
    """A Markdown table of the records, with a totals row."""
    rows = [[_cell(r, key) for key, _ in COLUMNS] for r in records]
    totals = {
        "test": f"**total ({len(records)} test{'s' if len(records) != 1 else ''})**",
        "outcome": ", ".join(
            f"{sum(r['outcome'] == o for r in records)} {o}"
            for o in ("passed", "failed", "skipped")
            if any(r["outcome"] == o for r in records)
        ),
    }
    for key in ("kills", "faults", "bad_inputs", "duplicates", "differing", "lost_epochs",
                "seconds"):  # fmt: skip
        totals[key] = _number(sum(r.get(key) or 0 for r in records))
    rows.append([f"**{totals[key]}**" if key != "test" else totals[key] for key, _ in COLUMNS])
    header = [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def load_table(records: list[dict]) -> str:
    """A Markdown table of the load figures (tests/chaos/test_load.py), or "" if none ran."""
    rows = [entry for r in records for entry in r.get("load", [])]
    if not rows:
        return ""
    lines = ["| load | result | goal |", "|---|---|---|"]
    lines += [f"| {e['measure']} | {e['result']} | {e['goal']} |" for e in rows]
    return "\n".join(lines)


def _number(x) -> str:
    return f"{x:.0f}" if isinstance(x, float) else str(x)


def _cell(record: dict, key: str) -> str:
    value = record.get(key)
    if key == "test":
        return f"`{value.split('::', 1)[-1]}`"
    return "–" if value is None else _number(value)  # – : not measured by that test


def heading(records: list[dict]) -> str:
    modes = sorted({r.get("mode", "?") for r in records})
    when = max((r.get("finished_at", "") for r in records), default="")
    minutes = sum(r.get("seconds", 0) for r in records) / 60
    return f"Counts: {', '.join(modes)}; finished {when}; {minutes:.1f} minutes of tests."


def update_docs(path: Path, text: str) -> None:
    doc = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(doc):
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to put the table between")
    new = pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def newest_report() -> Path | None:
    base = Path(tempfile.gettempdir())
    found = glob.glob(str(base / "pytest-of-*" / "pytest-*" / "chaos-report.jsonl"))
    return Path(max(found, key=os.path.getmtime)) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", nargs="?", type=Path, help="the JSON-lines report")
    parser.add_argument("--docs", type=Path, help="rewrite the table in this Markdown file")
    args = parser.parse_args(argv)
    env = os.environ.get("KDFLOW_CHAOS_REPORT")
    path = args.report or (Path(env) if env else None) or newest_report()
    if path is None or not path.exists():
        print("no chaos report found: run the tests in tests/chaos first", file=sys.stderr)
        return 2
    records = read(path)
    text = "\n\n".join(filter(None, [heading(records), table(records), load_table(records)]))
    print(f"{path}\n\n{text}")
    if args.docs:
        update_docs(args.docs, text)
        print(f"\nwrote the table into {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
