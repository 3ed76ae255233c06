"""Every knob, from ``SYNCER_*`` environment variables, validated once at start."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError
from .redact import mask_url, url_secrets

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME = 40  # leaves room for the suffixes of derived objects within PostgreSQL's 63 bytes


def _check_identifier(value: str, what: str) -> str:
    if not IDENTIFIER.match(value) or len(value) > 63:
        raise ValueError(f"{what} {value!r} is not a plain SQL identifier (letters, digits, _)")
    return value


def _split_qualified(name: str, what: str) -> tuple[str | None, str]:
    parts = name.split(".")
    if len(parts) > 2:
        raise ValueError(f"{what} {name!r} has more than one '.'")
    for part in parts:
        _check_identifier(part, what)
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


class ChunkSize(BaseModel):
    """Chunks of at most ``max_tokens`` tokens (the document prompt counted in), overlapping by up to ``overlap``."""

    model_config = {"extra": "forbid", "frozen": True}

    max_tokens: int = Field(ge=8)
    overlap: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _overlap(self) -> Self:
        if self.overlap >= self.max_tokens:
            raise ValueError(f"overlap {self.overlap} must be smaller than max_tokens {self.max_tokens}")
        return self


class SourceConfig(BaseModel):
    """One table whose text syncer keeps embedded."""

    model_config = {"extra": "forbid", "frozen": True}

    table: str
    columns: tuple[str, ...] = ()
    template: str | None = None
    key: tuple[str, ...] = ()
    target: str | None = None
    name: str | None = None
    # "auto": a text within the model's input limit is one vector, a longer one is split at that limit;
    # "none": one vector per row, the text cut to the limit; or chunks of a size of your own.
    chunking: Literal["auto", "none"] | ChunkSize = "auto"
    search_config: str = "simple"  # the text search configuration of hybrid search (pg_catalog's)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        _split_qualified(value, "table")
        return value

    @field_validator("columns", "key")
    @classmethod
    def _columns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for column in value:
            _check_identifier(column, "column")
        if len(set(value)) != len(value):
            raise ValueError(f"columns {list(value)} repeat a name")
        return value

    @field_validator("search_config")
    @classmethod
    def _search_config(cls, value: str) -> str:
        return _check_identifier(value, "search_config")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None:
            _split_qualified(value, "target")
        return value

    @model_validator(mode="after")
    def _text_and_name(self) -> Self:
        if bool(self.columns) == bool(self.template):
            raise ValueError(f"source {self.table!r}: give exactly one of 'columns' or 'template'")
        if self.template is not None:
            template_fields(self.template)
        if self.name is not None:
            _check_identifier(self.name, "source name")
        if len(self.source_name) > MAX_NAME:
            raise ValueError(f"source name {self.source_name!r} is longer than {MAX_NAME} characters")
        return self

    @property
    def source_name(self) -> str:
        return self.name or _split_qualified(self.table, "table")[1]

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The columns whose text is embedded, in order of first use."""
        if self.template is None:
            return self.columns
        return tuple(dict.fromkeys(f for _, f in template_pieces(self.template) if f))


def template_pieces(template: str) -> list[tuple[str, str | None]]:
    """Split "{title}\\n\\n{body}" into (literal text, column or None) pieces."""
    pieces: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is not None and (spec or conversion):
            raise ValueError(f"template field {{{field}}} may not have a format spec or conversion")
        if field is not None:
            _check_identifier(field, "template field")
        pieces.append((literal, field))
    return pieces


def template_fields(template: str) -> list[str]:
    try:
        fields = [f for _, f in template_pieces(template) if f]
    except ValueError as exc:
        raise ValueError(f"template {template!r}: {exc}") from None
    if not fields:
        raise ValueError(f"template {template!r} names no column")
    return fields


MEMORY = re.compile(r"^\s*(\d+)\s*(kB|MB|GB|TB)?\s*$", re.IGNORECASE)
UNITS = {"kb": 1, "mb": 1024, "gb": 1024**2, "tb": 1024**3}


def memory_kb(value: str) -> int:
    """``"2GB"`` → 2097152 (kB), as PostgreSQL reads memory settings (no unit: kB)."""
    match = MEMORY.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not an amount of memory such as 512MB or 2GB")
    return int(match.group(1)) * UNITS[(match.group(2) or "kB").lower()]


class Settings(BaseSettings):
    """syncer's configuration. Build once (``Settings()``) and pass it down."""

    model_config = SettingsConfigDict(env_prefix="SYNCER_", extra="ignore", populate_by_name=True)

    database_url: SecretStr | None = Field(
        None, description="PostgreSQL URL; unset starts an embedded server in data_dir"
    )
    listen_database_url: SecretStr | None = Field(
        None, description="a direct (unpooled) URL for LISTEN; default: SYNCER_DATABASE_URL unless that is pooled"
    )
    database_pooled: bool = Field(
        False, description="SYNCER_DATABASE_URL goes through a transaction pooler (PgBouncer): never LISTEN on it"
    )
    apply: Literal["auto", "never"] = Field(
        "auto", description="`syncer run` may create or update syncer's objects (auto), or only checks them (never)"
    )
    lock_timeout: float = Field(
        2.0, gt=0, description="seconds DDL (and a settle) waits for a lock before giving way and retrying"
    )
    data_dir: Path = Path(".syncer")
    sources: Annotated[list[SourceConfig], NoDecode] = Field(default_factory=list)
    provider: str = Field("sentence-transformers", description="sentence-transformers, openai, or module:Class")
    model: str | None = Field(None, description="default: all-MiniLM-L6-v2, or text-embedding-3-small for openai")
    dimensions: int | None = Field(None, ge=1, description="ask the model for shorter vectors (OpenAI v3 models)")
    on_too_long: Literal["truncate", "error"] = Field(
        "truncate", description="a text over the model's input limit: cut it (with a warning) or record an error"
    )
    # sentence-transformers
    device: str | None = Field(None, description="cuda, mps, cpu; default: the best available")
    st_backend: Literal["torch", "onnx", "onnx-int8"] = Field("torch", description="how the local model runs")
    query_prompt: str | None = Field(None, description="prefix for queries; default: the model's 'query' prompt")
    document_prompt: str | None = Field(None, description="prefix for documents; default: the model's own")
    # OpenAI and compatible servers
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SYNCER_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(None, description="an OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    request_inputs: int = Field(2048, ge=1, le=2048, description="most inputs in one embeddings request")
    request_tokens: int = Field(300_000, ge=1, description="most tokens in one embeddings request")
    concurrency: int = Field(4, ge=1, description="embeddings requests in flight at once")
    requests_per_minute: int | None = Field(None, ge=1, description="client-side limit (your account's RPM)")
    tokens_per_minute: int | None = Field(None, ge=1, description="client-side limit (your account's TPM)")
    request_timeout: float = Field(60.0, gt=0, description="seconds before a request is abandoned and retried")
    max_retries: int = Field(6, ge=0, description="retries of a request (429, 5xx, timeouts) before backing off")
    batch_size: int = Field(512, ge=1, description="rows claimed per batch (the window sorted by length)")
    batch_bytes: int = Field(
        8_000_000, ge=1, description="most bytes of text claimed per batch (a longer row comes alone)"
    )
    encode_batch_size: int = Field(16, ge=1, description="texts per model forward pass")
    poll_interval: float = Field(5.0, gt=0, description="seconds between polls of the queue")
    linger_seconds: float = Field(
        0.05, ge=0, description="a busy worker that found only a few changes waits this long for more (0: never)"
    )
    lease_seconds: float = Field(
        60.0, gt=0, description="a claimed batch stays ours this long unless renewed (every third of it)"
    )
    max_batch_seconds: float = Field(
        1800.0, gt=0, description="a batch held longer is no longer renewed: a stuck worker's rows go to others"
    )
    retry_base_seconds: float = Field(10.0, gt=0, description="first backoff of a failing row")
    retry_max_seconds: float = Field(3600.0, gt=0, description="longest backoff of a failing row")
    max_attempts: int = Field(10, ge=1, description="a row rejected this many times is dead: no more retries")
    notify: bool = Field(True, description="wake workers with NOTIFY; off means poll only")
    index_memory: str | None = Field(
        None, description="memory of an HNSW index build, e.g. 2GB (default: sized to the index, 64 MB to 8 GB)"
    )
    index_workers: int | None = Field(
        None, ge=0, description="parallel workers of an HNSW index build (default: the server's setting)"
    )
    index_after_rows: int = Field(
        1000, ge=0, description="backfills larger than this build the HNSW index after loading"
    )
    index_m: int = Field(16, ge=2, le=100, description="links per node of an HNSW index (pgvector's m)")
    index_ef_construction: int = Field(
        64, ge=4, le=1000, description="candidates an HNSW build weighs per node (pgvector's ef_construction)"
    )
    index_min_rows: int | None = Field(
        None,
        ge=0,
        description="a store gets its HNSW index once it holds this many vectors; smaller ones are searched "
        "exactly (default: 3,000,000 / dimensions up to 500 dimensions, e.g. 7,812 of 384; 1,000 above; never above "
        "2,000, pgvector's limit)",
    )
    application_name: str = "syncer"
    http_port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics, /healthz and /readyz on this port (unset: no endpoint)"
    )
    http_host: str = Field("127.0.0.1", description="address the HTTP endpoint binds (0.0.0.0 in containers)")
    serve_host: str = Field("127.0.0.1", description="`syncer serve` binds this address")
    serve_port: int = Field(8000, ge=1, le=65535, description="`syncer serve` listens on this port")
    serve_api_key: SecretStr | None = Field(None, description="`syncer serve` requires this bearer token")
    serve_max_inputs: int = Field(256, ge=1, description="texts per embeddings request to `syncer serve`")
    serve_max_bytes: int = Field(1_000_000, ge=1, description="request body size `syncer serve` accepts")
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="-v sets DEBUG")

    @field_validator("index_memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            memory_kb(value)
        return value

    @model_validator(mode="after")
    def _hnsw(self) -> Self:
        if self.index_ef_construction < 2 * self.index_m:
            raise ValueError(
                f"SYNCER_INDEX_EF_CONSTRUCTION ({self.index_ef_construction}) must be at least twice "
                f"SYNCER_INDEX_M ({self.index_m}): pgvector refuses such an index"
            )
        return self

    @field_validator("sources", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip():
            raise ValueError('is empty; give a JSON list of sources, e.g. [{"table": "docs", "columns": ["body"]}]')
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not JSON ({exc})") from None

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.source_name for s in sources]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicated)}")
        return sources

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.source_name == name:
                return source
        known = ", ".join(s.source_name for s in self.sources) or "none configured"
        raise ConfigError(f"unknown source {name!r} (known: {known})")

    def masked(self) -> dict[str, object]:
        """Effective settings, printable: passwords and keys masked."""
        return self.model_dump(mode="json") | {
            "database_url": mask_url(_secret(self.database_url)),
            "listen_database_url": mask_url(_secret(self.listen_database_url)),
            "openai_base_url": mask_url(self.openai_base_url),
        }

    def secrets(self) -> list[str]:
        """Every secret a message could carry: passwords of the URLs, the API key."""
        found = url_secrets(_secret(self.database_url)) + url_secrets(_secret(self.listen_database_url))
        found += url_secrets(self.openai_base_url)
        keys = [_secret(key) for key in (self.openai_api_key, self.serve_api_key) if key is not None]
        return found + [key for key in keys if key]


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
