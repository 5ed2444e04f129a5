"""Every error rbln-perfetto raises on purpose, under one base class.

`except rbln_perfetto.RblnPerfettoError` catches them all. Each class also derives from the
builtin exception it stands for (ValueError for bad input, OSError for files that cannot be
written, RuntimeError for a state the call cannot proceed in), so code written against those
keeps working.
"""

from __future__ import annotations


class RblnPerfettoError(Exception):
    """Base class of the errors rbln-perfetto raises on purpose; the message names the cause."""


class UsageError(RblnPerfettoError, ValueError):
    """A bad argument or setting (command-line flag, keyword argument, environment variable)."""


class ProfilerStateError(RblnPerfettoError, RuntimeError):
    """The profiler cannot do this now (a `profile()` block already active, or not ended yet)."""


class OutputExistsError(RblnPerfettoError, FileExistsError):
    """The output directory already holds what this run would write."""


class PipelineConfigError(RblnPerfettoError, ValueError):
    """An rbln_config the pipeline refuses (its ConfigError or DeviceMemoryError), in the pipeline's words."""


class CaptureError(RblnPerfettoError, ValueError):
    """A capture file that cannot be read, with the byte offset where reading failed."""

    def __init__(self, path, offset: int, reason: str):
        self.path, self.offset, self.reason = str(path), offset, reason
        super().__init__(f"{path}: {reason} at byte offset {offset}")


class ExportError(RblnPerfettoError, OSError):
    """The output cannot be written; nothing already written was changed."""


class TraceNotFoundError(RblnPerfettoError, FileNotFoundError):
    """A trace path that is missing, or is a directory."""


class VarintError(RblnPerfettoError, ValueError):
    """Bytes that do not hold a varint where one should start (readers turn it into their own error)."""

    def __init__(self, reason: str, *, cut_short: bool):
        super().__init__(reason)
        self.cut_short = cut_short  # the data ended inside the varint (rather than being corrupt)


class TraceReadError(RblnPerfettoError, ValueError):
    """Not a Perfetto protobuf trace (or a corrupt one)."""


class QueryError(RblnPerfettoError, ValueError):
    """SQL that the backend rejected."""


class TraceProcessorError(RblnPerfettoError, RuntimeError):
    """No trace_processor binary can be found or started."""


class TraceProcessorBinaryError(TraceProcessorError, FileNotFoundError):
    """A configured trace_processor path (`--tp-bin`, `$RBLN_PERFETTO_TP_BIN`) that is not an executable."""


class WorkerError(RblnPerfettoError, RuntimeError):
    """A worker process of `open_traces` died, and the traces it held with it."""


class PlotError(RblnPerfettoError, ValueError):
    """A trace that holds nothing the plot can draw."""


class PortUnavailableError(RblnPerfettoError, OSError):
    """A local port that a server cannot bind (already in use, or not permitted)."""


class RankFailure(RblnPerfettoError, RuntimeError):
    """A rank of a run split across processes lost another rank or was stopped (SIGTERM); says what was kept."""
