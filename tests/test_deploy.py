"""What users install and deploy: the distribution, the image, compose, Kubernetes, the dashboard and alerts.

No container engine runs here, so each file is checked as far as it can be offline: the package is built and
installed, the Dockerfile linted, its entrypoint and build-time export run, compose validated against the
compose-spec schema, the manifests against the Kubernetes and KEDA schemas, and every PromQL expression parsed.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DIST_NAME = "pgsyncer"  # `syncer` on PyPI is an unrelated async-to-sync package


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, the assertion shows what it printed."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


# ------------------------------------------------------------------------------------------------ the distribution


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, sdist) as `python -m build` makes them: the sdist first, then the wheel built from the sdist.

    No isolation: hatchling comes from the dev extra, so the build is offline and uses the backend we test with.
    """
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_and_sdist_pass_twine_check(dists: tuple[Path, Path]) -> None:
    result = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists)])
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_carries_migrations_sql_and_the_syncer_command(dists: tuple[Path, Path]) -> None:
    wheel, _ = dists
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"{DIST_NAME}-{wheel.name.split('-')[1]}.dist-info"
        metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    sql = {f"syncer/sql/{p.name}" for p in (ROOT / "syncer" / "sql").glob("*.sql")}
    migrations = {f"syncer/migrations/versions/{p.name}" for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert sql and migrations
    assert {"syncer/migrations/env.py", "syncer/migrations/script.py.mako", *sql, *migrations} <= names
    assert metadata["Name"] == DIST_NAME
    assert "syncer = syncer.cli:main" in entry_points
    # An extra that named `syncer[...]` would install PyPI's unrelated package.
    required = {canonicalize_name(Requirement(r).name) for r in metadata.get_all("Requires-Dist")}
    assert "psycopg" in required and "syncer" not in required


def test_sdist_carries_the_sources_the_wheel_is_built_from(dists: tuple[Path, Path]) -> None:
    _, sdist = dists
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "migrations/env.py", "syncer/cli.py", "syncer/sql/queue.sql"} <= names


def test_built_wheel_installed_alone_runs_the_syncer_command(dists: tuple[Path, Path], tmp_path: Path) -> None:
    """The wheel with --no-deps in a fresh venv; its dependencies are borrowed from this environment through a
    .pth line, which comes after the venv's own site-packages: `syncer` itself can only come from the wheel."""
    wheel, _ = dists
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)])
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    usage = run([str(venv / "bin" / "syncer"), "--help"], cwd=tmp_path, env=env).stdout
    where = run(
        [str(python), "-c", "import syncer.schema as s; print(s.__file__); print(s.migrations_dir())"],
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    assert usage.startswith("usage: syncer")
    assert all(Path(path).is_relative_to(site) for path in where), where
