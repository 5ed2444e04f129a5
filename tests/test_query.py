"""SQL over traces: the embedded backend against trace_processor's answers and against the capture."""

import csv
import json
import os
import warnings
import zlib
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from reference_traces import CASES, REFERENCE
from trace_checks import check_scanner_agrees
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from rbln_perfetto.recorder.capture import iter_records, read_info
from rbln_perfetto.cli import main
from rbln_perfetto.query import REPORTS, QueryError, open_trace


@pytest.fixture(scope="module")
def profiled(shared_run):
    return shared_run({"text_encoder_3": {"device": 1}, "command_budget": "64KiB"}, steps=2)


def _shell_format(value) -> str:
    """A value as trace_processor_shell prints it in CSV."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "[NULL]"
    if isinstance(value, (float, np.floating)):
        return f"{value:.6f}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


@pytest.mark.parametrize("case", CASES)
def test_embedded_backend_answers_like_trace_processor(case):
    folder = REFERENCE / case
    expect = pytest.warns(UserWarning, match="clock_sync_failure") if case == "monotonic_without_snapshot" else nullcontext()
    with expect:
        tr = open_trace(folder / "trace.pb", backend="sqlite")
    with tr:
        for sql_file in sorted(folder.glob("*.sql")):
            want = list(csv.reader(open(folder / f"{sql_file.stem}.csv")))
            df = tr.query(sql_file.read_text())
            got = [list(df.columns)] + [[_shell_format(v) for v in row] for row in df.astype(object).itertuples(index=False)]
            assert got == want, f"{case}/{sql_file.name}"
    check_scanner_agrees(folder / "trace.pb")  # last: it skips where the C scanner is not built


def _capture_truth(capture: Path):
    """Report numbers computed from the capture records alone."""
    info = read_info(capture)
    inv, layers, splits, dma, host = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list), 0
    busy = defaultdict(int)
    spans = []
    for _, rec in iter_records(capture):
        kind = rec.WhichOneof("kind")
        if kind == "host":
            host += rec.host.end_ns - rec.host.start_ns
            busy[(0, "Host")] += rec.host.end_ns - rec.host.start_ns
            spans += [rec.host.start_ns, rec.host.end_ns]
            continue
        if kind != "invocation":
            continue
        r = rec.invocation
        p = info.programs[r.program_id]
        ticks = np.concatenate(([r.start_ns], r.start_ns + np.cumsum(r.durations_ns)))
        spans += [int(ticks[0]), int(ticks[-1])]
        n_in, n_cmd = len(p.inputs), len(p.commands)
        inv[p.submodule].append(int(ticks[-1] - ticks[0]))
        busy[(p.device, "Workload")] += int(ticks[-1] - ticks[0])
        busy[(p.device, "Compute")] += int(ticks[n_in + n_cmd] - ticks[n_in])
        busy[(p.device, "DMA")] += int(ticks[n_in] - ticks[0] + ticks[-1] - ticks[n_in + n_cmd])
        for i, c in enumerate(p.commands):
            d = int(ticks[n_in + i + 1] - ticks[n_in + i])
            layers[(c.layer, p.submodule, c.op)].append(d)
            if c.command_count > 1:
                splits[(c.layer, p.submodule, c.command_count)].append(d)
        for j, x in enumerate(p.inputs):
            dma[(p.submodule, x.name, "host", f"device {p.device}")].append((x.bytes, int(ticks[j + 1] - ticks[j])))
        for j, x in enumerate(p.outputs):
            k = n_in + n_cmd + j
            dma[(p.submodule, x.name, f"device {p.device}", "host")].append((x.bytes, int(ticks[k + 1] - ticks[k])))
    return inv, layers, splits, dma, busy, max(spans) - min(spans)


def test_report_numbers_equal_the_capture(profiled):
    inv, layers, splits, dma, busy, span = _capture_truth(profiled.capture_file)
    with open_trace(profiled.aggregate_file, backend="sqlite") as tr:
        r = tr.report("invocations")
        assert list(r.submodule) == ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"]
        for row in r.itertuples():
            assert row.calls == len(inv[row.submodule])
            assert row.total_ms == pytest.approx(sum(inv[row.submodule]) / 1e6, abs=1e-9)
            assert row.max_ms == pytest.approx(max(inv[row.submodule]) / 1e6, abs=1e-9)
            assert row.device == (1 if row.submodule == "text_encoder_3" else 0)

        r = tr.report("devices")
        assert {(row.device, row.category) for row in r.itertuples()} == {
            (f"Device {d}", c) for d, c in busy}
        for row in r.itertuples():
            expected = busy[(int(row.device.split()[-1]), row.category)]
            assert row.busy_ms == pytest.approx(expected / 1e6, abs=1e-9)
            assert row.utilisation_pct == pytest.approx(100 * expected / span, rel=1e-9)

        r = tr.report("top_layers")
        assert len(r) == 25
        ranked = sorted(layers.items(), key=lambda kv: (-sum(kv[1]), kv[0][0]))
        assert r.total_ms.tolist() == pytest.approx([sum(v) / 1e6 for _, v in ranked[:25]], abs=1e-9)
        assert [(row.layer, row.submodule, row.op) for row in r.itertuples()] == [k for k, _ in ranked[:25]]

        r = tr.report("split_ops")
        assert len(r) == len(splits) > 0
        for row in r.itertuples():
            durs = splits[(row.layer, row.submodule, row.command_count)]
            assert row.commands == len(durs) and row.occurrences == len(durs) // row.command_count
            assert row.total_ms == pytest.approx(sum(durs) / 1e6, abs=1e-9)
            assert row.max_ms == pytest.approx(max(durs) / 1e6, abs=1e-9)

        r = tr.report("dma")
        assert len(r) == len(dma)
        for row in r.itertuples():
            rows = dma[(row.submodule, row.tensor, row.source, row.destination)]
            assert row.transfers == len(rows) and row.bytes == sum(b for b, _ in rows)
            assert row.total_ms == pytest.approx(sum(d for _, d in rows) / 1e6, abs=1e-9)


def _oracle_slices(path):
    """Slices straight from the perfetto protos: a deliberately simple second implementation."""
    trace = pt.Trace.FromString(Path(path).read_bytes())
    packets = []
    for p in trace.packet:
        packets.extend(pt.Trace.FromString(zlib.decompress(p.compressed_packets)).packet
                       if p.HasField("compressed_packets") else [p])
    clock, offset, events = 0, 0, []
    for i, p in enumerate(packets):
        if p.HasField("clock_snapshot"):
            clocks = {c.clock_id: c.timestamp for c in p.clock_snapshot.clocks}
            clock, offset = clocks[64], clocks[pt.BUILTIN_CLOCK_BOOTTIME] - clocks[64]
            continue
        if not p.HasField("track_event") or p.track_event.type == pt.TrackEvent.TYPE_COUNTER:
            continue
        if p.timestamp_clock_id == pt.BUILTIN_CLOCK_BOOTTIME:
            ts = p.timestamp
        else:
            clock += p.timestamp
            ts = clock + offset
        events.append((ts, i, p.track_event))
    events.sort(key=lambda e: (e[0], e[1]))
    stacks, out = defaultdict(list), []
    for ts, _, te in events:
        stack = stacks[te.track_uuid]
        if te.type == pt.TrackEvent.TYPE_SLICE_BEGIN:
            row = {"ts": ts, "name": te.name, "depth": len(stack), "parent": stack[-1]["id"] if stack else None,
                   "id": len(out), "dur": -1, "name_iid": te.name_iid}
            out.append(row)
            stack.append(row)
        else:
            row = stack.pop()
            row["dur"] = ts - row["ts"]
    return out


def test_round_trip_equals_the_perfetto_protos(profiled):
    paths = [profiled.aggregate_file] + profiled.invocation_files[::3]
    for path in paths:
        oracle = _oracle_slices(path)
        with open_trace(path, backend="sqlite") as tr:
            df = tr.query("select id, ts, dur, name, depth, parent_id from slice order by id")
        assert len(df) == len(oracle)
        assert df.ts.tolist() == [o["ts"] for o in oracle]
        assert df.dur.tolist() == [o["dur"] for o in oracle]
        assert df.depth.tolist() == [o["depth"] for o in oracle]
        assert [None if pd.isna(p) else int(p) for p in df.parent_id] == [o["parent"] for o in oracle]
        inline = [(n, o["name"]) for n, o in zip(df.name, oracle) if not o["name_iid"]]
        assert inline and all(a == b for a, b in inline)
    for path in paths:  # last: it skips where the C scanner is not built
        check_scanner_agrees(path)


@pytest.mark.skipif(not os.environ.get("RBLN_PERFETTO_TP_BIN"), reason="RBLN_PERFETTO_TP_BIN is not set")
def test_reports_are_identical_on_both_backends(profiled):
    with open_trace(profiled.aggregate_file, backend="sqlite") as a, \
            open_trace(profiled.aggregate_file, backend="trace_processor") as b:
        for name in REPORTS:
            x, y = a.report(name), b.report(name)
            assert list(x.columns) == list(y.columns), name
            assert x.astype(object).where(x.notna(), None).values.tolist() == \
                y.astype(object).where(y.notna(), None).values.tolist(), name


def test_timeline_png(profiled, tmp_path):
    out = tmp_path / "timeline.png"
    assert main(["plot", str(profiled.aggregate_file), "-o", str(out)]) == 0
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (int(100 * (1.0 + 0.9 * 2)), 1200)  # two devices, 12 inches at 100 dpi
    rgb = image[..., :3]
    non_white = (rgb < 0.95).any(axis=-1).mean()
    assert 0.02 < non_white < 0.9 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 5


def test_query_cli_formats(profiled, capsys):
    sql = "select count(*) as n from slice where name like '%to_q%'"
    assert main(["query", str(profiled.aggregate_file), sql, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["n"] > 0
    assert main(["query", str(profiled.aggregate_file), sql, "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', str(row["n"])]
    assert main(["summary", str(profiled.aggregate_file)]) == 0
    text = capsys.readouterr().out
    for report in REPORTS.values():
        assert report.title in text


def test_unsupported_packets_are_reported_not_misread(tmp_path):
    trace = pt.Trace()
    p = trace.packet.add(trusted_packet_sequence_id=1, timestamp=10)
    p.process_tree.processes.add(pid=1)
    e = trace.packet.add(trusted_packet_sequence_id=1, timestamp=20)
    e.track_event.type = pt.TrackEvent.TYPE_INSTANT
    e.track_event.name = "kept"
    e.track_event.track_uuid = 5
    path = tmp_path / "other-tool.pb"
    path.write_bytes(trace.SerializeToString())
    with pytest.warns(UserWarning, match="unsupported_packet_field:process_tree"):
        tr = open_trace(path, backend="sqlite")
    with tr:
        assert tr.query("select name from slice").name.tolist() == ["kept"]
        stats = tr.query("select name, severity, value from stats")
        assert stats.values.tolist() == [["unsupported_packet_field:process_tree", "error", 1]]


def test_api_errors(profiled):
    with pytest.raises(ValueError, match="backend='duckdb' is not valid; valid: auto, sqlite, trace_processor"):
        open_trace(profiled.aggregate_file, backend="duckdb")
    with open_trace(profiled.aggregate_file, backend="sqlite") as tr:
        with pytest.raises(ValueError, match="report 'bogus' is not known; valid: invocations, devices"):
            tr.report("bogus")
        with pytest.raises(QueryError, match="no such table: sched_slice"):
            tr.query("select * from sched_slice")
        assert tr.query("select extract_arg(arg_set_id, 'debug.submodule') as s from slice where depth = 0 "
                        "and name like '%#0' order by ts limit 1").s.tolist() == ["text_encoder"]


def _one_track_trace(path, kinds):
    t = pt.Trace()
    p = t.packet.add(trusted_packet_sequence_id=1)
    p.track_descriptor.uuid, p.track_descriptor.name = 5, "T"
    for i, kind in enumerate(kinds):
        p = t.packet.add(trusted_packet_sequence_id=1, timestamp=1000)
        p.track_event.type, p.track_event.track_uuid = kind, 5
        if kind != pt.TrackEvent.TYPE_SLICE_END:
            p.track_event.name = f"s{i}"
    path.write_bytes(t.SerializeToString())
    return path


def test_zero_length_slices_at_one_time_read_as_trace_processor_reads_them(tmp_path):
    # trace_processor v58.2: two BEGIN/END pairs at one time are siblings (depth 0, 0); two INSTANTs nest
    # (depth 0, 1: an instant stays on its track's stack until a later time). The embedded backend reads both so.
    B, E, I = pt.TrackEvent.TYPE_SLICE_BEGIN, pt.TrackEvent.TYPE_SLICE_END, pt.TrackEvent.TYPE_INSTANT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_trace(_one_track_trace(tmp_path / "pairs.pb", [B, E, B, E]), backend="sqlite") as tr:
            assert tr.query("select dur, depth from slice order by id").values.tolist() == [[0, 0], [0, 0]]
            assert tr.query("select count(*) as n from stats where value > 0").n[0] == 0
        with open_trace(_one_track_trace(tmp_path / "instants.pb", [I, I]), backend="sqlite") as tr:
            assert tr.query("select depth, coalesce(parent_id, -1) as p from slice order by id").values.tolist() == [
                [0, -1], [1, 0]]
            assert tr.query("select count(*) as n from stats where value > 0").n[0] == 0


def test_events_before_their_clock_snapshot_are_converted_through_it(tmp_path):
    # trace_processor v58.2 defers a MONOTONIC event whose snapshot comes later in the file to the end of the
    # file and converts it through that snapshot (found by tests/test_differential_tp.py); so does the reader.
    t = pt.Trace()
    p = t.packet.add(trusted_packet_sequence_id=1, timestamp=1000, timestamp_clock_id=pt.BUILTIN_CLOCK_MONOTONIC)
    p.track_event.type, p.track_event.name = pt.TrackEvent.TYPE_INSTANT, "early"
    p = t.packet.add(trusted_packet_sequence_id=1)
    p.clock_snapshot.clocks.add(clock_id=pt.BUILTIN_CLOCK_BOOTTIME, timestamp=1007)
    p.clock_snapshot.clocks.add(clock_id=pt.BUILTIN_CLOCK_MONOTONIC, timestamp=1000)
    path = tmp_path / "late.pb"
    path.write_bytes(t.SerializeToString())
    with open_trace(path, backend="sqlite") as tr:
        assert tr.query("select ts, name from slice").values.tolist() == [[1007, "early"]]
        assert tr.query("select count(*) as n from stats where value > 0").n[0] == 0


@pytest.mark.parametrize("elements,want", [
    # trace_processor v58.2's rows (found by tests/test_differential_tp.py): an element that adds no arg takes
    # no index; a string iid never interned ends the annotation, keeping what was read before it.
    ([{"bool_value": True}, {}, {"int_value": 3}], [["debug.a[0]", 1], ["debug.a[1]", 3], ["debug.b", 9]]),
    ([{"bool_value": True}, {"string_value_iid": 7}, {"int_value": 3}], [["debug.a[0]", 1], ["debug.b", 9]]),
])
def test_array_annotations_index_as_trace_processor_does(tmp_path, elements, want):
    t = pt.Trace()
    t.packet.add(trusted_packet_sequence_id=1, sequence_flags=1).interned_data.SetInParent()
    p = t.packet.add(trusted_packet_sequence_id=1, timestamp=1000, sequence_flags=2)
    p.track_event.type, p.track_event.name = pt.TrackEvent.TYPE_INSTANT, "x"
    a = p.track_event.debug_annotations.add(name="a")
    for e in elements:
        a.array_values.add(**e)
    p.track_event.debug_annotations.add(name="b", int_value=9)
    path = tmp_path / "arrays.pb"
    path.write_bytes(t.SerializeToString())
    with open_trace(path, backend="sqlite") as tr:
        got = tr.query("select key, int_value from args where key glob 'debug.*' order by key").values.tolist()
    assert got == want


@pytest.mark.parametrize("case", CASES)
def test_query_csv_prints_what_trace_processor_shell_prints(case, capsys):
    # The stored CSVs are trace_processor_shell's own `-q` output; `query --csv` on the embedded backend
    # must print the same text (doubles as 100.000000, strings quoted, NULL as [NULL]).
    folder = REFERENCE / case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (monotonic_without_snapshot warns; tested above)
        for sql_file in sorted(folder.glob("*.sql")):
            assert main(["query", str(folder / "trace.pb"), sql_file.read_text(), "--csv", "--backend", "sqlite"]) == 0
            assert capsys.readouterr().out == (folder / f"{sql_file.stem}.csv").read_text(), f"{case}/{sql_file.name}"
