"""The parts of kdflow import only what docs/DESIGN.md ("Parts and the imports they may make")
allows them: every module is parsed (imports inside functions included) and each import that
breaks its part's rule is named with its file and line.

Why it matters: the workflow and the dashboard must start without torch (a dry run's start-up),
the trainer must not know the scheduler, and the PBS executor plugin must not know kdflow (it
is a Snakemake plugin of its own, installed and tested beside kdflow).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "kdflow"
PLUGIN = ROOT / "plugins" / "snakemake-executor-plugin-pbs"
DESIGN = ROOT / "docs" / "DESIGN.md"
SECTION = "## Parts and the imports they may make"

TORCH_SIDE = ("numpy", "scipy", "PIL", "sklearn", "torch", "torchvision")
TORCH_FREE_KDFLOW = ("kdflow.config", "kdflow.architectures", "kdflow.fileio")
TRAINING = ("kdflow.data", "kdflow.models", "kdflow.losses", "kdflow.loader", "kdflow.checkpoint")
DASHBOARD = ("kdflow.status", "kdflow.summary", "kdflow.plots", "kdflow.cli")
PBS = "snakemake_executor_plugin_pbs"
DASHBOARD_KDFLOW = (*TORCH_FREE_KDFLOW, "kdflow.owner")  # owner: is a status.json's trainer alive


@dataclass(frozen=True)
class Part:
    """Files (globs under the repository) and what they may import besides the standard
    library: `anywhere` at import or inside functions, `lazily` only inside functions."""

    name: str
    files: tuple[str, ...]
    anywhere: tuple[str, ...]
    lazily: tuple[str, ...] = ()
    summary: str = ""


PARTS = (
    Part("fileio", ("src/kdflow/__init__.py", "src/kdflow/fileio.py"), (), (), "stdlib only"),
    Part(
        "config",
        ("src/kdflow/config.py", "src/kdflow/architectures.py"),
        ("yaml", "jsonschema", "kdflow.architectures"),
        summary="torch-free: stdlib, yaml, jsonschema, kdflow.architectures",
    ),
    Part(
        "training",
        tuple(f"src/kdflow/{m.split('.')[1]}.py" for m in TRAINING),
        (*TORCH_SIDE, *TORCH_FREE_KDFLOW, *TRAINING),
        summary="torch side: numpy, scipy, PIL, sklearn, torch, torchvision, config, fileio, "
        "each other",
    ),
    Part(
        "trainer",
        ("src/kdflow/trainer.py", "src/kdflow/pack.py"),
        (*TORCH_SIDE, *TORCH_FREE_KDFLOW, *TRAINING, "kdflow.trainer"),
        summary="what training may, and the trainer; no scheduler (not kdflow.owner), no "
        "plugin, no snakemake",
    ),
    Part(
        "owner",
        ("src/kdflow/owner.py",),
        TORCH_FREE_KDFLOW,
        lazily=(f"{PBS}.status",),
        summary="stdlib, config, fileio; the plugin's status query only inside a function",
    ),
    Part(
        "dashboard",
        tuple(f"src/kdflow/{m.split('.')[1]}.py" for m in DASHBOARD),
        ("yaml", "rich", "pandas", "numpy", "matplotlib", PBS, *DASHBOARD, *DASHBOARD_KDFLOW),
        summary="no torch: yaml, rich, pandas, numpy, matplotlib, the plugin, config, fileio, "
        "owner",
    ),
    Part(
        "workflow",
        ("Snakefile", "rules/*.smk"),
        ("snakemake", *TORCH_FREE_KDFLOW, *DASHBOARD),
        summary="stdlib, snakemake and kdflow's torch-free modules (config, fileio, dashboard "
        "side)",
    ),
    Part("scripts", ("scripts/*.py",), ("kdflow",), summary="stdlib and kdflow: thin adapters"),
)
# The plugin: every Python file under plugins/snakemake-executor-plugin-pbs, tests included,
# may import anything except kdflow.


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    module: str
    lazy: bool  # inside a function: runs when called, not when the file is imported

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def _module_name(path: Path) -> str | None:
    """kdflow.<name> for a file of src/kdflow; plugin modules by their package path."""
    for base in (ROOT / "src", PLUGIN / "src"):
        if path.is_relative_to(base):
            parts = path.relative_to(base).with_suffix("").parts
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return None


def _resolve(node: ast.ImportFrom, path: Path) -> list[str]:
    """The modules `from X import a, b` brings in: X.a where X.a is a module, else X."""
    base = node.module or ""
    if node.level:
        package = (_module_name(path) or "").split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([base] if base else [])])
    out = []
    for alias in node.names:
        if base == "kdflow" and (SRC / f"{alias.name}.py").exists():
            out.append(f"kdflow.{alias.name}")
        else:
            out.append(base)
    return list(dict.fromkeys(out))


def python_imports(path: Path) -> list[Import]:
    """Every import of a Python file, with its line and whether it sits inside a function.
    Imports under `if TYPE_CHECKING:` never run and are skipped."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(path, node.lineno, a.name, lazy) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend(Import(path, node.lineno, m, lazy) for m in _resolve(node, path))
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


_SMK_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\b|import\s+([\w.]+(?:\s*,\s*[\w.]+)*))")


def workflow_imports(path: Path) -> list[Import]:
    """Imports of a Snakefile or .smk file (Snakemake's grammar, not Python's: read by line;
    snakefmt keeps one statement a line). All count as made at import: the workflow runs them
    while it is parsed."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _SMK_IMPORT.match(line)
        if match:
            names = [match[1]] if match[1] else re.split(r"\s*,\s*", match[2])
            found += [Import(path, number, name.split(" as ")[0], False) for name in names]
    return found


def _matches(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def _stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def _part_files(part: Part) -> list[Path]:
    return sorted(p for pattern in part.files for p in ROOT.glob(pattern) if p.is_file())


def violations(part: Part) -> list[str]:
    errors = []
    for path in _part_files(part):
        reader = python_imports if path.suffix == ".py" else workflow_imports
        for imp in reader(path):
            module = imp.module
            if _stdlib(module) or module == "kdflow" or _matches(module, part.anywhere):
                continue
            if imp.lazy and _matches(module, part.lazily):
                continue
            how = "inside a function" if imp.lazy else "at import"
            if _matches(module, part.lazily):
                how += " (allowed only inside a function)"
            errors.append(f"{imp.where()}: imports {module} {how}; {part.name}: {part.summary}")
    return errors


@pytest.mark.parametrize("part", PARTS, ids=[p.name for p in PARTS])
def test_each_part_imports_only_what_its_rule_allows(part):
    assert _part_files(part), f"{part.name}: no files match {part.files}"
    errors = violations(part)
    assert not errors, (
        "forbidden imports (docs/DESIGN.md, " + SECTION[3:] + "):\n" + "\n".join(errors)
    )


def test_the_plugin_never_imports_kdflow():
    files = sorted(
        p for p in PLUGIN.rglob("*.py") if not any(part.endswith(".egg-info") for part in p.parts)
    )
    assert files
    errors = [
        f"{imp.where()}: imports {imp.module}; the PBS executor plugin never imports kdflow"
        for path in files
        for imp in python_imports(path)
        if _matches(imp.module, ("kdflow",))
    ]
    assert not errors, "\n".join(errors)


def test_every_kdflow_module_belongs_to_one_part():
    owners: dict[Path, list[str]] = {}
    for part in PARTS:
        for path in _part_files(part):
            owners.setdefault(path, []).append(part.name)
    for path in sorted(SRC.glob("*.py")):
        assert len(owners.get(path, [])) == 1, (
            f"{path.relative_to(ROOT)} is in parts {owners.get(path, [])}: give every module "
            f"of kdflow one part, in docs/DESIGN.md ({SECTION[3:]}) and in tests/test_layout.py"
        )


def test_the_design_lists_every_part():
    text = DESIGN.read_text()
    assert SECTION in text, f"docs/DESIGN.md lacks the section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    for part in (*(p.name for p in PARTS), "plugin"):
        assert f"| {part} |" in section, f"docs/DESIGN.md ({SECTION[3:]}) has no row for {part}"


def test_the_checker_sees_imports_inside_functions_and_reports_file_and_line(tmp_path):
    # the checker itself: a lazy import is found and placed, TYPE_CHECKING imports are not
    path = SRC / "trainer.py"  # any real file: only its location matters to _resolve
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import pandas\n"
        "def f():\n"
        "    from snakemake_executor_plugin_pbs.status import Qstat\n"
        "import torch\n"
    )
    found = [(i.line, i.module, i.lazy) for i in python_imports(source)]
    assert found == [
        (1, "typing", False),
        (5, "snakemake_executor_plugin_pbs.status", True),
        (6, "torch", False),
    ]
    node = ast.parse("from . import config\nfrom .models import build_model").body
    assert _resolve(node[0], path) == ["kdflow.config"]
    assert _resolve(node[1], path) == ["kdflow.models"]
