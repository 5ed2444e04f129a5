"""Profile a device-split SD3 as device commands; export Perfetto traces; query them with SQL.

Importing the package installs it as the pipeline's profiler (`pipeline.profiling_hooks`); it
then profiles only inside `profile()`, with `RBLN_PROFILER` on, or where an rbln_config's
`activate_profiler` asks for it.
"""

from .activation import install as _install
from .activation import profile
from .capture import read_info
from .errors import (
    CaptureError,
    ExportError,
    OutputExistsError,
    PlotError,
    ProfilerStateError,
    QueryError,
    RblnPerfettoError,
    TraceNotFoundError,
    TraceProcessorBinaryError,
    TraceProcessorError,
    TraceReadError,
    UsageError,
)
from .export import ExportResult, export
from .query import REPORTS, Trace, open_trace
from .summary import Summary

_install()

__all__ = [
    "REPORTS",
    "CaptureError",
    "ExportError",
    "ExportResult",
    "OutputExistsError",
    "PlotError",
    "ProfilerStateError",
    "QueryError",
    "RblnPerfettoError",
    "Summary",
    "Trace",
    "TraceNotFoundError",
    "TraceProcessorBinaryError",
    "TraceProcessorError",
    "TraceReadError",
    "UsageError",
    "export",
    "open_trace",
    "profile",
    "read_info",
]
