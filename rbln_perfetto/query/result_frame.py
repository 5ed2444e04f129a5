"""One shape for query results from every backend: a DataFrame whose dtypes depend on the values, not the engine.

Integer columns are int64 (nullable Int64 when they hold NULLs), real ones float64, text object; an empty
result has its columns and no rows.
"""

from __future__ import annotations

from operator import itemgetter


def frame(rows: list[tuple], columns: list[str]):
    """A DataFrame whose integer columns stay integers when they hold NULLs (pandas' nullable Int64).
    (A column's values are gathered and their types checked by C loops: no Python statement per value.)"""
    import pandas as pd

    data = {}
    for j, name in enumerate(columns):
        values = list(map(itemgetter(j), rows))
        if None in values:
            types = set(map(type, values))
            types.discard(type(None))
            if types == {int}:
                values = pd.array(values, dtype="Int64")
        data[name] = values
    return pd.DataFrame(data, columns=columns)
