"""Query traces with trace_processor SQL, on trace_processor itself or on an embedded SQLite copy.

    with rbln_perfetto.open_trace("profile-out/aggregate.pb") as tr:   # backend="auto" | "sqlite" | "trace_processor"
        tr.query("select name, dur from slice where name like '%to_q%' order by dur desc")
        tr.report("devices")

    with rbln_perfetto.open_traces("profile-out/") as ts:   # many traces: one DataFrame, a `trace` column first
        ts.query("select name, dur from slice where depth = 0")
"""

from ..errors import QueryError
from .backends import BACKENDS
from .reports import REPORTS, Report
from .tp_backend import TP_BIN_ENV
from .trace import Trace, open_trace, require_trace_file
from .trace_set import TraceSet, open_traces

__all__ = ["BACKENDS", "REPORTS", "TP_BIN_ENV", "QueryError", "Report", "Trace", "TraceSet", "open_trace", "open_traces",
           "require_trace_file"]
