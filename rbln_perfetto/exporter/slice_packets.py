"""The begin and end TracePackets of one slice that is not part of a program template.

Every such slice is framed here, in one of two ways, by where its packets go:

- `incremental_slice_packets`: on the export's sequence between the invocations (host events, user
  ranges, untraced stretches, rank transfers). Stamped on the sequence's incremental clock when the
  slice starts after the sequence's last packet; before anything on that clock, or out of order (a
  range is recorded when it ends, after the ranges nested in it), on absolute BOOTTIME, and
  trace_processor's sort puts it in place. Its name may be interned, with its interned data on the
  begin packet.
- `boottime_slice_packets`: self-contained, on absolute BOOTTIME, so it may come anywhere in a file
  (the Run slice, `provenance`) or on a sequence of its own (the critical-path overlay, `analysis`).

The two lay out their fields differently (the first in the order the export streams them, the second
as the protobuf library serializes a message); both layouts are in written traces, which keep their bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..proto_bytes import (
    CLOCK_BOOTTIME,
    SEQ_NEEDS_STATE,
    SEQUENCE_ID,
    SLICE_BEGIN,
    SLICE_END,
    FieldNumber,
    f_bytes,
    f_varint,
)


def annotation(name: str, value: str | int | float) -> pt.DebugAnnotation:
    """A slice arg named `name`: a string, double or integer value by the type of `value`."""
    if isinstance(value, str):
        return pt.DebugAnnotation(name=name, string_value=value)
    if isinstance(value, float):
        return pt.DebugAnnotation(name=name, double_value=value)
    return pt.DebugAnnotation(name=name, int_value=int(value))


def incremental_slice_packets(track: int, start: int, end: int, *, name: str | None = None,
                              name_iid: int | None = None, annotations: Iterable[pt.DebugAnnotation | bytes] = (),
                              interned: bytes = b"", clock: int | None, boot_offset: int) -> tuple[bytes, int | None]:
    """The begin and end packets of one slice on `track` over [start, end] (CLOCK_MONOTONIC) on the
    export's sequence, and the incremental clock after them.

    The slice is named inline (`name`) or by an interned name (`name_iid`, with `interned`: the
    InternedData the begin packet carries, if the name or an arg's string is new). `annotations`:
    its args, messages or already encoded (`interning.annotation_string`). `clock`: the incremental
    clock's value after the sequence's last packet (None before any); `boot_offset`: BOOTTIME -
    MONOTONIC, for absolute stamps.
    """
    fields = (f_varint(FieldNumber.NAME_IID, name_iid) if name is None
              else f_bytes(FieldNumber.NAME, name.encode()))
    for a in annotations:
        fields += a if isinstance(a, bytes) else f_bytes(FieldNumber.DEBUG_ANNOTATIONS, a.SerializeToString())
    begin = f_varint(FieldNumber.EVENT_TYPE, SLICE_BEGIN) + f_varint(FieldNumber.TRACK_UUID, track) + fields
    end_event = f_varint(FieldNumber.EVENT_TYPE, SLICE_END) + f_varint(FieldNumber.TRACK_UUID, track)
    if clock is not None and start >= clock:
        stamps = [f_varint(FieldNumber.TIMESTAMP, start - clock), f_varint(FieldNumber.TIMESTAMP, end - start)]
        clock = end
    else:
        clock_id = f_varint(FieldNumber.TIMESTAMP_CLOCK_ID, CLOCK_BOOTTIME)
        stamps = [f_varint(FieldNumber.TIMESTAMP, start + boot_offset) + clock_id,
                  f_varint(FieldNumber.TIMESTAMP, end + boot_offset) + clock_id]
    out = b""
    for stamp, event, extra in ((stamps[0], begin, interned), (stamps[1], end_event, b"")):
        body = (stamp + f_varint(FieldNumber.SEQUENCE_ID, SEQUENCE_ID) + f_bytes(FieldNumber.TRACK_EVENT, event)
                + (f_bytes(FieldNumber.INTERNED_DATA, extra) if extra else b"")
                + f_varint(FieldNumber.SEQUENCE_FLAGS, SEQ_NEEDS_STATE))
        out += f_bytes(FieldNumber.TRACE_PACKET, body)
    return out, clock


def boottime_slice_packets(track: int, name: str, start: int, end: int,
                           annotations: Iterable[pt.DebugAnnotation] = (), *, sequence_id: int = SEQUENCE_ID,
                           sequence_flags: int = 0) -> bytes:
    """The begin and end packets of one slice on `track` named `name` (inline) over [start, end]
    (BOOTTIME), with `annotations` as its args, on sequence `sequence_id`. `sequence_flags`: those
    of both packets (none by default: the slice needs no interned state)."""
    begin = pt.TrackEvent(type=SLICE_BEGIN, track_uuid=track, name=name, debug_annotations=annotations)
    end_event = pt.TrackEvent(type=SLICE_END, track_uuid=track)
    out = b""
    for ts, event in ((start, begin), (end, end_event)):
        packet = pt.TracePacket(timestamp=ts, timestamp_clock_id=CLOCK_BOOTTIME, trusted_packet_sequence_id=sequence_id,
                                track_event=event)
        if sequence_flags:
            packet.sequence_flags = sequence_flags
        out += f_bytes(FieldNumber.TRACE_PACKET, packet.SerializeToString())
    return out
