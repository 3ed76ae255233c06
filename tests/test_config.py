"""Bad configuration fails at start, with one message that names the culprit, and a non-zero exit."""

from __future__ import annotations

import json
import logging

import psycopg
import pytest

from syncer import cli
from syncer.settings import Settings, SourceConfig

from helpers import make_settings, sync_once, syncer_env, syncer_process
from providers import HashEmbedder, OtherHashEmbedder

HASH = "tests.providers:HashEmbedder"


class WideHashEmbedder(HashEmbedder):
    """The same model id, but 32 dimensions: a store built for 16 cannot hold these."""

    dimensions = 32


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], *args: str
) -> tuple[int, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("sources", "provider", "message"),
    [
        ([{"table": "public.nope", "columns": ["body"]}], HASH, "source 'nope': table public.nope does not exist"),
        ([{"table": "docs", "columns": ["bodyy"]}], HASH, "column 'bodyy' does not exist in public.docs"),
        ([{"table": "docs", "template": "{title}: {summary}"}], HASH, "column 'summary' does not exist"),
        ([{"table": "docs", "columns": ["body"], "key": ["uuid"]}], HASH, "key column 'uuid' does not exist"),
        ([{"table": "keyless", "columns": ["body"]}], HASH, "public.keyless has no primary key"),
        ([{"table": "docs"}], HASH, "give exactly one of 'columns' or 'template'"),
        ([{"table": "docs; drop table docs", "columns": ["body"]}], HASH, "is not a plain SQL identifier"),
        ([{"table": "docs", "columns": ["body"]}], "nope", "unknown provider 'nope'"),
        ([{"table": "docs", "columns": ["body"]}], "tests.providers:Missing", "cannot be loaded"),
        ([], HASH, "no sources configured"),
    ],
)
def test_bad_configuration_is_named(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    conn: psycopg.Connection,
    docs: str,
    db_url: str,
    sources: list[dict],
    provider: str,
    message: str,
) -> None:
    conn.execute("CREATE TABLE keyless (body text)")
    env = {"SYNCER_DATABASE_URL": db_url, "SYNCER_SOURCES": json.dumps(sources), "SYNCER_PROVIDER": provider}
    code, err = run_cli(monkeypatch, capsys, env, "run", "--once")
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_an_index_pgvector_would_refuse_is_named_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], docs: str, db_url: str
) -> None:
    sources = json.dumps([{"table": "docs", "columns": ["body"]}])
    env = {"SYNCER_DATABASE_URL": db_url, "SYNCER_SOURCES": sources, "SYNCER_PROVIDER": HASH, "SYNCER_INDEX_M": "40"}
    code, err = run_cli(monkeypatch, capsys, env, "run", "--once")
    assert code == 2
    assert "SYNCER_INDEX_EF_CONSTRUCTION (64) must be at least twice SYNCER_INDEX_M (40)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        (WideHashEmbedder, "store public.docs_embeddings holds vector(16) but model test/hash-16 makes 32-dimensional"),
        (OtherHashEmbedder, "was built with model test/hash-16, not the configured test/other-16; `syncer reembed"),
    ],
)
def test_store_built_for_another_model_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    docs: str,
    db_url: str,
    provider: type,
    message: str,
) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    env = {
        "SYNCER_DATABASE_URL": db_url,
        "SYNCER_SOURCES": json.dumps([{"table": "docs", "columns": ["body"]}]),
        "SYNCER_PROVIDER": f"{provider.__module__}:{provider.__name__}",
    }
    code, err = run_cli(monkeypatch, capsys, env, "run", "--once")
    assert code == 2
    assert message in err


def test_the_process_exits_non_zero(docs: str, db_url: str) -> None:
    env = syncer_env(db_url, json.dumps([{"table": "docs", "columns": ["nope"]}]), SYNCER_PROVIDER=HASH)
    output, _ = (process := syncer_process(["run"], env)).communicate(timeout=60)
    assert process.returncode == 2
    assert output.strip().endswith("syncer: source 'docs': column 'nope' does not exist in public.docs")


def test_unreachable_database_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "SYNCER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
        "SYNCER_SOURCES": json.dumps([{"table": "docs", "columns": ["body"]}]),
    }
    code, err = run_cli(monkeypatch, capsys, env, "status")
    assert code == 2
    assert err.startswith("syncer: database unavailable:")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCER_DATABASE_URL", "postgresql://app:secret@db/app")
    monkeypatch.setenv("SYNCER_SOURCES", '[{"table": "public.docs", "template": "{title}\\n\\n{body}", "key": ["id"]}]')
    monkeypatch.setenv("SYNCER_BATCH_SIZE", "64")
    settings = Settings()
    [source] = settings.sources
    assert source == SourceConfig(table="public.docs", template="{title}\n\n{body}", key=("id",))
    assert (source.source_name, source.text_columns, settings.batch_size) == ("docs", ("title", "body"), 64)
    assert "secret" not in json.dumps(settings.masked())


def test_source_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="repeated: docs"):
        Settings(sources=[{"table": "a.docs", "columns": ["x"]}, {"table": "b.docs", "columns": ["x"]}])


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:se%cret@127.0.0.1:1/app?connect_timeout=2",  # libpq quotes it in its parse error
        "postgresql://app:s3cret@127.0.0.1:1/app?connect_timeout=2",
        "host=127.0.0.1 port=1 user=app password=s3cret connect_timeout=2",
    ],
)
def test_connection_errors_never_echo_a_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    env = {"SYNCER_DATABASE_URL": url, "SYNCER_SOURCES": json.dumps([{"table": "docs", "columns": ["body"]}])}
    code, err = run_cli(monkeypatch, capsys, env, "status")
    assert code == 2 and err.startswith("syncer: ")
    assert "cret" not in err, err


def test_config_masks_every_credential(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "SYNCER_DATABASE_URL": "postgresql://app:db-secret@db/app",
        "SYNCER_LISTEN_DATABASE_URL": "postgresql://app:listen-secret@db:5432/app",
        "SYNCER_OPENAI_BASE_URL": "https://user:url-secret@llm.internal/v1",
        "SYNCER_OPENAI_API_KEY": "sk-key-secret",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "secret" not in json.dumps(printed)
    assert printed["openai_base_url"] == "https://user:****@llm.internal/v1"
    assert printed["database_url"] == "postgresql://app:****@db/app"


def test_logs_never_carry_a_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from syncer.redact import Redactor

    redactor = Redactor(["db-secret", "sk-key"])
    record = logging.LogRecord("syncer", logging.WARNING, __file__, 1, "failed: %s", ("password=db-secret",), None)
    assert redactor.filter(record) and record.getMessage() == "failed: password=****"
