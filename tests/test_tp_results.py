"""trace_processor's answers in the embedded backend's shape: the same dtypes for the same rows, and its SQL
errors as one line (issue 20, items 20 and 21). No binary is needed: the results are real `perfetto`
QueryResultIterators built from the protobuf batches trace_processor sends, and the errors are worded as
trace_processor's SqlSource::AsTraceback words them."""

from __future__ import annotations

import pandas as pd
import pytest
from perfetto.common.query_result_iterator import QueryResultIterator
from perfetto.trace_processor.platform import PlatformDelegate
from perfetto.trace_processor.protos import ProtoFactory
from reference_traces import reference_trace

from rbln_perfetto.query import open_trace
from rbln_perfetto.query.tp_results import result_frame, sql_error

NULL, VARINT, FLOAT64, STRING = 1, 2, 3, 4  # QueryResult.CellsBatch cell types


def _as_trace_processor_sends(rows: list[tuple], columns: list[str]) -> QueryResultIterator:
    """The rows as one CellsBatch, the way trace_processor's RPC encodes a query result."""
    batch = ProtoFactory(PlatformDelegate()).CellsBatch()
    strings = []
    for row in rows:
        for value in row:
            if value is None:
                batch.cells.append(NULL)
            elif isinstance(value, int):
                batch.cells.append(VARINT)
                batch.varint_cells.append(value)
            elif isinstance(value, float):
                batch.cells.append(FLOAT64)
                batch.float64_cells.append(value)
            else:
                batch.cells.append(STRING)
                strings.append(value)
    batch.string_cells = "".join(s + "\0" for s in strings)
    batch.is_last_batch = True
    return QueryResultIterator(columns, [batch])


QUERIES = [
    "select id, ts, dur, name, depth, parent_id, arg_set_id from slice order by id",
    "select key, int_value, string_value, real_value from args order by arg_set_id, key",
    "select name, count(*) as n, avg(dur) as mean from slice group by name order by name",
    "select id from slice where 0",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_the_same_rows_get_the_same_dtypes_from_both_backends(sql):
    with open_trace(reference_trace("flows"), backend="sqlite") as tr:
        embedded = tr.query(sql)
    rows = [tuple(None if v is None or v != v else v for v in r) for r in embedded.astype(object).itertuples(index=False)]
    rows = [tuple(int(v) if hasattr(v, "is_integer") and type(v).__name__ in ("int64", "Int64") else v
                  for v in row) for row in rows]
    from_tp = result_frame(_as_trace_processor_sends(rows, list(embedded.columns)))
    assert list(from_tp.dtypes.astype(str)) == list(embedded.dtypes.astype(str))
    assert from_tp.astype(object).where(from_tp.notna(), None).values.tolist() == \
        embedded.astype(object).where(embedded.notna(), None).values.tolist()


def test_object_columns_from_trace_processor_become_numbers():
    result = _as_trace_processor_sends([(1, 2.5, "a", None), (3, 4.0, "b", 7)], ["i", "f", "s", "maybe"])
    df = result_frame(result)
    text_dtype = str(pd.Series(["a"]).dtype)  # (object, or str from pandas 3 on)
    assert [str(t) for t in df.dtypes] == ["int64", "float64", text_dtype, "Int64"]
    raw = _as_trace_processor_sends([(1, 2.5, "a", None)], ["i", "f", "s", "maybe"]).as_pandas_dataframe()
    assert str(raw.dtypes["i"]) == str(raw.dtypes["f"]) == "object"  # what the perfetto package alone gives


def test_an_empty_result_keeps_its_columns():
    df = result_frame(_as_trace_processor_sends([], ["a", "b"]))
    assert list(df.columns) == ["a", "b"] and len(df) == 0


def test_a_sql_error_is_one_line_with_its_place():
    text = ("Traceback (most recent call last):\n  File \"stdin\" line 1 col 15\n    select * from nosuch\n"
            "                  ^\nno such table: nosuch")
    error = sql_error(text)
    assert str(error) == 'SQL error: no such table: nosuch (File "stdin" line 1 col 15: select * from nosuch)'
    assert "\n" not in str(error) and "Traceback" not in str(error)


def test_a_module_error_names_the_innermost_frame():
    text = ("Traceback (most recent call last):\n  File \"stdin\" line 1 col 1\n"
            "    INCLUDE PERFETTO MODULE rbln.commands;\n    ^\n"
            "  Module import \"rbln.commands\" line 3 col 8\n    SELECT nope FROM slice\n           ^\n"
            "no such column: nope")
    assert str(sql_error(text)) == ('SQL error: no such column: nope (Module import "rbln.commands" line 3 col 8: '
                                    'SELECT nope FROM slice)')


def test_an_error_without_a_traceback_stays_as_it_is():
    assert str(sql_error("  something   went\nwrong ")) == "SQL error: something went wrong"
