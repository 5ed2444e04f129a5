"""The traces of tests/data/tp_corpus/: one per difference the differential test found between the
embedded backend and trace_processor, written with Perfetto's protos. `python tests/tp_corpus_cases.py`
(with RBLN_PERFETTO_TP_BIN set) rewrites each `<case>.pb` and the rows trace_processor gave, `<case>.json`."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

TE = pt.TrackEvent
BEGIN, END, INSTANT, COUNTER = TE.TYPE_SLICE_BEGIN, TE.TYPE_SLICE_END, TE.TYPE_INSTANT, TE.TYPE_COUNTER
CLEARED = pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
Clock = pt.ClockSnapshot.Clock


def _track(uuid, **fields):
    return pt.TracePacket(trusted_packet_sequence_id=9, track_descriptor=pt.TrackDescriptor(uuid=uuid, **fields))


def _event(ts, clock=None, **fields):
    p = pt.TracePacket(timestamp=ts, trusted_packet_sequence_id=1, track_event=TE(**fields))
    if clock is not None:
        p.timestamp_clock_id = clock
    return p


_START = pt.TracePacket(trusted_packet_sequence_id=1, sequence_flags=CLEARED)

CASES = {
    # An event without a name has a NULL name (an iid that was never interned too); "" stays "".
    "event_without_name": [
        _track(1, name="t"), _START, _event(10, track_uuid=1, type=INSTANT), _event(20, track_uuid=1, type=INSTANT, name_iid=3),
        _event(30, track_uuid=1, type=INSTANT, name=""), _event(40, track_uuid=1, type=BEGIN), _event(50, track_uuid=1, type=END)],
    # Counter events on no track, on a slice track or on an undeclared track are dropped and counted.
    "counter_without_counter_track": [
        _track(1, name="c", counter=pt.CounterDescriptor()), _track(2, name="s"), _START,
        _event(10, track_uuid=1, type=COUNTER, counter_value=1), _event(20, track_uuid=5, type=COUNTER, counter_value=3),
        _event(30, track_uuid=2, type=COUNTER, counter_value=3), _event(40, type=COUNTER, counter_value=4),
        _event(50, track_uuid=2, type=INSTANT, name="i")],
    # Counter tracks with a unit multiplier, and incremental ones (summed on the sequence).
    "counter_incremental_and_multiplied": [
        _track(1, name="inc", counter=pt.CounterDescriptor(is_incremental=True)),
        _track(2, name="mul", counter=pt.CounterDescriptor(unit_multiplier=1000)), _START,
        _event(10, track_uuid=1, type=COUNTER, counter_value=5), _event(20, track_uuid=1, type=COUNTER, double_counter_value=0.5),
        _event(30, track_uuid=2, type=COUNTER, counter_value=3), _event(40, track_uuid=1, type=COUNTER, counter_value=-2)],
    # Unnamed tracks take the name of their first event; one first used as a parent stays unnamed; a
    # re-sent descriptor keeps the first name, or the last under SIBLING_MERGE_BEHAVIOR_NONE.
    "track_names": [
        _track(1), _track(2, name="first"), _track(3), _track(4, parent_uuid=3, name="child"),
        _track(7, name="kept", sibling_merge_behavior=pt.TrackDescriptor.SIBLING_MERGE_BEHAVIOR_NONE), _START,
        _track(2, name="renamed"), _track(7, name="renamed"),
        _event(10, track_uuid=1, type=INSTANT, name="x"), _event(11, track_uuid=1, type=INSTANT, name="y"),
        _event(12, track_uuid=2, type=INSTANT, name="x"), _event(13, track_uuid=4, type=INSTANT, name="x"),
        _event(14, track_uuid=3, type=INSTANT, name="own"), _event(16, track_uuid=7, type=INSTANT, name="x"),
        _event(17, track_uuid=8, type=INSTANT, name="undeclared")],
    # Timestamps past int64, or that a delta or a clock offset takes past it: dropped and counted.
    "timestamp_overflow": [
        _track(1, name="t"), _START,
        pt.TracePacket(trusted_packet_sequence_id=1, clock_snapshot=pt.ClockSnapshot(clocks=[
            Clock(clock_id=6, timestamp=1000), Clock(clock_id=3, timestamp=10), Clock(clock_id=64, timestamp=10, is_incremental=True),
            Clock(clock_id=70, timestamp=10, unit_multiplier_ns=1000)])),
        _event(2**63, track_uuid=1, type=INSTANT, name="a"), _event(2**64 - 1, track_uuid=1, type=INSTANT, name="b"),
        _event(2**63 - 1, clock=3, track_uuid=1, type=INSTANT, name="c"), _event(5, clock=64, track_uuid=1, type=INSTANT, name="d"),
        _event(2**63 - 1, clock=64, track_uuid=1, type=INSTANT, name="e"), _event(5, clock=64, track_uuid=1, type=INSTANT, name="f"),
        _event(2**62, clock=70, track_uuid=1, type=INSTANT, name="g"), _event(2000, track_uuid=1, type=INSTANT, name="h")],
    # Debug annotation value types: uint and pointer keep their types; flat_key has no array index; an
    # annotation whose name iid was never interned is dropped.
    "annotation_types": [
        _track(1, name="t"), _START,
        _event(10, track_uuid=1, type=INSTANT, name="a", debug_annotations=[
            pt.DebugAnnotation(name="u", uint_value=5), pt.DebugAnnotation(name="big", uint_value=2**64 - 1),
            pt.DebugAnnotation(name="p", pointer_value=4096), pt.DebugAnnotation(name="i", int_value=-3),
            pt.DebugAnnotation(name="d", double_value=100.0), pt.DebugAnnotation(name="b", bool_value=True),
            pt.DebugAnnotation(name_iid=7, int_value=1),
            pt.DebugAnnotation(name="arr", array_values=[pt.DebugAnnotation(int_value=1), pt.DebugAnnotation(
                dict_entries=[pt.DebugAnnotation(name="k", string_value="v")])])])],
}


def write(folder, tp_bin: str) -> None:
    """Each case's trace and trace_processor's rows for it, into `folder`."""
    import json

    from tp_compare import tp_rows

    for name, packets in CASES.items():
        trace = folder / f"{name}.pb"
        trace.write_bytes(pt.Trace(packet=packets).SerializeToString())
        rows = tp_rows(trace, tp_bin)
        trace.with_suffix(".sql").unlink()
        (folder / f"{name}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    import os
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    write(Path(__file__).parent / "data" / "tp_corpus", os.environ["RBLN_PERFETTO_TP_BIN"])
