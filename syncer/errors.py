"""The few kinds of failure the rest of syncer understands, each with one response.

- ``ConfigError``: the configuration or the database is not as syncer needs it; the message names
  the culprit and the fix; the command exits 2 without touching anything.
- A row's error (a string recorded on its queue row): the provider refused that input, or gave
  it a vector that cannot be stored. The row backs off and, after ``max_attempts``, is dead; the
  rest of the batch flows on.
- ``ProviderError``: the provider failed for the whole batch (down, overloaded, a malformed
  answer). The batch goes back uncharged and the worker backs off.
- ``ProviderFatal``: the provider refuses all work until a person acts (bad key, no quota,
  vectors of the wrong size). The batch goes back uncharged and the worker stops.
- ``StoreChanged``: the store or the text definition moved on (a re-embed, an adopted
  definition). This worker's vectors no longer belong there: it gives its batch back and stops.
"""

from __future__ import annotations

MAX_ROW_ERROR = 1000  # characters of a message kept per failed row


class ConfigError(Exception):
    """A configuration problem the user must fix; the message names the culprit."""


class ProviderError(Exception):
    """The provider failed for the whole batch (down, overloaded): no row is charged; retry later."""


class ProviderFatal(Exception):
    """The provider refuses all work until a person acts (bad key, no quota): stop, charge no row."""


class StoreChanged(Exception):
    """The store takes other vectors now (re-embedded, or another text definition): this worker must stop."""


def row_error(exc: BaseException | str) -> str:
    """What is recorded for a row: the exception's type and message, bounded, and storable as text
    (PostgreSQL's text holds no NUL and only valid UTF-8)."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = text.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")
    return text[:MAX_ROW_ERROR]
