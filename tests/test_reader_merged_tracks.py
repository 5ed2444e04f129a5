"""Sibling tracks trace_processor merges (same parent, same name, the default SIBLING_MERGE_BEHAVIOR_BY_TRACK_NAME),
placed as its TrackCompressor places them (each track uuid a "cookie": the set's track it holds, else the
first with no slice open, else a new one; a child's parent_id is its merged parent's first track), and flows
between slices ordered as its FlowTracker orders them; each case built from real protobuf packets and read
through the embedded backend on both of the reader's paths."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from rbln_perfetto.query import open_trace
from rbln_perfetto.reader import read_tables, scanner_available

TE = pt.TrackEvent
BEGIN, END, INSTANT = TE.TYPE_SLICE_BEGIN, TE.TYPE_SLICE_END, TE.TYPE_INSTANT
SCANNERS = ["auto", None] if scanner_available() else [None]


def _write(path: Path, packets: list) -> Path:
    t = pt.Trace()
    t.packet.extend([pt.TracePacket(trusted_packet_sequence_id=1,
                                    sequence_flags=pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED)] + packets)
    path.write_bytes(t.SerializeToString())
    return path


def _event(ts: int, kind: int, track: int, name: str | None = None) -> pt.TracePacket:
    p = pt.TracePacket(trusted_packet_sequence_id=1, timestamp=ts)
    p.track_event.type, p.track_event.track_uuid = kind, track
    if name is not None:
        p.track_event.name = name
    return p


def _track(uuid: int, name: str | None = None, parent: int | None = None, merge=None) -> pt.TracePacket:
    p = pt.TracePacket(trusted_packet_sequence_id=1)
    p.track_descriptor.uuid = uuid
    if name is not None:
        p.track_descriptor.name = name
    if parent is not None:
        p.track_descriptor.parent_uuid = parent
    if merge is not None:
        p.track_descriptor.sibling_merge_behavior = merge
    return p


def _rows(path: Path, sql: str, scanner) -> list[tuple]:
    """Rows of `sql`, after checking the reader's two paths agree on the slices' tracks."""
    tables = [read_tables(path, scanner=s) for s in SCANNERS]
    assert len({tuple(t.slice_track.tolist()) for t in tables}) == 1
    assert not [k for k in tables[0].stats if k.startswith("unsupported")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_trace(path, backend="sqlite") as tr:
            frame = tr.query(sql)
    return [tuple(row) for row in frame.itertuples(index=False)]


SLICES = "select ts, dur, track_id, name from slice order by id"
TRACKS = "select id, name, type, coalesce(parent_id, -1) from track order by id"  # (-1: none)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_tracks_of_one_name_share_a_track_while_their_slices_do_not_overlap(tmp_path, scanner):
    # uuids 1 and 2 have no descriptor: each is named by its first event, "a" both
    trace = _write(tmp_path / "t.pb", [_event(10, INSTANT, 1, "a"), _event(20, INSTANT, 2, "a"),
                                       _event(30, INSTANT, 1, "b")])
    assert _rows(trace, SLICES, scanner) == [(10, 0, 0, "a"), (20, 0, 0, "a"), (30, 0, 0, "b")]
    assert _rows(trace, TRACKS, scanner) == [(0, "a", "global_merged_track_event", -1)]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_an_overlapping_slice_gets_the_next_track_which_its_uuid_then_holds(tmp_path, scanner):
    packets = [_event(10, BEGIN, 1, "a"), _event(20, BEGIN, 2, "a"), _event(30, END, 1), _event(40, END, 2),
               _event(50, INSTANT, 2, "x"), _event(60, INSTANT, 1, "y")]
    trace = _write(tmp_path / "t.pb", packets)
    assert _rows(trace, SLICES, scanner) == [(10, 20, 0, "a"), (20, 20, 1, "a"), (50, 0, 1, "x"), (60, 0, 0, "y")]
    assert _rows(trace, TRACKS, scanner) == [(0, "a", "global_merged_track_event", -1),
                                             (1, "a", "global_merged_track_event", -1)]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_a_uuid_whose_track_was_taken_over_gets_a_new_one_even_for_an_end(tmp_path, scanner):
    # 2 takes over the free track 1 held; 1's END then finds no free track: a new (empty) one
    packets = [_event(5, INSTANT, 1, "a"), _event(10, BEGIN, 2, "a"), _event(20, END, 1), _event(30, END, 2)]
    trace = _write(tmp_path / "t.pb", packets)
    assert _rows(trace, SLICES, scanner) == [(5, 0, 0, "a"), (10, 20, 0, "a")]
    assert _rows(trace, TRACKS, scanner) == [(0, "a", "global_merged_track_event", -1),
                                             (1, "a", "global_merged_track_event", -1)]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_named_siblings_merge_under_their_parent_unless_a_descriptor_says_none(tmp_path, scanner):
    none = pt.TrackDescriptor.SIBLING_MERGE_BEHAVIOR_NONE
    packets = [_track(100, "root"), _track(1, "T", parent=100), _track(2, "T", parent=100),
               _track(3, "T", parent=100, merge=none), _track(4, "T", parent=200),
               _track(200, "other"),
               _event(10, INSTANT, 1, "i"), _event(20, INSTANT, 2, "j"), _event(30, INSTANT, 3, "k"),
               _event(40, INSTANT, 4, "l")]
    trace = _write(tmp_path / "t.pb", packets)
    assert _rows(trace, SLICES, scanner) == [(10, 0, 1, "i"), (20, 0, 1, "j"), (30, 0, 2, "k"), (40, 0, 4, "l")]
    assert _rows(trace, TRACKS, scanner) == [
        (0, "root", "global_merged_track_event", -1), (1, "T", "global_merged_track_event", 0),
        (2, "T", "global_track_event", 0), (3, "other", "global_merged_track_event", -1),
        (4, "T", "global_merged_track_event", 3)]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_a_child_of_a_merged_parent_hangs_under_the_sets_first_track(tmp_path, scanner):
    # 1 and 2 are both "G" at the root; 3 is 2's child, yet its parent_id is the track 1's event made
    packets = [_track(1, "G"), _track(2, "G"), _track(3, "c", parent=2),
               _event(10, BEGIN, 1, "g1"), _event(20, BEGIN, 3, "c1"), _event(25, INSTANT, 2, "g2"),
               _event(30, END, 3), _event(40, END, 1)]
    trace = _write(tmp_path / "t.pb", packets)
    assert _rows(trace, TRACKS, scanner) == [(0, "G", "global_merged_track_event", -1),
                                             (1, "c", "global_merged_track_event", 0),
                                             (2, "G", "global_merged_track_event", -1)]
    assert _rows(trace, SLICES, scanner) == [(10, 30, 0, "g1"), (20, 10, 1, "c1"), (25, 0, 2, "g2")]


@pytest.mark.parametrize("scanner", SCANNERS)
def test_a_flow_an_end_carries_into_an_earlier_slice_goes_from_that_slice(tmp_path, scanner):
    # FlowTracker::End links the flow's last slice (b, at 20) and the slice the END ends (a, at 10): the one
    # that began first is slice_out
    begin_b = _event(20, BEGIN, 2, "b")
    begin_b.track_event.flow_ids.append(7)
    end_a = _event(30, END, 1)
    end_a.track_event.terminating_flow_ids.append(7)
    packets = [_track(1, "A"), _track(2, "B"), _event(10, BEGIN, 1, "a"), begin_b, end_a, _event(40, END, 2)]
    trace = _write(tmp_path / "t.pb", packets)
    flows = ("select s.name as out_name, t.name as in_name from flow f join slice s on s.id = f.slice_out "
             "join slice t on t.id = f.slice_in")
    assert _rows(trace, flows, scanner) == [("a", "b")]
