"""docker/compose.yml, its secrets script and the roles its database is initialized with."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from deploy_helpers import (
    DOCKER,
    OWNER_ROLE,
    READER_ROLE,
    WORKER_ROLE,
    run,
)
from jsonschema import Draft202012Validator
from psycopg.conninfo import conninfo_to_dict

# ------------------------------------------------------------------------------------------------ compose

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
