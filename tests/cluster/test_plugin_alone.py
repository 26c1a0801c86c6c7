"""The PBS executor plugin alone, without kdflow, as a user gets it from PyPI: its sdist and
wheel are built from a copy of plugins/snakemake-executor-plugin-pbs (`python -m build`, with
build isolation, as `make package` does), the wheel is installed into a fresh venv made from
Debian's python3, and (a) its own tests pass there, (b) `snakemake --executor pbs` from that
venv runs a one-rule workflow on the real OpenPBS as the test user, and (c) what the Snakemake
plugin catalog and PyPI need is in the packages: the LICENSE in the wheel's dist-info, the
catalog's docs/intro.md and docs/further.md and the LICENSE in the sdist.

The venv of the plugin's dependencies (its own, its [test] extra: Snakemake, pytest; neither
the plugin nor kdflow) is made once per plugin pyproject.toml and kept (KDFLOW_PLUGIN_DEPS,
a stamp holds the file's hash; ~1 min on 2 cores, from the local wheels). Each session makes a
small venv of its own on top of it (its site-packages names the shared one) and installs the
built wheel there with `pip install --no-deps`: the code under test is the working tree's, as
packaged, and nothing shared is changed. Uses only settings the plugin has always had (queue,
status interval): no job-name prefix, registry or log directory is relied on.

Cost (2 shared cores): the dependencies' venv ~1 min when the plugin's pyproject.toml changed;
each session's build ~5 s, venv and install ~6 s; (a) the plugin's whole suite, 2.5-3.5 min;
(b) ~7 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PLUGIN = REPO / "plugins/snakemake-executor-plugin-pbs"
DEPS = Path(os.environ.get("KDFLOW_PLUGIN_DEPS") or "/opt/kdflow-test/plugin-deps")
MODULE = "snakemake_executor_plugin_pbs"
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".pytest_cache")
# What the packages are built from: the plugin's folder as it would be its own repository
PACKAGED = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "docs", "src", "tests")
# What the catalog reads (docs/ at the repository's root) and PyPI shows (the license)
CATALOG_FILES = ("docs/intro.md", "docs/further.md", "LICENSE")


def _run(*argv, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", {"PATH": PLAIN_PATH, "HOME": os.environ.get("HOME", "/root")})
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, **kwargs)


def _copy_plugin(target: Path, *names: str) -> Path:
    target.mkdir(parents=True)
    for name in names:
        source = PLUGIN / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=IGNORE)
        elif source.exists():
            shutil.copy2(source, target / name)
    return target


def _purelib(python: Path) -> str:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    return _run(python, "-c", code, check=True).stdout.strip()


def _deps_venv(scratch: Path) -> Path:
    """The shared venv of the plugin's dependencies, made when its stamp (the hash of the
    plugin's pyproject.toml) differs; one maker at a time."""
    want = hashlib.sha256((PLUGIN / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = DEPS / ".plugin-deps"
    DEPS.parent.mkdir(parents=True, exist_ok=True)
    with open(DEPS.parent / f".{DEPS.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (DEPS / "bin/python").exists() and stamp.exists() and stamp.read_text() == want:
            return DEPS
        shutil.rmtree(DEPS, ignore_errors=True)
        old_umask = os.umask(0o022)
        try:
            _run("/usr/bin/python3", "-m", "venv", DEPS, check=True)
            copy = _copy_plugin(
                scratch / "plugin-for-deps", "pyproject.toml", "README.md", "LICENSE", "src"
            )
            python = DEPS / "bin/python"
            for argv in (
                ["-m", "pip", "install", "--quiet", "--upgrade", "pip", "setuptools>=68", "wheel"],
                ["-m", "pip", "install", "--quiet", f"{copy}[test]"],
                # its dependencies only: each session installs the plugin itself, fresh
                ["-m", "pip", "uninstall", "--yes", "--quiet", "snakemake-executor-plugin-pbs"],
            ):
                p = _run(python, *argv, timeout=1800)
                assert p.returncode == 0, f"{argv}: {p.stdout[-3000:]}{p.stderr[-3000:]}"
            _run("chmod", "-R", "a+rX", DEPS, check=True)
            stamp.write_text(want)
        finally:
            os.umask(old_umask)
    return DEPS


@pytest.fixture(scope="module")
def packages(openpbs) -> dict[str, Path]:
    """The plugin's sdist and wheel, built from a copy of the working tree the way `make
    package` builds them (by this session's python, with build isolation)."""
    where = openpbs.session_dir / "plugin-packages"
    copy = _copy_plugin(where / "plugin", *PACKAGED)
    dist = where / "dist"
    p = _run(sys.executable, "-m", "build", "--outdir", dist, copy, timeout=600,
             env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{PLAIN_PATH}"})  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    [wheel], [sdist] = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def plugin_venv(openpbs, packages) -> Path:
    """A fresh venv (Debian's python3) with the built wheel installed alone, on top of the
    shared dependencies; readable by the test user."""
    where = openpbs.session_dir / "plugin-alone"
    where.mkdir()
    deps = _deps_venv(where)
    venv = where / "venv"
    _run("/usr/bin/python3", "-m", "venv", "--without-pip", venv, check=True)
    # the shared dependencies after the venv's own site-packages (the plugin goes there)
    Path(_purelib(venv / "bin/python"), "50-plugin-deps.pth").write_text(
        f"import site; site.addsitedir({_purelib(deps / 'bin/python')!r})\n"
    )
    p = _run(deps / "bin/python", "-m", "pip", "--python", venv / "bin/python", "install",
             "--quiet", "--no-deps", "--no-index", packages["wheel"], timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    _run("chmod", "-R", "a+rX", where, check=True)
    return venv


def test_the_packages_carry_the_license_and_the_catalogs_pages(packages, plugin_venv):
    with zipfile.ZipFile(packages["wheel"]) as wheel:
        names = wheel.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        fields = wheel.read(metadata).decode()
        license_text = wheel.read(next(n for n in names if n.endswith("/licenses/LICENSE")))
    assert license_text.startswith(b"MIT License")
    assert "License-Expression: MIT" in fields and "Author: kdflow developers" in fields
    assert "Project-URL: Repository, https://" in fields
    # the catalog's description: the README without its title line
    assert "Description-Content-Type: text/markdown" in fields and "## Settings" in fields
    with tarfile.open(packages["sdist"]) as sdist:
        root = sdist.getnames()[0].split("/")[0]
        for name in CATALOG_FILES:
            member = sdist.extractfile(f"{root}/{name}")
            assert member is not None and member.read().strip(), name
    # and the installed plugin keeps its license beside it
    installed = list(Path(_purelib(plugin_venv / "bin/python")).glob(
        "snakemake_executor_plugin_pbs-*.dist-info/licenses/LICENSE"))  # fmt: skip
    assert len(installed) == 1


def _where(python: Path, module: str, env=None) -> subprocess.CompletedProcess:
    return _run(python, "-c", f"import {module}; print({module}.__file__)", env=env)


@pytest.mark.timeout(1500)  # a safety net above the suite's own 1200 s limit
def test_the_plugin_installs_alone_and_its_own_tests_pass_there(plugin_venv, tmp_path):
    python = plugin_venv / "bin/python"
    # the plugin from the venv's own site-packages (a real install), kdflow from nowhere
    found = _where(python, MODULE)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(_purelib(python)), found.stdout
    assert _where(python, "kdflow").returncode != 0
    assert not list(Path(_purelib(python)).glob("__editable__*"))
    # and the shared layer holds neither
    deps = DEPS / "bin/python"
    assert _where(deps, MODULE).returncode != 0 and _where(deps, "kdflow").returncode != 0

    # its tests (and the README they check), from a copy without src/: every import of the
    # plugin is the installed one
    tests = _copy_plugin(tmp_path / "plugin-tests", "pyproject.toml", "README.md", "docs", "tests")
    env = {"PATH": f"{plugin_venv / 'bin'}:{PLAIN_PATH}", "HOME": os.environ.get("HOME", "/root"),
           "CI": os.environ.get("CI", ""), "LANG": "C.UTF-8"}  # fmt: skip
    p = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=tests, env=env,
             timeout=1200)  # fmt: skip
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    assert " passed" in p.stdout and " failed" not in p.stdout, p.stdout[-2000:]


# `run:` runs in the job's own Snakemake (inside the PBS job): it tells which python that is,
# whether kdflow is importable there, and the job's id and user
SNAKEFILE = """
rule hello:
    output:
        "hello.txt",
    resources:
        mem_mb=300,
        runtime=2,
    run:
        import importlib.util, json, os, pwd, sys

        with open(output[0], "w") as f:
            json.dump({"job": os.environ.get("PBS_JOBID"), "python": sys.executable,
                       "user": pwd.getpwuid(os.getuid()).pw_name,
                       "kdflow": importlib.util.find_spec("kdflow") is not None}, f)
"""


def test_snakemake_runs_a_job_through_openpbs_with_the_plugin_alone(openpbs, plugin_venv):
    workdir = openpbs.workdir("plugin-alone")
    (workdir / "Snakefile").write_text(SNAKEFILE)
    python = plugin_venv / "bin/python"
    # the user's PATH without kdflow's session venv: counting wrappers, PBS, the system
    env = {"PATH": f"{openpbs.counter_dir / 'bin'}:{plugin_venv / 'bin'}:/opt/pbs/bin:{PLAIN_PATH}"}
    # as the test user: the plugin is found, kdflow is not
    p = openpbs.run(python, "-c", "import kdflow", env=env, cwd=workdir)
    assert p.returncode != 0 and "No module named 'kdflow'" in p.stderr, p.stderr
    p = openpbs.run(python, "-c", f"import {MODULE}; print({MODULE}.__file__)", env=env)
    assert p.returncode == 0 and p.stdout.startswith(str(plugin_venv)), p.stdout + p.stderr

    qsubs = openpbs.calls("qsub")
    p = openpbs.run(
        python, "-m", "snakemake", "--executor", "pbs", "--jobs", "1",
        "--pbs-queue", "workq", "--pbs-status-interval", "1",
        env=env, cwd=workdir, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert openpbs.calls("qsub") == qsubs + 1

    # the server ran it: one job from this directory, finished, exit 0, in queue workq
    jobs = openpbs.jobs_of(workdir, history=True)
    assert len(jobs) == 1, jobs
    ((job_id, job),) = jobs.items()
    assert job["job_state"] == "F" and job["Exit_status"] == "0", job
    assert job["queue"] == "workq" and job["Job_Owner"].startswith(f"{openpbs.user}@")
    # the output is the job's, written inside it, by the plugin venv's python without kdflow
    ran = json.loads((workdir / "hello.txt").read_text())
    assert ran == {"job": job_id, "python": str(python), "user": openpbs.user, "kdflow": False}
