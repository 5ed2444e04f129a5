"""The pre-configured UI (`open --view`) and the deep links (`report --links`, `check --links`): each
link decoded as the Perfetto UI decodes it, its startup commands checked against the UI's stable
command reference, every query they carry run on the embedded backend, and every link's position
checked against the trace: on a one-process trace, a merged two-rank one and a selected-steps one
(`trace_kinds`: captures through the real writer, exported and merged by the real exporter), and on a
real pipeline run (`shared_run`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd
import pytest
from trace_kinds import build

from rbln_perfetto import open_trace
from rbln_perfetto.analysis import critical_path, idle
from rbln_perfetto.analysis.critical_path import find, segments
from rbln_perfetto.analysis.ui_links import Target, bounds, ui_link, window
from rbln_perfetto.analysis.ui_views import MAX_PATH_ROWS, VIEWS, critical_path_sql, idle_gaps_sql, startup_commands
from rbln_perfetto.cli import main
from rbln_perfetto.query.trace_model import RUN_SPAN_ROW

ROOT = Path(__file__).resolve().parent.parent

# The UI's stable automation commands: id -> (required arguments, optional arguments), in order, every
# one a string. From Perfetto's docs/visualization/commands-automation-reference.md ("Command
# Reference"; `nameOrPath` and RunQueryAndShowTab's `title` are its later optional arguments, and
# AddNoteAtTimestamp is in its "Note commands" since; a UI that predates them ignores the extra
# arguments and skips a command it does not know, as ui/src/core/load_trace.ts runs startup commands).
REFERENCE = {
    "dev.perfetto.PinTracksByRegex": (("pattern",), ("nameOrPath",)),
    "dev.perfetto.ExpandTracksByRegex": (("pattern",), ("nameOrPath",)),
    "dev.perfetto.CollapseTracksByRegex": (("pattern",), ("nameOrPath",)),
    "dev.perfetto.AddDebugSliceTrack": (("query", "title"), ()),
    "dev.perfetto.AddDebugSliceTrackWithPivot": (("query", "pivotColumn", "title"), ()),
    "dev.perfetto.AddDebugCounterTrack": (("query", "title"), ()),
    "dev.perfetto.AddDebugCounterTrackWithPivot": (("query", "pivotColumn", "title"), ()),
    "dev.perfetto.CreateWorkspace": (("title",), ()),
    "dev.perfetto.SwitchWorkspace": (("title",), ()),
    "dev.perfetto.CopyTracksToWorkspaceByRegex": (("pattern", "workspaceTitle"), ("nameOrPath",)),
    "dev.perfetto.CopyTracksToWorkspaceByRegexWithAncestors": (("pattern", "workspaceTitle"), ("nameOrPath",)),
    "dev.perfetto.RunQuery": (("query",), ()),
    "dev.perfetto.RunQueryAndShowTab": (("query",), ("title",)),
    "dev.perfetto.AddNoteAtTimestamp": (("timestamp", "text"), ()),
}
# The columns a debug slice track's query must return (the same reference).
SLICE_COLUMNS = {"ts", "dur", "name"}
KINDS = ("single", "merged", "selected", "unprofiled", "merged_selected", "merged_killed")
MERGED = ("merged", "merged_selected", "merged_killed")
UNTRACED = ("selected", "merged_selected")
# The device groups (units) of each kind: one device of the unprofiled run runs only the unprofiled submodule.
UNITS = {"unprofiled": 1}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_kinds")
    return {kind: build(root, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def pipeline_trace(shared_run):
    return shared_run({}, steps=2).aggregate_file


def decode(link: str) -> dict:
    """The route arguments of a UI link, read as the UI reads them (`ui/src/core/router.ts`: the part
    after `#!/?`, `+` as a space, then percent-decoded); `startupCommands` parsed from its JSON."""
    fragment = urlsplit(link).fragment
    assert fragment.startswith("!/"), link
    _, _, query = fragment.partition("?")
    args = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    assert all(isinstance(v, str) for v in args.values())
    if "startupCommands" in args:
        args["startupCommands"] = json.loads(args["startupCommands"])
    return args


def check_command(tr, command: dict, edges) -> None:
    """`command` as the reference defines it, and what it carries valid for the trace `tr`."""
    assert set(command) == {"id", "args"}, command
    ident, args = command["id"], command["args"]
    assert ident in REFERENCE, f"{ident} is not a stable automation command"
    required, optional = REFERENCE[ident]
    assert len(required) <= len(args) <= len(required) + len(optional), (ident, args)
    assert all(isinstance(a, str) for a in args), (ident, args)  # "All arguments must be strings"
    named = dict(zip(required + optional, args))
    if "nameOrPath" in named:
        assert named["nameOrPath"] in ("name", "path")
    if "pattern" in named:
        re.compile(named["pattern"])
    if ident.startswith("dev.perfetto.AddDebugSliceTrack"):
        rows = tr.query(named["query"])
        assert len(rows), f"{named['title']}: no rows"
        assert SLICE_COLUMNS <= set(rows.columns), rows.columns
        assert (rows.dur >= 0).all() and rows.ts.between(*edges).all()
        if "pivotColumn" in named:
            assert rows[named["pivotColumn"]].notna().all()  # (a NULL pivot fails the command)
    if ident.startswith("dev.perfetto.RunQuery"):
        assert len(tr.query(named["query"]))
    if ident == "dev.perfetto.AddNoteAtTimestamp":
        assert named["timestamp"].isdigit() and edges[0] <= int(named["timestamp"]) <= edges[1]
        assert named["text"]


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_view_uses_only_stable_commands_whose_queries_answer(traces, kind, view):
    with open_trace(traces[kind], backend="sqlite") as tr:
        commands = startup_commands(tr, view)
        link = ui_link(url="http://127.0.0.1:9001/aggregate.pb", commands=commands)
        args = decode(link)
        assert args["url"] == "http://127.0.0.1:9001/aggregate.pb"
        assert args["startupCommands"] == [c.as_json() for c in commands]
        edges = bounds(tr)
        for command in args["startupCommands"]:
            check_command(tr, command, edges)
    ids = [c["id"] for c in args["startupCommands"]]
    assert ids[:2] == ["dev.perfetto.ExpandTracksByRegex", "dev.perfetto.PinTracksByRegex"]
    assert "dev.perfetto.AddNoteAtTimestamp" in ids
    wanted = {"idle": "dev.perfetto.AddDebugSliceTrackWithPivot", "critical-path": "dev.perfetto.AddDebugSliceTrack",
              "layers": "dev.perfetto.RunQueryAndShowTab"}.get(view)
    assert wanted is None or wanted in ids


@pytest.mark.parametrize("kind", KINDS)
def test_the_track_patterns_pick_every_device_group_and_its_workload_and_compute_tracks(traces, kind):
    with open_trace(traces[kind], backend="sqlite") as tr:
        tracks = tr.query("SELECT t.name, p.name AS parent FROM track t LEFT JOIN track p ON p.id = t.parent_id")
        expand, pin = startup_commands(tr, "overview")[:2]
    groups = {n for n, p in zip(tracks.name, tracks.parent) if not isinstance(p, str) and "Device" in n}
    assert len(groups) == UNITS.get(kind, 2) and all(g.startswith("Rank ") == (kind in MERGED) for g in groups)
    # (JavaScript's RegExp.test: a match anywhere; the patterns are anchored)
    assert {n for n in tracks.name if re.search(expand.args[0], n)} == groups
    paths = [f"{p} > {n}" if isinstance(p, str) else n for n, p in zip(tracks.name, tracks.parent)]
    pinned = {p for p in paths if re.search(pin.args[0], p)}
    assert pinned == {f"{g} > {c}" for g in groups for c in ("Workload", "Compute")
                      if f"{g} > {c}" in paths}
    assert len(pinned) == 2 * len(groups)
    # A UI that matches names only still pins the same tracks (by name: every Workload and Compute track).
    assert {n for n in tracks.name if re.search(pin.args[0], n)} == {"Workload", "Compute"}


@pytest.mark.parametrize("kind", KINDS)
def test_the_idle_track_holds_the_gaps_the_idle_analysis_finds(traces, kind):
    with open_trace(traces[kind], backend="sqlite") as tr:
        rows = tr.query(idle_gaps_sql())
        gaps = idle(tr, gaps=True)
        run_start = int(tr.query(RUN_SPAN_ROW).lo.iloc[0])
        merged = kind in MERGED
    assert len(rows) == len(gaps) > 0
    expected = sorted((run_start + round(g.start_ms * 1e6), round(g.dur_ms * 1e6), g.kind,
                       f"rank {g.rank} device {g.device}" if merged else f"device {g.device}",
                       g.untraced_ms > 0) for g in gaps.itertuples())
    got = sorted((int(r.ts), int(r.dur), r.name.removesuffix(" (over an untraced stretch)"), r.device,
                  r.name.endswith("(over an untraced stretch)")) for r in rows.itertuples())
    assert got == expected
    assert any(g.untraced_ms > 0 for g in gaps.itertuples()) == (kind in UNTRACED)


@pytest.mark.parametrize("kind", KINDS)
def test_the_critical_path_track_is_the_paths_segments(traces, kind):
    with open_trace(traces[kind], backend="sqlite") as tr:
        path = segments(find(tr))
        rows = tr.query(critical_path_sql(path, merged=kind in MERGED))
        span = tr.query(RUN_SPAN_ROW)
    on = path[path.on_path_ms > 0]
    invocations = rows[rows.kind == "invocation"]
    assert len(invocations) and all(
        name == (f"{r.name} (rank {r.rank} device {r.device})" if kind in MERGED else f"{r.name} (device {r.device})")
        for name, r in zip(invocations.name, on[on.kind == "invocation"].itertuples()))
    assert list(rows.ts) == list(on.ts) and list(rows.kind) == list(on.kind)
    assert list(rows.dur) == [round(ms * 1e6) for ms in on.on_path_ms]
    assert rows.dur.sum() == int(span.ns.iloc[0])  # the segments add up to the run's span
    assert (rows.ts.iloc[1:].to_numpy() == (rows.ts + rows.dur).iloc[:-1].to_numpy()).all()


@pytest.mark.skipif(not os.environ.get("RBLN_PERFETTO_TP_BIN"), reason="RBLN_PERFETTO_TP_BIN is not set")
@pytest.mark.parametrize("kind", KINDS)
def test_trace_processor_answers_every_views_queries_as_the_embedded_backend(traces, kind):
    """What the hosted UI runs: trace_processor, on the same queries."""
    with open_trace(traces[kind], backend="sqlite") as tr:
        queries = [a for view in VIEWS for c in startup_commands(tr, view)
                   if c.id.startswith(("dev.perfetto.AddDebug", "dev.perfetto.RunQuery")) for a in c.args[:1]]
        expected = [tr.query(q) for q in queries]
    with open_trace(traces[kind], backend="trace_processor", tp_bin=os.environ["RBLN_PERFETTO_TP_BIN"]) as tp:
        for sql, rows in zip(queries, expected):
            pd.testing.assert_frame_equal(tp.query(sql).reset_index(drop=True), rows.reset_index(drop=True),
                                          check_dtype=False, obj=sql[:80])


def test_a_long_critical_path_keeps_its_longest_segments(traces):
    with open_trace(traces["single"], backend="sqlite") as tr:
        path = segments(find(tr))
    many = path.loc[np.repeat(path.index, 400)].reset_index(drop=True)  # more rows than a link carries
    many["ts"] = np.arange(len(many)) * 10**6
    many["on_path_ms"] = np.arange(len(many)) % 997 / 1e3
    with open_trace(traces["single"], backend="sqlite") as tr:
        rows = tr.query(critical_path_sql(many))
    assert len(rows) == MAX_PATH_ROWS < len(many[many.on_path_ms > 0])
    assert sorted(rows.dur) == sorted(round(ms * 1e6) for ms in many.on_path_ms.nlargest(MAX_PATH_ROWS))
    assert list(rows.ts) == sorted(rows.ts)


@pytest.mark.slow
def test_the_views_and_links_hold_on_a_real_pipeline_run(pipeline_trace, capsys):
    element_rows = _report_links(capsys, "critical-path", pipeline_trace, "--by", "element")
    with open_trace(pipeline_trace, backend="sqlite") as tr:
        edges = bounds(tr)
        for view in VIEWS:
            for command in decode(ui_link(commands=startup_commands(tr, view)))["startupCommands"]:
                check_command(tr, command, edges)
        assert len(tr.query(idle_gaps_sql())) == len(idle(tr, gaps=True)) > 0
        selected = [decode(row["link"]) for row in element_rows if row["kind"] != "gap"]
        assert selected and all(_slice_at(tr, a["ts"], a["dur"]) >= 1 for a in selected)


def test_a_link_carries_sql_text_unchanged():
    from rbln_perfetto.analysis.ui_views import Command

    sql = "SELECT 1 + 2 AS ts, 3 AS dur, 'a&b=c #d %e' AS name"
    args = decode(ui_link(url="http://127.0.0.1:9001/a b.pb", commands=[Command("dev.perfetto.RunQuery", (sql,))]))
    assert args["startupCommands"] == [{"id": "dev.perfetto.RunQuery", "args": [sql]}]
    assert args["url"] == "http://127.0.0.1:9001/a b.pb"


def test_a_window_stays_inside_the_trace():
    assert window(Target(1000, 100), (0, 10**6)) == (0, 2100)
    assert window(Target(10**6, 10**4), (0, 10**6 + 500)) == (10**6 - 1000, 10**6 + 500)
    lo, hi = window(Target(5 * 10**6, 10**6))
    assert (lo, hi) == (5 * 10**6 - 10**5, 6 * 10**6 + 10**5)


def test_open_view_prints_a_link_with_the_views_commands(traces):
    proc = subprocess.Popen([sys.executable, "-m", "rbln_perfetto.cli", "open", str(traces["merged"]), "--port", "0",
                             "--no-browser", "--view", "idle"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a server that never ends fails the test, not the session
    watchdog.start()
    try:
        for line in proc.stdout:
            m = re.search(r"(https://ui\.perfetto\.dev/#!/\?\S+)", line)
            if m:
                break
        else:
            raise AssertionError(proc.stderr.read())
        args = decode(m.group(1))
        with open_trace(traces["merged"], backend="sqlite") as tr:
            assert args["startupCommands"] == [c.as_json() for c in startup_commands(tr, "idle")]
        with urllib.request.urlopen(args["url"], timeout=30) as response:  # the UI's fetch: the server ends
            assert response.read() == traces["merged"].read_bytes()
        assert proc.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_open_refuses_an_unknown_view(traces, capsys):
    with pytest.raises(SystemExit):
        main(["open", str(traces["single"]), "--view", "gaps"])
    err = capsys.readouterr().err
    assert "--view" in err and "overview" in err and "critical-path" in err


def _report_links(capsys, *argv) -> list[dict]:
    assert main(["report", *map(str, argv), "--links", "--json", "--backend", "sqlite"]) == 0
    out = capsys.readouterr()
    assert "rbln-perfetto serve" in out.err
    return json.loads(out.out)


def _slice_at(tr, ts, dur) -> int:
    """How many slices the UI's deep link finds for ts and dur (`dev.perfetto.DeeplinkQuerystring`)."""
    return len(tr.query(f"SELECT id FROM slice WHERE ts = {ts} AND dur = {dur}"))


@pytest.mark.parametrize("kind", KINDS)
def test_report_links_open_each_gap_and_each_critical_path_element(traces, kind, capsys):
    path = traces[kind]
    gap_rows = _report_links(capsys, "idle", path, "--gaps")
    element_rows = _report_links(capsys, "critical-path", path, "--by", "element")
    with open_trace(path, backend="sqlite") as tr:
        edges = bounds(tr)
        run_start = int(tr.query(RUN_SPAN_ROW).lo.iloc[0])
        assert len(gap_rows) == len(idle(tr, gaps=True)) > 0
        for row in gap_rows:
            args = decode(row["link"])
            assert "ts" not in args and "url" not in args  # a gap is no slice; the served trace, no file
            lo, hi = int(args["visStart"]), int(args["visEnd"])
            start = run_start + round(row["start_ms"] * 1e6)
            assert edges[0] <= lo <= start < start + round(row["dur_ms"] * 1e6) <= hi <= edges[1]
        elements = critical_path(tr, by="element")
        assert len(element_rows) == len(elements)
        for row, element in zip(element_rows, elements.itertuples()):
            args = decode(row["link"])
            lo, hi = int(args["visStart"]), int(args["visEnd"])
            assert edges[0] <= lo <= element.ts and element.ts + round(element.dur_ms * 1e6) <= hi <= edges[1]
            if element.kind == "gap":
                assert "ts" not in args
            else:
                assert (int(args["ts"]), int(args["dur"])) == (element.ts, round(element.dur_ms * 1e6))
                assert _slice_at(tr, args["ts"], args["dur"]) >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_report_links_open_each_devices_longest_idle_gap(traces, kind, capsys):
    rows = _report_links(capsys, "idle", traces[kind])
    with open_trace(traces[kind], backend="sqlite") as tr:
        gaps = idle(tr, gaps=True)
        run_start = int(tr.query(RUN_SPAN_ROW).lo.iloc[0])
    assert len(rows) == UNITS.get(kind, 2)
    for row in rows:
        mine = gaps[(gaps["rank"] == row["rank"]) & (gaps.device == row["device"]) & (gaps.cause != "untraced")]
        g = mine.loc[mine.dur_ms.idxmax()]
        args = decode(row["link"])
        start = run_start + round(g.start_ms * 1e6)
        assert int(args["visStart"]) <= start < start + round(g.dur_ms * 1e6) <= int(args["visEnd"])
        assert (int(args["visEnd"]) - int(args["visStart"])) < 2 * round(g.dur_ms * 1e6) + 2000


@pytest.mark.parametrize("report", ["invocations", "top_layers", "split_ops", "dma", "ranges", "variance"])
def test_report_links_select_a_slice_of_each_row(traces, report, capsys):
    path = traces["merged"]
    rows = _report_links(capsys, report, path)
    assert rows
    with open_trace(path, backend="sqlite") as tr:
        for row in rows:
            args = decode(row["link"])
            ts, dur = int(args["ts"]), int(args["dur"])
            assert _slice_at(tr, ts, dur) >= 1
            assert int(args["visStart"]) <= ts and ts + dur <= int(args["visEnd"])
        if report == "invocations":  # the longest call of the submodule on the device
            inv = tr.query("SELECT extract_arg(arg_set_id, 'debug.submodule') AS submodule, ts, dur FROM slice "
                           "WHERE extract_arg(arg_set_id, 'debug.call_index') IS NOT NULL AND depth = 0")
            for row in rows:
                mine = inv[inv.submodule == row["submodule"]]
                assert int(decode(row["link"])["dur"]) == mine.dur.max()
        if report == "dma":  # a transfer of the row's tensor, between the row's ends (a send is no recv)
            dma = tr.query("SELECT ts, dur, extract_arg(arg_set_id, 'debug.submodule') AS submodule, "
                           "coalesce(extract_arg(arg_set_id, 'debug.tensor'), extract_arg(arg_set_id, 'debug.tensors')) "
                           "AS tensor, extract_arg(arg_set_id, 'debug.transfer') AS transfer FROM slice "
                           "WHERE track_id IN (SELECT id FROM track WHERE name = 'DMA')")
            sides = 0
            for row in rows:
                args = decode(row["link"])
                hit = dma[(dma.ts == int(args["ts"])) & (dma.dur == int(args["dur"])) &
                          (dma.submodule == row["submodule"]) & (dma.tensor == row["tensor"])]
                want = "recv" if row["source"].startswith("rank ") and "/" not in row["source"] else \
                    "send" if row["destination"].startswith("rank ") and "/" not in row["destination"] else None
                sides += want is not None
                assert len(hit) and (want is None or (hit.transfer == want).any()), row
            assert sides  # (the merged trace's transfers between ranks are among the rows)


def test_report_links_in_a_text_table_are_printed_whole(traces, capsys):
    assert main(["report", "invocations", str(traces["single"]), "--links", "--backend", "sqlite"]) == 0
    out = capsys.readouterr().out
    links = re.findall(r"^  \d+: (https://ui\.perfetto\.dev/#!/\?\S+)$", out, re.M)
    with open_trace(traces["single"], backend="sqlite") as tr:
        rows = len(tr.report("invocations"))
    assert len(links) == rows > 1 and all("visEnd=" in link for link in links)


def test_check_links_each_broken_rule_to_where_its_metric_lies(traces, capsys):
    path = traces["merged"]
    code = main(["check", str(path), "--max", "transformer.max_ms<=0.001", "--max", "run.span_ms<=0.001",
                 "--max", "device1.idle_pct<=0", "--links", "--backend", "sqlite"])
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    links = {lines[i].split(" = ")[0].removeprefix("FAIL "): decode(lines[i + 1].strip())
             for i, line in enumerate(lines) if line.startswith("FAIL ")}
    assert set(links) == {"transformer.max_ms", "run.span_ms", "device1.idle_pct"}
    with open_trace(path, backend="sqlite") as tr:
        span = tr.query(RUN_SPAN_ROW)
        inv = tr.query("SELECT ts, dur FROM slice WHERE extract_arg(arg_set_id, 'debug.submodule') = 'transformer' "
                       "AND extract_arg(arg_set_id, 'debug.call_index') IS NOT NULL AND depth = 0")
        longest = inv.loc[inv.dur.idxmax()]
        assert (int(links["transformer.max_ms"]["ts"]), int(links["transformer.max_ms"]["dur"])) == \
            (longest.ts, longest.dur)
        assert (int(links["run.span_ms"]["visStart"]), int(links["run.span_ms"]["visEnd"])) == \
            window(Target(int(span.lo.iloc[0]), int(span.ns.iloc[0])), bounds(tr))
        gaps = idle(tr, gaps=True)
        gaps = gaps[(gaps.device == 1) & (gaps.cause != "untraced")]
        g = gaps.loc[gaps.dur_ms.idxmax()]
        start = int(span.lo.iloc[0]) + round(g.start_ms * 1e6)
        lo, hi = int(links["device1.idle_pct"]["visStart"]), int(links["device1.idle_pct"]["visEnd"])
        assert lo <= start and start + round(g.dur_ms * 1e6) <= hi
    assert np.all([("url" not in a) for a in links.values()])
