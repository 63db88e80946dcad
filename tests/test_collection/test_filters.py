"""Metadata filters: SQL evaluation against a pure-Python evaluation, and exact filtered top-k."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binsearch.collection import field_index
from binsearch.collection.collection import Collection
from binsearch.collection.directory import CollectionError
from binsearch.collection.field_index import compile_filter
from binsearch.collection.filters import FilterError, parse_date

MISSING = object()


# ---------------------------------------------------------------------- the reference
def lookup(meta: Any, field: str) -> Any:
    value = meta
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def equal(value: Any, x: Any) -> bool:
    if value is MISSING:
        return False
    if x is None or isinstance(x, bool):
        return value is x
    if isinstance(x, str):
        return isinstance(value, str) and value == x
    return isinstance(value, int | float) and not isinstance(value, bool) and value == x


def compare(value: Any, op: str, x: Any) -> bool:
    if isinstance(x, str):
        if not isinstance(value, str):
            return False
        a, b = parse_date(value), parse_date(x)
        if a is None:
            return False
    else:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        a, b = value, x
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def matches(f: dict[str, Any], doc_id: str, meta: Any) -> bool:
    """The filter language evaluated in Python, as filters.py documents it."""
    for key, value in f.items():
        if key == "$and":
            ok = all(matches(g, doc_id, meta) for g in value)
        elif key == "$or":
            ok = any(matches(g, doc_id, meta) for g in value)
        elif key == "$not":
            ok = not matches(value, doc_id, meta)
        elif key == "$id":
            ok = doc_id in value
        else:
            v = lookup(meta, key)
            ops = value if isinstance(value, dict) else {"$eq": value}
            ok = True
            for op, x in ops.items():
                if op == "$eq":
                    ok &= equal(v, x)
                elif op == "$ne":
                    ok &= not equal(v, x)
                elif op == "$in":
                    ok &= any(equal(v, y) for y in x)
                elif op == "$nin":
                    ok &= not any(equal(v, y) for y in x)
                elif op == "$exists":
                    ok &= (v is not MISSING) == x
                else:
                    ok &= compare(v, op, x)
        if not ok:
            return False
    return True


# ---------------------------------------------------------------------- strategies
FIELDS = ["year", "lang", "flag", "score", "date", "src.name", "src.rank"]
DATES = ["2019-12-31", "2020-01-01", "2020-06-15T12:30:00", "2021-03-04", "2020-01-01T00:00:01"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0, 2.25, -1.5]),
    st.sampled_from(["en", "de", "fr", "1", ""]),
    st.sampled_from(DATES),
)


def metadata() -> st.SearchStrategy:
    src = st.one_of(
        st.dictionaries(st.sampled_from(["name", "rank"]), scalars, max_size=2), scalars
    )
    top = st.fixed_dictionaries(
        {},
        optional={
            "year": scalars,
            "lang": scalars,
            "flag": scalars,
            "score": scalars,
            "date": scalars,
            "src": src,
        },
    )
    return st.one_of(st.none(), top)


def leaf() -> st.SearchStrategy:
    field = st.sampled_from(FIELDS)
    rng = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5]), st.sampled_from(DATES))
    op = st.one_of(
        scalars.map(lambda x: ("$eq", x)),
        scalars.map(lambda x: ("$ne", x)),
        st.lists(scalars, max_size=3).map(lambda x: ("$in", x)),
        st.lists(scalars, max_size=3).map(lambda x: ("$nin", x)),
        st.booleans().map(lambda x: ("$exists", x)),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), rng),
    )
    plain = st.tuples(field, scalars).map(
        lambda t: {t[0]: t[1]} if t[1] is not None else {t[0]: {"$eq": None}}
    )
    return st.one_of(st.tuples(field, op).map(lambda t: {t[0]: {t[1][0]: t[1][1]}}), plain)


filters = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
        inner.map(lambda f: {"$not": f}),
    ),
    max_leaves=6,
)


def sql_matches(
    f: dict[str, Any], docs: list[tuple[str, Any]], indexed: tuple[str, ...] = ()
) -> set[str]:
    import json

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE documents (key INTEGER PRIMARY KEY, id TEXT, metadata TEXT)")
    db.executemany(
        "INSERT INTO documents VALUES (?, ?, ?)",
        [(i, d, None if m is None else json.dumps(m)) for i, (d, m) in enumerate(docs)],
    )
    if indexed:
        field_index.declare(db, indexed)
    c = compile_filter(f, indexed)
    by_condition = {
        r[0] for r in db.execute(f"SELECT d.id FROM documents AS d WHERE {c.sql}", c.params)
    }
    # The keys query (declared fields read from their index) selects the same documents.
    keys = [r[0] for r in db.execute(c.keys_sql, c.keys_params)]
    assert len(keys) == len(set(keys))  # each key once
    assert {docs[k][0] for k in keys} == by_condition
    return by_condition


@settings(max_examples=400, deadline=None)
@given(st.lists(metadata(), min_size=1, max_size=12), filters)
def test_sql_equals_python_reference(metas: list[Any], f: dict[str, Any]) -> None:
    docs = [(f"d{i}", m) for i, m in enumerate(metas)]
    want = {d for d, m in docs if matches(f, d, m)}
    assert sql_matches(f, docs) == want
    # With field indexes the condition gains index-range terms: the same documents.
    assert sql_matches(f, docs, ("year", "lang", "flag", "src.name")) == want


def test_hand_worked_cases() -> None:
    docs = [
        ("a", {"year": 2020, "lang": "en", "src": {"name": "pubmed"}, "date": "2020-05-01"}),
        ("b", {"year": 2019.5, "lang": "de", "flag": True, "date": "2020-05-01T10:00:00+02:00"}),
        ("c", {"year": "2021", "lang": None, "flag": 1}),
        ("d", None),
    ]
    cases = [
        ({"year": {"$gte": 2020}}, {"a"}),  # "2021" is a string: no number range
        ({"year": 2020.0}, {"a"}),
        ({"flag": True}, {"b"}),  # 1 is not true
        ({"flag": 1}, {"c"}),
        ({"lang": None}, {"c"}),
        ({"lang": {"$ne": "en"}}, {"b", "c", "d"}),
        ({"lang": {"$exists": False}}, {"d"}),
        ({"src.name": "pubmed"}, {"a"}),
        ({"date": {"$lt": "2020-05-01T09:00:00"}}, {"a", "b"}),  # b is 08:00 UTC
        ({"date": {"$gt": "2020-05-01"}}, {"b"}),
        ({"$or": [{"lang": "de"}, {"$id": ["d"]}]}, {"b", "d"}),
        ({"$not": {"year": {"$in": [2020, 2019.5]}}}, {"c", "d"}),
    ]
    for f, want in cases:
        assert sql_matches(f, docs) == want, f
        assert {d for d, m in docs if matches(f, d, m)} == want, f


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"a": {"$regex": "x"}}, "unknown operator '$regex'"),
        ({"$nor": []}, "unknown operator '$nor'"),
        ({"a": {"$gt": "english"}}, "not an ISO-8601 date"),
        ({"a": {"$gt": True}}, "ranges take a number"),
        ({"a": [1, 2]}, "got a list"),
        ({"a": {"$in": 3}}, "expected a list"),
        ({"$and": []}, "non-empty list"),
        ({}, "empty filter"),
        ({"a..b": 1}, "bad field name"),
        ({"a": float("nan")}, "finite"),
        ({"a": {"$exists": "yes"}}, "true or false"),
        ({"$id": "x"}, "list of document id strings"),
    ],
)
def test_bad_filters_say_what_is_wrong(bad: dict[str, Any], says: str) -> None:
    with pytest.raises(FilterError, match=None) as err:
        compile_filter(bad)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_too_deep_and_too_many() -> None:
    f: dict[str, Any] = {"a": 1}
    for _ in range(10):
        f = {"$not": f}
    with pytest.raises(FilterError, match="deeper than"):
        compile_filter(f)
    with pytest.raises(FilterError, match="more than"):
        compile_filter({"$or": [{"a": i} for i in range(300)]})


def test_parse_date() -> None:
    assert parse_date("2020-01-02") == dt.datetime(2020, 1, 2)
    assert parse_date("2020-01-02T03:04:05Z") == dt.datetime(2020, 1, 2, 3, 4, 5)
    assert parse_date("2020") is None and parse_date("yesterday") is None


# ---------------------------------------------------------------------- filtered top-k is exact
N, DIM = 60, 64


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Any:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    metas = [{"group": i % 7, "rank": i, "tag": "odd" if i % 2 else "even"} for i in range(N)]
    c = Collection.create(tmp_path_factory.mktemp("f") / "c", model=None, dim=DIM)
    c.add([f"d{i}" for i in range(N)], embeddings=x, documents=[{"metadata": m} for m in metas])
    yield c, x, metas
    c.close()


def brute_force(c: Collection, q: np.ndarray, allowed: set[int], k: int) -> list[str]:
    """Rank every document (no mask), then keep the allowed ones: the reference top-k."""
    scores, keys = c.coded.topk(q[None, :], N)
    ranked = [int(key) for key in keys[0] if int(key) in allowed]
    return [f"d{key}" for key in ranked[:k]]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(0, N),  # how many documents match: rank < m (0, 1, k-1, k, all among them)
    st.integers(1, 12),
    st.integers(0, N - 1),
)
def test_filtered_topk_equals_brute_force(collection: Any, m: int, k: int, qi: int) -> None:
    c, x, _ = collection
    where = {"rank": {"$lt": m}}
    got = c.search(embeddings=x[qi], k=k, where=where)[0].ids
    assert got == brute_force(c, x[qi], set(range(m)), k)


@pytest.mark.parametrize("m", [0, 1, 4, 5, N])
def test_match_counts_around_k(collection: Any, m: int) -> None:
    c, x, _ = collection
    got = c.search(embeddings=x[3], k=5, where={"rank": {"$lt": m}})[0].ids
    assert got == brute_force(c, x[3], set(range(m)), 5)
    assert len(got) == min(m, 5)


def test_where_and_id_list_together(collection: Any) -> None:
    c, x, _ = collection
    ids = [f"d{i}" for i in range(0, N, 3)]
    got = c.search(embeddings=x[0], k=10, where={"tag": "even"}, filter=ids)[0].ids
    allowed = {i for i in range(0, N, 3) if i % 2 == 0}
    assert got == brute_force(c, x[0], allowed, 10)
    assert c.last_filter["matched"] == len(allowed)


def test_bad_filter_in_search_is_a_collection_error(collection: Any) -> None:
    c, x, _ = collection
    with pytest.raises(CollectionError, match="unknown operator"):
        c.search(embeddings=x[0], k=3, where={"rank": {"$between": [1, 2]}})


def test_indexed_fields_use_the_index_and_give_the_same_keys(tmp_path) -> None:
    rng = np.random.default_rng(2)
    n = 500
    c = Collection.create(tmp_path / "c", model=None, dim=16)
    metas = [
        {"year": int(rng.integers(1990, 2030)), "lang": str(rng.choice(["en", "de"]))}
        for _ in range(n)
    ]
    c.add(
        [f"d{i}" for i in range(n)],
        embeddings=rng.standard_normal((n, 16)),
        documents=[{"metadata": m} for m in metas],
    )
    where = {"year": {"$gte": 2025}, "lang": "en"}
    before = c.search(embeddings=rng.standard_normal(16), k=n, where=where)[0].ids
    assert c.last_filter["scan"] == "rows"
    assert c.index_fields(["year"]) == ["year"]
    c.close()
    c = Collection.open(tmp_path / "c")  # the declaration is stored
    q = np.random.default_rng(2).standard_normal(16)
    after = c.search(embeddings=q, k=n, where=where)[0].ids
    # year's index selects the rows; lang (not declared) is read from those rows only.
    assert c.last_filter["scan"] == "index+rows" and c.indexed_fields() == ["year"]
    assert set(after) == {
        f"d{i}" for i, m in enumerate(metas) if m["year"] >= 2025 and m["lang"] == "en"
    }
    assert len(before) == len(after)
    plan = c.store.select(
        "EXPLAIN QUERY PLAN SELECT d.key FROM documents AS d WHERE "
        + c._condition(None, where).sql,
        c._condition(None, where).params,
    )
    assert "SEARCH field_values USING PRIMARY KEY (field=? AND kind=? AND value>?)" in str(plan)
    assert "INTEGER PRIMARY KEY (rowid=?)" in str(plan)  # only the selected rows are read
    # A filter on declared fields alone reads no document row.
    only = c._condition(None, {"year": {"$gte": 2025}})
    plan = str(c.store.select("EXPLAIN QUERY PLAN " + only.keys_sql, only.keys_params))
    assert "field_values" in plan and "documents" not in plan and "SCAN" not in plan
    c.close()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "delete"]), st.integers(0, 9), metadata()),
        min_size=1,
        max_size=25,
    ),
    filters,
)
def test_declared_fields_follow_every_write(tmp_path_factory, writes, f: dict[str, Any]) -> None:
    """After adds, replacements and deletes, the index answers as every row's metadata does."""
    c = Collection.create(tmp_path_factory.mktemp("w") / "c", model=None, dim=8)
    c.index_fields(["year", "lang", "src.name"])
    rng = np.random.default_rng(0)
    live: dict[str, Any] = {}
    for op, i, meta in writes:
        if op == "add":
            c.add([f"d{i}"], embeddings=rng.standard_normal((1, 8)), documents=[{"metadata": meta}])
            live[f"d{i}"] = meta
        elif f"d{i}" in live:
            c.delete([f"d{i}"])
            del live[f"d{i}"]
    c.index_fields(["flag"])  # declared after the writes: built from the stored rows
    want = {d for d, m in live.items() if matches(f, d, m)}
    declared = compile_filter(f, c.indexed_fields())
    keys = [r[0] for r in c.store.select(declared.keys_sql, declared.keys_params)]
    ids = {r[0] for r in c.store.select("SELECT id, key FROM documents") if r[1] in set(keys)}
    assert len(keys) == len(set(keys)) and ids == want
    got = c.search(embeddings=np.ones(8), k=10, where=f)[0].ids
    assert set(got) <= want and len(got) == min(10, len(want))
    c.close()


# ---------------------------------------------------------------------- declared fields, gathered rows
N2 = 400


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> Any:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N2, DIM)).astype(np.float32)
    c = Collection.create(tmp_path_factory.mktemp("g") / "c", model=None, dim=DIM)
    c.add(
        [f"d{i}" for i in range(N2)],
        embeddings=x,
        documents=[{"metadata": {"rank": i, "group": i % 7}} for i in range(N2)],
    )
    c.index_fields(["rank", "group"])
    yield c, x
    c.close()


def brute_force_n(c: Collection, q: np.ndarray, allowed: set[int], k: int, n: int) -> list[str]:
    _, keys = c.coded.topk(q[None, :], n)
    return [f"d{key}" for key in [int(x) for x in keys[0] if int(x) in allowed][:k]]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(["0", "1", "k-1", "k", "k+1", "20", "200", "all"]),
    st.integers(1, 12),
    st.integers(0, N2 - 1),
    st.booleans(),
)
def test_declared_filter_topk_equals_brute_force(
    declared: Any, size: str, k: int, qi: int, combine: bool
) -> None:
    """Few matches take the gathered path (their rows scored alone), many the masked
    scan; both give the brute-force top-k of the matching documents."""
    c, x = declared
    m = {"0": 0, "1": 1, "k-1": k - 1, "k": k, "k+1": k + 1, "20": 20, "200": 200, "all": N2}[size]
    where: dict[str, Any] = {"rank": {"$lt": m}}
    allowed = set(range(m))
    if combine:  # two declared fields: the key sets intersected in SQLite
        where = {"$and": [where, {"group": {"$in": [1, 2, 3]}}]}
        allowed = {i for i in allowed if i % 7 in (1, 2, 3)}
    got = c.search(embeddings=x[qi], k=k, where=where)[0].ids
    assert c.last_filter["scan"] == "index" and c.last_filter["matched"] == len(allowed)
    assert got == brute_force_n(c, x[qi], allowed, k, N2)
    assert len(got) == min(k, len(allowed))
