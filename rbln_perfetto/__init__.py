"""Profile a device-split SD3 as device commands; export Perfetto traces; query them with SQL."""

from .activation import profile
from .capture import CaptureError, read_info
from .export import ExportError, ExportResult, export
from .query import REPORTS, QueryError, Trace, open_trace
from .summary import Summary

__all__ = [
    "REPORTS",
    "CaptureError",
    "ExportError",
    "ExportResult",
    "QueryError",
    "Summary",
    "Trace",
    "export",
    "open_trace",
    "profile",
    "read_info",
]
