"""What trace_processor answers, in the embedded backend's shape: DataFrames with the same dtypes, and its
SQL errors as one line.

The `perfetto` package hands back every column as `object` dtype (one numpy object array of cells), where
the embedded backend gives int64 / float64 / nullable Int64 for the same rows; both now go through one
`frame()`. trace_processor words an SQL error as a Python-style traceback (`SqlSource::AsTraceback`):

    Traceback (most recent call last):
      File "stdin" line 1 col 15
        select * from nosuch
                      ^
    no such table: nosuch

(a module's SQL adds a frame `Module import "rbln.commands" line L col C` per level); flattened, that read
as a traceback of ours. `sql_error()` keeps the message and the innermost place.
"""

from __future__ import annotations

import re

from ..errors import QueryError
from .result_frame import frame

_FRAME = re.compile(r'^  (?P<where>.+?) line (?P<line>\d+) col (?P<col>\d+)$')
_HEADER = "Traceback (most recent call last):"


def result_frame(result):
    """A `perfetto` QueryResultIterator as the embedded backend would give the same rows."""
    columns = list(result.column_names)
    if not columns:
        return frame([], [])
    rows = result.cells.reshape((result.row_count, result.column_count)).tolist() if result.row_count else []
    return frame(rows, columns)


def sql_error(text: str) -> QueryError:
    """trace_processor's error text as one line: the message, then where (innermost frame) and the SQL there."""
    lines = [line for line in text.splitlines() if line.strip()]
    where, segment, message = None, None, []
    i = 0
    while i < len(lines):
        match = _FRAME.match(lines[i])
        if lines[i].strip() == _HEADER:
            i += 1
        elif match:
            where = f"{match['where']} line {match['line']} col {match['col']}"
            segment = lines[i + 1].strip() if i + 1 < len(lines) else None
            i += 3  # the frame, its SQL and its caret
        else:
            message.append(lines[i].strip())
            i += 1
    text = " ".join(" ".join(message).split()) or " ".join(text.split())
    if where:
        text += f" ({where}" + (f": {segment}" if segment else "") + ")"
    return QueryError(f"SQL error: {text}")
