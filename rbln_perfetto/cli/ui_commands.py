"""The commands of `rbln-perfetto` that show a trace: `plot` (a timeline or roofline PNG), `serve` (trace_processor's
HTTP mode for ui.perfetto.dev) and `open` (the file served once to ui.perfetto.dev in a browser)."""

from __future__ import annotations


from ..analysis.ui_views import VIEWS
from ..errors import TraceProcessorError
from ..exporter.export import UI_LIMIT_BYTES
from .common import bounded_int, load_trace, trace_args, trace_file


def cmd_plot(args) -> int:
    from ..analysis.plot import plot_timeline

    if args.roofline:
        from ..analysis.roofline import plot_roofline

        with load_trace(args) as tr:
            path = plot_roofline(tr, args.out or "roofline.png")
        print(f"roofline written to {path}")
        return 0
    with load_trace(args) as tr:
        path = plot_timeline(tr, args.out or "timeline.png", level=args.level)
    print(f"timeline written to {path}")
    return 0


def cmd_serve(args) -> int:
    import subprocess

    from ..query.perfetto_sql import trace_processor_flags
    from ..query.tp_backend import find_binary, no_binary_message

    path = trace_file(args)
    binary = find_binary(args.tp_bin, download=True)
    if binary is None:
        raise TraceProcessorError(no_binary_message())
    from .open_in_ui import DEFAULT_ORIGIN, HOST, check_origin, trace_processor_url

    origin = check_origin(args.origin)
    print(f"serving {path} with trace_processor on http://{HOST}:{args.port}: bound to {HOST} only (this "
          f"machine); open {trace_processor_url(origin, args.port)} and choose 'Use loaded trace' (Ctrl-C stops)",
          flush=True)
    # The rbln package is loaded, so the UI's query page can include its modules (the README shows the
    # same query; `rbln-perfetto sql-package` lists the modules).
    print("the rbln SQL package is loaded: in the query page, INCLUDE PERFETTO MODULE rbln.idle; "
          "SELECT * FROM rbln_idle", flush=True)
    cors = [] if origin == DEFAULT_ORIGIN else ["--http-additional-cors-origins", origin]
    return subprocess.call([binary, "--httpd", "--http-ip-address", HOST, "--http-port", str(args.port), *cors,
                            *trace_processor_flags(), str(path)])


def cmd_open(args) -> int:
    from .open_in_ui import open_in_ui

    path = trace_file(args)
    if path.stat().st_size > UI_LIMIT_BYTES:
        print(f"{path.name} is {path.stat().st_size / 2**30:.2f} GiB, more than the browser UI loads "
              f"({UI_LIMIT_BYTES / 2**30:g} GiB): `rbln-perfetto serve {path}` loads it in trace_processor instead",
              flush=True)
    commands = ()
    if args.view:
        from ..analysis.ui_views import startup_commands
        from ..query import open_trace

        with open_trace(path) as tr:
            commands = startup_commands(tr, args.view)
    open_in_ui(path, port=args.port, origin=args.origin, browser=args.browser, commands=commands)
    return 0


def _ui_args(p) -> None:
    p.add_argument("--port", type=bounded_int("a port", 0, 65535, " (0: any free port)"), default=9001,
                   help="local port (default 9001, the one port ui.perfetto.dev's content security policy allows)")
    p.add_argument("--origin", default="https://ui.perfetto.dev",
                   help="the Perfetto UI's origin, for a self-hosted UI (default https://ui.perfetto.dev)")


def add_ui_commands(sub) -> None:
    """Add `plot`, `serve` and `open` to the `rbln-perfetto` subcommands `sub`."""
    plot = sub.add_parser("plot", help="draw a per-device timeline PNG (or, --roofline, the roofline plot)")
    trace_args(plot)
    plot.add_argument("-o", "--out", help="PNG to write (default timeline.png, or roofline.png with --roofline)")
    plot.add_argument("--roofline", action="store_true",
                      help="draw the roofline instead: one point per layer (area: its time) under each device's roofs")
    plot.add_argument("--level", choices=("auto", "invocations", "commands"), default="auto",
                      help="bars per device: invocations, or commands and DMA; auto (default): commands for a "
                           "one-invocation file, else invocations")
    plot.set_defaults(func=cmd_plot)

    serve = sub.add_parser("serve", help="serve a trace to ui.perfetto.dev through trace_processor's HTTP mode "
                                         "(for traces too large for the browser); bound to 127.0.0.1 only")
    trace_args(serve, backend=False)
    _ui_args(serve)
    serve.set_defaults(func=cmd_serve)

    opn = sub.add_parser("open", help="open a trace in ui.perfetto.dev: serve this one file once on 127.0.0.1 and "
                                      "point the browser at it")
    opn.add_argument("trace", help="a Perfetto trace (.pb), or a run directory (its aggregate.pb)")
    _ui_args(opn)
    opn.add_argument("--no-browser", dest="browser", action="store_false",
                     help="print the link instead of opening a browser")
    opn.add_argument("--view", choices=VIEWS, help="open the UI pre-configured: device tracks pinned and expanded, "
                                                   "and notes and tracks for overview, idle, critical-path or layers")
    opn.set_defaults(func=cmd_open)
