"""Profile a device-split SD3 as device commands; export Perfetto traces; query them with SQL.

Importing the package installs it as the pipeline's profiler (`pipeline.profiling_hooks`); it
then profiles only inside `profile()`, with `RBLN_PROFILER` on, or where an rbln_config's
`activate_profiler` asks for it.
"""

from .analysis import CheckResult, check, critical_path, diff, idle, variance, write_overlay
from .errors import (
    CaptureError,
    ExportError,
    OutputExistsError,
    PlotError,
    PortUnavailableError,
    ProfilerStateError,
    QueryError,
    RblnPerfettoError,
    TraceNotFoundError,
    TraceProcessorBinaryError,
    TraceProcessorError,
    TraceReadError,
    UsageError,
    WorkerError,
)
from .exporter.export import ExportResult, export
from .exporter.merge import MergeResult, merge
from .exporter.run_totals import Summary
from .query import REPORTS, Trace, TraceSet, open_trace, open_traces
from .recorder.activation import install as _install
from .recorder.activation import profile
from .recorder.capture import read_info
from .recorder.ranges import range  # noqa: A004 - rbln_perfetto.range, like nvtx.range

_install()

__all__ = [
    "REPORTS",
    "CaptureError",
    "CheckResult",
    "ExportError",
    "ExportResult",
    "MergeResult",
    "OutputExistsError",
    "PlotError",
    "PortUnavailableError",
    "ProfilerStateError",
    "QueryError",
    "RblnPerfettoError",
    "Summary",
    "Trace",
    "TraceNotFoundError",
    "TraceProcessorBinaryError",
    "TraceProcessorError",
    "TraceReadError",
    "TraceSet",
    "UsageError",
    "WorkerError",
    "check",
    "critical_path",
    "diff",
    "export",
    "idle",
    "merge",
    "open_trace",
    "open_traces",
    "profile",
    "range",
    "read_info",
    "variance",
    "write_overlay",
]
