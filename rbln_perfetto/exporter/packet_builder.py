"""Framed TracePackets with fixed-width slots: the byte-level builder under a program template.

A `PacketBuilder` appends packets on the export's sequence and remembers, for each slot (a
`proto_bytes.Slot`: a hole filled per invocation), its offset, and for each packet the tick whose
timestamp it carries. It is used once per program, on the export's critical path, so it does the
least per event: callers pass pre-joined static bytes and shared `Slot` objects, offsets are
computed arithmetically, and the hot events (a command's begin and end) have straight-line paths.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np

from ..proto_bytes import COUNTER, SEQ_NEEDS_STATE, SEQUENCE_ID, SLICE_END, FieldNumber, Slot, f_varint, tag, varint

INDEX_WIDTH = 3  # bytes of the slots that hold sequence and call indices: up to 2**21
INLINE_NAME_FIELD = FieldNumber.NAME  # TrackEvent.name, written inline

_ZEROS = [bytes(n) for n in range(16)]
_FRAME_TAG = tag(FieldNumber.TRACE_PACKET, 2)
_SEQ = f_varint(FieldNumber.SEQUENCE_ID, SEQUENCE_ID)
_FLAGS = f_varint(FieldNumber.SEQUENCE_FLAGS, SEQ_NEEDS_STATE)
_TE_TAG = tag(FieldNumber.TRACK_EVENT, 2)
_TS_TAG = tag(FieldNumber.TIMESTAMP, 0)
_END_FLOW_TAG = tag(FieldNumber.TERMINATING_FLOW_IDS, 1)
_DOUBLE_TAG = tag(FieldNumber.DOUBLE_COUNTER_VALUE, 1)
_DOUBLE = struct.Struct("<d")
FLOW_TAG = tag(FieldNumber.FLOW_IDS, 1)  # followed by a fixed64 flow id
INLINE_NAME_TAG = tag(INLINE_NAME_FIELD, 2)


@lru_cache(maxsize=None)
def event_head(kind: int, track: int) -> bytes:
    """The first fields of a TrackEvent: its type and its track."""
    return f_varint(FieldNumber.EVENT_TYPE, kind) + f_varint(FieldNumber.TRACK_UUID, track)


class PacketBuilder:
    """Packets under construction: their bytes, the slots inside them, the tick of each timestamp slot.

    `width` is the byte width of every timestamp slot; `digits` that of the sequence index written
    at the start of command slice names.
    """

    def __init__(self, width: int, digits: int):
        self.width = width
        self.digits = digits
        self.chunks: list[bytes] = []
        self.slots: list[tuple[int, str, int]] = []  # (offset, kind, ref) of the rarer slots
        self.ts_offsets: list[int] = []
        self.ticks: list[int] = []  # the tick of each timestamp slot, in order
        self.seq_offsets: list[int] = []
        self.prefix_offsets: list[int] = []
        self.size = 0
        self._ts_tail = _TS_TAG + bytes(width)
        self._end_packets: dict[int, bytes] = {}
        self._counter_heads: dict[int, bytes] = {}
        self._command_tail = bytes(INDEX_WIDTH)

    def _packet(self, head: bytes | None, fields, tail: bytes, tick: int | None) -> None:
        """Frame `head + len + fields + tail` as one packet on our sequence; fields are bytes or Slots."""
        parts, rel, length = [], [], 0
        for f in fields:
            if f.__class__ is Slot:
                rel.append((length, f.kind, f.ref))
                parts.append(_ZEROS[f.width])
                length += f.width
            else:
                parts.append(f)
                length += len(f)
        head = head + varint(length) if head is not None else b""
        body_len = len(_SEQ) + len(head) + length + len(tail)
        prefix = _FRAME_TAG + varint(body_len) + _SEQ + head
        base = self.size + len(prefix)
        self.slots.extend((base + off, kind, ref) for off, kind, ref in rel)
        self.chunks.append(prefix)
        self.chunks.extend(parts)
        self.chunks.append(tail)
        self.size = base + length + len(tail)
        if tick is not None:
            self.ts_offsets.append(self.size - self.width)
            self.ticks.append(tick)

    def raw_packet(self, field_tag: bytes, fields) -> None:
        """A packet holding one length-delimited field (tag `field_tag`) made of `fields`."""
        self._packet(field_tag, fields, b"", None)

    def event(self, tick: int, track: int, kind: int, *fields, interned: bool = True) -> None:
        """One TrackEvent packet: fields in the order given (static first, per-call slots last), then
        the timestamp slot, so consecutive packets differ in a few trailing bytes, which zlib exploits."""
        self._packet((_FLAGS if interned else b"") + _TE_TAG, (event_head(kind, track), *fields), self._ts_tail, tick)

    def end(self, tick: int, track: int) -> None:
        """A SLICE_END: the same bytes on a track every time, but for the timestamp."""
        packet = self._end_packets.get(track)
        if packet is None:
            te = event_head(SLICE_END, track)
            body = _SEQ + _TE_TAG + varint(len(te)) + te + self._ts_tail
            packet = self._end_packets[track] = _FRAME_TAG + varint(len(body)) + body
        self.chunks.append(packet)
        self.size += len(packet)
        self.ts_offsets.append(self.size - self.width)
        self.ticks.append(tick)

    def counter(self, tick: int, track: int, value: float) -> None:
        """A COUNTER event (not interned): the same bytes on a track every time, but for the value and the
        timestamp. As `event(tick, track, COUNTER, f_double(DOUBLE_COUNTER_VALUE, value), interned=False)`."""
        head = self._counter_heads.get(track)
        if head is None:
            te = event_head(COUNTER, track) + _DOUBLE_TAG
            body = _SEQ + _TE_TAG + varint(len(te) + 8) + te
            head = self._counter_heads[track] = _FRAME_TAG + varint(len(body) + 8 + len(self._ts_tail)) + body
        self.chunks.append(head + _DOUBLE.pack(value) + self._ts_tail)
        self.size += len(head) + 8 + len(self._ts_tail)
        self.ts_offsets.append(self.size - self.width)
        self.ticks.append(tick)

    def command(self, tick: int, te_head: bytes, name_head: bytes, suffix: bytes, flows) -> None:
        """A command's SLICE_BEGIN: `te_head` (type, track, static args, the sequence_index tag), the
        sequence_index slot, the inline name `{prefix slot}{suffix}`, flows it ends, the timestamp."""
        d = self.digits
        te_len = len(te_head) + INDEX_WIDTH + len(name_head) + d + len(suffix) + (len(_END_FLOW_TAG) + 8) * len(flows)
        head = _FLAGS + _TE_TAG + varint(te_len)
        prefix = _FRAME_TAG + varint(len(_SEQ) + len(head) + te_len + len(self._ts_tail)) + _SEQ + head
        seq_at = self.size + len(prefix) + len(te_head)
        self.seq_offsets.append(seq_at)
        name_at = seq_at + INDEX_WIDTH + len(name_head)
        self.prefix_offsets.append(name_at)
        pos = name_at + d + len(suffix)
        flow_bytes = b""
        for i in flows:
            self.slots.append((pos + len(_END_FLOW_TAG), "flow", i))
            flow_bytes += _END_FLOW_TAG + _ZEROS[8]
            pos += len(_END_FLOW_TAG) + 8
        self.chunks.append(prefix + te_head + self._command_tail + name_head + _ZEROS[d] + suffix + flow_bytes
                           + self._ts_tail)
        self.size = pos + len(self._ts_tail)
        self.ts_offsets.append(self.size - self.width)
        self.ticks.append(tick)

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def slot_table(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per slot kind: (offsets, refs). Kind "ts" holds the timestamp slots, whose refs are ticks."""
        by_kind: dict[str, list[tuple[int, int]]] = {}
        for offset, kind, ref in self.slots:
            by_kind.setdefault(kind, []).append((offset, ref))
        table = {k: (np.array([o for o, _ in v], dtype=np.int64), np.array([r for _, r in v], dtype=np.int64))
                 for k, v in by_kind.items()}
        table["ts"] = (np.asarray(self.ts_offsets, dtype=np.int64), np.asarray(self.ticks, dtype=np.int64))
        for kind, offsets in (("seq", self.seq_offsets), ("prefix", self.prefix_offsets)):
            if offsets:
                old = table.get(kind, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
                table[kind] = (np.concatenate([old[0], offsets]).astype(np.int64), np.zeros(len(old[0]) + len(offsets), np.int64))
        return table
