"""The `rbln` package's .sql files use only the PerfettoSQL that trace_processor v58 documents and runs
(statements, types, naming, the package layout `--add-sql-package` reads), and plain SQL over its
`slice`/`track`/`flow` tables with SQLite functions and `extract_arg`; and the translation that runs
them on the embedded backend (`query.perfetto_sql`) does what each statement says, on real SQLite."""

from __future__ import annotations

import re
import sqlite3

import pytest

from rbln_perfetto.errors import QueryError
from rbln_perfetto.query import perfetto_sql
from rbln_perfetto.query.perfetto_sql import PACKAGE_DIR, Session, module_name, module_names, split_statements

MODULES = sorted(PACKAGE_DIR.rglob("*.sql"))
# Column types of PerfettoSQL (trace_processor's sql_argument::ParseType), less the deprecated INT,
# UINT, FLOAT and PROTO, and BYTES (refused in tables).
TYPES = {"LONG", "TIMESTAMP", "DURATION", "DOUBLE", "STRING", "BOOL"}
# trace_processor's tables the modules may read; nothing from its standard library.
TP_TABLES = {"slice", "track", "flow"}
# SQLite's built-in functions the modules call (trace_processor runs SQLite's), and trace_processor's extract_arg.
FUNCTIONS = {"min", "max", "sum", "count", "avg", "coalesce", "substr", "instr", "length", "row_number", "lag", "lead",
             "extract_arg"}
KEYWORDS = {"in", "as", "over", "cast", "exists", "on", "and", "or", "not", "when", "then", "from", "select", "where",
            "recursive", "window", "partition", "by", "join", "values", "else", "end"}

_INCLUDE = re.compile(r"INCLUDE PERFETTO MODULE ([a-z_.]+)\Z")
_CREATE = re.compile(r"CREATE PERFETTO (TABLE|VIEW) ([A-Za-z_][A-Za-z0-9_]*) ?(\(([^()]*)\))? AS (.*)\Z")
_INDEX = re.compile(r"CREATE PERFETTO INDEX (_rbln_[a-z0-9_]+) ON (_?rbln_[a-z0-9_]+)\(([a-z_, ]+)\)\Z")


def _statements(path):
    """The module's statements, comments out and whitespace made single spaces."""
    return [" ".join(s.split()) for s in split_statements(path.read_text())]


def test_the_package_is_laid_out_as_add_sql_package_reads_it():
    # The directory's name is the package; each file's path, dots for slashes, less .sql, its module.
    # trace_processor skips a file whose path holds another dot, and reads only .sql files.
    assert PACKAGE_DIR.name == "rbln" and MODULES
    assert {p.name for p in PACKAGE_DIR.rglob("*") if p.is_file()} == {p.name for p in MODULES}
    for path in MODULES:
        assert "." not in str(path.relative_to(PACKAGE_DIR).with_suffix("")), path
        assert module_name(path) == "rbln." + path.stem


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_each_module_uses_only_documented_perfetto_sql(path):
    created: set[str] = set()
    for flat in _statements(path):
        if m := _INCLUDE.match(flat):
            assert m.group(1) in module_names() and m.group(1) != module_name(path), flat
            continue
        if m := _INDEX.match(flat):
            assert m.group(2) in created, flat
            continue
        m = _CREATE.match(flat)
        assert m, f"{path.name}: not an INCLUDE PERFETTO MODULE or CREATE PERFETTO TABLE/VIEW/INDEX: {flat[:80]}"
        kind, name, _, schema, select = m.groups()
        created.add(name)
        assert select.lstrip().upper().startswith(("SELECT", "WITH")), name
        # Public names carry the package's prefix and declare their columns; intermediate ones start with _rbln_.
        assert name.startswith(("rbln_", "_rbln_")), name
        if name.startswith("rbln_"):
            assert schema is not None, f"{name}: a public table or view declares its columns"
        for entry in (schema or "").split(","):
            if not entry.strip():
                continue
            column, type_ = entry.split()
            assert re.fullmatch(r"[a-z][a-z0-9_]*", column), (name, column)
            assert type_ in TYPES, (name, column, type_)
        _check_body(path, name, select)


def _check_body(path, name, select: str) -> None:
    ctes = set(re.findall(r"(?:WITH(?: RECURSIVE)?|,)\s*([a-z_]+)(?:\([a-z_, ]*\))?\s+AS\s*\(", select))
    tables = set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", select)) - ctes
    allowed = TP_TABLES | {n for n in tables if n.startswith(("rbln_", "_rbln_"))}
    assert tables <= allowed, f"{path.name} {name}: reads {sorted(tables - allowed)}"
    called = {f.lower() for f in re.findall(r"\b([A-Za-z_]+)\s*\(", select)} - KEYWORDS - ctes
    called -= {t for t in tables}
    assert called <= FUNCTIONS, f"{path.name} {name}: calls {sorted(called - FUNCTIONS)}"
    for key in re.findall(r"extract_arg\([^,]+,\s*'([^']*)'\)", select):
        assert key.startswith("debug."), (name, key)


# The translation, statement by statement, on an SQLite connection of its own.


def test_statements_split_at_semicolons_outside_strings_names_and_comments():
    sql = ("select 'a;b' as x, \"c;d\" as y; -- a comment; with a semicolon\n"
           "select 'it''s' /* ; */ as z;;  \n-- only a comment\n")
    assert split_statements(sql) == ["select 'a;b' as x, \"c;d\" as y", "select 'it''s'   as z"]
    db = sqlite3.connect(":memory:")
    assert Session(db).query(sql).fetchall() == [("it's",)]  # the rows of the last statement


def test_create_perfetto_table_view_and_index_become_sqlite_ones():
    db = sqlite3.connect(":memory:")
    s = Session(db)
    s.query("CREATE PERFETTO TABLE t(x LONG, y STRING, z DOUBLE) AS SELECT 1 AS x, 'a' AS y, 0.5 AS z")
    s.query("CREATE PERFETTO VIEW v(x LONG) AS SELECT x FROM t")
    s.query("CREATE PERFETTO INDEX t_x ON t(x)")
    kinds = dict(db.execute("SELECT name, type FROM sqlite_master").fetchall())
    assert kinds == {"t": "table", "v": "view", "t_x": "index"}
    assert s.query("SELECT * FROM v").fetchall() == [(1,)]
    s.query("CREATE OR REPLACE PERFETTO TABLE t(x LONG) AS SELECT 2 AS x")
    assert s.query("SELECT * FROM t").fetchall() == [(2,)]


@pytest.mark.parametrize(("sql", "message"), [
    ("CREATE PERFETTO TABLE t(x LONG, w LONG) AS SELECT 1 AS x, 2 AS y",
     "declares w that the query does not give, and omits y that it gives"),
    ("CREATE PERFETTO TABLE t(x TEXT) AS SELECT 'a' AS x", "column x has type 'TEXT'; valid: LONG, TIMESTAMP"),
    ("CREATE PERFETTO TABLE t(x LONG) AS SELECT 'a' AS x", "x declared LONG holds 1 other value(s)"),
    ("CREATE PERFETTO TABLE t(x DOUBLE) AS SELECT 1 AS x", "x declared DOUBLE holds 1 other value(s)"),
    ("CREATE PERFETTO TABLE t AS SELECT 1 AS \"1x\"", "column names must start with a letter"),
    ("CREATE PERFETTO TABLE t(x BYTES) AS SELECT x'00' AS x", "bytes columns are not supported in a table: x"),
    ("CREATE PERFETTO FUNCTION f() RETURNS LONG AS SELECT 1", "CREATE PERFETTO FUNCTION is not supported"),
    ("INCLUDE PERFETTO MODULE android.startup.startups", "no such module (the embedded backend has the rbln package"),
    ("INCLUDE PERFETTO MODULE rbln.nothing", "valid: rbln.commands, rbln.critical_path"),
])
def test_what_trace_processor_refuses_is_refused_in_one_line(sql, message):
    db = sqlite3.connect(":memory:")
    with pytest.raises(QueryError, match=re.escape(message)) as refused:
        Session(db).query(sql)
    assert "\n" not in str(refused.value)
    assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)  # nothing left half made


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package of our own, `rbln/` in tmp_path, in place of the installed one."""
    root = tmp_path / "rbln"
    (root / "sub").mkdir(parents=True)
    monkeypatch.setattr(perfetto_sql, "PACKAGE_DIR", root)
    return root


def test_a_module_runs_once_per_connection_and_includes_what_it_needs(package):
    (package / "base.sql").write_text("CREATE PERFETTO TABLE rbln_base(n LONG) AS SELECT count(*) AS n FROM log;")
    (package / "sub" / "top.sql").write_text("INCLUDE PERFETTO MODULE rbln.base;\n"
                                             "CREATE PERFETTO VIEW rbln_top(n LONG) AS SELECT n + 1 AS n FROM rbln_base;")
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE log(x)")
    s = Session(db)
    assert module_names() == ["rbln.base", "rbln.sub.top"]
    assert s.query("INCLUDE PERFETTO MODULE rbln.sub.top; SELECT n FROM rbln_top").fetchall() == [(1,)]
    db.execute("INSERT INTO log VALUES (1)")
    # Included again (directly, through another module, or by a wildcard): not run again, as trace_processor does.
    assert s.query("INCLUDE PERFETTO MODULE rbln.base; INCLUDE PERFETTO MODULE rbln.*; "
                   "SELECT n FROM rbln_base").fetchall() == [(0,)]
    other = Session(sqlite3.connect(":memory:"))
    with pytest.raises(QueryError, match="INCLUDE PERFETTO MODULE rbln.base: no such table: log"):
        other.query("INCLUDE PERFETTO MODULE rbln.*")
    assert other.included == set()  # a module that failed may be included again


def test_a_module_that_returns_rows_is_refused(package):
    (package / "noisy.sql").write_text("SELECT 1;")
    with pytest.raises(QueryError, match="module rbln.noisy: a statement returns rows"):
        Session(sqlite3.connect(":memory:")).query("INCLUDE PERFETTO MODULE rbln.noisy")
