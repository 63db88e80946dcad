"""Declared metadata fields: a typed side table whose rows carry the int64 key.

``Collection.index_fields(["group"])`` declares a field. Every document that has
it gets one row ``(field, kind, value, key)`` in ``field_values``, a
``WITHOUT ROWID`` table whose primary key is that whole tuple, so it is its own
covering index: a filter on a declared field reads an index range of
``(field, kind, value)`` and gets the matching keys from the same pages. No
document row is read and no JSON is parsed; 10,000 matches of 1,000,000 cost a
few milliseconds.

``kind`` is ``"num"`` (JSON integers and reals: numbers compare by value),
``"text"``, ``"true"``, ``"false"``, ``"null"``, ``"object"`` or ``"array"``;
``value`` is the number or string (0 for the other kinds). Triggers on
``documents`` keep the table in the same transaction as the rows (like the
keyword index), for every field listed in ``field_names``.

:func:`key_set` compiles a checked filter (:mod:`binsearch.collection.filters`)
into SQL that yields keys: a ``SELECT`` of keys where the whole filter is
answerable from declared fields and id lists (``INTERSECT`` / ``UNION`` /
``EXCEPT`` of index ranges), else a condition over ``documents AS d`` in which
every answerable part is a ``d.key IN (...)`` of such a ``SELECT``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from binsearch.collection.filters import (
    _DATE_GLOB,
    COMPARE,
    Compiled,
    _Compiler,
    compile_plain,
    parse_date,
    path_of,
)

_KIND = (
    "CASE json_type({m}, {p}) WHEN 'integer' THEN 'num' WHEN 'real' THEN 'num' "
    "ELSE json_type({m}, {p}) END"
)
_VALUE = "CASE WHEN json_type({m}, {p}) IN ('integer', 'real', 'text') THEN json_extract({m}, {p}) ELSE 0 END"


def _row(meta: str, path: str) -> str:
    return f"{_KIND.format(m=meta, p=path)}, {_VALUE.format(m=meta, p=path)}"


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS field_names (name TEXT PRIMARY KEY, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS field_values (
    field TEXT NOT NULL, kind TEXT NOT NULL, value NOT NULL, key INTEGER NOT NULL,
    PRIMARY KEY (field, kind, value, key)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS field_values_insert AFTER INSERT ON documents BEGIN
    INSERT OR REPLACE INTO field_values
    SELECT f.name, {_row("new.metadata", "f.path")}, new.key FROM field_names AS f
    WHERE json_type(new.metadata, f.path) IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS field_values_delete AFTER DELETE ON documents BEGIN
    DELETE FROM field_values WHERE (field, kind, value, key) IN (
        SELECT f.name, {_row("old.metadata", "f.path")}, old.key FROM field_names AS f
        WHERE json_type(old.metadata, f.path) IS NOT NULL);
END;
CREATE TRIGGER IF NOT EXISTS field_values_update AFTER UPDATE OF metadata, key ON documents BEGIN
    DELETE FROM field_values WHERE (field, kind, value, key) IN (
        SELECT f.name, {_row("old.metadata", "f.path")}, old.key FROM field_names AS f
        WHERE json_type(old.metadata, f.path) IS NOT NULL);
    INSERT OR REPLACE INTO field_values
    SELECT f.name, {_row("new.metadata", "f.path")}, new.key FROM field_names AS f
    WHERE json_type(new.metadata, f.path) IS NOT NULL;
END;
"""


def _statements(script: str) -> list[str]:
    out, part = [], ""
    for line in script.strip().splitlines():
        part += line + "\n"
        if sqlite3.complete_statement(part):
            out.append(part.strip())
            part = ""
    return out


def declare(db: sqlite3.Connection, fields: Sequence[str]) -> list[str]:
    """Declare ``fields`` on ``db`` (inside the caller's transaction): the table, the
    triggers, and the rows of the documents already stored. Returns every declared field."""
    for statement in _statements(SCHEMA):
        db.execute(statement)
    known = {r[0] for r in db.execute("SELECT name FROM field_names")}
    for field in fields:
        if field in known:
            continue
        path = path_of(field, "index_fields")
        db.execute("INSERT INTO field_names VALUES (?, ?)", (field, path))
        db.execute(
            f"INSERT OR REPLACE INTO field_values SELECT ?, {_row('metadata', '?')}, key "
            "FROM documents WHERE json_type(metadata, ?) IS NOT NULL",
            (field, path, path, path, path, path),
        )
        known.add(field)
    return [r[0] for r in db.execute("SELECT name FROM field_names ORDER BY rowid")]


def declared(select: Any) -> list[str]:
    """The declared fields (``select``: a read-only query function), [] before any."""
    try:
        return [r[0] for r in select("SELECT name FROM field_names ORDER BY rowid")]
    except sqlite3.OperationalError:  # no field declared yet: the table does not exist
        return []


# ---------------------------------------------------------------------- filters to key sets
@dataclass(frozen=True)
class Part:
    """Compiled SQL: a ``SELECT`` of keys (``is_set``) or a condition over ``documents AS d``."""

    sql: str
    params: list[Any]
    is_set: bool

    def condition(self) -> tuple[str, list[Any]]:
        """This part as a condition over ``d``."""
        if self.is_set:
            return f"d.key IN ({self.sql})", self.params
        return self.sql, self.params


ALL_KEYS = "SELECT key FROM documents"


def _wrap(sql: str) -> str:
    return f"SELECT * FROM ({sql})"


def _combine(parts: list[Part], op: str) -> Part:
    """``op`` (``"AND"`` / ``"OR"``) of parts: one key set where every part is one."""
    if len(parts) == 1:
        return parts[0]
    if all(p.is_set for p in parts):
        compound = " INTERSECT " if op == "AND" else " UNION "
        return Part(
            compound.join(_wrap(p.sql) for p in parts), [x for p in parts for x in p.params], True
        )
    sets = [p for p in parts if p.is_set]
    if op == "AND" and len(sets) > 1:  # the key sets intersected in SQLite, then the rows
        parts = [_combine(sets, "AND"), *(p for p in parts if not p.is_set)]
    conditions = [p.condition() for p in parts]
    return Part(
        "(" + f" {op} ".join(c for c, _ in conditions) + ")",
        [x for _, ps in conditions for x in ps],
        False,
    )


def _negate(part: Part) -> Part:
    if part.is_set:
        return Part(f"{ALL_KEYS} EXCEPT {_wrap(part.sql)}", part.params, True)
    return Part(f"(NOT {part.sql})", part.params, False)


class _KeySets:
    def __init__(self, indexed: Collection[str]) -> None:
        self.indexed = set(indexed)
        self.used: list[str] = []
        self.rows = False

    def node(self, f: dict[str, Any]) -> Part:
        return _combine([self.entry(k, v) for k, v in f.items()], "AND")

    def entry(self, key: str, value: Any) -> Part:
        if key in ("$and", "$or"):
            return _combine([self.node(g) for g in value], key[1:].upper())
        if key == "$not":
            return _negate(self.node(value))
        if key == "$id":
            if not value:
                return Part(f"{ALL_KEYS} WHERE 0", [], True)
            ids = json.dumps(list(value), ensure_ascii=False)
            return Part(f"{ALL_KEYS} WHERE id IN (SELECT value FROM json_each(?))", [ids], True)
        if key not in self.indexed:  # every row's metadata, as the filter language compiles it
            self.rows = True
            compiler = _Compiler()
            sql = compiler.entry(key, value, 1, "where")
            return Part(sql, compiler.params, False)
        self.used.append(key)
        ops = value if isinstance(value, dict) and any(k.startswith("$") for k in value) else None
        ops = ops or {"$eq": value}
        return _combine([self.op(key, op, x) for op, x in ops.items()], "AND")

    def op(self, field: str, op: str, x: Any) -> Part:
        base = "SELECT key FROM field_values WHERE field = ?"
        if op == "$eq":
            return self.eq(field, x)
        if op == "$ne":
            return _negate(self.eq(field, x))
        if op in ("$in", "$nin"):
            any_of = (
                _combine([self.eq(field, v) for v in x], "OR")
                if x
                else Part(f"{ALL_KEYS} WHERE 0", [], True)
            )
            return any_of if op == "$in" else _negate(any_of)
        if op == "$exists":
            part = Part(base, [field], True)
            return part if x else _negate(part)
        sign = COMPARE[op]
        if isinstance(x, str):
            when = parse_date(x)
            assert when is not None  # checked by compile_filter
            return Part(
                f"{base} AND kind = 'text' AND value GLOB '{_DATE_GLOB}' "
                f"AND julianday(value) {sign} julianday(?)",
                [field, when.isoformat()],
                True,
            )
        return Part(f"{base} AND kind = 'num' AND value {sign} ?", [field, x], True)

    @staticmethod
    def eq(field: str, x: Any) -> Part:
        base = "SELECT key FROM field_values WHERE field = ?"
        if x is None or isinstance(x, bool):
            kind = "null" if x is None else "true" if x else "false"
            return Part(f"{base} AND kind = '{kind}'", [field], True)
        kind = "text" if isinstance(x, str) else "num"
        return Part(f"{base} AND kind = '{kind}' AND value = ?", [field, x], True)


@dataclass(frozen=True)
class KeyQuery:
    """SQL yielding the keys a filter matches (in no particular order)."""

    sql: str
    params: list[Any]
    #: Declared fields the query reads from ``field_values``.
    indexed: tuple[str, ...]
    #: Whether it reads documents' metadata too (a field that is not declared).
    rows: bool


def key_query(where: dict[str, Any], indexed: Collection[str]) -> KeyQuery:
    """The keys of a checked filter ``where`` as one SQL query, declared fields read
    from ``field_values`` (see the module docstring)."""
    sets = _KeySets(indexed)
    part = sets.node(where)
    if part.is_set:
        sql = part.sql
    else:
        sql = f"SELECT d.key FROM documents AS d WHERE {part.sql}"
    return KeyQuery(sql, part.params, tuple(dict.fromkeys(sets.used)), sets.rows)


def condition(where: dict[str, Any], indexed: Collection[str]) -> tuple[str, list[Any]]:
    """A checked filter as a condition over ``documents AS d`` (declared fields as key sets)."""
    return _KeySets(indexed).node(where).condition()


def compile_filter(where: dict[str, Any], indexed: Collection[str] = ()) -> Compiled:
    """``where`` checked and compiled to SQL: a condition over ``documents AS d`` and a
    query of the keys it matches.

    ``indexed``: declared fields. Conditions on them read the typed side table
    ``field_values`` (an index range that carries the keys) instead of every row's
    metadata; where the whole filter is made of such conditions and id lists,
    :attr:`Compiled.keys_sql` reads no document row. The result is the same either
    way. Raises :class:`~binsearch.collection.filters.FilterError` with one line
    naming what is wrong.
    """
    plain = compile_plain(where)
    if not indexed or not set(indexed) & set(plain.fields):
        return plain
    keys = key_query(where, indexed)
    sql, params = condition(where, indexed)
    return Compiled(sql, params, plain.fields, keys.indexed, keys.sql, keys.params, keys.rows)


__all__ = [
    "KeyQuery",
    "SCHEMA",
    "compile_filter",
    "condition",
    "declare",
    "declared",
    "key_query",
]
