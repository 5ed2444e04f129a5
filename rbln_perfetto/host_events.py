"""Host events (tokenization, scheduler steps, ...) encoded as slices on the aggregate's sequence.

They go on device 0's Host track, only in the aggregate. An event that starts after the previous
packet of the sequence is stamped on the incremental clock; one before anything on that clock, or
out of order, gets absolute BOOTTIME stamps.
"""

from __future__ import annotations

from .interning import Interner, annotation_string, interned_entry
from .proto_bytes import (
    CLOCK_BOOTTIME,
    SEQ_NEEDS_STATE,
    SEQUENCE_ID,
    SLICE_BEGIN,
    SLICE_END,
    FieldNumber,
    f_bytes,
    f_varint,
)


def host_event_packets(interner: Interner, track: int, name: str, start: int, end: int, detail: str, *,
                       clock: int | None, boot_offset: int) -> tuple[bytes, int | None]:
    """The begin and end packets of one host event on `track`, and the incremental clock after them.

    `clock`: the incremental clock's value after the sequence's last packet (None before any);
    `boot_offset`: BOOTTIME - MONOTONIC, for absolute stamps. The event's name and `detail` are
    interned on first use.
    """
    interned = b""
    if name not in interner.names:
        interned += interned_entry(FieldNumber.INTERNED_EVENT_NAMES, interner.name(name), name.encode(),
                                   FieldNumber.INTERNED_NAME)
    args = b""
    if detail:
        if detail not in interner.strings:
            interned += interned_entry(FieldNumber.INTERNED_STRINGS, interner.string(detail), detail.encode(),
                                       FieldNumber.INTERNED_STRING)
        args = annotation_string("detail", interner.string(detail))
    begin = (f_varint(FieldNumber.EVENT_TYPE, SLICE_BEGIN) + f_varint(FieldNumber.TRACK_UUID, track)
             + f_varint(FieldNumber.NAME_IID, interner.name(name)) + args)
    end_event = f_varint(FieldNumber.EVENT_TYPE, SLICE_END) + f_varint(FieldNumber.TRACK_UUID, track)
    if clock is not None and start >= clock:
        stamps = [f_varint(FieldNumber.TIMESTAMP, start - clock), f_varint(FieldNumber.TIMESTAMP, end - start)]
        clock = end
    else:
        # Before anything on the incremental clock, or out of order: absolute BOOTTIME stamps.
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
