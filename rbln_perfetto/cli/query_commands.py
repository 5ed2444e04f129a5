"""`rbln-perfetto query` (trace_processor SQL on one trace or many) and `summary` (every report of a trace)."""

from __future__ import annotations

from pathlib import Path

from .common import format_args, load_trace, load_trace_set, print_table, trace_args


def cmd_summary(args) -> int:
    from ..analysis import stands_out
    from ..query import REPORTS

    with load_trace(args) as tr:
        print(f"{tr.path} ({tr.backend} backend)")
        for name, report in REPORTS.items():
            print(f"\n{report.title} [{name}]:")
            print_table(tr.report(name), args, empty="  (none)")
        print("\nwhat stands out:")
        print("\n".join(f"  {line}" for line in stands_out(tr)) or "  (nothing: no device tracks)")
    return 0


def cmd_query(args) -> int:
    one = len(args.trace) == 1 and not Path(args.trace[0]).is_dir()  # (one trace: no `trace` column)
    with load_trace(args, args.trace[0]) if one else load_trace_set(args) as tr:
        df = tr.query(args.sql)
    print_table(df, args, shell_csv=True, decimals=None)
    return 0


def add_query_commands(sub) -> None:
    """Add `summary` and `query` to the `rbln-perfetto` subcommands `sub`."""
    summ = sub.add_parser("summary", help="print every report of a trace")
    trace_args(summ)
    summ.set_defaults(func=cmd_summary)

    q = sub.add_parser("query", help="run trace_processor SQL on a trace, or on many (one table, a trace column first)")
    trace_args(q, several=True)
    q.add_argument("sql", help="the query, e.g. \"select count(*) from slice\"")
    format_args(q, csv_help="print CSV as trace_processor_shell does (strings quoted, doubles as 100.000000, [NULL])")
    q.set_defaults(func=cmd_query)
