"""TrackEvent times as trace_processor v58.2 resolves them, where they overflow int64 or are missing, each
case built from real protobuf packets and read on both of the reader's paths (the C scanner's column-wise
runs, and protobuf a packet at a time).

What Perfetto's sources do (and what the embedded reader now does alike):
- clocks from clock snapshots (`unit_multiplier_ns`, incremental clocks): ClockSynchronizer's
  `ClockDomain::ToNs` multiplies and sums in plain int64, with no overflow check, so a time past int64
  wraps; one that wraps negative is dropped and counted in `track_event_invalid_timestamp`, one that wraps
  back into range is kept at its wrapped time (the oracle's traces 0750 and 0052 show v58.2 keeping those);
- the legacy `TrackEvent.timestamp_absolute_us`: `ts_absolute_us * 1000` (int64, wraps), then converted from
  MONOTONIC when a snapshot links it (kept as it is otherwise, the failed conversion counted in
  `clock_sync_failure_unknown_source_clock`), negative ones dropped as above;
- the legacy `timestamp_delta_us`: only valid after a ThreadDescriptor on the sequence (which the embedded
  reader refuses); without one the event is skipped
  (`track_event_skipped_timestamp_delta_without_valid_state`), never kept at time 0;
- a TrackEvent packet with no timestamp at all: dropped, `track_event_missing_timestamp`."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from rbln_perfetto.query import open_trace
from rbln_perfetto.reader import read_tables, scanner_available

TE = pt.TrackEvent
INSTANT = TE.TYPE_INSTANT
BOOTTIME, MONOTONIC = pt.BUILTIN_CLOCK_BOOTTIME, pt.BUILTIN_CLOCK_MONOTONIC
SCANNERS = ["auto", None] if scanner_available() else [None]
RUN = 10  # events in a row, so that the scanner's column-wise path would take them


def _int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


def _write(path: Path, packets: list) -> Path:
    t = pt.Trace()
    t.packet.extend(packets)
    path.write_bytes(t.SerializeToString())
    return path


def _first() -> pt.TracePacket:
    return pt.TracePacket(trusted_packet_sequence_id=1, sequence_flags=pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED)


def _event(name: str, ts: int | None = None, **legacy) -> pt.TracePacket:
    p = pt.TracePacket(trusted_packet_sequence_id=1)
    if ts is not None:
        p.timestamp = ts
    p.track_event.type = INSTANT
    p.track_event.name = name
    for key, value in legacy.items():
        setattr(p.track_event, key, value)
    return p


def _snapshot(boottime: int, monotonic: int) -> pt.TracePacket:
    p = _first()
    p.clock_snapshot.clocks.add(clock_id=BOOTTIME, timestamp=boottime)
    p.clock_snapshot.clocks.add(clock_id=MONOTONIC, timestamp=monotonic)
    return p


def _query(path: Path, sql: str) -> tuple[list, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_trace(path, backend="sqlite") as tr:
            rows = [tuple(r) for r in tr.query(sql).itertuples(index=False)]
    return rows, [str(w.message) for w in caught]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_absolute_microsecond_timestamps_wrap_in_int64_and_negative_ones_are_dropped(tmp_path, scanner):
    # MONOTONIC runs 500 ns behind BOOTTIME. In ns, in int64: 2**62 us is 0 and 2**61 + 7 us is 7000 (kept,
    # wrapped); 9223372036854776 us passes 2**63 - 1 and 2**60 + 1 us is -2**63 + 1000 (both dropped)
    times = [1000 + i for i in range(RUN)] + [2**62, 9223372036854776, 2**61 + 7, 2**60 + 1]
    trace = _write(tmp_path / "t.pb", [_snapshot(10**9 + 500, 10**9)] +
                   [_event(f"e{i}", ts=5, timestamp_absolute_us=us) for i, us in enumerate(times)])
    t = read_tables(trace, scanner=scanner)
    ns = [_int64(us * 1000) for us in times]
    kept = sorted(v + 500 for v in ns if v + 500 >= 0)  # (the packet's own timestamp, 5, is not used)
    assert t.slice_ts.tolist() == kept
    assert t.stats["track_event_invalid_timestamp"] == sum(v + 500 < 0 for v in ns) == 2
    rows, warned = _query(trace, "select name, value from stats where name like 'track_event%'")
    assert rows == [("track_event_invalid_timestamp", 2)]
    assert any("track_event_invalid_timestamp" in w for w in warned)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_absolute_microsecond_timestamps_without_a_monotonic_snapshot_are_kept_unconverted(tmp_path, scanner):
    trace = _write(tmp_path / "t.pb", [_first()] + [_event(f"e{i}", timestamp_absolute_us=7 + i) for i in range(RUN)])
    t = read_tables(trace, scanner=scanner)
    assert t.slice_ts.tolist() == [(7 + i) * 1000 for i in range(RUN)]
    assert t.stats["clock_sync_failure_unknown_source_clock"] == RUN  # each failed conversion, as trace_processor


@pytest.mark.parametrize("scanner", SCANNERS)
def test_delta_microsecond_timestamps_without_a_thread_descriptor_are_skipped_not_kept_at_zero(tmp_path, scanner):
    deltas = [10, 2**62, 2**62, 5] + [1] * (RUN - 4)  # (the running sum would pass int64)
    packets = [_first()] + [_event(f"d{i}", timestamp_delta_us=d) for i, d in enumerate(deltas)]
    packets.append(_event("plain", ts=300))
    trace = _write(tmp_path / "t.pb", packets)
    t = read_tables(trace, scanner=scanner)
    assert t.slice_ts.tolist() == [300]
    assert t.stats["track_event_skipped_timestamp_delta_without_valid_state"] == RUN
    rows, _ = _query(trace, "select name, value, severity from stats")
    assert rows == [("track_event_skipped_timestamp_delta_without_valid_state", RUN, "info")]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_a_thread_descriptor_for_delta_timestamps_is_refused(tmp_path, scanner):
    td = _first()
    td.thread_descriptor.pid, td.thread_descriptor.tid, td.thread_descriptor.reference_timestamp_us = 1, 2, 1000
    trace = _write(tmp_path / "t.pb", [td, _event("d", timestamp_delta_us=5), _event("plain", ts=10)])
    rows, warned = _query(trace, "select name, value from stats where name like 'unsupported%'")
    assert rows == [("unsupported_packet_field:thread_descriptor", 1)]
    assert any("thread_descriptor" in w and "\n" not in w for w in warned)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_track_events_without_a_timestamp_are_dropped_and_counted(tmp_path, scanner):
    packets = [_first()] + [_event(f"n{i}") for i in range(RUN)] + [_event(f"t{i}", ts=100 + i) for i in range(RUN)]
    trace = _write(tmp_path / "t.pb", packets)
    t = read_tables(trace, scanner=scanner)
    assert t.slice_ts.tolist() == [100 + i for i in range(RUN)]
    assert t.stats["track_event_missing_timestamp"] == RUN
    rows, warned = _query(trace, "select count(*) from slice where ts = 0")
    assert rows == [(0,)]
    assert any("track_event_missing_timestamp" in w for w in warned)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_an_explicit_zero_timestamp_is_a_timestamp(tmp_path, scanner):
    trace = _write(tmp_path / "t.pb", [_first()] + [_event(f"z{i}", ts=0) for i in range(RUN)])
    t = read_tables(trace, scanner=scanner)
    assert t.slice_ts.tolist() == [0] * RUN
    assert "track_event_missing_timestamp" not in t.stats


# ---------------------------------------------------------------- clock snapshots after their events


def _on_clock(name: str, ts: int, clock: int, **fields) -> pt.TracePacket:
    p = _event(name, ts=ts)
    p.timestamp_clock_id = clock
    for key, value in fields.items():
        setattr(p.track_event, key, value)
    return p


@pytest.mark.parametrize("scanner", SCANNERS)
def test_events_before_their_clocks_snapshot_are_converted_at_the_end_of_the_file(tmp_path, scanner):
    # trace_processor defers them (eof_deferred_packets_) and converts them through every snapshot
    packets = [_first()] + [_on_clock(f"e{i}", 1000 + 10 * i, MONOTONIC) for i in range(RUN)]
    packets += [_event("boot", ts=50), _snapshot(1300, 1000), _snapshot(5100, 1050)]  # 300 ahead, then 4050
    t = read_tables(_write(tmp_path / "t.pb", packets), scanner=scanner)
    want = sorted([50] + [1000 + 10 * i + (4050 if 1000 + 10 * i >= 1050 else 300) for i in range(RUN)])
    assert t.slice_ts.tolist() == want
    assert not dict(t.stats)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_a_deferred_event_reads_its_sequences_state_at_the_end_of_the_file(tmp_path, scanner):
    # its interned name is looked up in the sequence's state when it is tokenized: at the end of the file
    early = _on_clock("x", 1000, MONOTONIC)
    early.track_event.ClearField("name")
    early.track_event.name_iid = 1
    first, again = _first(), _first()
    first.interned_data.event_names.add(iid=1, name="old")
    again.interned_data.event_names.add(iid=1, name="new")
    snapshot = _snapshot(1300, 1000)
    snapshot.trusted_packet_sequence_id = 2  # (not clearing sequence 1 again)
    trace = _write(tmp_path / "t.pb", [first, early, again, snapshot])
    t = read_tables(trace, scanner=scanner)
    assert t.slice_ts.tolist() == [1300]
    assert t.slice_name == ["new"]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_events_whose_clock_no_snapshot_ever_links_are_dropped_and_counted(tmp_path, scanner):
    packets = [_first()] + [_on_clock(f"e{i}", 1000 + i, MONOTONIC) for i in range(RUN)] + [_event("b", ts=5)]
    t = read_tables(_write(tmp_path / "t.pb", packets), scanner=scanner)
    assert t.slice_ts.tolist() == [5]
    assert t.stats["clock_sync_failure_unknown_source_clock"] == RUN  # (once each, at the end of the file)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_streaming_profile_packets_are_refused_with_a_warning(tmp_path, scanner):
    # their delta-encoded timestamps (and the legacy sequence time they advance) are not read: refused, even on
    # a packet that also carries sequence flags
    p = _first()
    p.streaming_profile_packet.callstack_iid.append(1)
    p.streaming_profile_packet.timestamp_delta_us.append(2**62)
    trace = _write(tmp_path / "t.pb", [p, _event("plain", ts=10)])
    rows, warned = _query(trace, "select name, value from stats where name like 'unsupported%'")
    assert rows == [("unsupported_packet_field:streaming_profile_packet", 1)]
    assert any("streaming_profile_packet" in w and "\n" not in w for w in warned)
