"""Host-time slices on the aggregate's sequence: host events, user ranges, untraced stretches and
tensors that crossed processes.

Host events (tokenization, scheduler steps, ...) go on device 0's Host track; user ranges
(`rbln_perfetto.range`) on device 0's Ranges track, which the aggregate gets only when the capture
holds ranges; a stretch that ran untraced (`profile(steps=...)`) as one slice "not traced: steps 0-9"
on its device's Workload track; a send or recv to another rank (a run split across processes) on its
device's DMA track, with the `flow_key` that `merge` pairs across ranks. All are only in the aggregate,
framed by `slice_packets.incremental_slice_packets` (which says how they are stamped).
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from .interning import Interner, annotation_string, interned_entry
from ..naming import rank_transfer_slice_name, untraced_slice_name
from ..proto_bytes import SEQUENCE_ID, FieldNumber, f_bytes
from .slice_packets import annotation, incremental_slice_packets
from .tracks import CHILDREN, TrackIds

RANGES_TRACK_NAME = "Ranges"
# The first uuid after the device's own children; ranked before them, so it is drawn on top.
RANGES_TRACK = TrackIds.device(0) + len(CHILDREN) + 1
RANGES_RANK = -1


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
    args = []
    if detail:
        if detail not in interner.strings:
            interned += interned_entry(FieldNumber.INTERNED_STRINGS, interner.string(detail), detail.encode(),
                                       FieldNumber.INTERNED_STRING)
        args.append(annotation_string("detail", interner.string(detail)))
    return incremental_slice_packets(track, start, end, name_iid=interner.name(name), annotations=args,
                                     interned=interned, clock=clock, boot_offset=boot_offset)


def range_packets(user_range, *, clock: int | None, boot_offset: int) -> tuple[bytes, int | None]:
    """The begin and end packets of one user range (a capture `UserRange`) on the Ranges track, and
    the incremental clock after them. Its name and args are written inline, not interned: ranges are
    few, and a user's name may be any string, also one the export interns for another slice later."""
    args = [pt.DebugAnnotation(name=arg.name, **{kind: getattr(arg, kind)})
            for arg in user_range.args if (kind := arg.WhichOneof("value")) is not None]
    return incremental_slice_packets(RANGES_TRACK, user_range.start_ns, user_range.end_ns, name=user_range.name,
                                     annotations=args, clock=clock, boot_offset=boot_offset)


def untraced_packets(tracks: TrackIds, stretch, *, clock: int | None, boot_offset: int) -> tuple[bytes, int | None]:
    """The begin and end packets of the slice over one untraced stretch (a capture `Untraced`) on its
    device's Workload track, and the incremental clock after them. Named and annotated inline: there
    are few. Its args say what it covers: `untraced` (steps or calls), `first`, `last`, and the
    submodule calls it holds (`first_sequence_index`, `invocations`)."""
    args = [annotation("untraced", stretch.unit), annotation("first", stretch.first),
            annotation("last", stretch.last), annotation("first_sequence_index", stretch.first_sequence_index),
            annotation("invocations", stretch.invocations)]
    return incremental_slice_packets(tracks.workload(stretch.device), stretch.start_ns, stretch.end_ns,
                                     name=untraced_slice_name(stretch.unit, stretch.first, stretch.last),
                                     annotations=args, clock=clock, boot_offset=boot_offset)


TRANSFER_FLOW_KEY = "flow_key"  # the arg pairing a send with its recv (`rbln_perfetto.exporter.merge`)


def transfer_packets(tracks: TrackIds, transfer, *, clock: int | None, boot_offset: int) -> tuple[bytes, int | None]:
    """The begin and end packets of one transfer to or from another rank (a capture `RankTransfer`) on
    its device's DMA track, and the incremental clock after them. Named and annotated inline (few):
    `transfer` (send or recv), `peer_rank`, `submodule`, `tensors`, `bytes`, `flow_key`."""
    args = [annotation("transfer", transfer.direction), annotation("peer_rank", transfer.peer),
            annotation("submodule", transfer.submodule), annotation("tensors", ", ".join(transfer.tensors)),
            annotation("bytes", transfer.bytes), annotation(TRANSFER_FLOW_KEY, transfer.flow)]
    name = rank_transfer_slice_name(transfer.direction, transfer.submodule, transfer.peer)
    return incremental_slice_packets(tracks.dma(transfer.device), transfer.start_ns, transfer.end_ns, name=name,
                                     annotations=args, clock=clock, boot_offset=boot_offset)


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
