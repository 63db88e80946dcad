"""The metadata filter language: parse, validate, and compile to SQL over the documents table.

A filter is a JSON object (a Python dict), after the query languages of
MongoDB, Chroma and LanceDB. Fields are keys of a document's ``metadata``;
a dotted key (``"source.name"``) reaches into nested objects.

=================================  ==============================================================
filter                             matches documents whose metadata ...
=================================  ==============================================================
``{"lang": "en"}``                 has ``lang`` equal to ``"en"`` (strings, numbers, booleans, null)
``{"lang": {"$eq": "en"}}``        the same
``{"lang": {"$ne": "en"}}``        does not have ``lang`` equal to ``"en"`` (missing counts)
``{"lang": {"$in": ["en","de"]}}`` has ``lang`` equal to one of the values
``{"lang": {"$nin": ["en"]}}``     has ``lang`` equal to none of them (missing counts)
``{"year": {"$gte": 2020}}``       has a number ``year`` ≥ 2020 (also ``$gt``, ``$lt``, ``$lte``)
``{"date": {"$lt": "2024-01-01"}}`` has an ISO-8601 date ``date`` before 2024 (UTC instants)
``{"doi": {"$exists": true}}``     has the key ``doi`` (any value, null too); ``false``: lacks it
``{"$and": [f, g]}``               matches every filter (so does ``{"a": 1, "b": 2}``)
``{"$or": [f, g]}``                matches at least one
``{"$not": f}``                    does not match ``f``
``{"$id": ["d1", "d2"]}``          has one of these document ids
=================================  ==============================================================

Equality is typed: ``1`` never equals ``"1"`` or ``true``; numbers compare by value
(``1 == 1.0``). Ranges take a number (matching number values only) or an ISO-8601
date or date-time string (matching values that are such strings; a time without a
zone is UTC). A field that holds an object or an array equals nothing.

The filter runs in SQLite (:func:`compile_plain` gives a ``WHERE`` condition over
the ``documents`` table), and the keys it selects become the allow-list of the scan,
which honours it exactly.

>>> compile_plain({"year": {"$gte": 2020}, "lang": "en"}).params
['$."year"', 2020, '$."year"', '$."lang"', 'en', '$."lang"']
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from binsearch.collection.directory import CollectionError

#: Nesting depth of ``$and`` / ``$or`` / ``$not`` and field operators.
MAX_DEPTH = 8
#: Conditions (field operators and ids) in one filter.
MAX_CONDITIONS = 256
#: Values in one ``$in`` / ``$nin`` list (``$id`` lists have no limit).
MAX_LIST = 1024

COMPARE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FIELD_OPS = ("$eq", "$ne", "$in", "$nin", "$exists", *COMPARE)
LOGIC_OPS = ("$and", "$or", "$not", "$id")
_PART = re.compile(r"^[^.\"\\$\x00-\x1f][^.\"\\\x00-\x1f]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?$")
#: SQLite GLOB that a date value must match before julianday() reads it (a bare
#: number would be read as a Julian day number).
_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]*"
_INT64 = 2**63


class FilterError(CollectionError):
    """A filter that is not in the language (one line says what is wrong)."""


@dataclass(frozen=True)
class Compiled:
    """A filter compiled to a SQL condition over the ``documents`` table (alias ``d``)."""

    sql: str
    params: list[Any]
    fields: tuple[str, ...]
    #: Declared fields the filter reads from their index (``field_values``).
    indexed: tuple[str, ...] = ()
    #: A query of the matching keys (in no particular order) and its parameters.
    keys_sql: str = ""
    keys_params: list[Any] = field(default_factory=list)
    #: Whether the keys query reads documents' metadata (a field that is not declared).
    rows: bool = True


def _scalar(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise FilterError(f"{where}: integer {value} is outside the 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{where}: numbers must be finite")
        return value
    raise FilterError(f"{where}: expected a string, number, boolean or null, got {_kind(value)}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def parse_date(text: str) -> dt.datetime | None:
    """An ISO-8601 date or date-time as a UTC ``datetime`` (naive = UTC), or None."""
    if not _DATE.match(text):
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def path_of(field: str, where: str = "filter") -> str:
    """The SQLite JSON path of a (dotted) field name."""
    if not isinstance(field, str) or not field:
        raise FilterError(f"{where}: field names must be non-empty strings")
    parts = field.split(".")
    for part in parts:
        if not _PART.match(part):
            raise FilterError(
                f"{where}: bad field name {field!r} (parts between dots must be non-empty, "
                "without quotes, backslashes or a leading $)"
            )
    return "$" + "".join(f'."{p}"' for p in parts)


class _Compiler:
    def __init__(self) -> None:
        self.params: list[Any] = []
        self.fields: list[str] = []
        self.conditions = 0

    def _count(self, where: str, n: int = 1) -> None:
        self.conditions += n
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(f"{where}: more than {MAX_CONDITIONS} conditions in one filter")

    def node(self, f: Any, depth: int, where: str) -> str:
        if depth > MAX_DEPTH:
            raise FilterError(f"{where}: filter nested deeper than {MAX_DEPTH} levels")
        if not isinstance(f, dict):
            raise FilterError(f"{where}: a filter is an object, got {_kind(f)}")
        if not f:
            raise FilterError(f"{where}: empty filter object (use no filter to match everything)")
        parts = [self.entry(key, value, depth, where) for key, value in f.items()]
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def entry(self, key: str, value: Any, depth: int, where: str) -> str:
        if isinstance(key, str) and key.startswith("$"):
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{where}.{key}: expected a non-empty list of filters")
                parts = [
                    self.node(g, depth + 1, f"{where}.{key}[{i}]") for i, g in enumerate(value)
                ]
                return "(" + f" {key[1:].upper()} ".join(parts) + ")"
            if key == "$not":
                return f"(NOT {self.node(value, depth + 1, f'{where}.$not')})"
            if key == "$id":
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise FilterError(f"{where}.$id: expected a list of document id strings")
                self._count(where)
                if not value:
                    return "0"
                self.params.append(json.dumps(list(value), ensure_ascii=False))
                return "d.id IN (SELECT value FROM json_each(?))"
            raise FilterError(
                f"{where}: unknown operator {key!r} at this level (use {', '.join(LOGIC_OPS)}, "
                "or a field name)"
            )
        path = path_of(key, where)
        self.fields.append(key)
        if isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value):
            if depth + 1 > MAX_DEPTH:
                raise FilterError(f"{where}: filter nested deeper than {MAX_DEPTH} levels")
            parts = [self.op(path, op, v, f"{where}.{key}") for op, v in value.items()]
            return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
        return self.op(path, "$eq", value, f"{where}.{key}")

    @staticmethod
    def values(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise FilterError(f"{where}: expected a list, got {_kind(value)}")
        if len(value) > MAX_LIST:
            raise FilterError(f"{where}: more than {MAX_LIST} values")
        return value

    def eq(self, path: str, value: Any, where: str) -> str:
        value = _scalar(value, where)
        if value is None:
            self.params.append(path)
            return "json_type(d.metadata, ?) IS 'null'"
        if isinstance(value, bool):
            self.params.append(path)
            return f"json_type(d.metadata, ?) IS '{'true' if value else 'false'}'"
        kinds = "('text')" if isinstance(value, str) else "('integer', 'real')"
        self.params.extend([path, value, path])
        # Never SQL's NULL (which NOT would keep NULL): a missing field is false. The
        # value test comes first: most rows fail it after one JSON parse (CASE stops
        # there; AND would evaluate both), only the matches pay the type test's parse.
        return (
            f"CASE WHEN json_extract(d.metadata, ?) = ? THEN json_type(d.metadata, ?) IN {kinds} "
            "ELSE 0 END"
        )

    def op(self, path: str, op: Any, value: Any, where: str) -> str:
        self._count(where)
        if op == "$eq":
            return self.eq(path, value, where)
        if op == "$ne":
            return f"(NOT {self.eq(path, value, where)})"
        if op in ("$in", "$nin"):
            values = self.values(value, f"{where}.{op}")
            self._count(where, len(values))
            if not values:
                return "0" if op == "$in" else "1"
            parts = [self.eq(path, v, f"{where}.{op}[{i}]") for i, v in enumerate(values)]
            any_of = "(" + " OR ".join(parts) + ")"
            return any_of if op == "$in" else f"(NOT {any_of})"
        if op == "$exists":
            if not isinstance(value, bool):
                raise FilterError(f"{where}.$exists: expected true or false, got {value!r}")
            self.params.append(path)
            return f"(json_type(d.metadata, ?) IS {'NOT ' if value else ''}NULL)"
        if op in COMPARE:
            return self.compare(path, COMPARE[op], value, f"{where}.{op}")
        raise FilterError(f"{where}: unknown operator {op!r} (use {', '.join(FIELD_OPS)})")

    def compare(self, path: str, sign: str, value: Any, where: str) -> str:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise FilterError(f"{where}: ranges take a number or an ISO-8601 date, got {value!r}")
        if isinstance(value, str):
            when = parse_date(value)
            if when is None:
                raise FilterError(f"{where}: {value!r} is not an ISO-8601 date (YYYY-MM-DD...)")
            self.params.extend([path, path, path, when.isoformat()])
            return (
                f"CASE WHEN json_extract(d.metadata, ?) GLOB '{_DATE_GLOB}' THEN coalesce("
                f"json_type(d.metadata, ?) = 'text' AND julianday(json_extract(d.metadata, ?)) "
                f"{sign} julianday(?), 0) ELSE 0 END"
            )
        value = _scalar(value, where)
        self.params.extend([path, value, path])
        return (
            f"CASE WHEN json_extract(d.metadata, ?) {sign} ? THEN "
            "json_type(d.metadata, ?) IN ('integer', 'real') ELSE 0 END"
        )


def compile_plain(where: dict[str, Any]) -> Compiled:
    """``where`` checked and compiled to SQL over every row: a condition over
    ``documents AS d`` and a query of the keys it matches.

    Filters that may use declared fields go through
    :func:`binsearch.collection.field_index.compile_filter`, which falls back to
    this. Raises :class:`FilterError` with one line naming what is wrong.
    """
    compiler = _Compiler()
    sql = compiler.node(where, 1, "where")
    params = compiler.params
    fields = tuple(dict.fromkeys(compiler.fields))
    keys_sql = f"SELECT d.key FROM documents AS d WHERE ({sql})"
    return Compiled(sql, params, fields, (), keys_sql, params, bool(fields))


def check_filter(where: Any) -> dict[str, Any] | None:
    """``where`` if it is a valid filter (or None); raises :class:`FilterError` otherwise."""
    if where is None:
        return None
    compile_plain(where)
    return where


def with_ids(where: dict[str, Any] | None, ids: list[str] | None) -> dict[str, Any] | None:
    """``where`` and an id list as one filter (``{"$and": [where, {"$id": ids}]}``)."""
    if ids is None:
        return where
    if where is None:
        return {"$id": list(ids)}
    return {"$and": [where, {"$id": list(ids)}]}


__all__ = [
    "Compiled",
    "FilterError",
    "MAX_CONDITIONS",
    "MAX_DEPTH",
    "check_filter",
    "compile_plain",
    "parse_date",
    "path_of",
    "with_ids",
]
