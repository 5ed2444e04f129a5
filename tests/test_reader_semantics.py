"""The embedded reader on trace_processor's TrackEvent semantics where they are easy to get wrong, each
case built from real protobuf packets (Perfetto's perfetto_trace_pb2) and read on both of the reader's
paths (the C scanner's column-wise runs, and protobuf a packet at a time): timestamps that overflow,
TYPE_STATE events, END events matched by name and category, stacked instants, debug annotation arrays and
legacy JSON, clock snapshots chosen by time, and the thread and process tables."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from rbln_perfetto.query import open_trace
from rbln_perfetto.reader import read_tables, scanner_available

TE = pt.TrackEvent
BEGIN, END, INSTANT, STATE = TE.TYPE_SLICE_BEGIN, TE.TYPE_SLICE_END, TE.TYPE_INSTANT, TE.TYPE_STATE
BOOTTIME = pt.BUILTIN_CLOCK_BOOTTIME
SCANNERS = ["auto", None] if scanner_available() else [None]
RUN = 10  # events in a row, so that the scanner's column-wise path takes them


def _write(path: Path, packets: list) -> Path:
    t = pt.Trace()
    t.packet.extend(packets)
    path.write_bytes(t.SerializeToString())
    return path


def _first(seq: int = 1) -> pt.TracePacket:
    """The first packet of a sequence: it clears the incremental state."""
    return pt.TracePacket(trusted_packet_sequence_id=seq, sequence_flags=pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED)


def _event(ts: int, kind: int, track: int = 0, name: str | None = "e", clock: int | None = None, **fields):
    p = pt.TracePacket(trusted_packet_sequence_id=1, timestamp=ts)
    if clock is not None:
        p.timestamp_clock_id = clock
    p.track_event.type = kind
    if track:
        p.track_event.track_uuid = track
    if name is not None:
        p.track_event.name = name
    for key, value in fields.items():
        getattr(p.track_event, key).extend(value)
    return p


def _snapshot(*clocks) -> pt.TracePacket:
    """A clock snapshot of (clock id, timestamp, unit multiplier, incremental) clocks, BOOTTIME first."""
    p = _first()
    for clock_id, ts, multiplier, incremental in clocks:
        p.clock_snapshot.clocks.add(clock_id=clock_id, timestamp=ts, unit_multiplier_ns=multiplier,
                                    is_incremental=incremental)
    return p


def _track(uuid: int, name: str | None = None, **descriptor) -> pt.TracePacket:
    p = pt.TracePacket(trusted_packet_sequence_id=1)
    p.track_descriptor.uuid = uuid
    if name is not None:
        p.track_descriptor.name = name
    for key, value in descriptor.items():
        getattr(p.track_descriptor, key).CopyFrom(value)
    return p


def _rows(path: Path, sql: str) -> list[tuple]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_trace(path, backend="sqlite") as tr:
            return [tuple(r) for r in tr.query(sql).itertuples(index=False)]


# ---------------------------------------------------------------- timestamps past int64


def _int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


@pytest.mark.parametrize("scanner", SCANNERS)
def test_microsecond_clock_timestamps_past_int64_wrap_as_trace_processors_do(tmp_path, scanner):
    # In ns these are past int64. trace_processor v58.2 multiplies in int64 that wraps (the oracle's
    # trace 0750 keeps an event whose 2**63 us wrapped to 0): one that wraps negative is dropped and counted,
    # one that wraps back into range is kept at the wrapped time.
    times = [2**54 + i for i in range(RUN)] + [2**62 + i for i in range(RUN)] + [2000 + i for i in range(RUN)]
    trace = _write(tmp_path / "t.pb", [_snapshot((BOOTTIME, 10**9, 0, False), (64, 10**6, 1000, False)),
                                       *[_event(ts, INSTANT, clock=64) for ts in times]])
    t = read_tables(trace, scanner=scanner)
    ns = [_int64(ts * 1000) for ts in times]
    assert t.stats["track_event_invalid_timestamp"] == sum(v < 0 for v in ns) == RUN
    assert t.slice_ts.tolist() == sorted(v for v in ns if v >= 0)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_incremental_clock_whose_running_sum_passes_int64_wraps_as_trace_processors_does(tmp_path, scanner):
    # the running sum passes 2**63 at the third (dropped: negative) and wraps back at the fifth (kept, as in
    # the oracle's trace 0052)
    deltas = [10, 2**62, 2**62, 5, 2**63] + [1] * (RUN - 5)
    trace = _write(tmp_path / "t.pb", [_snapshot((BOOTTIME, 0, 0, False), (64, 0, 0, True)),
                                       *[_event(d, INSTANT, clock=64) for d in deltas]])
    t = read_tables(trace, scanner=scanner)
    running, kept = 0, []
    for d in deltas:
        running = _int64(running + _int64(d))  # int64 arithmetic, as trace_processor's
        if running >= 0:
            kept.append(running)
    assert t.stats["track_event_invalid_timestamp"] == len(deltas) - len(kept) > 0
    assert t.slice_ts.tolist() == sorted(kept)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_offset_is_taken_from_the_snapshot_at_or_before_each_timestamp(tmp_path, scanner):
    # clock 64 runs 100 ns behind BOOTTIME until its time 5000, then 300 ns: each event goes through the
    # latest snapshot at or before its own time (not the latest one read)
    snaps = [_snapshot((BOOTTIME, 1100, 0, False), (64, 1000, 0, False)),
             _snapshot((BOOTTIME, 5300, 0, False), (64, 5000, 0, False))]
    times = [1000 + 500 * i for i in range(RUN)]
    trace = _write(tmp_path / "t.pb", [*snaps, *[_event(ts, INSTANT, clock=64) for ts in times]])
    t = read_tables(trace, scanner=scanner)
    assert t.slice_ts.tolist() == [ts + (300 if ts >= 5000 else 100) for ts in times]


# ---------------------------------------------------------------- TYPE_STATE


@pytest.mark.parametrize("scanner", SCANNERS)
def test_state_events_off_state_tracks_are_parser_errors(tmp_path, scanner):
    packets = [_first(), _track(7, "plain"), _track(8, "states", state=pt.TrackDescriptor().state)]
    packets += [_event(100 + i, STATE, track=7) for i in range(RUN)]
    packets += [_event(200, STATE, track=8), _event(300, INSTANT, track=7)]
    t = read_tables(_write(tmp_path / "t.pb", packets), scanner=scanner)
    assert t.stats["track_event_parser_errors"] == RUN  # dropped, as trace_processor drops them
    assert t.stats["unsupported_state_track_event"] == 1  # a real state change: refused
    assert t.slice_ts.tolist() == [300]


# ---------------------------------------------------------------- slices as trace_processor's SliceTracker


@pytest.mark.parametrize("scanner", SCANNERS)
def test_end_with_category_ends_the_slice_it_matches_and_gives_it_its_args(tmp_path, scanner):
    end = _event(400, END, track=5, name=None, categories=["outer"])
    end.track_event.debug_annotations.add(name="result", int_value=7)
    packets = [_first(), _track(5, "T"), _event(100, BEGIN, track=5, name="a", categories=["outer"]),
               _event(200, BEGIN, track=5, name="b", categories=["inner"]), end,
               _event(500, END, track=5, name=None)]
    trace = _write(tmp_path / "t.pb", packets)
    t = read_tables(trace, scanner=scanner)
    # "a" ends at 400 under the still open "b"; the next event finds "b" open inside an ended slice and
    # ends it at "a"'s end (trace_processor's stack: misplaced_end_event), so the plain END matches nothing
    assert t.slice_dur.tolist() == [300, 200]
    assert t.stats["misplaced_end_event"] == 2
    assert t.arg_sets[t.slice_arg_set[0]] == {"debug.result": 7}
    assert _rows(trace, "select s.name, a.key, a.int_value from slice s join args a using (arg_set_id)") == [
        ("a", "debug.result", 7)]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_instants_at_one_time_on_one_track_nest(tmp_path, scanner):
    packets = [_first(), _track(5, "T")] + [_event(100, INSTANT, track=5, name=f"i{i}") for i in range(3)]
    packets.append(_event(200, INSTANT, track=5, name="later"))
    t = read_tables(_write(tmp_path / "t.pb", packets), scanner=scanner)
    assert t.slice_depth.tolist() == [0, 1, 2, 0]
    assert t.slice_parent.tolist() == [-1, 0, 1, -1]
    assert not [k for k in t.stats if k.startswith("unsupported")]


# ---------------------------------------------------------------- debug annotations


@pytest.mark.parametrize("scanner", SCANNERS)
def test_arrays_under_one_key_number_on_across_an_events_annotations(tmp_path, scanner):
    p = _event(100, INSTANT, track=0)
    for _ in range(2):  # two annotations of one name, each with a dict holding an array of pointers
        a = p.track_event.debug_annotations.add(name="n")
        e = a.dict_entries.add(name="p")
        e.array_values.add(pointer_value=5685)
    trace = _write(tmp_path / "t.pb", [_first(), p])
    assert _rows(trace, "select key, int_value, value_type from args order by key") == [
        ("debug.n.p[0]", 5685, "pointer"), ("debug.n.p[1]", 5685, "pointer")]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_legacy_json_values_become_args(tmp_path, scanner):
    p = _event(100, INSTANT)
    for name, text in (("o", '{"k": 1, "x": {"y": "s"}}'), ("a", "[1, 2.5, null, true]"), ("s", '"text"'),
                       ("n", "3")):
        p.track_event.debug_annotations.add(name=name, legacy_json_value=text)
    t = read_tables(_write(tmp_path / "t.pb", [_first(), p]), scanner=scanner)
    assert t.arg_sets[t.slice_arg_set[0]] == {"debug.o.k": 1, "debug.o.x.y": "s", "debug.a[0]": 1, "debug.a[1]": 2.5,
                                              "debug.a[2]": True, "debug.s": "text"}


# ---------------------------------------------------------------- thread and process tables

TABLES = {
    "thread": "id, type, utid, tid, name, start_ts, end_ts, upid, is_main_thread, is_idle, machine_id, arg_set_id",
    "process": "id, type, upid, pid, name, start_ts, end_ts, parent_upid, uid, android_appid, android_user_id, "
               "cmdline, arg_set_id, machine_id",
    "thread_track": "id, name, type, parent_id, source_arg_set_id, machine_id, utid",
    "process_track": "id, name, type, parent_id, source_arg_set_id, machine_id, upid",
    "thread_counter_track": "id, name, type, parent_id, source_arg_set_id, machine_id, unit, description, utid",
    "process_counter_track": "id, name, type, parent_id, source_arg_set_id, machine_id, unit, description, upid",
    "state": "id, ts, dur, track_id, name, arg_set_id",
}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_trace_processors_thread_and_process_tables_exist_without_descriptors(tmp_path, table):
    trace = _write(tmp_path / "t.pb", [_first(), _event(100, INSTANT)])
    rows = _rows(trace, f"select {TABLES[table]} from {table}")
    if table == "thread":  # only the swapper rows trace_processor reserves at startup
        assert _rows(trace, "select utid, tid, name is null, upid, is_main_thread, is_idle from thread") == [
            (0, 0, 1, 0, 1, 1)]
    elif table == "process":
        assert _rows(trace, "select upid, pid, name is null from process") == [(0, 0, 1)]
    else:
        assert rows == []


def test_threads_and_processes_are_numbered_in_trace_processors_parse_order(tmp_path):
    def described(uuid, ts=None, **kind):
        p = _track(uuid, **kind)
        if ts is not None:
            p.timestamp = ts
        return p

    def thread(pid, tid, name=None):
        d = pt.TrackDescriptor()
        d.thread.pid, d.thread.tid = pid, tid
        if name:
            d.thread.thread_name = name
        return d.thread

    def process(pid, name):
        d = pt.TrackDescriptor()
        d.process.pid, d.process.process_name = pid, name
        return d.process

    packets = [_first(), _event(100, INSTANT),
               described(2, process=process(10, "first")),  # parsed at 100, the latest time read before it
               described(1, ts=50, thread=thread(20, 21, "a")),  # parsed at its own time: first
               described(2, process=process(10, "second")),  # a process's first name holds
               described(1, ts=600, thread=thread(20, 21, "b")),  # a thread's latest name wins
               described(5, ts=700, thread=thread(20, 21))]  # another track for thread 21: its tid was reused
    trace = _write(tmp_path / "t.pb", packets)
    # a thread's process comes first, with its main thread (tid = pid)
    assert _rows(trace, "select utid, tid, upid, coalesce(name, '-') from thread order by utid") == [
        (0, 0, 0, "-"), (1, 20, 1, "-"), (2, 21, 1, "b"), (3, 10, 2, "-"), (4, 21, 1, "-")]
    assert _rows(trace, "select upid, pid, coalesce(name, '-') from process order by upid") == [
        (0, 0, "-"), (1, 20, "-"), (2, 10, "first")]


def test_a_second_process_track_for_a_pid_starts_a_new_process(tmp_path):
    first, second = pt.TrackDescriptor(), pt.TrackDescriptor()
    first.process.pid, first.process.process_name = 10, "old"
    second.process.pid, second.process.process_name = 10, "new"
    trace = _write(tmp_path / "t.pb", [_first(), _track(1, process=first.process), _track(2, process=second.process),
                                       _event(100, INSTANT)])
    # the pid was reused (trace_processor's StartNewProcess): a new process with a new main thread
    assert _rows(trace, "select upid, pid, name from process where upid > 0 order by upid") == [
        (1, 10, "old"), (2, 10, "new")]
    assert _rows(trace, "select utid, tid, upid, is_main_thread from thread where utid > 0 order by utid") == [
        (1, 10, 1, 1), (2, 10, 2, 1)]


def test_thread_and_process_descriptors_fill_the_thread_and_process_tables(tmp_path):
    proc = pt.TrackDescriptor()
    proc.process.pid, proc.process.process_name = 10, "server"
    proc.process.cmdline.extend(["server", "--port=1"])
    thread = pt.TrackDescriptor()
    thread.thread.pid, thread.thread.tid, thread.thread.thread_name = 10, 11, "worker"
    packets = [_first(), _track(1, process=proc.process), _track(2, thread=thread.thread),
               _event(100, INSTANT, track=2), _event(200, INSTANT, track=1)]
    trace = _write(tmp_path / "t.pb", packets)
    # utid 0 / upid 0: the rows trace_processor reserves at startup (the idle swapper); the process comes with
    # its main thread (tid = pid, unnamed); the descriptor's cmdline is not stored
    threads = "select utid, tid, coalesce(name, '-'), upid, is_main_thread, is_idle from thread order by utid"
    assert _rows(trace, threads) == [(0, 0, "-", 0, 1, 1), (1, 10, "-", 1, 1, 0), (2, 11, "worker", 1, 0, 0)]
    assert _rows(trace, "select upid, pid, coalesce(name, '-'), coalesce(cmdline, '-') from process order by upid") == [
        (0, 0, "-", "-"), (1, 10, "server", "-")]
    assert _rows(trace, "select t.utid, s.ts from thread_track t join slice s on s.track_id = t.id") == [(2, 100)]
    assert _rows(trace, "select p.upid, s.ts from process_track p join slice s on s.track_id = p.id") == [(1, 200)]
    # trace_processor types and names such tracks its own way: the track rows are refused, not guessed
    assert read_tables(trace).stats["unsupported_thread_or_process_tracks"] == 2
    stats = dict(_rows(trace, "select name, value from stats"))
    assert stats["unsupported_thread_or_process_tracks"] == 2
    json.dumps(stats)  # (plain values)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_events_without_a_type_or_of_an_unknown_type_are_parser_errors_off_thread_tracks(tmp_path, scanner):
    # TrackEventEventImporter: "TrackEvent without type or phase", and an unknown type is a "raw legacy
    # event without thread association" on a global track: both dropped, counted in track_event_parser_errors
    thread = pt.TrackDescriptor()
    thread.thread.pid, thread.thread.tid = 10, 11
    packets = [_first(), _track(7, "plain"), _track(8, thread=thread.thread)]
    packets += [_event(100 + i, TE.TYPE_UNSPECIFIED, track=7) for i in range(RUN)]

    def unknown_type(ts, track):  # (type 9: protobuf's Python classes refuse to set an unknown enum value)
        p = pt.TracePacket(trusted_packet_sequence_id=1, timestamp=ts)
        p.track_event.MergeFromString(pt.TrackEvent(track_uuid=track, name="u").SerializeToString() + b"\x48\x09")
        return p

    packets += [unknown_type(200 + i, 7) for i in range(RUN)]
    packets += [unknown_type(300, 8), _event(400, INSTANT, track=7)]  # (on a thread's track: its raw table)
    t = read_tables(_write(tmp_path / "t.pb", packets), scanner=scanner)
    assert t.stats["track_event_parser_errors"] == 2 * RUN
    assert not [k for k in t.stats if k.startswith("unsupported")]
    assert t.slice_ts.tolist() == [400]
