"""What bytes that do not read as a Perfetto trace are instead, in words for an error message."""

from __future__ import annotations

from ..proto_bytes import FieldNumber, VarintError, read_varint, tag

_PACKET_TAG = tag(FieldNumber.TRACE_PACKET, 2)[0]  # Trace.packet, length-delimited: one byte (0x0a)


def first_framing_error(data: bytes) -> tuple[int, str] | None:
    """Where a `Trace` (repeated TracePacket, field 1) stops being well-formed, and why; None if it is."""
    pos = 0
    while pos < len(data):
        start = pos
        if data[pos] != _PACKET_TAG:
            return start, f"byte {data[pos]:#04x} where a packet should start"
        try:
            length, pos = read_varint(data, pos + 1)
        except VarintError as exc:
            return start, "a packet length cut short" if exc.cut_short else f"a corrupt packet length ({exc})"
        if pos + length > len(data):
            return start, f"a packet of {length} bytes cut short after {len(data) - pos}"
        pos += length
    return None


def describe_non_trace(data: bytes) -> str:
    """What `data` (which did not parse as a Trace) looks like: another format, or where it breaks."""
    from ..capture import MAGIC

    if data.startswith(MAGIC):
        return "an rbln-perfetto capture, not a trace: export it first with `rbln-perfetto export`"
    if data[:1] in (b"{", b"["):
        return "a JSON trace (Chrome trace format?); this reader takes Perfetto protobuf traces"
    if data[:2] == b"\x1f\x8b":
        return "gzip-compressed: decompress it first"
    problem = first_framing_error(data)
    if problem is not None and problem[0] > 0:
        return f"a truncated or corrupt Perfetto trace: {problem[1]} at byte offset {problem[0]}"
    return "not a Perfetto protobuf trace (its bytes do not parse as TracePackets)"
