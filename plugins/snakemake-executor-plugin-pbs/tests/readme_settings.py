"""The README's table of settings, made from ExecutorSettings: the help texts are the one
source (Snakemake prints them under `snakemake --help`, the plugin catalog shows them), so the
README cannot say something else. `test_pbs_plugin.py` checks that the README holds exactly
this table; after changing a setting, rewrite it with

    python tests/readme_settings.py
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from snakemake_executor_plugin_pbs import ExecutorSettings

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = (
    "<!-- The settings table is made from ExecutorSettings' help texts by "
    "`python tests/readme_settings.py`: change those, then run it. -->"
)
END = "<!-- end of the settings table -->"


def _default(field: dataclasses.Field) -> str:
    value = field.default
    if value is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str | Path):
        return f"`{value}`"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    """One row per setting: option, environment variable, default, help text."""
    rows = [
        "| option | environment variable | default | what it does |",
        "|---|---|---|---|",
    ]
    for field in dataclasses.fields(ExecutorSettings):
        name = field.name
        option = f"`--pbs-{name.replace('_', '-')}`"
        env = f"`SNAKEMAKE_PBS_{name.upper()}`" if field.metadata.get("env_var") else "—"
        help_text = _cell(field.metadata["help"])
        rows.append(f"| {option} | {env} | {_default(field)} | {help_text} |")
    return "\n".join(rows)


def readme_table(text: str) -> str | None:
    """The table between the markers in the README's text, or None without markers."""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def rewrite(path: Path = README) -> bool:
    """Put the current table into the README; whether it changed."""
    text = path.read_text()
    if readme_table(text) is None:
        raise SystemExit(f"{path}: the markers of the settings table are missing")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    new = f"{before}{BEGIN}\n{settings_table()}\n{END}{after}"
    path.write_text(new)
    return new != text


if __name__ == "__main__":
    changed = rewrite()
    print(f"{README}: {'rewritten' if changed else 'already up to date'}")
    sys.exit(0)
