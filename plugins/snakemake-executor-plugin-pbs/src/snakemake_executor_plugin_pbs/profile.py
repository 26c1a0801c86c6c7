"""The executor's settings as a Snakemake profile gives them, for tools beside Snakemake (a
dashboard reading the registry) that must see what the executor of that profile sees: the
registry directory, the job-name prefix, ...

A setting comes from the profile's `config.yaml` (key `pbs-<name>`), else from the
environment (`SNAKEMAKE_PBS_<NAME>`), else the plugin's default; the values are checked as
Snakemake would check them (ExecutorSettings).
"""

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from . import ExecutorSettings

PROFILE_FILE = "config.yaml"


def _convert(field: dataclasses.Field, value):
    """A profile's or the environment's value as the setting's type."""
    if value is None:
        return None
    kind = field.metadata.get("type")
    if kind is None and isinstance(field.default, Path):
        kind = Path
    if field.type is bool or isinstance(field.default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    return kind(value) if kind is not None else value


def settings_from_profile(
    profile: str | Path | None, environ: Mapping[str, str] | None = None
) -> ExecutorSettings:
    """The executor's settings under `profile` (a directory holding config.yaml, or the file
    itself; None: no profile) and `environ` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    if profile is not None:
        path = Path(profile)
        if path.is_dir():
            path = path / PROFILE_FILE
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: not a Snakemake profile (a mapping of options)")
    chosen = {}
    for field in dataclasses.fields(ExecutorSettings):
        key = f"pbs-{field.name.replace('_', '-')}"
        variable = f"SNAKEMAKE_PBS_{field.name.upper()}"
        if key in values:
            chosen[field.name] = _convert(field, values[key])
        elif environ.get(variable):
            chosen[field.name] = _convert(field, environ[variable])
    return ExecutorSettings(**chosen)
