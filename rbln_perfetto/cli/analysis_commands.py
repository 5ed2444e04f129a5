"""The analysis commands of `rbln-perfetto`: `diff`, `report`, `check` (registered by main.py).

    rbln-perfetto diff BASE CAND [--by layer|submodule|op|device] [--top N] [--plot out.png]
    rbln-perfetto report idle|critical-path|variance|roofline|<canned report> TRACE [--csv | --json]
    rbln-perfetto check CAND [CAND ...] [--baseline BASE [BASE ...]] [--max-regression 5%] [--alpha 0.05]
                        [--max "transformer.mean_ms<=120"] [--json]

BASE, CAND and TRACE are trace files or run directories (their aggregate.pb).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..analysis import check, critical_path, diff, idle, plot_diff, variance, write_overlay, write_summary_spec
from ..analysis.check import DEFAULT_ALPHA, DEFAULT_REGRESSION_METRICS, metrics_table
from ..analysis.check_json import check_json
from ..analysis.diff import BY as DIFF_BY
from ..analysis.idle import CAUSES, DEFAULT_MIN_GAP_MS
from ..analysis.roofline import device_profiles, roofline, roofs_text
from ..analysis.sources import trace_path
from ..analysis.variance import RULE
from ..errors import UsageError
from ..naming import AGGREGATE_FILE_NAME
from ..query import REPORTS
from .common import backend_args, bounded_int, format_args, load_trace, print_table, trace_file
from .deep_links import LINKS_HELP, LINKS_NOTE, print_with_links, violation_links, with_links

ANALYSES = {
    "idle": "idle time per device, each gap attributed to what the run did instead (" + ", ".join(CAUSES) + ")",
    "critical-path": "the chain of host work, invocations, commands and DMAs that sets the run's span",
    "variance": "per submodule / layer across repeated calls: mean, std, min, max, first vs rest, outliers",
    "roofline": "per layer / command / submodule / device against its device's roofs: time above the roof (ranked), "
                "bound (compute, memory, overhead), MFU, MBU, achieved rates, arithmetic intensity",
}


def _run_name(source: str) -> str:
    """A short name for a run in a title: its directory for an aggregate trace, else the file name."""
    path = trace_path(source)
    return path.parent.name if path.name == AGGREGATE_FILE_NAME else path.name


def cmd_diff(args) -> int:
    table = diff(args.base, args.cand, by=args.by, top=args.top,
                 backend=args.backend, tp_bin=args.tp_bin)
    print_table(table, args)
    if args.plot:
        plot_diff(table, args.plot, by=args.by, top=min(len(table), 20) or 1,
                  title=f"{_run_name(args.cand)} vs {_run_name(args.base)}: largest changes per {args.by}")
        print(f"bar chart written to {args.plot}", file=sys.stderr if (args.csv or args.json) else sys.stdout)
    return 0


def cmd_report(args) -> int:
    name = args.name
    if name not in REPORTS and name not in ANALYSES:
        raise UsageError(f"report {name!r} is not known; valid: {', '.join([*REPORTS, *ANALYSES])}")
    if args.overlay and name != "critical-path":
        raise UsageError("--overlay goes with `report critical-path` only")
    args.trace = str(trace_file(args))
    if args.overlay and Path(args.overlay).resolve() == Path(args.trace).resolve():
        raise UsageError(f"--overlay {args.overlay} is the trace itself; the overlay is a copy: give another path")
    top = args.top
    with load_trace(args) as tr:
        if name in REPORTS:
            table = tr.report(name)
            table = table if top is None else table.head(top)
        elif name == "idle":
            table = idle(tr, min_gap_ms=args.min_gap, gaps=args.gaps)
            table = table if top is None else table.head(top)
        elif name == "roofline":
            table = roofline(tr, by=args.by or "layer", top=top)
            profiles = device_profiles(tr)
        elif name == "variance":
            table = variance(tr, by=args.by or "submodule", outliers=args.outliers)
            table = table if top is None else table.head(top)
        else:
            table = critical_path(tr, by=args.by or "segment", top=top)
            if args.overlay:
                segments = table if (args.by or "segment") == "segment" and top is None else None
                write_overlay(tr, args.overlay, segments=segments)
        if args.links:
            table = with_links(tr, name, table, min_gap_ms=args.min_gap)
    print_with_links(table, args) if args.links else print_table(table, args)
    if name == "variance" and args.outliers and not (args.csv or args.json):
        print(f"\noutlier: {RULE}")
    if name == "roofline" and not (args.csv or args.json):
        print("\n" + roofs_text(profiles))
    if args.overlay:
        print(f"trace with a 'Critical path' track written to {args.overlay}",
              file=sys.stderr if (args.csv or args.json) else sys.stdout)
    return 0


def cmd_check(args) -> int:
    if args.write_summary_spec:
        path = write_summary_spec(args.write_summary_spec)
        print(f"trace-summary spec written to {path}: trace_processor_shell --summary --summary-spec {path} "
              "--summary-metrics-v2 all TRACE")
        if not args.cand:
            return 0
    if not args.cand:
        raise UsageError("give the candidate run: rbln-perfetto check CAND [CAND ...] [--baseline BASE [BASE ...]] ...")
    cand = args.cand if len(args.cand) > 1 else args.cand[0]
    baseline = None if not args.baseline else args.baseline if len(args.baseline) > 1 else args.baseline[0]
    if args.metrics and not (args.max or args.max_regression is not None):  # only the list: nothing to check
        print_table(metrics_table(cand, baseline, backend=args.backend, tp_bin=args.tp_bin, layers=args.layers), args)
        return 0
    regression = tuple(g.strip() for g in args.regression_metrics.split(",") if g.strip())
    result = check(cand, baseline=baseline, max_regression=args.max_regression, rules=args.max,
                   regression_metrics=regression, alpha=args.alpha, backend=args.backend, tp_bin=args.tp_bin,
                   layers=args.layers)
    if args.json:  # one object on stdout, its schema in docs/regression-gate.md
        print(json.dumps(check_json(result, cand=args.cand, baseline=args.baseline or [])))
        return 1 if result.violations else 0
    if args.metrics:
        print_table(result.metrics, args)
    # With --csv, stdout carries only the data; the verdict lines go to stderr.
    say = sys.stderr if args.metrics and args.csv else sys.stdout
    # Several candidate runs: the links point into the first (each run holds the same slices).
    links = violation_links(result.cand_sources[0], result.violations, backend=args.backend, tp_bin=args.tp_bin) \
        if args.links and result.violations else {}
    for line in result.violations:
        print(f"FAIL {line}" + (f"\n     {links[line]}" if links.get(line) else ""), file=say)
    if links:
        print(LINKS_NOTE, file=say)
    if not args.violations_only:
        print(result.verdict(), file=say)
        for note in result.notes:
            print(f"note: {note}", file=say)
    return 1 if result.violations else 0


def add_analysis_commands(sub) -> None:
    """Add `diff`, `report` and `check` to the `rbln-perfetto` subcommands `sub`."""
    d = sub.add_parser("diff", help="what changed between two runs, per layer, submodule, op or device")
    d.add_argument("base", help="the baseline: a trace file or a run directory")
    d.add_argument("cand", help="the candidate: a trace file or a run directory")
    d.add_argument("--by", choices=DIFF_BY, default="layer", help="rows per layer (default), submodule, op or device")
    d.add_argument("--top", type=bounded_int("a number of rows", 1, 10**9), help="only the N largest changes")
    d.add_argument("--plot", metavar="OUT.png", help="also draw the largest changes as a bar chart")
    format_args(d)
    backend_args(d)
    d.set_defaults(func=cmd_diff)

    r = sub.add_parser("report", help="one report of a trace as a table: " + ", ".join([*ANALYSES, *REPORTS]),
                       description="; ".join(f"{k}: {v}" for k, v in ANALYSES.items()))
    r.add_argument("name", metavar="REPORT", help=f"one of: {', '.join([*ANALYSES, *REPORTS])}")
    r.add_argument("trace", help="a trace file or a run directory")
    r.add_argument("--by", help="critical-path: segment (default), element or layer; variance: submodule "
                                "(default) or layer; roofline: layer (default), command, submodule or device")
    r.add_argument("--top", type=bounded_int("a number of rows", 1, 10**9),
                   help="only the first N rows (critical-path: the N with the most time on the path)")
    r.add_argument("--min-gap", type=float, default=DEFAULT_MIN_GAP_MS, metavar="MS",
                   help=f"idle: the smallest gap between two commands of one invocation that counts (default "
                        f"{DEFAULT_MIN_GAP_MS} ms); gaps between invocations always count")
    r.add_argument("--gaps", action="store_true", help="idle: one row per gap instead of per device")
    # (argparse formats help with %: the rule's "10%" is written "10%%")
    r.add_argument("--outliers", action="store_true",
                   help=f"variance: one row per outlier call ({RULE.replace('%', '%%')})")
    r.add_argument("--overlay", metavar="OUT.pb", help="critical-path: also write a copy of the trace with a "
                                                      "'Critical path' track")
    r.add_argument("--links", action="store_true", help=LINKS_HELP)
    format_args(r)
    backend_args(r)
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("check", help="exit non-zero when a run breaks a rule (for CI)")
    c.add_argument("cand", nargs="*", help="the run(s) to check: trace files, run directories, or a directory of "
                                            "run directories (`run --runs N`); several runs form a sample")
    c.add_argument("--baseline", metavar="BASE", nargs="+", action="extend",
                   help="the baseline run(s) to compare with, as CAND (several: a significance test per metric)")
    c.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"with several runs a side: the significance level, over all metrics checked (Holm; "
                        f"default {DEFAULT_ALPHA:g})")
    c.add_argument("--max-regression", metavar="PCT", help="with --baseline: the most a metric may grow, e.g. 5%%; with several runs a "
                                                         "side only a significant growth counts (--alpha); "
                                                         "with it or --max, --json prints the verdict as one object")
    c.add_argument("--regression-metrics", default=",".join(DEFAULT_REGRESSION_METRICS), metavar="GLOBS",
                   help=f"which metrics --max-regression applies to (default {','.join(DEFAULT_REGRESSION_METRICS)})")
    c.add_argument("--max", action="append", default=[], metavar="RULE",
                   help='a rule like "transformer.mean_ms<=120" (repeatable; also <, >=, >, ==)')
    c.add_argument("--metrics", action="store_true", help="print every metric (and the baseline's) first")
    c.add_argument("--layers", action="store_true",
                   help="also per-layer time, SUBMODULE/LAYER.layer_ms (all its commands in a run), e.g. "
                        "--regression-metrics 'transformer/*.layer_ms'")
    c.add_argument("--violations-only", action="store_true", help="print only the broken rules")
    c.add_argument("--write-summary-spec", metavar="OUT.textproto",
                   help="write the metrics as a Perfetto TraceSummarySpec for trace_processor --summary")
    c.add_argument("--links", action="store_true", help="with each broken rule, a ui.perfetto.dev link to where "
                                                         "its metric lies in the run")
    format_args(c)
    backend_args(c)
    c.set_defaults(func=cmd_check)
