"""Hand-written protobuf encoding of Perfetto packets, with fixed-width slots filled later.

The field numbers come from the `perfetto` package's own descriptors, so this encoder follows the
protos it ships. A `Slot` is a hole of fixed width in encoded bytes (a varint padded with
continuation bits, or a fixed64) that the exporter fills per invocation with numpy, without
re-encoding the message. Padded varints are valid protobuf: parsers read continuation bytes up to
ten, whatever their value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from .errors import VarintError


def _f(msg, name: str) -> int:
    return msg.DESCRIPTOR.fields_by_name[name].number


class FieldNumber:
    """Field numbers, read from the shipped Perfetto descriptors."""

    TRACE_PACKET = _f(pt.Trace, "packet")
    TIMESTAMP = _f(pt.TracePacket, "timestamp")
    TIMESTAMP_CLOCK_ID = _f(pt.TracePacket, "timestamp_clock_id")
    SEQUENCE_ID = _f(pt.TracePacket, "trusted_packet_sequence_id")
    SEQUENCE_FLAGS = _f(pt.TracePacket, "sequence_flags")
    TRACK_EVENT = _f(pt.TracePacket, "track_event")
    INTERNED_DATA = _f(pt.TracePacket, "interned_data")
    CLOCK_SNAPSHOT = _f(pt.TracePacket, "clock_snapshot")
    COMPRESSED_PACKETS = _f(pt.TracePacket, "compressed_packets")
    EVENT_TYPE = _f(pt.TrackEvent, "type")
    TRACK_UUID = _f(pt.TrackEvent, "track_uuid")
    NAME_IID = _f(pt.TrackEvent, "name_iid")
    NAME = _f(pt.TrackEvent, "name")
    DEBUG_ANNOTATIONS = _f(pt.TrackEvent, "debug_annotations")
    FLOW_IDS = _f(pt.TrackEvent, "flow_ids")
    TERMINATING_FLOW_IDS = _f(pt.TrackEvent, "terminating_flow_ids")
    DOUBLE_COUNTER_VALUE = _f(pt.TrackEvent, "double_counter_value")
    ANNOTATION_NAME_IID = _f(pt.DebugAnnotation, "name_iid")
    ANNOTATION_NAME = _f(pt.DebugAnnotation, "name")
    ANNOTATION_INT = _f(pt.DebugAnnotation, "int_value")
    ANNOTATION_UINT = _f(pt.DebugAnnotation, "uint_value")
    ANNOTATION_STRING_IID = _f(pt.DebugAnnotation, "string_value_iid")
    ANNOTATION_STRING = _f(pt.DebugAnnotation, "string_value")
    INTERNED_EVENT_NAMES = _f(pt.InternedData, "event_names")
    INTERNED_ANNOTATION_NAMES = _f(pt.InternedData, "debug_annotation_names")
    INTERNED_STRINGS = _f(pt.InternedData, "debug_annotation_string_values")
    INTERNED_IID = _f(pt.EventName, "iid")
    INTERNED_NAME = _f(pt.EventName, "name")
    INTERNED_STRING = _f(pt.InternedString, "str")
    CLOCKS = _f(pt.ClockSnapshot, "clocks")
    CLOCK_ID = _f(pt.ClockSnapshot.Clock, "clock_id")
    CLOCK_TIMESTAMP = _f(pt.ClockSnapshot.Clock, "timestamp")
    CLOCK_INCREMENTAL = _f(pt.ClockSnapshot.Clock, "is_incremental")


SLICE_BEGIN = pt.TrackEvent.TYPE_SLICE_BEGIN
SLICE_END = pt.TrackEvent.TYPE_SLICE_END
INSTANT = pt.TrackEvent.TYPE_INSTANT
COUNTER = pt.TrackEvent.TYPE_COUNTER
STATE = pt.TrackEvent.TYPE_STATE
SEQ_CLEARED = pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
SEQ_NEEDS_STATE = pt.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
CLOCK_MONOTONIC = pt.BUILTIN_CLOCK_MONOTONIC
CLOCK_BOOTTIME = pt.BUILTIN_CLOCK_BOOTTIME
# A sequence-scoped clock whose timestamps are deltas from the previous packet (as the SDK does).
CLOCK_INCREMENTAL = 64
SEQUENCE_ID = 1

_VARINT, _FIXED64, _LEN = 0, 1, 2


def varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes([v]) for v in range(0x80)]
MAX_VARINT_BYTES = 10


def read_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Decode the varint at `data[pos:]`: (value, position after it)."""
    value = shift = 0
    end = min(len(data), pos + MAX_VARINT_BYTES)
    while pos < end:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    if shift // 7 >= MAX_VARINT_BYTES:
        raise VarintError(f"a varint longer than {MAX_VARINT_BYTES} bytes", cut_short=False)
    raise VarintError("a varint cut short", cut_short=True)


@lru_cache(maxsize=None)
def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def f_varint(number: int, value: int) -> bytes:
    return tag(number, _VARINT) + varint(value)


def f_bytes(number: int, payload: bytes) -> bytes:
    return tag(number, _LEN) + varint(len(payload)) + payload


def f_double(number: int, value: float) -> bytes:
    return tag(number, _FIXED64) + struct.pack("<d", value)


@dataclass(frozen=True)
class Slot:
    """A hole of `width` bytes: a padded varint, or a little-endian fixed64 when `fixed`."""

    kind: str
    width: int
    ref: int = 0
    fixed: bool = False


def padded_varints(values: np.ndarray, width: int) -> np.ndarray:
    """Encode uint64 values as `width`-byte varints: an array of shape (n, width)."""
    values = values.astype(np.uint64, copy=False)
    out = np.empty((len(values), width), dtype=np.uint8)
    for i in range(width):  # a column per byte: the value shifted, its low byte kept by the store
        out[:, i] = values >> np.uint64(7 * i)
    out |= 0x80
    out[:, -1] &= 0x7F
    return out


def padded_varint(value: int, width: int) -> bytes:
    """One value as `padded_varints` encodes it: `width` bytes of its low 64 bits, high bits dropped."""
    value &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray(((value >> shift) & 0x7F) | 0x80 for shift in range(0, 7 * width, 7))
    out[-1] &= 0x7F
    return bytes(out)


def width_for(max_value: int) -> int:
    return max(1, (int(max_value).bit_length() + 6) // 7)
