"""Host-time slices on the aggregate's sequence: host events, user ranges, untraced stretches and
tensors that crossed processes.

Host events (tokenization, scheduler steps, ...) go on device 0's Host track; user ranges
(`rbln_perfetto.range`) on device 0's Ranges track, which the aggregate gets only when the capture
holds ranges; a stretch that ran untraced (`profile(steps=...)`) as one slice "not traced: steps 0-9"
on its device's Workload track; a send or recv to another rank (a run split across processes) on its
device's DMA track, with the `flow_key` that `merge` pairs across ranks. All are only in the aggregate. A slice that starts after the previous packet of the
sequence is stamped on the incremental clock; one before anything on that clock, or out of order
(a range is recorded when it ends, after the ranges nested in it), gets absolute BOOTTIME stamps,
and trace_processor's sort puts it in place.
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from .interning import Interner, annotation_string, interned_entry
from ..naming import rank_transfer_slice_name, untraced_slice_name
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
from .tracks import CHILDREN, TrackIds

RANGES_TRACK_NAME = "Ranges"
# The first uuid after the device's own children; ranked before them, so it is drawn on top.
RANGES_TRACK = TrackIds.device(0) + len(CHILDREN) + 1
RANGES_RANK = -1


def _slice_packets(track: int, fields: bytes, start: int, end: int, interned: bytes, *, clock: int | None,
                   boot_offset: int) -> tuple[bytes, int | None]:
    """The begin (with `fields` after its type and track, and `interned` data) and end packets of one
    slice on `track`, and the incremental clock after them."""
    begin = f_varint(FieldNumber.EVENT_TYPE, SLICE_BEGIN) + f_varint(FieldNumber.TRACK_UUID, track) + fields
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
    return _slice_packets(track, f_varint(FieldNumber.NAME_IID, interner.name(name)) + args, start, end, interned,
                          clock=clock, boot_offset=boot_offset)


def range_packets(user_range, *, clock: int | None, boot_offset: int) -> tuple[bytes, int | None]:
    """The begin and end packets of one user range (a capture `UserRange`) on the Ranges track, and
    the incremental clock after them. Its name and args are written inline, not interned: ranges are
    few, and a user's name may be any string, also one the export interns for another slice later."""
    fields = f_bytes(FieldNumber.NAME, user_range.name.encode())
    for arg in user_range.args:
        kind = arg.WhichOneof("value")
        if kind is not None:
            annotation = pt.DebugAnnotation(name=arg.name, **{kind: getattr(arg, kind)})
            fields += f_bytes(FieldNumber.DEBUG_ANNOTATIONS, annotation.SerializeToString())
    return _slice_packets(RANGES_TRACK, fields, user_range.start_ns, user_range.end_ns, b"", clock=clock,
                          boot_offset=boot_offset)


def untraced_packets(tracks: TrackIds, stretch, *, clock: int | None, boot_offset: int) -> tuple[bytes, int | None]:
    """The begin and end packets of the slice over one untraced stretch (a capture `Untraced`) on its
    device's Workload track, and the incremental clock after them. Named and annotated inline: there
    are few. Its args say what it covers: `untraced` (steps or calls), `first`, `last`, and the
    submodule calls it holds (`first_sequence_index`, `invocations`)."""
    fields = f_bytes(FieldNumber.NAME, untraced_slice_name(stretch.unit, stretch.first, stretch.last).encode())
    for annotation in (pt.DebugAnnotation(name="untraced", string_value=stretch.unit),
                       pt.DebugAnnotation(name="first", int_value=stretch.first),
                       pt.DebugAnnotation(name="last", int_value=stretch.last),
                       pt.DebugAnnotation(name="first_sequence_index", int_value=stretch.first_sequence_index),
                       pt.DebugAnnotation(name="invocations", int_value=stretch.invocations)):
        fields += f_bytes(FieldNumber.DEBUG_ANNOTATIONS, annotation.SerializeToString())
    return _slice_packets(tracks.workload(stretch.device), fields, stretch.start_ns, stretch.end_ns, b"", clock=clock,
                          boot_offset=boot_offset)


TRANSFER_FLOW_KEY = "flow_key"  # the arg pairing a send with its recv (`rbln_perfetto.exporter.merge`)


def transfer_packets(tracks: TrackIds, transfer, *, clock: int | None, boot_offset: int) -> tuple[bytes, int | None]:
    """The begin and end packets of one transfer to or from another rank (a capture `RankTransfer`) on
    its device's DMA track, and the incremental clock after them. Named and annotated inline (few):
    `transfer` (send or recv), `peer_rank`, `submodule`, `tensors`, `bytes`, `flow_key`."""
    fields = f_bytes(FieldNumber.NAME, rank_transfer_slice_name(transfer.direction, transfer.submodule,
                                                                transfer.peer).encode())
    for annotation in (pt.DebugAnnotation(name="transfer", string_value=transfer.direction),
                       pt.DebugAnnotation(name="peer_rank", int_value=transfer.peer),
                       pt.DebugAnnotation(name="submodule", string_value=transfer.submodule),
                       pt.DebugAnnotation(name="tensors", string_value=", ".join(transfer.tensors)),
                       pt.DebugAnnotation(name="bytes", int_value=transfer.bytes),
                       pt.DebugAnnotation(name=TRANSFER_FLOW_KEY, int_value=transfer.flow)):
        fields += f_bytes(FieldNumber.DEBUG_ANNOTATIONS, annotation.SerializeToString())
    return _slice_packets(tracks.dma(transfer.device), fields, transfer.start_ns, transfer.end_ns, b"", clock=clock,
                          boot_offset=boot_offset)


def ranges_track_packet(with_device_0: bool) -> bytes:
    """The Ranges track's descriptor: under device 0, or at the top level when the capture has no
    device 0 (a profiled block with ranges but no pipeline call)."""
    desc = pt.TrackDescriptor(uuid=RANGES_TRACK, name=RANGES_TRACK_NAME, sibling_order_rank=RANGES_RANK,
                              description="rbln_perfetto.range() blocks of the profiled code: host time, nested "
                                          "as the code nests, with their args")
    if with_device_0:
        desc.parent_uuid = TrackIds.device(0)
    packet = pt.TracePacket(trusted_packet_sequence_id=SEQUENCE_ID, track_descriptor=desc)
    return f_bytes(FieldNumber.TRACE_PACKET, packet.SerializeToString())
