"""tests/chaos/summary.py: the table `make chaos` prints and records in docs/RELIABILITY.md."""

from __future__ import annotations

import json

import pytest
import summary


def record(**fields):
    """A report line as conftest.Figures writes it."""
    return {"mode": "full", "seed": 1, "kills": 0, "faults": 0, "bad_inputs": 0,
            "duplicates": 0, "differing": 0, "lost_epochs": None, "load": [], "detail": {},
            **fields}  # fmt: skip


RECORDS = [
    record(test="test_a.py::test_kills", kills=50, faults=3, outcome="failed", seconds=100.0,
           finished_at="2026-11-28T20:00:00"),
    record(test="test_b.py::test_faults[x]", faults=7, lost_epochs=0, outcome="passed",
           seconds=20.5, finished_at="2026-11-28T20:05:00"),
    # the first test again: its last line counts
    record(test="test_a.py::test_kills", kills=40, faults=1, outcome="passed", seconds=80.0,
           finished_at="2026-11-28T20:10:00",
           load=[{"measure": "dry run", "result": "1.20", "goal": "<= 1.3"}]),
]  # fmt: skip


@pytest.fixture
def report(tmp_path):
    path = tmp_path / "report.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + "\n")
    return path


def test_the_last_run_of_each_test_counts_and_totals_add_up(report):
    records = summary.read(report)
    assert [r["test"] for r in records] == ["test_b.py::test_faults[x]", "test_a.py::test_kills"]
    lines = summary.table(records).splitlines()
    assert lines[2] == "| `test_faults[x]` | 0 | 7 | 0 | 0 | 0 | 0 | passed | 20 |"
    assert lines[3] == "| `test_kills` | 40 | 1 | 0 | 0 | 0 | – | passed | 80 |"  # not measured
    assert lines[4] == (
        "| **total (2 tests)** | **40** | **8** | **0** | **0** | **0** | **0** | **2 passed** "
        "| **100** |"
    )
    assert summary.load_table(records).splitlines()[2] == "| dry run | 1.20 | <= 1.3 |"


def test_docs_get_the_table_between_the_markers_and_nothing_else_changes(report, tmp_path):
    docs = tmp_path / "RELIABILITY.md"
    markers = f"{summary.BEGIN}\n(not run yet)\n{summary.END}"
    docs.write_text(f"# Title\n\nbefore\n\n{markers}\n\nafter\n")
    assert summary.main([str(report), "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert text.startswith("# Title\n\nbefore\n\n" + summary.BEGIN + "\nCounts: full; finished ")
    assert text.endswith(summary.END + "\n\nafter\n")
    assert "(not run yet)" not in text and "| `test_kills` | 40 |" in text
    assert "| dry run | 1.20 | <= 1.3 |" in text
    # run twice: one table, not two
    assert summary.main([str(report), "--docs", str(docs)]) == 0
    assert docs.read_text() == text


def test_docs_without_markers_are_refused_unchanged(report, tmp_path):
    docs = tmp_path / "RELIABILITY.md"
    docs.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="no <!-- chaos-summary:begin -->"):
        summary.main([str(report), "--docs", str(docs)])
    assert docs.read_text() == "no markers here\n"
