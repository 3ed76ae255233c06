"""Secrets stay secret: passwords in connection strings and keys never reach a message or a log line."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "****"
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@:]*:([^/@]*)@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)


def url_secrets(url: str | None) -> list[str]:
    """The password of a URL or ``key=value`` connection string, as written and as decoded."""
    if not url:
        return []
    found = [m.group(1) for pattern in (_URL_PASSWORD, _QUERY_PASSWORD) if (m := pattern.search(url))]
    found += [m.group(1).strip("'") for m in _KEYWORD_PASSWORD.finditer(url)]
    found += [unquote(secret) for secret in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def mask_url(url: str | None) -> str | None:
    """``postgresql://app:****@db/app``: the URL with its password masked (None stays None)."""
    if not url:
        return url
    if "://" not in url:
        return redact(url, url_secrets(url))
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else netloc
    query = _QUERY_PASSWORD.sub(lambda m: m.group(0).replace(m.group(1), MASK), "?" + parts.query)[1:]
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Redactor(logging.Filter):
    """Masks the given secrets in every record passing through a handler."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            masked = redact(message, self.secrets)
            if masked != message:
                record.msg, record.args = masked, None
        return True
