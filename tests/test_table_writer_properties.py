"""Property tests of the C table writer (`rbln_perfetto.query._sqlite_tables`, SQLite pages written by
hand, as `sqlite_tables.load_image` calls it) against the INSERT path (`sqlite_tables.load_inserts`):
random tables of 0 to 60k rows with NULLs, integers of every stored width (negative and 64-bit), reals
(NaN, infinities, -0.0, subnormals) and strings whose records sit on SQLite's local-payload limits
(489 and 4061 bytes on 4 KiB pages, and where overflow pages begin and chain). Each image must pass
`PRAGMA integrity_check` and hold every row, rowid and `typeof()` the INSERTs give.

CI runs a modest number of examples; `make fuzz` (RBLN_PERFETTO_FUZZ_EXAMPLES=2000) runs many.
"""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, target
from hypothesis import strategies as st

from rbln_perfetto.query import sqlite_tables

EXAMPLES = int(os.environ.get("RBLN_PERFETTO_FUZZ_EXAMPLES", "25")) // 3 + 1  # (each example is up to 60k rows)
pytestmark = pytest.mark.skipif(sqlite_tables.EXTENSION is None,
                                reason="the C table writer is not built (or RBLN_PERFETTO_PURE_PYTHON=1): nothing to test")

PAGE = 4096
# A table leaf keeps a record of up to U - 35 bytes on its page; a larger one keeps K = M + (P - M) % (U - 4)
# bytes there when K <= U - 35, else M, with M = (U - 12) * 32 / 255 - 23, and the rest on overflow pages of
# U - 4 bytes each (https://www.sqlite.org/fileformat2.html#b_tree_pages).
MAX_LOCAL = PAGE - 35  # 4061
MIN_LOCAL = (PAGE - 12) * 32 // 255 - 23  # 489
OVERFLOW = PAGE - 4
assert (MAX_LOCAL, MIN_LOCAL) == (4061, 489)
# Record sizes where the split changes: all local up to MAX_LOCAL; K wraps every OVERFLOW bytes; K passes
# MAX_LOCAL (and falls back to MIN_LOCAL) 3572 bytes into each wrap.
EDGES = sorted({edge + d for edge in (MIN_LOCAL, MAX_LOCAL, MIN_LOCAL + OVERFLOW, MAX_LOCAL + OVERFLOW,
                                      MIN_LOCAL + 2 * OVERFLOW, MAX_LOCAL + 2 * OVERFLOW) for d in (-1, 0, 1)})
# A one-string record (`__string`: the rowid's NULL and the text) is its text plus a 1-byte header size,
# a 1-byte NULL serial type, and the text's serial type (13 + 2n: 2 bytes below 8186 bytes, 3 above).
STRING_LENGTHS = sorted({p - 4 if p - 4 < 8186 else p - 5 for p in EDGES} | {0, 1, 57, 58, 8185, 8186, 20_000})
# Each integer serial type's edges (1, 2, 3, 4, 6 and 8 bytes; 0 and 1 have their own types).
INT_EDGES = sorted({v for bits in (8, 16, 24, 32, 48, 64) for v in (2 ** (bits - 1) - 1, -(2 ** (bits - 1)))}
                   | {2 ** (bits - 1) for bits in (8, 16, 24, 32, 48)} | {-(2 ** (bits - 1)) - 1 for bits in (8, 16, 24, 32, 48)}
                   | {0, 1, -1, 2})
REALS = [0.0, -0.0, 1.0, -1.5, 2.0 ** 53, 5e-324, -1e308, float("inf"), float("-inf"), float("nan"), 0.1]
WIDE = "é€𝄞"  # 2-, 3- and 4-byte UTF-8, so that a string's length in bytes is not its length in characters


def _text(rng: np.random.Generator, nbytes: int) -> str:
    """A string of exactly `nbytes` UTF-8 bytes, up to a few of its characters multi-byte."""
    wide = "".join(WIDE[i] for i in rng.integers(0, len(WIDE), rng.integers(0, 4)))
    while len(wide.encode()) > nbytes:
        wide = wide[1:]
    ascii_ = rng.integers(97, 123, nbytes - len(wide.encode()), dtype=np.uint8).tobytes().decode()
    at = int(rng.integers(0, len(ascii_) + 1))
    return ascii_[:at] + wide + ascii_[at:]


def _ints(rng: np.random.Generator, n: int, wide: float) -> np.ndarray:
    """n int64s: serial-type edges, small values, and a share `wide` of any 64-bit value."""
    values = rng.choice(np.array(INT_EDGES, dtype=np.int64), n)
    small = rng.random(n) < 0.5
    values[small] = rng.integers(-300, 300, int(small.sum()))
    full = rng.random(n) < wide
    values[full] = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, int(full.sum()), dtype=np.int64,
                                endpoint=True)
    return values


def _objects(rng: np.random.Generator, n: int, kind: str, lengths: list[int], nulls: float) -> list:
    """n Python values for an 'o' column of affinity `kind` ('text', 'int', 'real'), a share `nulls` None."""
    if kind == "int":
        values = [int(v) for v in _ints(rng, n, 0.3)]
    elif kind == "real":
        values = [REALS[i] if i < len(REALS) else float(x) for i, x in
                  zip(rng.integers(0, 2 * len(REALS), n), rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n))]
    else:
        values = [_text(rng, int(lengths[i])) for i in rng.integers(0, len(lengths), n)]
    return [None if null else v for v, null in zip(values, rng.random(n) < nulls)]


def _nullable(rng: np.random.Generator, n: int) -> np.ndarray:
    """An 'n' column: ids (>= 0) with some -1s, which both loaders store as NULL."""
    ids = np.abs(_ints(rng, n, 0.2))
    ids[ids < 0] = 0  # (abs of int64's minimum)
    ids[rng.random(n) < 0.3] = -1
    return ids


@st.composite
def tables(draw) -> dict:
    """Columns for every table of the backend's schema, as `table_columns` hands them over: each column
    filled with values of the type its declared affinity keeps (what the reader gives it)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lengths = draw(st.lists(st.sampled_from(STRING_LENGTHS) | st.integers(0, 600), min_size=1, max_size=6))
    nulls = draw(st.sampled_from([0.0, 0.1, 0.9]))
    wide = draw(st.sampled_from([0.0, 0.2, 1.0]))
    n = {"__slice": draw(st.integers(0, 60_000)), "__string": draw(st.integers(0, 1500)),
         "track": draw(st.integers(0, 200)), "counter": draw(st.integers(0, 20_000)),
         "flow": draw(st.integers(0, 3000)), "__arg_value": draw(st.integers(0, 1500)),
         "__arg": draw(st.integers(0, 20_000)), "stats": draw(st.integers(0, 50))}
    return build_columns(rng, n, lengths, nulls, wide)


NO_ROWS = dict.fromkeys(["__slice", "__string", "track", "counter", "flow", "__arg_value", "__arg", "stats"], 0)


def build_columns(rng: np.random.Generator, n: dict, lengths: list[int], nulls: float, wide: float) -> dict:
    """`table_columns`' shape for `n[table]` rows a table: strings of the byte lengths `lengths`, a share
    `nulls` of NULLs in the Python-value columns, a share `wide` of any 64-bit value in the int64 ones."""
    text = lambda rows: _objects(rng, rows, "text", lengths, nulls)  # noqa: E731
    ints = lambda rows: _objects(rng, rows, "int", lengths, nulls)  # noqa: E731
    return {
        "__slice": (n["__slice"], "riiinnninn", [None] + [_ints(rng, n["__slice"], wide) for _ in range(3)]
                    + [_nullable(rng, n["__slice"]) for _ in range(3)] + [_ints(rng, n["__slice"], wide)]
                    + [_nullable(rng, n["__slice"]) for _ in range(2)]),
        "__string": (n["__string"], "ro", [None, text(n["__string"])]),
        "track": (n["track"], "roooooo", [None, text(n["track"]), text(n["track"]), ints(n["track"]),
                                          text(n["track"]), text(n["track"]), text(n["track"])]),
        "counter": (n["counter"], "riifz", [None, _ints(rng, n["counter"], wide), _ints(rng, n["counter"], wide),
                                            np.array(_objects(rng, n["counter"], "real", lengths, 0.0), dtype=np.float64),
                                            None]),
        "flow": (n["flow"], "rooz", [None, ints(n["flow"]), ints(n["flow"]), None]),
        "__arg_value": (n["__arg_value"], "roooooo", [None, text(n["__arg_value"]), text(n["__arg_value"]),
                                                      ints(n["__arg_value"]), text(n["__arg_value"]),
                                                      _objects(rng, n["__arg_value"], "real", lengths, nulls),
                                                      text(n["__arg_value"])]),
        "__arg": (n["__arg"], "rii", [None, _ints(rng, n["__arg"], wide), _ints(rng, n["__arg"], wide)]),
        "stats": (n["stats"], "ozoooo", [text(n["stats"]), None, text(n["stats"]), text(n["stats"]),
                                         ints(n["stats"]), text(n["stats"])]),
    }


def _copy(columns: dict) -> dict:
    """The columns again: `load_image` empties the dict it is given."""
    return {name: (rows, spec, list(data)) for name, (rows, spec, data) in columns.items()}


def _rows(db: sqlite3.Connection, schema: str, table: str) -> str:
    """A query of a table's rows with their rowids and each value's typeof()."""
    columns = [c for _, c, *_ in db.execute(f"PRAGMA {schema}.table_info({table})")]
    return f"SELECT rowid, *, {', '.join(f'typeof({c})' for c in columns)} FROM {schema}.{table}"


def btree_depths(db: sqlite3.Connection) -> dict[str, int]:
    """Each table's b-tree depth as SQLite's dbstat walks it: 1 a lone leaf, 2 a root over leaves, ..."""
    return dict(db.execute("SELECT name, max(length(path) - length(replace(path, '/', ''))) FROM dbstat "
                           "WHERE pagetype != 'overflow' GROUP BY name"))


def check_writer_agrees(columns: dict) -> dict[str, int]:
    """The image of `columns` passes SQLite's integrity check, has the same schema, and its tables hold
    what the INSERTs hold, value by value with its type and rowid (compared inside SQLite: none missing,
    none extra; the views are SQL over them); its tables' b-tree depths."""
    inserted_uri = f"file:inserted-{id(columns)}?mode=memory&cache=shared"
    inserted = sqlite3.connect(inserted_uri, uri=True)
    image = sqlite3.connect("file:image?mode=memory", uri=True)
    try:
        sqlite_tables.load_inserts(inserted, _copy(columns))
        sqlite_tables.load_image(image, _copy(columns))
        assert image.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        image.execute("ATTACH ? AS inserted", (inserted_uri,))
        objects = image.execute("SELECT type, name, sql FROM main.sqlite_schema ORDER BY rowid").fetchall()
        assert image.execute("SELECT type, name, sql FROM inserted.sqlite_schema ORDER BY rowid").fetchall() == objects
        for name in (name for kind, name, _ in objects if kind == "table"):
            written, expected = _rows(image, "main", name), _rows(image, "inserted", name)
            count = image.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            assert count == image.execute(f"SELECT count(*) FROM inserted.{name}").fetchone()[0], name
            for one, other in ((written, expected), (expected, written)):
                differ = image.execute(f"SELECT * FROM ({one} EXCEPT {other}) LIMIT 3").fetchall()
                assert not differ, (name, differ)
        for name, (rows, _, _) in columns.items():
            assert image.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == rows
        return btree_depths(image)
    finally:
        image.close()
        inserted.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(columns=tables())
@example(columns=build_columns(np.random.default_rng(0), NO_ROWS, [0], 0.0, 0.0))
def test_the_image_holds_what_the_inserts_hold(columns):
    depths = check_writer_agrees(columns)
    target(float(max(depths.values())), label="deepest b-tree")


def test_strings_on_every_local_payload_edge():
    # Three rows of each edge length, shuffled: every split of a record between its leaf and overflow
    # pages, met on leaves that hold other cells too.
    rng = np.random.default_rng(1)
    strings = [_text(rng, n) for n in STRING_LENGTHS for _ in range(3)]
    rng.shuffle(strings)
    columns = build_columns(rng, NO_ROWS, [0], 0.0, 0.0)
    columns["__string"] = (len(strings), "ro", [None, strings])
    check_writer_agrees(columns)


def test_a_table_of_60k_wide_rows_has_two_interior_levels():
    # 60k rows of full 64-bit integers take ~900 leaf pages; an interior page points to at most 273
    # children, so the table needs a root over a level of interior pages over the leaves: depth 3.
    rng = np.random.default_rng(2)
    columns = build_columns(rng, {"__slice": 60_000, "__string": 2000, "track": 20, "counter": 20_000, "flow": 100,
                                  "__arg_value": 500, "__arg": 20_000, "stats": 5}, [40, MIN_LOCAL, 5000], 0.1, 1.0)
    depths = check_writer_agrees(columns)
    assert depths["__slice"] == 3, depths
