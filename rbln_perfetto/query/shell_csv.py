"""CSV as trace_processor_shell prints it (`-q FILE`), so `rbln-perfetto query --csv` reads the same on
either backend and diffs cleanly against the shell's own output: quoted header and strings, integers bare,
doubles with six decimals (`100.000000`), NULL as `"[NULL]"`."""

from __future__ import annotations

import math
from typing import TextIO

NULL = '"[NULL]"'  # (quoted, as the shell prints it)


def shell_value(value) -> str:
    """One value as trace_processor_shell writes it in CSV."""
    if value is None or value is _NA or (isinstance(value, float) and math.isnan(value)):
        return NULL
    if isinstance(value, bool):
        return str(int(value))
    if hasattr(value, "is_integer") and not isinstance(value, int):  # float or numpy floating
        return f"{float(value):.6f}"
    if isinstance(value, int) or type(value).__name__.startswith(("int", "uint")):  # int or numpy integer
        return str(int(value))
    return f'"{value}"'


def write_shell_csv(df, out: TextIO) -> None:
    """`df` (a query's rows) to `out` in trace_processor_shell's CSV."""
    out.write(",".join(f'"{c}"' for c in df.columns) + "\n")
    for row in df.astype(object).itertuples(index=False):
        out.write(",".join(shell_value(v) for v in row) + "\n")


try:  # pandas' NA (nullable integer columns), without importing pandas for this module alone
    from pandas import NA as _NA
except ImportError:  # pragma: no cover
    _NA = object()
