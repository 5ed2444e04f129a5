"""The trace_processor backend over many traces: the `perfetto` package's BatchTraceProcessor, one
trace_processor process per trace, loaded and queried from its thread pools.

It never downloads a binary: `tp_bin`, `$RBLN_PERFETTO_TP_BIN`, or the `perfetto` package's already
cached prebuilt (a download for every `open_traces` of a machine without network would fail slowly).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import QueryError, TraceProcessorError, TraceReadError
from ..reader.diagnosis import trace_file_problem, unfinished_slices_warning
from .perfetto_sql import trace_processor_flags
from .tp_backend import TP_BIN_ENV, find_binary
from .tp_results import result_frame, sql_error


class BatchTraceProcessorBackend:
    """`paths`, each loaded into its own trace_processor by a BatchTraceProcessor."""

    def __init__(self, paths: list[Path], tp_bin: str | None = None):
        from perfetto.batch_trace_processor.api import BatchTraceProcessor, BatchTraceProcessorConfig
        from perfetto.trace_processor import TraceProcessorConfig

        for path in paths:  # diagnosed first, in the embedded reader's words, as the one-trace backend does
            problem = trace_file_problem(path, json_and_gzip=True)
            if problem is not None:
                raise TraceReadError(f"{path}: {problem}")
        binary = find_binary(tp_bin)
        if binary is None:
            raise TraceProcessorError(f"no trace_processor binary: set {TP_BIN_ENV} or pass tp_bin (open_traces does "
                                      "not download one); or use the embedded backend (backend='sqlite')")
        tp_config = TraceProcessorConfig(bin_path=binary, extra_flags=trace_processor_flags())  # (the rbln package)
        config = BatchTraceProcessorConfig(tp_config=tp_config)
        try:  # (absolute paths: the package would read `name:rest` as a trace URI)
            self.btp = BatchTraceProcessor([os.path.abspath(p) for p in paths], config)
        except Exception as exc:  # a binary that cannot start, or a file it rejects (the package does not say which)
            text = " ".join(str(exc).split())[:300]
            raise TraceProcessorError(f"trace_processor ({binary}) failed loading {len(paths)} traces: "
                                      f"{type(exc).__name__}: {text}") from None
        try:
            counts, _ = self.query("select count(*) as n from slice where dur = -1")
        except BaseException:
            self.close()
            raise
        # The same warning, per trace, as `Trace` gives on either backend.
        self.warnings = [[(UserWarning, unfinished_slices_warning(p, n))] if n else []
                         for p, n in zip(paths, (int(df.n.iloc[0]) for df in counts))]

    def query(self, sql: str) -> tuple[list, tuple[int, QueryError] | None]:
        """One DataFrame per trace, in set order, and the first failing trace's (index, QueryError), if any."""
        from perfetto.trace_processor import TraceProcessorException

        def one(tp):
            try:
                return result_frame(tp.query(sql))
            except TraceProcessorException as exc:
                return sql_error(str(exc))

        results = self.btp.execute(one)
        failure = next(((i, r) for i, r in enumerate(results) if isinstance(r, QueryError)), None)
        return [None if isinstance(r, QueryError) else r for r in results], failure

    def close(self) -> None:
        self.btp.close()
