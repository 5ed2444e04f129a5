"""`report ... --links` and `check --links`: per row (per broken rule) a ui.perfetto.dev link that opens
the trace at that row's slice or range (`analysis.ui_links`). The links carry no trace URL: they
open the trace `rbln-perfetto serve` serves to the UI, or the file opened by hand in that tab."""

from __future__ import annotations

import sys

from ..analysis.sources import opened
from ..analysis.ui_links import bounds, metric_target, report_targets, ui_link
from .common import print_table

LINKS_HELP = ("add a `link` column: a ui.perfetto.dev link per row that opens the trace at its slice or range "
              "(run `rbln-perfetto serve TRACE` first, or open the file in the tab the link opens)")
LINKS_NOTE = ("links: they open the trace that `rbln-perfetto serve TRACE` serves on 127.0.0.1:9001 (choose "
              "'Use loaded trace'), or the trace you open in the tab a link opens, at the row's slice or range")


def with_links(tr, name: str, table, *, min_gap_ms: float | None = None):
    """`table` (report `name` of the open trace `tr`) with a `link` column ('' where a row has no place)."""
    edges = bounds(tr)
    targets = report_targets(tr, name, table, min_gap_ms=min_gap_ms)
    table = table.copy()
    table["link"] = [ui_link(target=t, bounds=edges) if t is not None else "" for t in targets] or []
    return table


def violation_links(cand, violations, *, backend: str = "auto", tp_bin: str | None = None) -> dict:
    """{violation line: link to where its metric lies in `cand`}; a line `check` wrote as
    "METRIC = VALUE ...", so the metric is its first word."""
    out = {}
    with opened(cand, backend, tp_bin) as tr:
        edges = bounds(tr)
        for line in violations:
            target = metric_target(tr, line.split(" = ", 1)[0])
            if target is not None:
                out[line] = ui_link(target=target, bounds=edges)
    return out


def print_with_links(table, args) -> None:
    """`table` (with its `link` column) as `print_table` prints it; a text table (which would cut the
    links short) without the column, each row's link on a line of its own below it."""
    if args.csv or args.json:
        print_table(table, args)
        print(LINKS_NOTE, file=sys.stderr)
        return
    print_table(table.drop(columns="link"), args)
    if len(table):
        print("\nlinks, one per row in the order printed:")
        print("\n".join(f"  {i}: {link or '(none: the row has no one place in the trace)'}"
                        for i, link in enumerate(table.link)))
        print(LINKS_NOTE)
