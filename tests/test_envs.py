"""envs/kdflow.yaml, the jobs' conda environment (`--software-deployment-method conda`).

There is no conda here (nor any conda channel to reach), so what is proven is:

- always: the file lists every dependency the jobs import, with pyproject.toml's pins, and
  installs nothing from a path (Snakemake creates the environment from a copy in
  .snakemake/conda/, where a relative path names .snakemake/);
- through Snakemake's own conda code, with a stand-in `conda` (below) that does what
  `conda env create` does with a YAML file, but with pip and a venv: a relative pip path fails
  there (as it does with conda), and a job's `script:` runs with the environment's python and
  finds kdflow and the PBS plugin on the path Snakemake appends, not in the environment;
- slow: the real envs/kdflow.yaml installs (every package, conda's part through pip under the
  same names and specifiers), and the real workflow's three scripts (prepare_dataset, train,
  plot_sweep) run in it, each import of torch, numpy, pandas, ... from the environment.

Not proven here: that conda-forge resolves the conda part (names and versions as on PyPI,
matplotlib's as matplotlib-base), and anything of a real conda's activation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from fakedata import ONE_EXPERIMENT_SWEEP
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "envs/kdflow.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# pyproject.toml's dependencies that the jobs do not import: the controller's (Snakemake, its
# plugins). A job's `script:` gets Snakemake's module from the controller's path; the trainer's
# PBS owner probe imports the PBS plugin's qstat parser (and the Snakemake interfaces that the
# plugin's package imports) the same way.
NOT_IN_JOBS = {
    "snakemake",
    "snakemake-executor-plugin-pbs",
    "snakemake-interface-executor-plugins",
    "snakemake-executor-plugin-slurm",
    "snakemake-interface-common",
}
# conda-forge's names where they differ from PyPI's (matplotlib-base: matplotlib without Qt)
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib", "pytorch": "torch"}


def _env_specs(env: dict) -> tuple[dict[str, str], list[str]]:
    """{name: conda specifier} of the conda part (PyPI names) and the pip lines of an env file."""
    conda, pip = {}, []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip += item["pip"]
            continue
        name, _, spec = item.strip().partition(" ")
        conda[CONDA_TO_PYPI.get(name, name)] = spec.replace(" ", "")
    return conda, pip


def test_env_file_lists_every_job_dependency_with_pyprojects_pins():
    env = yaml.safe_load(ENV_FILE.read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda, pip = _env_specs(env)
    assert env["channels"] == ["conda-forge", "nodefaults"]

    listed = {}
    for name, spec in conda.items():
        if name not in ("python", "pip"):
            listed[name] = SpecifierSet(spec)
    for line in pip:
        # nothing from a path, a URL or in editable mode: the file is used from a copy
        assert not line.startswith("-") and "/" not in line and not line.startswith("."), line
        requirement = Requirement(line)
        listed[requirement.name] = requirement.specifier
    wanted = {
        Requirement(line).name: Requirement(line).specifier for line in project["dependencies"]
    }
    for name in NOT_IN_JOBS:
        assert name in wanted, f"{name}: no longer a dependency, drop it from NOT_IN_JOBS"
        del wanted[name]
    assert listed == wanted

    # one python that pyproject accepts (3.11: the .venv's and Debian 12's)
    python = conda["python"]
    assert re.fullmatch(r"=3\.\d+", python), python
    assert SpecifierSet(project["requires-python"]).contains(python[1:] + ".0")
    assert "pip" in conda


# -- a stand-in conda --------------------------------------------------------------------------

# What Snakemake asks of conda (snakemake/deployment/conda.py): `--version`, `info --json`,
# `config --get channel_priority --json`, `env create --quiet --no-default-packages --file F
# --prefix P`, and `source <base>/bin/activate P` before a job. `env create` here makes a venv
# and installs the conda part with pip (same names, conda-forge's aliases mapped); the pip part
# goes as conda passes it: a requirements file written beside F, pip run in F's directory
# (conda's pip_workdir), so relative paths mean what they would mean to conda.
# Where FAKE_CONDA_PROBE names a directory, every python of the environment that runs a script
# file writes there, at exit, which python ran it and where its modules came from.
FAKE_CONDA = r'''
import json, os, re, secrets, subprocess, sys, yaml

BASE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.environ["FAKE_CONDA_PYTHON"]
ALIASES = {"matplotlib-base": "matplotlib", "pytorch": "torch"}
PROBE = """
import atexit, os, sys
def _probe():
    where = os.environ.get("FAKE_CONDA_PROBE")
    if not where or not sys.argv or not os.path.isfile(sys.argv[0]):
        return
    import json
    names = ("kdflow", "snakemake", "snakemake_executor_plugin_pbs", "torch", "torchvision",
             "numpy", "pandas", "matplotlib", "scipy", "sklearn", "yaml", "jsonschema",
             "rich", "pygments")
    modules = {name: getattr(sys.modules[name], "__file__", None)
               for name in names if name in sys.modules}
    record = {"script": sys.argv[0], "executable": sys.executable, "prefix": sys.prefix,
              "modules": modules}
    with open(os.path.join(where, f"{os.getpid()}.json"), "w") as f:
        json.dump(record, f)
atexit.register(_probe)
"""


def pip_requirement(spec):
    name, _, version = spec.strip().partition(" ")
    name, version = ALIASES.get(name, name), version.replace(" ", "")
    if re.fullmatch(r"=[^=<>!,]+", version):
        version = f"=={version[1:]}.*"
    return name + version


def create(env_file, prefix):
    env = yaml.safe_load(open(env_file))
    conda, pip = [], []
    for item in env.get("dependencies", []):
        if isinstance(item, dict):
            pip += item.get("pip", [])
        elif item.split()[0] == "python":
            # conda would install this python: the stand-in has only its own
            wanted = item.split(None, 1)[1].lstrip("=") if " " in item else ""
            code = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
            have = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                                  check=True).stdout.strip()
            if not (have + ".").startswith(wanted + "."):
                sys.exit(f"fake conda: python {wanted} wanted, {PYTHON} is {have}")
        elif item.split()[0] != "pip":
            conda.append(pip_requirement(item))
    subprocess.run([PYTHON, "-m", "venv", prefix], check=True)
    python = os.path.join(prefix, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
        f.write(PROBE)
    pip_cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if conda:
        subprocess.run(pip_cmd + conda, check=True)
    if pip:
        workdir = os.path.dirname(os.path.abspath(env_file))
        requirements = os.path.join(workdir, f"condaenv.{secrets.token_hex(4)}.requirements.txt")
        with open(requirements, "w") as f:
            f.write("\n".join(pip) + "\n")
        try:
            subprocess.run(pip_cmd + ["-U", "-r", requirements], check=True, cwd=workdir)
        finally:
            os.remove(requirements)


def main(argv):
    if argv == ["--version"]:
        print("conda 24.11.3")
    elif argv[:2] == ["info", "--json"]:
        print(json.dumps({"conda_prefix": BASE, "root_prefix": BASE, "platform": "linux-64",
                          "conda_version": "24.11.3", "envs_dirs": []}))
    elif argv[:3] == ["config", "--get", "channel_priority"]:
        print(json.dumps({"get": {"channel_priority": "strict"}, "rc_path": "", "success": True,
                          "warnings": []}))
    elif argv[:2] == ["env", "create"]:
        create(argv[argv.index("--file") + 1], argv[argv.index("--prefix") + 1])
    elif argv[:1] == ["clean"]:
        pass
    else:
        sys.exit(f"fake conda: not implemented: {argv}")


main(sys.argv[1:])
'''

ACTIVATE = """\
# the stand-in conda's activate: `source activate PREFIX`
export CONDA_PREFIX="$1" PATH="$1/bin:$PATH"
unset PYTHONHOME
"""


def fake_conda(base: Path) -> dict[str, str]:
    """A stand-in conda installation at `base`; the environment to run Snakemake in."""
    (base / "bin").mkdir(parents=True, exist_ok=True)
    conda = base / "bin/conda"
    conda.write_text(f"#!{sys.executable}\n{FAKE_CONDA}")
    conda.chmod(0o755)
    (base / "bin/activate").write_text(ACTIVATE)
    return {
        **os.environ,
        "PATH": f"{base / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FAKE_CONDA_PYTHON": sys._base_executable,
    }


def _workflow(root: Path, snakefile: str, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "Snakefile").write_text(textwrap.dedent(snakefile))
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def _snakemake(cwd: Path, env: dict[str, str], *args: str, python: list[str] = SNAKEMAKE,
               timeout: float = 900) -> subprocess.CompletedProcess:  # fmt: skip
    return subprocess.run([*python, "--sdm", "conda", "--cores", "1", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_a_relative_pip_path_cannot_work_where_snakemake_creates_the_env(tmp_path):
    # the env file as it was: `-e ..` from a file that Snakemake copies into .snakemake/conda
    old = "channels: [conda-forge, nodefaults]\ndependencies:\n  - python =3.11\n  - pip\n"
    workflow = _workflow(
        tmp_path / "workflow",
        """
        rule a:
            output: "a.txt"
            conda: "envs/kdflow.yaml"
            shell: "python -c 'import kdflow_like' > {output}"
        """,
        {
            "envs/kdflow.yaml": old + "  - pip:\n      - -e ..\n",
            # the project `..` was meant to name, beside envs/
            "pyproject.toml": '[project]\nname = "kdflow-like"\nversion = "0"\n',
            "kdflow_like.py": "",
        },
    )
    p = _snakemake(workflow, fake_conda(tmp_path / "conda"))
    assert p.returncode != 0
    assert "Could not create conda environment" in p.stderr, p.stderr[-3000:]
    # `..` of the copy in .snakemake/conda/ is .snakemake/, not the project
    assert (
        f"{workflow / '.snakemake'} " in p.stderr
        and "does not appear to be a Python project" in p.stderr
    )
    assert not (workflow / "a.txt").exists()


# The edit proposed for rules/common.smk (before `from kdflow.config import Sweep`): the
# controller and every job process import kdflow from the workflow's own src/, installed or
# not; Snakemake hands that path on to the scripts.
COMMON_SMK_SRC = """\
import sys
from pathlib import Path

_SRC = str(Path(workflow.main_snakefile).parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
"""

PROBE_SCRIPT = """
import json, sys
import yaml
import kdflow
from snakemake_executor_plugin_pbs import status
with open(snakemake.output[0], "w") as f:
    json.dump({"executable": sys.executable, "prefix": sys.prefix, "yaml": yaml.__file__,
               "kdflow": kdflow.__file__, "plugin": status.__file__,
               "snakemake": sys.modules["snakemake"].__file__}, f)
"""


@pytest.mark.slow
def test_a_jobs_script_runs_in_the_env_and_finds_kdflow_on_snakemakes_path(tmp_path):
    """A `script:` of a rule with `conda:` runs with the environment's python; kdflow (here
    from the workflow's src/, through COMMON_SMK_SRC, with a controller that has no kdflow of
    its own) and the PBS plugin come from the path Snakemake appends; the environment holds
    neither."""
    workflow = _workflow(
        tmp_path / "workflow",
        COMMON_SMK_SRC
        + textwrap.dedent(
            """
            rule a:
                output: "a.json"
                conda: "envs/light.yaml"
                script: "scripts/probe.py"
            """
        ),
        {
            "envs/light.yaml": "channels: [conda-forge, nodefaults]\n"
            "dependencies:\n  - python =3.11\n  - pip\n  - pyyaml >=6\n",
            "scripts/probe.py": PROBE_SCRIPT,
            "src/kdflow/__init__.py": (ROOT / "src/kdflow/__init__.py").read_text(),
        },
    )
    # a controller whose own path lacks kdflow (the .venv's editable install is taken away)
    without_kdflow = [sys.executable, "-c", (
        f"import sys; sys.path[:] = [p for p in sys.path if p != {str(ROOT / 'src')!r}]; "
        "import importlib.util; assert importlib.util.find_spec('kdflow') is None; "
        "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()"
    )]  # fmt: skip
    envs = tmp_path / "envs"
    p = _snakemake(workflow, fake_conda(tmp_path / "conda"), "--conda-prefix", str(envs),
                   python=without_kdflow)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    seen = json.loads((workflow / "a.json").read_text())
    prefix = Path(seen["prefix"])
    assert prefix.parent == envs and Path(seen["executable"]) == prefix / "bin/python"
    assert Path(seen["yaml"]).is_relative_to(prefix)  # the environment's own packages first
    assert seen["kdflow"] == str(workflow / "src/kdflow/__init__.py")
    plugin = ROOT / "plugins/snakemake-executor-plugin-pbs/src"
    assert Path(seen["plugin"]).is_relative_to(plugin) or "site-packages" in seen["plugin"]
    # the `snakemake` object's module is the controller's Snakemake, not the environment's
    assert not Path(seen["snakemake"]).is_relative_to(prefix)
    # the environment alone has neither
    alone = subprocess.run([prefix / "bin/python", "-c", "import kdflow"], capture_output=True)
    assert alone.returncode != 0


# The real environment is large (torch with its CUDA libraries: ~6 GB, minutes to install):
# it is kept between runs, where Snakemake keeps environments: `--conda-prefix`, one
# environment per content of envs/kdflow.yaml (Snakemake's own hash), under a folder named for
# the stand-in conda's code. Older ones are removed.
CONDA_CACHE = Path(
    os.environ.get("KDFLOW_CONDA_ENVS")
    or ("/var/cache/kdflow/conda-envs" if os.geteuid() == 0 else "~/.cache/kdflow/conda-envs")
).expanduser()

# what the jobs import, as modules
JOB_MODULES = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "scipy", "sklearn",
               "yaml", "jsonschema", "rich", "pygments")  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(2100)  # a safety net above the run's own 1800 s limit (pip builds included)
def test_the_real_env_runs_every_script_of_the_workflow(tmp_path):
    """envs/kdflow.yaml as it is, through Snakemake's conda code (the stand-in conda installs
    it with pip): the workflow's three scripts run with the environment's python, take every
    package from the environment, and kdflow from a src/ of the workflow."""
    workflow = tmp_path / "workflow"
    workflow.mkdir()
    for name in ("Snakefile", "rules", "scripts", "config", "envs", "src", "docs/report"):
        source, target = ROOT / name, workflow / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(
                source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(source, target)
    (workflow / "small.yaml").write_text(ONE_EXPERIMENT_SWEEP)

    fake = hashlib.sha256((FAKE_CONDA + ACTIVATE).encode()).hexdigest()[:12]
    envs = CONDA_CACHE / f"fake-{fake}"
    envs.mkdir(parents=True, exist_ok=True)
    for old in CONDA_CACHE.glob("fake-*"):
        if old != envs:
            shutil.rmtree(old, ignore_errors=True)
    probes = tmp_path / "probes"
    probes.mkdir()
    env = {**fake_conda(tmp_path / "conda"), "FAKE_CONDA_PROBE": str(probes)}
    p = _snakemake(workflow, env, "--conda-prefix", str(envs), "--configfile", "small.yaml",
                   "--replace-workflow-config", timeout=1800)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-8000:]
    assert (workflow / "results/digits/pure/resnet8/seed0/completed").exists()
    assert (workflow / "results/summary/results.csv").exists()

    records = [json.loads(f.read_text()) for f in probes.glob("*.json")]
    # the scripts of the jobs (Snakemake runs a copy from .snakemake/scripts/tmp<random>.<name>)
    scripts = {
        Path(r["script"]).name.split(".", 1)[1]: r
        for r in records
        if Path(r["script"]).parent == workflow / ".snakemake/scripts"
    }
    assert set(scripts) == {"prepare_dataset.py", "train.py", "plot_sweep.py"}, scripts.keys()
    prefix = Path(records[0]["prefix"])
    assert prefix.parent == envs
    for name, record in scripts.items():
        assert record["executable"] == str(prefix / "bin/python"), name
        modules = record["modules"]
        for module, where in modules.items():
            if module in JOB_MODULES:
                assert Path(where).is_relative_to(prefix), (name, module, where)
        kdflow = Path(modules["kdflow"])
        assert not kdflow.is_relative_to(prefix)
        assert kdflow == workflow / "src/kdflow/__init__.py"  # rules/common.smk's path
    assert {"torch", "numpy"} <= set(scripts["train.py"]["modules"])
    assert {"torch", "numpy", "sklearn"} <= set(scripts["prepare_dataset.py"]["modules"])
    assert {"pandas", "matplotlib"} <= set(scripts["plot_sweep.py"]["modules"])

    # the environment alone (no path appended) imports every package of the jobs, not kdflow
    python = str(prefix / "bin/python")
    p = subprocess.run([python, "-c", "import " + ", ".join(JOB_MODULES)], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert subprocess.run([python, "-c", "import kdflow"], capture_output=True).returncode != 0
    # with pyproject.toml's pins
    code = "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
    versions = subprocess.run([python, "-c", code], capture_output=True, text=True)
    torch_version, vision_version = versions.stdout.split()
    assert torch_version.split("+")[0] == "2.14.1" and vision_version.split("+")[0] == "0.29.1"
