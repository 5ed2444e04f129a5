"""The `rbln` PerfettoSQL package, and the small translation that runs its modules (and a user's
PerfettoSQL) on the embedded SQLite backend.

The package is the directory `rbln_perfetto/sql_package/rbln/`: trace_processor loads it with
`--add-sql-package DIR`, which names the package after the directory and each module after its
path (`rbln/commands.sql` is `rbln.commands`). Each module creates tables and views named
`rbln_*` (`_rbln_*`: the modules' own intermediate tables) with `CREATE PERFETTO TABLE/VIEW`.

The embedded backend runs the same files. A query is split into statements (`;` outside quotes and
comments); of the PerfettoSQL statements it translates the ones the package uses:

    INCLUDE PERFETTO MODULE rbln.x;           runs module rbln.x's statements, once per connection
                                              (`rbln.*`: every module); another package is refused
    CREATE [OR REPLACE] PERFETTO TABLE t(c TYPE, ...) AS SELECT ...   CREATE TABLE t AS SELECT ...
    CREATE [OR REPLACE] PERFETTO VIEW v(c TYPE, ...) AS SELECT ...    CREATE VIEW v AS SELECT ...
    CREATE [OR REPLACE] PERFETTO INDEX i ON t(c, ...)                 CREATE INDEX i ON t(c, ...)

As trace_processor does, a schema must name exactly the columns the SELECT gives (in any order),
with types from PerfettoSQL's list (`TYPES`); a table's values must be of its declared types:
integers for LONG, TIMESTAMP, DURATION and BOOL, reals for DOUBLE, text for STRING. That is as strict
as the strictest trace_processor (its runtime tables check each column's type; its newer dataframe
tables refuse text in a number column and convert between integer and double), so a module the
embedded backend accepts loads in either. Any other statement runs as SQLite. The rows of a query are those of its last statement.
`CREATE PERFETTO FUNCTION` and `MACRO` are refused with a one-line error: the package uses neither.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from ..errors import QueryError

PACKAGE = "rbln"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "sql_package" / PACKAGE


def trace_processor_flags() -> list[str]:
    """The trace_processor_shell flags that load the package (the directory's name is the package's)."""
    return ["--add-sql-package", str(PACKAGE_DIR)]


# PerfettoSQL's column and argument types (trace_processor's `sql_argument::ParseType`): the SQLite
# storage class each one's values must have. INT, UINT, FLOAT and PROTO are deprecated there; BYTES
# columns are refused in tables. The package uses LONG, TIMESTAMP, DURATION, DOUBLE and STRING.
TYPES = {"LONG": "integer", "TIMESTAMP": "integer", "DURATION": "integer", "BOOL": "integer", "INT": "integer",
         "UINT": "integer", "DOUBLE": "real", "FLOAT": "real", "STRING": "text", "BYTES": "blob", "PROTO": "blob"}

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_INCLUDE = re.compile(r"INCLUDE\s+PERFETTO\s+MODULE\s+([A-Za-z0-9_.*]+)\s*\Z", re.I | re.S)
_CREATE = re.compile(rf"CREATE\s+(OR\s+REPLACE\s+)?PERFETTO\s+(TABLE|VIEW)\s+({_NAME})\s*(\(([^()]*)\))?\s*AS\s+(.*)\Z",
                     re.I | re.S)
_INDEX = re.compile(rf"CREATE\s+(OR\s+REPLACE\s+)?PERFETTO\s+INDEX\s+({_NAME})\s+ON\s+({_NAME})\s*\(([^)]*)\)\s*\Z",
                    re.I | re.S)
_UNSUPPORTED = re.compile(r"(CREATE\s+(OR\s+REPLACE\s+)?PERFETTO\s+(FUNCTION|MACRO)|DROP\s+PERFETTO\s+INDEX)\b",
                          re.I)
_PERFETTO = re.compile(r"\bPERFETTO\b", re.I)


def module_names() -> list[str]:
    """The package's modules, as `INCLUDE PERFETTO MODULE` names them (`rbln.commands`, ...)."""
    return sorted(module_name(p) for p in PACKAGE_DIR.rglob("*.sql"))


def module_name(path: Path) -> str:
    """`rbln.x.y` for `<package dir>/x/y.sql` (trace_processor's key for it under --add-sql-package)."""
    return ".".join((PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts))


def module_path(name: str) -> Path:
    """The file of module `name`; QueryError naming the modules there are for any other name."""
    parts = name.split(".")
    path = PACKAGE_DIR.joinpath(*parts[1:]).with_suffix(".sql") if parts[0] == PACKAGE and len(parts) > 1 else None
    if path is None or not path.is_file():
        where = ("" if parts[0] == PACKAGE else
                 f" (the embedded backend has the {PACKAGE} package only, not trace_processor's standard library)")
        raise QueryError(f"INCLUDE PERFETTO MODULE {name}: no such module{where}; valid: {', '.join(module_names())}")
    return path


def split_statements(sql: str) -> list[str]:
    """The statements of `sql`, each without its `;` and with its comments made spaces; empty ones
    left out. A `;` or `--` inside a string or a quoted name is part of it."""
    out, text, i, n = [], [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            j = i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:  # a doubled quote escapes itself
                        j += 2
                        continue
                    break
                j += 1
            text.append(sql[i:j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            text.append(" ")
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            text.append(" ")
        elif c == ";":
            out.append("".join(text))
            text = []
            i += 1
        else:
            text.append(c)
            i += 1
    out.append("".join(text))
    return [s.strip() for s in out if s.strip()]


def _schema(text: str, what: str) -> dict[str, str]:
    """{column: TYPE} of a `c TYPE, ...` schema; QueryError for a malformed entry or an unknown type."""
    out = {}
    for entry in text.split(","):
        words = entry.split()
        if len(words) != 2 or not re.fullmatch(_NAME, words[0]):
            raise QueryError(f"{what}: schema entry {entry.strip()!r} is not `name TYPE`")
        if words[1].upper() not in TYPES:
            raise QueryError(f"{what}: column {words[0]} has type {words[1]!r}; valid: {', '.join(TYPES)}")
        out[words[0]] = words[1].upper()
    return out


class Session:
    """PerfettoSQL on one SQLite connection: which modules it has included."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.included: set[str] = set()

    def query(self, sql: str) -> sqlite3.Cursor:
        """Run every statement of `sql`; the cursor of the last (its rows not yet fetched). Plain SQL
        of one statement goes to SQLite as it is. sqlite3.Error or QueryError when one fails."""
        if not _PERFETTO.search(sql) and ";" not in sql:
            return self.db.execute(sql)
        statements = split_statements(sql)
        if not statements:
            return self.db.execute(sql)  # (SQLite's own answer to an empty query)
        for statement in statements[:-1]:
            self._run(statement).fetchall()
        return self._run(statements[-1])

    def _run(self, statement: str) -> sqlite3.Cursor:
        code = statement
        if m := _INCLUDE.match(code):
            self.include(m.group(1))
            return self.db.execute("SELECT 0 WHERE 0")
        if m := _CREATE.match(code):
            replace, kind, name, _, schema, select = m.groups()
            self._create(kind.upper(), name, schema, select, bool(replace))
            return self.db.execute("SELECT 0 WHERE 0")
        if m := _INDEX.match(code):
            replace, name, table, columns = m.groups()
            if replace:
                self.db.execute(f"DROP INDEX IF EXISTS {name}")
            self.db.execute(f"CREATE INDEX {name} ON {table}({columns})")
            return self.db.execute("SELECT 0 WHERE 0")
        if m := _UNSUPPORTED.match(code):
            raise QueryError(f"{' '.join(m.group(1).split()).upper()} is not supported by the embedded backend "
                             "(it translates INCLUDE PERFETTO MODULE and CREATE PERFETTO TABLE/VIEW/INDEX); use "
                             "trace_processor (backend='trace_processor')")
        return self.db.execute(statement)

    def include(self, key: str) -> None:
        """Run module `key` (or every module under `rbln.*` / `*`) on this connection, once."""
        if key.endswith("*"):
            prefix = key[:-1]
            if prefix and PACKAGE != prefix.rstrip(".") and not prefix.startswith(PACKAGE + "."):
                module_path(key)  # (refused: another package)
            for name in module_names():
                if name.startswith(prefix):
                    self.include(name)
            return
        path = module_path(key)
        if key in self.included:
            return
        self.included.add(key)  # (before running it: a module including itself does not loop)
        try:
            for statement in split_statements(path.read_text()):
                cursor = self._run(statement)
                if cursor.description and cursor.fetchall():
                    raise QueryError(f"module {key}: a statement returns rows (a module may only create things)")
        except sqlite3.Error as exc:
            self.included.discard(key)
            raise QueryError(f"INCLUDE PERFETTO MODULE {key}: {exc}") from None
        except QueryError:
            self.included.discard(key)
            raise

    def _create(self, kind: str, name: str, schema: str | None, select: str, replace: bool) -> None:
        what = f"CREATE PERFETTO {kind} {name}"
        declared = _schema(schema, what) if schema is not None else {}
        sqlite_kind = "TABLE" if kind == "TABLE" else "VIEW"
        if replace:
            self.db.execute(f"DROP {sqlite_kind} IF EXISTS {name}")
        self.db.execute(f"CREATE {sqlite_kind} {name} AS {select}")
        columns = [row[1] for row in self.db.execute(f"PRAGMA table_info({name})")]
        try:
            self._check(what, name, kind, columns, declared)
        except QueryError:
            self.db.execute(f"DROP {sqlite_kind} {name}")
            raise

    def _check(self, what: str, name: str, kind: str, columns: list[str], declared: dict[str, str]) -> None:
        bad = [c for c in columns if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c)]
        if bad:
            raise QueryError(f"{what}: column names must start with a letter and hold only letters, digits and _: "
                             f"{', '.join(bad)}")
        if not declared:
            return
        missing, undeclared = [c for c in declared if c not in columns], [c for c in columns if c not in declared]
        if missing or undeclared:
            raise QueryError(f"{what}: the schema declares {', '.join(missing) or 'no column'} that the query "
                             f"does not give, and omits {', '.join(undeclared) or 'no column'} that it gives")
        if kind != "TABLE":
            return  # (trace_processor checks a view's values only with --extra-checks)
        blobs = [c for c, t in declared.items() if TYPES[t] == "blob"]
        if blobs:
            raise QueryError(f"{what}: bytes columns are not supported in a table: {', '.join(blobs)}")
        wrong = ", ".join(f"sum(typeof({c}) NOT IN ('null', '{TYPES[t]}'))" for c, t in declared.items())
        counts = self.db.execute(f"SELECT {wrong} FROM {name}").fetchone()
        bad = [f"{c} declared {t} holds {n} other value(s)" for (c, t), n in zip(declared.items(), counts) if n]
        if bad:
            raise QueryError(f"{what}: {'; '.join(bad)}")
