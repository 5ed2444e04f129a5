"""User ranges (`rbln_perfetto.range`): recorded in the capture, drawn on device 0's Ranges track,
nested as the code nests, reported with the device time inside them, identically on both backends."""

import os
from collections import defaultdict

import numpy as np
import pytest
from conftest import run
from trace_checks import check_scanner_agrees, check_trace
from trace_objects import iter_packets, read_trace

import rbln_perfetto
from rbln_perfetto.recorder.capture import iter_records, read_info
from rbln_perfetto.cli import main
from rbln_perfetto.exporter.host_events import RANGES_TRACK
from rbln_perfetto.query import open_trace
from rbln_perfetto.exporter.tracks import CHILDREN, TrackIds

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
needs_tp = pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")


@pytest.fixture(scope="module")
def ranged(compiled_dirs, tmp_path_factory):
    """Two 1-step calls inside nested ranges, one range with no device work, one range per denoising
    step opened from diffusers' step callback, and one range after the block (which records nothing)."""
    from pipeline import RBLNStableDiffusion3Pipeline

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs({"text_encoder_3": {"device": 1}}))
    pipe.set_progress_bar_config(disable=True)

    def on_step_end(_pipe, step, _timestep, kwargs):
        with rbln_perfetto.range("step end", step=step):
            pass
        return kwargs

    out = tmp_path_factory.mktemp("ranges")
    with rbln_perfetto.profile(out) as prof:
        with rbln_perfetto.range("cfg sweep", guidance=7.0, steps=1, scheduler="flow", cfg=True):
            for i in (0, 1):
                with rbln_perfetto.range("call", index=i):
                    run(pipe, steps=1, callback_on_step_end=on_step_end)
        with rbln_perfetto.range("idle"):
            pass
    with rbln_perfetto.range("after the block"):
        run(pipe, steps=1)
    return prof


def _rows(frame):
    """A DataFrame's rows as lists, NULLs (NaN, pd.NA) as None."""
    return frame.astype(object).where(frame.notna(), None).values.tolist()


def _ranges_in_capture(capture):
    return [r.range for _, r in iter_records(capture) if r.WhichOneof("kind") == "range"]


def _python_report(trace_data):
    """The ranges report's numbers computed here, slice by slice: commands (leaf Compute slices) and
    DMA slices that start inside each range."""
    tracks = trace_data.tracks
    parents = {s.parent_id for s in trace_data.slices if s.parent_id is not None}
    commands = [(s.ts, s.dur, tracks[s.track_uuid].name) for s in trace_data.slices
                if tracks[s.track_uuid].name in ("Compute", "DMA") and s.id not in parents]
    rows = {}
    for r in (s for s in trace_data.slices if tracks[s.track_uuid].name == "Ranges"):
        inside = [(dur, track) for ts, dur, track in commands if r.ts <= ts < r.ts + r.dur]
        rows[r.id] = (sum(t == "Compute" for _, t in inside), sum(t == "DMA" for _, t in inside),
                      sum(d for d, t in inside if t == "Compute"), sum(d for d, t in inside if t == "DMA"))
    return rows


def test_ranges_are_recorded_in_the_capture_at_host_time(ranged):
    ranges = _ranges_in_capture(ranged.capture_file)
    # Written when each range ends: inner ranges first; the range after the block is not there.
    names = [r.name for r in ranges]
    assert names == ["step end", "call", "step end", "call", "cfg sweep", "idle"]
    assert read_info(ranged.capture_file).ranges == 6
    sweep = ranges[4]
    assert {a.name: a.WhichOneof("value") for a in sweep.args} == {
        "guidance": "double_value", "steps": "int_value", "scheduler": "string_value", "cfg": "bool_value"}
    assert [(a.double_value, a.int_value, a.string_value, a.bool_value) for a in sweep.args] == [
        (7.0, 0, "", False), (0.0, 1, "", False), (0.0, 0, "flow", False), (0.0, 0, "", True)]
    calls = [r for r in ranges if r.name == "call"]
    for call in calls:
        assert sweep.start_ns <= call.start_ns <= call.end_ns <= sweep.end_ns
    assert calls[0].end_ns <= calls[1].start_ns
    # The invocations of each call lie inside its range, on the same monotonic clock.
    invocations = [r.invocation for _, r in iter_records(ranged.capture_file) if r.WhichOneof("kind") == "invocation"]
    per_call = len(invocations) // 2
    for call, invs in zip(calls, (invocations[:per_call], invocations[per_call:])):
        assert all(call.start_ns <= inv.start_ns for inv in invs)
        assert all(inv.start_ns + sum(inv.durations_ns) <= call.end_ns for inv in invs)


def test_ranges_track_in_the_aggregate(ranged):
    trace = check_trace(ranged.aggregate_file)  # nesting, pairing, no reader stats
    assert TrackIds.device(0) + len(CHILDREN) < RANGES_TRACK < TrackIds.device(1)  # its own uuid under device 0
    (track,) = [t for t in trace.tracks.values() if t.name == "Ranges"]
    assert trace.tracks[track.parent_uuid].name == "Device 0"
    descriptors = {p.track_descriptor.uuid: p.track_descriptor for p in iter_packets(ranged.aggregate_file)
                   if p.HasField("track_descriptor")}
    siblings = [d for d in descriptors.values() if d.parent_uuid == track.parent_uuid]
    assert min(siblings, key=lambda d: d.sibling_order_rank).name == "Ranges"  # drawn above Workload

    slices = {s.id: s for s in trace.slices if s.track_uuid == track.uuid}
    by_name = defaultdict(list)
    for s in slices.values():
        by_name[s.name].append(s)
    (sweep,) = by_name["cfg sweep"]
    assert sweep.depth == 0 and sweep.parent_id is None
    assert sweep.args == {"debug.guidance": 7.0, "debug.steps": 1, "debug.scheduler": "flow", "debug.cfg": True}
    assert [(s.depth, s.parent_id, s.args) for s in by_name["call"]] == [
        (1, sweep.id, {"debug.index": 0}), (1, sweep.id, {"debug.index": 1})]
    steps = by_name["step end"]
    assert [(s.depth, slices[s.parent_id].name, s.args) for s in steps] == [
        (2, "call", {"debug.step": 0}), (2, "call", {"debug.step": 0})]
    (idle,) = by_name["idle"]
    assert idle.depth == 0 and idle.args == {}

    # The slices are the capture's ranges, moved onto BOOTTIME by the capture's clock snapshot.
    header = read_info(ranged.capture_file).header
    boot_offset = header.clock.boottime_ns - header.clock.monotonic_ns
    expected = sorted((r.start_ns + boot_offset, r.end_ns - r.start_ns, r.name) for r in
                      _ranges_in_capture(ranged.capture_file))
    assert sorted((s.ts, s.dur, s.name) for s in slices.values()) == expected


def test_ranges_report_gives_the_device_time_inside_each_range(ranged):
    with open_trace(ranged.aggregate_file, backend="sqlite") as tr:
        report = tr.report("ranges")
        ids = tr.query("select s.id from slice s join track t on s.track_id = t.id where t.name = 'Ranges' "
                       "order by s.ts, s.depth").id.tolist()
    assert report.name.tolist() == ["cfg sweep", "call", "step end", "call", "step end", "idle"]
    assert report.args.tolist() == ["cfg=true, guidance=7.0, scheduler=flow, steps=1", "index=0", "step=0",
                                    "index=1", "step=0", ""]
    assert report.depth.tolist() == [0, 1, 2, 1, 2, 0]
    oracle = _python_report(read_trace(ranged.aggregate_file))
    for row, slice_id in zip(report.itertuples(), ids):
        commands, transfers, compute_ns, dma_ns = oracle[slice_id]
        assert (row.commands, row.transfers) == (commands, transfers)
        assert row.compute_ms == pytest.approx(compute_ns / 1e6, abs=1e-9)
        assert row.dma_ms == pytest.approx(dma_ns / 1e6, abs=1e-9)
        assert row.device_pct == pytest.approx(100.0 * (compute_ns + dma_ns) / max(row.dur_ms * 1e6, 1), rel=1e-9)
    sweep, call0, step0, call1, _, idle = report.itertuples()
    assert call0.commands > 0 and call0.compute_ms > 0 and call0.dma_ms > 0
    # Nothing runs on a device between the calls: the sweep's device time is its two calls'.
    assert sweep.commands == call0.commands + call1.commands
    assert sweep.compute_ms == pytest.approx(call0.compute_ms + call1.compute_ms)
    assert step0.commands == 0 and idle.commands == 0 and idle.compute_ms == 0
    assert 0 < call0.device_pct < 100


@needs_tp
def test_ranges_report_and_slices_are_identical_on_both_backends(ranged):
    sql = ("select s.ts, s.dur, s.name, s.depth, p.name as parent, a.key, a.value_type, a.int_value, a.string_value, "
           "a.real_value from slice s join track t on s.track_id = t.id left join slice p on p.id = s.parent_id "
           "left join args a on a.arg_set_id = s.arg_set_id where t.name = 'Ranges' order by s.ts, s.depth, a.key")
    with open_trace(ranged.aggregate_file, backend="sqlite") as a, \
            open_trace(ranged.aggregate_file, backend="trace_processor", tp_bin=TP_BIN) as b:
        for frame_a, frame_b in ((a.report("ranges"), b.report("ranges")), (a.query(sql), b.query(sql))):
            assert list(frame_a.columns) == list(frame_b.columns)
            assert _rows(frame_a) == _rows(frame_b)
        assert len(b.report("ranges")) == 6


def test_summary_prints_the_ranges(ranged, capsys):
    assert main(["summary", str(ranged.aggregate_file), "--backend", "sqlite"]) == 0
    out = capsys.readouterr().out
    assert "user ranges (rbln_perfetto.range) and the device time inside them [ranges]:" in out
    assert "cfg=true, guidance=7.0, scheduler=flow, steps=1" in out


def test_a_range_outside_a_profiled_block_records_nothing(ranged):
    before = ranged.capture_file.read_bytes()
    outside = rbln_perfetto.range("outside", x=1)
    with outside:
        assert outside._writer is None  # no capture to write to: entering read two variables, nothing more
    assert ranged.capture_file.read_bytes() == before


def test_ranges_inside_a_call_profiled_by_rbln_profiler(make_pipe, tmp_path, monkeypatch):
    """With RBLN_PROFILER each pipeline call is its own run: a range opened inside the call (here in
    the step callback) goes to that call's capture; one around the call has no capture yet."""
    monkeypatch.setenv("RBLN_PROFILER", "1")
    monkeypatch.setenv("RBLN_PROFILER_DIR", str(tmp_path))
    pipe = make_pipe({"text_encoder_3": {"device": 1}})

    def on_step_end(_pipe, step, _timestep, kwargs):
        with rbln_perfetto.range("in the call", step=step):
            pass
        return kwargs

    with rbln_perfetto.range("around the call"):
        run(pipe, steps=2, callback_on_step_end=on_step_end)
    (run_dir,) = tmp_path.iterdir()
    ranges = _ranges_in_capture(run_dir / "capture.rblncap")
    assert [(r.name, r.args[0].int_value) for r in ranges] == [("in the call", 0), ("in the call", 1)]
    with open_trace(run_dir / "aggregate.pb", backend="sqlite") as tr:
        report = tr.report("ranges")
    assert report.name.tolist() == ["in the call", "in the call"] and report.args.tolist() == ["step=0", "step=1"]


def test_arg_types_and_the_decorator(tmp_path):
    @rbln_perfetto.range("decorated", kind="fn")
    def work(x):
        return x + 1

    with rbln_perfetto.profile(tmp_path) as prof:
        with rbln_perfetto.range("typed", i=-3, big=2**70, f=np.float32(0.5), n=np.int64(4), flag=np.bool_(True),
                                 text="a b", other=(1, 2), name="the name is an arg"):
            assert work(1) == 2 and work(2) == 3
    with open_trace(prof.aggregate_file, backend="sqlite") as tr:
        args = _rows(tr.query("select a.key, a.value_type, a.int_value, a.string_value, a.real_value from slice s "
                              "join args a using (arg_set_id) where s.name = 'typed' order by a.key"))
        decorated = _rows(tr.query("select name, extract_arg(arg_set_id, 'debug.kind') as kind from slice "
                                   "where name = 'decorated'"))
        # No pipeline ran: no device 0, so the Ranges track is a top-level track.
        tracks = _rows(tr.query("select name, parent_id from track where name = 'Ranges'"))
    assert args == [
        ["debug.big", "string", None, str(2**70), None],
        ["debug.f", "real", None, None, 0.5],
        ["debug.flag", "bool", 1, None, None],
        ["debug.i", "int", -3, None, None],
        ["debug.n", "int", 4, None, None],
        ["debug.name", "string", None, "the name is an arg", None],
        ["debug.other", "string", None, "(1, 2)", None],
        ["debug.text", "string", None, "a b", None],
    ]
    assert decorated == [["decorated", "fn"], ["decorated", "fn"]]
    assert tracks == [["Ranges", None]]


def test_a_range_name_must_be_text():
    with pytest.raises(rbln_perfetto.UsageError, match="range name must be a string, got int 3"):
        rbln_perfetto.range(3)


def test_captures_without_ranges_get_no_ranges_track(tmp_path):
    from golden_export import CAPTURE

    assert read_info(CAPTURE).ranges == 0
    result = rbln_perfetto.export(CAPTURE, tmp_path, per_invocation=False)
    with open_trace(result.aggregate_file, backend="sqlite") as tr:
        assert tr.query("select count(*) as n from track where name = 'Ranges'").n.tolist() == [0]
        assert tr.report("ranges").empty


def test_both_reader_paths_read_the_ranges_alike(ranged):
    check_scanner_agrees(ranged.aggregate_file)  # the C scanner's path and the pure-Python one
