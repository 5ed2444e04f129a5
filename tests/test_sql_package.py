"""The `rbln` PerfettoSQL package (rbln_perfetto/sql_package/rbln/): every module loads and runs on the
embedded backend, on a single-process trace, a trace of selected steps and a merged 2-rank trace
(the real capture writer and exporter, `trace_kinds`) and on a profiled pipeline run (`shared_run`),
and gives the rows that the project's own definitions and analyses compute (`trace_model`, `idle`,
`critical_path`) and that the traces' slices, read here without SQL (`trace_kinds.truth`), hold.
On trace_processor (RBLN_PERFETTO_TP_BIN) each module gives the embedded backend's rows."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from trace_kinds import build, truth
from trace_objects import read_trace

from rbln_perfetto.analysis import critical_path, idle
from rbln_perfetto.cli import main
from rbln_perfetto.cli.sql_package_commands import module_tables
from rbln_perfetto.query import open_trace
from rbln_perfetto.query.perfetto_sql import PACKAGE_DIR, module_names
from rbln_perfetto.query.trace_model import INVOCATION_ROWS, RUN_SPAN_ROW, TRACK_UNITS, UNTRACED_ROWS

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
KINDS = ("single", "selected", "merged", "unprofiled", "merged_selected", "merged_killed")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("sql_package")
    return {kind: build(root, kind) for kind in KINDS}


@pytest.fixture(params=KINDS)
def kind_trace(request, traces):
    with open_trace(traces[request.param], backend="sqlite") as tr:
        yield request.param, traces[request.param], tr


def _rows(df) -> list[tuple]:
    """The rows of `df`, NULL as None (either backend's way of holding one)."""
    return [tuple(row) for row in df.astype(object).where(df.notna(), None).values.tolist()]


def _rounded(rows) -> list[tuple]:
    """Rows with their floats rounded to 1e-9 (ms from ns: what two ways of dividing may differ in)."""
    return sorted(tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows)


def _tables():
    return [(m, t) for m in module_names() for t in module_tables(m)]


def test_the_package_has_the_modules_the_issue_names():
    assert PACKAGE_DIR.name == "rbln"
    assert set(module_names()) == {"rbln.tracks", "rbln.commands", "rbln.invocations", "rbln.split_ops", "rbln.idle",
                                   "rbln.critical_path", "rbln.roofline"}


@pytest.mark.parametrize(("module", "table"), _tables())
def test_every_module_loads_and_gives_rows(kind_trace, module, table):
    kind, _, tr = kind_trace
    df = tr.query(f"INCLUDE PERFETTO MODULE {module}; SELECT * FROM {table}")
    if table != "rbln_untraced" or kind == "selected":
        assert len(df) > 0, (kind, table)
    again = tr.query(f"INCLUDE PERFETTO MODULE {module}; SELECT count(*) AS n FROM {table}")  # (included once)
    assert again.n.iloc[0] == len(df)


def test_tracks_invocations_and_run_span_are_trace_models(kind_trace):
    _, _, tr = kind_trace
    tr.query("INCLUDE PERFETTO MODULE rbln.invocations")
    assert _rows(tr.query("SELECT track_id, category, unit, prefix FROM rbln_device_tracks")) == \
        _rows(tr.query(TRACK_UNITS))
    assert _rows(tr.query("SELECT id, sequence_index, submodule, call_index, unit, rank, device, name, ts, dur "
                          "FROM rbln_invocations")) == _rows(tr.query(INVOCATION_ROWS))
    assert _rows(tr.query("SELECT id, ts, dur, unit, rank, name FROM rbln_untraced")) == _rows(tr.query(UNTRACED_ROWS))
    assert _rows(tr.query("SELECT ts, end_ts, dur, untraced_dur, traced_dur FROM rbln_run_span")) == \
        _rows(tr.query(RUN_SPAN_ROW))


def test_commands_and_invocations_are_the_slices_the_trace_holds(kind_trace):
    _, path, tr = kind_trace
    t = truth(path)
    got = tr.query("INCLUDE PERFETTO MODULE rbln.commands; "
                   "SELECT rank, device, layer, submodule, ts, dur FROM rbln_commands")
    assert Counter(_rows(got)) == Counter((r, d, layer, sub, ts, dur) for (r, d), layer, sub, ts, dur in t.commands)
    inv = tr.query("INCLUDE PERFETTO MODULE rbln.invocations; "
                   "SELECT rank, device, name, submodule, ts, ts + dur AS end_ts FROM rbln_invocations")
    assert Counter(_rows(inv)) == Counter((r, d, n, s, ts, e) for (r, d), n, s, ts, e in t.invocations)


def test_command_args_are_each_commands_own(traces):
    data = read_trace(traces["merged"])
    want = Counter()
    for s in data.slices:
        args = {k.removeprefix("debug."): v for k, v in s.args.items()}
        if "command_index" in args and data.tracks[s.track_uuid].name == "Compute":
            want[(s.ts, args["op"], args["command_index"], args["command_count"], args["bytes"], args["flops"],
                  args["sequence_index"])] += 1
    with open_trace(traces["merged"], backend="sqlite") as tr:
        got = tr.query("INCLUDE PERFETTO MODULE rbln.commands; SELECT ts, op, command_index, command_count, bytes, "
                       "flops, sequence_index FROM rbln_commands")
    assert want and Counter(_rows(got)) == want


def test_split_ops_are_the_parents_of_commands(kind_trace):
    kind, path, tr = kind_trace
    data = read_trace(path)
    children: dict = {}
    for s in data.slices:
        if data.tracks[s.track_uuid].name == "Compute" and s.depth == 1:
            children.setdefault(s.parent_id, []).append(s.dur)
    want = Counter()
    by_id = {s.id: s for s in data.slices}
    for parent, durs in children.items():
        name = by_id[parent].name
        layer = name.split("_", 1)[1] if kind.startswith("merged") else name  # (less the merged trace's `i{r}_`)
        want[(layer, len(durs), sum(durs), max(durs))] += 1
    got = tr.query("INCLUDE PERFETTO MODULE rbln.split_ops; "
                   "SELECT layer, commands, commands_dur, max_command_dur FROM rbln_split_ops")
    assert want and Counter(_rows(got)) == want
    # The report reads the module; each split op once.
    report = tr.report("split_ops")
    assert report.occurrences.sum() == len(got) and report.commands.sum() == sum(len(d) for d in children.values())


def test_idle_gaps_and_devices_equal_the_idle_analysis(kind_trace):
    _, _, tr = kind_trace
    gaps = tr.query("INCLUDE PERFETTO MODULE rbln.idle; SELECT * FROM rbln_idle_gaps")
    py = idle(tr, gaps=True)
    span = tr.query("SELECT ts FROM rbln_run_span").ts.iloc[0]
    causes = ("untraced", "done", "dma", "other_device", "other_rank", "host", "unrecorded")
    got = [(r.rank, r.device, r.kind, (r.ts - span) / 1e6, r.dur / 1e6, r.cause, r.detail, r.before_invocation,
            r.after_invocation, *(getattr(r, f"{c}_dur") / 1e6 for c in causes)) for r in gaps.itertuples()]
    want = [(r.rank, r.device, r.kind, r.start_ms, r.dur_ms, r.cause, r.detail, r.before, r.after,
             *(getattr(r, f"{c}_ms") for c in causes)) for r in py.itertuples()]
    assert len(got) == len(want) > 0
    assert _rounded(got) == _rounded(want)
    devices = tr.query("SELECT * FROM rbln_idle")
    py_devices = idle(tr)
    assert devices[["rank", "device", "gaps", "main_cause"]].values.tolist() == \
        py_devices[["rank", "device", "gaps", "main_cause"]].values.tolist()
    assert (devices.idle_dur / 1e6).tolist() == pytest.approx(py_devices.idle_ms.tolist())
    assert devices.idle_pct.tolist() == pytest.approx(py_devices.idle_pct.tolist())
    assert (devices.median_gap_dur / 1e6).tolist() == pytest.approx(py_devices.median_ms.tolist())


def test_critical_path_equals_the_analysis(kind_trace):
    _, _, tr = kind_trace
    path = tr.query("INCLUDE PERFETTO MODULE rbln.critical_path; SELECT * FROM rbln_critical_path")
    py = critical_path(tr, by="element")
    elements = py[py.kind != "gap"]
    assert len(path) == len(elements) > 0
    assert path[["kind", "name", "invocation", "ts", "via"]].values.tolist() == \
        elements[["kind", "name", "invocation", "ts", "via"]].values.tolist()
    assert (path.on_path_dur / 1e6).tolist() == pytest.approx(elements.on_path_ms.tolist())
    assert path.gap_before_dur.sum() / 1e6 == pytest.approx(py[py.kind == "gap"].on_path_ms.sum())
    assert _rows(path[["rank", "device"]]) == _rows(elements[["rank", "device"]])


@pytest.mark.slow
def test_a_profiled_run_answers_as_the_analyses_do(shared_run):
    with open_trace(shared_run({}).aggregate_file, backend="sqlite") as tr:
        gaps = tr.query("INCLUDE PERFETTO MODULE rbln.idle; SELECT kind, dur, cause FROM rbln_idle_gaps")
        py = idle(tr, gaps=True)
        assert _rounded(zip(gaps.kind, gaps.dur / 1e6, gaps.cause)) == _rounded(zip(py.kind, py.dur_ms, py.cause))
        assert len(gaps) > 0
        path = tr.query("INCLUDE PERFETTO MODULE rbln.critical_path; SELECT name, ts FROM rbln_critical_path")
        elements = critical_path(tr, by="element")
        assert path.values.tolist() == elements[elements.kind != "gap"][["name", "ts"]].values.tolist()
        commands = tr.query("INCLUDE PERFETTO MODULE rbln.commands; SELECT count(*) AS n, "
                            "count(DISTINCT layer) AS layers FROM rbln_commands")
        counted = tr.query("SELECT count(*) AS n FROM slice s JOIN track t ON t.id = s.track_id "
                           "WHERE t.name = 'Compute' AND extract_arg(s.arg_set_id, 'debug.command_index') IS NOT NULL")
        assert commands.n.iloc[0] == counted.n.iloc[0] > 0 and commands.layers.iloc[0] > 1


@pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
@pytest.mark.parametrize(("module", "table"), _tables())
def test_trace_processor_gives_the_embedded_rows(traces, module, table):
    sql = f"INCLUDE PERFETTO MODULE {module}; SELECT * FROM {table}"
    for kind in ("single", "merged"):
        with open_trace(traces[kind], backend="sqlite") as a, \
                open_trace(traces[kind], backend="trace_processor", tp_bin=TP_BIN) as b:
            x, y = a.query(sql), b.query(sql)
        assert list(x.columns) == list(y.columns), (kind, table)
        assert _rounded(_rows(x)) == _rounded(_rows(y)), (kind, table)


def test_sql_package_path_is_the_installed_package(capsys):
    assert main(["sql-package", "--path"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(PACKAGE_DIR) and sorted(p.stem for p in PACKAGE_DIR.glob("*.sql")) == \
        sorted(m.split(".", 1)[1] for m in module_names())
    assert main(["sql-package"]) == 0
    listing = capsys.readouterr().out
    for name in module_names():
        assert f"INCLUDE PERFETTO MODULE {name};" in listing
    assert "rbln_idle_gaps" in listing and "_rbln_" not in listing


def test_serve_loads_the_package_into_trace_processor(traces, monkeypatch, capsys):
    served = []
    monkeypatch.setattr(subprocess, "call", lambda argv: served.append(argv) or 0)
    assert main(["serve", str(traces["single"]), "--tp-bin", "/bin/true"]) == 0
    (argv,) = served
    at = argv.index("--add-sql-package")
    assert argv[at + 1] == str(PACKAGE_DIR) and argv[-1] == str(traces["single"])
    assert "INCLUDE PERFETTO MODULE rbln.idle; SELECT * FROM rbln_idle" in capsys.readouterr().out


@pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
def test_the_served_trace_processor_answers_the_ui_query(traces):
    import socket
    import time

    from perfetto.trace_processor import TraceProcessor
    from test_open_in_ui import Cli, _refused

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli = Cli("serve", traces["merged"], "--port", port, "--tp-bin", TP_BIN)
    try:
        cli.line_matching(r"bound to 127\.0\.0\.1 only")
        deadline = time.monotonic() + 60
        while _refused("127.0.0.1", port):
            assert time.monotonic() < deadline and cli.proc.poll() is None, "trace_processor did not start"
            time.sleep(0.2)
        tp = TraceProcessor(addr=f"127.0.0.1:{port}")
        rows = tp.query("INCLUDE PERFETTO MODULE rbln.idle; SELECT rank, device FROM rbln_idle").as_pandas_dataframe()
        assert rows.values.tolist() == [[0, 0], [1, 1]]
    finally:
        cli.kill()


REFERENCE = sorted((Path(__file__).parent / "data" / "tp_reference").glob("*/trace.pb"))


@pytest.mark.parametrize("path", REFERENCE, ids=lambda p: p.parent.name)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_on_traces_of_other_shapes_the_modules_still_answer_as_the_analyses(path):
    # Perfetto's own test traces (counters, flows, nested and overlapping tracks, clocks): few or no
    # device tracks; every module still loads, and idle and the critical path agree with the analyses.
    with open_trace(path, backend="sqlite") as tr:
        tr.query("INCLUDE PERFETTO MODULE rbln.*")
        gaps = tr.query("SELECT rank, device, kind, dur, cause FROM rbln_idle_gaps")
        py = idle(tr, gaps=True)
        assert _rounded(zip(gaps["rank"], gaps.device, gaps.kind, gaps.dur / 1e6, gaps.cause)) == \
            _rounded(zip(py["rank"], py.device, py.kind, py.dur_ms, py.cause))
        path_rows = tr.query("SELECT name, ts, via FROM rbln_critical_path")
        elements = critical_path(tr, by="element")
        assert _rows(path_rows) == _rows(elements[elements.kind != "gap"][["name", "ts", "via"]])


def test_a_set_of_traces_includes_the_modules_in_each_worker(traces):
    from rbln_perfetto.query import open_traces

    sql = "INCLUDE PERFETTO MODULE rbln.split_ops; SELECT count(*) AS n, sum(commands) AS commands FROM rbln_split_ops"
    with open_traces([traces["single"], traces["merged"]], backend="sqlite", workers=2) as ts:
        both = ts.query(sql)
    for kind, row in zip(("single", "merged"), both.itertuples()):
        with open_trace(traces[kind], backend="sqlite") as tr:
            alone = tr.query(sql)
        assert (row.n, row.commands) == (alone.n.iloc[0], alone.commands.iloc[0]) and row.n > 0
