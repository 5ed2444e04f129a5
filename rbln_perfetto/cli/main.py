"""`rbln-perfetto`: profile the device-split SD3, export captures, and query traces.

Errors print one line naming the cause and exit non-zero; `--debug` shows the traceback. A reader
that closes the pipe early (`rbln-perfetto query ... | head`) ends the command quietly (exit 141, as SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import RblnPerfettoError, TraceProcessorError, UsageError
from ..exporter.export import UI_LIMIT_BYTES, ExportResult, export
from ..progress import activity
from ..query import BACKENDS
from ..query.trace_paths import FILES


def _print_result(result: ExportResult) -> None:
    out = sys.stdout
    files = result.invocation_files
    print(f"traces in {result.out_dir}/:", file=out)
    for f in files:
        print(f"  {f.name}", file=out)
    if result.aggregate_file:
        print(f"  {result.aggregate_file.name}  (whole run: {len(files)} invocations, {result.slices} slices)", file=out)
    if result.truncation:
        print(f"capture is cut short at byte offset {result.truncation.offset} ({result.truncation.reason}); "
              f"exported the {len(files)} complete invocations before it", file=out)
    for big in result.too_large_for_ui:
        print(f"{big.name} is {big.stat().st_size / 2**30:.2f} GiB, more than the browser UI loads "
              f"({UI_LIMIT_BYTES / 2**30:g} GiB): open it with `rbln-perfetto serve {big}` and ui.perfetto.dev's "
              "'Use loaded trace'", file=out)
    shown = result.aggregate_file or (files[0] if files else "FILE")
    print(f"see it in ui.perfetto.dev: rbln-perfetto open {shown}; query it: rbln-perfetto query FILE SQL", file=out)
    print(f"\n{result.summary()}", file=out)


def cmd_export(args) -> int:
    if not (args.per_invocation or args.aggregate):
        raise UsageError("--no-per-invocation and --no-aggregate together leave nothing to write; drop one")
    result = export(args.capture, args.out or Path(args.capture).parent, per_invocation=args.per_invocation,
                    aggregate=args.aggregate, compression_level=args.compression_level, overwrite=args.force)
    _print_result(result)
    return 0


def _open(args, trace: str | None = None):
    """The trace (`args.trace` unless given), opened; what the backend warns about it (unfinished slices, ...)
    printed as one line each."""
    from ..query import open_trace

    trace = trace or args.trace
    with _warnings_printed(args), activity(f"loading {Path(trace).name}"):  # on a terminal, for loads over a second
        return open_trace(trace, backend=args.backend, tp_bin=args.tp_bin)


def _open_set(args):
    """`args.trace` (several traces, or directories) opened as one set; warnings printed as `_open` prints them."""
    from ..query import open_traces

    with _warnings_printed(args), activity(f"loading {len(args.trace)} paths"):
        return open_traces(args.trace, backend=args.backend, tp_bin=args.tp_bin, workers=args.workers, files=args.files)


@contextmanager
def _warnings_printed(args):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"rbln-perfetto {args.command}: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
        else:  # a library's warning: as Python would show it
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def cmd_summary(args) -> int:
    import pandas as pd

    from ..query import REPORTS

    with _open(args) as tr, pd.option_context("display.width", 200, "display.max_columns", 20,
                                              "display.max_colwidth", 60, "display.float_format", "{:.3f}".format):
        print(f"{args.trace} ({tr.backend} backend)")
        for name, report in REPORTS.items():
            df = tr.report(name)
            print(f"\n{report.title} [{name}]:")
            print(df.to_string(index=False) if not df.empty else "  (none)")
        from ..analysis import stands_out

        print("\nwhat stands out:")
        print("\n".join(f"  {line}" for line in stands_out(tr)) or "  (nothing: no device tracks)")
    return 0


def cmd_query(args) -> int:
    import pandas as pd

    one = len(args.trace) == 1 and not Path(args.trace[0]).is_dir()  # (one trace: no `trace` column)
    with _open(args, args.trace[0]) if one else _open_set(args) as tr:
        df = tr.query(args.sql)
    if args.csv:
        from ..query.shell_csv import write_shell_csv

        write_shell_csv(df, sys.stdout)
    elif args.json:
        print(df.to_json(orient="records"))
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_rows", 500):
            print(df.to_string(index=False) if not df.empty else "(no rows)")
    return 0


def cmd_plot(args) -> int:
    from ..analysis.plot import plot_timeline

    with _open(args) as tr:
        path = plot_timeline(tr, args.out, level=args.level)
    print(f"timeline written to {path}")
    return 0


def cmd_serve(args) -> int:
    import subprocess

    from ..query import require_trace_file
    from ..query.tp_backend import find_binary, no_binary_message

    require_trace_file(args.trace)
    binary = find_binary(args.tp_bin, download=True)
    if binary is None:
        raise TraceProcessorError(no_binary_message())
    from .open_in_ui import DEFAULT_ORIGIN, HOST, check_origin, trace_processor_url

    origin = check_origin(args.origin)
    print(f"serving {args.trace} with trace_processor on http://{HOST}:{args.port}: bound to {HOST} only (this "
          f"machine); open {trace_processor_url(origin, args.port)} and choose 'Use loaded trace' (Ctrl-C stops)",
          flush=True)
    cors = [] if origin == DEFAULT_ORIGIN else ["--http-additional-cors-origins", origin]
    return subprocess.call([binary, "--httpd", "--http-ip-address", HOST, "--http-port", str(args.port), *cors,
                            args.trace])


def cmd_open(args) -> int:
    from .open_in_ui import open_in_ui
    from ..query import require_trace_file

    path = require_trace_file(args.trace)
    if path.stat().st_size > UI_LIMIT_BYTES:
        print(f"{path.name} is {path.stat().st_size / 2**30:.2f} GiB, more than the browser UI loads "
              f"({UI_LIMIT_BYTES / 2**30:g} GiB): `rbln-perfetto serve {path}` loads it in trace_processor instead",
              flush=True)
    open_in_ui(path, port=args.port, origin=args.origin, browser=args.browser)
    return 0


def _trace_args(p, backend: bool = True, several: bool = False) -> None:
    if several:
        p.add_argument("trace", nargs="+", metavar="TRACE",
                       help="a Perfetto trace (.pb); or several, or run directories: then rows get a `trace` column "
                            "(the path relative to the directory holding them all)")
        p.add_argument("--files", choices=FILES, default="invocations",
                       help="which .pb files a directory gives: each run's per-invocation traces (default), each "
                            "run's aggregate.pb, or every .pb file")
        p.add_argument("--workers", type=int, help="embedded backend: processes loading the traces (default: CPUs)")
    else:
        p.add_argument("trace", help="a Perfetto trace (.pb)")
    if backend:
        p.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="auto: trace_processor when a binary is configured, else the embedded sqlite")
    p.add_argument("--tp-bin", help="a trace_processor binary (default: $RBLN_PERFETTO_TP_BIN)")


def _compression_level(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a zlib level; valid: 0..9")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and `--help` shows the rest)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rbln-perfetto", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    from .run_commands import add_merge_command, add_run_command

    add_run_command(sub)

    exp = sub.add_parser("export", help="export a capture to Perfetto traces")
    exp.add_argument("capture", help="a capture.rblncap file")
    exp.add_argument("-o", "--out", help="output directory (default: beside the capture)")
    exp.add_argument("--force", action="store_true",
                     help="if the output directory holds another run's traces or capture, remove them (refused otherwise)")
    exp.add_argument("--no-per-invocation", dest="per_invocation", action="store_false",
                     help="write only aggregate.pb, not one file per submodule invocation")
    exp.add_argument("--no-aggregate", dest="aggregate", action="store_false",
                     help="write only the per-invocation files, not aggregate.pb")
    exp.add_argument("--compression-level", type=_compression_level, metavar="0-9",
                     help="zlib level of the compressed packets (default: the codec's default, about 15 B per command)")
    exp.set_defaults(func=cmd_export)

    summ = sub.add_parser("summary", help="print every report of a trace")
    _trace_args(summ)
    summ.set_defaults(func=cmd_summary)

    q = sub.add_parser("query", help="run trace_processor SQL on a trace, or on many (one table, a trace column first)")
    _trace_args(q, several=True)
    q.add_argument("sql", help="the query, e.g. \"select count(*) from slice\"")
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true",
                     help="print CSV as trace_processor_shell does (strings quoted, doubles as 100.000000, [NULL])")
    fmt.add_argument("--json", action="store_true", help="print JSON records")
    q.set_defaults(func=cmd_query)

    plot = sub.add_parser("plot", help="draw a per-device timeline PNG")
    _trace_args(plot)
    plot.add_argument("-o", "--out", default="timeline.png", help="PNG to write (default timeline.png)")
    plot.add_argument("--level", choices=("auto", "invocations", "commands"), default="auto",
                      help="bars per device: invocations, or commands and DMA; auto (default): commands for a "
                           "one-invocation file, else invocations")
    plot.set_defaults(func=cmd_plot)

    serve = sub.add_parser("serve", help="serve a trace to ui.perfetto.dev through trace_processor's HTTP mode "
                                         "(for traces too large for the browser); bound to 127.0.0.1 only")
    _trace_args(serve, backend=False)
    _ui_args(serve)
    serve.set_defaults(func=cmd_serve)

    opn = sub.add_parser("open", help="open a trace in ui.perfetto.dev: serve this one file once on 127.0.0.1 and "
                                      "point the browser at it")
    opn.add_argument("trace", help="a Perfetto trace (.pb)")
    _ui_args(opn)
    opn.add_argument("--no-browser", dest="browser", action="store_false",
                     help="print the link instead of opening a browser")
    opn.set_defaults(func=cmd_open)
    add_merge_command(sub)

    from .analysis_commands import add_analysis_commands

    add_analysis_commands(sub)  # diff, report, check
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; valid: 0..65535 (0: any free port)")
    return int(text)


def _ui_args(p) -> None:
    p.add_argument("--port", type=_port, default=9001,
                   help="local port (default 9001, the one port ui.perfetto.dev's content security policy allows)")
    p.add_argument("--origin", default="https://ui.perfetto.dev",
                   help="the Perfetto UI's origin, for a self-hosted UI (default https://ui.perfetto.dev)")


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader closed it (a broken pipe elsewhere is a real error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader that went away is caught below, not at exit
        return code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"rbln-perfetto {args.command}: interrupted", file=sys.stderr)
        return 130
    # The pipeline's own errors (ConfigError, DeviceMemoryError) are ValueErrors; torch's are RuntimeErrors.
    except (RblnPerfettoError, ValueError, OSError, RuntimeError) as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            # `rbln-perfetto ... | head`: the reader has what it wanted. Exit as a process killed by
            # SIGPIPE would, quietly; stdout goes to /dev/null so the flush at exit cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + 13
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"rbln-perfetto {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1

