"""What the `rbln-perfetto` commands share: their trace, backend and output-format options, opening a
trace (or a set of traces) with the backend's warnings printed, the one table printer, and the lines
that describe an export.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from ..exporter.export import UI_LIMIT_BYTES, ExportResult
from ..progress import activity
from ..query import BACKENDS
from ..query.trace_paths import FILES

# `run`'s flags that choose what is traced, named in its errors (checked before and after torch loads).
SELECTION_FLAGS = ("--profile-steps", "--profile-calls", "--profile-submodules")

def bounded_int(what: str, low: int, high: int, note: str = ""):
    """An argparse type: a whole number from `low` to `high`, else a usage error naming `what` and the range."""
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; valid: {low}..{high}{note}")
        return int(text)

    return parse



TP_BIN_HELP = "a trace_processor binary (default: $RBLN_PERFETTO_TP_BIN)"


def backend_args(p) -> None:
    """`--backend` and `--tp-bin`."""
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: trace_processor when a binary is configured (for several traces: when one is "
                        "over 8 MiB), else the embedded sqlite")
    p.add_argument("--tp-bin", help=TP_BIN_HELP)


def trace_args(p, backend: bool = True, several: bool = False) -> None:
    """The TRACE argument (`several`: one or more, files or directories, with `--files` and `--workers`),
    then `--backend` (unless not `backend`) and `--tp-bin`."""
    if several:
        p.add_argument("trace", nargs="+", metavar="TRACE",
                       help="a Perfetto trace (.pb); or several, or run directories: then rows get a `trace` column "
                            "(the path relative to the directory holding them all)")
        p.add_argument("--files", choices=FILES, default="invocations",
                       help="which .pb files a directory gives: each run's per-invocation traces (default), each "
                            "run's aggregate.pb, or every .pb file")
        p.add_argument("--workers", type=int, help="embedded backend: processes loading the traces (default: CPUs)")
    else:
        p.add_argument("trace", help="a Perfetto trace (.pb), or a run directory (its aggregate.pb)")
    if backend:
        backend_args(p)
    else:
        p.add_argument("--tp-bin", help=TP_BIN_HELP)


def format_args(p, csv_help: str = "print CSV") -> None:
    """`--csv` or `--json` instead of a text table."""
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help=csv_help)
    fmt.add_argument("--json", action="store_true", help="print JSON records")


def trace_file(args, trace: str | None = None) -> Path:
    """The trace file a command that reads one trace reads: `trace` (else `args.trace`), or a run
    directory's aggregate.pb (the one rule for every such command; `TraceNotFoundError` otherwise)."""
    from ..analysis.sources import trace_path
    from ..query import require_trace_file

    return require_trace_file(trace_path(trace or args.trace))


def load_trace(args, trace: str | None = None):
    """The trace (`args.trace` unless given; a run directory: its aggregate.pb), opened; what the backend
    warns about it (unfinished slices, ...) printed as one line each."""
    from ..query import open_trace

    trace = trace_file(args, trace)
    with warnings_printed(args), activity(f"loading {Path(trace).name}"):  # on a terminal, for loads over a second
        return open_trace(trace, backend=args.backend, tp_bin=args.tp_bin)


def load_trace_set(args):
    """`args.trace` (several traces, or directories) opened as one set; warnings printed as `load_trace` prints them."""
    from ..query import open_traces

    with warnings_printed(args), activity(f"loading {len(args.trace)} paths"):
        return open_traces(args.trace, backend=args.backend, tp_bin=args.tp_bin, workers=args.workers, files=args.files)


@contextmanager
def warnings_printed(args):
    """The block's warnings: ours (UserWarning) as one line each on stderr, a library's as Python shows them."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"rbln-perfetto {args.command}: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def print_table(df, args, empty: str = "(no rows)", *, shell_csv: bool = False, decimals: int | None = 3) -> None:
    """`df` on stdout: CSV with `args.csv` (as trace_processor_shell writes it with `shell_csv`), JSON records
    with `args.json`, else a text table with floats to `decimals` places (None: as pandas shows them), or
    `empty` when it has no rows."""
    import pandas as pd

    if getattr(args, "csv", False):
        if shell_csv:
            from ..query.shell_csv import write_shell_csv

            write_shell_csv(df, sys.stdout)
        else:
            df.to_csv(sys.stdout, index=False)
    elif getattr(args, "json", False):
        print(df.to_json(orient="records"))
    else:
        floats = None if decimals is None else f"{{:.{decimals}f}}".format
        with pd.option_context("display.width", 220, "display.max_columns", 50, "display.max_rows", 1000,
                               "display.max_colwidth", 70, "display.float_format", floats):
            print(df.to_string(index=False) if not df.empty else empty)


# How a capture whose run did not end well ended (its status, as `CaptureInfo.status` gives it).
_ENDED = {"interrupted": "it was interrupted", "error": "it stopped at an error",
          "incomplete": "its capture has no end: the process was killed"}


def print_export_result(result: ExportResult) -> None:
    """What an export wrote (and, for a run that did not end well, what of it was recovered), where to look
    at it, and its summary."""
    files = result.invocation_files
    invocations = sum(s.calls for s in result.stats.submodules.values())  # (also when no per-invocation files)
    print(f"traces in {result.out_dir}/:")
    for f in files:
        print(f"  {f.name}")
    if result.aggregate_file:
        print(f"  {result.aggregate_file.name}  (whole run: {invocations} invocations, {result.slices} slices)")
    if result.truncation:
        print(f"the run is incomplete (its capture is cut short at byte offset {result.truncation.offset}: "
              f"{result.truncation.reason}): recovered {invocations} invocations, the complete ones before it")
    elif result.status in _ENDED:
        print(f"the run is incomplete ({_ENDED[result.status]}): recovered {invocations} invocations, all it recorded")
    for big in result.too_large_for_ui:
        print(f"{big.name} is {big.stat().st_size / 2**30:.2f} GiB, more than the browser UI loads "
              f"({UI_LIMIT_BYTES / 2**30:g} GiB): open it with `rbln-perfetto serve {big}` and ui.perfetto.dev's "
              "'Use loaded trace'")
    shown = result.aggregate_file or (files[0] if files else "FILE")
    print(f"see it in ui.perfetto.dev: rbln-perfetto open {shown}; query it: rbln-perfetto query FILE SQL")
    print(f"\n{result.summary()}")
