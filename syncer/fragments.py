"""SQL fragments of a source, shared by the per-source statements: key lists, key joins, the row's text.

Every identifier goes through ``psycopg.sql.Identifier``; literals through ``sql.Literal``.
"""

from __future__ import annotations

from functools import cache

from psycopg import sql

from .settings import template_pieces
from .sources import Source

# Every character Python's str.isspace() calls whitespace (a test keeps the two in step). SQL trims
# exactly these, so a text SQL finds non-empty is one Python and the providers find non-empty too.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
PARAGRAPH = "\n\n"
# Advisory locks: (WAKE_LOCK, 0) is held exclusively by a worker about to sleep and shared by writers that
# logged a change without NOTIFY; (WAKE_LOCK + 1, hashtext(source)): one worker at a time moves a source's log.
WAKE_LOCK = 1042511434  # hashtext('syncer.wakeup')
# source row, queue row, stored vector, current row, picked row, kept row, batch row, moved log row, unnested key
ALIASES = "tqecpkbmu"
JOINS = ("t_is_e", "t_is_p", "e_is_k", "t_is_o", "e_is_g", "b_is_e", "t_is_b", "e_is_c")


def column(alias: str | None, name: str) -> sql.Identifier:
    return sql.Identifier(alias, name) if alias else sql.Identifier(name)


def key_list(source: Source, alias: str | None = None) -> sql.Composed:
    """``k1, k2`` or ``alias.k1, alias.k2``."""
    return sql.SQL(", ").join(column(alias, k) for k in source.keys)


def keys_equal(source: Source, left: str, right: str, *, qualified: bool = False) -> sql.Composed:
    """``left.k1 = right.k1 AND ...``: joins that use the key indexes (``qualified``: pg_catalog's ``=``
    whatever the search_path, for SQL that runs in other roles' sessions)."""
    equals = sql.SQL(" OPERATOR(pg_catalog.=) " if qualified else " = ")
    return sql.SQL(" AND ").join(
        sql.SQL("{}{}{}").format(column(left, k), equals, column(right, k)) for k in source.keys
    )


def key_arrays(source: Source, *, named: bool = False) -> sql.Composed:
    """``array_agg(k1), array_agg(k2)`` (``named``: ``... AS k1``): a statement's keys as one array per column."""
    return sql.SQL(", ").join(
        sql.SQL("array_agg({}){}").format(
            sql.Identifier(k), sql.SQL(" AS {}").format(sql.Identifier(k)) if named else sql.SQL("")
        )
        for k in source.keys
    )


def keys_descending(source: Source, alias: str) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("{} DESC").format(column(alias, k)) for k in source.keys)


def keys_after(source: Source, alias: str, last: tuple[object, ...] | None) -> sql.Composable:
    """``ROW(alias.k1, alias.k2) > ROW(<last key>)`` (a keyset the key index serves); ``true`` to start."""
    if last is None:
        return sql.SQL("true")
    return sql.SQL("ROW({}) > ROW({})").format(key_list(source, alias), sql.SQL(", ").join(map(sql.Literal, last)))


def key_text(source: Source, alias: str) -> sql.Composable:
    """A key as people type it: ``42`` for one column, ``(42,en)`` for several."""
    if len(source.keys) == 1:
        return sql.SQL("{}::text").format(column(alias, source.keys[0]))
    return sql.SQL("ROW({})::text").format(key_list(source, alias))


def _trimmed(alias: str, name: str) -> sql.Composable:
    """A field's text, NULL when it has nothing but whitespace."""
    return sql.SQL("nullif(btrim({}::text, {}), '')").format(column(alias, name), sql.Literal(WHITESPACE))


def text(source: Source, alias: str = "t") -> sql.Composable:
    """SQL for the text to embed from row ``alias``: NULL when there is nothing to embed."""
    template = source.config.template
    if template is None:
        joined = sql.SQL("concat_ws({}, {})").format(
            sql.Literal(PARAGRAPH), sql.SQL(", ").join(_trimmed(alias, c) for c in source.config.columns)
        )
        return sql.SQL("nullif({}, '')").format(joined)
    pieces: list[sql.Composable] = []
    for literal, field in template_pieces(template):
        if literal:
            pieces.append(sql.Literal(literal))
        if field:
            pieces.append(sql.SQL("{}::text").format(column(alias, field)))
    any_field = sql.SQL(", ").join(_trimmed(alias, f) for f in source.config.text_columns)
    return sql.SQL("CASE WHEN num_nonnulls({}) = 0 THEN NULL ELSE nullif(btrim(concat({}), {}), '') END").format(
        any_field, sql.SQL(", ").join(pieces), sql.Literal(WHITESPACE)
    )


def vector_parts(schema: str | None) -> dict[str, sql.Composable]:
    """pgvector's type, cosine operator and opclass, qualified by the schema it lives in."""
    if schema is None:
        raise RuntimeError("pgvector is not installed in this database: `syncer apply` installs it")
    return {
        "vector": sql.Identifier(schema, "vector"),
        "cosine_distance": sql.SQL("OPERATOR({}.<=>)").format(sql.Identifier(schema)),
        "cosine_ops": sql.Identifier(schema, "vector_cosine_ops"),
    }


def search_config(source: Source) -> sql.Composed:
    """The source's text search configuration, as a value no search_path can redirect."""
    return sql.SQL("{}::pg_catalog.regconfig").format(sql.Literal(f"pg_catalog.{source.config.search_config}"))


@cache
def _parts(source: Source) -> dict[str, sql.Composable]:
    vector = vector_parts(source.vector_schema) if source.vector_schema else {}
    return (
        vector
        | {"table": source.table, "store": source.store, "queue": source.queue, "log": source.log}
        | {"keys": key_list(source), "key_arrays": key_arrays(source), "name": sql.Literal(source.name)}
        | {"wake_lock": sql.Literal(WAKE_LOCK), "expand_lock": sql.Literal(WAKE_LOCK + 1)}
        | {"text": text(source), "k_key_text": key_text(source, "k"), "q_key_text": key_text(source, "q")}
        | {f"{a}_keys": key_list(source, a) for a in ALIASES}
        | {j: keys_equal(source, j[0], j[-1]) for j in JOINS}
        | {"t_is_e_qualified": keys_equal(source, "t", "e", qualified=True)}
        | {"b_keys_desc": keys_descending(source, "b")}
        | {"search_config": search_config(source)}
        | {
            "s_or_f_keys": sql.SQL(", ").join(
                sql.SQL("COALESCE({}, {}) AS {}").format(column("s", k), column("f", k), sql.Identifier(k))
                for k in source.keys
            )
        }
        | {"s_is_f_qualified": keys_equal(source, "s", "f", qualified=True)}
    )


def parts(source: Source) -> dict[str, sql.Composable]:
    """Placeholders shared by the per-source SQL blocks (tables, key lists, key joins, text)."""
    return dict(_parts(source))
